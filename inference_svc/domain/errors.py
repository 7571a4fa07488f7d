"""Domain errors. The gRPC layer maps each to a status code with google.rpc details.

Domain code never imports grpc: it raises these, and `inference_svc.grpc_api.errors` translates.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class ErrorKind(enum.Enum):
    """What kind of failure, which decides the gRPC status code."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    CANCELLED = "CANCELLED"
    INTERNAL = "INTERNAL"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"


class Reason(enum.StrEnum):
    """Stable machine-readable reasons (google.rpc.ErrorInfo.reason)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    QUESTIONS_INVALID = "QUESTIONS_INVALID"
    IMAGE_FETCH_FAILED = "IMAGE_FETCH_FAILED"
    # The image host failed (DNS, connection, timeout, 5xx, throttling): retry later.
    IMAGE_SOURCE_UNAVAILABLE = "IMAGE_SOURCE_UNAVAILABLE"
    IMAGE_TOO_LARGE = "IMAGE_TOO_LARGE"
    IMAGE_UNDECODABLE = "IMAGE_UNDECODABLE"
    IMAGE_URL_FORBIDDEN = "IMAGE_URL_FORBIDDEN"
    MODEL_OUTPUT_INVALID = "MODEL_OUTPUT_INVALID"
    MODEL_NOT_READY = "MODEL_NOT_READY"
    OVERLOADED = "OVERLOADED"
    EVENT_SPOOL_FULL = "EVENT_SPOOL_FULL"
    DRAINING = "DRAINING"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    CANCELLED = "CANCELLED"
    INTERNAL = "INTERNAL"
    # Asynchronous inspections (docs/operations-async.md).
    OPERATION_NOT_FOUND = "OPERATION_NOT_FOUND"
    OPERATION_NOT_FINISHED = "OPERATION_NOT_FINISHED"
    REQUEST_ID_REUSED = "REQUEST_ID_REUSED"
    CALLBACK_URL_FORBIDDEN = "CALLBACK_URL_FORBIDDEN"
    EXPORT_URI_FORBIDDEN = "EXPORT_URI_FORBIDDEN"
    JOBS_UNAVAILABLE = "JOBS_UNAVAILABLE"


class Stage(enum.StrEnum):
    """Where an inspection failed; recorded with the failure (its value is the wire string)."""

    VALIDATE = "validate"
    # Refused before any work: not serving, too many in flight, records cannot be kept.
    ADMIT = "admit"
    FETCH = "fetch"
    DECODE = "decode"
    PREPROCESS = "preprocess"
    QUEUE = "queue"
    GENERATE = "generate"
    PARSE = "parse"
    DECIDE = "decide"
    RECORD = "record"


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field, named by its protobuf path (e.g. ``pickup_images[2].uri``)."""

    field: str
    description: str


@dataclass
class InspectionError(Exception):
    """A failure that ends an inspection with a clear status for the caller."""

    kind: ErrorKind
    reason: Reason
    message: str
    violations: list[FieldViolation] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    # Where it happened, recorded with the failure; None = wherever the pipeline was when it
    # was raised (the pipeline fills it in).
    stage: Stage | None = None
    retry_after_seconds: float | None = None

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.message}"


def invalid_argument(
    message: str,
    violations: list[FieldViolation] | None = None,
    reason: Reason = Reason.INVALID_ARGUMENT,
    stage: Stage = Stage.VALIDATE,
) -> InspectionError:
    return InspectionError(
        ErrorKind.INVALID_ARGUMENT, reason, message, violations or [], stage=stage
    )


def image_error(
    reason: Reason,
    field_path: str,
    message: str,
    stage: Stage,
    kind: ErrorKind = ErrorKind.INVALID_ARGUMENT,
    retry_after_seconds: float | None = None,
) -> InspectionError:
    """An image-specific failure that names the offending image (its request field path)."""
    return InspectionError(
        kind,
        reason,
        f"{field_path}: {message}",
        [FieldViolation(field_path, message)],
        metadata={"image": field_path},
        stage=stage,
        retry_after_seconds=retry_after_seconds,
    )
