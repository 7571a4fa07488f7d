"""Responsiveness benchmark: latency of a gRPC health check while the server is saturated with
inspections, against the same server idle, in one run.

    .venv/bin/python -m bench.responsiveness
    .venv/bin/python -m bench.responsiveness --duration 4 --idle 1 --concurrency 2 --size 640x480
    .venv/bin/python -m bench.responsiveness --worst-case

The server runs the production engine (batched, constrained decoding) with the demo model.
A load process keeps CONCURRENCY inspections in flight (2 reference + 2 pickup photos fetched
from a loopback HTTP server in a third process); a probe process on a channel of its own sends
a health check every INTERVAL ms. Health is answered on the service's event loop, so its
latency shows any blocking of that loop (image decode, tiling, parsing and generation all run
in worker threads). Target: p99 under 20 ms.

``--worst-case`` replaces the photos with the decode-amplification case: one-colour
7900 x 7900 PNGs of about 200 KB, one reference and one pickup per request (the default
request pixel budget admits two), five requests at once, so ten such images are being decoded
at full size at any time. It also reports the server's RSS: its peak during the load and what
it still holds once the load has ended.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import os
import threading
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
    quiet_logs,
    running_app,
    table,
)
from bench.image_server import ImageServerProcess
from bench.load import ChildProcess, LoadResult, probe_sync, saturate_sync
from bench.photos import flat_png, photo_jpeg
from inference_svc.domain.models import OutputLimits

TARGET_P99_MS = 20.0
WORST_CASE_SIDE = 7900


class RssSampler:
    """This process's resident memory, sampled in a thread (the server runs in-process)."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    @staticmethod
    def now_mib() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_mib = max(self.peak_mib, self.now_mib())

    def __enter__(self) -> RssSampler:
        self.peak_mib = self.now_mib()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Result:
    idle: LatencySummary
    saturated: LatencySummary
    load: LoadResult
    # Model calls (decode steps for the continuous engine, generates otherwise) and the rows
    # they carried.
    engine_batches: int
    engine_rows: int
    # Server RSS (MiB): before the load, its peak during it, and once it has ended.
    rss_idle_mib: float
    rss_peak_mib: float
    rss_after_mib: float

    @property
    def completed(self) -> int:
        return sum(1 for o in self.load.outcomes if o.code == "OK")


def _delta(after: dict[str, int], before: dict[str, int], key: str) -> int:
    return after.get(key, 0) - before.get(key, 0)


def report(r: Result) -> str:
    body = [
        [
            name,
            str(s.count),
            fmt(s.p50_ms, 2),
            fmt(s.p99_ms, 2),
            fmt(s.max_ms, 2),
            fmt(s.mean_ms, 2),
        ]
        for name, s in (("idle", r.idle), ("saturated", r.saturated))
    ]
    failed = len(r.load.outcomes) - r.completed
    codes = sorted({f"{o.code}/{o.reason}" for o in r.load.outcomes if o.code != "OK"})
    return (
        table(["server", "health checks", "p50 ms", "p99 ms", "max ms", "mean ms"], body)
        + f"\n\nload during the saturated phase: {r.completed} inspections completed"
        + (f", {failed} failed {codes}" if failed else "")
        + f" in {r.load.wall_s:.1f} s ({r.completed / r.load.wall_s:.2f}/s), engine model calls "
        f"{r.engine_batches}, mean rows per call {r.engine_rows / max(r.engine_batches, 1):.1f}"
        + f"\nserver RSS: {r.rss_idle_mib:.0f} MiB before the load, peak {r.rss_peak_mib:.0f} "
        f"MiB during it, {r.rss_after_mib:.0f} MiB once it ended"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argument_parser("responsiveness", __doc__)
    p.add_argument("--concurrency", type=int, default=None, help="default 16; 5 with --worst-case")
    p.add_argument(
        "--worst-case",
        action="store_true",
        help=f"one-colour {WORST_CASE_SIDE}x{WORST_CASE_SIDE} PNGs instead of photos",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=40.0,
        help="seconds of saturation (probes run inside it, after the ramp-up)",
    )
    p.add_argument(
        "--ramp", type=float, default=3.0, help="seconds of load before the probes start"
    )
    p.add_argument("--idle", type=float, default=10.0, help="seconds of idle probing")
    p.add_argument("--interval-ms", type=float, default=10.0)
    p.add_argument(
        "--size",
        type=parse_size,
        default=(4000, 3000),
        help="WxH of references; pickups are the same size, portrait",
    )
    p.add_argument(
        "--preprocess-processes",
        type=int,
        default=0,
        help="PREPROCESS_PROCESSES of the server (0 = decode and tile in threads)",
    )
    p.add_argument(
        "--worker-nice",
        type=int,
        default=None,
        help="WORKER_NICE of the server (default: the service's default)",
    )
    p.add_argument(
        "--helpers-nice",
        type=int,
        default=10,
        help="niceness of the image host and load generator processes, which stand in for "
        "other machines (0 = compete with the server as equals)",
    )
    add_torch_threads_flag(p)
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> Result:
    apply_torch_threads(args.torch_threads)
    w, h = args.size
    concurrency = args.concurrency or (5 if args.worst_case else 16)
    if args.worst_case:
        side = WORST_CASE_SIDE
        big = {"big-0.png": flat_png(side, side, 0x70), "big-1.png": flat_png(side, side, 0x90)}
        images, references, pickups = big, ["big-0.png"], ["big-1.png"]
        shape = (
            f"1 reference + 1 pickup {side}x{side} one-colour PNG "
            f"({len(big['big-0.png']) // 1024} KB each)"
        )
    else:
        images = {
            "ref-0.jpg": photo_jpeg((w, h), seed=1),
            "ref-1.jpg": photo_jpeg((w, h), seed=2),
            "pick-0.jpg": photo_jpeg((h, w), seed=3),
            "pick-1.jpg": photo_jpeg((h, w), seed=4),
        }
        references, pickups = ["ref-0.jpg", "ref-1.jpg"], ["pick-0.jpg", "pick-1.jpg"]
        shape = f"2 reference {w}x{h} + 2 pickup {h}x{w} JPEG"
    print(f"machine: {machine()}")
    print(
        f"load: {concurrency} concurrent inspections, {shape} fetched from loopback; health "
        f"every {args.interval_ms:.0f} ms on its own channel and process",
        flush=True,
    )
    interval = args.interval_ms / 1000.0
    overrides: dict[str, object] = {
        "max_new_tokens": 1024,
        "max_output_retries": 0,
        "output_limits": OutputLimits(
            max_analysis_chars=8, max_evidence_chars=8, max_result_chars=4
        ),
        "preprocess_processes": args.preprocess_processes,
    }
    if args.worker_nice is not None:
        overrides["worker_nice"] = args.worker_nice
    # The image host and the load generator stand in for other machines: they yield the CPU
    # to the server under test (and the probe), as they would by not sharing its cores.
    with (
        ImageServerProcess(images, nice=args.helpers_nice) as server,
        ChildProcess(nice=args.helpers_nice) as loader,
        ChildProcess() as prober,
    ):
        request = make_request(
            [pb.Image(uri=server.url(name)) for name in references],
            [pb.Image(uri=server.url(name)) for name in pickups],
        ).SerializeToString()
        async with running_app(**overrides) as app:
            target = f"127.0.0.1:{app.port}"
            idle = await prober.call(probe_sync, target, interval, args.idle)
            before = dataclasses.asdict(app.engine.stats())
            probe_window = max(args.duration - args.ramp, interval)
            gc.collect()
            with RssSampler() as rss:
                rss_idle = rss.peak_mib
                load, saturated = await asyncio.gather(
                    loader.call(saturate_sync, target, [request], concurrency, args.duration),
                    prober.call(probe_sync, target, interval, probe_window, args.ramp),
                )
            after = dataclasses.asdict(app.engine.stats())
            # What the server keeps once its calls have ended (its caches and arenas).
            gc.collect()
            await asyncio.sleep(1.0)
            rss_after = RssSampler.now_mib()
    result = Result(
        idle=LatencySummary.of([lat for _, lat in idle]),
        saturated=LatencySummary.of([lat for _, lat in saturated]),
        load=load,
        engine_batches=_delta(after, before, "steps") or _delta(after, before, "batches"),
        engine_rows=_delta(after, before, "row_steps") or _delta(after, before, "rows"),
        rss_idle_mib=rss_idle,
        rss_peak_mib=rss.peak_mib,
        rss_after_mib=rss_after,
    )
    print()
    print(report(result))
    verdict = "met" if result.saturated.p99_ms < TARGET_P99_MS else "NOT met"
    print(
        f"\nRATIOS saturated/idle health latency: p50 "
        f"{result.saturated.p50_ms / result.idle.p50_ms:.2f}x, p99 "
        f"{result.saturated.p99_ms / result.idle.p99_ms:.2f}x; saturated p99 "
        f"{result.saturated.p99_ms:.1f} ms (target < {TARGET_P99_MS:.0f} ms: {verdict})"
    )
    return result


def main(argv: Sequence[str] | None = None) -> Result:
    quiet_logs()
    started = time.perf_counter()
    result = asyncio.run(run(parse_args(argv)))
    print(f"(total benchmark time {time.perf_counter() - started:.0f} s)")
    return result


if __name__ == "__main__":
    main()
