"""Where the database comes from: DATABASE_URL, or an embedded PostgreSQL (pgserver) started in a
local data folder so a newcomer needs nothing installed."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

logger = logging.getLogger(__name__)


@dataclass
class EmbeddedPostgres:
    """A pgserver-managed PostgreSQL. ``stop`` shuts the server down and keeps the data."""

    data_dir: Path
    handle: Any
    url: str

    @classmethod
    async def start(cls, data_dir: Path, *, delete_on_stop: bool = False) -> EmbeddedPostgres:
        # pgserver runs initdb/pg_ctl synchronously: keep that off the event loop.
        return await asyncio.to_thread(cls._start_blocking, data_dir, delete_on_stop)

    @classmethod
    def _start_blocking(cls, data_dir: Path, delete_on_stop: bool) -> EmbeddedPostgres:
        # Only needed without DATABASE_URL.
        from pgserver.postgres_server import get_server  # noqa: PLC0415

        data_dir = data_dir.expanduser().resolve()
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        handle = get_server(data_dir, cleanup_mode="delete" if delete_on_stop else "stop")
        url = str(handle.get_uri())
        logger.info(
            "embedded PostgreSQL ready in %.1fs (data in %s)",
            time.perf_counter() - started,
            data_dir,
        )
        return cls(data_dir=data_dir, handle=handle, url=url)

    async def stop(self) -> None:
        await asyncio.to_thread(self.handle.cleanup)
        logger.info("embedded PostgreSQL stopped")


async def create_pool(
    url: str, *, min_size: int, max_size: int, command_timeout_s: float
) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        url,
        min_size=min_size,
        max_size=max_size,
        command_timeout=command_timeout_s,
        timeout=command_timeout_s,
        # Idle connections are closed after a while so a failover does not leave stale ones.
        max_inactive_connection_lifetime=300.0,
        server_settings={"application_name": "rpi-persistence"},
    )
    return pool
