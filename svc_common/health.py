"""grpc.health.v1 for both services: the service names and the servicer.

Readiness uses the service's full name (or ""): NOT_SERVING until ready and again while
draining, so load balancers stop sending work. Liveness must not follow it: a pod that drains
for minutes is alive, and a liveness failure then would kill the calls the drain protects. So
liveness has its own name, SERVING from the moment the gRPC server answers until the process
exits.

The servicer is grpcio-health-checking's asyncio one plus ``List``: the library's generated base
class raises NotImplementedError for it (UNIMPLEMENTED and a logged traceback), while the
descriptor that reflection advertises includes it.
"""

from __future__ import annotations

from typing import Any, Final

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer as _LibraryHealthServicer

LIVENESS_SERVICE: Final = "liveness"


class HealthServicer(_LibraryHealthServicer):  # type: ignore[misc]  # grpc_health is untyped
    """Check and Watch from the library; List answers every registered name with its status."""

    async def List(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC method name)
        # A snapshot of the library's own table, so List and Check can never disagree.
        statuses: dict[str, Any] = dict(self._server_status)
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in statuses.items()
            }
        )


__all__ = ["LIVENESS_SERVICE", "HealthServicer"]
