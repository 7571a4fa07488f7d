"""Helpers of the asynchronous inspection tests: an engine whose generations a test can hold
per inspection, a valid output for the cheap request, and polling on operations."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import grpc
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.longrunning import operations_proto_pb2 as lro
from rpi.inspection.v1 import operations_pb2 as opb

from inference_svc.engine.api import GenerationListener, GenerationRequest, GenerationResult
from tests.support.fake_engine import FakeEngine


def cheap_output() -> str:
    """A valid model output for tests.support.faults.cheap_request (one question, "Red?")."""
    return json.dumps(
        {
            "image_analysis": {"pickup_images": "m", "vendor_image": "m", "comparison": "="},
            "verification_results": [
                {
                    "Label": "Red?",
                    "Result": "Yes",
                    "Evidence": "red",
                    "Confidence": 90,
                    "isRetakeImage": False,
                }
            ],
            "pickup_confidence": {
                "overall_score": 90,
                "confidence_factors": {
                    "image_quality": 80,
                    "attribute_visibility": 70,
                    "matching_confidence": 60,
                },
                "recommendation": "Accept",
            },
        }
    )


@dataclass
class GatedEngine(FakeEngine):
    """The fake engine, but a generation of an inspection with a gate waits, after its first
    token, until the gate opens (or the generation is cancelled)."""

    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    started: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)

    async def generate(
        self, request: GenerationRequest, listener: GenerationListener
    ) -> GenerationResult:
        inspection_id = request.request_id.split("/")[0]
        self.started.append(inspection_id)
        gate = self.gates.get(inspection_id)
        try:
            if gate is not None:
                listener.on_started()
                listener.on_tokens(1, "")
                await gate.wait()
            result = await super().generate(request, listener)
        except asyncio.CancelledError:
            self.stopped.append(inspection_id)
            raise
        self.finished.append(inspection_id)
        return result


def metadata(operation: lro.Operation) -> opb.InspectionOperationMetadata:
    meta = opb.InspectionOperationMetadata()
    operation.metadata.Unpack(meta)
    return meta


async def wait_state(
    stub: lro_grpc.OperationsStub, name: str, state: int, limit_s: float = 60.0
) -> lro.Operation:
    """Polls GetOperation until the operation is in ``state``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while True:
        operation = await stub.GetOperation(lro.GetOperationRequest(name=name))
        if metadata(operation).state == state:
            return operation
        if loop.time() > deadline:
            raise AssertionError(f"{name} never reached state {state}: {metadata(operation)}")
        await asyncio.sleep(0.02)


async def wait_done(stub: lro_grpc.OperationsStub, name: str) -> lro.Operation:
    while True:
        operation = await stub.WaitOperation(lro.WaitOperationRequest(name=name), timeout=120)
        if operation.done:
            return operation


def rpc_code(error: BaseException) -> grpc.StatusCode:
    assert isinstance(error, grpc.aio.AioRpcError)
    return error.code()
