"""Fixtures of the policy tests that need PostgreSQL (the reused-photo lookup)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest_asyncio

from persistence_svc.migrations import apply_migrations
from persistence_svc.testing import PostgresForTests, start_test_postgres


@pytest_asyncio.fixture(scope="session")
async def policy_pg() -> AsyncIterator[PostgresForTests]:
    server = await start_test_postgres()
    try:
        yield server
    finally:
        await server.close()


@pytest_asyncio.fixture
async def migrated(policy_pg: PostgresForTests) -> AsyncIterator[asyncpg.Connection]:
    async with policy_pg.fresh_database("rpi_policy_") as url:
        conn = await asyncpg.connect(url)
        try:
            await apply_migrations(conn)
            yield conn
        finally:
            await conn.close()
