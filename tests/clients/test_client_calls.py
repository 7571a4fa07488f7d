"""The sync and asyncio clients against a real loopback server with canned behaviour."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
import pytest
from rpi.inspection.v1 import inspection_pb2

from clients.python.rpi_client import (
    AsyncInspectionClient,
    ChannelOptions,
    FieldViolation,
    InspectionClient,
    InspectionFailed,
    PersistenceReader,
    ServingStatus,
    StreamIncomplete,
)

if TYPE_CHECKING:
    from tests.clients.conftest import CannedServer, RequestFactory


def _kinds(events: list[inspection_pb2.InspectStreamResponse]) -> list[str]:
    return [str(event.WhichOneof("event")) for event in events]


EXPECTED_KINDS = [
    "accepted",
    "images_fetched",
    "images_fetched",
    "preprocessing_done",
    "queued",
    "queued",
    "generation_progress",
    "answer_ready",
    "answer_ready",
    "inspection",
]


def test_sync_inspect_returns_inspection_and_sends_request(
    server: CannedServer, request_factory: RequestFactory
) -> None:
    with InspectionClient.connect(server.target) as client:
        inspection = client.inspect(request_factory("ok"), metadata=[("x-caller", "tests")])
    assert inspection.decision == inspection_pb2.DECISION_PICK
    assert [a.label for a in inspection.answers] == ["Is the mug blue?", "How many mugs?"]
    received = server.inspection.requests[-1]
    assert received.pickup_images[0].content == b"\xff\xd8jpeg-bytes"
    assert server.inspection.metadata[-1]["x-caller"] == "tests"
    assert server.inspection.metadata[-1]["user-agent"].startswith("rpi-client-python/")


def test_sync_stream_yields_every_event_in_order(
    server: CannedServer, request_factory: RequestFactory
) -> None:
    with InspectionClient.connect(server.target) as client:
        events = list(client.inspect_stream(request_factory("ok")))
    assert _kinds(events) == EXPECTED_KINDS
    assert events[1].images_fetched.total == 2
    assert events[-1].inspection.inspection_id == "insp-1"


def test_sync_inspect_streaming_reports_events_and_returns_final(
    server: CannedServer, request_factory: RequestFactory
) -> None:
    seen: list[inspection_pb2.InspectStreamResponse] = []
    with InspectionClient.connect(server.target) as client:
        inspection = client.inspect_streaming(request_factory("not-pick"), seen.append)
    assert inspection.decision == inspection_pb2.DECISION_NOT_PICK
    assert _kinds(seen) == EXPECTED_KINDS


def test_sync_error_details_are_decoded(
    server: CannedServer, request_factory: RequestFactory
) -> None:
    with InspectionClient.connect(server.target) as client, pytest.raises(InspectionFailed) as info:
        client.inspect(request_factory("too-large"))
    failure = info.value
    assert failure.code is grpc.StatusCode.INVALID_ARGUMENT
    assert failure.reason == "IMAGE_TOO_LARGE"
    assert failure.domain == "inspection.rpi.v1"
    assert failure.metadata == {"image": "pickup_images[1]"}
    assert failure.violations == (
        FieldViolation("pickup_images[1]", "image is 12.0 MB, limit 10 MB"),
    )
    assert str(failure) == (
        "INVALID_ARGUMENT IMAGE_TOO_LARGE pickup_images[1]: image is 12.0 MB, limit 10 MB"
    )
    assert isinstance(failure.__cause__, grpc.RpcError)
    assert "  violation pickup_images[1]: image is 12.0 MB, limit 10 MB" in failure.describe()


def test_sync_stream_error_mid_stream(
    server: CannedServer, request_factory: RequestFactory
) -> None:
    received: list[str] = []
    with InspectionClient.connect(server.target) as client, pytest.raises(InspectionFailed) as info:
        for event in client.inspect_stream(request_factory("fail-midway")):
            received.append(str(event.WhichOneof("event")))
    assert info.value.code is grpc.StatusCode.INTERNAL
    assert info.value.reason == "MODEL_OUTPUT_INVALID"
    assert received[-1] == "answer_ready"


def test_sync_stream_without_final_inspection_raises(
    server: CannedServer, request_factory: RequestFactory
) -> None:
    with InspectionClient.connect(server.target) as client, pytest.raises(StreamIncomplete):
        client.inspect_streaming(request_factory("no-final"))


def test_sync_deadline_exceeded(server: CannedServer, request_factory: RequestFactory) -> None:
    with InspectionClient.connect(server.target) as client, pytest.raises(InspectionFailed) as info:
        client.inspect(request_factory("hang"), timeout=0.2)
    assert info.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert info.value.reason == ""


def test_sync_stream_closed_early_cancels_the_call(
    server: CannedServer, request_factory: RequestFactory
) -> None:
    with InspectionClient.connect(server.target) as client:
        stream = client.inspect_stream(request_factory("hang"))
        first = next(stream)
        # Closing only once the server waits makes the cancellation reach the handler itself,
        # not the generator between two messages.
        assert server.inspection.hanging.wait(10)
        stream.close()
    assert first.accepted.inspection_id == "stream-id"
    assert server.inspection.cancelled.wait(10)


def test_sync_health(server: CannedServer) -> None:
    with InspectionClient.connect(server.target) as client:
        assert client.health() is ServingStatus.SERVING
        assert client.health("draining") is ServingStatus.NOT_SERVING
        with pytest.raises(InspectionFailed) as info:
            client.health("no.such.Service")
    assert info.value.code is grpc.StatusCode.NOT_FOUND


def test_channel_options_limit_message_size(
    server: CannedServer, request_factory: RequestFactory
) -> None:
    request = request_factory("ok")
    request.pickup_images.append(inspection_pb2.Image(content=b"x" * 200_000))
    options = ChannelOptions(max_message_bytes=100_000, keepalive_time_s=60)
    with InspectionClient.connect(server.target, options) as client:
        with pytest.raises(InspectionFailed) as info:
            client.inspect(request)
        assert info.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert client.health() is ServingStatus.SERVING


async def test_async_inspect_and_error_details(
    server: CannedServer, request_factory: RequestFactory
) -> None:
    async with AsyncInspectionClient.connect(server.target) as client:
        inspection = await client.inspect(request_factory("untrained"))
        with pytest.raises(InspectionFailed) as info:
            await client.inspect(request_factory("overloaded"))
    assert inspection.model.untrained
    assert info.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert info.value.reason == "OVERLOADED"
    assert info.value.retry_delay_s == 1.5
    assert info.value.violations == ()


async def test_async_stream_iteration(
    server: CannedServer, request_factory: RequestFactory
) -> None:
    async with AsyncInspectionClient.connect(server.target) as client:
        events = [event async for event in client.inspect_stream(request_factory("ok"))]
        seen: list[inspection_pb2.InspectStreamResponse] = []
        final = await client.inspect_streaming(request_factory("ok"), seen.append)
    assert _kinds(events) == EXPECTED_KINDS
    assert _kinds(seen) == EXPECTED_KINDS
    assert final == events[-1].inspection


async def test_async_stream_errors(server: CannedServer, request_factory: RequestFactory) -> None:
    async with AsyncInspectionClient.connect(server.target) as client:
        with pytest.raises(InspectionFailed) as before_first:
            async for _ in client.inspect_stream(request_factory("too-large")):
                pass
        with pytest.raises(InspectionFailed) as midway:
            async for _ in client.inspect_stream(request_factory("fail-midway")):
                pass
        with pytest.raises(StreamIncomplete):
            await client.inspect_streaming(request_factory("no-final"))
    assert before_first.value.reason == "IMAGE_TOO_LARGE"
    assert before_first.value.violations[0].field == "pickup_images[1]"
    assert midway.value.reason == "MODEL_OUTPUT_INVALID"


async def test_async_stream_closed_early_cancels_the_call(
    server: CannedServer, request_factory: RequestFactory
) -> None:
    async with AsyncInspectionClient.connect(server.target) as client:
        stream = client.inspect_stream(request_factory("hang"))
        first = await anext(stream)
        assert server.inspection.hanging.wait(10)
        await stream.aclose()
    assert first.WhichOneof("event") == "accepted"
    assert server.inspection.cancelled.wait(10)


async def test_async_health(server: CannedServer) -> None:
    async with AsyncInspectionClient.connect(server.target) as client:
        assert await client.health() is ServingStatus.SERVING
        assert await client.health("draining") is ServingStatus.NOT_SERVING


async def test_persistence_get_and_not_found(server: CannedServer) -> None:
    async with PersistenceReader.connect(server.target) as reader:
        record = await reader.get_inspection("rec-0")
        with pytest.raises(InspectionFailed) as info:
            await reader.get_inspection("missing")
    assert record.inspection_id == "rec-0"
    assert record.result.decision == inspection_pb2.DECISION_PICK
    assert info.value.code is grpc.StatusCode.NOT_FOUND
    assert str(info.value) == "NOT_FOUND inspection missing not found"


async def test_persistence_list_iterates_pages(server: CannedServer) -> None:
    async with PersistenceReader.connect(server.target) as reader:
        ids = [r.inspection_id async for r in reader.list_inspections("S-LIST", page_size=2)]
        tokens = [p.page_token for p in server.persistence.page_requests]
        limited = [
            r.inspection_id async for r in reader.list_inspections("S-LIST", page_size=2, limit=3)
        ]
        empty = [r async for r in reader.list_inspections("S-NONE")]
    assert ids == [f"rec-{i}" for i in range(5)]
    assert tokens == ["", "2", "4"]
    assert limited == ["rec-0", "rec-1", "rec-2"]
    assert empty == []
