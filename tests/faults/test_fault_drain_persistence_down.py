"""A pod deleted while the persistence service is down: the drain cannot deliver, so the
inspections' events stay in the spool file when the process exits, and nothing of them is in
Postgres. On Kubernetes' emptyDir that file goes with the pod (the documented loss); a new
process started on the same spool directory (a persistent volume, or the same container
restarted) delivers every one of them exactly once."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import grpc
from rpi.inspection.v1 import inspection_pb2_grpc as pb_grpc

from inference_svc.app import InferenceApp
from inference_svc.events.spool import SPOOL_FILE
from tests.support.faults import (
    DedicatedPersistence,
    cheap_request,
    cheap_settings,
    db_counts,
    wait_until,
)
from tests.support.postgres import PostgresForTests
from tests.support.processes import free_port

INSPECTIONS = 4


def spooled(spool_dir: Path) -> int:
    with sqlite3.connect(spool_dir / SPOOL_FILE) as conn:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])


async def test_drain_with_persistence_down_keeps_events_only_in_the_spool(
    postgres: PostgresForTests, tmp_path: Path
) -> None:
    async with postgres.fresh_database("rpi_fault_drain_") as url:
        persistence = DedicatedPersistence(url, free_port())
        # Nothing listens on the persistence port: every event stays spooled.
        first = InferenceApp(cheap_settings(tmp_path / "first", persistence.target))
        spool_dir = first.settings.event_spool_dir
        await first.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
                stub = pb_grpc.InspectionServiceStub(channel)
                replies = await asyncio.gather(
                    *(stub.Inspect(cheap_request(), timeout=300) for _ in range(INSPECTIONS))
                )
        finally:
            # The SIGTERM path: drain, try to flush for the rest of the grace, exit.
            await first.stop(2)
        ids = [r.inspection.inspection_id for r in replies]
        events_sent = sum(2 + r.inspection.attempts for r in replies)
        assert spooled(spool_dir) == events_sent
        await persistence.start()
        try:
            before = await db_counts(url, ids)
            assert before.requests == before.results == before.processed_events == 0

            # Same spool directory, new process: what a persistent spool volume gives.
            second = InferenceApp(
                cheap_settings(tmp_path / "second", persistence.target, event_spool_dir=spool_dir)
            )
            await second.start()
            try:
                await wait_until(lambda: second.delivery.backlog() == 0, "spool delivered", 120)
            finally:
                await second.stop(5)
            counts = await db_counts(url, ids)
            assert counts.processed_events == events_sent
            assert counts.requests == counts.completed == counts.results == INSPECTIONS
            assert counts.missing_results == counts.duplicate_results == 0
        finally:
            await persistence.stop()
