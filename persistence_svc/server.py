"""Builds the grpc.aio server: the persistence service, grpc.health.v1 and server reflection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rpi.persistence.v1 import persistence_pb2, persistence_pb2_grpc

from persistence_svc.errors import error_interceptor
from persistence_svc.servicer import PersistenceServicer
from svc_common.grpc_options import enable_reflection, server_options
from svc_common.health import LIVENESS_SERVICE, HealthServicer

SERVICE_NAME: str = persistence_pb2.DESCRIPTOR.services_by_name["PersistenceService"].full_name
# The overall server health ("") and the service's own entry move together.
HEALTH_NAMES = ("", SERVICE_NAME)


class Health:
    """grpc.health.v1 state of the server."""

    def __init__(self) -> None:
        self.servicer = HealthServicer()
        self._draining = False

    async def set_serving(self, serving: bool) -> None:
        if self._draining:
            return
        await self.servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in HEALTH_NAMES:
            await self.servicer.set(name, status)

    async def drain(self) -> None:
        """NOT_SERVING for good (later set_serving calls are ignored); liveness stays SERVING
        until the process exits."""
        await self.set_serving(False)
        self._draining = True


def build_server(
    servicer: PersistenceServicer,
    health: Health,
    *,
    max_message_bytes: int,
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
    reflection_enabled: bool = True,
) -> grpc.aio.Server:
    server = grpc.aio.server(
        # The error interceptor last: innermost, so metrics and tracing see its status codes.
        interceptors=[*interceptors, error_interceptor()],
        options=server_options(
            max_receive_bytes=max_message_bytes, max_send_bytes=max_message_bytes
        ),
    )
    persistence_pb2_grpc.add_PersistenceServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    if reflection_enabled:
        enable_reflection(server, (SERVICE_NAME,))
    return server
