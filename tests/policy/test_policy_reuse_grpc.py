"""The reused-photo check across services: a pickup image's hash recorded with its request in
a real persistence service is found by the inference service's lookup client from another
shipment, not from its own; a bad lookup is refused with the fields named."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from uuid import uuid4

import grpc
import pytest
import pytest_asyncio
from rpi.persistence.v1 import persistence_pb2, persistence_pb2_grpc

from inference_svc.reuse_lookup import PersistenceReuseLookup
from tests.support.errors import bad_request_fields
from tests.support.persistence import running_persistence
from tests.support.postgres import PostgresForTests

HASH = 0xF0E1_D2C3_B4A5_9687


def request_event(shipping_id: str, hashes: list[int | None]) -> tuple[str, persistence_pb2.Event]:
    inspection_id = str(uuid4())
    event = persistence_pb2.Event(event_id=str(uuid4()), inspection_id=inspection_id)
    event.occur_time.FromDatetime(datetime.now(UTC))
    images = [persistence_pb2.ImageRecord(role=persistence_pb2.IMAGE_ROLE_REFERENCE, index=0)]
    for index, value in enumerate(hashes):
        image = persistence_pb2.ImageRecord(role=persistence_pb2.IMAGE_ROLE_PICKUP, index=index)
        if value is not None:
            image.perceptual_hash = value
        images.append(image)
    # A reference image's hash is not kept for the lookup.
    images[0].perceptual_hash = HASH
    event.request_received.CopyFrom(
        persistence_pb2.RequestReceived(shipping_id=shipping_id, images=images, method="Inspect")
    )
    return inspection_id, event


@pytest_asyncio.fixture
async def target(pg_server: PostgresForTests) -> AsyncIterator[str]:
    async with pg_server.fresh_database("rpi_reuse_") as url, running_persistence(url) as app:
        yield app.target


async def test_a_photo_reused_across_shipments_is_found(target: str) -> None:
    earlier, first = request_event("SHIP-A", [None, HASH ^ 0b101])
    _, unrelated = request_event("SHIP-B", [HASH ^ ((1 << 40) - 1)])
    async with grpc.aio.insecure_channel(target) as channel:
        stub = persistence_pb2_grpc.PersistenceServiceStub(channel)
        await stub.RecordEvents(persistence_pb2.RecordEventsRequest(events=[first, unrelated]))

    lookup = PersistenceReuseLookup(target)
    try:
        (match,) = await lookup.find("SHIP-C", [(0, 7), (3, HASH)], 6)
        assert (match.pickup_index, match.inspection_id, match.shipping_id, match.distance) == (
            3,
            earlier,
            "SHIP-A",
            2,
        )
        # The shipment's own earlier photos are not a fraud signal; nor is a far hash.
        assert await lookup.find("SHIP-A", [(0, HASH)], 6) == ()
        assert await lookup.find("SHIP-C", [(0, HASH)], 1) == ()
    finally:
        await lookup.close()


async def test_a_bad_lookup_is_refused(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = persistence_pb2_grpc.PersistenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.FindSimilarPickupImages(
                persistence_pb2.FindSimilarPickupImagesRequest(max_distance=12, limit=99)
            )
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert set(bad_request_fields(info.value)) == {"hashes", "max_distance", "shipping_id", "limit"}


async def test_a_period_listing_needs_a_period(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = persistence_pb2_grpc.PersistenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ListInspectionsByTime(persistence_pb2.ListInspectionsByTimeRequest())
        assert set(bad_request_fields(info.value)) == {"start_time", "end_time"}
        backwards = persistence_pb2.ListInspectionsByTimeRequest()
        backwards.start_time.FromDatetime(datetime(2026, 2, 1, tzinfo=UTC))
        backwards.end_time.FromDatetime(datetime(2026, 1, 1, tzinfo=UTC))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ListInspectionsByTime(backwards)
        assert set(bad_request_fields(info.value)) == {"end_time"}
