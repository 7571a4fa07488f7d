"""The enum fields added beside old strings (FailureRecorded.failure_stage,
RequestReceived.inspect_method): producers may send either form and readers get both, through
the real service and database."""

from __future__ import annotations

import uuid

from google.protobuf.timestamp_pb2 import Timestamp
from rpi.persistence.v1 import persistence_pb2 as ppb
from rpi.persistence.v1 import persistence_pb2_grpc


def _events(
    inspection_id: str, request: ppb.RequestReceived, failure: ppb.FailureRecorded
) -> list[ppb.Event]:
    now = Timestamp()
    now.GetCurrentTime()
    return [
        ppb.Event(
            event_id=str(uuid.uuid4()),
            inspection_id=inspection_id,
            occur_time=now,
            request_received=request,
        ),
        ppb.Event(
            event_id=str(uuid.uuid4()),
            inspection_id=inspection_id,
            occur_time=now,
            failure_recorded=failure,
        ),
    ]


async def _round_trip(
    stub: persistence_pb2_grpc.PersistenceServiceStub,
    request: ppb.RequestReceived,
    failure: ppb.FailureRecorded,
) -> ppb.InspectionRecord:
    inspection_id = str(uuid.uuid4())
    await stub.RecordEvents(
        ppb.RecordEventsRequest(events=_events(inspection_id, request, failure))
    )
    got = await stub.GetInspection(ppb.GetInspectionRequest(inspection_id=inspection_id))
    return got.inspection


async def test_old_strings_are_read_back_with_their_enums(
    stub: persistence_pb2_grpc.PersistenceServiceStub,
) -> None:
    record = await _round_trip(
        stub,
        ppb.RequestReceived(shipping_id="S-ENUM", method="InspectStream"),
        ppb.FailureRecorded(stage="fetch", reason="IMAGE_FETCH_FAILED", status_code="X"),
    )
    assert record.request.method == "InspectStream"
    assert record.request.inspect_method == ppb.INSPECT_METHOD_INSPECT_STREAM
    assert record.failure.stage == "fetch"
    assert record.failure.failure_stage == ppb.FAILURE_STAGE_FETCH


async def test_enums_alone_are_read_back_with_their_strings(
    stub: persistence_pb2_grpc.PersistenceServiceStub,
) -> None:
    record = await _round_trip(
        stub,
        ppb.RequestReceived(shipping_id="S-ENUM", inspect_method=ppb.INSPECT_METHOD_INSPECT),
        ppb.FailureRecorded(failure_stage=ppb.FAILURE_STAGE_PARSE, reason="MODEL_OUTPUT_INVALID"),
    )
    assert (record.request.method, record.request.inspect_method) == (
        "Inspect",
        ppb.INSPECT_METHOD_INSPECT,
    )
    assert (record.failure.stage, record.failure.failure_stage) == (
        "parse",
        ppb.FAILURE_STAGE_PARSE,
    )


async def test_an_unknown_stage_string_reads_back_unspecified(
    stub: persistence_pb2_grpc.PersistenceServiceStub,
) -> None:
    record = await _round_trip(
        stub,
        ppb.RequestReceived(shipping_id="S-ENUM", method="Inspect"),
        ppb.FailureRecorded(stage="somewhere-new", reason="INTERNAL"),
    )
    assert record.failure.stage == "somewhere-new"
    assert record.failure.failure_stage == ppb.FAILURE_STAGE_UNSPECIFIED
