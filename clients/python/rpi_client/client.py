"""Typed clients of the inspection service (sync and asyncio) and of the persistence reads.

Every failed call raises :class:`~clients.python.rpi_client.errors.InspectionFailed` with the
server's ``google.rpc`` details decoded; the original ``grpc.RpcError`` is its ``__cause__``.
Streams cancel their call when the caller stops iterating early, so the server stops working
on an inspection nobody waits for.
"""

# The timeout parameters are gRPC deadlines: sent to the server, which stops work on expiry.
# asyncio.timeout would only abandon the call locally, so ASYNC109's advice does not apply.
# ruff: noqa: ASYNC109

from __future__ import annotations

import contextlib
import enum
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Sequence
from types import TracebackType
from typing import Any, Self

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rpi.inspection.v1 import inspection_pb2, inspection_pb2_grpc
from rpi.persistence.v1 import persistence_pb2, persistence_pb2_grpc

from clients.python.rpi_client.channel import ChannelOptions, aio_channel, sync_channel
from clients.python.rpi_client.errors import InspectionFailed, StreamIncomplete

INSPECTION_SERVICE_NAME = "rpi.inspection.v1.InspectionService"
PERSISTENCE_SERVICE_NAME = "rpi.persistence.v1.PersistenceService"
HEALTH_TIMEOUT_S = 5.0
# Reads of recorded inspections are small and indexed; a long wait means something is wrong.
READ_TIMEOUT_S = 30.0

Metadata = Sequence[tuple[str, str]]
_WireMetadata = tuple[tuple[str, str | bytes], ...]
StreamEventHandler = Callable[[inspection_pb2.InspectStreamResponse], None]


class ServingStatus(enum.Enum):
    """``grpc.health.v1.HealthCheckResponse.ServingStatus`` by name."""

    UNKNOWN = 0
    SERVING = 1
    NOT_SERVING = 2
    SERVICE_UNKNOWN = 3


def _wire(metadata: Metadata | None) -> _WireMetadata | None:
    return tuple(metadata) if metadata else None


def _serving_status(response: Any) -> ServingStatus:
    try:
        return ServingStatus(int(response.status))
    except ValueError:
        return ServingStatus.UNKNOWN


class _ClientBase:
    def __init__(self, options: ChannelOptions | None) -> None:
        self._options = options or ChannelOptions()

    def _timeout(self, timeout: float | None) -> float | None:
        return timeout if timeout is not None else self._options.default_timeout_s


class AsyncInspectionClient(_ClientBase):
    """asyncio client of ``rpi.inspection.v1.InspectionService``.

    Use :meth:`connect` (it owns and closes its channel) or wrap an existing channel::

        async with AsyncInspectionClient.connect("inspect.example.com:443", options) as client:
            inspection = await client.inspect(request)
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        options: ChannelOptions | None = None,
        *,
        owns_channel: bool = False,
    ) -> None:
        super().__init__(options)
        self._channel = channel
        self._owns_channel = owns_channel
        self._stub = inspection_pb2_grpc.InspectionServiceStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel)

    @classmethod
    def connect(cls, target: str, options: ChannelOptions | None = None) -> Self:
        options = options or ChannelOptions()
        return cls(aio_channel(target, options), options, owns_channel=True)

    async def inspect(
        self,
        request: inspection_pb2.InspectRequest,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> inspection_pb2.Inspection:
        """Runs one inspection (unary ``Inspect``). ``timeout`` defaults to the options'."""
        try:
            response = await self._stub.Inspect(
                request,
                timeout=self._timeout(timeout),
                metadata=_wire(metadata),
                wait_for_ready=self._options.wait_for_ready,
            )
        except grpc.RpcError as error:
            raise InspectionFailed.from_rpc_error(error) from error
        return response.inspection

    async def inspect_stream(
        self,
        request: inspection_pb2.InspectRequest,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> AsyncGenerator[inspection_pb2.InspectStreamResponse, None]:
        """Yields the events of ``InspectStream``; the last one carries the Inspection.

        ``aclose()`` (or leaving an ``async for`` early and closing) cancels the call.
        """
        call = self._stub.InspectStream(
            request,
            timeout=self._timeout(timeout),
            metadata=_wire(metadata),
            wait_for_ready=self._options.wait_for_ready,
        )
        try:
            async for event in call:
                yield event
        except grpc.RpcError as error:
            raise InspectionFailed.from_rpc_error(error) from error
        finally:
            call.cancel()  # no-op when the stream already ended

    async def inspect_streaming(
        self,
        request: inspection_pb2.InspectRequest,
        on_event: StreamEventHandler | None = None,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> inspection_pb2.Inspection:
        """Runs ``InspectStream``, passing each event to ``on_event``; returns the Inspection."""
        stream = self.inspect_stream(request, timeout=timeout, metadata=metadata)
        async with contextlib.aclosing(stream):
            async for event in stream:
                if on_event is not None:
                    on_event(event)
                if event.HasField("inspection"):
                    return event.inspection
        raise StreamIncomplete()

    async def health(
        self, service: str = INSPECTION_SERVICE_NAME, *, timeout: float = HEALTH_TIMEOUT_S
    ) -> ServingStatus:
        """Standard health check of ``service`` ("" for the whole server)."""
        try:
            response = await self._health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as error:
            raise InspectionFailed.from_rpc_error(error) from error
        return _serving_status(response)

    async def close(self, grace: float | None = None) -> None:
        if self._owns_channel:
            await self._channel.close(grace)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class InspectionClient(_ClientBase):
    """Blocking client of ``rpi.inspection.v1.InspectionService``; same API as the async one."""

    def __init__(
        self,
        channel: grpc.Channel,
        options: ChannelOptions | None = None,
        *,
        owns_channel: bool = False,
    ) -> None:
        super().__init__(options)
        self._channel = channel
        self._owns_channel = owns_channel
        self._stub = inspection_pb2_grpc.InspectionServiceStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel)

    @classmethod
    def connect(cls, target: str, options: ChannelOptions | None = None) -> Self:
        options = options or ChannelOptions()
        return cls(sync_channel(target, options), options, owns_channel=True)

    def inspect(
        self,
        request: inspection_pb2.InspectRequest,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> inspection_pb2.Inspection:
        try:
            response = self._stub.Inspect(
                request,
                timeout=self._timeout(timeout),
                metadata=_wire(metadata),
                wait_for_ready=self._options.wait_for_ready,
            )
        except grpc.RpcError as error:
            raise InspectionFailed.from_rpc_error(error) from error
        return response.inspection

    def inspect_stream(
        self,
        request: inspection_pb2.InspectRequest,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> Generator[inspection_pb2.InspectStreamResponse, None, None]:
        """Yields the events of ``InspectStream``; ``close()`` cancels the call."""
        call = self._stub.InspectStream(
            request,
            timeout=self._timeout(timeout),
            metadata=_wire(metadata),
            wait_for_ready=self._options.wait_for_ready,
        )
        try:
            yield from call
        except grpc.RpcError as error:
            raise InspectionFailed.from_rpc_error(error) from error
        finally:
            call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves it untyped

    def inspect_streaming(
        self,
        request: inspection_pb2.InspectRequest,
        on_event: StreamEventHandler | None = None,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> inspection_pb2.Inspection:
        with contextlib.closing(
            self.inspect_stream(request, timeout=timeout, metadata=metadata)
        ) as stream:
            for event in stream:
                if on_event is not None:
                    on_event(event)
                if event.HasField("inspection"):
                    return event.inspection
        raise StreamIncomplete()

    def health(
        self, service: str = INSPECTION_SERVICE_NAME, *, timeout: float = HEALTH_TIMEOUT_S
    ) -> ServingStatus:
        try:
            response = self._health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError as error:
            raise InspectionFailed.from_rpc_error(error) from error
        return _serving_status(response)

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class PersistenceReader(_ClientBase):
    """asyncio reader of recorded inspections (``rpi.persistence.v1.PersistenceService``)."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        options: ChannelOptions | None = None,
        *,
        owns_channel: bool = False,
    ) -> None:
        super().__init__(options)
        self._channel = channel
        self._owns_channel = owns_channel
        self._stub = persistence_pb2_grpc.PersistenceServiceStub(channel)

    @classmethod
    def connect(cls, target: str, options: ChannelOptions | None = None) -> Self:
        options = options or ChannelOptions()
        return cls(aio_channel(target, options), options, owns_channel=True)

    def _timeout(self, timeout: float | None) -> float:
        return timeout if timeout is not None else READ_TIMEOUT_S

    async def get_inspection(
        self, inspection_id: str, *, timeout: float | None = None
    ) -> persistence_pb2.InspectionRecord:
        try:
            response = await self._stub.GetInspection(
                persistence_pb2.GetInspectionRequest(inspection_id=inspection_id),
                timeout=self._timeout(timeout),
            )
        except grpc.RpcError as error:
            raise InspectionFailed.from_rpc_error(error) from error
        return response.inspection

    async def list_inspection_pages(
        self, shipping_id: str, page_size: int = 50, *, timeout: float | None = None
    ) -> AsyncIterator[persistence_pb2.ListInspectionsResponse]:
        """Yields every page of a shipment's inspections, newest first (``timeout`` per page)."""
        token = ""
        seen_tokens: set[str] = set()
        while True:
            request = persistence_pb2.ListInspectionsRequest(
                shipping_id=shipping_id, page_size=page_size, page_token=token
            )
            try:
                page = await self._stub.ListInspections(request, timeout=self._timeout(timeout))
            except grpc.RpcError as error:
                raise InspectionFailed.from_rpc_error(error) from error
            yield page
            token = page.next_page_token
            if not token:
                return
            if token in seen_tokens:
                # A server handing out the same token twice would make this loop forever.
                raise InspectionFailed(
                    grpc.StatusCode.INTERNAL,
                    "server repeated a page token",
                    reason="PAGE_TOKEN_REPEATED",
                )
            seen_tokens.add(token)

    async def list_inspections(
        self,
        shipping_id: str,
        page_size: int = 50,
        *,
        limit: int | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[persistence_pb2.InspectionRecord]:
        """Yields a shipment's inspection records across pages, at most ``limit`` of them."""
        if limit is not None and limit <= 0:
            return
        count = 0
        async for page in self.list_inspection_pages(shipping_id, page_size, timeout=timeout):
            for record in page.inspections:
                yield record
                count += 1
                if limit is not None and count >= limit:
                    return

    async def close(self, grace: float | None = None) -> None:
        if self._owns_channel:
            await self._channel.close(grace)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
