"""The services as child processes (`python -m <service>`), for tests that signal or kill them."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A loopback port free right now (another process may take it before it is bound)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def spawn_service(
    module: str,
    env: Mapping[str, str],
    *,
    stdout: int = asyncio.subprocess.DEVNULL,
    stderr: int = asyncio.subprocess.DEVNULL,
) -> asyncio.subprocess.Process:
    """``python -m module`` from the repository root with exactly ``env``."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, cwd=ROOT, env=dict(env), stdout=stdout, stderr=stderr
    )


async def wait_serving(
    target: str, proc: asyncio.subprocess.Process, *, timeout_s: float = 120.0
) -> None:
    """Returns once the overall health of ``target`` is SERVING; fails if ``proc`` exits first.

    The demo model is built on first start-up, which takes minutes on a busy two-core machine:
    callers starting a cold service pass a longer timeout.
    """
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert proc.returncode is None, f"the service at {target} exited during start-up"
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.1)
    proc.kill()
    raise AssertionError(f"the service at {target} never became SERVING")
