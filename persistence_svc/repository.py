"""Every SQL statement of the service (asyncpg).

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

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeAlias, TypeVar
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from persistence_svc import paging
from persistence_svc.errors import DatabaseUnavailableError, FieldViolation, InvalidArgumentError
from persistence_svc.records import (
    AttemptData,
    EventKind,
    EventRecord,
    FailureData,
    InspectionDetail,
    InspectionPage,
    InspectionRow,
    InspectionStatus,
    PageCursor,
    RecordOutcome,
    RequestData,
    ResultData,
)

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
WriteObserver = Callable[[float], None]
DbConnection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"

# Errors after which the connection (or the server) is gone: retry on a fresh connection, and
# report UNAVAILABLE if that keeps failing.
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.CannotConnectNowError,
    # Reconnecting to a database that was dropped or whose credentials changed: an operator has
    # to act, and until then callers must keep their events and retry.
    asyncpg.exceptions.InvalidCatalogNameError,
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,
    # A backend terminated while its connection sat idle in the pool can leave asyncpg's
    # protocol in a state it reports as "another operation is in progress".
    asyncpg.exceptions.InternalClientError,
)
# Errors a plain re-run of the transaction resolves.
_CONFLICT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)
# Errors caused by the data of one event: retrying the batch cannot help.
_DATA_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.IntegrityConstraintViolationError,
)


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, _CONNECTION_ERRORS):
        return True
    # asyncpg reports use of a connection that died in between as a bare InterfaceError.
    return isinstance(exc, asyncpg.exceptions.InterfaceError) and "closed" in str(exc)


def lock_key(inspection_id: UUID) -> int:
    """Advisory-lock key of an inspection (a collision only serialises two unrelated ids)."""
    return int.from_bytes(inspection_id.bytes[:8], "big", signed=True)


# --- statements ------------------------------------------------------------------------------

# Array order is the lock order: the caller sorts the keys.
_LOCK = "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k"

_CLAIM_EVENTS = """
INSERT INTO processed_events (event_id, inspection_id, kind)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[])
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
"""

# is_latest of a new row: NOT EXISTS (an inspection already naming it as previous).
_UPSERT_REQUEST = """
INSERT INTO inspection_requests AS r (
    inspection_id, shipping_id, product_id, product_name, previous_inspection_id, method,
    legacy_questions, questions, images, request_recorded, is_latest, created_at, caller)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9::jsonb, true, NOT EXISTS (
            SELECT 1 FROM inspection_requests n WHERE n.previous_inspection_id = $1),
        COALESCE($10::timestamptz, now()), $11)
ON CONFLICT (inspection_id) DO UPDATE SET
    shipping_id = EXCLUDED.shipping_id,
    product_id = EXCLUDED.product_id,
    product_name = EXCLUDED.product_name,
    previous_inspection_id = EXCLUDED.previous_inspection_id,
    method = EXCLUDED.method,
    caller = EXCLUDED.caller,
    legacy_questions = EXCLUDED.legacy_questions,
    questions = EXCLUDED.questions,
    -- A request re-sent before its images were fetched must not erase the fetched ones.
    images = CASE WHEN EXCLUDED.images = '[]'::jsonb THEN r.images ELSE EXCLUDED.images END,
    request_recorded = true,
    -- The request's own time wins over a placeholder's; between two requests, the earlier.
    created_at = CASE WHEN r.request_recorded
                      THEN LEAST(r.created_at, COALESCE($10::timestamptz, r.created_at))
                      ELSE COALESCE($10::timestamptz, r.created_at) END,
    updated_at = now()
"""

# Creates the placeholder row of an inspection whose request has not arrived, or merges the
# status (completed > failed > pending) and, for placeholders, the ids a result carries.
_TOUCH_INSPECTION = """
INSERT INTO inspection_requests AS r (
    inspection_id, shipping_id, product_id, previous_inspection_id, status, is_latest,
    created_at)
VALUES ($1, $2, $3, $4, $5, NOT EXISTS (
            SELECT 1 FROM inspection_requests n WHERE n.previous_inspection_id = $1),
        COALESCE($6::timestamptz, now()))
ON CONFLICT (inspection_id) DO UPDATE SET
    shipping_id = CASE WHEN r.request_recorded OR EXCLUDED.shipping_id = ''
                       THEN r.shipping_id ELSE EXCLUDED.shipping_id END,
    product_id = CASE WHEN r.request_recorded OR EXCLUDED.product_id = ''
                      THEN r.product_id ELSE EXCLUDED.product_id END,
    previous_inspection_id = CASE WHEN r.request_recorded THEN r.previous_inspection_id
                                  ELSE COALESCE(EXCLUDED.previous_inspection_id,
                                                r.previous_inspection_id) END,
    status = CASE WHEN 'completed' IN (r.status, EXCLUDED.status) THEN 'completed'
                  WHEN 'failed' IN (r.status, EXCLUDED.status) THEN 'failed'
                  ELSE 'pending' END,
    updated_at = now()
"""

_MARK_NOT_LATEST = """
UPDATE inspection_requests SET is_latest = false, updated_at = now()
WHERE inspection_id = $1 AND is_latest
"""

_UPSERT_ATTEMPT = """
INSERT INTO inspection_attempts (
    inspection_id, attempt_number, prompt, prompt_sha256, template_version, template_sha256,
    raw_output, parsed_output, valid, validation_errors, prompt_tokens, completion_tokens,
    duration_ms, constrained, model_name, model_revision, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10::jsonb, $11, $12, $13, $14, $15, $16,
        COALESCE($17::timestamptz, now()))
ON CONFLICT (inspection_id, attempt_number) DO UPDATE SET
    prompt = EXCLUDED.prompt,
    prompt_sha256 = EXCLUDED.prompt_sha256,
    template_version = EXCLUDED.template_version,
    template_sha256 = EXCLUDED.template_sha256,
    raw_output = EXCLUDED.raw_output,
    parsed_output = EXCLUDED.parsed_output,
    valid = EXCLUDED.valid,
    validation_errors = EXCLUDED.validation_errors,
    prompt_tokens = EXCLUDED.prompt_tokens,
    completion_tokens = EXCLUDED.completion_tokens,
    duration_ms = EXCLUDED.duration_ms,
    constrained = EXCLUDED.constrained,
    model_name = EXCLUDED.model_name,
    model_revision = EXCLUDED.model_revision,
    created_at = EXCLUDED.created_at
"""

_UPSERT_RESULT = """
INSERT INTO inspection_results (
    inspection_id, decision, recommendation, match_score, payload, created_at)
VALUES ($1, $2, $3, $4, $5::jsonb, COALESCE($6::timestamptz, now()))
ON CONFLICT (inspection_id) DO UPDATE SET
    decision = EXCLUDED.decision,
    recommendation = EXCLUDED.recommendation,
    match_score = EXCLUDED.match_score,
    payload = EXCLUDED.payload,
    created_at = EXCLUDED.created_at
"""

_INSERT_FAILURE = """
INSERT INTO inspection_failures (
    event_id, inspection_id, stage, reason, message, status_code, created_at)
VALUES ($1, $2, $3, $4, $5, $6, COALESCE($7::timestamptz, now()))
ON CONFLICT (event_id) DO NOTHING
"""

_SELECT_RECORDS = """
SELECT r.inspection_id, r.shipping_id, r.product_id, r.product_name, r.previous_inspection_id,
       r.method, r.caller, r.legacy_questions, r.questions, r.images, r.request_recorded,
       r.is_latest, r.status, r.created_at, r.updated_at,
       res.payload AS result_payload,
       f.stage AS failure_stage, f.reason AS failure_reason, f.message AS failure_message,
       f.status_code AS failure_status_code
FROM inspection_requests r
LEFT JOIN inspection_results res ON res.inspection_id = r.inspection_id
LEFT JOIN LATERAL (
    SELECT stage, reason, message, status_code FROM inspection_failures fl
    WHERE fl.inspection_id = r.inspection_id
    ORDER BY fl.created_at DESC, fl.event_id DESC
    LIMIT 1
) f ON true
"""

_GET_RECORD = _SELECT_RECORDS + "WHERE r.inspection_id = $1"

_GET_ATTEMPTS = """
SELECT attempt_number, prompt, prompt_sha256, template_version, template_sha256, raw_output,
       parsed_output, valid, validation_errors, prompt_tokens, completion_tokens, duration_ms,
       constrained, model_name, model_revision
FROM inspection_attempts WHERE inspection_id = $1 ORDER BY attempt_number
"""

_LIST_FIRST_PAGE = (
    _SELECT_RECORDS
    + """WHERE r.shipping_id = $1
ORDER BY r.created_at DESC, r.inspection_id DESC
LIMIT $2"""
)

_LIST_NEXT_PAGE = (
    _SELECT_RECORDS
    + """WHERE r.shipping_id = $1 AND (r.created_at, r.inspection_id) < ($3, $4)
ORDER BY r.created_at DESC, r.inspection_id DESC
LIMIT $2"""
)


# --- rows ------------------------------------------------------------------------------------


def _row_to_inspection(row: asyncpg.Record) -> InspectionRow:
    failure = None
    if row["failure_stage"] is not None:
        failure = FailureData(
            stage=row["failure_stage"],
            reason=row["failure_reason"],
            message=row["failure_message"],
            status_code=row["failure_status_code"],
        )
    return InspectionRow(
        inspection_id=row["inspection_id"],
        shipping_id=row["shipping_id"],
        product_id=row["product_id"],
        product_name=row["product_name"],
        previous_inspection_id=row["previous_inspection_id"],
        method=row["method"],
        caller=row["caller"],
        legacy_questions=row["legacy_questions"],
        questions_json=row["questions"],
        images_json=row["images"],
        request_recorded=row["request_recorded"],
        is_latest=row["is_latest"],
        status=InspectionStatus(row["status"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        result_payload_json=row["result_payload"],
        failure=failure,
    )


def _row_to_attempt(row: asyncpg.Record) -> AttemptData:
    return AttemptData(
        attempt_number=row["attempt_number"],
        prompt=row["prompt"],
        prompt_sha256=row["prompt_sha256"],
        template_version=row["template_version"],
        template_sha256=row["template_sha256"],
        raw_output=row["raw_output"],
        parsed_output_json=row["parsed_output"],
        valid=row["valid"],
        validation_errors_json=row["validation_errors"],
        prompt_tokens=row["prompt_tokens"],
        completion_tokens=row["completion_tokens"],
        duration_ms=row["duration_ms"],
        constrained=row["constrained"],
        model_name=row["model_name"],
        model_revision=row["model_revision"],
    )


class _EventRejectedError(Exception):
    def __init__(self, index: int, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.index = index
        self.cause = cause


# --- repository ------------------------------------------------------------------------------


class Repository:
    """Reads and writes inspections. Raises DatabaseUnavailableError when the database cannot be
    reached, InvalidArgumentError when the database refuses an event or a page token is bad."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        transaction_retries: int = 2,
        acquire_timeout_s: float = 30.0,
        on_write: WriteObserver | None = None,
    ) -> None:
        self._pool = pool
        self._retries = transaction_retries
        self._acquire_timeout_s = acquire_timeout_s
        self._on_write = on_write

    # --- plumbing

    async def _run(
        self,
        work: Callable[[DbConnection], Awaitable[_T]],
        *,
        readonly: bool = False,
    ) -> _T:
        attempt = 0
        while True:
            try:
                async with (
                    self._pool.acquire(timeout=self._acquire_timeout_s) as conn,
                    conn.transaction(
                        isolation="repeatable_read" if readonly else "read_committed",
                        readonly=readonly,
                    ),
                ):
                    return await work(conn)
            except _CONFLICT_ERRORS as exc:
                if attempt >= self._retries:
                    raise DatabaseUnavailableError(f"transaction kept conflicting: {exc}") from exc
                logger.info("transaction conflict, retrying: %s", exc)
            except Exception as exc:
                if not _is_connection_error(exc):
                    raise
                if attempt >= self._retries:
                    raise DatabaseUnavailableError(f"database unavailable: {exc}") from exc
                logger.warning("database connection lost, retrying on a new one: %s", exc)
                # A server restart or pg_terminate_backend kills every pooled connection at once.
                await self._pool.expire_connections()
                await asyncio.sleep(0.05 * 2**attempt)
            attempt += 1

    # --- writes

    async def record_events(self, events: list[EventRecord]) -> RecordOutcome:
        """Applies the events not applied before, all in one transaction."""
        if not events:
            return RecordOutcome(applied=0, duplicates=0)
        started = time.perf_counter()
        try:
            applied_ids = await self._run(lambda conn: self._apply_batch(conn, events))
        except _EventRejectedError as exc:
            raise InvalidArgumentError(
                f"event {exc.index} was refused by the database: {exc.cause}",
                [FieldViolation(f"events[{exc.index}]", str(exc.cause))],
            ) from exc.cause
        if self._on_write is not None:
            self._on_write(time.perf_counter() - started)
        applied_by_kind: Counter[EventKind] = Counter()
        duplicates_by_kind: Counter[EventKind] = Counter()
        for event in events:
            if event.event_id in applied_ids:
                applied_by_kind[event.kind] += 1
                # A repeat of the same id later in the batch is a duplicate.
                applied_ids.discard(event.event_id)
            else:
                duplicates_by_kind[event.kind] += 1
        applied = sum(applied_by_kind.values())
        return RecordOutcome(
            applied=applied,
            duplicates=len(events) - applied,
            applied_by_kind=dict(applied_by_kind),
            duplicates_by_kind=dict(duplicates_by_kind),
        )

    async def _apply_batch(self, conn: DbConnection, events: list[EventRecord]) -> set[UUID]:
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
        await conn.execute(_LOCK, sorted(keys))

        claimed = await conn.fetch(
            _CLAIM_EVENTS,
            [e.event_id for e in unique],
            [e.inspection_id for e in unique],
            [e.kind.value for e in unique],
        )
        new_ids: set[UUID] = {row["event_id"] for row in claimed}
        for event in unique:
            if event.event_id not in new_ids:
                continue
            try:
                await self._apply_event(conn, event)
            except _DATA_ERRORS as exc:
                raise _EventRejectedError(first_index[event.event_id], exc) from exc
        return new_ids

    async def _apply_event(self, conn: DbConnection, event: EventRecord) -> None:
        payload = event.payload
        iid = event.inspection_id
        when = event.occur_time
        if isinstance(payload, RequestData):
            await conn.execute(
                _UPSERT_REQUEST,
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
            )
        elif isinstance(payload, AttemptData):
            await self._touch(conn, iid, when, InspectionStatus.PENDING)
            await conn.execute(
                _UPSERT_ATTEMPT,
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
            await self._touch(
                conn,
                iid,
                when,
                InspectionStatus.COMPLETED,
                shipping_id=payload.shipping_id,
                product_id=payload.product_id,
                previous=payload.previous_inspection_id,
            )
            await conn.execute(
                _UPSERT_RESULT,
                iid,
                payload.decision,
                payload.recommendation,
                payload.match_score,
                payload.payload_json,
                when,
            )
        else:
            await self._touch(conn, iid, when, InspectionStatus.FAILED)
            await conn.execute(
                _INSERT_FAILURE,
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
            await conn.execute(_MARK_NOT_LATEST, previous)

    async def _touch(
        self,
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
            _TOUCH_INSPECTION,
            inspection_id,
            shipping_id,
            product_id,
            previous,
            status.value,
            when,
        )

    # --- reads

    async def get_inspection(self, inspection_id: UUID) -> InspectionDetail | None:
        async def work(conn: DbConnection) -> InspectionDetail | None:
            row = await conn.fetchrow(_GET_RECORD, inspection_id)
            if row is None:
                return None
            attempts = await conn.fetch(_GET_ATTEMPTS, inspection_id)
            return InspectionDetail(
                row=_row_to_inspection(row), attempts=[_row_to_attempt(a) for a in attempts]
            )

        return await self._run(work, readonly=True)

    async def list_inspections(
        self, shipping_id: str, page_size: int, page_token: str = ""
    ) -> InspectionPage:
        """One page of a shipment's inspections, newest first. ``page_token`` must come from a
        previous page of the same shipping_id (InvalidArgumentError otherwise)."""
        fingerprint = paging.filter_fingerprint(shipping_id)
        cursor = paging.decode_page_token(page_token, fingerprint) if page_token else None

        async def work(conn: DbConnection) -> list[asyncpg.Record]:
            # One row more than asked tells whether another page exists.
            if cursor is None:
                return await conn.fetch(_LIST_FIRST_PAGE, shipping_id, page_size + 1)
            return await conn.fetch(
                _LIST_NEXT_PAGE,
                shipping_id,
                page_size + 1,
                cursor.created_at,
                cursor.inspection_id,
            )

        records = await self._run(work, readonly=True)
        rows = [_row_to_inspection(r) for r in records[:page_size]]
        next_token = ""
        if len(records) > page_size and rows:
            last = rows[-1]
            next_token = paging.encode_page_token(
                PageCursor(created_at=last.created_at, inspection_id=last.inspection_id),
                fingerprint,
            )
        return InspectionPage(rows=rows, next_page_token=next_token)

    async def ping(self) -> None:
        """Raises DatabaseUnavailableError unless a query round-trips."""
        await self._run(lambda conn: conn.fetchval("SELECT 1"), readonly=True)
