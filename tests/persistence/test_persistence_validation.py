"""Invalid input is INVALID_ARGUMENT with google.rpc.BadRequest field violations, and a batch
with one bad event records nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg
import grpc
import pytest
from rpi.persistence.v1 import persistence_pb2

from tests.support.errors import bad_request_fields, error_reason
from tests.support.events import attempt_event, new_id, request_event, result_event

if TYPE_CHECKING:
    from rpi.persistence.v1.persistence_pb2_grpc import PersistenceServiceAsyncStub as Stub


async def _record_error(stub: Stub, events: list[persistence_pb2.Event]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RecordEvents(persistence_pb2.RecordEventsRequest(events=events))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(caught.value) == "INVALID_ARGUMENT"
    return caught.value


async def test_bad_events_are_named_field_by_field(stub: Stub, db: asyncpg.Connection) -> None:
    good = request_event(new_id(), shipping_id="SHIP-VALID")
    bad_ids = request_event(new_id(), shipping_id="SHIP-VALID")
    bad_ids.event_id = "not-a-uuid"
    bad_ids.inspection_id = "42"
    no_payload = persistence_pb2.Event(event_id=new_id(), inspection_id=new_id())
    no_shipping = request_event(new_id(), shipping_id="")
    own_previous = request_event(new_id(), shipping_id="SHIP-VALID")
    own_previous.request_received.previous_inspection_id = own_previous.inspection_id
    attempt_zero = attempt_event(new_id(), 0)
    other_result = result_event(new_id(), shipping_id="SHIP-VALID")
    other_result.result_recorded.inspection.inspection_id = new_id()
    empty_result = persistence_pb2.Event(event_id=new_id(), inspection_id=new_id())
    empty_result.result_recorded.SetInParent()

    error = await _record_error(
        stub,
        [
            good,
            bad_ids,
            no_payload,
            no_shipping,
            own_previous,
            attempt_zero,
            other_result,
            empty_result,
        ],
    )
    fields = bad_request_fields(error)
    assert set(fields) == {
        "events[1].event_id",
        "events[1].inspection_id",
        "events[2].payload",
        "events[3].request_received.shipping_id",
        "events[4].request_received.previous_inspection_id",
        "events[5].attempt_recorded.attempt_number",
        "events[6].result_recorded.inspection.inspection_id",
        "events[7].result_recorded.inspection",
    }
    assert fields["events[1].event_id"] == "must be a UUID"
    # All or nothing: the valid first event was not recorded either.
    assert (
        await db.fetchval(
            "SELECT count(*) FROM processed_events WHERE event_id = $1", good.event_id
        )
        == 0
    )


async def test_too_many_events_in_one_call(stub: Stub) -> None:
    iid = new_id()
    events = [attempt_event(iid, n + 1) for n in range(501)]
    error = await _record_error(stub, events)
    assert set(bad_request_fields(error)) == {"events"}


async def test_get_with_a_bad_id(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetInspection(persistence_pb2.GetInspectionRequest(inspection_id="x"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(caught.value) == {"inspection_id": "must be a UUID"}


@pytest.mark.parametrize(
    ("list_request", "field"),
    [
        (persistence_pb2.ListInspectionsRequest(shipping_id=""), "shipping_id"),
        (persistence_pb2.ListInspectionsRequest(shipping_id="S", page_size=-1), "page_size"),
    ],
)
async def test_list_with_bad_arguments(
    stub: Stub, list_request: persistence_pb2.ListInspectionsRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListInspections(list_request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in bad_request_fields(caught.value)
