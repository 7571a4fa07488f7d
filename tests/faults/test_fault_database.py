"""Database faults under the real delivery component: Postgres connections terminated with
pg_terminate_backend in a loop and the database cut off (PgProxy) during writes lose no
acknowledged event and duplicate no row; replaying the same 500 events yields 500 rows."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
from rpi.persistence.v1 import persistence_pb2 as ppb

from inference_svc.events.delivery import EventDelivery
from inference_svc.events.spool import EventSpool
from inference_svc.persistence_link import PersistenceSender
from tests.support.events import attempt_event, new_id, request_event, result_event
from tests.support.faults import DedicatedPersistence, db_counts, wait_until
from tests.support.postgres import PgProxy, PostgresForTests
from tests.support.processes import free_port


class ObservedSender(PersistenceSender):
    """Notes which events the persistence service acknowledged (the test's ground truth)."""

    def __init__(self, target: str) -> None:
        super().__init__(target, timeout_s=5.0, probe_timeout_s=1.0)
        self.acknowledged: set[str] = set()
        self.calls = 0
        self.failed = 0

    async def send(self, payloads: Sequence[bytes], timeout_s: float | None = None) -> None:
        self.calls += 1
        try:
            await super().send(payloads, timeout_s)
        except Exception:
            self.failed += 1
            raise
        self.acknowledged.update(ppb.Event.FromString(p).event_id for p in payloads)


def inspection_events(inspection_id: str, kinds: int = 3) -> list[ppb.Event]:
    events = [request_event(inspection_id, shipping_id="SHIP-DB")]
    if kinds == 3:
        events.append(attempt_event(inspection_id))
    events.append(result_event(inspection_id, shipping_id="SHIP-DB"))
    return events


def spool_items(events: Sequence[ppb.Event]) -> list[tuple[str, bytes]]:
    return [(e.event_id, e.SerializeToString()) for e in events]


def delivery_for(tmp: Path, sender: ObservedSender) -> EventDelivery:
    return EventDelivery(
        EventSpool(tmp / "spool", 64 << 20),
        sender,
        batch_size=16,
        initial_backoff_s=0.02,
        max_backoff_s=0.5,
        probe_interval_s=0.5,
    )


async def test_terminated_and_cut_connections_lose_no_acknowledged_event(
    postgres: PostgresForTests, tmp_path: Path
) -> None:
    inspections = 150
    async with postgres.fresh_database("rpi_fault_db_") as url:
        database = urlsplit(url).path.lstrip("/")
        proxy = PgProxy(url)
        await proxy.start()
        persistence = DedicatedPersistence(proxy.url(database), free_port())
        await persistence.start()
        sender = ObservedSender(persistence.target)
        delivery = delivery_for(tmp_path, sender)
        await delivery.start()
        terminated = 0
        writing = True

        async def terminate_backends() -> None:
            nonlocal terminated
            admin = await asyncpg.connect(postgres.admin_url)
            try:
                while writing:
                    terminated += int(
                        await admin.fetchval(
                            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                            " WHERE datname = $1 AND application_name = 'rpi-persistence'",
                            database,
                        )
                    )
                    await asyncio.sleep(0.03)
            finally:
                await admin.close()

        async def restore_after_failure() -> None:
            await wait_until(lambda: sender.failed > 0, "a delivery failed")
            await proxy.start()

        killer = asyncio.create_task(terminate_backends())
        cut_until_failure: asyncio.Task[None] | None = None
        ids = [new_id() for _ in range(inspections)]
        all_events: list[ppb.Event] = []
        try:
            started = time.monotonic()
            for n, inspection_id in enumerate(ids):
                events = inspection_events(inspection_id)
                all_events.extend(events)
                await delivery.append(spool_items(events))
                if n == inspections // 2:
                    # The database vanishes altogether (refused connections, resets of the
                    # ones in use) until a delivery has failed for it; writes go on meanwhile.
                    await proxy.cut()
                    cut_until_failure = asyncio.create_task(restore_after_failure())
                await asyncio.sleep(0.01)
            assert cut_until_failure is not None
            await cut_until_failure
            writing_s = time.monotonic() - started
            writing = False
            await killer
            await wait_until(lambda: delivery.backlog() == 0, "backlog drained", 120)
            drain_s = time.monotonic() - started - writing_s

            counts = await db_counts(url, ids)
            conn = await asyncpg.connect(url)
            try:
                recorded = {
                    str(r["event_id"])
                    for r in await conn.fetch("SELECT event_id FROM processed_events")
                }
                attempts = await conn.fetchval("SELECT count(*) FROM inspection_attempts")
            finally:
                await conn.close()
            applied, duplicates = persistence.figures()
            sent = {e.event_id for e in all_events}
            print(
                f"\n[db-faults] events_sent={len(sent)} backends_terminated={terminated} "
                f"record_calls={sender.calls} failed_calls={sender.failed} "
                f"acknowledged={len(sender.acknowledged)} "
                f"processed_events={counts.processed_events} applied={applied} "
                f"repeats_acknowledged={duplicates} request_rows={counts.requests} "
                f"attempt_rows={attempts} result_rows={counts.results} "
                f"duplicate_result_rows={counts.duplicate_results} "
                f"missing_acknowledged={len(sender.acknowledged - recorded)} "
                f"drain_after_writes_s={drain_s:.1f}"
            )
            assert terminated > 0
            assert sender.failed > 0
            assert sender.acknowledged - recorded == set()
            assert sender.acknowledged == sent
            assert recorded == sent
            # The rows above prove each event was applied exactly once. The service's own
            # count can be lower: a COMMIT whose connection died before Postgres answered has
            # an unknown outcome, so the batch is retried and its events come back as repeats.
            assert applied <= len(sent) <= applied + duplicates
            assert counts.requests == counts.completed == counts.results == inspections
            assert attempts == inspections
            assert counts.duplicate_results == counts.missing_results == 0
            assert delivery.spool.stats().dead_letters == 0
        finally:
            writing = False
            with contextlib.suppress(Exception):
                await killer
            await delivery.stop(1.0)
            await sender.close()
            await persistence.stop()
            await proxy.cut()


async def test_replaying_500_events_twice_yields_500_rows(
    postgres: PostgresForTests, tmp_path: Path
) -> None:
    async with postgres.fresh_database("rpi_fault_replay_") as url:
        persistence = DedicatedPersistence(url, free_port())
        await persistence.start()
        sender = ObservedSender(persistence.target)
        delivery = delivery_for(tmp_path, sender)
        await delivery.start()
        try:
            ids = [new_id() for _ in range(250)]
            events = [e for i in ids for e in inspection_events(i, kinds=2)]
            assert len(events) == 500
            for _ in range(2):
                await delivery.append(spool_items(events))
                await wait_until(lambda: delivery.backlog() == 0, "backlog drained", 60)
            counts = await db_counts(url, ids)
            applied, duplicates = persistence.figures()
            print(
                f"\n[replay] events_sent={2 * len(events)} processed_events="
                f"{counts.processed_events} applied={applied} repeats_acknowledged={duplicates} "
                f"request_rows={counts.requests} result_rows={counts.results} "
                f"duplicate_result_rows={counts.duplicate_results}"
            )
            assert counts.processed_events == 500
            assert (applied, duplicates) == (500, 500)
            assert counts.requests == counts.results == counts.completed == 250
            assert counts.duplicate_results == counts.missing_results == 0
        finally:
            await delivery.stop(1.0)
            await sender.close()
            await persistence.stop()
