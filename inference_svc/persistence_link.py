"""The gRPC client side of event delivery: sends spooled events to the persistence service and
classifies what goes wrong, so delivery knows whether to retry or to isolate a bad event."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from rpi.persistence.v1 import persistence_pb2 as ppb
from rpi.persistence.v1 import persistence_pb2_grpc as ppb_grpc

from inference_svc.events.delivery import RejectedBatchError
from svc_common.tls import ClientTLS, TLSConfigError
from svc_common.tracing import INSPECTION_IDS, producer_links

log = logging.getLogger(__name__)

PERSISTENCE_SERVICE = ppb.DESCRIPTOR.services_by_name["PersistenceService"].full_name

# The persistence service refused the data itself: the same batch can never succeed.
REJECTED_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)
# Worth retrying as they are: the service, the network or the database is (momentarily) unable.
TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
    }
)
# Everything else (PERMISSION_DENIED, UNAUTHENTICATED, UNIMPLEMENTED, NOT_FOUND, ...) is permanent
# but says nothing about the events: a wrong target or credentials. Dead-lettering would throw
# every event away for a configuration mistake, so those are retried (with backoff) and logged
# as errors until an operator fixes the configuration.


def is_rejection(code: grpc.StatusCode) -> bool:
    return code in REJECTED_CODES


class PersistenceSender:
    """Implements delivery's EventSender over rpi.persistence.v1.RecordEvents.

    With ``tls`` the link is TLS (mutual TLS with a client certificate). gRPC Python's channel
    credentials are fixed when the channel is made, so before each call the sender checks
    whether the certificate files changed (cert-manager renews them in place) and, if so,
    opens a new channel with them; the old one is closed once idle."""

    def __init__(
        self,
        target: str,
        timeout_s: float,
        interceptors: Sequence[Any] | None = None,
        probe_timeout_s: float = 2.0,
        tls: ClientTLS | None = None,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self._target = target
        self._tracer = tracer or trace.NoOpTracer()
        self._timeout = timeout_s
        self._probe_timeout = probe_timeout_s
        self._interceptors = list(interceptors or [])
        self._tls = tls
        self._tls_seen = tls.signature() if tls else None
        self._channel = self._open()
        self._stub = ppb_grpc.PersistenceServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def _open(self) -> grpc.aio.Channel:
        options = [
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            # Reconnect quickly after the persistence service restarts.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        if self._tls is None:
            return grpc.aio.insecure_channel(
                self._target, options=options, interceptors=self._interceptors
            )
        return grpc.aio.secure_channel(
            self._target,
            self._tls.channel_credentials(),
            options=options,
            interceptors=self._interceptors,
        )

    async def _follow_rotation(self) -> None:
        if self._tls is None:
            return
        seen = self._tls.signature()
        if seen == self._tls_seen:
            return
        try:
            channel = self._open()
        except TLSConfigError as exc:
            # A half-written renewal: keep the current channel, try again on the next call.
            log.warning("persistence TLS files unreadable, keeping the current ones: %s", exc)
            return
        old, self._channel, self._tls_seen = self._channel, channel, seen
        self._stub = ppb_grpc.PersistenceServiceStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel)
        log.info("persistence link certificate reloaded")
        await old.close(grace=5.0)

    async def send(self, payloads: Sequence[bytes], timeout_s: float | None = None) -> None:
        try:
            events = [ppb.Event.FromString(p) for p in payloads]
        except DecodeError as exc:
            # A spooled payload that does not parse can never be sent; bisection isolates it.
            raise RejectedBatchError(
                "INVALID_ARGUMENT", f"undecodable spooled event: {exc}"
            ) from exc
        timeout = self._timeout if timeout_s is None else min(self._timeout, timeout_s)
        await self._follow_rotation()
        # A batch mixes inspections: its delivery is a trace of its own, linked to each of
        # them (a sampled inspection gets its delivery sampled: LinkAwareSampler).
        links, inspections = producer_links((e.inspection_id, e.trace_context) for e in events)
        try:
            with self._tracer.start_as_current_span(
                "deliver events",
                links=links,
                attributes={INSPECTION_IDS: inspections, "events": len(events)},
            ):
                await self._stub.RecordEvents(
                    ppb.RecordEventsRequest(events=events), timeout=timeout, wait_for_ready=False
                )
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if is_rejection(code):
                raise RejectedBatchError(code.name, exc.details() or "") from exc
            if code not in TRANSIENT_CODES:
                log.error(
                    "persistence service refuses this client; events stay spooled until the "
                    "configuration is fixed",
                    extra={"grpc_code": code.name, "error": (exc.details() or "")[:300]},
                )
            raise

    async def __call__(self, payloads: Sequence[bytes]) -> None:
        await self.send(payloads)

    async def probe(self) -> None:
        await self._follow_rotation()
        reply = await self._health.Check(
            health_pb2.HealthCheckRequest(service=PERSISTENCE_SERVICE),
            timeout=self._probe_timeout,
            wait_for_ready=False,
        )
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            raise ConnectionError(f"persistence service health is {status}")

    async def close(self) -> None:
        await self._channel.close(None)
