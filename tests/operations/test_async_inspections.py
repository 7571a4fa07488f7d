"""SubmitInspection and google.longrunning.Operations against the real services: a persistence
service on PostgreSQL and an inference service whose engine is the fake one (gated per
inspection, so a test decides when a generation may end)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import pytest
import pytest_asyncio
import yaml
from google.longrunning import operations_pb2_grpc as lro_grpc
from google.longrunning import operations_proto_pb2 as lro
from google.protobuf import duration_pb2, json_format
from google.rpc import code_pb2
from prometheus_client import CollectorRegistry
from rpi.inspection.v1 import inspection_pb2 as pb
from rpi.inspection.v1 import inspection_pb2_grpc as pb_grpc
from rpi.inspection.v1 import operations_pb2 as opb
from rpi.inspection.v1 import operations_pb2_grpc as opb_grpc
from rpi.persistence.v1 import persistence_pb2 as ppb
from rpi.persistence.v1 import persistence_pb2_grpc as ppb_grpc

from clients.python.rpi_client.cli import main
from inference_svc.app import InferenceApp
from persistence_svc.app import PersistenceApp
from tests.operations.support import GatedEngine, cheap_output, metadata, wait_done, wait_state
from tests.support.e2e import ROOT, inference_settings, jpeg, wait_for_record
from tests.support.errors import bad_request_fields, error_reason
from tests.support.faults import cheap_request, wait_until

ROWS = 2  # the engine's rows: async work claims only while one is free


@pytest_asyncio.fixture(scope="module")
async def engine() -> GatedEngine:
    return GatedEngine([cheap_output()] * 2000)


@pytest_asyncio.fixture(scope="module")
async def inference(
    queue_app: PersistenceApp, engine: GatedEngine, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[InferenceApp]:
    tmp = tmp_path_factory.mktemp("async")
    secrets_file = tmp / "webhook-secrets.yaml"
    secrets_file.write_text(yaml.safe_dump({"default": "whsec_" + "A" * 43 + "="}))
    app = InferenceApp(
        inference_settings(
            tmp,
            queue_app.target,
            webhook_secrets_file=secrets_file,
            max_batch_size=ROWS,
            job_poll_interval_s=0.05,
            # Callbacks must pass the real address rules here (the images are inline).
            allow_private_addresses=False,
            allowed_networks=["127.0.0.1"],
        ),
        registry=CollectorRegistry(),
        engine=engine,
    )
    await app.start()
    yield app
    await app.stop(5)


@pytest_asyncio.fixture(scope="module")
async def channel(inference: InferenceApp) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{inference.port}") as ch:
        yield ch


@pytest.fixture(scope="module")
def submit(channel: grpc.aio.Channel) -> opb_grpc.AsyncInspectionServiceStub:
    return opb_grpc.AsyncInspectionServiceStub(channel)


@pytest.fixture(scope="module")
def ops(channel: grpc.aio.Channel) -> lro_grpc.OperationsStub:
    return lro_grpc.OperationsStub(channel)


def _request(inspection_id: str | None = None) -> opb.SubmitInspectionRequest:
    inspection = cheap_request("SHIP-ASYNC")
    if inspection_id is not None:
        inspection.inspection_id = inspection_id
    return opb.SubmitInspectionRequest(inspection=inspection)


def _gated(engine: GatedEngine) -> tuple[str, asyncio.Event]:
    inspection_id = str(uuid.uuid4())
    engine.gates[inspection_id] = asyncio.Event()
    return inspection_id, engine.gates[inspection_id]


async def test_submit_returns_at_once_and_the_operation_ends_with_the_inspection(
    submit: opb_grpc.AsyncInspectionServiceStub,
    ops: lro_grpc.OperationsStub,
    queue_app: PersistenceApp,
) -> None:
    operation = await submit.SubmitInspection(_request())
    assert operation.name.startswith("operations/") and not operation.done
    assert metadata(operation).state == opb.OPERATION_STATE_QUEUED
    done = await wait_done(ops, operation.name)
    meta = metadata(done)
    assert meta.state == opb.OPERATION_STATE_SUCCEEDED and meta.attempts == 1
    assert meta.HasField("start_time") and meta.HasField("end_time")
    assert meta.callback.state == opb.CALLBACK_STATE_NONE
    inspection = pb.Inspection()
    assert done.response.Unpack(inspection)
    assert inspection.inspection_id == meta.inspection_id
    assert inspection.decision != pb.DECISION_UNSPECIFIED
    # The inspection is recorded like a synchronous one.
    async with grpc.aio.insecure_channel(queue_app.target) as channel:
        record = await wait_for_record(
            ppb_grpc.PersistenceServiceStub(channel),
            meta.inspection_id,
            ppb.INSPECTION_STATUS_COMPLETED,
        )
    assert record.request.method == "SubmitInspection"


async def test_same_request_id_same_operation_other_request_already_exists(
    submit: opb_grpc.AsyncInspectionServiceStub, jobs_db: asyncpg.Connection
) -> None:
    key = f"order-{uuid.uuid4()}"
    first_request = _request()
    first_request.request_id = key
    first = await submit.SubmitInspection(first_request)
    again = await submit.SubmitInspection(first_request)
    assert again.name == first.name
    assert metadata(again).inspection_id == metadata(first).inspection_id
    assert (
        await jobs_db.fetchval("SELECT count(*) FROM inspection_jobs WHERE request_id = $1", key)
        == 1
    )

    other = _request()
    other.request_id = key
    other.inspection.product_name = "another product"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await submit.SubmitInspection(other)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_reason(caught.value) == "REQUEST_ID_REUSED"


async def test_invalid_submits_name_the_field(submit: opb_grpc.AsyncInspectionServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await submit.SubmitInspection(opb.SubmitInspectionRequest())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad = _request()
    bad.inspection.shipping_id = ""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await submit.SubmitInspection(bad)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inspection.shipping_id" in bad_request_fields(caught.value)


async def test_a_request_too_large_to_queue_is_refused(
    submit: opb_grpc.AsyncInspectionServiceStub,
) -> None:
    big = _request()
    big.inspection.pickup_images.add(content=b"\xff" * (33 * 1024 * 1024))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await submit.SubmitInspection(big)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inspection" in bad_request_fields(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "https://10.1.2.3/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://metadata.google.internal/hook",
        "https://[::1]:8443/hook",
        "ftp://example.com/hook",
    ],
)
async def test_a_callback_to_a_private_or_metadata_address_is_refused_at_submit(
    submit: opb_grpc.AsyncInspectionServiceStub, url: str
) -> None:
    request = _request()
    request.callback.url = url
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await submit.SubmitInspection(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(caught.value) == "CALLBACK_URL_FORBIDDEN"


async def test_an_allowed_callback_is_taken_and_its_delivery_is_pending(
    submit: opb_grpc.AsyncInspectionServiceStub, ops: lro_grpc.OperationsStub
) -> None:
    request = _request()
    request.callback.url = "http://127.0.0.1:9/hook"  # ALLOWED_NETWORKS admits loopback
    operation = await submit.SubmitInspection(request)
    callback = metadata(operation).callback
    assert callback.state == opb.CALLBACK_STATE_PENDING
    assert callback.url == request.callback.url and callback.webhook_id.startswith("msg_")
    await wait_done(ops, operation.name)


async def test_get_list_and_delete(
    submit: opb_grpc.AsyncInspectionServiceStub, ops: lro_grpc.OperationsStub
) -> None:
    operation = await submit.SubmitInspection(_request())
    await wait_done(ops, operation.name)
    listed = await ops.ListOperations(lro.ListOperationsRequest(name="operations", page_size=500))
    assert operation.name in [o.name for o in listed.operations]
    succeeded = await ops.ListOperations(
        lro.ListOperationsRequest(name="operations", filter="state=SUCCEEDED", page_size=500)
    )
    assert all(metadata(o).state == opb.OPERATION_STATE_SUCCEEDED for o in succeeded.operations)
    await ops.DeleteOperation(lro.DeleteOperationRequest(name=operation.name))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ops.GetOperation(lro.GetOperationRequest(name=operation.name))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_reason(caught.value) == "OPERATION_NOT_FOUND"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ops.GetOperation(lro.GetOperationRequest(name="operations/not-a-uuid"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_wait_honours_its_timeout_and_the_call_deadline(
    submit: opb_grpc.AsyncInspectionServiceStub,
    ops: lro_grpc.OperationsStub,
    engine: GatedEngine,
) -> None:
    inspection_id, gate = _gated(engine)
    operation = await submit.SubmitInspection(_request(inspection_id))
    await wait_state(ops, operation.name, opb.OPERATION_STATE_RUNNING)
    waited = await ops.WaitOperation(
        lro.WaitOperationRequest(
            name=operation.name, timeout=duration_pb2.Duration(nanos=2 * 10**8)
        )
    )
    assert not waited.done
    # No timeout in the request: the call's own deadline bounds the wait, and the caller gets
    # the operation as it stands rather than DEADLINE_EXCEEDED.
    waited = await ops.WaitOperation(lro.WaitOperationRequest(name=operation.name), timeout=1.0)
    assert not waited.done
    gate.set()
    assert (await wait_done(ops, operation.name)).done


async def test_cancel_a_queued_job_it_never_reaches_the_engine(
    submit: opb_grpc.AsyncInspectionServiceStub,
    ops: lro_grpc.OperationsStub,
    engine: GatedEngine,
) -> None:
    held = [_gated(engine) for _ in range(ROWS)]
    running = [await submit.SubmitInspection(_request(i)) for i, _ in held]
    for operation in running:
        await wait_state(ops, operation.name, opb.OPERATION_STATE_RUNNING)
    queued_id = str(uuid.uuid4())
    queued = await submit.SubmitInspection(_request(queued_id))
    assert metadata(queued).state == opb.OPERATION_STATE_QUEUED
    await ops.CancelOperation(lro.CancelOperationRequest(name=queued.name))
    for _, gate in held:
        gate.set()
    for operation in running:
        await wait_done(ops, operation.name)
    done = await wait_done(ops, queued.name)
    assert metadata(done).state == opb.OPERATION_STATE_CANCELLED
    assert done.error.code == code_pb2.CANCELLED
    assert metadata(done).attempts == 0
    assert queued_id not in engine.started


async def test_cancel_a_running_job_stops_its_generation(
    submit: opb_grpc.AsyncInspectionServiceStub,
    ops: lro_grpc.OperationsStub,
    engine: GatedEngine,
) -> None:
    inspection_id, gate = _gated(engine)
    operation = await submit.SubmitInspection(_request(inspection_id))
    await wait_state(ops, operation.name, opb.OPERATION_STATE_RUNNING)
    await wait_until(lambda: inspection_id in engine.started, "generation started")
    await ops.CancelOperation(lro.CancelOperationRequest(name=operation.name))
    done = await wait_done(ops, operation.name)
    assert metadata(done).state == opb.OPERATION_STATE_CANCELLED
    assert done.error.code == code_pb2.CANCELLED
    # The generation was cancelled in the engine, not left to finish.
    assert inspection_id in engine.stopped and inspection_id not in engine.finished
    gate.set()


async def test_a_sync_inspect_is_answered_while_50_async_jobs_wait(
    submit: opb_grpc.AsyncInspectionServiceStub,
    ops: lro_grpc.OperationsStub,
    channel: grpc.aio.Channel,
    engine: GatedEngine,
) -> None:
    held = [_gated(engine) for _ in range(50)]
    names = [(await submit.SubmitInspection(_request(i))).name for i, _ in held]
    reply = await pb_grpc.InspectionServiceStub(channel).Inspect(
        cheap_request("SHIP-SYNC"), timeout=60
    )
    assert reply.inspection.decision != pb.DECISION_UNSPECIFIED
    # Answered while the async work had not moved: at most ROWS of the 50 had started, and
    # none had finished.
    started = [i for i, _ in held if i in engine.started]
    assert len(started) <= ROWS
    assert not [i for i, _ in held if i in engine.finished]
    for _, gate in held:
        gate.set()
    for name in names:
        assert metadata(await wait_done(ops, name)).state == opb.OPERATION_STATE_SUCCEEDED


def _grpcurl(port: int, *args: str) -> str:
    tool = ROOT / ".tools" / "bin" / "grpcurl"
    command = [str(tool) if tool.exists() else "grpcurl", "-plaintext", *args[:-1]]
    done = subprocess.run(
        [*command, f"127.0.0.1:{port}", args[-1]],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_grpcurl_submits_and_waits_through_reflection(inference: InferenceApp) -> None:
    listed = await asyncio.to_thread(_grpcurl, inference.port, "list")
    assert "google.longrunning.Operations" in listed.split()
    assert "rpi.inspection.v1.AsyncInspectionService" in listed.split()
    request = json_format.MessageToJson(_request(), preserving_proto_field_name=True)
    submitted = json.loads(
        await asyncio.to_thread(
            _grpcurl,
            inference.port,
            "-d",
            request,
            "rpi.inspection.v1.AsyncInspectionService/SubmitInspection",
        )
    )
    assert submitted["name"].startswith("operations/")
    assert submitted["metadata"]["@type"].endswith("rpi.inspection.v1.InspectionOperationMetadata")
    waited = None
    while waited is None or not waited.get("done"):
        waited = json.loads(
            await asyncio.to_thread(
                _grpcurl,
                inference.port,
                "-d",
                json.dumps({"name": submitted["name"], "timeout": "30s"}),
                "google.longrunning.Operations/WaitOperation",
            )
        )
    assert waited["response"]["@type"].endswith("rpi.inspection.v1.Inspection")


async def test_the_cli_submits_waits_lists_gets_and_cancels(
    inference: InferenceApp,
    engine: GatedEngine,
    ops: lro_grpc.OperationsStub,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    image = tmp_path / "photo.jpg"
    image.write_bytes(jpeg((64, 64), (200, 30, 30)))
    questions = tmp_path / "questions.yaml"
    questions.write_text(
        '- {type: Colour, label: "Red?", value_to_check: "Yes", mandatory: true}\n'
    )
    target = ["--target", f"127.0.0.1:{inference.port}"]

    async def cli(*args: str) -> tuple[int, str]:
        code = await asyncio.to_thread(main, [args[0], *target, *args[1:]])
        return code, capsys.readouterr().out

    def submit_args(inspection_id: str = "") -> list[str]:
        return [
            "submit", "--reference", str(image), "--pickup", str(image),
            "--questions", str(questions), "--product-name", "mug",
            "--shipping-id", "SHIP-CLI", "--inspection-id", inspection_id,
        ]  # fmt: skip

    code, out = await cli(*submit_args())
    name = out.strip()
    assert code == 0 and name.startswith("operations/")
    code, out = await cli("wait", name)
    assert code == 0 and json.loads(out)["done"] is True
    code, out = await cli("operations", "list", "--state", "succeeded")
    assert code == 0 and name in out and "SUCCEEDED" in out
    code, out = await cli("operations", "get", name)
    assert code == 0 and json.loads(out)["name"] == name

    inspection_id, _gate = _gated(engine)
    code, out = await cli(*submit_args(inspection_id))
    held = out.strip()
    await wait_state(ops, held, opb.OPERATION_STATE_RUNNING)
    code, _ = await cli("operations", "cancel", held)
    assert code == 0
    code, out = await cli("wait", held)
    assert code == 3 and json.loads(out)["error"]["code"] == code_pb2.CANCELLED
