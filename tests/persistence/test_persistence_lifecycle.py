"""Health transitions, reflection, draining, and the database going away and coming back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from rpi.persistence.v1 import persistence_pb2, persistence_pb2_grpc

from persistence_svc.app import PersistenceApp
from persistence_svc.server import SERVICE_NAME
from tests.support.errors import error_reason
from tests.support.events import failure_event, new_id, request_event
from tests.support.postgres import PgProxy, PostgresForTests, with_database

if TYPE_CHECKING:
    from rpi.persistence.v1.persistence_pb2_grpc import PersistenceServiceAsyncStub

StartApp = Callable[..., Awaitable[PersistenceApp]]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _health(channel: grpc.aio.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
    return int(response.status)


async def test_not_serving_until_the_database_is_ready(
    pg_server: PostgresForTests, start_app: StartApp
) -> None:
    # The database does not exist yet: the service keeps retrying and stays NOT_SERVING.
    url = with_database(pg_server.admin_url, f"rpi_test_late_{new_id()[:8]}")
    app = await start_app(url, wait_ready=False)
    async with grpc.aio.insecure_channel(app.target) as channel:
        assert await _health(channel, "") == NOT_SERVING
        assert await _health(channel, SERVICE_NAME) == NOT_SERVING
        stub = persistence_pb2_grpc.PersistenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.RecordEvents(
                persistence_pb2.RecordEventsRequest(events=[failure_event(new_id())])
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error_reason(caught.value) == "DATABASE_UNAVAILABLE"

        name = urlsplit(url).path.lstrip("/")
        admin = await asyncpg.connect(pg_server.admin_url)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        try:
            await app.wait_ready()
            assert await _health(channel, "") == SERVING
            assert await _health(channel, SERVICE_NAME) == SERVING
            response = await stub.RecordEvents(
                persistence_pb2.RecordEventsRequest(events=[failure_event(new_id())])
            )
            assert response.applied == 1
        finally:
            await app.stop(grace=0)
            await pg_server.drop_database(url)


async def test_draining_turns_health_not_serving(fresh_db_url: str, start_app: StartApp) -> None:
    app = await start_app(fresh_db_url)
    async with grpc.aio.insecure_channel(app.target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=SERVICE_NAME)
        )
        first = await watch.read()
        assert first.status == SERVING
        stopping = asyncio.create_task(app.stop(grace=5))
        second = await watch.read()
        assert second.status == NOT_SERVING
        watch.cancel()
        await stopping
    assert app.pool is not None
    assert app.pool.is_closing()


async def test_reflection_lists_the_services(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def requests() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    async for response in stub.ServerReflectionInfo(requests()):
        names = {s.name for s in response.list_services_response.service}
        break
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names


async def test_pool_recovers_after_its_connections_are_terminated(
    fresh_db_url: str, start_app: StartApp
) -> None:
    app = await start_app(fresh_db_url, db_pool_min=2)
    async with grpc.aio.insecure_channel(app.target) as channel:
        stub = persistence_pb2_grpc.PersistenceServiceStub(channel)
        await stub.RecordEvents(
            persistence_pb2.RecordEventsRequest(events=[failure_event(new_id())])
        )
        admin = await asyncpg.connect(fresh_db_url)
        try:
            killed = await admin.fetchval(
                """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                   WHERE datname = current_database() AND application_name = 'rpi-persistence'"""
            )
        finally:
            await admin.close()
        assert killed >= 1

        iid = new_id()
        response = await stub.RecordEvents(
            persistence_pb2.RecordEventsRequest(
                events=[request_event(iid, shipping_id="SHIP-RECOVER"), failure_event(iid)]
            )
        )
        assert response.applied == 2
        got = await stub.GetInspection(persistence_pb2.GetInspectionRequest(inspection_id=iid))
        assert got.inspection.status == persistence_pb2.INSPECTION_STATUS_FAILED


async def test_unreachable_database_is_unavailable_then_recovers(
    fresh_db_url: str, start_app: StartApp
) -> None:
    proxy = PgProxy(fresh_db_url)
    await proxy.start()
    database = urlsplit(fresh_db_url).path.lstrip("/")
    app = await start_app(proxy.url(database), db_transaction_retries=1)
    events = [failure_event(new_id())]
    try:
        async with grpc.aio.insecure_channel(app.target) as channel:
            stub = persistence_pb2_grpc.PersistenceServiceStub(channel)
            await proxy.cut()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.RecordEvents(persistence_pb2.RecordEventsRequest(events=events))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert error_reason(caught.value) == "DATABASE_UNAVAILABLE"

            await proxy.start()
            response = await stub.RecordEvents(persistence_pb2.RecordEventsRequest(events=events))
            assert (response.applied, response.duplicates) == (1, 0)
    finally:
        await app.stop(grace=0)
        await proxy.cut()


async def test_concurrent_batches_on_one_chain_keep_is_latest_right(
    stub: PersistenceServiceAsyncStub,
) -> None:
    chains = [(new_id(), new_id()) for _ in range(20)]

    async def send(event: persistence_pb2.Event) -> None:
        await stub.RecordEvents(persistence_pb2.RecordEventsRequest(events=[event]))

    sends = []
    for older, newer in chains:
        sends.append(send(request_event(older, shipping_id="SHIP-RACE")))
        sends.append(
            send(request_event(newer, shipping_id="SHIP-RACE", previous_inspection_id=older))
        )
    await asyncio.gather(*sends)

    for older, newer in chains:
        for iid, latest in ((older, False), (newer, True)):
            got = await stub.GetInspection(persistence_pb2.GetInspectionRequest(inspection_id=iid))
            assert got.inspection.is_latest is latest
