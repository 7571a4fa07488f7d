"""PREPROCESS_PROCESSES moves decode and tiling into worker processes: the same inspection
comes out, and the worker processes really did the work."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor

import grpc
import pytest
from rpi.inspection.v1 import inspection_pb2_grpc as pb_grpc

from inference_svc.app import InferenceApp
from persistence_svc.app import PersistenceApp
from tests.support.e2e import QUESTIONS, ImageServer, inference_settings, make_request


async def test_inspection_with_preprocessing_in_worker_processes(
    persistence_app: PersistenceApp,
    image_server: ImageServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    app = InferenceApp(
        inference_settings(
            tmp_path_factory.mktemp("processes"), persistence_app.target, preprocess_processes=1
        )
    )
    await app.start()
    try:
        assert isinstance(app.prepare_executor, ProcessPoolExecutor)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.InspectionServiceStub(channel)
            reply = await stub.Inspect(make_request(image_server), timeout=120)
        assert [a.label for a in reply.inspection.answers] == [q.label for q in QUESTIONS]
        workers = app.prepare_executor._processes  # type: ignore[attr-defined]
        assert workers and all(pid != os.getpid() for pid in workers)
    finally:
        await app.stop(5)
