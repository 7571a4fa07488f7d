"""The spool bound reached (the persistence service unreachable): new inspections fail with
RESOURCE_EXHAUSTED / EVENT_SPOOL_FULL before any work is done (they never reach the model),
nothing more is spooled, and the process's memory stays flat across 100 refused calls."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from rpi.inspection.v1 import inspection_pb2_grpc as pb_grpc

from inference_svc.app import InferenceApp
from tests.support.errors import error_reason
from tests.support.faults import cheap_request, cheap_settings, rss_kib
from tests.support.processes import free_port

# Generous: the refused calls allocate nothing that lives on; this only catches a leak of a
# request (inline images included) per call, which would add well over this.
RSS_GROWTH_LIMIT_KIB = 24 * 1024


async def test_full_spool_refuses_fast_without_reaching_the_engine(tmp_path: Path) -> None:
    # Nothing listens on that port: every event stays spooled.
    app = InferenceApp(
        cheap_settings(tmp_path, f"127.0.0.1:{free_port()}", event_spool_max_bytes=4096)
    )
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.InspectionServiceStub(channel)
            completed = 0
            for _ in range(10):
                try:
                    await stub.Inspect(cheap_request(), timeout=300)
                    completed += 1
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert error_reason(exc) == "EVENT_SPOOL_FULL"
                    break
            else:
                raise AssertionError("the spool never filled")
            assert completed >= 1
            stats = app.delivery.spool.stats()
            assert stats.bytes >= 4096
            rows_before = app.engine.stats().rows

            async def refused() -> str:
                try:
                    await stub.Inspect(cheap_request(), timeout=30)
                except grpc.aio.AioRpcError as exc:
                    return f"{exc.code().name}/{error_reason(exc)}"
                return "OK"

            async def refuse(n: int) -> list[str]:
                outcomes: list[str] = []
                for _ in range(n // 10):
                    outcomes.extend(await asyncio.gather(*(refused() for _ in range(10))))
                return outcomes

            await refuse(20)  # warm-up: channel, interceptors, error-detail paths
            rss_before = rss_kib()
            outcomes = await refuse(100)
            rss_after = rss_kib()

            print(
                f"\n[spool-full] completed_before_full={completed} spool_bytes={stats.bytes} "
                f"spooled_events={stats.count} "
                f"refused={outcomes.count('RESOURCE_EXHAUSTED/EVENT_SPOOL_FULL')} "
                f"engine_rows_before={rows_before} engine_rows_after={app.engine.stats().rows} "
                f"rss_before_kib={rss_before} rss_after_kib={rss_after} "
                f"rss_growth_kib={rss_after - rss_before}"
            )
            assert outcomes == ["RESOURCE_EXHAUSTED/EVENT_SPOOL_FULL"] * 100
            # Refused before fetching or generating anything: the model never saw them.
            assert app.engine.stats().rows == rows_before
            assert app.engine.queue_depth() == 0
            # And nothing of theirs was spooled.
            assert app.delivery.spool.stats() == stats
            assert (
                app.registry.get_sample_value(
                    "rpi_inference_requests_rejected_total", {"reason": "EVENT_SPOOL_FULL"}
                )
                == 121
            )
            assert rss_after - rss_before < RSS_GROWTH_LIMIT_KIB
    finally:
        await app.stop(0.5)
