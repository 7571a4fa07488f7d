"""The workload benchmark: its traffic model, and a CI-sized run of the whole report through
the real gRPC servers (structure only, never timings)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import pytest

from bench import workload
from bench.traffic import RepeatCounter, Traffic, TrafficModel


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The benchmark quiets the service loggers for its tables; later tests need them back."""
    names = ("", "inference_svc", "svc_common", "persistence_svc", "transformers", "grpc")
    saved = {name: logging.getLogger(name).level for name in names}
    handlers = list(logging.getLogger().handlers)
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)
    logging.getLogger().handlers[:] = handlers


def test_the_traffic_is_seeded_and_shaped_as_stated() -> None:
    model = TrafficModel(products=50, zipf_s=1.1, seed=3)
    first, again = Traffic(model).stream(300), Traffic(model).stream(300)
    assert first == again
    assert first != Traffic(TrafficModel(products=50, seed=4)).stream(300)
    for inspection in first:
        assert 1 <= len(inspection.references) <= 3
        assert 1 <= len(inspection.pickups) <= 3
        assert 3 <= len(inspection.questions) <= 8
        assert len(set(inspection.questions)) == len(inspection.questions)
    # Zipf: the most popular product is drawn far more often than the median one.
    counts = [sum(i.product == p for i in first) for p in range(50)]
    assert counts[0] > 5 * max(counts[25], 1)


def test_the_repeat_rate_counts_catalogue_photos_seen_before() -> None:
    traffic = Traffic(TrafficModel(products=3, seed=1))
    counter = RepeatCounter(set())
    stream = traffic.stream(40)
    counter.add(stream)
    distinct = len({name for i in stream for name in i.references})
    assert counter.references == sum(len(i.references) for i in stream)
    assert counter.repeats == counter.references - distinct
    assert 0.0 < counter.rate < 1.0


@pytest.mark.slow
def test_quick_run_reports_every_row_and_level(capsys: pytest.CaptureFixture[str]) -> None:
    results = workload.main(["--quick"])
    rows = {(r.row, r.mode) for r in results}
    modes = {r.mode for r in results}
    assert modes == {"c=1", "c=2", "open 4/s"}
    for mode in modes:
        assert {(name, mode) for name in (workload.SEED, workload.CACHE_OFF, workload.OURS)} <= rows
    for r in results:
        assert r.completed == r.requests, r.failures
        assert math.isfinite(r.latency.p50_ms)
        assert r.service_cpu_s > 0
    out = capsys.readouterr().out
    assert "ref repeat" in out
    assert "RATIOS " in out
    assert "identical" in out
