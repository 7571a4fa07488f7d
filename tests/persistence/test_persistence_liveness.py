"""Draining flips readiness to NOT_SERVING but never liveness: Kubernetes must not restart a
pod that is finishing its calls."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from persistence_svc.server import Health

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _statuses(port: int) -> dict[str, int]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        out = {}
        for name in ("", "rpi.persistence.v1.PersistenceService", "liveness"):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=name))
            out[name] = reply.status
        return out


async def test_liveness_stays_serving_while_draining() -> None:
    health = Health()
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        await health.set_serving(False)
        assert await _statuses(port) == {
            "": NOT_SERVING,
            "rpi.persistence.v1.PersistenceService": NOT_SERVING,
            "liveness": SERVING,
        }
        await health.set_serving(True)
        assert set((await _statuses(port)).values()) == {SERVING}
        await health.drain()
        await health.set_serving(True)  # ignored once draining
        assert await _statuses(port) == {
            "": NOT_SERVING,
            "rpi.persistence.v1.PersistenceService": NOT_SERVING,
            "liveness": SERVING,
        }
    finally:
        await server.stop(0)
