"""Cancellation and deadlines propagate: work for an abandoned call stops, and the abandonment
is on record."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from rpi.inspection.v1 import inspection_pb2 as pb
from rpi.inspection.v1 import inspection_pb2_grpc as pb_grpc
from rpi.persistence.v1 import persistence_pb2 as ppb
from rpi.persistence.v1 import persistence_pb2_grpc as ppb_grpc

from inference_svc.app import InferenceApp
from tests.support.e2e import ImageServer, make_request, wait_for_record


async def test_client_cancelling_a_stream_stops_its_generation(
    inference_app: InferenceApp,
    inspection_stub: pb_grpc.InspectionServiceStub,
    persistence_stub: ppb_grpc.PersistenceServiceStub,
    image_server: ImageServer,
) -> None:
    cancelled_before = inference_app.engine.stats().cancelled_rows
    inspection_id = str(uuid.uuid4())
    # Many questions: the output is hundreds of tokens long, so the generation is certainly still
    # running when the cancellation arrives a few tokens in.
    questions = [
        pb.Question(type="Text", label=f"What is written on label {i}?", value_to_check="ACME")
        for i in range(12)
    ]
    call = inspection_stub.InspectStream(
        make_request(image_server, inspection_id=inspection_id, questions=questions), timeout=120
    )
    async for message in call:
        if message.WhichOneof("event") == "generation_progress":
            call.cancel()
            break
    # The row is forced to finish at its next step; the engine counts it as cancelled.
    for _ in range(200):
        if inference_app.engine.stats().cancelled_rows > cancelled_before:
            break
        await asyncio.sleep(0.05)
    assert inference_app.engine.stats().cancelled_rows == cancelled_before + 1
    record = await wait_for_record(persistence_stub, inspection_id, ppb.INSPECTION_STATUS_FAILED)
    assert record.failure.reason == "CANCELLED"
    assert record.failure.stage == "generate"
    assert inference_app.admission.inflight == 0


async def test_short_deadline_ends_with_deadline_exceeded_and_is_recorded(
    inspection_stub: pb_grpc.InspectionServiceStub,
    persistence_stub: ppb_grpc.PersistenceServiceStub,
    image_server: ImageServer,
) -> None:
    inspection_id = str(uuid.uuid4())
    # The reference answers after 3 s, so the 0.3 s deadline expires while it is fetched.
    slow = pb.Image(uri=image_server.url("ref.jpg") + "?delay_ms=3000")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await inspection_stub.Inspect(
            make_request(image_server, inspection_id=inspection_id, reference_images=[slow]),
            timeout=0.3,
        )
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    record = await wait_for_record(persistence_stub, inspection_id, ppb.INSPECTION_STATUS_FAILED)
    assert record.failure.reason == "DEADLINE_EXCEEDED"
    assert record.failure.status_code == "DEADLINE_EXCEEDED"
