"""The persistence service is stopped while inspections run and started again afterwards: every
inspection still gets exactly one request row and one result row once the backlog drains, the
inspection service stays SERVING throughout, and the link's own health entry reports the
outage."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2
from rpi.inspection.v1 import inspection_pb2 as pb
from rpi.inspection.v1 import inspection_pb2_grpc as pb_grpc

from inference_svc.app import InferenceApp
from inference_svc.events.delivery import LinkState
from inference_svc.events.link_health import PERSISTENCE_LINK_HEALTH_NAME
from tests.support.faults import (
    CONCURRENCY,
    INSPECTIONS,
    DedicatedPersistence,
    cheap_request,
    cheap_settings,
    db_counts,
    health_status,
    wait_until,
)
from tests.support.postgres import PostgresForTests
from tests.support.processes import free_port

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_persistence_outage_during_inspections_loses_and_duplicates_nothing(
    postgres: PostgresForTests, tmp_path: Path
) -> None:
    async with postgres.fresh_database("rpi_fault_outage_") as url:
        persistence = DedicatedPersistence(url, free_port())
        await persistence.start()
        app = InferenceApp(cheap_settings(tmp_path, persistence.target))
        await app.start()
        target = f"127.0.0.1:{app.port}"
        try:

            def delivered() -> float:
                return app.registry.get_sample_value("rpi_inference_events_delivered_total") or 0

            async def stop_persistence_once_delivering() -> None:
                await wait_until(lambda: delivered() > 0, "first delivery")
                await persistence.stop()

            stopper = asyncio.create_task(stop_persistence_once_delivering())
            semaphore = asyncio.Semaphore(CONCURRENCY)
            async with grpc.aio.insecure_channel(target) as channel:
                stub = pb_grpc.InspectionServiceStub(channel)

                async def inspect() -> pb.Inspection:
                    async with semaphore:
                        reply = await stub.Inspect(cheap_request(), timeout=600)
                        return reply.inspection

                started = time.monotonic()
                inspections = await asyncio.gather(*(inspect() for _ in range(INSPECTIONS)))
                inspect_s = time.monotonic() - started
            await stopper

            # Every inspection answered although nothing could be recorded meanwhile.
            assert len({i.inspection_id for i in inspections}) == INSPECTIONS
            backlog = app.delivery.backlog()
            assert backlog > 0
            await wait_until(lambda: app.delivery.link_state is LinkState.DOWN, "link down")
            assert await health_status(target, "") == SERVING
            assert await health_status(target, PERSISTENCE_LINK_HEALTH_NAME) == NOT_SERVING
            assert app.registry.get_sample_value("rpi_inference_persistence_link_up") == 0
            assert app.registry.get_sample_value("rpi_inference_event_backlog") == backlog
            oldest_age = app.registry.get_sample_value("rpi_inference_event_oldest_age_seconds")
            assert oldest_age is not None and oldest_age > 0
            failures = sum(
                s.value
                for f in app.registry.collect()
                if f.name == "rpi_inference_event_delivery_failures"
                for s in f.samples
                if s.name.endswith("_total")
            )
            assert failures > 0

            restarted = time.monotonic()
            await persistence.start()
            await wait_until(lambda: app.delivery.backlog() == 0, "backlog drained", 120)
            drain_s = time.monotonic() - restarted
            await wait_until(lambda: app.delivery.link_state is LinkState.UP, "link up")
            assert await health_status(target, PERSISTENCE_LINK_HEALTH_NAME) == SERVING

            ids = [i.inspection_id for i in inspections]
            # request + every model attempt + result
            events_sent = sum(2 + i.attempts for i in inspections)
            counts = await db_counts(url, ids)
            applied, duplicates = persistence.figures()
            print(
                f"\n[outage] inspections={INSPECTIONS} concurrency={CONCURRENCY} "
                f"inspect_s={inspect_s:.1f} backlog_at_restart={backlog} "
                f"events_sent={events_sent} processed_events={counts.processed_events} "
                f"applied={applied} repeats_acknowledged={duplicates} "
                f"request_rows={counts.requests} result_rows={counts.results} "
                f"duplicate_result_rows={counts.duplicate_results} "
                f"missing_results={counts.missing_results} drain_s={drain_s:.1f} "
                f"delivery_failures={failures:.0f}"
            )
            assert counts.requests == INSPECTIONS
            assert counts.completed == INSPECTIONS
            assert counts.results == INSPECTIONS
            assert counts.missing_results == 0
            assert counts.duplicate_results == 0
            assert counts.processed_events == events_sent
            # The rows above prove exactly-once. The service's own counters can only
            # under-count: a batch cut off after its COMMIT is retried by the producer and
            # then acknowledged as a repeat.
            assert applied <= events_sent <= applied + duplicates
        finally:
            await app.stop(1)
            await persistence.stop()
