"""Each benchmark, run in a tiny configuration, produces its whole report.

These prove the benchmarks work; they assert on the structure of the figures, never on their
values (timings are for BENCHMARKS.md, not for tests).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator

import numpy as np
import psutil
import pytest
from PIL import Image

from bench import (
    decode_step,
    engine,
    engine_loop,
    handover,
    overhead,
    preprocess,
    responsiveness,
)
from bench.common import LatencySummary, percentile, table
from bench.photos import photo_jpeg
from inference_svc.engine import pixel_slabs

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The benchmarks quiet the service loggers for their tables; later tests need them back."""
    names = ("", "inference_svc", "svc_common", "persistence_svc", "transformers", "grpc")
    saved = {name: logging.getLogger(name).level for name in names}
    handlers = list(logging.getLogger().handlers)
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)
    logging.getLogger().handlers[:] = handlers


def _finite_positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def test_photo_is_a_deterministic_jpeg_of_the_requested_size() -> None:
    data = photo_jpeg((320, 240), seed=7)
    assert data == photo_jpeg((320, 240), seed=7)
    assert data != photo_jpeg((320, 240), seed=8)
    with Image.open(__import__("io").BytesIO(data)) as image:
        assert image.format == "JPEG"
        assert image.size == (320, 240)
        # Photo-like: not a flat image (texture and noise everywhere).
        assert float(np.asarray(image.convert("L"), dtype=np.float32).std()) > 5.0


def test_percentiles_and_tables() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 99) == 99.0
    assert math.isnan(percentile([], 50))
    summary = LatencySummary.of([0.001, 0.002, 0.003])
    assert (summary.count, summary.p50_ms, summary.max_ms) == (3, 2.0, 3.0)
    lines = table(["a", "bb"], [["1", "2"], ["333", "4"]]).splitlines()
    assert len(lines) == 4
    assert all(line.startswith("| ") and line.endswith(" |") for line in lines)


def test_preprocess_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    cases = preprocess.main(["--images", "1", "--repeats", "1", "--size", "640x480"])
    out = capsys.readouterr().out
    assert [c.role for c in cases] == ["reference", "pickup"]
    assert [c.tiles for c in cases] == [1, 3]  # landscape reference; portrait pickup 1x2 + thumb
    for case in cases:
        assert set(case.modes) == {"exact", "fast"}
        for mode, result in case.modes.items():
            assert len(case.seed_ms) == len(result.ms) == 1
            assert _finite_positive(case.speedup(mode))
            assert 0.0 <= result.mean_abs <= result.max_abs
        assert case.modes["exact"].max_abs == 0.0  # exact is the seed-style pipeline's tiles
    assert "RATIOS seed-style/ours time: reference exact" in out
    assert "| reference (max_tiles=1) |" in out


def test_engine_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    results = engine.main(
        [
            "--concurrency",
            "1",
            "2",
            "--requests",
            "2",
            "--rounds",
            "1",
            "--tokens",
            "8",
            "--image-size",
            "320x240",
            "--distinct",
            "1",
            "--references",
            "1",
            "--pickups",
            "1",
            "--with-unconstrained",
            "--repeats",
            "2",
        ]
    )
    out = capsys.readouterr().out
    rows = {r.row for r in results}
    assert rows == {"seed-style", "ours", "ours, unconstrained", "ours, natural length"}
    assert {(r.row, r.concurrency) for r in results} == {(n, c) for n in rows for c in (1, 2)}
    for r in results:
        # Two runs of 2 calls, combined: requests/s is the median of the two runs'.
        assert r.completed == r.requests == 4, r.failures
        assert len(r.run_rps) == 2 and len(r.latencies_s) == 4
        assert r.rps == pytest.approx(sum(r.run_rps) / 2)
        assert _finite_positive(r.rps) and _finite_positive(r.latency.p50_ms)
        if r.row != "ours, natural length":
            assert r.tokens == 8 * r.requests  # the forced length, exactly
    assert next(r for r in results if r.row == "seed-style").mean_batch == 1.0
    assert "Concurrency 2:" in out
    assert "RATIOS ours/seed-style" in out and "c=2: throughput" in out
    assert "CPU ceiling" in out and "cores busy" in out
    for r in results:  # every process of the row did work the CPU accounting saw
        assert r.cpu_per_request["server"] > 0 and r.cpu_ms_per_request > 0
    ours = next(r for r in results if (r.row, r.concurrency) == ("ours", 2))
    base = next(r for r in results if (r.row, r.concurrency) == ("seed-style", 2))
    # No run can beat its CPU ceiling (the CPU seen over a window is at most cores x the
    # window): a ratio above it means the accounting lost or double-counted a process. The
    # margin covers the CPU window being a little longer than the client's wall clock.
    ceiling = engine.cpu_ceiling(ours, base, psutil.cpu_count() or 1)
    assert 0 < ours.rps / base.rps <= ceiling * 1.1


def test_engine_loop_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    runs = engine_loop.main(
        ["--concurrency", "2", "--requests", "2", "--tokens", "6", "--tiles", "1", "--repeats", "1"]
    )
    out = capsys.readouterr().out
    assert [r.variant for r in runs] == list(engine_loop.VARIANTS)
    assert all(_finite_positive(r.rps) and r.mean_batch >= 1 for r in runs)
    assert all(r.concurrency == 2 for r in runs)
    for variant in engine_loop.VARIANTS:
        assert f"| {variant} " in out
    assert "ours vs this" in out
    assert "production prompt, 8 tiles each" in out  # the service's prompt, bench.engine's tiles


def test_decode_step_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    timings = decode_step.main(
        ["--rows", "1", "3", "--steps", "2", "--repeats", "2", "--width", "64", "--with-prefill"]
    )
    out = capsys.readouterr().out
    assert {(t.variant, t.rows) for t in timings} == {
        (v, r) for v in ("modules", "fused, keys by row", "fused") for r in (1, 3)
    }
    assert all(_finite_positive(t.cpu_ms) and _finite_positive(t.wall_ms) for t in timings)
    assert re.search(r"\| 3 +\| fused +\|", out) and "CPU vs modules" in out
    assert "the variants' logits agree within" in out
    # The contention table: the step alone, beside a prefill thread and beside a process.
    for where in ("| alone ", "| beside a prefill thread ", "| beside a prefill process "):
        assert where in out


@pytest.mark.skipif(not pixel_slabs.available(), reason="no memfd_create on this platform")
def test_handover_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    # The reader checks each request's tiles, so a corrupted hand-over fails the run.
    figures = handover.main(["--tiles", "2", "--messages", "3", "--rounds", "2"])
    out = capsys.readouterr().out
    assert set(figures) == {"pickled", "slab"}
    assert all(_finite_positive(sent) and read >= 0 for sent, read in figures.values())
    assert "| slab " in out and "RATIOS pickled/slab CPU per hand-over" in out


def test_overhead_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    rows = overhead.main(["--requests", "2", "--warmup", "1", "--size", "320x240", "--sets", "1"])
    out = capsys.readouterr().out
    assert [r.name for r in rows] == ["recording on (spooled events)", "recording off"]
    for row in rows:
        stages = row.per_stage_ms()
        assert set(stages) == {*overhead.STAGES, "model", "overhead", "latency"}
        assert all(len(v) == 2 for v in stages.values())
        assert all(o.code == "OK" for o in row.outcomes)
    assert "RATIOS overhead per inspection p50" in out
    assert "| fetch " in out and "| overhead " in out


def test_responsiveness_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    result = responsiveness.main(
        [
            "--duration",
            "3",
            "--ramp",
            "1",
            "--idle",
            "0.5",
            "--concurrency",
            "2",
            "--size",
            "320x240",
            "--interval-ms",
            "20",
        ]
    )
    out = capsys.readouterr().out
    assert result.idle.count > 0 and result.saturated.count > 0
    assert result.completed > 0
    assert _finite_positive(result.saturated.p99_ms)
    assert "RATIOS saturated/idle health latency" in out
    assert "| saturated |" in out
