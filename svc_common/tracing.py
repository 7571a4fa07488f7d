"""OpenTelemetry tracing, configured only through the standard ``OTEL_*`` variables.

Off unless one of ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``, comma-separated),
``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set, and off when
``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``. The SDK itself reads
``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER(_ARG)``,
``OTEL_EXPORTER_OTLP_*`` (endpoint, headers, insecure, timeout...) and ``OTEL_BSP_*``.

Every helper takes the TracerProvider explicitly instead of reading the global one, so two
services (or tests) in one process can each have their own; the global provider is set only
when asked (``set_global=True``, what a service's ``main`` does).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, Final

import grpc.aio
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)

logger = logging.getLogger(__name__)

_ENABLING_VARS: Final = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)
# Kubernetes probes call Check every few seconds: a trace each would drown the real ones.
_UNTRACED_SERVICES: Final = ("grpc.health.v1.Health", "grpc.reflection.")


def tracing_requested() -> bool:
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = _exporter_names(env)
    if exporters == ["none"]:
        return False
    return any(env.get(name, "").strip() for name in _ENABLING_VARS)


def _exporter_names(env: Mapping[str, str]) -> list[str]:
    raw = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    names = [n.strip() for n in raw.split(",") if n.strip()]
    return names or ["otlp"]


def _make_exporter(name: str, env: Mapping[str, str]) -> SpanExporter | None:
    if name == "console":
        return ConsoleSpanExporter()
    if name == "otlp":
        protocol = (
            env.get(
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            )
            .strip()
            .lower()
        )
        if protocol not in ("", "grpc"):
            logger.warning(
                "OTLP protocol %s is not installed; exporting with OTLP/gRPC instead", protocol
            )
        # Imported here: loading the gRPC exporter is wasted work when tracing is off.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )

        return OTLPSpanExporter()
    if name != "none":
        logger.warning("unsupported OTEL_TRACES_EXPORTER entry %s ignored", name)
    return None


def configure_tracing(
    default_service_name: str,
    *,
    set_global: bool = True,
    extra_resource: Mapping[str, str] | None = None,
) -> TracerProvider | None:
    """A TracerProvider exporting as the environment says, or None when tracing is off.

    ``default_service_name`` is used unless OTEL_SERVICE_NAME (or ``service.name`` in
    OTEL_RESOURCE_ATTRIBUTES) names the service. With ``set_global`` the provider also becomes
    the process-wide one (allowed once per process).
    """
    env = os.environ
    if not tracing_requested():
        return None
    attributes: dict[str, Any] = dict(extra_resource or {})
    if not OTELResourceDetector().detect().attributes.get(SERVICE_NAME):
        attributes[SERVICE_NAME] = default_service_name
    # Sampler: TracerProvider reads OTEL_TRACES_SAMPLER / _ARG when none is given.
    provider = TracerProvider(resource=Resource.create(attributes))
    exporters = [e for n in _exporter_names(env) if (e := _make_exporter(n, env)) is not None]
    if not exporters:
        return None
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if set_global:
        trace.set_tracer_provider(provider)
    logger.info(
        "tracing on",
        extra={
            "otel_service_name": provider.resource.attributes.get(SERVICE_NAME),
            "otel_exporters": [type(e).__name__ for e in exporters],
            "otel_sampler": provider.sampler.get_description(),
        },
    )
    return provider


def shutdown_tracing(provider: TracerProvider | None, timeout_millis: int = 5000) -> None:
    """Exports what is buffered and stops the exporters (call last, after the servers stop)."""
    if provider is None:
        return
    provider.force_flush(timeout_millis)
    provider.shutdown()


def get_tracer(provider: TracerProvider | None, name: str) -> trace.Tracer:
    """The tracer for stage spans; a no-op tracer when tracing is off."""
    if provider is None:
        return trace.NoOpTracer()
    return provider.get_tracer(name)


def _traced_call(details: Any) -> bool:
    method: str = getattr(details, "method", "") or ""
    if isinstance(method, bytes):
        method = method.decode()
    return not method.lstrip("/").startswith(_UNTRACED_SERVICES)


def grpc_server_interceptors(provider: TracerProvider | None) -> list[grpc.aio.ServerInterceptor]:  # type: ignore[type-arg]
    """For ``grpc.aio.server(interceptors=...)``: a server span per call, child of the caller's
    context propagated in the metadata (W3C traceparent). Empty when tracing is off."""
    if provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor  # noqa: PLC0415

    interceptor: grpc.aio.ServerInterceptor = aio_server_interceptor(  # type: ignore[type-arg,no-untyped-call]
        tracer_provider=provider, filter_=_traced_call
    )
    return [interceptor]


def grpc_client_interceptors(provider: TracerProvider | None) -> list[grpc.aio.ClientInterceptor]:
    """For ``grpc.aio.insecure_channel(..., interceptors=...)``: a client span per call whose
    context travels to the server in the metadata. Empty when tracing is off."""
    if provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors  # noqa: PLC0415

    interceptors: list[grpc.aio.ClientInterceptor] = aio_client_interceptors(  # type: ignore[no-untyped-call]
        tracer_provider=provider, filter_=_traced_call
    )
    return interceptors


def instrument_asyncpg(provider: TracerProvider | None) -> bool:
    """A client span per SQL statement run through asyncpg (statement text, not parameters).

    asyncpg is patched process-wide and only once: the first provider given wins until
    :func:`uninstrument_asyncpg`. Returns whether instrumentation is active.
    """
    if provider is None:
        return False
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor  # noqa: PLC0415

    instrumentor = AsyncPGInstrumentor(capture_parameters=False)  # type: ignore[no-untyped-call]
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=provider)
    return True


def uninstrument_asyncpg() -> None:
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor  # noqa: PLC0415

    instrumentor = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()
