"""One server interceptor that authenticates and authorises every RPC of a service.

It wraps the method's own behaviour, so a refusal is raised from a handler of the method's RPC
type (unary or streaming alike) before the servicer runs: a refused call fetches no image,
spends no model time and writes nothing. Health checks stay open for probes; reflection is open
only when the composition root says so.
"""

from __future__ import annotations

import fnmatch
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry import trace

from svc_common.auth import (
    ANONYMOUS,
    Authenticator,
    AuthError,
    AuthReason,
    Caller,
    Policy,
    set_current_caller,
)
from svc_common.handlers import Handler, behavior_of, method_name, rebuild, shape_of
from svc_common.tls import peer_identities

log = logging.getLogger(__name__)

HEALTH_METHODS = ("/grpc.health.v1.Health/*",)
REFLECTION_METHODS = (
    "/grpc.reflection.v1alpha.ServerReflection/*",
    "/grpc.reflection.v1.ServerReflection/*",
)

RefusalHook = Callable[[str, str], None]  # (method, reason)
AdmitHook = Callable[[Caller], None]


def _status(error: AuthError, domain: str, method: str) -> grpc.Status:
    code = code_pb2.PERMISSION_DENIED if error.denied else code_pb2.UNAUTHENTICATED
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(
            reason=error.reason.value, domain=domain, metadata={"method": method}
        )
    )
    return rpc_status.to_status(status_pb2.Status(code=code, message=error.message, details=[info]))


def _metadata(context: grpc.aio.ServicerContext[Any, Any], key: str) -> str | None:
    for item_key, value in context.invocation_metadata() or ():
        if item_key == key:
            return value.decode("latin-1") if isinstance(value, bytes) else value
    return None


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(
        self,
        authenticator: Authenticator,
        policy: Policy,
        *,
        domain: str,
        open_methods: Sequence[str] = HEALTH_METHODS,
        on_refused: RefusalHook | None = None,
        on_admitted: AdmitHook | None = None,
    ) -> None:
        self._authenticator = authenticator
        self._policy = policy
        self._domain = domain
        self._open = tuple(open_methods)
        self._on_refused = on_refused
        self._on_admitted = on_admitted

    def _is_open(self, method: str) -> bool:
        return any(fnmatch.fnmatchcase(method, p) for p in self._open)

    async def _admit(self, method: str, context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
        if not self._authenticator.enabled:
            return ANONYMOUS
        try:
            caller = self._authenticator.authenticate(
                _metadata(context, "authorization"), peer_identities(dict(context.auth_context()))
            )
            granted = next((n for n in caller.names() if self._policy.allows(n, method)), None)
            if granted is None:
                raise AuthError(
                    AuthReason.METHOD_NOT_ALLOWED,
                    f"caller {caller.name!r} may not call {method}",
                    denied=True,
                )
            if granted != caller.name:
                caller = Caller(granted, caller.method, caller.aliases)
        except AuthError as error:
            if self._on_refused is not None:
                self._on_refused(method, error.reason.value)
            log.info(
                "call refused",
                extra={"method": method, "reason": error.reason.value, "denied": error.denied},
            )
            status = _status(error, self._domain, method)
            await context.abort(status.code, status.details, status.trailing_metadata)
            raise  # abort raises; this keeps the type checker sure the branch ends
        if self._on_admitted is not None:
            self._on_admitted(caller)
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("rpi.caller", caller.name)
        return caller

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],  # type: ignore[type-arg]
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:  # type: ignore[type-arg]
        handler = await continuation(details)
        method = method_name(details)
        if handler is None or self._is_open(method):
            return handler
        return _wrap(handler, lambda ctx: self._admit(method, ctx))


Admit = Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[Caller]]


def _wrap(handler: Handler, admit: Admit) -> Handler:
    """The handler with ``admit`` run first, keeping its RPC type (unary or streaming).

    Every behaviour is wrapped, a synchronous one too: no method may run without admission."""
    inner: Any = behavior_of(handler)

    async def unary_response(request: Any, context: Any) -> Any:
        set_current_caller(await admit(context))
        return await inner(request, context)

    async def stream_response(request: Any, context: Any) -> AsyncIterator[Any]:
        set_current_caller(await admit(context))
        result = inner(request, context)
        if inspect.isasyncgen(result):
            async for response in result:
                yield response
        else:  # a handler that writes with context.write()
            await result

    behavior = stream_response if shape_of(handler).response_streaming else unary_response
    return rebuild(handler, behavior)
