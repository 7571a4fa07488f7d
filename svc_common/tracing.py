"""OpenTelemetry tracing, configured only through the standard ``OTEL_*`` variables.

Off unless one of ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``, comma-separated),
``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is set, and off when
``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``; that on/off rule is the only
variable this module reads. Everything else is the SDK's own configuration: its exporter
selection (``OTEL_TRACES_EXPORTER``, with ``otlp`` meaning OTLP/gRPC or OTLP/HTTP after
``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`` = ``grpc`` | ``http/protobuf``), the exporters'
``OTEL_EXPORTER_OTLP_*`` (endpoint, headers, certificates, timeout...), the resource
(``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``), the sampler
(``OTEL_TRACES_SAMPLER(_ARG)``) and the batch processor (``OTEL_BSP_*``).

Every helper takes the TracerProvider explicitly instead of reading the global one, so two
services (or tests) in one process can each have their own; the global provider is set only
when asked (``set_global=True``, what a service's ``main`` does).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import grpc.aio
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

logger = logging.getLogger(__name__)

_ENABLING_VARS: Final = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)
# Kubernetes probes call Check every few seconds: a trace each would drown the real ones.
_UNTRACED_SERVICES: Final = ("grpc.health.v1.Health", "grpc.reflection.")
# The attribute naming the inspection a span (or a link) is about; the batch span of the
# persistence service carries every inspection of its batch in INSPECTION_IDS.
INSPECTION_ID: Final = "inspection_id"
INSPECTION_IDS: Final = "inspection_ids"
RPC_GRPC_STATUS_CODE: Final = "rpc.grpc.status_code"
# W3C trace context only (traceparent, tracestate): baggage is the caller's to send, and an
# event in the spool or a database must not carry arbitrary caller data.
_W3C: Final = TraceContextTextMapPropagator()


def tracing_requested() -> bool:
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    return any(env.get(name, "").strip() for name in _ENABLING_VARS)


class TracingConfigError(ValueError):
    """The OTEL_* variables ask for an exporter or protocol that is not installed."""


def _exporters() -> list[SpanExporter]:
    """The span exporters the environment asks for, resolved and built by the SDK (the same
    entry points ``opentelemetry-instrument`` uses)."""
    # Imported here: the SDK's configuration module loads the metrics and logs SDKs too.
    from opentelemetry.sdk._configuration import (  # noqa: PLC0415
        _get_exporter_entry_point,
        _get_exporter_names,
        _import_exporters,
    )

    try:
        if os.environ.get("OTEL_TRACES_EXPORTER", "").strip():
            names = _get_exporter_names("traces")
        else:
            # Only an endpoint was set: the specification's default exporter, otlp, whose
            # protocol the SDK resolves.
            names = [_get_exporter_entry_point("otlp", "traces")]
        classes, _, _ = _import_exporters(names, [], [])
    except RuntimeError as exc:  # an unknown exporter or protocol
        raise TracingConfigError(f"tracing configuration (OTEL_* variables): {exc}") from exc
    return [exporter() for exporter in classes.values()]


def configure_tracing(
    default_service_name: str,
    *,
    set_global: bool = True,
    extra_resource: Mapping[str, str] | None = None,
) -> TracerProvider | None:
    """A TracerProvider exporting as the environment says, or None when tracing is off.

    ``default_service_name`` is used unless OTEL_SERVICE_NAME (or ``service.name`` in
    OTEL_RESOURCE_ATTRIBUTES) names the service. With ``set_global`` the provider also becomes
    the process-wide one (allowed once per process). Raises TracingConfigError when the
    variables name an exporter or protocol that is not installed: a service that was asked to
    trace must not start silently untraced.
    """
    if not tracing_requested():
        return None
    attributes: dict[str, Any] = dict(extra_resource or {})
    if not OTELResourceDetector().detect().attributes.get(SERVICE_NAME):
        attributes[SERVICE_NAME] = default_service_name
    # The sampler OTEL_TRACES_SAMPLER / _ARG name, as the SDK builds it for a provider given
    # none, made to keep the record of a sampled inspection (LinkAwareSampler).
    configured = TracerProvider(shutdown_on_exit=False).sampler
    provider = TracerProvider(
        resource=Resource.create(attributes), sampler=LinkAwareSampler(configured)
    )
    exporters = _exporters()
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


class LinkAwareSampler(Sampler):
    """Samples a new trace whose first span links to a sampled span, else defers to ``base``.

    Event deliveries start traces of their own (a batch mixes inspections): with a ratio
    sampler alone, the delivery of a sampled inspection's records would itself be sampled only
    at that ratio, and its links would mostly lead nowhere.
    """

    def __init__(self, base: Sampler) -> None:
        self._base = base

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Any = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        if not parent.is_valid and any(link.context.trace_flags.sampled for link in links or ()):
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
        return self._base.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"LinkAware{{{self._base.get_description()}}}"


def tag_inspection(inspection_id: str) -> None:
    """Names the inspection on the current span (the call's server span in a servicer)."""
    trace.get_current_span().set_attribute(INSPECTION_ID, inspection_id)


def current_trace_context() -> dict[str, str]:
    """The current span's W3C trace context (``traceparent``, ``tracestate``), to travel with
    work that is finished elsewhere (a spooled event); empty when nothing is traced."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier


def producer_links(
    producers: Iterable[tuple[str, Mapping[str, str]]],
) -> tuple[list[Link], list[str]]:
    """The links to the spans that produced a batch's items, and the batch's inspection ids.

    ``producers`` gives (inspection id, W3C trace context) per item. One link per producing
    span (several events of one inspection usually share it), with the inspection id as its
    attribute. Contexts that do not parse are skipped: a link is a courtesy, never a reason to
    refuse a write.
    """
    seen: set[tuple[int, int]] = set()
    links: list[Link] = []
    inspections: set[str] = set()
    for inspection_id, carrier in producers:
        inspections.add(inspection_id)
        if not carrier:
            continue
        linked = trace.get_current_span(_W3C.extract(dict(carrier))).get_span_context()
        key = (linked.trace_id, linked.span_id)
        if linked.is_valid and key not in seen:
            seen.add(key)
            links.append(Link(linked, {INSPECTION_ID: inspection_id}))
    return links, sorted(inspections)


def link_producers(producers: Iterable[tuple[str, Mapping[str, str]]]) -> None:
    """Links the current span (a batch's server span) to the spans that produced its items
    (:func:`producer_links`) and names every inspection of the batch on it."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    links, inspections = producer_links(producers)
    for link in links:
        span.add_link(link.context, link.attributes)
    if inspections:
        span.set_attribute(INSPECTION_IDS, inspections)


def record_abort(code: grpc.StatusCode, message: str) -> None:
    """Marks the current (server) span with the status code a call is about to end with.

    The gRPC instrumentation does this for ``context.abort`` but not for
    ``abort_with_status``, which the error interceptor uses (its status carries details):
    without this the span would say OK. The span status follows the instrumentation's own rule
    (ERROR for the server-side codes, as the semantic conventions say), applied by its code.
    """
    span = trace.get_current_span()
    if not span.is_recording():
        return
    from opentelemetry.instrumentation.grpc._utilities import _server_status  # noqa: PLC0415

    span.set_attribute(RPC_GRPC_STATUS_CODE, code.value[0])
    span.set_status(_server_status(code, message))  # type: ignore[no-untyped-call]
