"""The server and observability settings both services declare, each defined once.

Each service's settings class names these fields itself (the attribute is the env var, and the
field stays in its group beside the service's other settings) and takes its definition from
here, so ``METRICS_PORT`` has one description and one validation in both. A function rather
than a shared base class because the services legitimately differ in the default: two services
on one host need two metrics ports, and the persistence service drains faster than inspections
run. ``ServerSecuritySettings`` is a base class because every security setting is the same in
both, default included.
"""

from __future__ import annotations

from typing import Any

from svc_common.settings_fields import setting


def drain_grace_s(default: float) -> Any:
    """``DRAIN_GRACE_S``, with this service's default."""
    return setting(
        default,
        "On SIGTERM: how long in-flight calls may take to finish.",
        group="server",
        ge=0,
    )


def metrics_port(default: int) -> Any:
    """``METRICS_PORT``, with this service's default."""
    return setting(
        default,
        "Prometheus /metrics HTTP port (-1 = off, 0 = any free port).",
        group="observability",
    )


def metrics_host() -> Any:
    """``METRICS_HOST``."""
    return setting(
        "0.0.0.0",  # noqa: S104
        "Prometheus HTTP bind address.",
        group="observability",
        advanced=True,
    )
