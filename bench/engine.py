"""Engine benchmark: the seed-style engine against ours, end to end through the real gRPC
server, at several concurrencies, with the same model and the same forced output length.

    .venv/bin/python -m bench.engine                # full run (see BENCHMARKS.md)
    .venv/bin/python -m bench.engine --concurrency 1 2 --requests 2 --tokens 8 --image-size 320x240

Rows (each its own in-process InferenceApp, the demo model, recording off; all rows' services
run at once, idle but for the one being measured, and ``--repeats N`` measures every level N
times with the rows in turn, so the host's drift falls on all rows alike):

* ``seed-style``: the sequential baseline (one generate per request, one at a time),
  CONSTRAINED_DECODING=false: the replaced service's method.
* ``ours``: the local engine's slot runner (iteration-level batching), constrained decoding on:
  the production configuration.
* ``ours, request-level`` (extra, ``--with-request-level``): the generate runner, one
  ``generate`` per batch, constrained: what continuous batching adds over it.
* ``ours, serial prefill`` (extra, ``--with-serial-prefill``): PREFILL_OVERLAP=off, what
  running prefills on their own thread adds.
* ``ours, masks after step`` (extra, ``--with-serial-grammar``): GRAMMAR_OVERLAP=false, what
  computing the grammar masks beside the decode step adds.
* ``ours, unconstrained`` (extra): batching alone.
* ``ours, natural length`` (extra): constrained decoding to completion, no forced length; every
  call returns a valid inspection.

In the forced rows MIN_NEW_TOKENS = MAX_NEW_TOKENS, so every generate produces exactly that many
tokens (checked against the engine's own token counter). The JSON schema's string bounds are
raised so the grammar cannot complete before the forced length; the output is then a
truncated JSON document, the service answers MODEL_OUTPUT_INVALID after the one generate
(MAX_OUTPUT_RETRIES=0 in every row), and that reply counts as a completed request: the model,
the parse attempt and the reply were all done. See BENCHMARKS.md for why.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import psutil
from rpi.inspection.v1 import inspection_pb2 as pb

from bench.baseline import ForcedLength
from bench.common import (
    LatencySummary,
    add_torch_threads_flag,
    apply_torch_threads,
    argument_parser,
    fmt,
    machine,
    make_request,
    parse_size,
    quiet_logs,
    ratio,
    serving_app,
    table,
)
from bench.load import ChildProcess, LoadResult, drive_sync
from bench.photos import photo_jpeg
from inference_svc.app import InferenceApp
from inference_svc.domain.models import OutputLimits
from inference_svc.imaging.tiling import choose_grid

COMPLETED = {("OK", ""), ("INTERNAL", "MODEL_OUTPUT_INVALID")}


@dataclass(frozen=True)
class RowConfig:
    name: str
    overrides: dict[str, object]
    forced: bool
    engine: ForcedLength = field(default_factory=ForcedLength)


@dataclass
class LevelResult:
    row: str
    concurrency: int
    requests: int
    completed: int
    wall_s: float
    latency: LatencySummary
    tokens: int
    mean_batch: float
    failures: dict[str, int] = field(default_factory=dict)
    # CPU seconds per request by process role (server, engine process, load client).
    cpu_per_request: dict[str, float] = field(default_factory=dict)
    # Every completed call's latency (seconds), for combining repeats.
    latencies_s: list[float] = field(default_factory=list)
    # With --repeats: each run's requests/s (rps is their median).
    run_rps: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        if self.run_rps:
            return statistics.median(self.run_rps)
        return self.completed / self.wall_s if self.wall_s else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0

    @property
    def tokens_per_request(self) -> float:
        return self.tokens / self.requests if self.requests else 0.0

    @property
    def cpu_ms_per_request(self) -> float:
        """CPU time of every process of the row (server, engine, load client) per request."""
        return sum(self.cpu_per_request.values()) * 1000


def cpu_ceiling(ours: LevelResult, base: LevelResult, cores: int) -> float:
    """The most ``ours`` could gain on the seed-style row on ``cores`` cores: its requests/s
    if every core spent all its time on requests at its measured CPU cost, against the
    seed-style requests/s. The seed-style row is one generate at a time, so its cost is its
    latency, whatever the cores; ours spreads over the cores and is bounded by its CPU."""
    if ours.cpu_ms_per_request <= 0 or base.rps <= 0:
        return 0.0
    return cores * 1000 / ours.cpu_ms_per_request / base.rps


def row_configs(args: argparse.Namespace) -> list[RowConfig]:
    tiles: dict[str, object] = {
        "reference_max_tiles": args.reference_max_tiles,
        "pickup_max_tiles": args.pickup_max_tiles,
    }
    forced: dict[str, object] = {
        # The engine process applies it to itself (the in-process rows get it from
        # apply_torch_threads as well).
        "torch_threads": args.torch_threads,
        "max_new_tokens": args.tokens,
        "max_output_retries": 0,
        # Long enough that no string of the grammar can close before the forced length.
        "output_limits": OutputLimits(
            max_analysis_chars=max(600, args.tokens * 16),
            max_evidence_chars=max(300, args.tokens * 16),
            max_result_chars=120,
        ),
        **tiles,
    }
    batching: dict[str, object] = {
        "torch_compile": args.torch_compile,
        "max_batch_size": args.max_batch_size,
    }
    forced_local = ForcedLength("local", args.model)
    rows = [
        RowConfig(
            "seed-style",
            {
                **forced,
                "constrained_decoding": False,
                # The replaced service ran its model in the server process.
                "engine_process": args.seed_engine_process,
            },
            True,
            ForcedLength("sequential", args.model),
        ),
        RowConfig("ours", {**forced, **batching, "constrained_decoding": True}, True, forced_local),
    ]
    if args.with_request_level:
        rows.append(
            RowConfig(
                "ours, request-level",
                {**forced, **batching, "constrained_decoding": True},
                True,
                ForcedLength("batched", args.model),
            )
        )
    if args.with_serial_prefill:
        rows.append(
            RowConfig(
                "ours, serial prefill",
                {**forced, **batching, "constrained_decoding": True, "prefill_overlap": "off"},
                True,
                forced_local,
            )
        )
    if args.with_serial_grammar:
        rows.append(
            RowConfig(
                "ours, masks after step",
                {**forced, **batching, "constrained_decoding": True, "grammar_overlap": False},
                True,
                forced_local,
            )
        )
    if args.with_unconstrained:
        rows.append(
            RowConfig(
                "ours, unconstrained",
                {**forced, **batching, "constrained_decoding": False},
                True,
                forced_local,
            )
        )
    if not args.no_extra:
        rows.append(
            RowConfig(
                "ours, natural length",
                {
                    **batching,
                    **tiles,
                    "torch_threads": args.torch_threads,
                    "constrained_decoding": True,
                    "max_new_tokens": max(args.tokens * 4, 1024),
                    "max_output_retries": 0,
                    # The untrained model fills every string to its bound; these bounds give a
                    # complete JSON answer of a few hundred tokens.
                    "output_limits": OutputLimits(
                        max_analysis_chars=24, max_evidence_chars=16, max_result_chars=8
                    ),
                },
                False,
                ForcedLength("local", args.model, forced=False),
            )
        )
    return rows


def build_requests(args: argparse.Namespace) -> list[bytes]:
    """Distinct requests (different photos) so no layer can reuse a previous answer."""
    w, h = args.image_size
    out = []
    for i in range(args.distinct):
        refs = [
            pb.Image(content=photo_jpeg((w, h), seed=100 * i + k, quality=90))
            for k in range(args.references)
        ]
        picks = [
            pb.Image(content=photo_jpeg((h, w), seed=100 * i + 50 + k, quality=90))
            for k in range(args.pickups)
        ]
        out.append(make_request(refs, picks, shipping_id=f"SHIP-BENCH-{i}").SerializeToString())
    return out


def _tiles(width: int, height: int, max_tiles: int) -> int:
    cols, rows = choose_grid(width, height, 1, max_tiles, 448)
    return int(cols * rows + (1 if cols * rows > 1 else 0))


def requests_for(concurrency: int, args: argparse.Namespace) -> int:
    return max(int(args.requests), concurrency * int(args.rounds))


def _engine_pid(app: InferenceApp) -> int | None:
    pid = getattr(getattr(app.engine, "_process", None), "pid", None)
    return pid if isinstance(pid, int) else None


async def measure(
    row: RowConfig,
    app: InferenceApp,
    c: int,
    args: argparse.Namespace,
    requests: list[bytes],
    client: ChildProcess,
    others: set[int],
) -> LevelResult:
    """One measured level of one row: ``requests_for(c)`` closed-loop calls at concurrency
    ``c`` against ``app`` (``others``: the other rows' engine processes, idle meanwhile and
    left out of the CPU accounting)."""
    target = f"127.0.0.1:{app.port}"
    total = requests_for(c, args)
    before = dataclasses.asdict(app.engine.stats())
    engine_pid = _engine_pid(app)
    cpu_before = cpu_seconds(engine_pid, others)
    load: LoadResult = await client.call(drive_sync, target, requests, c, total)
    cpu = {k: v - cpu_before.get(k, 0.0) for k, v in cpu_seconds(engine_pid, others).items()}
    after = dataclasses.asdict(app.engine.stats())
    tokens = after["tokens_generated"] - before["tokens_generated"]
    rows = after["rows"] - before["rows"]
    batches = after["batches"] - before["batches"]
    steps = after.get("steps", 0) - before.get("steps", 0)
    # Mean rows per model call: per decode step (continuous), per generate (others).
    if steps:
        mean_batch = (after["row_steps"] - before["row_steps"]) / steps
    else:
        mean_batch = rows / batches if batches else 0.0
    ok = [o for o in load.outcomes if (o.code, o.reason) in COMPLETED]
    failures: dict[str, int] = {}
    for o in load.outcomes:
        if (o.code, o.reason) not in COMPLETED:
            key = f"{o.code}/{o.reason}"
            failures[key] = failures.get(key, 0) + 1
    if row.forced and rows and tokens != args.tokens * rows:
        print(
            f"WARNING: {row.name} c={c}: {tokens} tokens for {rows} generates, "
            f"expected {args.tokens} each",
            file=sys.stderr,
        )
    r = LevelResult(
        row=row.name,
        concurrency=c,
        requests=total,
        completed=len(ok),
        wall_s=load.wall_s,
        latency=LatencySummary.of([o.latency_s for o in ok]),
        tokens=tokens,
        mean_batch=mean_batch,
        failures=failures,
        latencies_s=[o.latency_s for o in ok],
        cpu_per_request={k: v / total for k, v in cpu.items()},
    )
    print(
        f"  {row.name:<22} c={c:<3} {r.completed}/{total} completed in "
        f"{r.wall_s:6.1f} s, {r.rps:6.2f} req/s, p50 {r.latency.p50_ms:8.0f} ms, "
        f"mean batch {r.mean_batch:4.1f}, CPU ms/request "
        + ", ".join(f"{k} {v * 1000:.0f}" for k, v in r.cpu_per_request.items())
        + (f", failures {failures}" if failures else ""),
        flush=True,
    )
    return r


def combine(runs: list[LevelResult]) -> LevelResult:
    """One row's repeats at one level: requests/s is the median of the runs' (``run_rps``),
    latency percentiles are over every call, counts and CPU are totals over the runs."""
    if len(runs) == 1:
        return runs[0]
    first = runs[0]
    total = sum(r.requests for r in runs)
    latencies = [s for r in runs for s in r.latencies_s]
    failures: dict[str, int] = {}
    for r in runs:
        for key, count in r.failures.items():
            failures[key] = failures.get(key, 0) + count
    roles = {k for r in runs for k in r.cpu_per_request}
    return LevelResult(
        row=first.row,
        concurrency=first.concurrency,
        requests=total,
        completed=sum(r.completed for r in runs),
        wall_s=sum(r.wall_s for r in runs),
        latency=LatencySummary.of(latencies),
        tokens=sum(r.tokens for r in runs),
        mean_batch=statistics.fmean(r.mean_batch for r in runs),
        failures=failures,
        latencies_s=latencies,
        cpu_per_request={
            k: sum(r.cpu_per_request.get(k, 0.0) * r.requests for r in runs) / total for k in roles
        },
        run_rps=[r.rps for r in runs],
    )


async def run_levels(
    configs: list[RowConfig], args: argparse.Namespace, requests: list[bytes], client: ChildProcess
) -> list[LevelResult]:
    """Every row's service runs at once (idle but for the row being measured), so each
    concurrency level can run the rows in turn, ``--repeats`` times over: the host's drift
    then falls on every row alike instead of on whichever row ran last."""
    async with contextlib.AsyncExitStack() as stack:
        apps = [
            await stack.enter_async_context(serving_app(r.engine, r.overrides)) for r in configs
        ]
        pids = {pid for pid in map(_engine_pid, apps) if pid is not None}
        results: list[LevelResult] = []
        for c in args.concurrency:
            if args.warmup:
                for app in apps:
                    await client.call(drive_sync, f"127.0.0.1:{app.port}", requests, c, c)
            runs: dict[str, list[LevelResult]] = {r.name: [] for r in configs}
            for _ in range(args.repeats):
                for row, app in zip(configs, apps, strict=True):
                    others = pids - {_engine_pid(app)}
                    runs[row.name].append(
                        await measure(row, app, c, args, requests, client, others)
                    )
            results.extend(combine(runs[r.name]) for r in configs)
        return results


def cpu_seconds(engine_pid: int | None, others: set[int] | None = None) -> dict[str, float]:
    """CPU time (user + system) so far of this process (the server), its engine process and
    its other children (the load client, the image server), leaving out ``others``."""
    me = psutil.Process()
    out = {"server": sum(me.cpu_times()[:2]), "engine": 0.0, "client": 0.0}
    for child in me.children(recursive=True):
        if others and child.pid in others:
            continue
        try:
            times = child.cpu_times()
        except psutil.Error:
            continue
        role = "engine" if child.pid == engine_pid else "client"
        out[role] += times.user + times.system
    return out


def report(results: list[LevelResult], args: argparse.Namespace) -> str:
    cores = psutil.cpu_count() or 1
    lines = []
    by = {(r.row, r.concurrency): r for r in results}
    rows = list(dict.fromkeys(r.row for r in results))
    summary = []
    for c in args.concurrency:
        base = by[("seed-style", c)]
        body = []
        for name in rows:
            r = by[(name, c)]
            body.append(
                [
                    name,
                    f"{r.completed}/{r.requests}",
                    fmt(r.rps, 2)
                    + (f" ({' '.join(fmt(x, 2) for x in r.run_rps)})" if r.run_rps else ""),
                    fmt(r.latency.p50_ms, 0),
                    fmt(r.latency.p99_ms, 0),
                    fmt(r.tokens_per_s, 0),
                    fmt(r.tokens_per_request, 0),
                    fmt(r.mean_batch, 1),
                    "1.00x" if name == "seed-style" else f"{ratio(r.rps, base.rps):.2f}x",
                    "1.00x"
                    if name == "seed-style"
                    else f"{ratio(r.latency.p50_ms, base.latency.p50_ms):.2f}x",
                    fmt(r.cpu_ms_per_request, 0),
                    f"{r.cpu_ms_per_request * r.rps / 1000:.2f}",
                ]
            )
        lines.append(f"\nConcurrency {c}:\n")
        lines.append(
            table(
                [
                    "engine",
                    "done",
                    "req/s",
                    "p50 ms",
                    "p99 ms",
                    "tokens/s",
                    "tokens/req",
                    "batch",
                    "req/s vs seed",
                    "p50 vs seed",
                    "CPU ms/req",
                    "cores busy",
                ],
                body,
            )
        )
        ours = by[("ours", c)]
        summary.append(
            f"c={c}: throughput {ratio(ours.rps, base.rps):.2f}x "
            f"(CPU ceiling {cpu_ceiling(ours, base, cores):.2f}x), "
            f"p50 {ratio(ours.latency.p50_ms, base.latency.p50_ms):.2f}x"
        )
    lines.append("\nRATIOS ours/seed-style (forced length, both rows): " + "; ".join(summary))
    lines.append(
        f"(CPU ceiling: the throughput ratio ours would reach if all {cores} cores ran requests "
        "at its measured CPU ms/request; what is left between the two is idle or unscheduled "
        "CPU, what the ceiling lacks from a target needs less CPU per request.)"
    )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argument_parser("engine", __doc__)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument(
        "--requests",
        type=int,
        default=8,
        help="measured requests per level (at least ROUNDS x concurrency)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="measured requests per level = max(REQUESTS, ROUNDS x concurrency)",
    )
    p.add_argument("--tokens", type=int, default=256, help="forced output length")
    p.add_argument(
        "--image-size",
        type=parse_size,
        default=(1024, 768),
        help="WxH of the (inline) reference photos; pickups are the same, portrait",
    )
    p.add_argument("--references", type=int, default=2)
    p.add_argument("--pickups", type=int, default=2)
    p.add_argument("--distinct", type=int, default=4, help="distinct requests cycled through")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument(
        "--model",
        choices=("demo", "full_size"),
        default="demo",
        help="demo: the tiny cached model; full_size: InternVL2.5-1B shapes, random weights",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="measure each level this many times, the rows in turn each time; requests/s is "
        "the median of a row's runs, latency percentiles are over all its calls",
    )
    p.add_argument("--no-warmup", dest="warmup", action="store_false")
    p.add_argument("--no-extra", action="store_true", help="without the natural-length row")
    p.add_argument(
        "--with-unconstrained",
        action="store_true",
        help="add ours with constrained decoding off (batching alone)",
    )
    p.add_argument(
        "--seed-engine-process",
        action="store_true",
        help="run the seed-style baseline in its own engine process too (ENGINE_PROCESS)",
    )
    p.add_argument(
        "--torch-compile",
        action="store_true",
        help="our rows with TORCH_COMPILE=true (the decode step compiled; ~30 s warm-up each)",
    )
    p.add_argument(
        "--with-serial-prefill",
        action="store_true",
        help="add ours with PREFILL_OVERLAP=off (prefills on the step thread)",
    )
    p.add_argument(
        "--with-serial-grammar",
        action="store_true",
        help="add ours with GRAMMAR_OVERLAP=false (masks computed after each step)",
    )
    p.add_argument(
        "--with-request-level",
        action="store_true",
        help="add ours with request-level batching (the generate runner)",
    )
    p.add_argument("--pickup-max-tiles", type=int, default=2)
    p.add_argument("--reference-max-tiles", type=int, default=1)
    add_torch_threads_flag(p)
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> tuple[list[LevelResult], str]:
    apply_torch_threads(args.torch_threads)
    requests = build_requests(args)
    sizes = [len(pb.InspectRequest.FromString(r).SerializeToString()) for r in requests]
    print(f"machine: {machine()}")
    w, h = args.image_size
    tiles = args.references * _tiles(w, h, args.reference_max_tiles) + args.pickups * _tiles(
        h, w, args.pickup_max_tiles
    )
    print(
        f"requests: {args.references} reference {w}x{h} + {args.pickups} pickup {h}x{w} "
        f"inline photos = {tiles} tiles, {len(requests)} "
        f"distinct, {sum(sizes) / len(sizes) / 1e6:.2f} MB each; forced length "
        f"{args.tokens} tokens; MAX_BATCH_SIZE {args.max_batch_size}; model {args.model}",
        flush=True,
    )
    results: list[LevelResult] = []
    started = time.perf_counter()
    with ChildProcess() as client:
        results = await run_levels(row_configs(args), args, requests, client)
    text = report(results, args)
    print(text)
    print(f"\n(total benchmark time {time.perf_counter() - started:.0f} s)")
    return results, text


def main(argv: Sequence[str] | None = None) -> list[LevelResult]:
    quiet_logs()
    results, _ = asyncio.run(run(parse_args(argv)))
    return results


if __name__ == "__main__":
    main()
