"""The inspection service's error table: each domain reason -> gRPC code, wire reason and
whether the caller may retry. ``svc_common.grpc_errors`` builds the statuses from it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from grpc import StatusCode

from inference_svc.domain.errors import InspectionError, Reason
from svc_common.grpc_errors import ErrorInterceptor, ErrorTable, Rule
from svc_common.grpc_errors import error_interceptor as _error_interceptor
from svc_common.logging import inspection_id_var

ERROR_DOMAIN = "inspection.rpi.v1"

REASONS: Mapping[str, Rule] = {
    # Invalid input has the same reason in every service of the platform.
    Reason.INVALID_ARGUMENT: Rule(StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
    Reason.QUESTIONS_INVALID: Rule(StatusCode.INVALID_ARGUMENT, "QUESTIONS_INVALID"),
    Reason.IMAGE_FETCH_FAILED: Rule(StatusCode.INVALID_ARGUMENT, "IMAGE_FETCH_FAILED"),
    Reason.IMAGE_SOURCE_UNAVAILABLE: Rule(
        StatusCode.UNAVAILABLE, "IMAGE_SOURCE_UNAVAILABLE", retryable=True
    ),
    Reason.IMAGE_TOO_LARGE: Rule(StatusCode.INVALID_ARGUMENT, "IMAGE_TOO_LARGE"),
    Reason.IMAGE_UNDECODABLE: Rule(StatusCode.INVALID_ARGUMENT, "IMAGE_UNDECODABLE"),
    Reason.IMAGE_URL_FORBIDDEN: Rule(StatusCode.INVALID_ARGUMENT, "IMAGE_URL_FORBIDDEN"),
    Reason.MODEL_OUTPUT_INVALID: Rule(StatusCode.INTERNAL, "MODEL_OUTPUT_INVALID"),
    Reason.MODEL_NOT_READY: Rule(StatusCode.UNAVAILABLE, "MODEL_NOT_READY", retryable=True),
    Reason.OVERLOADED: Rule(StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED", retryable=True),
    Reason.EVENT_SPOOL_FULL: Rule(
        StatusCode.RESOURCE_EXHAUSTED, "EVENT_SPOOL_FULL", retryable=True
    ),
    Reason.DRAINING: Rule(StatusCode.UNAVAILABLE, "DRAINING", retryable=True),
    Reason.DEADLINE_EXCEEDED: Rule(StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED"),
    Reason.CANCELLED: Rule(StatusCode.CANCELLED, "CANCELLED"),
    Reason.INTERNAL: Rule(StatusCode.INTERNAL, "INTERNAL"),
    Reason.OPERATION_NOT_FOUND: Rule(StatusCode.NOT_FOUND, "OPERATION_NOT_FOUND"),
    Reason.OPERATION_NOT_FINISHED: Rule(StatusCode.FAILED_PRECONDITION, "OPERATION_NOT_FINISHED"),
    Reason.REQUEST_ID_REUSED: Rule(StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED"),
    Reason.CALLBACK_URL_FORBIDDEN: Rule(StatusCode.INVALID_ARGUMENT, "CALLBACK_URL_FORBIDDEN"),
    Reason.EXPORT_URI_FORBIDDEN: Rule(StatusCode.INVALID_ARGUMENT, "EXPORT_URI_FORBIDDEN"),
    Reason.JOBS_UNAVAILABLE: Rule(StatusCode.UNAVAILABLE, "JOBS_UNAVAILABLE", retryable=True),
}


def _metadata(exc: BaseException, request: Any) -> dict[str, str]:
    """ErrorInfo.metadata: the inspection (the id the server generated, else the caller's) and
    the pipeline stage where the failure happened."""
    metadata: dict[str, str] = {}
    inspection_id = inspection_id_var.get() or getattr(request, "inspection_id", "")
    if inspection_id:
        metadata["inspection_id"] = str(inspection_id)
    stage = getattr(exc, "stage", None)
    if stage is not None:
        metadata["stage"] = str(getattr(stage, "value", stage))
    return metadata


ERROR_TABLE = ErrorTable(
    domain=ERROR_DOMAIN, rules={InspectionError: REASONS}, metadata_hook=_metadata
)


def error_interceptor() -> ErrorInterceptor:
    """The inspection service's error interceptor: the last (innermost) server interceptor."""
    return _error_interceptor(ERROR_TABLE)
