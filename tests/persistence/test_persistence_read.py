"""GetInspection and ListInspections: not-found, AIP-158 pagination, page token misuse."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import grpc
import pytest
from rpi.persistence.v1 import persistence_pb2

from tests.support.errors import bad_request_fields, error_reason
from tests.support.events import attempt_event, new_id, request_event, result_event

if TYPE_CHECKING:
    from rpi.persistence.v1.persistence_pb2_grpc import PersistenceServiceAsyncStub as Stub

T0 = datetime(2025, 4, 1, 8, 0, tzinfo=UTC)


async def _list(
    stub: Stub, shipping_id: str, page_size: int = 0, page_token: str = ""
) -> persistence_pb2.ListInspectionsResponse:
    response: persistence_pb2.ListInspectionsResponse = await stub.ListInspections(
        persistence_pb2.ListInspectionsRequest(
            shipping_id=shipping_id, page_size=page_size, page_token=page_token
        )
    )
    return response


async def _seed(stub: Stub, shipping_id: str) -> list[str]:
    """Seven inspections, two of them created at the same instant; returns ids newest first."""
    times = [T0 + timedelta(minutes=n) for n in range(6)] + [T0 + timedelta(minutes=3)]
    ids = [new_id() for _ in times]
    events = []
    for iid, when in zip(ids, times, strict=True):
        events += [
            request_event(iid, shipping_id=shipping_id, occur_time=when),
            attempt_event(iid, 1),
            result_event(iid, shipping_id=shipping_id, occur_time=when),
        ]
    # Another shipment's inspection must never show up.
    events.append(request_event(new_id(), shipping_id=shipping_id + "-OTHER", occur_time=T0))
    await stub.RecordEvents(persistence_pb2.RecordEventsRequest(events=events))
    ordered = sorted(zip(times, ids, strict=True), key=lambda p: (p[0], p[1]), reverse=True)
    return [iid for _, iid in ordered]


async def test_get_unknown_inspection_is_not_found(stub: Stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetInspection(persistence_pb2.GetInspectionRequest(inspection_id=new_id()))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_reason(caught.value) == "INSPECTION_NOT_FOUND"


async def test_list_pages_through_a_shipment_newest_first(stub: Stub) -> None:
    expected = await _seed(stub, "SHIP-PAGES")

    seen: list[str] = []
    sizes: list[int] = []
    token = ""
    while True:
        page = await _list(stub, "SHIP-PAGES", page_size=3, page_token=token)
        seen += [r.inspection_id for r in page.inspections]
        sizes.append(len(page.inspections))
        for record in page.inspections:
            assert record.status == persistence_pb2.INSPECTION_STATUS_COMPLETED
            assert record.HasField("result")
            assert record.HasField("request")
            assert len(record.attempts) == 0  # attempts only come with GetInspection
        token = page.next_page_token
        if not token:
            break
    assert seen == expected
    assert sizes == [3, 3, 1]


async def test_page_size_defaults_and_is_capped(stub: Stub) -> None:
    await _seed(stub, "SHIP-SIZES")
    # The shared test service runs with LIST_DEFAULT_PAGE_SIZE=4 and LIST_MAX_PAGE_SIZE=5.
    assert len((await _list(stub, "SHIP-SIZES")).inspections) == 4
    assert len((await _list(stub, "SHIP-SIZES", page_size=1000)).inspections) == 5
    assert (await _list(stub, "SHIP-NOTHING")).inspections == []


async def test_a_token_is_bound_to_its_shipping_id(stub: Stub) -> None:
    await _seed(stub, "SHIP-TOKEN")
    token = (await _list(stub, "SHIP-TOKEN", page_size=2)).next_page_token
    assert token

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _list(stub, "SHIP-TOKEN-OTHER", page_size=2, page_token=token)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in bad_request_fields(caught.value)

    # Changing the page size between pages is allowed (AIP-158).
    assert len((await _list(stub, "SHIP-TOKEN", page_size=1, page_token=token)).inspections) == 1


@pytest.mark.parametrize("tamper", ["garbage", "edit_cursor", "truncate"])
async def test_a_tampered_token_is_invalid_argument(stub: Stub, tamper: str) -> None:
    await _seed(stub, f"SHIP-TAMPER-{tamper}")
    shipping_id = f"SHIP-TAMPER-{tamper}"
    token = (await _list(stub, shipping_id, page_size=2)).next_page_token
    if tamper == "garbage":
        bad = "not a token!"
    elif tamper == "truncate":
        bad = token[: len(token) // 2]
    else:
        doc = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        doc["t"] -= 1
        bad = base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _list(stub, shipping_id, page_size=2, page_token=bad)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in bad_request_fields(caught.value)
