"""One gRPC error interceptor per service: servicers raise domain errors, this turns them into
``google.rpc.Status`` (sent as ``grpc-status-details-bin``).

Every status carries exactly one ``ErrorInfo`` (domain = the service's name, reason =
UPPER_SNAKE), a ``BadRequest`` when the error names invalid fields and a ``RetryInfo`` when the
caller should come back later. Each service supplies only an :class:`ErrorTable`, which maps its
exception types (and, for errors that carry a reason, their reasons) to a :class:`Rule`.

A call never ends UNKNOWN because of the servicer: an exception the table does not know becomes
INTERNAL with a generic message and a trace id the caller can quote; the stack trace goes to the
log (rate-limited), never to the caller, and request messages are never logged. Request bytes
that do not decode are INVALID_ARGUMENT (grpc itself would answer UNKNOWN or INTERNAL).

Install the interceptor LAST in the server's list (innermost), so that metrics and tracing see
the final status code and the trace span is current while the error is logged.
"""

from __future__ import annotations

import inspect
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry import trace

from svc_common.handlers import (
    Behavior,
    Deserializer,
    async_behavior,
    method_name,
    rebuild,
    shape_of,
)
from svc_common.tracing import record_abort

logger = logging.getLogger(__name__)
_CODES: Final = {code.value[0]: code for code in grpc.StatusCode}

MAX_FIELD_VIOLATIONS: Final = 20
# Reasons the interceptor itself emits, the same in every service.
INVALID_ARGUMENT: Final = "INVALID_ARGUMENT"
INTERNAL: Final = "INTERNAL"
_INTERNAL_MESSAGE: Final = "internal error"
_UNDECODABLE_MESSAGE: Final = "the request message could not be decoded"


@dataclass(frozen=True)
class Rule:
    """How one kind of domain error is reported."""

    code: grpc.StatusCode
    reason: str
    # Adds RetryInfo: the error's own ``retry_after_seconds`` or the table's default delay.
    retryable: bool = False


MetadataHook = Callable[[BaseException, Any], Mapping[str, str]]


@dataclass(frozen=True)
class ErrorTable:
    """A service's error vocabulary.

    ``rules`` maps an exception type (matched along the exception's MRO, most specific first)
    either to a :class:`Rule` or, for exception types that carry a ``reason`` attribute, to a
    mapping from that reason's string value to a Rule. Exceptions found nowhere are unexpected.

    Domain exceptions may carry ``message`` (else ``str(exc)``), ``violations`` (items with
    ``field`` and ``description``), ``metadata`` (str -> str, into ErrorInfo.metadata) and
    ``retry_after_seconds``. ``metadata_hook(exc, request)`` adds service-specific ErrorInfo
    metadata; the exception's own metadata wins on a clash. ``request`` is None for
    client-streaming calls.
    """

    domain: str
    rules: Mapping[type[BaseException], Rule | Mapping[str, Rule]]
    default_retry_delay_s: float = 1.0
    metadata_hook: MetadataHook | None = None

    def rule_for(self, exc: BaseException) -> Rule | None:
        for cls in type(exc).__mro__:
            entry = self.rules.get(cls)
            if entry is None:
                continue
            if isinstance(entry, Rule):
                return entry
            return entry.get(str(getattr(exc, "reason", "")))
        return None

    def reasons(self) -> set[str]:
        """Every reason this table (plus the interceptor itself) can emit."""
        found = {INVALID_ARGUMENT, INTERNAL}
        for entry in self.rules.values():
            found.update(
                [entry.reason] if isinstance(entry, Rule) else (r.reason for r in entry.values())
            )
        return found


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _violations(exc: BaseException) -> list[error_details_pb2.BadRequest.FieldViolation]:
    items = list(getattr(exc, "violations", None) or ())
    shown = [
        error_details_pb2.BadRequest.FieldViolation(
            field=str(getattr(v, "field", "")), description=str(getattr(v, "description", ""))
        )
        for v in items[:MAX_FIELD_VIOLATIONS]
    ]
    if len(items) > MAX_FIELD_VIOLATIONS:
        # A request with thousands of bad fields must not produce a status larger than itself.
        shown.append(
            error_details_pb2.BadRequest.FieldViolation(
                description=f"and {len(items) - MAX_FIELD_VIOLATIONS} more"
            )
        )
    return shown


def _message(exc: BaseException) -> str:
    message = getattr(exc, "message", None)
    return message if isinstance(message, str) else str(exc)


def status_for(
    table: ErrorTable, rule: Rule, exc: BaseException, request: Any
) -> status_pb2.Status:
    """The google.rpc.Status a known domain error is reported with."""
    metadata: dict[str, str] = {}
    if table.metadata_hook is not None:
        metadata.update(table.metadata_hook(exc, request))
    own = getattr(exc, "metadata", None)
    if isinstance(own, Mapping):
        metadata.update({str(k): str(v) for k, v in own.items()})
    details = [
        _pack(
            error_details_pb2.ErrorInfo(reason=rule.reason, domain=table.domain, metadata=metadata)
        )
    ]
    violations = _violations(exc)
    if violations:
        details.append(_pack(error_details_pb2.BadRequest(field_violations=violations)))
    if rule.retryable:
        after = getattr(exc, "retry_after_seconds", None)
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(
            int(1000 * (after if isinstance(after, int | float) else table.default_retry_delay_s))
        )
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status_pb2.Status(code=rule.code.value[0], message=_message(exc), details=details)


def _simple_status(
    table: ErrorTable, code: grpc.StatusCode, reason: str, message: str, **metadata: str
) -> status_pb2.Status:
    info = error_details_pb2.ErrorInfo(reason=reason, domain=table.domain, metadata=metadata)
    return status_pb2.Status(code=code.value[0], message=message, details=[_pack(info)])


def _trace_id() -> str:
    """The current trace's id, or a fresh random one when tracing is off, so that the caller's
    error and the log line can be matched either way."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        return format(span_context.trace_id, "032x")
    return secrets.token_hex(16)


class _UndecodableRequestError(Exception):
    pass


def _decode(deserializer: Deserializer, raw: Any) -> Any:
    if deserializer is None or not isinstance(raw, bytes):
        return raw
    try:
        return deserializer(raw)
    except Exception as exc:
        raise _UndecodableRequestError(type(exc).__name__) from None


async def _decoded(deserializer: Deserializer, raws: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for raw in raws:
        yield _decode(deserializer, raw)


class _RateLimitedLog:
    """At most one line per key and interval; the next line says how many were skipped."""

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._last: dict[tuple[str, str], float] = {}
        self._skipped: dict[tuple[str, str], int] = {}

    def allow(self, key: tuple[str, str]) -> int | None:
        """None when this line is to be skipped, else how many were skipped before it."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval_s:
            self._skipped[key] = self._skipped.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._skipped.pop(key, 0)


@dataclass
class ErrorInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """See the module docstring. Handlers must be grpc.aio coroutines or async generators; a
    synchronous handler is passed through untouched."""

    table: ErrorTable
    unexpected_log_interval_s: float = 10.0
    _limiter: _RateLimitedLog = field(init=False)

    def __post_init__(self) -> None:
        self._limiter = _RateLimitedLog(self.unexpected_log_interval_s)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],  # type: ignore[type-arg]
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:  # type: ignore[type-arg]
        handler = await continuation(handler_call_details)
        if handler is None:  # unknown method: grpc answers UNIMPLEMENTED itself
            return handler
        method = method_name(handler_call_details)
        behavior = async_behavior(handler)
        if behavior is None:
            return handler
        shape = shape_of(handler)
        wrap = self._wrap_stream if shape.response_streaming else self._wrap_unary
        # The request arrives as bytes and is decoded in the wrapper, where a failure can be
        # answered INVALID_ARGUMENT.
        return rebuild(
            handler,
            wrap(behavior, handler.request_deserializer, shape.request_streaming, method),
            request_deserializer=None,
        )

    def _wrap_unary(
        self, behavior: Behavior, deserializer: Deserializer, streaming: bool, method: str
    ) -> Behavior:
        async def wrapper(raw: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            request = None
            try:
                if streaming:
                    return await behavior(_decoded(deserializer, raw), context)
                request = _decode(deserializer, raw)
                return await behavior(request, context)
            except Exception as exc:
                await self._abort(context, exc, request, method)
                raise

        return wrapper

    def _wrap_stream(
        self, behavior: Behavior, deserializer: Deserializer, streaming: bool, method: str
    ) -> Behavior:
        async def wrapper(raw: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            request = None
            try:
                if streaming:
                    result = behavior(_decoded(deserializer, raw), context)
                else:
                    request = _decode(deserializer, raw)
                    result = behavior(request, context)
                if inspect.isasyncgen(result):
                    async for response in result:
                        yield response
                else:
                    # A handler that writes with context.write() instead of yielding.
                    await result
            except Exception as exc:
                await self._abort(context, exc, request, method)
                raise

        return wrapper

    async def _abort(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        exc: Exception,
        request: Any,
        method: str,
    ) -> None:
        """Ends the call with the status for ``exc`` (raises grpc's AbortError), or returns to
        let the caller re-raise an abort the handler already made."""
        if isinstance(exc, grpc.aio.AbortError):
            return
        if isinstance(exc, _UndecodableRequestError):
            logger.info("request not decodable", extra={"method": method, "error_type": str(exc)})
            status = _simple_status(
                self.table, grpc.StatusCode.INVALID_ARGUMENT, INVALID_ARGUMENT, _UNDECODABLE_MESSAGE
            )
        elif (rule := self.table.rule_for(exc)) is not None:
            status = status_for(self.table, rule, exc, request)
            self._log_domain_error(method, rule, status)
        else:
            trace_id = _trace_id()
            self._log_unexpected(method, exc, trace_id)
            status = _simple_status(
                self.table, grpc.StatusCode.INTERNAL, INTERNAL, _INTERNAL_MESSAGE, trace_id=trace_id
            )
        record_abort(_CODES[status.code], status.message)
        # grpc-stubs lacks abort_with_status on the aio context; it exists at run time.
        await context.abort_with_status(rpc_status.to_status(status))  # type: ignore[attr-defined]

    def _log_domain_error(self, method: str, rule: Rule, status: status_pb2.Status) -> None:
        info = error_details_pb2.ErrorInfo()
        status.details[0].Unpack(info)
        # A server-side fault reported with its own reason still deserves attention.
        level = logging.WARNING if rule.code is grpc.StatusCode.INTERNAL else logging.INFO
        logger.log(
            level,
            "request failed",
            extra={
                "method": method,
                "code": rule.code.name,
                "reason": rule.reason,
                "error": status.message,
                "error_metadata": dict(info.metadata),
            },
        )

    def _log_unexpected(self, method: str, exc: Exception, trace_id: str) -> None:
        skipped = self._limiter.allow((method, type(exc).__name__))
        if skipped is None:
            return
        logger.error(
            "unexpected error in %s",
            method,
            exc_info=(type(exc), exc, exc.__traceback__),
            extra={"method": method, "trace_id": trace_id, "skipped_since_last": skipped},
        )


def error_interceptor(table: ErrorTable) -> ErrorInterceptor:
    """The server interceptor for ``table``; put it last in ``grpc.aio.server(interceptors=)``."""
    return ErrorInterceptor(table)
