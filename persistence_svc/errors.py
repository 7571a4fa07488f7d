"""Errors of the persistence domain. The gRPC layer maps each to a status code; nothing here
imports grpc."""

from __future__ import annotations

from dataclasses import dataclass


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
