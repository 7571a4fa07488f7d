"""One trace from the caller through an inference-like server, its stage spans, the
persistence call (context in gRPC metadata) and the SQL it runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from svc_common import (
    GrpcServerMetricsInterceptor,
    InferenceMetrics,
    configure_tracing,
    get_tracer,
    grpc_client_interceptors,
    grpc_server_interceptors,
    instrument_asyncpg,
    shutdown_tracing,
    stage_span,
)
from svc_common.tracing import uninstrument_asyncpg


def _identity(b: bytes) -> bytes:
    return b


async def _start(
    provider: TracerProvider, service: str, method: str, behavior: Any, registry: Any = None
) -> tuple[grpc.aio.Server, str]:
    interceptors: list[Any] = [*grpc_server_interceptors(provider)]
    if registry is not None:
        interceptors.insert(0, GrpcServerMetricsInterceptor(registry))
    server = grpc.aio.server(interceptors=interceptors)
    handler = grpc.unary_unary_rpc_method_handler(behavior, _identity, _identity)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service, {method: handler}),)
    )
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture
async def pg_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    # The shared test database: the machine's Postgres, or an embedded one when none runs.
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    yield pool
    await pool.close()


@pytest.fixture
def asyncpg_traced(tracer_provider: TracerProvider) -> Any:
    assert instrument_asyncpg(tracer_provider)
    yield
    uninstrument_asyncpg()


def _by_name(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    (span,) = [s for s in spans if s.name == name]
    return span


def _rpc(spans: tuple[ReadableSpan, ...], name: str) -> tuple[ReadableSpan, ReadableSpan]:
    """The (client, server) spans of one call."""
    (client,) = [s for s in spans if s.name == name and s.kind is SpanKind.CLIENT]
    (server,) = [s for s in spans if s.name == name and s.kind is SpanKind.SERVER]
    return client, server


def _parent_of(child: ReadableSpan, parent: ReadableSpan) -> bool:
    assert child.parent is not None and parent.context is not None
    return (
        child.parent.span_id == parent.context.span_id
        and child.context is not None
        and child.context.trace_id == parent.context.trace_id
    )


@pytest.mark.usefixtures("asyncpg_traced")
async def test_caller_to_stages_to_persistence_to_sql(
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    pg_pool: asyncpg.Pool,
) -> None:
    tracer = get_tracer(tracer_provider, "test")
    registry = CollectorRegistry()

    async def record(request: bytes, context: Any) -> bytes:
        value = await pg_pool.fetchval("SELECT length($1::text)", request.decode())
        return str(value).encode()

    persistence, persistence_addr = await _start(
        tracer_provider, "test.Persistence", "Record", record
    )
    channel_to_persistence = grpc.aio.insecure_channel(
        persistence_addr, interceptors=grpc_client_interceptors(tracer_provider)
    )

    async def inspect(request: bytes, context: Any) -> bytes:
        with tracer.start_as_current_span("fetch"):
            pass
        with tracer.start_as_current_span("model.generate"):
            pass
        with tracer.start_as_current_span("persist"):
            return bytes(
                await channel_to_persistence.unary_unary(
                    "/test.Persistence/Record", _identity, _identity
                )(request)
            )

    inference, inference_addr = await _start(
        tracer_provider, "test.Inspection", "Inspect", inspect, registry
    )
    try:
        async with grpc.aio.insecure_channel(
            inference_addr, interceptors=grpc_client_interceptors(tracer_provider)
        ) as channel:
            with tracer.start_as_current_span("caller"):
                assert (
                    await channel.unary_unary("/test.Inspection/Inspect", _identity, _identity)(
                        b"abcd"
                    )
                    == b"4"
                )
            # Health probes are not traced.
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    finally:
        await channel_to_persistence.close(None)
        await inference.stop(None)
        await persistence.stop(None)

    spans = span_exporter.get_finished_spans()
    caller = _by_name(spans, "caller")
    inspect_client, inspect_server = _rpc(spans, "/test.Inspection/Inspect")
    record_client, record_server = _rpc(spans, "/test.Persistence/Record")
    # The pool's reset on release is traced too; the handler's own statement is the one here.
    (sql,) = [s for s in spans if "length($1" in str((s.attributes or {}).get("db.statement", ""))]

    assert _parent_of(inspect_client, caller)
    assert _parent_of(inspect_server, inspect_client)  # across the wire: traceparent metadata
    assert _parent_of(_by_name(spans, "fetch"), inspect_server)
    assert _parent_of(_by_name(spans, "model.generate"), inspect_server)
    persist = _by_name(spans, "persist")
    assert _parent_of(persist, inspect_server)
    assert _parent_of(record_client, persist)
    assert _parent_of(record_server, record_client)
    assert _parent_of(sql, record_server)
    assert sql.kind is SpanKind.CLIENT and sql.name == "SELECT"
    assert {s.context.trace_id for s in spans if s.context} == {caller.context.trace_id}
    assert not [s for s in spans if "Health" in s.name]
    # The metrics interceptor in front of the tracing one still sees the call.
    assert registry.get_sample_value(
        "grpc_server_handled_total",
        {"grpc_type": "unary", "grpc_service": "test.Inspection", "grpc_method": "Inspect",
         "grpc_code": "OK"},
    ) == 1  # fmt: skip


def test_tracing_off_gives_no_interceptors() -> None:
    assert grpc_server_interceptors(None) == []
    assert grpc_client_interceptors(None) == []
    assert instrument_asyncpg(None) is False
    with get_tracer(None, "x").start_as_current_span("noop") as span:
        assert not span.get_span_context().is_valid


_OTEL_VARS = (
    "OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG",
)  # fmt: skip


@pytest.fixture
def clean_otel_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in _OTEL_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_off_unless_configured(clean_otel_env: pytest.MonkeyPatch) -> None:
    assert configure_tracing("inference_svc", set_global=False) is None
    clean_otel_env.setenv("OTEL_TRACES_EXPORTER", "none")
    clean_otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    assert configure_tracing("inference_svc", set_global=False) is None
    clean_otel_env.setenv("OTEL_TRACES_EXPORTER", "otlp")
    clean_otel_env.setenv("OTEL_SDK_DISABLED", "true")
    assert configure_tracing("inference_svc", set_global=False) is None


def test_configured_from_standard_variables(clean_otel_env: pytest.MonkeyPatch) -> None:
    clean_otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    clean_otel_env.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    clean_otel_env.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    provider = configure_tracing("inference_svc", set_global=False)
    assert provider is not None
    try:
        assert provider.resource.attributes["service.name"] == "inference_svc"
        assert "0.25" in provider.sampler.get_description()
    finally:
        # Nothing was exported: shutting down must not wait on the absent collector.
        provider.shutdown()

    clean_otel_env.setenv("OTEL_TRACES_EXPORTER", "console")
    clean_otel_env.setenv("OTEL_SERVICE_NAME", "inference-eu-1")
    provider = configure_tracing("inference_svc", set_global=False)
    assert provider is not None
    assert provider.resource.attributes["service.name"] == "inference-eu-1"
    shutdown_tracing(provider)


async def test_stage_span_times_and_traces_a_stage(
    tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> None:
    registry = CollectorRegistry()
    metrics = InferenceMetrics(registry)
    tracer = get_tracer(tracer_provider, "inference_svc.pipeline")
    with tracer.start_as_current_span("Inspect") as root:
        with stage_span(tracer, metrics, "fetch"):
            pass
        with pytest.raises(ValueError), stage_span(tracer, metrics, "parse"):
            raise ValueError("invalid model output")

    fetch = _by_name(span_exporter.get_finished_spans(), "fetch")
    parse = _by_name(span_exporter.get_finished_spans(), "parse")
    assert fetch.parent is not None and fetch.parent.span_id == root.get_span_context().span_id
    assert parse.status.status_code is StatusCode.ERROR
    for stage in ("fetch", "parse"):
        count = registry.get_sample_value("rpi_inference_stage_seconds_count", {"stage": stage})
        assert count == 1, stage
