"""RecordEvents through the real gRPC server: every event kind, idempotent replays, events in
any order, and is_latest along previous-inspection chains."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import asyncpg
import grpc
from rpi.inspection.v1 import inspection_pb2
from rpi.persistence.v1 import persistence_pb2, persistence_pb2_grpc

from persistence_svc.app import PersistenceApp
from persistence_svc.records import EventKind, RecordOutcome
from tests.support.events import attempt_event, failure_event, new_id, request_event, result_event

if TYPE_CHECKING:
    from rpi.persistence.v1.persistence_pb2_grpc import PersistenceServiceAsyncStub as Stub

StartApp = Callable[..., Awaitable[PersistenceApp]]
T0 = datetime(2025, 3, 1, 10, 0, tzinfo=UTC)


async def record(
    stub: Stub, *events: persistence_pb2.Event
) -> persistence_pb2.RecordEventsResponse:
    response: persistence_pb2.RecordEventsResponse = await stub.RecordEvents(
        persistence_pb2.RecordEventsRequest(events=list(events))
    )
    return response


async def get(stub: Stub, inspection_id: str) -> persistence_pb2.InspectionRecord:
    response = await stub.GetInspection(
        persistence_pb2.GetInspectionRequest(inspection_id=inspection_id)
    )
    inspection: persistence_pb2.InspectionRecord = response.inspection
    return inspection


async def test_every_event_kind_is_recorded_and_read_back(stub: Stub) -> None:
    iid = new_id()
    request = request_event(iid, shipping_id="SHIP-KINDS", occur_time=T0)
    first = attempt_event(
        iid, 1, valid=False, validation_errors=["missing field: Confidence"], occur_time=T0
    )
    second = attempt_event(iid, 2, occur_time=T0 + timedelta(seconds=2))
    result = result_event(iid, shipping_id="SHIP-KINDS", occur_time=T0 + timedelta(seconds=3))
    failure = failure_event(iid, reason="PERSIST_SLOW", stage="decide")

    response = await record(stub, request, first, second, result, failure)
    assert (response.applied, response.duplicates) == (5, 0)

    got = await get(stub, iid)
    assert got.inspection_id == iid
    assert got.shipping_id == "SHIP-KINDS"
    assert got.product_name == "Blue cotton T-shirt"
    assert got.request == request.request_received
    assert list(got.attempts) == [first.attempt_recorded, second.attempt_recorded]
    assert got.result == result.result_recorded.inspection
    assert got.failure == failure.failure_recorded
    # A result is the outcome returned to the caller: it wins over a failure.
    assert got.status == persistence_pb2.INSPECTION_STATUS_COMPLETED
    assert got.is_latest
    assert got.create_time.ToDatetime(tzinfo=UTC) == T0


async def test_request_then_failure_is_failed_and_stores_image_digests_only(
    stub: Stub, db: asyncpg.Connection
) -> None:
    iid = new_id()
    await record(stub, request_event(iid, shipping_id="SHIP-FAIL"))
    assert (await get(stub, iid)).status == persistence_pb2.INSPECTION_STATUS_PENDING
    await record(stub, failure_event(iid))

    got = await get(stub, iid)
    assert got.status == persistence_pb2.INSPECTION_STATUS_FAILED
    assert got.failure.reason == "IMAGE_FETCH_FAILED"
    assert not got.HasField("result")

    images = json.loads(
        await db.fetchval("SELECT images FROM inspection_requests WHERE inspection_id = $1", iid)
    )
    # Digest, size and provenance of each image; no bytes (int64 is a string in proto JSON).
    assert images[1] == {
        "role": "IMAGE_ROLE_PICKUP",
        "inline": True,
        "sha256": "cd" * 32,
        "size_bytes": "654321",
        "width": 1200,
        "height": 1600,
        "format": "PNG",
        "tiles": 3,
    }


async def test_data_uris_never_reach_the_database(stub: Stub, db: asyncpg.Connection) -> None:
    iid = new_id()
    event = request_event(iid, shipping_id="SHIP-DATA-URI")
    event.request_received.images[0].uri = "data:image/png;base64," + "A" * 4096
    await record(stub, event)
    images = json.loads(
        await db.fetchval("SELECT images FROM inspection_requests WHERE inspection_id = $1", iid)
    )
    assert images[0]["uri"] == "data:<redacted>"
    assert images[0]["sha256"] == "ab" * 32


async def test_replaying_500_events_applies_them_once(stub: Stub, db: asyncpg.Connection) -> None:
    events: list[persistence_pb2.Event] = []
    inspection_ids = [new_id() for _ in range(125)]
    for n, iid in enumerate(inspection_ids):
        when = T0 + timedelta(minutes=n)
        events += [
            request_event(iid, shipping_id="SHIP-REPLAY", occur_time=when),
            attempt_event(iid, 1, occur_time=when),
            result_event(iid, shipping_id="SHIP-REPLAY", occur_time=when),
            failure_event(iid, occur_time=when),
        ]
    assert len(events) == 500

    first = await record(stub, *events)
    second = await record(stub, *events)

    assert (first.applied, first.duplicates) == (500, 0)
    assert (second.applied, second.duplicates) == (0, 500)
    event_ids = [e.event_id for e in events]
    assert (
        await db.fetchval(
            "SELECT count(*) FROM processed_events WHERE event_id = ANY($1::uuid[])", event_ids
        )
        == 500
    )
    assert (
        await db.fetchval(
            "SELECT count(*) FROM inspection_requests WHERE shipping_id = 'SHIP-REPLAY'"
        )
        == 125
    )
    for table in ("inspection_attempts", "inspection_results", "inspection_failures"):
        count = await db.fetchval(
            f"SELECT count(*) FROM {table} WHERE inspection_id = ANY($1::uuid[])", inspection_ids
        )
        assert count == 125, table


async def test_a_batch_repeating_an_event_counts_the_repeat_as_duplicate(stub: Stub) -> None:
    iid = new_id()
    event = request_event(iid, shipping_id="SHIP-DUP")
    response = await record(stub, event, event, failure_event(iid))
    assert (response.applied, response.duplicates) == (2, 1)


async def test_events_arriving_before_their_request_are_kept(stub: Stub) -> None:
    iid = new_id()
    # Result, then attempt, then the request: each alone, as a retrying producer may deliver.
    result = result_event(iid, shipping_id="SHIP-OOO", occur_time=T0 + timedelta(seconds=9))
    assert (await record(stub, result)).applied == 1
    early = await get(stub, iid)
    assert early.status == persistence_pb2.INSPECTION_STATUS_COMPLETED
    assert early.shipping_id == "SHIP-OOO"
    assert not early.HasField("request")

    await record(stub, attempt_event(iid, 1, occur_time=T0 + timedelta(seconds=5)))
    request = request_event(iid, shipping_id="SHIP-OOO", occur_time=T0)
    await record(stub, request)

    got = await get(stub, iid)
    assert got.status == persistence_pb2.INSPECTION_STATUS_COMPLETED
    assert got.request == request.request_received
    assert [a.attempt_number for a in got.attempts] == [1]
    assert got.result.decision == inspection_pb2.DECISION_PICK
    # The request's time is the inspection's creation time, whatever arrived first.
    assert got.create_time.ToDatetime(tzinfo=UTC) == T0


async def test_a_reversed_batch_ends_in_the_same_state(stub: Stub) -> None:
    iid = new_id()
    events = [
        request_event(iid, shipping_id="SHIP-REV", occur_time=T0),
        attempt_event(iid, 1),
        failure_event(iid),
        result_event(iid, shipping_id="SHIP-REV"),
    ]
    assert (await record(stub, *reversed(events))).applied == 4
    got = await get(stub, iid)
    assert got.status == persistence_pb2.INSPECTION_STATUS_COMPLETED
    assert got.request == events[0].request_received
    assert got.create_time.ToDatetime(tzinfo=UTC) == T0


async def _latest_flags(stub: Stub, ids: list[str]) -> list[bool]:
    return [(await get(stub, iid)).is_latest for iid in ids]


async def test_is_latest_follows_a_chain_recorded_in_order(stub: Stub) -> None:
    a, b, c = new_id(), new_id(), new_id()
    await record(stub, request_event(a, shipping_id="SHIP-CHAIN"))
    assert await _latest_flags(stub, [a]) == [True]
    await record(stub, request_event(b, shipping_id="SHIP-CHAIN", previous_inspection_id=a))
    await record(stub, request_event(c, shipping_id="SHIP-CHAIN", previous_inspection_id=b))
    assert await _latest_flags(stub, [a, b, c]) == [False, False, True]
    assert (await get(stub, c)).previous_inspection_id == b


async def test_is_latest_follows_a_chain_recorded_newest_first(stub: Stub) -> None:
    a, b, c = new_id(), new_id(), new_id()
    await record(stub, request_event(c, shipping_id="SHIP-CHAIN-R", previous_inspection_id=b))
    await record(stub, request_event(b, shipping_id="SHIP-CHAIN-R", previous_inspection_id=a))
    await record(stub, request_event(a, shipping_id="SHIP-CHAIN-R"))
    assert await _latest_flags(stub, [a, b, c]) == [False, False, True]


async def test_is_latest_when_only_the_newer_result_names_the_previous(stub: Stub) -> None:
    a, b = new_id(), new_id()
    # B's result (carrying previous_inspection_id) arrives before anything of A.
    await record(stub, result_event(b, shipping_id="SHIP-CHAIN-RES", previous_inspection_id=a))
    await record(stub, request_event(a, shipping_id="SHIP-CHAIN-RES"), failure_event(a))
    assert await _latest_flags(stub, [a, b]) == [False, True]


async def test_text_with_nul_characters_is_stored(stub: Stub) -> None:
    iid = new_id()
    await record(stub, attempt_event(iid, 1, raw_output="{\x00}"))
    got = await get(stub, iid)
    assert got.attempts[0].raw_output == "{\ufffd}"


async def test_outcomes_are_reported_per_event_kind(fresh_db_url: str, start_app: StartApp) -> None:
    outcomes: list[RecordOutcome] = []
    app = await start_app(fresh_db_url, app_kwargs={"on_recorded": outcomes.append})
    async with grpc.aio.insecure_channel(app.target) as channel:
        stub = persistence_pb2_grpc.PersistenceServiceStub(channel)
        iid = new_id()
        request = request_event(iid, shipping_id="SHIP-KIND-COUNT")
        await record(stub, request, attempt_event(iid, 1), attempt_event(iid, 2))
        await record(stub, request, failure_event(iid))
    assert outcomes[0].applied_by_kind == {
        EventKind.REQUEST_RECEIVED: 1,
        EventKind.ATTEMPT_RECORDED: 2,
    }
    assert outcomes[0].duplicates_by_kind == {}
    assert outcomes[1].applied_by_kind == {EventKind.FAILURE_RECORDED: 1}
    assert outcomes[1].duplicates_by_kind == {EventKind.REQUEST_RECEIVED: 1}
