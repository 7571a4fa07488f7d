"""Two inference processes (the demo model on the real InternVL code path) share one
persistence service and PostgreSQL; asynchronous inspections are submitted at concurrency 16
and one process is killed with SIGKILL while it runs some: its leases run out, the other
process runs those jobs again, every operation succeeds, and each inspection has exactly one
result row."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import asyncpg
import grpc
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.longrunning import operations_proto_pb2 as lro
from rpi.inspection.v1 import operations_pb2 as opb
from rpi.inspection.v1 import operations_pb2_grpc as opb_grpc

from tests.operations.support import metadata
from tests.support.e2e import template_with_limits
from tests.support.faults import (
    CHEAP_MODEL_ENV,
    CHEAP_OUTPUT,
    CONCURRENCY,
    DedicatedPersistence,
    cheap_request,
)
from tests.support.postgres import PostgresForTests
from tests.support.processes import free_port, spawn_service, wait_serving

# The figure; RPI_ASYNC_KILL_INSPECTIONS lowers it for quick local runs.
INSPECTIONS = int(os.environ.get("RPI_ASYNC_KILL_INSPECTIONS", "200"))
LEASE_S = 3


async def start_inference(port: int, persistence: str, tmp: Path) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        **CHEAP_MODEL_ENV,
        "PROMPT_TEMPLATE_PATH": str(template_with_limits(tmp, CHEAP_OUTPUT)),
        "GRPC_LISTEN": f"127.0.0.1:{port}",
        "PERSISTENCE_TARGET": persistence,
        "EVENT_SPOOL_DIR": str(tmp / "spool"),
        "JOB_LEASE_S": str(LEASE_S),
        "JOB_POLL_INTERVAL_S": "0.2",
        "ENGINE_PROCESS": "false",
    }
    proc = await spawn_service("inference_svc", env)
    await wait_serving(f"127.0.0.1:{port}", proc, timeout_s=300)
    return proc


async def test_sigkill_one_of_two_inference_processes_every_operation_succeeds_once(
    postgres: PostgresForTests, tmp_path: Path
) -> None:
    procs: list[asyncio.subprocess.Process] = []
    async with postgres.fresh_database("rpi_async_kill_") as url:
        persistence = DedicatedPersistence(url, free_port())
        await persistence.start()
        try:
            ports = [free_port(), free_port()]
            for i, port in enumerate(ports):
                (tmp_path / str(i)).mkdir()
                procs.append(await start_inference(port, persistence.target, tmp_path / str(i)))
            channels = [grpc.aio.insecure_channel(f"127.0.0.1:{p}") for p in ports]
            survivor = lro_grpc.OperationsStub(channels[1])
            gate = asyncio.Semaphore(CONCURRENCY)

            async def one(index: int) -> str:
                async with gate:
                    stub = opb_grpc.AsyncInspectionServiceStub(channels[index % 2])
                    operation = await stub.SubmitInspection(
                        opb.SubmitInspectionRequest(
                            inspection=cheap_request(f"SHIP-KILL-{index}"),
                            request_id=f"kill-{index}",
                        ),
                        timeout=30,
                    )
                    return str(operation.name)

            submitted = await asyncio.gather(*(one(i) for i in range(INSPECTIONS)))

            db = await asyncpg.connect(url)
            try:
                # Kill the first process while it holds leases, after some work is done.
                victim_worker = f"/{procs[0].pid}"
                await wait_until_async(
                    db,
                    "SELECT count(*) FILTER (WHERE state = 'running' AND worker LIKE $1) > 0"
                    " AND count(*) FILTER (WHERE state = 'succeeded') >= $2"
                    " FROM inspection_jobs",
                    f"%{victim_worker}",
                    INSPECTIONS // 4,
                )
                procs[0].send_signal(signal.SIGKILL)
                assert await procs[0].wait() == -signal.SIGKILL
                killed_at = time.monotonic()
                lost = await db.fetchval(
                    "SELECT count(*) FROM inspection_jobs WHERE state = 'running'"
                    " AND worker LIKE $1",
                    f"%{victim_worker}",
                )

                states = []
                for name in submitted:
                    while True:
                        operation = await survivor.WaitOperation(
                            lro.WaitOperationRequest(name=name), timeout=120
                        )
                        if operation.done:
                            break
                    states.append(metadata(operation).state)
                finished_s = time.monotonic() - killed_at

                ids = [
                    str(r["inspection_id"])
                    for r in await db.fetch(
                        "SELECT inspection_id FROM inspection_jobs WHERE request_id LIKE 'kill-%'"
                    )
                ]
                # The proof: one result row per inspection, none twice.
                rows = await db.fetchrow(
                    "SELECT count(*) AS results, count(DISTINCT inspection_id) AS distinct_ids"
                    " FROM inspection_results WHERE inspection_id = ANY($1::uuid[])",
                    ids,
                )
                rerun = await db.fetchval(
                    "SELECT count(*) FROM inspection_jobs"
                    " WHERE request_id LIKE 'kill-%' AND attempts > 1"
                )
            finally:
                await db.close()
            print(
                f"\n[async-sigkill] inspections={INSPECTIONS} concurrency={CONCURRENCY} "
                f"running_on_victim_at_kill={lost} rerun_jobs={rerun} "
                f"result_rows={rows['results']} distinct_inspections={rows['distinct_ids']} "
                f"kill_to_all_done_s={finished_s:.1f}"
            )
            assert len(set(submitted)) == INSPECTIONS
            assert states == [opb.OPERATION_STATE_SUCCEEDED] * INSPECTIONS
            assert lost > 0 and rerun >= lost
            assert len(ids) == INSPECTIONS
            assert rows["results"] == rows["distinct_ids"] == INSPECTIONS
            for channel in channels:
                await channel.close()
            procs[1].send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(procs[1].wait(), 60) == 0
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            await persistence.stop()


async def wait_until_async(db: asyncpg.Connection, query: str, *args: object) -> None:
    """Polls ``query`` (one boolean) until it is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 600
    while not await db.fetchval(query, *args):
        if loop.time() > deadline:
            raise AssertionError(f"never became true: {query}")
        await asyncio.sleep(0.05)
