"""Guards that keep label values to small, fixed sets (Prometheus cardinality)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Final

OTHER: Final = "other"

# grpc status code names as Python spells them (grpc.StatusCode.X.name) -> as Go spells them
# (codes.Code.String()), the spelling go-grpc-prometheus puts in grpc_code.
GO_CODE_NAMES: Final[dict[str, str]] = {
    "OK": "OK",
    "CANCELLED": "Canceled",
    "UNKNOWN": "Unknown",
    "INVALID_ARGUMENT": "InvalidArgument",
    "DEADLINE_EXCEEDED": "DeadlineExceeded",
    "NOT_FOUND": "NotFound",
    "ALREADY_EXISTS": "AlreadyExists",
    "PERMISSION_DENIED": "PermissionDenied",
    "RESOURCE_EXHAUSTED": "ResourceExhausted",
    "FAILED_PRECONDITION": "FailedPrecondition",
    "ABORTED": "Aborted",
    "OUT_OF_RANGE": "OutOfRange",
    "UNIMPLEMENTED": "Unimplemented",
    "INTERNAL": "Internal",
    "UNAVAILABLE": "Unavailable",
    "DATA_LOSS": "DataLoss",
    "UNAUTHENTICATED": "Unauthenticated",
}


def bounded(value: str, allowed: Collection[str]) -> str:
    """``value`` when it is one of ``allowed``, else ``"other"``: an unexpected value must not
    create a new series per call, nor break the request that reports it."""
    return value if value in allowed else OTHER


def go_code_name(python_name: str) -> str:
    """``"INVALID_ARGUMENT"`` -> ``"InvalidArgument"``; a Go-spelled name passes through."""
    if python_name in GO_CODE_NAMES:
        return GO_CODE_NAMES[python_name]
    return python_name if python_name in GO_CODE_NAMES.values() else "Unknown"
