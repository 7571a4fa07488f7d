"""The inspection service's error table through the shared interceptor, on a real grpc.aio
server on loopback serving rpi.inspection.v1.InspectionService. The servicer here runs the real
request validation and then raises the domain error the request names, so every reason is
reached without a model."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from rpi.inspection.v1 import inspection_pb2 as pb
from rpi.inspection.v1 import inspection_pb2_grpc as pb_grpc

from inference_svc.domain.errors import ErrorKind, InspectionError, Reason
from inference_svc.domain.validation import RequestLimits, validate_request
from inference_svc.grpc_api.convert import raw_request_from_proto
from inference_svc.grpc_api.errors import ERROR_DOMAIN, ERROR_TABLE, error_interceptor
from tests.grpc_errors.support import GARBAGE, details

# What callers rely on: written out here, not derived from the table under test.
EXPECTED: dict[Reason, tuple[grpc.StatusCode, str, bool]] = {
    Reason.INVALID_ARGUMENT: (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", False),
    Reason.QUESTIONS_INVALID: (grpc.StatusCode.INVALID_ARGUMENT, "QUESTIONS_INVALID", False),
    Reason.IMAGE_FETCH_FAILED: (grpc.StatusCode.INVALID_ARGUMENT, "IMAGE_FETCH_FAILED", False),
    Reason.IMAGE_SOURCE_UNAVAILABLE: (
        grpc.StatusCode.UNAVAILABLE,
        "IMAGE_SOURCE_UNAVAILABLE",
        True,
    ),
    Reason.IMAGE_TOO_LARGE: (grpc.StatusCode.INVALID_ARGUMENT, "IMAGE_TOO_LARGE", False),
    Reason.IMAGE_UNDECODABLE: (grpc.StatusCode.INVALID_ARGUMENT, "IMAGE_UNDECODABLE", False),
    Reason.IMAGE_URL_FORBIDDEN: (grpc.StatusCode.INVALID_ARGUMENT, "IMAGE_URL_FORBIDDEN", False),
    Reason.MODEL_OUTPUT_INVALID: (grpc.StatusCode.INTERNAL, "MODEL_OUTPUT_INVALID", False),
    Reason.MODEL_NOT_READY: (grpc.StatusCode.UNAVAILABLE, "MODEL_NOT_READY", True),
    Reason.OVERLOADED: (grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED", True),
    Reason.EVENT_SPOOL_FULL: (grpc.StatusCode.RESOURCE_EXHAUSTED, "EVENT_SPOOL_FULL", True),
    Reason.DRAINING: (grpc.StatusCode.UNAVAILABLE, "DRAINING", True),
    Reason.DEADLINE_EXCEEDED: (grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", False),
    Reason.CANCELLED: (grpc.StatusCode.CANCELLED, "CANCELLED", False),
    Reason.INTERNAL: (grpc.StatusCode.INTERNAL, "INTERNAL", False),
    Reason.OPERATION_NOT_FOUND: (grpc.StatusCode.NOT_FOUND, "OPERATION_NOT_FOUND", False),
    Reason.OPERATION_NOT_FINISHED: (
        grpc.StatusCode.FAILED_PRECONDITION,
        "OPERATION_NOT_FINISHED",
        False,
    ),
    Reason.REQUEST_ID_REUSED: (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED", False),
    Reason.CALLBACK_URL_FORBIDDEN: (
        grpc.StatusCode.INVALID_ARGUMENT,
        "CALLBACK_URL_FORBIDDEN",
        False,
    ),
    Reason.EXPORT_URI_FORBIDDEN: (grpc.StatusCode.INVALID_ARGUMENT, "EXPORT_URI_FORBIDDEN", False),
    Reason.JOBS_UNAVAILABLE: (grpc.StatusCode.UNAVAILABLE, "JOBS_UNAVAILABLE", True),
}
_KIND = {
    grpc.StatusCode.INVALID_ARGUMENT: ErrorKind.INVALID_ARGUMENT,
    grpc.StatusCode.INTERNAL: ErrorKind.INTERNAL,
    grpc.StatusCode.UNAVAILABLE: ErrorKind.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ErrorKind.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED: ErrorKind.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED: ErrorKind.CANCELLED,
    grpc.StatusCode.NOT_FOUND: ErrorKind.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION: ErrorKind.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS: ErrorKind.ALREADY_EXISTS,
}
ID = str(uuid.uuid4())


def _act(request: pb.InspectRequest) -> None:
    """Validates like the service, then raises what ``product_id`` asks for."""
    validate_request(raw_request_from_proto(request), RequestLimits())
    what = request.product_id
    if what == "boom":
        raise RuntimeError("something broke")
    reason = Reason(what)
    code = EXPECTED[reason][0]
    raise InspectionError(
        _KIND[code], reason, f"failed with {what}", stage="generate", metadata={"extra": "1"}
    )


class FailingInspections(pb_grpc.InspectionServiceServicer):
    async def Inspect(self, request: pb.InspectRequest, context: Any) -> pb.InspectResponse:
        _act(request)
        return pb.InspectResponse()

    async def InspectStream(
        self, request: pb.InspectRequest, context: Any
    ) -> AsyncIterator[pb.InspectStreamResponse]:
        yield pb.InspectStreamResponse(accepted=pb.Accepted(inspection_id=request.inspection_id))
        _act(request)


@pytest.fixture(scope="module")
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server(interceptors=[error_interceptor()])
    pb_grpc.add_InspectionServiceServicer_to_server(FailingInspections(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            yield ch
    finally:
        await server.stop(0)


@pytest.fixture(scope="module")
def stub(channel: grpc.aio.Channel) -> pb_grpc.InspectionServiceStub:
    return pb_grpc.InspectionServiceStub(channel)


def _request(product_id: str, **overrides: Any) -> pb.InspectRequest:
    values: dict[str, Any] = {
        "inspection_id": ID,
        "shipping_id": "S1",
        "product_id": product_id,
        "product_name": "Kettle",
        "reference_images": [pb.Image(uri="https://example.com/r.jpg")],
        "pickup_images": [pb.Image(uri="https://example.com/p.jpg")],
        "questions": [pb.Question(type="Brand", label="Brand?", value_to_check="Acme")],
    }
    values.update(overrides)
    return pb.InspectRequest(**values)


async def _fail(stub: pb_grpc.InspectionServiceStub, streaming: bool, request: Any) -> Any:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if streaming:
            _ = [m async for m in stub.InspectStream(request)]
        else:
            await stub.Inspect(request)
    return details(caught.value)


def test_the_table_covers_every_domain_reason() -> None:
    assert set(EXPECTED) == set(Reason)
    for reason, (code, wire, retryable) in EXPECTED.items():
        rule = ERROR_TABLE.rule_for(InspectionError(_KIND[code], reason, "x"))
        assert rule is not None and (rule.code, rule.reason, rule.retryable) == (
            code,
            wire,
            retryable,
        )


@pytest.mark.parametrize("streaming", [False, True], ids=["Inspect", "InspectStream"])
@pytest.mark.parametrize("reason", list(Reason), ids=str)
async def test_each_reason_has_its_code_and_one_error_info(
    stub: pb_grpc.InspectionServiceStub, reason: Reason, streaming: bool
) -> None:
    code, wire, retryable = EXPECTED[reason]
    got = await _fail(stub, streaming, _request(reason.value))
    assert got.code is code
    assert (got.info.domain, got.info.reason) == (ERROR_DOMAIN, wire)
    assert dict(got.info.metadata) == {"inspection_id": ID, "stage": "generate", "extra": "1"}
    assert got.message == f"failed with {reason.value}"
    assert (got.retry_delay_s is not None) is retryable


@pytest.mark.parametrize("streaming", [False, True], ids=["Inspect", "InspectStream"])
async def test_invalid_request_has_field_violations(
    stub: pb_grpc.InspectionServiceStub, streaming: bool
) -> None:
    got = await _fail(
        stub, streaming, _request("unused", shipping_id="", inspection_id="not-a-uuid")
    )
    assert got.code is grpc.StatusCode.INVALID_ARGUMENT
    assert got.info.reason == "INVALID_ARGUMENT"
    fields = {f for f, _ in got.violations}
    assert {"shipping_id", "inspection_id"} <= fields


async def test_overload_retry_delay_comes_from_the_error(
    stub: pb_grpc.InspectionServiceStub,
) -> None:
    # EVENT_SPOOL_FULL has no own delay here: the table's default applies.
    got = await _fail(stub, False, _request(Reason.EVENT_SPOOL_FULL.value))
    assert got.retry_delay_s == ERROR_TABLE.default_retry_delay_s


@pytest.mark.parametrize("streaming", [False, True], ids=["Inspect", "InspectStream"])
async def test_unexpected_exception_is_internal_not_unknown(
    stub: pb_grpc.InspectionServiceStub, streaming: bool
) -> None:
    got = await _fail(stub, streaming, _request("boom"))
    assert got.code is grpc.StatusCode.INTERNAL
    assert got.message == "internal error"
    assert (got.info.domain, got.info.reason) == (ERROR_DOMAIN, "INTERNAL")
    assert set(got.info.metadata) == {"trace_id"}


@pytest.mark.parametrize("method", ["Inspect", "InspectStream"])
async def test_garbage_request_bytes_are_invalid_argument(
    channel: grpc.aio.Channel, method: str
) -> None:
    path = f"/rpi.inspection.v1.InspectionService/{method}"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if method == "Inspect":
            await channel.unary_unary(path)(GARBAGE)
        else:
            _ = [m async for m in channel.unary_stream(path)(GARBAGE)]
    got = details(caught.value)
    assert got.code is grpc.StatusCode.INVALID_ARGUMENT
    assert (got.info.domain, got.info.reason) == (ERROR_DOMAIN, "INVALID_ARGUMENT")


def test_callers_and_failure_records_see_the_same_reason() -> None:
    # A failure is recorded (FailureRecorded.reason) with the domain reason's value: it must be
    # the reason the caller got.
    assert all(wire == reason.value for reason, (_, wire, _) in EXPECTED.items())


@pytest.mark.parametrize("streaming", [False, True], ids=["unary", "stream"])
async def test_four_hundred_empty_images_get_invalid_argument_in_a_small_trailer(
    stub: pb_grpc.InspectionServiceStub, streaming: bool
) -> None:
    # The finding: about 1 KB of request once produced a 19.8 KB BadRequest, which clients with
    # gRPC's default 8 KiB metadata limit saw as RESOURCE_EXHAUSTED.
    request = _request("INVALID_ARGUMENT", pickup_images=[pb.Image() for _ in range(400)])
    assert request.ByteSize() < 2048
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if streaming:
            _ = [m async for m in stub.InspectStream(request)]
        else:
            await stub.Inspect(request)
    got = details(caught.value)
    assert got.code is grpc.StatusCode.INVALID_ARGUMENT
    assert 1 < len(got.violations) <= 21
    assert any("more" in description for _, description in got.violations)
    trailer = sum(len(key) + len(value) for key, value in (caught.value.trailing_metadata() or ()))
    assert trailer < 4096
