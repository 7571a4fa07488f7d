"""Fixtures of the persistence tests here: the real service on a loopback port with a real
PostgreSQL (TEST_DATABASE_URL, default 127.0.0.1:5432), in a database of its own."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import pytest
from rpi.persistence.v1 import persistence_pb2_grpc

from persistence_svc.app import PersistenceApp
from persistence_svc.settings import PersistenceSettings

ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def persistence_settings(database_url: str, **overrides: Any) -> PersistenceSettings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "grpc_listen": "127.0.0.1:0",
        "metrics_port": -1,
        "drain_grace_s": 1.0,
        "db_pool_min": 1,
        "db_pool_max": 2,
    }
    values.update(overrides)
    return PersistenceSettings(**values)


@pytest.fixture(scope="module")
async def database_url() -> AsyncIterator[str]:
    name = f"rpi_errors_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(ADMIN_URL, timeout=5)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield urlunsplit(urlsplit(ADMIN_URL)._replace(path="/" + name))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


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
