"""The inference process is killed with SIGKILL while its events sit in the spool (the
persistence service is down), then restarted on the same spool once the persistence service is
back: every spooled event is delivered, none twice."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
from pathlib import Path

import grpc
from rpi.inspection.v1 import inspection_pb2_grpc as pb_grpc

from inference_svc.events.spool import SPOOL_FILE
from tests.support.e2e import template_with_limits
from tests.support.faults import (
    CHEAP_MODEL_ENV,
    CHEAP_OUTPUT,
    DedicatedPersistence,
    cheap_request,
    db_counts,
    wait_until,
)
from tests.support.postgres import PostgresForTests
from tests.support.processes import free_port, spawn_service, wait_serving

INSPECTIONS = 16


async def start_inference(
    port: int, persistence_port: int, spool_dir: Path
) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        **CHEAP_MODEL_ENV,
        "PROMPT_TEMPLATE_PATH": str(template_with_limits(spool_dir.parent, CHEAP_OUTPUT)),
        "GRPC_LISTEN": f"127.0.0.1:{port}",
        "PERSISTENCE_TARGET": f"127.0.0.1:{persistence_port}",
        "EVENT_SPOOL_DIR": str(spool_dir),
    }
    proc = await spawn_service("inference_svc", env)
    await wait_serving(f"127.0.0.1:{port}", proc)
    return proc


def spooled(spool_dir: Path) -> int:
    with sqlite3.connect(spool_dir / SPOOL_FILE) as conn:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])


async def test_sigkilled_process_delivers_its_spool_after_restart_exactly_once(
    postgres: PostgresForTests, tmp_path: Path
) -> None:
    spool_dir = tmp_path / "spool"
    persistence_port = free_port()
    port = free_port()
    procs: list[asyncio.subprocess.Process] = []
    async with postgres.fresh_database("rpi_fault_kill_") as url:
        persistence = DedicatedPersistence(url, persistence_port)
        try:
            # Nothing listens on persistence_port yet: every event stays spooled.
            procs.append(await start_inference(port, persistence_port, spool_dir))
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.InspectionServiceStub(channel)
                replies = await asyncio.gather(
                    *(stub.Inspect(cheap_request(), timeout=300) for _ in range(INSPECTIONS))
                )
            procs[0].send_signal(signal.SIGKILL)
            assert await procs[0].wait() == -signal.SIGKILL
            events_spooled = spooled(spool_dir)
            events_sent = sum(2 + r.inspection.attempts for r in replies)
            # Acknowledged to the pipeline = durably spooled, even through SIGKILL.
            assert events_spooled == events_sent

            await persistence.start()
            restarted = time.monotonic()
            procs.append(await start_inference(port, persistence_port, spool_dir))
            await wait_until(lambda: spooled(spool_dir) == 0, "spool drained", 120)
            drain_s = time.monotonic() - restarted
            procs[1].send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(procs[1].wait(), 60) == 0

            ids = [r.inspection.inspection_id for r in replies]
            counts = await db_counts(url, ids)
            applied, duplicates = persistence.figures()
            print(
                f"\n[sigkill] inspections={INSPECTIONS} events_spooled_at_kill={events_spooled} "
                f"processed_events={counts.processed_events} applied={applied} "
                f"repeats_acknowledged={duplicates} request_rows={counts.requests} "
                f"result_rows={counts.results} duplicate_result_rows={counts.duplicate_results} "
                f"missing_results={counts.missing_results} "
                f"restart_to_drained_s={drain_s:.1f}"
            )
            assert counts.processed_events == events_sent
            # The rows above prove exactly-once. The service's own counters can only
            # under-count: a batch cut off after its COMMIT is retried by the producer and
            # then acknowledged as a repeat.
            assert applied <= events_sent <= applied + duplicates
            assert duplicates == 0
            assert counts.requests == counts.completed == counts.results == INSPECTIONS
            assert counts.missing_results == counts.duplicate_results == 0
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            await persistence.stop()
