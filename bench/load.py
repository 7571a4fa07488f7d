"""gRPC load and health probes, run in child processes.

The client runs in its own process so that its work (serialising requests, the client's gRPC
loop) does not share the server's interpreter lock: latencies then measure the server, not the
client. Results come back as plain picklable values.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import multiprocessing
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rpi.inspection.v1 import inspection_pb2 as pb
from rpi.inspection.v1 import inspection_pb2_grpc as pb_grpc

from inference_svc.priority import lower_process_priority

T = TypeVar("T")

CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass
class Outcome:
    started_s: float  # since the measured phase began
    latency_s: float
    code: str  # gRPC status code name; "OK" for a response
    reason: str = ""  # ErrorInfo.reason of a failure
    # Server-reported stage seconds (fetch, preprocess, queue, generate, parse, total).
    timings: dict[str, float] = field(default_factory=dict)
    completion_tokens: int = 0
    # Which of the driven requests it answered, and a digest of the answers it got (equal
    # digests: the same per-question answers and analysis).
    index: int = -1
    answer: str = ""


@dataclass
class LoadResult:
    outcomes: list[Outcome]
    wall_s: float
    warmup: list[Outcome]


def _reason(error: grpc.aio.AioRpcError) -> str:
    metadata: Any = error.trailing_metadata() or ()
    for key, value in metadata:
        if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return str(info.reason)
    return ""


def _timings(response: pb.InspectResponse) -> dict[str, float]:
    t = response.inspection.timings
    return {
        name: getattr(t, name).ToTimedelta().total_seconds()
        for name in ("fetch", "preprocess", "queue", "generate", "parse", "total")
    }


def _answer_digest(response: pb.InspectResponse) -> str:
    inspection = response.inspection
    parts = [m.SerializeToString().hex() for m in (inspection.analysis, *inspection.answers)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


async def _one(
    stub: pb_grpc.InspectionServiceStub,
    request: pb.InspectRequest,
    origin: float,
    timeout_s: float,
    index: int = -1,
) -> Outcome:
    started = time.perf_counter()
    try:
        response: pb.InspectResponse = await stub.Inspect(  # type: ignore[misc]
            request, timeout=timeout_s
        )
    except grpc.aio.AioRpcError as error:
        return Outcome(
            started - origin,
            time.perf_counter() - started,
            error.code().name,
            _reason(error),
            index=index,
        )
    return Outcome(
        started - origin,
        time.perf_counter() - started,
        "OK",
        "",
        _timings(response),
        index=index,
        answer=_answer_digest(response),
    )


async def drive(
    target: str,
    requests: list[bytes],
    concurrency: int,
    total: int,
    warmup: int = 0,
    timeout_s: float = 600.0,
) -> LoadResult:
    """``total`` Inspect calls by ``concurrency`` workers (closed loop: each sends its next
    request when the previous one is answered), cycling through ``requests`` (serialised
    InspectRequest). ``warmup`` calls at the same concurrency go first and are not measured."""
    decoded = [pb.InspectRequest.FromString(r) for r in requests]
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        await channel.channel_ready()
        stub = pb_grpc.InspectionServiceStub(channel)

        async def phase(count: int) -> tuple[list[Outcome], float]:
            counter = iter(range(count))
            outcomes: list[Outcome] = []
            origin = time.perf_counter()

            async def worker() -> None:
                for i in counter:
                    request = decoded[i % len(decoded)]
                    outcomes.append(await _one(stub, request, origin, timeout_s, i))

            await asyncio.gather(*(worker() for _ in range(min(concurrency, max(count, 1)))))
            return outcomes, time.perf_counter() - origin

        warm, _ = await phase(warmup)
        measured, wall = await phase(total)
    return LoadResult(measured, wall, warm)


async def saturate_until(
    target: str,
    requests: list[bytes],
    concurrency: int,
    stop_after_s: float,
    timeout_s: float = 600.0,
) -> LoadResult:
    """Keeps ``concurrency`` Inspect calls in flight for ``stop_after_s`` seconds (calls that
    started before then are awaited)."""
    decoded = [pb.InspectRequest.FromString(r) for r in requests]
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        await channel.channel_ready()
        stub = pb_grpc.InspectionServiceStub(channel)
        outcomes: list[Outcome] = []
        origin = time.perf_counter()
        sent = 0

        async def worker() -> None:
            nonlocal sent
            while time.perf_counter() - origin < stop_after_s:
                request = decoded[sent % len(decoded)]
                sent += 1
                outcomes.append(await _one(stub, request, origin, timeout_s))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return LoadResult(outcomes, time.perf_counter() - origin, [])


async def drive_open(
    target: str, requests: list[bytes], rate_per_s: float, seed: int, timeout_s: float = 600.0
) -> LoadResult:
    """Open loop: every request of ``requests`` once, in order, sent at Poisson arrivals of
    ``rate_per_s`` whether or not the earlier ones were answered (``seed``: the arrivals)."""
    decoded = [pb.InspectRequest.FromString(r) for r in requests]
    gaps = random.Random(seed)
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        await channel.channel_ready()
        stub = pb_grpc.InspectionServiceStub(channel)
        origin = time.perf_counter()
        at = 0.0
        calls = []
        for index, request in enumerate(decoded):
            await asyncio.sleep(max(0.0, origin + at - time.perf_counter()))
            calls.append(asyncio.create_task(_one(stub, request, origin, timeout_s, index)))
            at += gaps.expovariate(rate_per_s)
        outcomes = list(await asyncio.gather(*calls))
        return LoadResult(outcomes, time.perf_counter() - origin, [])


async def probe_health(
    target: str, interval_s: float, duration_s: float, start_delay_s: float = 0.0
) -> list[tuple[float, float]]:
    """Health checks on a channel of their own, one every ``interval_s`` for ``duration_s``;
    returns (seconds since start, latency seconds) per check. A failed check raises."""
    async with grpc.aio.insecure_channel(target) as channel:
        await channel.channel_ready()
        stub = health_pb2_grpc.HealthStub(channel)
        await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        await asyncio.sleep(start_delay_s)
        samples: list[tuple[float, float]] = []
        origin = time.perf_counter()
        next_at = origin
        while next_at - origin < duration_s:
            started = time.perf_counter()
            response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            latency = time.perf_counter() - started
            if response.status != health_pb2.HealthCheckResponse.SERVING:
                raise RuntimeError(f"health status {response.status}")
            samples.append((started - origin, latency))
            next_at += interval_s
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        return samples


def drive_sync(*args: Any) -> LoadResult:
    return asyncio.run(drive(*args))


def drive_open_sync(*args: Any) -> LoadResult:
    return asyncio.run(drive_open(*args))


def saturate_sync(*args: Any) -> LoadResult:
    return asyncio.run(saturate_until(*args))


def probe_sync(*args: Any) -> list[tuple[float, float]]:
    return asyncio.run(probe_health(*args))


class ChildProcess:
    """One spawned worker process (spawned, not forked: the parent holds torch and gRPC
    threads, which fork does not copy safely)."""

    def __init__(self, nice: int = 0) -> None:
        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=lower_process_priority,
            initargs=(nice,),
        )
        # Import grpc and the protos now, so the first measured call does not pay for it.
        self._pool.submit(_ready).result()

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> ChildProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ready() -> bool:
    return pb.InspectRequest is not None and health_pb2.HealthCheckRequest is not None
