"""Versioned migrations: applied once, idempotent on restart, safe with concurrent replicas."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg
import grpc
import pytest
from rpi.persistence.v1 import persistence_pb2, persistence_pb2_grpc

from persistence_svc.app import PersistenceApp
from persistence_svc.migrations import Migration, MigrationError, apply_migrations, load
from tests.support.events import new_id, request_event

EXPECTED_TABLES = {
    "inspection_requests",
    "inspection_attempts",
    "inspection_results",
    "inspection_failures",
    "processed_events",
    "schema_migrations",
}


async def test_migrations_apply_once_and_are_idempotent(fresh_db_url: str) -> None:
    conn = await asyncpg.connect(fresh_db_url)
    try:
        first = await apply_migrations(conn)
        second = await apply_migrations(conn)
        tables = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")
        }
        history = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    assert first == [m.version for m in load()]
    assert first[0] == 1
    assert second == []
    assert tables >= EXPECTED_TABLES
    assert [(r["version"], r["name"]) for r in history] == [(m.version, m.name) for m in load()]


async def test_two_replicas_migrating_at_once_apply_each_migration_once(fresh_db_url: str) -> None:
    first, second = await asyncpg.connect(fresh_db_url), await asyncpg.connect(fresh_db_url)
    try:
        results = await asyncio.gather(apply_migrations(first), apply_migrations(second))
        count = await first.fetchval("SELECT count(*) FROM schema_migrations")
    finally:
        await first.close()
        await second.close()
    assert sorted(results, key=len) == [[], [m.version for m in load()]]
    assert count == len(load())


async def test_an_edited_migration_is_refused(fresh_db_url: str) -> None:
    conn = await asyncpg.connect(fresh_db_url)
    try:
        await apply_migrations(conn)
        edited = [Migration(m.version, m.name, m.sql + "\n-- edited\n") for m in load()]
        with pytest.raises(MigrationError, match="edited"):
            await apply_migrations(conn, edited)
    finally:
        await conn.close()


async def test_a_failing_migration_leaves_nothing_behind(fresh_db_url: str) -> None:
    conn = await asyncpg.connect(fresh_db_url)
    try:
        broken = [*load(), Migration(99, "broken", "CREATE TABLE half_done (x int); SELECT 1/0;")]
        with pytest.raises(asyncpg.exceptions.DivisionByZeroError):
            await apply_migrations(conn, broken)
        tables = await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname='public'")
    finally:
        await conn.close()
    assert tables == 0


async def test_service_restarts_on_a_migrated_database_and_keeps_its_rows(
    fresh_db_url: str, start_app: Callable[..., Awaitable[PersistenceApp]]
) -> None:
    inspection_id = new_id()
    first = await start_app(fresh_db_url)
    async with grpc.aio.insecure_channel(first.target) as channel:
        stub = persistence_pb2_grpc.PersistenceServiceStub(channel)
        await stub.RecordEvents(
            persistence_pb2.RecordEventsRequest(
                events=[request_event(inspection_id, shipping_id="SHIP-RESTART")]
            )
        )
    await first.stop(grace=0)

    second = await start_app(fresh_db_url)
    async with grpc.aio.insecure_channel(second.target) as channel:
        stub = persistence_pb2_grpc.PersistenceServiceStub(channel)
        got = await stub.GetInspection(
            persistence_pb2.GetInspectionRequest(inspection_id=inspection_id)
        )
    assert got.inspection.shipping_id == "SHIP-RESTART"
    conn = await asyncpg.connect(fresh_db_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(load())
    finally:
        await conn.close()
