"""Fixtures of the policy tests that need PostgreSQL (the reused-photo lookup)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest_asyncio

from persistence_svc.migrations import apply_migrations
from tests.support.postgres import PostgresForTests, start_test_postgres


@pytest_asyncio.fixture(scope="session")
async def pg_server() -> AsyncIterator[PostgresForTests]:
    server = await start_test_postgres()
    try:
        yield server
    finally:
        await server.close()


@pytest_asyncio.fixture
async def migrated(pg_server: PostgresForTests) -> AsyncIterator[asyncpg.Connection]:
    async with pg_server.fresh_database("rpi_policy_") as url:
        conn = await asyncpg.connect(url)
        try:
            await apply_migrations(conn)
            yield conn
        finally:
            await conn.close()
