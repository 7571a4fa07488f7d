"""Applying a RecordEvents batch (asyncpg), inside the transaction the caller opened.

Recording: one transaction per RecordEvents batch. Each event's idempotency key goes into
processed_events in the same transaction as the event's effect, so a batch whose commit outcome
was unknown to the caller can be sent again safely: already-applied events are only counted as
duplicates. A whole-batch transaction rather than a savepoint per event because the response
cannot report per-event failures anyway (the batch succeeds or fails as a unit, which keeps the
caller's retry simple), one commit is one WAL flush for up to MAX_EVENTS_PER_CALL events, and
more than 64 subtransactions in one transaction overflow Postgres' per-backend subxid cache,
which slows every snapshot on the server.

Events arrive in any order: each effect first upserts the inspection_requests row (a
placeholder when the request itself has not arrived yet), merging status with
completed > failed > pending, and is_latest is kept right whichever of two chained inspections
arrives first. Concurrent batches touching the same chain are serialised by transaction-scoped
advisory locks keyed on the inspection ids, taken in one fixed order so they cannot deadlock.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from persistence_svc import image_hashes
from persistence_svc.records import (
    AttemptData,
    EventRecord,
    InspectionStatus,
    RequestData,
    ResultData,
)
from persistence_svc.repository import sql
from persistence_svc.repository.connection import DATA_ERRORS, DbConnection


def lock_key(inspection_id: UUID) -> int:
    """Advisory-lock key of an inspection (a collision only serialises two unrelated ids)."""
    return int.from_bytes(inspection_id.bytes[:8], "big", signed=True)


class EventRejectedError(Exception):
    """The database refused the event at ``index`` of the batch (its data, not the server)."""

    def __init__(self, index: int, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.index = index
        self.cause = cause


async def apply_batch(conn: DbConnection, events: list[EventRecord]) -> set[UUID]:
    """Applies the events not applied before; returns their ids."""
    first_index: dict[UUID, int] = {}
    for index, event in enumerate(events):
        first_index.setdefault(event.event_id, index)
    unique = [events[i] for i in first_index.values()]

    keys: set[int] = set()
    for event in unique:
        keys.add(lock_key(event.inspection_id))
        previous = event.previous_inspection_id
        if previous is not None:
            keys.add(lock_key(previous))
    await conn.execute(sql.LOCK, sorted(keys))

    claimed = await conn.fetch(
        sql.CLAIM_EVENTS,
        [e.event_id for e in unique],
        [e.inspection_id for e in unique],
        [e.kind.value for e in unique],
    )
    new_ids: set[UUID] = {row["event_id"] for row in claimed}
    for event in unique:
        if event.event_id not in new_ids:
            continue
        try:
            await _apply_event(conn, event)
        except DATA_ERRORS as exc:
            raise EventRejectedError(first_index[event.event_id], exc) from exc
    return new_ids


async def _apply_event(conn: DbConnection, event: EventRecord) -> None:
    payload = event.payload
    iid = event.inspection_id
    when = event.occur_time
    if isinstance(payload, RequestData):
        await conn.execute(
            sql.UPSERT_REQUEST,
            iid,
            payload.shipping_id,
            payload.product_id,
            payload.product_name,
            payload.previous_inspection_id,
            payload.method,
            payload.legacy_questions,
            payload.questions_json,
            payload.images_json,
            when,
            payload.caller,
            payload.vendor_id,
        )
        await image_hashes.store_pickup_hashes(
            conn, iid, payload.shipping_id, payload.pickup_hashes
        )
    elif isinstance(payload, AttemptData):
        await _touch(conn, iid, when, InspectionStatus.PENDING)
        await conn.execute(
            sql.UPSERT_ATTEMPT,
            iid,
            payload.attempt_number,
            payload.prompt,
            payload.prompt_sha256,
            payload.template_version,
            payload.template_sha256,
            payload.raw_output,
            payload.parsed_output_json,
            payload.valid,
            payload.validation_errors_json,
            payload.prompt_tokens,
            payload.completion_tokens,
            payload.duration_ms,
            payload.constrained,
            payload.model_name,
            payload.model_revision,
            when,
        )
    elif isinstance(payload, ResultData):
        await _touch(
            conn,
            iid,
            when,
            InspectionStatus.COMPLETED,
            shipping_id=payload.shipping_id,
            product_id=payload.product_id,
            previous=payload.previous_inspection_id,
        )
        await conn.execute(
            sql.UPSERT_RESULT,
            iid,
            payload.decision,
            payload.recommendation,
            payload.match_score,
            payload.payload_json,
            when,
            payload.export_uri,
        )
    else:
        await _touch(conn, iid, when, InspectionStatus.FAILED)
        await conn.execute(
            sql.INSERT_FAILURE,
            event.event_id,
            iid,
            payload.stage,
            payload.reason,
            payload.message,
            payload.status_code,
            when,
        )
    previous = event.previous_inspection_id
    if previous is not None:
        await conn.execute(sql.MARK_NOT_LATEST, previous)


async def _touch(
    conn: DbConnection,
    inspection_id: UUID,
    when: datetime | None,
    status: InspectionStatus,
    *,
    shipping_id: str = "",
    product_id: str = "",
    previous: UUID | None = None,
) -> None:
    await conn.execute(
        sql.TOUCH_INSPECTION,
        inspection_id,
        shipping_id,
        product_id,
        previous,
        status.value,
        when,
    )
