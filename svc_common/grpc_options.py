"""gRPC server channel options shared by both services."""

from typing import Final

# Clients behind load balancers and NAT keep idle connections alive with HTTP/2 pings; gRPC's
# default server policy answers pings more often than every 5 minutes with GOAWAY
# (too_many_pings). Accept one every 10 s, also between calls, so client keepalive works.
KEEPALIVE_OPTIONS: Final[tuple[tuple[str, int], ...]] = (
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 2),
)
