"""A draining replica claims nothing more, and a run still going when its grace ends is queued
again at once for another replica (not left to its lease)."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from google.rpc import code_pb2
from prometheus_client import CollectorRegistry
from rpi.inspection.v1 import operations_pb2 as opb
from rpi.inspection.v1 import operations_pb2_grpc as opb_grpc
from rpi.persistence.v1 import persistence_pb2 as ppb
from rpi.persistence.v1 import persistence_pb2_grpc as ppb_grpc

from inference_svc.app import InferenceApp
from persistence_svc.app import PersistenceApp
from tests.operations.support import GatedEngine, cheap_output
from tests.support.e2e import inference_settings
from tests.support.faults import cheap_request, wait_until


async def test_a_run_cut_off_by_the_drain_is_queued_again(
    queue_app: PersistenceApp, tmp_path_factory: pytest.TempPathFactory
) -> None:
    engine = GatedEngine([cheap_output()] * 4)
    inspection_id = str(uuid.uuid4())
    engine.gates[inspection_id] = asyncio.Event()
    app = InferenceApp(
        inference_settings(
            tmp_path_factory.mktemp("drain"), queue_app.target, job_poll_interval_s=0.05
        ),
        registry=CollectorRegistry(),
        engine=engine,
    )
    await app.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        inspection = cheap_request("SHIP-DRAIN")
        inspection.inspection_id = inspection_id
        operation = await opb_grpc.AsyncInspectionServiceStub(channel).SubmitInspection(
            opb.SubmitInspectionRequest(inspection=inspection)
        )
    await wait_until(lambda: inspection_id in engine.started, "the run started")
    await app.stop(0.2)
    assert inspection_id in engine.stopped
    async with grpc.aio.insecure_channel(queue_app.target) as channel:
        job = (
            await ppb_grpc.PersistenceServiceStub(channel).GetJob(
                ppb.GetJobRequest(
                    caller="anonymous", job_id=operation.name.removeprefix("operations/")
                )
            )
        ).job
    assert job.state == opb.OPERATION_STATE_QUEUED and job.attempts == 1
    assert job.error.code == code_pb2.UNAVAILABLE
