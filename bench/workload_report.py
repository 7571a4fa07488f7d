"""The workload benchmark's results: one row at one load, repeats combined, the report."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import torch

from bench.common import LatencySummary, fmt, machine, ratio, table

STAGES = ("fetch", "preprocess", "queue_wait", "prefill", "decode_tokens", "parse", "total")
SEED, CACHE_OFF, OURS = "seed-style", "ours, cache off", "ours"


@dataclass
class Level:
    row: str
    mode: str  # "c=N" closed loop or "open R/s"
    requests: int
    completed: int
    wall_s: float
    latency: LatencySummary
    cpu_s: dict[str, float]  # per inspection, by process role
    stages_ms: dict[str, float]  # mean per request
    answers: dict[int, str] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    repeat_rate: float = math.nan
    latencies_s: list[float] = field(default_factory=list)
    # With repeats: each run's requests/s (rps is their median).
    run_rps: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        if self.run_rps:
            return statistics.median(self.run_rps)
        return self.completed / self.wall_s if self.wall_s else 0.0

    @property
    def service_cpu_s(self) -> float:
        return self.cpu_s.get("server", 0.0) + self.cpu_s.get("engine", 0.0)


def combine(runs: list[Level]) -> Level:
    """One row's repeats of one load: requests/s the median of the runs', latency percentiles
    over every call, CPU and stage times per inspection over all of them."""
    if len(runs) == 1:
        return runs[0]
    total = sum(r.requests for r in runs)

    def mean(values: list[dict[str, float]]) -> dict[str, float]:
        keys = {k for v in values for k in v}
        return {
            k: sum(v.get(k, 0.0) * r.requests for v, r in zip(values, runs, strict=True)) / total
            for k in keys
        }

    failures: dict[str, int] = {}
    for r in runs:
        for key, count in r.failures.items():
            failures[key] = failures.get(key, 0) + count
    latencies = [s for r in runs for s in r.latencies_s]
    return Level(
        row=runs[0].row,
        mode=runs[0].mode,
        requests=total,
        completed=sum(r.completed for r in runs),
        wall_s=sum(r.wall_s for r in runs),
        latency=LatencySummary.of(latencies),
        cpu_s=mean([r.cpu_s for r in runs]),
        stages_ms=mean([r.stages_ms for r in runs]),
        answers={n * 1_000_000 + i: a for n, r in enumerate(runs) for i, a in r.answers.items()},
        failures=failures,
        repeat_rate=runs[-1].repeat_rate,
        latencies_s=latencies,
        run_rps=[r.rps for r in runs],
    )


def same_answers(results: list[Level]) -> tuple[int, int]:
    """(equal, compared): ours' answers with the cache on against off, request by request."""
    by = {(r.row, r.mode): r for r in results}
    equal = compared = 0
    for (row, mode), level in by.items():
        if row != OURS or (CACHE_OFF, mode) not in by:
            continue
        other = by[(CACHE_OFF, mode)].answers
        for index, answer in level.answers.items():
            if index in other:
                compared += 1
                equal += answer == other[index]
    return equal, compared


def report(traffic: str, cache_hits: dict[str, int], results: list[Level]) -> str:
    by = {(r.row, r.mode): r for r in results}
    modes = list(dict.fromkeys(r.mode for r in results))
    body = []
    for r in results:
        body.append(
            [
                r.mode,
                r.row,
                f"{r.completed}/{r.requests}",
                fmt(r.rps, 2),
                fmt(r.latency.p50_ms, 0),
                fmt(r.latency.p99_ms, 0),
                fmt(r.service_cpu_s, 2),
                f"{r.repeat_rate:.0%}",
            ]
        )
    head = ["load", "row", "done", "req/s", "p50 ms", "p99 ms", "CPU s/insp.", "ref repeat"]
    stage_rows = [
        [r.mode, r.row, *(fmt(r.stages_ms[s], 0) for s in STAGES)] for r in results if r.row != SEED
    ]
    ratios = []
    # Levels without a seed-style measurement (--seed-levels) take its first closed-loop one
    # for requests/s (marked *): it serves one request at a time, whatever the concurrency.
    first_seed = next((r for r in results if r.row == SEED and r.mode.startswith("c=")), None)
    for mode in modes:
        ours, off, seed = by.get((OURS, mode)), by.get((CACHE_OFF, mode)), by.get((SEED, mode))
        if ours is None:
            continue
        base, mark = (seed, "") if seed else (first_seed, "*")
        ratios.append(
            [
                mode,
                f"{ratio(ours.rps, base.rps):.2f}x{mark}" if base else "-",
                f"{ratio(seed.latency.p50_ms, ours.latency.p50_ms):.2f}x" if seed else "-",
                f"{ratio(ours.rps, off.rps):.2f}x" if off else "-",
                f"{ratio(off.service_cpu_s, ours.service_cpu_s):.2f}x" if off else "-",
            ]
        )
    equal, compared = same_answers(results)
    hits = cache_hits
    return "\n\n".join(
        [
            f"Machine: {machine()}",
            f"Traffic: {traffic}",
            table(head, body),
            "Server-side time per request by stage (ms, wall time of the stage, means):\n\n"
            + table(["load", "row", *STAGES], stage_rows),
            table(
                ["load", "ours vs seed req/s", "p50 seed/ours", "cache on/off req/s", "CPU off/on"],
                ratios,
            ),
            f"ours' answers with the cache on and off: {equal}/{compared} identical; vision "
            f"cache hits: {hits.get(OURS, 0)}",
            gpu_memory(),
            "RATIOS " + " ".join(f"{row[0]}={row[1]}/{row[3]}" for row in ratios),
        ]
    )


def gpu_memory() -> str:
    if not torch.cuda.is_available():
        return "GPU memory: - (no CUDA)"
    peak = torch.cuda.max_memory_allocated() / 2**30
    return f"GPU memory, max allocated in the server process: {peak:.2f} GiB"
