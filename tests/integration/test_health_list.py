"""grpc.health.v1.Health/List, which reflection advertises, answers on both real services (their
main port and the plaintext health-only port) with the same statuses Check gives, and logs no
traceback (grpcio-health-checking's servicer leaves it unimplemented)."""

from __future__ import annotations

import logging

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from inference_svc.app import InferenceApp
from persistence_svc.app import PersistenceApp
from svc_common.health import LIVENESS_SERVICE
from svc_common.security import start_health_port

SERVING = health_pb2.HealthCheckResponse.SERVING


async def _list_and_check(target: str) -> tuple[dict[str, int], dict[str, int]]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        listed = await stub.List(health_pb2.HealthListRequest(), timeout=10)
        statuses = {name: reply.status for name, reply in listed.statuses.items()}
        checked = {
            name: (await stub.Check(health_pb2.HealthCheckRequest(service=name))).status
            for name in statuses
        }
        return statuses, checked


async def _advertised_methods(target: str) -> list[str]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(
            file_containing_symbol="grpc.health.v1.Health"
        )
        async for reply in stub.ServerReflectionInfo(iter([request])):
            for raw in reply.file_descriptor_response.file_descriptor_proto:
                file = descriptor_pb2.FileDescriptorProto.FromString(raw)
                for service in file.service:
                    if service.name == "Health":
                        return [m.name for m in service.method]
        return []


@pytest.mark.parametrize("service", ["inference", "persistence"])
async def test_health_list_answers_what_check_answers(
    service: str,
    inference_app: InferenceApp,
    persistence_app: PersistenceApp,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    if service == "inference":
        target, servicer = f"127.0.0.1:{inference_app.port}", inference_app.health
        expected = {"", "rpi.inspection.v1.InspectionService", LIVENESS_SERVICE}
    else:
        target, servicer = persistence_app.target, persistence_app.health.servicer
        expected = {"", "rpi.persistence.v1.PersistenceService", LIVENESS_SERVICE}
    assert "List" in await _advertised_methods(target)

    statuses, checked = await _list_and_check(target)
    assert expected <= set(statuses)
    assert statuses == checked
    assert statuses[""] == SERVING and statuses[LIVENESS_SERVICE] == SERVING

    # The probe-only port shares the servicer, so it lists the same table.
    started = await start_health_port("127.0.0.1:0", servicer)
    assert started is not None
    health_server, port = started
    try:
        assert (await _list_and_check(f"127.0.0.1:{port}"))[0] == statuses
    finally:
        await health_server.stop(0)

    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert not tracebacks, [r.getMessage() for r in tracebacks]
