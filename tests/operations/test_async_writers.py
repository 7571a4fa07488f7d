"""The persistence service's job and webhook RPCs are reserved, like RecordEvents, to
WRITER_IDENTITIES: another client certificate is denied, the writer certificate is served; and
a caller without a grant for the asynchronous API is refused (both services with TLS and
mutual TLS)."""

from __future__ import annotations

import grpc
import pytest
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.protobuf import duration_pb2
from rpi.inspection.v1 import operations_pb2 as opb
from rpi.inspection.v1 import operations_pb2_grpc as opb_grpc
from rpi.persistence.v1 import persistence_pb2 as ppb
from rpi.persistence.v1 import persistence_pb2_grpc as ppb_grpc

from tests.operations.support import wait_done
from tests.support.e2e import ImageServer, make_request
from tests.support.secure import WRITER, SecureSystem


async def test_job_rpcs_are_for_writers_only(
    secure: SecureSystem, image_server: ImageServer
) -> None:
    lease = duration_pb2.Duration(seconds=30)
    async with secure.persistence_channel("intruder.rpi.svc") as channel:
        stub = ppb_grpc.PersistenceServiceStub(channel)
        for call in (
            stub.ClaimJobs(ppb.ClaimJobsRequest(worker="x", max_jobs=1, lease_duration=lease)),
            stub.ClaimWebhooks(
                ppb.ClaimWebhooksRequest(worker="x", max_deliveries=1, lease_duration=lease)
            ),
            stub.ListJobs(ppb.ListJobsRequest(caller="returns-backend")),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await call
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with secure.persistence_channel(WRITER) as channel:
        listed = await ppb_grpc.PersistenceServiceStub(channel).ListJobs(
            ppb.ListJobsRequest(caller="nobody")
        )
        assert not listed.jobs

    # The returns backend's policy in this system grants InspectionService only.
    async with secure.inspection_channel(secure.keys["returns-backend"]) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await opb_grpc.AsyncInspectionServiceStub(channel).SubmitInspection(
                opb.SubmitInspectionRequest(inspection=make_request(image_server))
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await wait_done(lro_grpc.OperationsStub(channel), "operations/x")
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
