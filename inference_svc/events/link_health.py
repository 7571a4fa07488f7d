"""The persistence link's state as a grpc.health.v1 entry of its own.

The inspection service stays SERVING while the persistence service is down (its events are
spooled: that is the point of the spool), so the link is reported under a separate name that
dashboards and operators can check without taking the pod out of rotation.
"""

from __future__ import annotations

from typing import Final

from grpc_health.v1 import health_pb2

from inference_svc.events.delivery import LinkState

PERSISTENCE_LINK_HEALTH_NAME: Final = "rpi.inference.v1.PersistenceLink"


def link_health_status(state: LinkState) -> int:
    """SERVING unless the link is known to be down; SERVICE_UNKNOWN when recording is off."""
    status: int = health_pb2.HealthCheckResponse.SERVING
    if state is LinkState.DOWN:
        status = health_pb2.HealthCheckResponse.NOT_SERVING
    elif state is LinkState.DISABLED:
        status = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
    return status
