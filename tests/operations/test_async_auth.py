"""The new RPCs pass the auth interceptor like Inspect: a caller needs a grant for
AsyncInspectionService and google.longrunning.Operations, and sees only its own operations."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
import yaml
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.longrunning import operations_proto_pb2 as lro
from prometheus_client import CollectorRegistry
from rpi.inspection.v1 import operations_pb2 as opb
from rpi.inspection.v1 import operations_pb2_grpc as opb_grpc

from inference_svc.app import InferenceApp
from persistence_svc.app import PersistenceApp
from svc_common.auth import new_api_key_entry
from tests.operations.support import GatedEngine, cheap_output
from tests.support.e2e import inference_settings
from tests.support.errors import error_reason
from tests.support.faults import cheap_request

GRANTS = [
    "/rpi.inspection.v1.InspectionService/*",
    "/rpi.inspection.v1.AsyncInspectionService/*",
    "/google.longrunning.Operations/*",
]


@pytest_asyncio.fixture(scope="module")
async def authed(
    queue_app: PersistenceApp, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[InferenceApp, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("async-auth")
    keys: dict[str, str] = {}
    entries: dict[str, Any] = {}
    for name in ("alice", "bob", "carol"):
        keys[name], entry = new_api_key_entry(name)
        entries.update(entry)
    (tmp / "tokens.yaml").write_text(yaml.safe_dump({"callers": entries}))
    policy = {"alice": GRANTS, "bob": GRANTS, "carol": GRANTS[:1]}
    (tmp / "policy.yaml").write_text(yaml.safe_dump({"callers": policy, "default": []}))
    app = InferenceApp(
        inference_settings(
            tmp,
            queue_app.target,
            auth_tokens_file=tmp / "tokens.yaml",
            auth_policy_file=tmp / "policy.yaml",
            job_poll_interval_s=0.05,
        ),
        registry=CollectorRegistry(),
        engine=GatedEngine([cheap_output()] * 10),
    )
    await app.start()
    yield app, keys
    await app.stop(5)


def _as(key: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {key}"),)


async def test_operations_need_a_grant_and_belong_to_their_submitter(
    authed: tuple[InferenceApp, dict[str, str]],
) -> None:
    app, keys = authed
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        submit = opb_grpc.AsyncInspectionServiceStub(channel)
        ops = lro_grpc.OperationsStub(channel)
        request = opb.SubmitInspectionRequest(inspection=cheap_request("SHIP-AUTH"))

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await submit.SubmitInspection(request)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await submit.SubmitInspection(request, metadata=_as(keys["carol"]))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

        operation = await submit.SubmitInspection(request, metadata=_as(keys["alice"]))
        name = operation.name
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await ops.GetOperation(lro.GetOperationRequest(name=name), metadata=_as(keys["carol"]))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        for call in (
            ops.GetOperation(lro.GetOperationRequest(name=name), metadata=_as(keys["bob"])),
            ops.CancelOperation(lro.CancelOperationRequest(name=name), metadata=_as(keys["bob"])),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            assert error_reason(caught.value) == "OPERATION_NOT_FOUND"
        listed = await ops.ListOperations(lro.ListOperationsRequest(), metadata=_as(keys["bob"]))
        assert name not in [o.name for o in listed.operations]

        # This service has no webhook secret: a callback cannot be signed, so it is refused.
        with_callback = opb.SubmitInspectionRequest(inspection=cheap_request("SHIP-AUTH"))
        with_callback.callback.url = "https://hooks.example.com/done"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await submit.SubmitInspection(with_callback, metadata=_as(keys["alice"]))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_reason(caught.value) == "CALLBACK_URL_FORBIDDEN"

        done = None
        while done is None or not done.done:
            done = await ops.WaitOperation(
                lro.WaitOperationRequest(name=name), metadata=_as(keys["alice"]), timeout=60
            )
        assert done.HasField("response")
