"""Errors of the persistence domain, and the table (:data:`ERROR_TABLE`) with which the error
interceptor reports each to callers. The servicer and the repository only raise these."""

from __future__ import annotations

from dataclasses import dataclass

from grpc import StatusCode

from svc_common.grpc_errors import ErrorInterceptor, ErrorTable, Rule
from svc_common.grpc_errors import error_interceptor as _error_interceptor

ERROR_DOMAIN = "persistence.rpi.v1"


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field, named by its protobuf path (e.g. ``events[3].event_id``)."""

    field: str
    description: str


class PersistenceError(Exception):
    """Base of the errors the service reports to callers."""


class InvalidArgumentError(PersistenceError):
    """The caller sent something that will never succeed as is: do not retry it."""

    def __init__(self, message: str, violations: list[FieldViolation] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.violations = list(violations or [])


class NotFoundError(PersistenceError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class DatabaseUnavailableError(PersistenceError):
    """The database cannot be reached (or is not ready yet): the caller should retry later."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class JobNotFoundError(NotFoundError):
    """No job of this id for this caller."""


class JobStateError(PersistenceError):
    """A job call that conflicts with the job's state; ``reason`` says how (ERROR_TABLE)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


ERROR_TABLE = ErrorTable(
    domain=ERROR_DOMAIN,
    rules={
        InvalidArgumentError: Rule(StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
        NotFoundError: Rule(StatusCode.NOT_FOUND, "INSPECTION_NOT_FOUND"),
        JobNotFoundError: Rule(StatusCode.NOT_FOUND, "JOB_NOT_FOUND"),
        JobStateError: {
            "REQUEST_ID_REUSED": Rule(StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED"),
            "INSPECTION_ID_TAKEN": Rule(StatusCode.ALREADY_EXISTS, "INSPECTION_ID_TAKEN"),
            "LEASE_LOST": Rule(StatusCode.FAILED_PRECONDITION, "LEASE_LOST"),
            "JOB_NOT_FINISHED": Rule(StatusCode.FAILED_PRECONDITION, "JOB_NOT_FINISHED"),
        },
        DatabaseUnavailableError: Rule(
            StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE", retryable=True
        ),
        # Any other error of the domain comes from the database layer: retry later.
        PersistenceError: Rule(StatusCode.UNAVAILABLE, "DATABASE_UNAVAILABLE", retryable=True),
    },
)


def error_interceptor() -> ErrorInterceptor:
    """The persistence service's error interceptor: the last (innermost) server interceptor."""
    return _error_interceptor(ERROR_TABLE)
