"""Prometheus metrics for a grpc.aio server, named as go-grpc-prometheus names them.

Users already have dashboards and alerts written against ``grpc_server_started_total``,
``grpc_server_handled_total`` and ``grpc_server_handling_seconds``; keeping those names and
labels (``grpc_type``, ``grpc_service``, ``grpc_method``, ``grpc_code``) lets them reuse them.

One deliberate difference: ``grpc_server_handling_seconds`` also carries ``grpc_code``, so the
latency objective can be computed over successful calls only (fast INVALID_ARGUMENT rejections
would otherwise pull the p95 down). Codes are a closed set of 17, so the cardinality stays low.
Queries written for go-grpc-prometheus keep working: they aggregate the extra label away.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import grpc
import grpc.aio
from prometheus_client import CollectorRegistry, Counter, Histogram

from svc_common._labels import GO_CODE_NAMES, go_code_name
from svc_common.handlers import Behavior, async_behavior, method_name, rebuild, shape_of

STARTED_TOTAL: Final = "grpc_server_started_total"
HANDLED_TOTAL: Final = "grpc_server_handled_total"
HANDLING_SECONDS: Final = "grpc_server_handling_seconds"
MSG_RECEIVED_TOTAL: Final = "grpc_server_msg_received_total"
MSG_SENT_TOTAL: Final = "grpc_server_msg_sent_total"

# Exposed family name -> Prometheus type, for checks of dashboards and alert rules.
METRIC_TYPES: Final[dict[str, str]] = {
    STARTED_TOTAL: "counter",
    HANDLED_TOTAL: "counter",
    HANDLING_SECONDS: "histogram",
    MSG_RECEIVED_TOTAL: "counter",
    MSG_SENT_TOTAL: "counter",
}

# go-grpc-prometheus defaults stop at 10 s; an inspection takes 5-20 s and may take up to the
# 300 s request timeout, so the upper range is denser and longer. 20 is the p95 objective.
DEFAULT_HANDLING_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    7.5, 10.0, 12.5, 15.0, 17.5, 20.0, 25.0, 30.0, 45.0, 60.0, 120.0, 300.0,
)  # fmt: skip


def split_method(full_method: str) -> tuple[str, str]:
    """``/pkg.Service/Method`` -> (``pkg.Service``, ``Method``)."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return (service or "unknown", method or "unknown")


def _code_name(code: grpc.StatusCode) -> str:
    # Go's spelling ("InvalidArgument"), so that the widely used alert expressions such as
    # grpc_code=~"Unknown|Internal|Unavailable" written for go-grpc-prometheus match.
    return go_code_name(code.name)


def _code_after_exception(exc: BaseException, context: grpc.aio.ServicerContext[Any, Any]) -> str:
    code: grpc.StatusCode | None = context.code()
    if code is not None and code is not grpc.StatusCode.OK:
        # abort() records its code on the context before raising AbortError.
        return _code_name(code)
    if not isinstance(exc, Exception):
        # CancelledError / GeneratorExit: the call went away. grpc cancels the handler both
        # when the client cancels and when the deadline passes; the deadline tells them apart.
        remaining: float | None = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return _code_name(grpc.StatusCode.DEADLINE_EXCEEDED)
        return _code_name(grpc.StatusCode.CANCELLED)
    # grpc answers UNKNOWN for an exception escaping the handler.
    return _code_name(grpc.StatusCode.UNKNOWN)


def _code_after_return(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    code: grpc.StatusCode | None = context.code()
    return _code_name(code) if code is not None else "OK"


class GrpcServerMetrics:
    """The metric families; one instance per registry."""

    def __init__(
        self,
        registry: CollectorRegistry,
        handling_buckets: tuple[float, ...] = DEFAULT_HANDLING_BUCKETS,
    ) -> None:
        base = ["grpc_type", "grpc_service", "grpc_method"]
        self.started = Counter(
            STARTED_TOTAL, "Total number of RPCs started on the server.", base,
            registry=registry,
        )  # fmt: skip
        self.handled = Counter(
            HANDLED_TOTAL,
            "Total number of RPCs completed on the server, regardless of success or failure.",
            [*base, "grpc_code"],
            registry=registry,
        )
        self.handling = Histogram(
            HANDLING_SECONDS,
            "Response latency (seconds) of gRPC calls handled by the server.",
            [*base, "grpc_code"],
            buckets=handling_buckets,
            registry=registry,
        )
        self.msg_received = Counter(
            MSG_RECEIVED_TOTAL, "Total number of RPC stream messages received on the server.",
            base, registry=registry,
        )  # fmt: skip
        self.msg_sent = Counter(
            MSG_SENT_TOTAL, "Total number of gRPC stream messages sent by the server.",
            base, registry=registry,
        )  # fmt: skip
        self._initialised: set[tuple[str, str, str]] = set()

    def initialise(self, labels: tuple[str, str, str]) -> None:
        """Creates a method's handled series for every code at zero, the first time the method
        is called (go-grpc-prometheus does it for every registered method at start): an error
        ratio is then 0, not empty, while no call has failed."""
        if labels in self._initialised:
            return
        self._initialised.add(labels)
        for code in GO_CODE_NAMES.values():
            self.handled.labels(*labels, code)


class _Call:
    """Bookkeeping for one RPC: started on creation, handled exactly once."""

    __slots__ = ("_done", "_labels", "_metrics", "_start")

    def __init__(self, metrics: GrpcServerMetrics, labels: tuple[str, str, str]) -> None:
        self._metrics = metrics
        self._labels = labels
        self._done = False
        self._start = time.perf_counter()
        metrics.started.labels(*labels).inc()

    def received(self) -> None:
        self._metrics.msg_received.labels(*self._labels).inc()

    def sent(self) -> None:
        self._metrics.msg_sent.labels(*self._labels).inc()

    def finish(self, code: str) -> None:
        if self._done:
            return
        self._done = True
        self._metrics.handled.labels(*self._labels, code).inc()
        self._metrics.handling.labels(*self._labels, code).observe(
            time.perf_counter() - self._start
        )


class GrpcServerMetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts and times every RPC. Put it first in the server's interceptor list so that its
    timing includes the other interceptors.

    Handlers must be coroutines / async generators (grpc.aio servicers); a synchronous handler
    is passed through uncounted rather than moved onto the event loop.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        handling_buckets: tuple[float, ...] = DEFAULT_HANDLING_BUCKETS,
    ) -> None:
        self.metrics = GrpcServerMetrics(registry, handling_buckets)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],  # type: ignore[type-arg]
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:  # type: ignore[type-arg]
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: grpc answers UNIMPLEMENTED itself
            return handler
        service, method = split_method(method_name(handler_call_details))
        behavior = async_behavior(handler)
        if behavior is None:
            return handler
        shape = shape_of(handler)
        labels = (shape.grpc_type, service, method)
        self.metrics.initialise(labels)
        wrap = _stream_response if shape.response_streaming else _unary_response
        return rebuild(
            handler,
            wrap(behavior, self.metrics, labels, streaming_request=shape.request_streaming),
        )


async def _counting(requests: AsyncIterator[Any], call: _Call) -> AsyncIterator[Any]:
    async for request in requests:
        call.received()
        yield request


def _unary_response(
    behavior: Behavior,
    metrics: GrpcServerMetrics,
    labels: tuple[str, str, str],
    *,
    streaming_request: bool,
) -> Behavior:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        call = _Call(metrics, labels)
        if streaming_request:
            request = _counting(request, call)
        else:
            call.received()
        try:
            response = await behavior(request, context)
        except BaseException as exc:
            call.finish(_code_after_exception(exc, context))
            raise
        code = _code_after_return(context)
        if code == "OK" and response is not None:
            call.sent()
        call.finish(code)
        return response

    return wrapper


def _stream_response(
    behavior: Behavior,
    metrics: GrpcServerMetrics,
    labels: tuple[str, str, str],
    *,
    streaming_request: bool,
) -> Behavior:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        call = _Call(metrics, labels)
        if streaming_request:
            request = _counting(request, call)
        else:
            call.received()
        try:
            result = behavior(request, context)
            if inspect.isasyncgen(result):
                async for response in result:
                    yield response
                    # grpc asks for the next message only after sending this one.
                    call.sent()
            else:
                # A handler that writes with context.write() instead of yielding.
                await result
        except BaseException as exc:
            call.finish(_code_after_exception(exc, context))
            raise
        call.finish(_code_after_return(context))

    return wrapper
