"""Unconstrained decoding keeps the replaced service's safety net: an invalid output is retried
once with the validation errors appended, and a second failure ends in MODEL_OUTPUT_INVALID
with both attempts on record. The random demo model never writes valid JSON on its own, so the
path is exercised for real."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from rpi.inspection.v1 import inspection_pb2_grpc as pb_grpc
from rpi.persistence.v1 import persistence_pb2 as ppb
from rpi.persistence.v1 import persistence_pb2_grpc as ppb_grpc

from inference_svc.app import InferenceApp
from persistence_svc.app import PersistenceApp
from tests.support.e2e import ImageServer, inference_settings, make_request, wait_for_record
from tests.support.errors import details


@pytest_asyncio.fixture(scope="module")
async def unconstrained_stub(
    persistence_app: PersistenceApp, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[pb_grpc.InspectionServiceStub]:
    app = InferenceApp(
        inference_settings(
            tmp_path_factory.mktemp("unconstrained"),
            persistence_app.target,
            constrained_decoding=False,
            max_new_tokens=64,
        )
    )
    await app.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        yield pb_grpc.InspectionServiceStub(channel)
    await app.stop(5)


async def test_invalid_output_is_retried_once_then_fails_with_both_attempts_recorded(
    unconstrained_stub: pb_grpc.InspectionServiceStub,
    persistence_stub: ppb_grpc.PersistenceServiceStub,
    image_server: ImageServer,
) -> None:
    inspection_id = str(uuid.uuid4())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await unconstrained_stub.Inspect(
            make_request(image_server, inspection_id=inspection_id), timeout=120
        )
    assert err.value.code() == grpc.StatusCode.INTERNAL
    info, _ = details(err.value)
    assert info.reason == "MODEL_OUTPUT_INVALID"
    assert info.metadata["inspection_id"] == inspection_id

    record = await wait_for_record(persistence_stub, inspection_id, ppb.INSPECTION_STATUS_FAILED)
    assert record.failure.reason == "MODEL_OUTPUT_INVALID"
    assert record.failure.stage == "parse"
    attempts = sorted(record.attempts, key=lambda a: a.attempt_number)
    assert [a.attempt_number for a in attempts] == [1, 2]
    assert not any(a.valid or a.constrained for a in attempts)
    assert all(a.validation_errors for a in attempts)
    assert all(a.completion_tokens > 0 and a.raw_output for a in attempts)
    # The retry prompt is the first prompt plus the validation errors of the first output.
    assert attempts[1].prompt.startswith(attempts[0].prompt.split("<image>")[0])
    assert attempts[0].validation_errors[0] in attempts[1].prompt
    assert attempts[0].prompt_sha256 != attempts[1].prompt_sha256
    assert attempts[0].template_sha256 == attempts[1].template_sha256
