"""Rows the repository reads and writes, independent of protobuf and of SQL.

JSONB columns travel as JSON text: conversion encodes them and responses decodes them (off the
event loop for big batches), the repository passes them through untouched.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID


class EventKind(enum.StrEnum):
    REQUEST_RECEIVED = "request_received"
    ATTEMPT_RECORDED = "attempt_recorded"
    RESULT_RECORDED = "result_recorded"
    FAILURE_RECORDED = "failure_recorded"


class InspectionStatus(enum.StrEnum):
    PENDING = "pending"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass(frozen=True)
class RequestData:
    shipping_id: str
    product_id: str
    product_name: str
    previous_inspection_id: UUID | None
    method: str
    legacy_questions: bool
    questions_json: str
    # Image digests, sizes and sources: never bytes.
    images_json: str
    # The authenticated caller's name (never its credential).
    caller: str = ""
    # (pickup image index, unsigned 64-bit perceptual hash), for the reused-photo lookup.
    pickup_hashes: tuple[tuple[int, int], ...] = ()
    vendor_id: str = ""


@dataclass(frozen=True)
class AttemptData:
    attempt_number: int
    prompt: str
    prompt_sha256: str
    template_version: str
    template_sha256: str
    raw_output: str
    parsed_output_json: str | None
    valid: bool
    validation_errors_json: str
    prompt_tokens: int
    completion_tokens: int
    duration_ms: float
    constrained: bool
    model_name: str
    model_revision: str


@dataclass(frozen=True)
class ResultData:
    # Copied from the Inspection so a result that arrives before its request is still listed.
    shipping_id: str
    product_id: str
    previous_inspection_id: UUID | None
    decision: str
    recommendation: str
    match_score: float
    payload_json: str
    export_uri: str = ""  # where the result export wrote it (RESULT_EXPORT_URI)


@dataclass(frozen=True)
class FailureData:
    stage: str
    reason: str
    message: str
    status_code: str


EventPayload = RequestData | AttemptData | ResultData | FailureData

_KIND_BY_TYPE: dict[type, EventKind] = {
    RequestData: EventKind.REQUEST_RECEIVED,
    AttemptData: EventKind.ATTEMPT_RECORDED,
    ResultData: EventKind.RESULT_RECORDED,
    FailureData: EventKind.FAILURE_RECORDED,
}


@dataclass(frozen=True)
class EventRecord:
    event_id: UUID
    inspection_id: UUID
    # When the producer saw it happen; None = when it is recorded.
    occur_time: datetime | None
    payload: EventPayload

    @property
    def kind(self) -> EventKind:
        return _KIND_BY_TYPE[type(self.payload)]

    @property
    def previous_inspection_id(self) -> UUID | None:
        if isinstance(self.payload, RequestData | ResultData):
            return self.payload.previous_inspection_id
        return None


@dataclass(frozen=True)
class RecordOutcome:
    applied: int
    duplicates: int
    # Per event kind, for metrics.
    applied_by_kind: dict[EventKind, int] = field(default_factory=dict)
    duplicates_by_kind: dict[EventKind, int] = field(default_factory=dict)


@dataclass(frozen=True)
class InspectionRow:
    inspection_id: UUID
    shipping_id: str
    product_id: str
    product_name: str
    previous_inspection_id: UUID | None
    method: str
    caller: str
    legacy_questions: bool
    questions_json: str
    images_json: str
    # False while only attempts, results or failures of the inspection have arrived.
    request_recorded: bool
    is_latest: bool
    status: InspectionStatus
    created_at: datetime
    updated_at: datetime
    result_payload_json: str | None
    # The most recent failure, if any.
    failure: FailureData | None
    vendor_id: str = ""
    export_uri: str = ""


@dataclass(frozen=True)
class InspectionDetail:
    row: InspectionRow
    attempts: list[AttemptData]


@dataclass(frozen=True)
class PageCursor:
    """Position after the last row of a page, in (created_at, inspection_id) descending order."""

    created_at: datetime
    inspection_id: UUID


@dataclass(frozen=True)
class InspectionPage:
    rows: list[InspectionRow]
    next_page_token: str
