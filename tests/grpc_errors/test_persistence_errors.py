"""The persistence service's error table through the shared interceptor: the real service on a
loopback port with a real PostgreSQL (TEST_DATABASE_URL, default 127.0.0.1:5432)."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from rpi.persistence.v1 import persistence_pb2, persistence_pb2_grpc

from persistence_svc.app import PersistenceApp
from persistence_svc.errors import ERROR_DOMAIN
from tests.grpc_errors.conftest import persistence_settings
from tests.grpc_errors.support import GARBAGE, details


async def _fail(call: Any) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return details(caught.value)


async def test_not_found(stub: persistence_pb2_grpc.PersistenceServiceStub) -> None:
    missing = str(uuid.uuid4())
    got = await _fail(
        stub.GetInspection(persistence_pb2.GetInspectionRequest(inspection_id=missing))
    )
    assert got.code is grpc.StatusCode.NOT_FOUND
    assert (got.info.domain, got.info.reason) == (ERROR_DOMAIN, "INSPECTION_NOT_FOUND")
    assert got.violations == [] and got.retry_delay_s is None


async def test_invalid_argument_names_the_fields(
    stub: persistence_pb2_grpc.PersistenceServiceStub,
) -> None:
    got = await _fail(
        stub.GetInspection(persistence_pb2.GetInspectionRequest(inspection_id="nope"))
    )
    assert got.code is grpc.StatusCode.INVALID_ARGUMENT
    assert (got.info.domain, got.info.reason) == (ERROR_DOMAIN, "INVALID_ARGUMENT")
    assert [f for f, _ in got.violations] == ["inspection_id"]

    got = await _fail(stub.ListInspections(persistence_pb2.ListInspectionsRequest()))
    assert (got.code, got.info.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert got.violations == [("shipping_id", "is required")]


async def test_a_batch_with_many_bad_events_caps_the_violations(
    stub: persistence_pb2_grpc.PersistenceServiceStub,
) -> None:
    events = [persistence_pb2.Event(event_id="x", inspection_id="y") for _ in range(30)]
    got = await _fail(stub.RecordEvents(persistence_pb2.RecordEventsRequest(events=events)))
    assert (got.code, got.info.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert len(got.violations) == 21
    assert got.violations[-1][1].startswith("and ") and got.violations[-1][1].endswith(" more")


async def test_unexpected_exception_is_internal(
    app: PersistenceApp,
    stub: persistence_pb2_grpc.PersistenceServiceStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken(*_args: Any) -> Any:
        raise RuntimeError("disk on fire")

    assert app.repository is not None
    monkeypatch.setattr(app.repository, "get_inspection", broken)
    got = await _fail(
        stub.GetInspection(persistence_pb2.GetInspectionRequest(inspection_id=str(uuid.uuid4())))
    )
    assert got.code is grpc.StatusCode.INTERNAL
    assert got.message == "internal error"
    assert (got.info.domain, got.info.reason) == (ERROR_DOMAIN, "INTERNAL")
    assert "trace_id" in got.info.metadata


@pytest.mark.parametrize("method", ["RecordEvents", "GetInspection", "ListInspections"])
async def test_garbage_request_bytes_are_invalid_argument(
    channel: grpc.aio.Channel, method: str
) -> None:
    call = channel.unary_unary(f"/rpi.persistence.v1.PersistenceService/{method}")
    got = await _fail(call(GARBAGE))
    assert got.code is grpc.StatusCode.INVALID_ARGUMENT
    assert (got.info.domain, got.info.reason) == (ERROR_DOMAIN, "INVALID_ARGUMENT")


async def test_unreachable_database_is_unavailable_and_retryable() -> None:
    # Nothing listens on port 1: the service starts, but has no database to serve from.
    application = PersistenceApp(
        persistence_settings("postgresql://postgres@127.0.0.1:1/none", db_connect_retry_max_s=1.0)
    )
    await application.start(wait_ready=False)
    try:
        async with grpc.aio.insecure_channel(application.target) as ch:
            stub = persistence_pb2_grpc.PersistenceServiceStub(ch)
            got = await _fail(
                stub.ListInspections(persistence_pb2.ListInspectionsRequest(shipping_id="S"))
            )
    finally:
        await application.stop(grace=0)
    assert got.code is grpc.StatusCode.UNAVAILABLE
    assert (got.info.domain, got.info.reason) == (ERROR_DOMAIN, "DATABASE_UNAVAILABLE")
    assert got.retry_delay_s is not None and got.retry_delay_s > 0
