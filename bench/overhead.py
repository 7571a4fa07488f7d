"""Overhead benchmark: everything but the model, per inspection, for 2 reference + 2 pickup
12-megapixel photos fetched from a loopback HTTP server.

    .venv/bin/python -m bench.overhead
    .venv/bin/python -m bench.overhead --requests 2 --size 640x480 --no-compare

One inspection at a time (concurrency 1) through the real gRPC server with the production
engine (batched, constrained decoding) and the demo model. Each answer is a complete, valid
inspection (the JSON schema's string bounds are small, so the untrained model's output
completes), so parsing, the decision rules and the result event all run. The server reports its
stage times in the response (``Inspection.timings``); the overhead of a request is its latency
seen by the client minus the model's own time (``timings.generate`` = prefill + decode).

Recording: PERSISTENCE_TARGET points at a closed loopback port, so every event is appended to
the durable SQLite spool on the response path exactly as in production, while delivery (a
background task, off the response path) only retries. ``--no-compare`` skips the second row
with recording off (PERSISTENCE_TARGET="").
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from rpi.inspection.v1 import inspection_pb2 as pb

from bench.common import (
    LatencySummary,
    add_torch_threads_flag,
    apply_torch_threads,
    argument_parser,
    fmt,
    machine,
    make_request,
    parse_size,
    percentile,
    quiet_logs,
    running_app,
    table,
)
from bench.image_server import ImageServerProcess
from bench.load import ChildProcess, Outcome, drive_sync
from bench.photos import TWELVE_MP, photo_jpeg
from inference_svc.domain.models import OutputLimits

STAGES = ("transport", "fetch", "preprocess", "queue", "parse", "other")


@dataclass
class RowResult:
    name: str
    outcomes: list[Outcome]

    def per_stage_ms(self) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {k: [] for k in (*STAGES, "model", "overhead", "latency")}
        for o in self.outcomes:
            t = o.timings
            out["transport"].append((o.latency_s - t["total"]) * 1000)
            for k in ("fetch", "preprocess", "queue", "parse"):
                out[k].append(t[k] * 1000)
            accounted = t["fetch"] + t["preprocess"] + t["queue"] + t["generate"] + t["parse"]
            out["other"].append((t["total"] - accounted) * 1000)
            out["model"].append(t["generate"] * 1000)
            out["overhead"].append((o.latency_s - t["generate"]) * 1000)
            out["latency"].append(o.latency_s * 1000)
        return out


DESCRIPTIONS = {
    "transport": "gRPC both ways, (de)serialisation, client (latency - server total)",
    "fetch": "4 images over loopback HTTP, in parallel",
    "preprocess": "decode + tiling after the last fetch (threads)",
    "queue": "wait for the batch window (BATCH_WAIT_MS) and the model thread",
    "parse": "JSON parsing and schema validation of the output",
    "other": "validation, prompt, engine prep, decision, events, response",
    "overhead": "everything but the model (latency - prefill - decode)",
    "model": "prefill + decode (for reference, not overhead)",
    "latency": "client-observed",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run_row(
    name: str,
    args: argparse.Namespace,
    requests: list[bytes],
    client: ChildProcess,
    persistence_target: str,
) -> RowResult:
    overrides: dict[str, object] = {
        "persistence_target": persistence_target,
        "max_new_tokens": 1024,
        "max_output_retries": 0,
        "output_limits": OutputLimits(
            max_analysis_chars=8, max_evidence_chars=8, max_result_chars=4
        ),
        "event_retry_max_backoff_s": 30.0,
    }
    async with running_app(**overrides) as app:
        target = f"127.0.0.1:{app.port}"
        await client.call(drive_sync, target, requests, 1, args.warmup)
        load = await client.call(drive_sync, target, requests, 1, args.requests)
    bad = [o for o in load.outcomes if o.code != "OK"]
    if bad:
        raise RuntimeError(f"{name}: {len(bad)} failed calls, e.g. {bad[0].code} {bad[0].reason}")
    return RowResult(name, load.outcomes)


def report(rows: list[RowResult]) -> str:
    parts = []
    for row in rows:
        stages = row.per_stage_ms()
        body = [
            [k, fmt(statistics.median(v), 1), fmt(percentile(v, 99), 1), DESCRIPTIONS[k]]
            for k, v in stages.items()
        ]
        parts.append(f"\n{row.name} ({len(row.outcomes)} inspections, one at a time):\n")
        parts.append(table(["stage", "p50 ms", "p99 ms", "what"], body))
    return "\n".join(parts)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argument_parser("overhead", __doc__)
    p.add_argument("--requests", type=int, default=16, help="measured inspections per row")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--size",
        type=parse_size,
        default=TWELVE_MP,
        help="WxH of references; pickups are the same size, portrait",
    )
    p.add_argument("--sets", type=int, default=2, help="distinct image sets cycled through")
    p.add_argument("--no-compare", action="store_true", help="skip the recording-off row")
    add_torch_threads_flag(p)
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> list[RowResult]:
    apply_torch_threads(args.torch_threads)
    w, h = args.size
    started = time.perf_counter()
    images: dict[str, bytes] = {}
    for s in range(args.sets):
        for k in range(2):
            images[f"ref-{s}-{k}.jpg"] = photo_jpeg((w, h), seed=1000 + 10 * s + k)
            images[f"pick-{s}-{k}.jpg"] = photo_jpeg((h, w), seed=2000 + 10 * s + k)
    mb = sum(len(v) for v in images.values()) / len(images) / 1e6
    print(f"machine: {machine()}")
    print(
        f"images: 2 reference {w}x{h} + 2 pickup {h}x{w} JPEG per inspection, {args.sets} "
        f"sets, {mb:.2f} MB each on average (generated in "
        f"{time.perf_counter() - started:.0f} s)",
        flush=True,
    )
    rows: list[RowResult] = []
    with ImageServerProcess(images) as server, ChildProcess() as client:
        requests = [
            make_request(
                [pb.Image(uri=server.url(f"ref-{s}-{k}.jpg")) for k in range(2)],
                [pb.Image(uri=server.url(f"pick-{s}-{k}.jpg")) for k in range(2)],
                shipping_id=f"SHIP-OVERHEAD-{s}",
            ).SerializeToString()
            for s in range(args.sets)
        ]
        closed_port = _free_port()
        rows.append(
            await run_row(
                "recording on (spooled events)", args, requests, client, f"127.0.0.1:{closed_port}"
            )
        )
        if not args.no_compare:
            rows.append(await run_row("recording off", args, requests, client, ""))
    print(report(rows))
    first = rows[0].per_stage_ms()
    lat = LatencySummary.of([o.latency_s for o in rows[0].outcomes])
    line = (
        f"\nRATIOS overhead per inspection p50 {statistics.median(first['overhead']):.0f} ms, "
        f"p99 {percentile(first['overhead'], 99):.0f} ms = "
        f"{statistics.median(first['overhead']) / lat.p50_ms:.0%} of the p50 latency "
        f"({lat.p50_ms:.0f} ms) with the demo model"
    )
    if len(rows) > 1:
        # Event emission (spool appends) lands in "other"; the other stages do not depend on
        # recording, so their differences between the rows are noise.
        on = statistics.median(first["other"])
        off = statistics.median(rows[1].per_stage_ms()["other"])
        line += (
            f"; 'other' stage with/without recording p50 {on:.1f}/{off:.1f} ms = {on / off:.2f}x"
        )
    print(line)
    print(f"(total benchmark time {time.perf_counter() - started:.0f} s)")
    return rows


def main(argv: Sequence[str] | None = None) -> list[RowResult]:
    quiet_logs()
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    main()
