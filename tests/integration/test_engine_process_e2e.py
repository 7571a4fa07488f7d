"""ENGINE_PROCESS (the production default): the model runs in a child process behind the
same gRPC API, and a dead engine process turns the service NOT_SERVING and UNAVAILABLE."""

from __future__ import annotations

import asyncio
import os
import signal

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rpi.inspection.v1 import inspection_pb2_grpc as pb_grpc

from inference_svc.app import InferenceApp
from inference_svc.engine.process_client import ProcessEngine
from persistence_svc.app import PersistenceApp
from svc_common.health import LIVENESS_SERVICE
from tests.support.e2e import QUESTIONS, ImageServer, inference_settings, make_request


async def test_inspections_through_the_engine_process_and_its_death(
    persistence_app: PersistenceApp,
    image_server: ImageServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    settings = inference_settings(
        tmp_path_factory.mktemp("engine-process"), persistence_app.target, engine_process=True
    )
    app = InferenceApp(settings)
    await app.start()
    try:
        engine = app.engine
        assert isinstance(engine, ProcessEngine) and engine._process is not None
        assert engine._process.pid != os.getpid()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.InspectionServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Inspect(make_request(image_server), timeout=120)
            assert [a.label for a in reply.inspection.answers] == [q.label for q in QUESTIONS]
            kinds = [
                update.WhichOneof("event")
                async for update in stub.InspectStream(make_request(image_server), timeout=120)
            ]
            assert kinds[-1] == "inspection" and "answer_ready" in kinds

            os.kill(engine._process.pid, signal.SIGKILL)
            while engine.ready:  # noqa: ASYNC110 - the receiver notices the pipe's EOF
                await asyncio.sleep(0.01)
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.Inspect(make_request(image_server), timeout=60)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
            for name in ("", LIVENESS_SERVICE):  # readiness and liveness: restart the pod
                status = await health.Check(health_pb2.HealthCheckRequest(service=name))
                assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING, name
    finally:
        await app.stop(5)
