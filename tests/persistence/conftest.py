"""Fixtures of the persistence tests: a real PostgreSQL (or an embedded one when nothing listens
on 127.0.0.1:5432), one shared service started on a loopback port, and helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import grpc
import pytest
from rpi.persistence.v1 import persistence_pb2_grpc

from persistence_svc.app import PersistenceApp
from persistence_svc.settings import PersistenceSettings
from tests.support.persistence import persistence_settings
from tests.support.postgres import PostgresForTests, start_test_postgres


def pytest_configure(config: pytest.Config) -> None:
    # pgserver (the embedded PostgreSQL fallback) warns through platformdirs in containers.
    config.addinivalue_line("filterwarnings", "ignore:XDG_RUNTIME_DIR is not set")


def make_settings(database_url: str | None, **overrides: Any) -> PersistenceSettings:
    values: dict[str, Any] = {
        "drain_grace_s": 1.0,
        "db_pool_min": 1,
        "db_pool_max": 4,
        "db_connect_retry_max_s": 30.0,
        "list_default_page_size": 4,
        "list_max_page_size": 5,
    }
    return persistence_settings(database_url, **{**values, **overrides})


# autouse: the embedded fallback must start before this process runs any gRPC thread, since
# pgserver forks initdb/pg_ctl and a fork beside running gRPC threads can crash the child.
@pytest.fixture(scope="session", autouse=True)
async def pg_server() -> AsyncIterator[PostgresForTests]:
    server = await start_test_postgres()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture(scope="session")
async def shared_db_url(pg_server: PostgresForTests) -> AsyncIterator[str]:
    async with pg_server.fresh_database() as url:
        yield url


@pytest.fixture
async def fresh_db_url(pg_server: PostgresForTests) -> AsyncIterator[str]:
    async with pg_server.fresh_database() as url:
        yield url


@pytest.fixture(scope="session")
async def app(shared_db_url: str) -> AsyncIterator[PersistenceApp]:
    application = PersistenceApp(make_settings(shared_db_url))
    await application.start()
    try:
        yield application
    finally:
        await application.stop(grace=0)


@pytest.fixture(scope="session")
async def channel(app: PersistenceApp) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(app.target) as ch:
        yield ch


@pytest.fixture(scope="session")
def stub(channel: grpc.aio.Channel) -> persistence_pb2_grpc.PersistenceServiceAsyncStub:
    return persistence_pb2_grpc.PersistenceServiceStub(channel)


@pytest.fixture
async def db(shared_db_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to the shared service's database, for assertions."""
    conn = await asyncpg.connect(shared_db_url)
    try:
        yield conn
    finally:
        await conn.close()


StartApp = Callable[..., Awaitable[PersistenceApp]]


@pytest.fixture
async def start_app() -> AsyncIterator[StartApp]:
    """Starts extra services (stopped at teardown) for tests that disturb their database."""
    started: list[PersistenceApp] = []

    async def start(
        database_url: str | None,
        *,
        wait_ready: bool = True,
        app_kwargs: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> PersistenceApp:
        application = PersistenceApp(make_settings(database_url, **overrides), **(app_kwargs or {}))
        started.append(application)
        await application.start(wait_ready=wait_ready)
        return application

    yield start
    for application in reversed(started):
        await application.stop(grace=0)
