"""Fixtures of the persistence tests here: the real service on a loopback port with a real
PostgreSQL (tests/support/postgres.py: TEST_DATABASE_URL, default 127.0.0.1:5432), in a database
of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from rpi.persistence.v1 import persistence_pb2_grpc

from persistence_svc.app import PersistenceApp
from persistence_svc.settings import PersistenceSettings
from tests.support import persistence
from tests.support.postgres import database_url_for_tests


def persistence_settings(database_url: str, **overrides: Any) -> PersistenceSettings:
    values: dict[str, Any] = {"drain_grace_s": 1.0, "db_pool_min": 1, "db_pool_max": 2}
    return persistence.persistence_settings(database_url, **{**values, **overrides})


@pytest.fixture(scope="module")
async def database_url() -> AsyncIterator[str]:
    async with database_url_for_tests() as url:
        yield url


@pytest.fixture(scope="module")
async def app(database_url: str) -> AsyncIterator[PersistenceApp]:
    application = PersistenceApp(persistence_settings(database_url))
    await application.start()
    try:
        yield application
    finally:
        await application.stop(grace=0)


@pytest.fixture(scope="module")
async def channel(app: PersistenceApp) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(app.target) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.aio.Channel) -> persistence_pb2_grpc.PersistenceServiceStub:
    return persistence_pb2_grpc.PersistenceServiceStub(channel)
