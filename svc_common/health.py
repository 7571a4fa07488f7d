"""Health service names shared by both services.

Readiness uses the service's full name (or ""): NOT_SERVING until ready and again while
draining, so load balancers stop sending work. Liveness must not follow it: a pod that drains
for minutes is alive, and a liveness failure then would kill the calls the drain protects. So
liveness has its own name, SERVING from the moment the gRPC server answers until the process
exits.
"""

from typing import Final

LIVENESS_SERVICE: Final = "liveness"
