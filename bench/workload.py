"""Workload benchmark: traffic shaped like a returns operation, through the real gRPC server.

    .venv/bin/python -m bench.workload            # default run (a few minutes on 2 cores)
    .venv/bin/python -m bench.workload --quick    # CI-sized

The traffic model (``bench.traffic``, parameters printed with the results): a catalogue with
Zipf-distributed product popularity, so catalogue photos repeat across inspections and pickup
photos do not; 1-3 catalogue photos (1 tile) and 1-3 pickup photos (1 tile, or 2 tiles and a
thumbnail) per request, 3-8 questions, fetched from a loopback HTTP server in a process of its
own. Every row is its own in-process service with the demo model, recording off, all running
at once and measured in turn on the same request sequence:

* ``seed-style``: the replaced service's method (one ``generate`` per request, one at a time,
  unconstrained), each output forced to ours' mean natural output length measured during the
  warm-up, so both rows generate the same number of tokens;
* ``ours, cache off``: the production engine, constrained decoding to its natural end,
  VISION_CACHE_BYTES=0 and FETCH_CACHE_BYTES=0;
* ``ours``: the same with the vision-feature cache and the reference-image HTTP cache (the
  production defaults). The image server answers as a CDN would: ``Cache-Control`` with a
  day's lifetime, an ETag, 304 to a matching revalidation.

Closed loop at each ``--concurrency``, then open loop at ``--rate`` requests/s (Poisson
arrivals). Printed: requests/s, p50/p99, CPU seconds per inspection (server and engine
processes), the catalogue-photo repeat rate the services saw, per-stage time per request,
whether ours' answers are the same with the cache on and off, and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from bench.baseline import ForcedLength
from bench.common import (
    LatencySummary,
    add_torch_threads_flag,
    apply_torch_threads,
    argument_parser,
    quiet_logs,
    serving_app,
)
from bench.engine import cpu_seconds
from bench.image_server import ImageServerProcess
from bench.load import ChildProcess, drive_open_sync, drive_sync
from bench.traffic import Inspection, RepeatCounter, Traffic, TrafficModel, images_for, request_for
from bench.workload_report import CACHE_OFF, OURS, SEED, STAGES, Level, combine, report
from inference_svc.app import InferenceApp
from inference_svc.domain.models import OutputLimits
from svc_common.inference_metrics import STAGE_SECONDS

# A seed-style output that is not valid JSON is answered MODEL_OUTPUT_INVALID after its one
# generate: the model, the parse and the reply were all done.
CDN_CACHING = "public, max-age=86400"
COMPLETED = {("OK", ""), ("INTERNAL", "MODEL_OUTPUT_INVALID")}


@dataclass(frozen=True)
class Row:
    name: str
    engine: ForcedLength
    overrides: dict[str, object]


def _common(args: argparse.Namespace) -> dict[str, object]:
    # The untrained model fills every string to its bound: these give complete answers of a
    # few dozen tokens per question; with --tokens the bounds outlast the forced length.
    wide = max(600, args.tokens * 16)
    limits = (
        OutputLimits(max_analysis_chars=wide, max_evidence_chars=wide, max_result_chars=120)
        if args.tokens
        else OutputLimits(max_analysis_chars=24, max_evidence_chars=16, max_result_chars=8)
    )
    common: dict[str, object] = {
        "torch_threads": args.torch_threads,
        "max_output_retries": 0,
        "max_batch_size": args.max_batch_size,
        "output_limits": limits,
    }
    if args.in_process:
        common["engine_process"] = False
    return common


def ours_rows(args: argparse.Namespace) -> list[Row]:
    engine = ForcedLength("local", args.model, forced=bool(args.tokens))
    base = {
        **_common(args),
        "constrained_decoding": True,
        "max_new_tokens": args.tokens or 1024,
    }
    rows = [Row(OURS, engine, {**base, "vision_cache_bytes": args.cache_mb << 20})]
    if not args.no_cache_off:
        off = {**base, "vision_cache_bytes": 0, "fetch_cache_bytes": 0}
        rows.insert(0, Row(CACHE_OFF, engine, off))
    return rows


def seed_row(args: argparse.Namespace, tokens: int) -> Row:
    overrides = {
        **_common(args),
        "constrained_decoding": False,
        "max_new_tokens": args.tokens or tokens,
        "vision_cache_bytes": 0,
        "fetch_cache_bytes": 0,
    }
    if not args.in_process:
        overrides["engine_process"] = args.seed_engine_process
    return Row(SEED, ForcedLength("sequential", args.model, forced=True), overrides)


def stage_sums(registry: CollectorRegistry) -> dict[str, float]:
    out: dict[str, float] = {}
    for metric in registry.collect():
        if metric.name != STAGE_SECONDS:
            continue
        for sample in metric.samples:
            if sample.name.endswith("_sum"):
                out[sample.labels["stage"]] = sample.value
    return out


def _engine_pid(app: InferenceApp) -> int | None:
    pid = getattr(app.engine, "pid", None)
    return pid if isinstance(pid, int) else None


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.traffic = Traffic(TrafficModel(args.products, args.zipf, args.seed))
        self.repeats = RepeatCounter(set())
        self.apps: dict[str, InferenceApp] = {}
        self.rows: dict[str, Row] = {}
        self.client: ChildProcess | None = None
        self.url = ""
        self.cache_hits: dict[str, int] = {}
        self.seed_levels = set(args.seed_levels or args.concurrency)

    def requests(self, inspections: Sequence[Inspection]) -> list[bytes]:
        return [
            request_for(inspection, number, self.url).SerializeToString()
            for number, inspection in enumerate(inspections)
        ]

    async def run_level(
        self, mode: str, inspections: list[Inspection], concurrency: int, rate: float
    ) -> list[Level]:
        self.repeats.add(inspections)
        requests = self.requests(inspections)
        pids = {p for p in map(_engine_pid, self.apps.values()) if p is not None}
        out = []
        for name, app in self.apps.items():
            if name == SEED and rate == 0 and concurrency not in self.seed_levels:
                continue
            out.append(await self._measure(name, app, mode, requests, concurrency, rate, pids))
            out[-1].repeat_rate = self.repeats.rate
        return out

    async def _measure(
        self,
        name: str,
        app: InferenceApp,
        mode: str,
        requests: list[bytes],
        concurrency: int,
        rate: float,
        pids: set[int],
    ) -> Level:
        assert self.client is not None
        target = f"127.0.0.1:{app.port}"
        engine_pid = _engine_pid(app)
        others = pids - {engine_pid} if engine_pid else pids
        cpu_before = cpu_seconds(engine_pid, others)
        stages_before = stage_sums(app.registry)
        if rate > 0:
            load = await self.client.call(drive_open_sync, target, requests, rate, self.args.seed)
        else:
            load = await self.client.call(drive_sync, target, requests, concurrency, len(requests))
        cpu = {k: v - cpu_before.get(k, 0.0) for k, v in cpu_seconds(engine_pid, others).items()}
        stages = stage_sums(app.registry)
        n = len(requests)
        ok = [o for o in load.outcomes if (o.code, o.reason) in COMPLETED]
        failures: dict[str, int] = {}
        for o in load.outcomes:
            if (o.code, o.reason) not in COMPLETED:
                failures[f"{o.code}/{o.reason}"] = failures.get(f"{o.code}/{o.reason}", 0) + 1
        level = Level(
            row=name,
            mode=mode,
            requests=n,
            completed=len(ok),
            wall_s=load.wall_s,
            latency=LatencySummary.of([o.latency_s for o in ok]),
            latencies_s=[o.latency_s for o in ok],
            cpu_s={k: v / n for k, v in cpu.items()},
            stages_ms={
                s: (stages.get(s, 0.0) - stages_before.get(s, 0.0)) * 1000 / n for s in STAGES
            },
            answers={o.index: o.answer for o in ok if o.code == "OK"},
            failures=failures,
        )
        print(
            f"  {name:<16} {mode:<10} {level.completed}/{n} in {level.wall_s:6.1f} s, "
            f"{level.rps:5.2f} req/s, p50 {level.latency.p50_ms:7.0f} ms, service CPU "
            f"{level.service_cpu_s:5.2f} s/inspection"
            + (f", failures {failures}" if failures else ""),
            flush=True,
        )
        return level

    async def run(self) -> list[Level]:
        args = self.args
        warm = self.traffic.stream(args.warmup)
        levels = {
            c: [self.traffic.stream(self.count(c)) for _ in range(args.repeats)]
            for c in args.concurrency
        }
        opened = self.traffic.stream(args.open_requests) if args.rate > 0 else []
        everything = [*warm, *(i for v in levels.values() for run in v for i in run), *opened]
        images = images_for(everything, self.traffic.model.pickup_pool)
        results: list[Level] = []
        async with contextlib.AsyncExitStack() as stack:
            server = stack.enter_context(ImageServerProcess(images, cache_control=CDN_CACHING))
            self.url = server.url("").rstrip("/")
            self.client = stack.enter_context(ChildProcess())
            for row in ours_rows(args):
                await self._start(stack, row)
            tokens = await self._warm_up(warm)
            await self._start(stack, seed_row(args, tokens))
            if not args.tokens:  # a forced-length generate would warm it for minutes on a GPU
                warm_seed = self.requests(warm[: max(1, args.warmup // 4)])
                await self.client.call(drive_sync, self._target(SEED), warm_seed, 1, len(warm_seed))
            print(f"ours' mean natural output length: {tokens} tokens", flush=True)
            for c, streams in levels.items():
                # Repeats on fresh requests, the rows in turn each time: the host's drift
                # falls on every row alike.
                runs = [await self.run_level(f"c={c}", stream, c, 0.0) for stream in streams]
                for name in self.apps:
                    mine = [level for run in runs for level in run if level.row == name]
                    if mine:
                        results.append(combine(mine))
            if opened:
                mode = f"open {args.rate:g}/s"
                results.extend(await self.run_level(mode, opened, 0, args.rate))
            for name, app in self.apps.items():
                self.cache_hits[name] = app.engine.stats().vision_cache_hits
        return results

    def count(self, concurrency: int) -> int:
        return int(max(self.args.requests, concurrency * self.args.rounds))

    def _target(self, name: str) -> str:
        return f"127.0.0.1:{self.apps[name].port}"

    async def _start(self, stack: contextlib.AsyncExitStack, row: Row) -> None:
        app = await stack.enter_async_context(serving_app(row.engine, dict(row.overrides)))
        self.apps[row.name] = app
        self.rows[row.name] = row

    async def _warm_up(self, warm: list[Inspection]) -> int:
        """Warms ours' rows on the warm-up requests; returns their mean output length."""
        assert self.client is not None
        self.repeats.add(warm)
        requests = self.requests(warm)
        app = self.apps[OURS]
        before = app.engine.stats()
        for name in self.apps:
            await self.client.call(drive_sync, self._target(name), requests, 4, len(requests))
        after = app.engine.stats()
        rows = after.rows - before.rows
        return max(1, round((after.tokens_generated - before.tokens_generated) / max(rows, 1)))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argument_parser("workload", __doc__)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 15])
    p.add_argument("--repeats", type=int, default=1, help="closed-loop runs per level")
    p.add_argument("--requests", type=int, default=8, help="requests per level, at least")
    p.add_argument("--rounds", type=int, default=2, help="at least concurrency x rounds")
    p.add_argument("--rate", type=float, default=3.0, help="open-loop arrivals/s (0: none)")
    p.add_argument("--open-requests", type=int, default=30)
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--products", type=int, default=200)
    p.add_argument("--zipf", type=float, default=1.1)
    p.add_argument("--seed", type=int, default=24)
    p.add_argument("--cache-mb", type=int, default=256, help="VISION_CACHE_BYTES of ours, MiB")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--model", choices=["demo", "full_size"], default="demo")
    p.add_argument("--seed-engine-process", action="store_true")
    p.add_argument(
        "--tokens",
        type=int,
        default=0,
        help="force every output to this many tokens (0: ours' natural length; the seed-style "
        "row gets ours' mean)",
    )
    p.add_argument(
        "--seed-levels",
        type=int,
        nargs="*",
        default=None,
        help="concurrencies at which the seed-style row is measured (default: all); it serves "
        "one request at a time, so its requests/s does not depend on the concurrency",
    )
    p.add_argument("--no-cache-off", action="store_true", help="leave out 'ours, cache off'")
    p.add_argument(
        "--in-process", action="store_true", help="every row's engine in the server process"
    )
    p.add_argument("--quick", action="store_true", help="CI-sized: c=1 2, 2 requests each")
    add_torch_threads_flag(p)
    args = p.parse_args(argv)
    if args.quick:
        args.concurrency, args.requests, args.rounds = [1, 2], 2, 1
        args.rate, args.open_requests, args.warmup, args.products = 4.0, 3, 2, 5
    return args


def main(argv: Sequence[str] | None = None) -> list[Level]:
    args = parse_args(argv)
    quiet_logs()
    apply_torch_threads(args.torch_threads)
    bench = Bench(args)
    results = asyncio.run(bench.run())
    print(report(bench.traffic.model.describe(), bench.cache_hits, results))
    return results


if __name__ == "__main__":
    main()
