"""A PostgreSQL for tests, and a proxy in front of it that a test can cut.

A real PostgreSQL is used: TEST_DATABASE_URL, else postgresql://postgres@127.0.0.1:5432/test.
When nothing listens there, an embedded PostgreSQL (pgserver) is started in a temporary folder
instead and deleted afterwards. Every test run then works in databases of its own, created and
dropped here, so runs never see each other's rows.

    async with database_url_for_tests() as url:          # one throw-away database
        settings = PersistenceSettings(database_url=url, grpc_listen="127.0.0.1:0",
                                       metrics_port=-1)
        app = PersistenceApp(settings)
        await app.start()
        ...
        await app.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import asyncpg

from persistence_svc.database import EmbeddedPostgres

logger = logging.getLogger(__name__)

DEFAULT_TEST_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database of the same server (TCP or unix-socket URLs)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


@dataclass
class PostgresForTests:
    """A PostgreSQL server on which tests may create and drop databases."""

    __test__ = False  # not a pytest test class, whatever name it is imported under

    admin_url: str
    embedded: EmbeddedPostgres | None = None
    # Temporary folder holding the embedded server's data, removed by close().
    scratch_dir: Path | None = None

    async def create_database(self, prefix: str = "rpi_test_") -> str:
        """Creates an empty database; returns its URL."""
        name = f"{prefix}{secrets.token_hex(6)}"
        conn = await asyncpg.connect(self.admin_url)
        try:
            # Identifiers cannot be bound parameters; the name is generated right above.
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return with_database(self.admin_url, name)

    async def drop_database(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    @asynccontextmanager
    async def fresh_database(self, prefix: str = "rpi_test_") -> AsyncIterator[str]:
        url = await self.create_database(prefix)
        try:
            yield url
        finally:
            await self.drop_database(url)

    async def close(self) -> None:
        if self.embedded is not None:
            await self.embedded.stop()
            self.embedded = None
        if self.scratch_dir is not None:
            shutil.rmtree(self.scratch_dir, ignore_errors=True)
            self.scratch_dir = None


async def start_test_postgres(url: str | None = None) -> PostgresForTests:
    """The test server: ``url``, TEST_DATABASE_URL or the default, and an embedded PostgreSQL in
    a temporary folder when nothing listens there. Call ``close()`` when done."""
    admin_url = url or os.environ.get("TEST_DATABASE_URL") or DEFAULT_TEST_DATABASE_URL
    try:
        conn = await asyncpg.connect(admin_url, timeout=5)
    except (OSError, TimeoutError) as exc:
        logger.info("no PostgreSQL at %s (%s): starting an embedded one", admin_url, exc)
    else:
        await conn.close()
        return PostgresForTests(admin_url=admin_url)
    scratch_dir = Path(tempfile.mkdtemp(prefix="rpi-pg-"))
    embedded = await EmbeddedPostgres.start(scratch_dir / "data", delete_on_stop=True)
    return PostgresForTests(admin_url=embedded.url, embedded=embedded, scratch_dir=scratch_dir)


@asynccontextmanager
async def database_url_for_tests(url: str | None = None) -> AsyncIterator[str]:
    """A fresh, empty database for the duration of the block (dropped afterwards)."""
    server = await start_test_postgres(url)
    try:
        async with server.fresh_database() as database_url:
            yield database_url
    finally:
        await server.close()


class PgProxy:
    """A loopback TCP proxy in front of PostgreSQL that a test can cut, to make the database
    unreachable for real (connection refused, connections reset) and then bring it back."""

    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        query = parse_qs(parts.query)
        self._socket_dir = query["host"][0] if "host" in query else None
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 5432
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._socket_dir is not None:
            return await asyncio.open_unix_connection(f"{self._socket_dir}/.s.PGSQL.{self._port}")
        return await asyncio.open_connection(self._host, self._port)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await self._open_upstream()
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        for task in (
            asyncio.create_task(pipe(reader, up_writer)),
            asyncio.create_task(pipe(up_reader, writer)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def cut(self) -> None:
        """Stops listening and resets every proxied connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        if server is not None:
            await server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"
