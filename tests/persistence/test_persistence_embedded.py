"""``python -m persistence_svc`` without DATABASE_URL: it starts an embedded PostgreSQL in
EMBEDDED_PG_DIR, serves, and on SIGTERM drains, stops PostgreSQL and exits 0."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rpi.persistence.v1 import persistence_pb2, persistence_pb2_grpc

from persistence_svc.server import SERVICE_NAME
from tests.support.events import failure_event, new_id, request_event

REPO_ROOT = Path(__file__).resolve().parents[2]


async def _bound_port(process: asyncio.subprocess.Process, seen: list[str]) -> int:
    """The port the service logs once bound (GRPC_LISTEN asks for any free port)."""
    assert process.stdout is not None
    while line := (await process.stdout.readline()).decode(errors="replace"):
        seen.append(line)
        match = re.search(r"gRPC server listening on \S+ \(port (\d+)\)", line)
        if match:
            return int(match[1])
    raise AssertionError("the service exited before binding its port:\n" + "".join(seen))


async def _wait_serving(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME), wait_for_ready=True
        )
        async for response in watch:
            if response.status == health_pb2.HealthCheckResponse.SERVING:
                watch.cancel()
                return


@pytest.mark.slow
async def test_embedded_postgres_service_runs_and_stops_on_sigterm(tmp_path: Path) -> None:
    data_dir = tmp_path / "var" / "pgdata"
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(
        GRPC_LISTEN="127.0.0.1:0",
        METRICS_PORT="0",
        EMBEDDED_PG_DIR=str(data_dir),
        DRAIN_GRACE_S="2",
        LOG_LEVEL="INFO",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "persistence_svc",
        cwd=REPO_ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    seen: list[str] = []
    try:
        try:
            # Bounds on a hung start, not performance assertions.
            port = await asyncio.wait_for(_bound_port(process, seen), timeout=120)
            await asyncio.wait_for(_wait_serving(f"127.0.0.1:{port}"), timeout=120)
        except (grpc.aio.AioRpcError, TimeoutError):
            if process.returncode is None:
                process.kill()
            rest, _ = await process.communicate()
            log = "".join(seen) + rest.decode(errors="replace")
            pytest.fail(f"the service did not become SERVING:\n{log}")
        iid = new_id()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = persistence_pb2_grpc.PersistenceServiceStub(channel)
            response = await stub.RecordEvents(
                persistence_pb2.RecordEventsRequest(
                    events=[request_event(iid, shipping_id="SHIP-EMBEDDED"), failure_event(iid)]
                )
            )
            assert response.applied == 2
            got = await stub.GetInspection(persistence_pb2.GetInspectionRequest(inspection_id=iid))
            assert got.inspection.status == persistence_pb2.INSPECTION_STATUS_FAILED
        assert (data_dir / "PG_VERSION").exists()
        assert (data_dir / "postmaster.pid").exists()

        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    log = "".join(seen) + output.decode(errors="replace")
    assert process.returncode == 0, log
    assert "embedded PostgreSQL stopped" in log
    # PostgreSQL was shut down, and its data kept for the next start.
    assert not (data_dir / "postmaster.pid").exists()
    assert (data_dir / "PG_VERSION").exists()
