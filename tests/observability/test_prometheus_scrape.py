"""Operators' Prometheus scrapes both services as deployed: a real Prometheus server (Debian's
``prometheus``) scrapes the two real services' /metrics endpoints on loopback while
inspections run, and the series the dashboard and alerts are written against are queried back
through its HTTP API."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import grpc
import pytest
import pytest_asyncio
from rpi.inspection.v1 import inspection_pb2 as pb
from rpi.inspection.v1 import inspection_pb2_grpc as pb_grpc
from rpi.persistence.v1 import persistence_pb2 as ppb
from rpi.persistence.v1 import persistence_pb2_grpc as ppb_grpc

from inference_svc.app import InferenceApp
from persistence_svc.app import PersistenceApp
from svc_common import grpc_metrics, inference_metrics, persistence_metrics
from svc_common._labels import go_code_name
from tests.support.e2e import QUESTIONS, ImageServer, inference_settings, make_request
from tests.support.persistence import persistence_settings
from tests.support.postgres import PostgresForTests
from tests.support.prometheus import PrometheusServer, find_prometheus

from .test_deploy_observability import _dashboard_exprs

INSPECTION_SERVICE = "rpi.inspection.v1.InspectionService"
PERSISTENCE_SERVICE = "rpi.persistence.v1.PersistenceService"
JOBS = ["inference", "persistence"]
UNARY_CALLS = 1
STREAM_CALLS = 1
SUCCESSFUL = UNARY_CALLS + STREAM_CALLS


@dataclass
class Calls:
    """What the client saw: ids of the successful inspections, and the status codes of the
    failed calls by Go-spelled name (as grpc_code spells them)."""

    inspection_ids: list[str]
    failed: Counter[str]


@dataclass
class Scraped:
    prometheus: PrometheusServer
    metrics_ports: dict[str, int]
    calls: Calls
    # A time after two scrapes of the successful calls and before the failing ones.
    healthy_at: float


@pytest_asyncio.fixture(scope="module")
async def scraped(
    postgres: PostgresForTests,
    image_server: ImageServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Scraped]:
    """Both services with their metrics endpoints on, scraped every second by Prometheus
    while a few inspections (and a few failing calls) run; yields once Prometheus holds a
    scrape of each service taken after all of them completed."""
    binary = find_prometheus()
    if binary is None:
        pytest.skip("/usr/bin/prometheus not installed (apt-get install prometheus)")
    tmp = tmp_path_factory.mktemp("prometheus-scrape")
    async with postgres.fresh_database("rpi_prom_") as database_url:
        persistence = PersistenceApp(
            persistence_settings(database_url, metrics_port=0, metrics_host="127.0.0.1")
        )
        inference: InferenceApp | None = None
        prometheus: PrometheusServer | None = None
        try:
            await persistence.start()
            inference = InferenceApp(
                inference_settings(
                    tmp / "inference",
                    persistence.target,
                    metrics_port=0,
                    metrics_host="127.0.0.1",
                )
            )
            await inference.start()
            assert inference.metrics_server is not None
            assert persistence.metrics_port is not None
            ports = {
                "inference": inference.metrics_server.port,
                "persistence": persistence.metrics_port,
            }
            prometheus = PrometheusServer(binary, tmp, ports)
            await prometheus.start(scrape_interval_s=1.0)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{inference.port}") as channel:
                stub = pb_grpc.InspectionServiceStub(channel)
                inspection_ids = await _run_successful(stub, image_server)
                await _wait_recorded(persistence.target, inspection_ids)
                await _wait_delivered(inference)
                # Two scrapes of the healthy state, so rate() has two samples of every series.
                for _ in range(2):
                    await prometheus.wait_scraped_after(time.time(), JOBS, timeout_s=30)
                healthy_at = time.time()
                calls = Calls(inspection_ids, await _run_failing(stub, image_server))
            await _wait_delivered(inference)
            await prometheus.wait_scraped_after(time.time(), JOBS, timeout_s=30)
            yield Scraped(prometheus, ports, calls, healthy_at)
        finally:
            if prometheus is not None:
                await prometheus.stop()
            if inference is not None:
                await inference.stop(5)
            await persistence.stop(0)


def _request(image_server: ImageServer) -> pb.InspectRequest:
    # One question keeps the (random) model's output, and so the test, short.
    return make_request(image_server, inspection_id=str(uuid.uuid4()), questions=QUESTIONS[:1])


async def _run_successful(
    stub: pb_grpc.InspectionServiceStub, image_server: ImageServer
) -> list[str]:
    """Successful unary and streamed inspections, run concurrently; their ids."""

    async def unary() -> str:
        reply = await stub.Inspect(_request(image_server), timeout=120)
        return reply.inspection.inspection_id

    async def streamed() -> str:
        last = pb.InspectStreamResponse()
        async for message in stub.InspectStream(_request(image_server), timeout=120):
            last = message
        assert last.WhichOneof("event") == "inspection"
        return last.inspection.inspection_id

    # Concurrent, as in production: they share generate batches.
    ids = await asyncio.gather(
        *(unary() for _ in range(UNARY_CALLS)), *(streamed() for _ in range(STREAM_CALLS))
    )
    return list(ids)


async def _run_failing(
    stub: pb_grpc.InspectionServiceStub, image_server: ImageServer
) -> Counter[str]:
    """Two failing calls (invalid input, and a pickup image that is not found); their codes."""
    failed: Counter[str] = Counter()
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await stub.Inspect(make_request(image_server, shipping_id=""), timeout=30)
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    failed[go_code_name(invalid.value.code().name)] += 1
    missing = make_request(
        image_server, pickup_images=[pb.Image(uri=image_server.url("missing.jpg"))]
    )
    with pytest.raises(grpc.aio.AioRpcError) as not_found:
        await stub.Inspect(missing, timeout=30)
    failed[go_code_name(not_found.value.code().name)] += 1
    return failed


async def _wait_recorded(persistence_target: str, inspection_ids: list[str]) -> None:
    """Events reach the persistence service asynchronously: wait (bounded) until each
    inspection is recorded as completed, so its events are counted there."""
    async with grpc.aio.insecure_channel(persistence_target) as channel:
        stub = ppb_grpc.PersistenceServiceStub(channel)
        deadline = time.monotonic() + 20
        pending = list(inspection_ids)
        while pending:
            inspection_id = pending[0]
            try:
                reply = await stub.GetInspection(
                    ppb.GetInspectionRequest(inspection_id=inspection_id), timeout=5
                )
                if reply.inspection.status == ppb.INSPECTION_STATUS_COMPLETED:
                    pending.pop(0)
                    continue
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
            assert time.monotonic() < deadline, f"never recorded as completed: {pending}"
            await asyncio.sleep(0.05)


async def _wait_delivered(inference: InferenceApp) -> None:
    """A record can be readable a moment before the RecordEvents call that wrote it returns
    (and is counted); an empty spool means every sent batch was acknowledged."""
    deadline = time.monotonic() + 20
    while inference.delivery.backlog():
        assert time.monotonic() < deadline, f"{inference.delivery.backlog()} events undelivered"
        await asyncio.sleep(0.05)


async def test_both_services_are_up(scraped: Scraped) -> None:
    prom = scraped.prometheus
    for job in JOBS:
        assert await prom.value(f'up{{job="{job}"}}') == 1, prom.log_tail()
        assert await prom.value(f'scrape_samples_scraped{{job="{job}"}}') > 0


async def test_inspection_calls_counted_by_method_and_code(scraped: Scraped) -> None:
    prom = scraped.prometheus
    base = f'job="inference",grpc_service="{INSPECTION_SERVICE}"'
    assert (
        await prom.value(
            f'grpc_server_handled_total{{{base},grpc_method="Inspect",grpc_type="unary",'
            'grpc_code="OK"}'
        )
        == UNARY_CALLS
    )
    assert (
        await prom.value(
            f'grpc_server_handled_total{{{base},grpc_method="InspectStream",'
            'grpc_type="server_stream",grpc_code="OK"}'
        )
        == STREAM_CALLS
    )
    # Failures by code, spelled as go-grpc-prometheus spells them (existing alerts match).
    failed = {
        s.labels["grpc_code"]: s.value
        for s in await prom.query(
            f'grpc_server_handled_total{{{base},grpc_method="Inspect",grpc_code!="OK"}} > 0'
        )
    }
    assert failed == scraped.calls.failed
    assert failed["InvalidArgument"] >= 1
    # Every started call was handled, whatever its outcome.
    started = await prom.value(f"sum(grpc_server_started_total{{{base}}})")
    assert started == await prom.value(f"sum(grpc_server_handled_total{{{base}}})")
    assert started == SUCCESSFUL + scraped.calls.failed.total()
    # Latency histogram of successful calls, usable by the p95 objective's alert.
    assert (
        await prom.value(f'sum(grpc_server_handling_seconds_count{{{base},grpc_code="OK"}})')
        == SUCCESSFUL
    )
    p95 = await prom.value(
        "histogram_quantile(0.95, sum by (le) (grpc_server_handling_seconds_bucket"
        f'{{{base},grpc_code="OK"}}))'
    )
    assert 0 < p95 < 300


async def test_decisions_match_successful_inspections(scraped: Scraped) -> None:
    prom = scraped.prometheus
    assert await prom.value('sum(rpi_inference_decisions_total{job="inference"})') == SUCCESSFUL
    decisions = await prom.query('rpi_inference_decisions_total{job="inference"}')
    assert {s.labels["decision"] for s in decisions} == set(inference_metrics.DECISIONS)
    assert len(scraped.calls.inspection_ids) == SUCCESSFUL


async def test_image_fetch_errors_counted_by_cause(scraped: Scraped) -> None:
    fetch_errors = {
        s.labels["reason"]: s.value
        for s in await scraped.prometheus.query(
            'rpi_inference_image_fetch_errors_total{job="inference"} > 0'
        )
    }
    # The image server answered 404 for the missing pickup image: dashboards break fetch
    # failures down by these causes, so "other" means the cause was lost on the way.
    assert fetch_errors == {"http_4xx": 1}, (
        f"expected one fetch error with reason http_4xx (one of "
        f"{inference_metrics.FETCH_ERROR_REASONS}), got {fetch_errors}"
    )


async def test_stage_histograms_scraped_with_their_own_buckets(scraped: Scraped) -> None:
    prom = scraped.prometheus
    counts = {
        s.labels["stage"]: s.value
        for s in await prom.query('rpi_inference_stage_seconds_count{job="inference"}')
    }
    assert set(counts) == set(inference_metrics.STAGES)
    # The fetch stage also ran for the request whose image was missing.
    assert counts.pop("fetch") >= SUCCESSFUL
    never_observed = sorted(stage for stage, count in counts.items() if count == 0)
    assert not never_observed, f"stages never observed during {SUCCESSFUL} inspections: {counts}"
    assert all(count >= SUCCESSFUL for count in counts.values()), counts
    # Each stage keeps its own bucket layout through the scrape (+Inf included).
    buckets = {
        s.labels["stage"]: s.value
        for s in await prom.query(
            'count by (stage) (rpi_inference_stage_seconds_bucket{job="inference"})'
        )
    }
    assert buckets == {
        stage: len(layout) + 1 for stage, layout in inference_metrics.STAGE_BUCKETS.items()
    }
    median_total = await prom.value(
        'histogram_quantile(0.5, rpi_inference_stage_seconds_bucket{job="inference",stage="total"})'
    )
    assert 0 < median_total < 300


async def test_persistence_counts_recorded_events_and_calls(scraped: Scraped) -> None:
    prom = scraped.prometheus
    delivered = await prom.value('rpi_inference_events_delivered_total{job="inference"}')
    assert delivered > 0
    events = {
        (s.labels["kind"], s.labels["outcome"]): s.value
        for s in await prom.query('rpi_persistence_events_total{job="persistence"}')
    }
    assert events, "rpi_persistence_events_total is not exposed by the persistence service"
    assert events.get(("result_recorded", "applied"), 0) == SUCCESSFUL, events
    assert (
        await prom.value(
            f'sum(grpc_server_handled_total{{job="persistence",grpc_service="{PERSISTENCE_SERVICE}",'
            'grpc_method="RecordEvents",grpc_code="OK"})'
        )
        > 0
    )
    assert await prom.value('rpi_persistence_db_up{job="persistence"}') == 1
    assert await prom.value('rpi_persistence_write_seconds_count{job="persistence"}') > 0


def _series_name(family: str, kind: str) -> str:
    return f"{family}_count" if kind == "histogram" else family


@pytest.mark.parametrize(
    ("job", "families"),
    [
        ("inference", {**grpc_metrics.METRIC_TYPES, **inference_metrics.METRIC_TYPES}),
        ("persistence", {**grpc_metrics.METRIC_TYPES, **persistence_metrics.METRIC_TYPES}),
    ],
)
async def test_every_exported_family_is_scraped(
    scraped: Scraped, job: str, families: dict[str, str]
) -> None:
    """Dashboards and alerts are checked against svc_common's exported names; this checks
    that the running services really expose each of them to Prometheus."""
    present = {
        s.labels["__name__"]
        for s in await scraped.prometheus.query(f'group by (__name__) ({{job="{job}"}})')
    }
    # Every family, those labelled by a failure cause included (their series exist at zero).
    expected = {_series_name(family, kind) for family, kind in families.items()}
    assert not expected - present, f"not scraped from {job}: {sorted(expected - present)}"


@pytest.mark.parametrize("job", JOBS)
async def test_promtool_check_metrics_on_live_output(
    scraped: Scraped, promtool: str, job: str
) -> None:
    url = f"http://127.0.0.1:{scraped.metrics_ports[job]}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        text = await response.text()
    result = await asyncio.to_thread(
        subprocess.run,
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # promtool prints lint findings (naming, units, _total...) even when it exits 0.
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout


def _concrete(expr: str) -> str:
    """A dashboard query as Grafana sends it for these two jobs."""
    return (
        expr.replace("$__rate_interval", "1m")
        .replace("$inference_job", "inference")
        .replace("$persistence_job", "persistence")
    )


async def test_every_dashboard_query_has_data_while_healthy(scraped: Scraped) -> None:
    """Right after successful inspections only (no error of any kind yet), each dashboard
    query returns a series: a panel shows 0 errors, not "No data", which looks like a broken
    scrape."""
    empty = [
        f"{title}: {expr}"
        for title, expr in _dashboard_exprs()
        if not await scraped.prometheus.query(_concrete(expr), at=scraped.healthy_at)
    ]
    assert not empty, "\n".join(empty)
