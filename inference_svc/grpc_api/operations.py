"""SubmitInspection and the standard google.longrunning.Operations service: protobuf in, job
queue call (inference_svc.operations.jobs_link), protobuf out. No business rules here.

Operations are scoped to their submitter: another caller's operation is NOT_FOUND, whatever
its name, so names cannot be probed."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from google.longrunning import operations_pb2_grpc as lro_grpc
from google.longrunning import operations_proto_pb2 as lro
from google.protobuf import empty_pb2
from rpi.inspection.v1 import inspection_pb2 as pb
from rpi.inspection.v1 import operations_pb2 as opb
from rpi.inspection.v1 import operations_pb2_grpc as opb_grpc

from inference_svc.domain.errors import FieldViolation, InspectionError, invalid_argument
from inference_svc.domain.validation import RequestLimits, validate_request
from inference_svc.grpc_api.async_jobs import job_id_of, job_to_operation
from inference_svc.grpc_api.convert import raw_request_from_proto
from inference_svc.operations.jobs_link import MAX_JOB_REQUEST_BYTES, JobsLink
from svc_common.auth import current_caller
from svc_common.logging import inspection_id_var

Context = Any

MAX_REQUEST_ID_CHARS = 128
# WaitOperation answers this long before the call's deadline, with the operation as it stands,
# rather than letting the deadline fail the call.
_DEADLINE_SLACK_S = 0.25
_WAIT_POLL_S = 0.25
_PAGE_DEFAULT = 50
_PAGE_MAX = 500

# (url, caller): raises CALLBACK_URL_FORBIDDEN when the caller may not name this destination.
CallbackCheck = Callable[[str, str], Awaitable[None]]
# (prefix, shipping_id, inspection_id) -> the export object's URI ('' for none); raises
# EXPORT_URI_FORBIDDEN for a prefix the service may not write.
ExportTarget = Callable[[str, str, str], str]


def _caller() -> str:
    return current_caller().name


def _request_digest(request: opb.SubmitInspectionRequest) -> bytes:
    """What a second submit under the same request_id must match: the request as sent."""
    copy = opb.SubmitInspectionRequest()
    copy.CopyFrom(request)
    copy.request_id = ""
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).digest()


class AsyncInspectionServicer(opb_grpc.AsyncInspectionServiceServicer):
    def __init__(
        self,
        link: JobsLink,
        limits: RequestLimits,
        check_callback: CallbackCheck,
        export_target: ExportTarget,
        on_submitted: Callable[[], None] = lambda: None,
    ) -> None:
        self._link = link
        self._limits = limits
        self._check_callback = check_callback
        self._export_target = export_target
        self._on_submitted = on_submitted

    async def SubmitInspection(  # noqa: N802 - gRPC method name
        self, request: opb.SubmitInspectionRequest, context: Context
    ) -> lro.Operation:
        if not request.HasField("inspection"):
            raise invalid_argument(
                "inspection is required", [FieldViolation("inspection", "is required")]
            )
        if len(request.request_id) > MAX_REQUEST_ID_CHARS or "\x00" in request.request_id:
            raise invalid_argument(
                "request_id is too long or holds NUL characters",
                [FieldViolation("request_id", f"at most {MAX_REQUEST_ID_CHARS} characters")],
            )
        if request.inspection.ByteSize() > MAX_JOB_REQUEST_BYTES:
            raise invalid_argument(
                "the request is too large to queue; send the images as URLs",
                [
                    FieldViolation(
                        "inspection", f"at most {MAX_JOB_REQUEST_BYTES // 2**20} MiB queued"
                    )
                ],
            )
        try:
            validated = validate_request(raw_request_from_proto(request.inspection), self._limits)
        except InspectionError as exc:
            exc.violations = [
                FieldViolation(f"inspection.{v.field}", v.description) for v in exc.violations
            ]
            raise
        inspection_id_var.set(validated.inspection_id)
        url = request.callback.url if request.HasField("callback") else ""
        if request.HasField("callback"):
            await self._check_callback(url, _caller())
        export_uri = self._export_target(
            request.result_export_uri, validated.shipping_id, validated.inspection_id
        )
        stored = pb.InspectRequest()
        stored.CopyFrom(request.inspection)
        stored.inspection_id = validated.inspection_id
        job, _ = await self._link.create(
            _caller(), request.request_id, _request_digest(request), stored, url, export_uri
        )
        self._on_submitted()
        return job_to_operation(job)


_STATE_FILTERS = {
    f"state={name.removeprefix('OPERATION_STATE_')}": value
    for name, value in opb.OperationState.items()
    if value != opb.OPERATION_STATE_UNSPECIFIED
}


class OperationsServicer(lro_grpc.OperationsServicer):  # type: ignore[misc]
    def __init__(
        self,
        link: JobsLink,
        max_wait_s: float,
        cancel_local: Callable[[str], bool] = lambda _job_id: False,
    ) -> None:
        self._link = link
        self._max_wait_s = max_wait_s
        self._cancel_local = cancel_local

    async def GetOperation(  # noqa: N802 - gRPC method name
        self, request: lro.GetOperationRequest, context: Context
    ) -> lro.Operation:
        return job_to_operation(await self._link.get(_caller(), job_id_of(request.name)))

    async def ListOperations(  # noqa: N802 - gRPC method name
        self, request: lro.ListOperationsRequest, context: Context
    ) -> lro.ListOperationsResponse:
        if request.name not in ("", "operations"):
            raise invalid_argument(
                "name must be 'operations' (or empty)",
                [FieldViolation("name", "must be 'operations' (or empty)")],
            )
        wanted = request.filter.replace(" ", "")
        if wanted and wanted not in _STATE_FILTERS:
            raise invalid_argument(
                "filter must be empty or state=<QUEUED|RUNNING|SUCCEEDED|FAILED|CANCELLED>",
                [FieldViolation("filter", "must be empty or state=<STATE>")],
            )
        if request.page_size < 0:
            raise invalid_argument(
                "page_size must not be negative",
                [FieldViolation("page_size", "must not be negative")],
            )
        jobs, token = await self._link.list_jobs(
            _caller(),
            min(request.page_size or _PAGE_DEFAULT, _PAGE_MAX),
            request.page_token,
            _STATE_FILTERS.get(wanted, 0),
        )
        return lro.ListOperationsResponse(
            operations=[job_to_operation(j) for j in jobs], next_page_token=token
        )

    async def CancelOperation(  # noqa: N802 - gRPC method name
        self, request: lro.CancelOperationRequest, context: Context
    ) -> empty_pb2.Empty:
        job_id = job_id_of(request.name)
        job = await self._link.cancel(_caller(), job_id)
        if job.cancel_requested:
            # Running here: stop it now rather than at the next lease renewal.
            self._cancel_local(job_id)
        return empty_pb2.Empty()

    async def DeleteOperation(  # noqa: N802 - gRPC method name
        self, request: lro.DeleteOperationRequest, context: Context
    ) -> empty_pb2.Empty:
        await self._link.delete(_caller(), job_id_of(request.name))
        return empty_pb2.Empty()

    async def WaitOperation(  # noqa: N802 - gRPC method name
        self, request: lro.WaitOperationRequest, context: Context
    ) -> lro.Operation:
        """Returns once the operation is done, or when the request's timeout (default and
        at most the server's REQUEST_TIMEOUT_S) or the call's deadline comes: then with the
        operation as it stands, done false."""
        job_id = job_id_of(request.name)
        budget = self._max_wait_s
        if request.HasField("timeout"):
            budget = min(budget, max(0.0, request.timeout.ToTimedelta().total_seconds()))
        remaining = context.time_remaining()
        if remaining is not None:
            budget = min(budget, max(0.0, remaining - _DEADLINE_SLACK_S))
        until = time.monotonic() + budget
        while True:
            left = until - time.monotonic()
            operation = job_to_operation(
                await self._link.get(_caller(), job_id, rpc_timeout_s=max(1.0, min(left, 10.0)))
            )
            left = until - time.monotonic()
            if operation.done or left <= 0:
                return operation
            await asyncio.sleep(min(_WAIT_POLL_S, left))
