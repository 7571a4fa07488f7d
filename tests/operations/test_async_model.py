"""Asynchronous inspections with the demo model on the real InternVL code path (the shared
end-to-end services): one runs to its result; a cancelled one leaves the engine at once, as the
engine's own counters show."""

from __future__ import annotations

import asyncio
import time

import grpc
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.longrunning import operations_proto_pb2 as lro
from google.rpc import code_pb2
from rpi.inspection.v1 import inspection_pb2 as pb
from rpi.inspection.v1 import operations_pb2 as opb
from rpi.inspection.v1 import operations_pb2_grpc as opb_grpc

from inference_svc.app import InferenceApp
from tests.operations.support import metadata, wait_done
from tests.support.e2e import ImageServer, make_request
from tests.support.faults import wait_until


async def test_demo_model_async_inspection_and_cancel_stops_the_engine_row(
    inference_app: InferenceApp, image_server: ImageServer
) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{inference_app.port}") as channel:
        submit = opb_grpc.AsyncInspectionServiceStub(channel)
        ops = lro_grpc.OperationsStub(channel)

        done = await wait_done(
            ops,
            (
                await submit.SubmitInspection(
                    opb.SubmitInspectionRequest(inspection=make_request(image_server))
                )
            ).name,
        )
        assert metadata(done).state == opb.OPERATION_STATE_SUCCEEDED
        inspection = pb.Inspection()
        assert done.response.Unpack(inspection)
        assert inspection.model.untrained

        # Many questions: an output far longer than the token budget, so the generation is
        # still going when the cancel arrives.
        questions = [
            pb.Question(type="Colour", label=f"Is part {i} red?", value_to_check="Yes")
            for i in range(40)
        ]
        before = inference_app.engine.stats()
        operation = await submit.SubmitInspection(
            opb.SubmitInspectionRequest(inspection=make_request(image_server, questions=questions))
        )

        async def generating() -> bool:
            got = await ops.GetOperation(lro.GetOperationRequest(name=operation.name))
            return metadata(got).progress.generation_progress.tokens_generated > 0

        while not await generating():  # noqa: ASYNC110 - polling another service
            await asyncio.sleep(0.02)
        asked = time.monotonic()
        await ops.CancelOperation(lro.CancelOperationRequest(name=operation.name))
        cancelled = await wait_done(ops, operation.name)
        print(f"\n[async-cancel] cancel_to_cancelled_s={time.monotonic() - asked:.3f}")
        assert metadata(cancelled).state == opb.OPERATION_STATE_CANCELLED
        assert cancelled.error.code == code_pb2.CANCELLED
        await wait_until(
            lambda: inference_app.engine.stats().cancelled_rows > before.cancelled_rows,
            "the engine counts the cancelled row",
        )
        assert inference_app.engine.stats().running_rows == 0
