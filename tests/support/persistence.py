"""A persistence service in the test process: settings for tests and a started app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from persistence_svc.app import PersistenceApp
from persistence_svc.settings import PersistenceSettings


def persistence_settings(database_url: str | None, **overrides: Any) -> PersistenceSettings:
    """Any free loopback port and no metrics endpoint, unless ``overrides`` say otherwise."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "grpc_listen": "127.0.0.1:0",
        "metrics_port": -1,
    }
    values.update(overrides)
    return PersistenceSettings(**values)


@asynccontextmanager
async def running_persistence(
    database_url: str, *, app_kwargs: dict[str, Any] | None = None, **overrides: Any
) -> AsyncIterator[PersistenceApp]:
    """A started service (``PersistenceApp(settings, **app_kwargs)``), stopped without grace."""
    app = PersistenceApp(persistence_settings(database_url, **overrides), **(app_kwargs or {}))
    await app.start()
    try:
        yield app
    finally:
        await app.stop(grace=0)
