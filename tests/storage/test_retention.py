"""Retention in the persistence service against a real PostgreSQL: backdated records, one
sweep, exactly the expired parts removed; two sweepers at once remove each row once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest_asyncio
from prometheus_client import CollectorRegistry
from rpi.persistence.v1 import persistence_pb2 as ppb
from rpi.persistence.v1 import persistence_pb2_grpc as ppb_grpc

from persistence_svc.app import PersistenceApp
from persistence_svc.retention import RetentionMetrics, RetentionPolicy, RetentionSweeper
from persistence_svc.settings import PersistenceSettings
from tests.support.events import attempt_event, new_id, request_event, result_event
from tests.support.persistence import running_persistence
from tests.support.postgres import PostgresForTests

NOW = datetime.now(UTC)


@pytest_asyncio.fixture
async def retention_app(postgres: PostgresForTests) -> AsyncIterator[PersistenceApp]:
    async with (
        postgres.fresh_database("rpi_retention_") as url,
        running_persistence(
            url,
            retention_attempt_payload_days=1,
            retention_record_days=30,
            retention_event_key_days=7,
            retention_batch_size=7,  # several batches per sweep
        ) as app,
    ):
        yield app


async def record(app: PersistenceApp, events: list[ppb.Event]) -> None:
    async with grpc.aio.insecure_channel(app.target) as channel:
        stub = ppb_grpc.PersistenceServiceStub(channel)
        for start in range(0, len(events), 400):
            await stub.RecordEvents(ppb.RecordEventsRequest(events=events[start : start + 400]))


def inspection(age: timedelta, attempts: int = 1) -> tuple[str, list[ppb.Event]]:
    iid, when = new_id(), NOW - age
    events = [request_event(iid, shipping_id="SHIP-R", occur_time=when)]
    events += [attempt_event(iid, n, occur_time=when) for n in range(1, attempts + 1)]
    events.append(result_event(iid, shipping_id="SHIP-R", occur_time=when))
    return iid, events


async def attempts_of(conn: asyncpg.Connection, iid: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT prompt, raw_output, parsed_output, prompt_sha256, valid, payload_purged_at "
        "FROM inspection_attempts WHERE inspection_id = $1 ORDER BY attempt_number",
        iid,
    )


async def test_one_sweep_removes_exactly_the_expired_parts(retention_app: PersistenceApp) -> None:
    app = retention_app
    old, old_events = inspection(timedelta(days=2), attempts=2)  # payloads expire, record stays
    fresh, fresh_events = inspection(timedelta(hours=12), attempts=2)  # nothing expires
    ancient, ancient_events = inspection(timedelta(days=40))  # the whole record expires
    await record(app, old_events + fresh_events + ancient_events)
    assert app.sweeper is not None and app.pool is not None
    async with app.pool.acquire() as conn:
        # Keys are stamped when an event arrives, not when it happened: backdated here.
        await conn.execute(
            "UPDATE processed_events SET recorded_at = now() - interval '10 days' "
            "WHERE inspection_id = ANY($1::uuid[])",
            [old, ancient],
        )

    removed = await app.sweeper.sweep()

    # old: request, 2 attempts, result; ancient: request, attempt, result.
    assert removed == {"attempt_payloads": 3, "records": 1, "event_keys": 7}
    async with app.pool.acquire() as conn:
        for row in await attempts_of(conn, old):
            assert (row["prompt"], row["raw_output"], row["parsed_output"]) == ("", "", None)
            # The decision record's own facts stay.
            assert row["prompt_sha256"] and row["valid"] and row["payload_purged_at"]
        for row in await attempts_of(conn, fresh):
            assert row["prompt"] and row["raw_output"] and row["payload_purged_at"] is None
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM inspection_results WHERE inspection_id = $1", old
            )
            == 1
        )
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM inspection_requests WHERE inspection_id = $1", ancient
            )
            == 0
        )
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM inspection_attempts WHERE inspection_id = $1", ancient
            )
            == 0
        )
    assert await app.sweeper.sweep() == {"attempt_payloads": 0, "records": 0, "event_keys": 0}
    async with app.pool.acquire() as conn:
        assert await conn.fetchval(
            "SELECT count(*) FROM processed_events WHERE inspection_id = $1", fresh
        ) == len(fresh_events)
    counted = app.registry.get_sample_value(
        "rpi_persistence_retention_removed_total", {"kind": "attempt_payloads"}
    )
    assert counted == 3


def test_defaults_keep_everything() -> None:
    assert not RetentionPolicy().enabled
    assert RetentionPolicy().cutoffs(NOW) == {}
    settings = PersistenceSettings(database_url="postgresql://unused/x")
    assert settings.retention_attempt_payload_days == settings.retention_record_days == 0
    assert settings.retention_event_key_days == 0


async def test_two_sweepers_at_once_remove_each_row_once(retention_app: PersistenceApp) -> None:
    app = retention_app
    expired_payloads: list[ppb.Event] = []
    for _ in range(60):  # 180 expired attempts, records kept
        expired_payloads += inspection(timedelta(days=3), attempts=3)[1]
    expired_records: list[ppb.Event] = []
    for _ in range(50):
        expired_records += inspection(timedelta(days=45))[1]
    await record(app, expired_payloads + expired_records)
    assert app.pool is not None

    async def two_at_once(policy: RetentionPolicy) -> list[dict[str, int]]:
        sweepers = [
            RetentionSweeper(app.pool, policy, RetentionMetrics(CollectorRegistry()))
            for _ in range(2)
        ]
        return list(await asyncio.gather(*(s.sweep() for s in sweepers)))

    # One kind at a time, so neither sweeper's records pass can take rows from the other's
    # payloads pass.
    payloads = await two_at_once(RetentionPolicy(attempt_payload_days=1, batch_size=5))
    assert sum(r["attempt_payloads"] for r in payloads) == 180 + 50
    records = await two_at_once(RetentionPolicy(record_days=30, batch_size=5))
    assert sum(r["records"] for r in records) == 50
    async with app.pool.acquire() as conn:
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM inspection_attempts WHERE payload_purged_at IS NULL"
            )
            == 0
        )
        assert await conn.fetchval("SELECT count(*) FROM inspection_requests") == 60
