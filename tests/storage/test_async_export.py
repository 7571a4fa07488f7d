"""A SubmitInspection's own export destination against moto's S3 server and both real
services: the result lands at <prefix>/<shipping_id>/<inspection_id>.json, the operation's
metadata and the record carry that URI, and a bucket outside ALLOWED_EXPORT_BUCKETS is refused
at submit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.protobuf import json_format
from prometheus_client import CollectorRegistry
from rpi.inspection.v1 import inspection_pb2 as pb
from rpi.inspection.v1 import operations_pb2 as opb
from rpi.inspection.v1 import operations_pb2_grpc as opb_grpc
from rpi.persistence.v1 import persistence_pb2 as ppb
from rpi.persistence.v1 import persistence_pb2_grpc as ppb_grpc

from persistence_svc.app import PersistenceApp
from tests.operations.support import metadata, wait_done
from tests.storage.conftest import S3, request, running_app
from tests.support.e2e import jpeg, wait_for_record
from tests.support.errors import bad_request_fields, error_reason
from tests.support.persistence import running_persistence
from tests.support.postgres import PostgresForTests

REFERENCE = jpeg((64, 48), (20, 200, 30))
PICKUP = jpeg((64, 48), (30, 190, 45))


# A queue of its own: any inference service connected to a shared persistence service may
# claim a job (that is the product's design), and the session-wide one of the other tests,
# without these storage settings, would run it without its export.
@pytest_asyncio.fixture(scope="module")
async def persistence_app(postgres: PostgresForTests) -> AsyncIterator[PersistenceApp]:
    async with (
        postgres.fresh_database("rpi_export_") as url,
        running_persistence(url, app_kwargs={"registry": CollectorRegistry()}) as app,
    ):
        yield app


@pytest_asyncio.fixture(scope="module")
async def persistence_stub(
    persistence_app: PersistenceApp,
) -> AsyncIterator[ppb_grpc.PersistenceServiceStub]:
    async with grpc.aio.insecure_channel(persistence_app.target) as channel:
        yield ppb_grpc.PersistenceServiceStub(channel)


async def test_a_submit_with_its_own_export_prefix_is_exported_there(
    s3: S3,
    persistence_app: PersistenceApp,
    persistence_stub: ppb_grpc.PersistenceServiceStub,
    tmp_path: Path,
) -> None:
    client = s3.client()
    client.create_bucket(Bucket="partner-results")
    client.create_bucket(Bucket="evidence-default")
    async with running_app(
        tmp_path,
        persistence_app,
        storage_endpoints={"s3": s3.endpoint},
        allowed_export_buckets=["s3://partner-results"],
        # The request's prefix replaces the service's for that job.
        result_export_uri="s3://evidence-default/results",
        job_poll_interval_s=0.05,
    ) as (app, _stub):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            submitted = await opb_grpc.AsyncInspectionServiceStub(channel).SubmitInspection(
                opb.SubmitInspectionRequest(
                    inspection=request(
                        [pb.Image(content=REFERENCE)],
                        [pb.Image(content=PICKUP)],
                        shipping_id="SHIP/AX 1",
                    ),
                    result_export_uri="s3://partner-results/acme/2026",
                )
            )
            assert metadata(submitted).export_uri == ""  # no object before the run succeeded
            operation = await wait_done(lro_grpc.OperationsStub(channel), submitted.name)
            # Without a prefix of its own, a job exports to RESULT_EXPORT_URI, and says so.
            plain = await opb_grpc.AsyncInspectionServiceStub(channel).SubmitInspection(
                opb.SubmitInspectionRequest(
                    inspection=request([pb.Image(content=REFERENCE)], [pb.Image(content=PICKUP)])
                )
            )
            plain = await wait_done(lro_grpc.OperationsStub(channel), plain.name)
        await app.storage.drained()

    plain_id = metadata(plain).inspection_id
    plain_key = f"results/SHIP-S3-1/{plain_id}.json"
    assert metadata(plain).export_uri == f"s3://evidence-default/{plain_key}"
    assert s3.keys("evidence-default") == [plain_key]

    assert metadata(operation).state == opb.OPERATION_STATE_SUCCEEDED
    inspection = pb.Inspection()
    operation.response.Unpack(inspection)
    key = f"acme/2026/SHIP%2FAX%201/{inspection.inspection_id}.json"
    assert metadata(operation).export_uri == f"s3://partner-results/{key}"
    exported = client.get_object(Bucket="partner-results", Key=key)["Body"].read()
    assert json_format.Parse(exported, pb.Inspection()) == inspection
    record = await wait_for_record(
        persistence_stub, inspection.inspection_id, ppb.INSPECTION_STATUS_COMPLETED
    )
    assert record.export_uri == metadata(operation).export_uri


REFUSED = [
    "s3://other-bucket/results",  # not in the allowlist
    "gs://partner-results/results",  # the allowed name under another scheme
    "https://partner-results.s3.amazonaws.com/results",  # not a bucket URI
    "s3://partner-results/../x",
]


async def test_an_export_prefix_outside_the_allowlist_is_refused_at_submit(
    s3: S3, persistence_app: PersistenceApp, tmp_path: Path
) -> None:
    async with (
        running_app(
            tmp_path,
            persistence_app,
            storage_endpoints={"s3": s3.endpoint},
            allowed_export_buckets=["s3://partner-results"],
        ) as (app, _stub),
        grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel,
    ):
        submit = opb_grpc.AsyncInspectionServiceStub(channel)
        for prefix in REFUSED:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await submit.SubmitInspection(
                    opb.SubmitInspectionRequest(
                        inspection=request(
                            [pb.Image(content=REFERENCE)], [pb.Image(content=PICKUP)]
                        ),
                        result_export_uri=prefix,
                    )
                )
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, prefix
            assert error_reason(refused.value) == "EXPORT_URI_FORBIDDEN", prefix
            assert "result_export_uri" in bad_request_fields(refused.value), prefix
