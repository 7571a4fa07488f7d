"""The gRPC client side of event delivery: sends spooled events to the persistence service."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from rpi.persistence.v1 import persistence_pb2 as ppb
from rpi.persistence.v1 import persistence_pb2_grpc as ppb_grpc


class PersistenceSender:
    def __init__(
        self,
        target: str,
        timeout_s: float,
        interceptors: Sequence[Any] | None = None,
    ) -> None:
        self._timeout = timeout_s
        self._channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                # Reconnect quickly after the persistence service restarts.
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 5000),
            ],
            interceptors=list(interceptors or []),
        )
        self._stub = ppb_grpc.PersistenceServiceStub(self._channel)

    async def __call__(self, payloads: Sequence[bytes]) -> None:
        request = ppb.RecordEventsRequest(events=[ppb.Event.FromString(p) for p in payloads])
        await self._stub.RecordEvents(request, timeout=self._timeout, wait_for_ready=False)

    async def close(self) -> None:
        await self._channel.close(None)
