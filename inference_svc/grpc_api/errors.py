"""Maps domain errors to gRPC statuses carrying google.rpc error details."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from inference_svc.domain.errors import ErrorKind, InspectionError

ERROR_DOMAIN = "inspection.rpi.v1"

_CODES: dict[ErrorKind, tuple[grpc.StatusCode, int]] = {
    ErrorKind.INVALID_ARGUMENT: (grpc.StatusCode.INVALID_ARGUMENT, code_pb2.INVALID_ARGUMENT),
    ErrorKind.RESOURCE_EXHAUSTED: (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        code_pb2.RESOURCE_EXHAUSTED,
    ),
    ErrorKind.UNAVAILABLE: (grpc.StatusCode.UNAVAILABLE, code_pb2.UNAVAILABLE),
    ErrorKind.DEADLINE_EXCEEDED: (grpc.StatusCode.DEADLINE_EXCEEDED, code_pb2.DEADLINE_EXCEEDED),
    ErrorKind.CANCELLED: (grpc.StatusCode.CANCELLED, code_pb2.CANCELLED),
    ErrorKind.INTERNAL: (grpc.StatusCode.INTERNAL, code_pb2.INTERNAL),
    ErrorKind.FAILED_PRECONDITION: (
        grpc.StatusCode.FAILED_PRECONDITION,
        code_pb2.FAILED_PRECONDITION,
    ),
}


def status_code_for(kind: ErrorKind) -> grpc.StatusCode:
    return _CODES[kind][0]


def to_status(error: InspectionError, inspection_id: str = "") -> grpc.Status:
    """Builds a status with ErrorInfo, BadRequest (when there are field violations) and
    RetryInfo (when the caller should come back later)."""
    details: list[any_pb2.Any] = []
    metadata = dict(error.metadata)
    if inspection_id:
        metadata.setdefault("inspection_id", inspection_id)
    if error.stage is not None:
        metadata.setdefault("stage", error.stage.value)
    info = any_pb2.Any()
    info.Pack(
        error_details_pb2.ErrorInfo(
            reason=error.reason.value, domain=ERROR_DOMAIN, metadata=metadata
        )
    )
    details.append(info)
    if error.violations:
        bad = any_pb2.Any()
        bad.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in error.violations
                ]
            )
        )
        details.append(bad)
    if error.retry_after_seconds is not None:
        retry = any_pb2.Any()
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(error.retry_after_seconds * 1000))
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        details.append(retry)
    return rpc_status.to_status(
        status_pb2.Status(code=_CODES[error.kind][1], message=error.message, details=details)
    )
