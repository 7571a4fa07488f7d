"""The services' tracing set-up exports as the standard OTEL_* variables say, through the SDK's
own exporter selection: OTLP over gRPC and over HTTP (OTEL_EXPORTER_OTLP_PROTOCOL), each to a
real collector stand-in on loopback; an exporter or protocol that is not installed refuses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as otlp
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as otlp_grpc

from svc_common.tracing import TracingConfigError, configure_tracing, shutdown_tracing

_OTEL_VARS = (
    "OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_EXPORTER_OTLP_INSECURE",
)  # fmt: skip


@pytest.fixture
def otel_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in _OTEL_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


class Received:
    def __init__(self) -> None:
        self.requests: list[otlp.ExportTraceServiceRequest] = []
        self.paths: list[str] = []

    def spans(self) -> list[tuple[str, str]]:
        """(service.name, span name) of every span received."""
        found = []
        for request in self.requests:
            for resource_spans in request.resource_spans:
                service = next(
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                )
                found += [
                    (service, span.name)
                    for scope in resource_spans.scope_spans
                    for span in scope.spans
                ]
        return found


@pytest_asyncio.fixture
async def http_collector() -> AsyncIterator[tuple[str, Received]]:
    received = Received()

    async def export(request: web.Request) -> web.Response:
        received.paths.append(request.path)
        received.requests.append(otlp.ExportTraceServiceRequest.FromString(await request.read()))
        body = otlp.ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=body, content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", export)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", received
    await runner.cleanup()


class _TraceService(otlp_grpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self, received: Received) -> None:
        self._received = received

    async def Export(
        self, request: otlp.ExportTraceServiceRequest, context: Any
    ) -> otlp.ExportTraceServiceResponse:
        self._received.requests.append(request)
        return otlp.ExportTraceServiceResponse()


@pytest_asyncio.fixture
async def grpc_collector() -> AsyncIterator[tuple[str, Received]]:
    received = Received()
    server = grpc.aio.server()
    otlp_grpc.add_TraceServiceServicer_to_server(_TraceService(received), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"http://127.0.0.1:{port}", received
    await server.stop(None)


async def _export_one(service: str) -> None:
    provider = configure_tracing(service, set_global=False)
    assert provider is not None
    with provider.get_tracer("test").start_as_current_span("exported"):
        pass
    # The exporters block while sending; the collector stand-ins run on this event loop.
    await asyncio.to_thread(shutdown_tracing, provider)


async def test_otlp_over_http(
    otel_env: pytest.MonkeyPatch, http_collector: tuple[str, Received]
) -> None:
    endpoint, received = http_collector
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    await _export_one("persistence_svc")
    assert received.paths == ["/v1/traces"]
    assert received.spans() == [("persistence_svc", "exported")]


@pytest.mark.parametrize("protocol", ["grpc", None], ids=["grpc", "default"])
async def test_otlp_over_grpc(
    otel_env: pytest.MonkeyPatch, grpc_collector: tuple[str, Received], protocol: str | None
) -> None:
    endpoint, received = grpc_collector
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    if protocol is not None:
        otel_env.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", protocol)
    otel_env.setenv("OTEL_SERVICE_NAME", "inference-eu-1")
    await _export_one("inference_svc")
    assert received.spans() == [("inference-eu-1", "exported")]


@pytest.mark.parametrize(
    ("variable", "value"),
    [("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"), ("OTEL_TRACES_EXPORTER", "zipkin")],
)
def test_what_is_not_installed_is_refused(
    otel_env: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    otel_env.setenv(variable, value)
    with pytest.raises(TracingConfigError, match=value):
        configure_tracing("inference_svc", set_global=False)
