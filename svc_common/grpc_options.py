"""gRPC server options and the reflection list, the same for both services."""

from collections.abc import Sequence
from typing import Final

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection

# Clients behind load balancers and NAT keep idle connections alive with HTTP/2 pings; gRPC's
# default server policy answers pings more often than every 5 minutes with GOAWAY
# (too_many_pings). Accept one every 10 s, also between calls, so client keepalive works.
KEEPALIVE_OPTIONS: Final[tuple[tuple[str, int], ...]] = (
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 2),
)

HEALTH_SERVICE: Final[str] = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


def server_options(*, max_receive_bytes: int, max_send_bytes: int) -> list[tuple[str, int]]:
    """Message limits, keepalive, and no SO_REUSEPORT: a second server started on a port in
    use must fail to bind instead of silently sharing the port's calls."""
    return [
        ("grpc.max_receive_message_length", max_receive_bytes),
        ("grpc.max_send_message_length", max_send_bytes),
        ("grpc.so_reuseport", 0),
        *KEEPALIVE_OPTIONS,
    ]


def enable_reflection(server: grpc.aio.Server, services: Sequence[str]) -> None:
    """Server reflection listing ``services`` plus health and reflection itself, which every
    server here serves."""
    reflection.enable_server_reflection(
        (*services, HEALTH_SERVICE, reflection.SERVICE_NAME), server
    )
