"""The asynchronous inspections' job queue (asyncpg), and its webhook outbox.

Why ``FOR UPDATE SKIP LOCKED`` here rather than a queue library: the workers are in the
inference pods, which never touch Postgres; they claim, renew and finish jobs through this
service's RPCs, each call its own short transaction. pgqueuer (and pg-boss, River) run the job
inside the consumer process that holds the database connection and the row lock for the
job's duration, which cannot express "claimed by a remote pod under a lease it renews over
gRPC". A lease is a token and an expiry on the row instead: a claim takes queued rows (and
running rows whose lease ran out) with SKIP LOCKED, so concurrent claimers never get the same
row and never wait for each other; every later write names the token, so a worker whose lease
was taken over can no longer change the job.

Protobuf payloads (request, progress, result, error) are stored as serialised bytes: this
module neither reads nor builds them.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from persistence_svc.records import EventRecord, PageCursor, ResultData
from persistence_svc.repository import job_sql as sql
from persistence_svc.repository.connection import DbConnection
from persistence_svc.repository.writes import apply_batch


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class Outcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRY = "retry"
    CANCELLED = "cancelled"


class LeaseState(enum.Enum):
    HELD = 1
    CANCEL_REQUESTED = 2
    LOST = 3


@dataclass(frozen=True)
class JobRow:
    job_id: UUID
    caller: str
    request_id: str
    inspection_id: UUID
    state: JobState
    attempts: int
    cancel_requested: bool
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    request: bytes | None = None
    progress: bytes | None = None
    result: bytes | None = None
    error: bytes | None = None
    request_sha256: bytes = b""
    queue_position: int = 0
    lease_token: UUID | None = None
    export_uri: str = ""
    # The outbox row; webhook_state is '' without a callback.
    webhook_state: str = ""
    webhook_url: str = ""
    webhook_id: str = ""
    webhook_attempts: int = 0
    webhook_last_error: str = ""
    webhook_next_attempt_at: datetime | None = None


@dataclass(frozen=True)
class Finished:
    """A job that ended in a sweep (its lease ran out once too often, or while cancelling)."""

    job_id: UUID
    state: JobState


def _row(record: asyncpg.Record) -> JobRow:
    return JobRow(
        job_id=record["job_id"],
        caller=record["caller"],
        request_id=record["request_id"],
        inspection_id=record["inspection_id"],
        state=JobState(record["state"]),
        attempts=record["attempts"],
        cancel_requested=record["cancel_requested"],
        created_at=record["created_at"],
        updated_at=record["updated_at"],
        started_at=record["started_at"],
        ended_at=record["ended_at"],
        request=record.get("request"),
        progress=record["progress"],
        result=record["result"],
        error=record["error"],
        request_sha256=record["request_sha256"],
        queue_position=int(record["queue_position"]),
        lease_token=record["lease_token"],
        export_uri=record["export_uri"],
        webhook_state=record["webhook_state"],
        webhook_url=record["webhook_url"],
        webhook_id=record["webhook_id"],
        webhook_attempts=record["webhook_attempts"],
        webhook_last_error=record["webhook_last_error"],
        webhook_next_attempt_at=record["webhook_next_attempt_at"],
    )


class RequestIdReusedError(Exception):
    """The caller's request_id names a job of another request."""


class InspectionIdTakenError(Exception):
    """Another job already runs the request's inspection_id."""


class LeaseLostError(Exception):
    """The job is no longer leased under this token."""


class JobNotFinishedError(Exception):
    """Only a finished job can be deleted."""


async def create(
    conn: DbConnection,
    *,
    job_id: UUID,
    caller: str,
    request_id: str,
    request_sha256: bytes,
    inspection_id: UUID,
    request: bytes,
    callback_url: str,
    export_uri: str = "",
) -> tuple[JobRow, bool]:
    """The job queued, or the one already under (caller, request_id); (row, created)."""
    inserted = await conn.fetchval(
        sql.INSERT, job_id, caller, request_id, request_sha256, inspection_id, request, export_uri
    )
    if inserted is None:
        existing = None
        if request_id:
            existing = await conn.fetchrow(sql.BY_REQUEST_ID, caller, request_id)
        if existing is None:
            raise InspectionIdTakenError(str(inspection_id))
        if existing["request_sha256"] != request_sha256:
            raise RequestIdReusedError(request_id)
        found = await get(conn, existing["job_id"], caller)
        if found is None:  # deleted between the two statements: the caller may retry
            raise RequestIdReusedError(request_id)
        return found, False
    if callback_url:
        await conn.execute(sql.INSERT_WEBHOOK, job_id, f"msg_{job_id.hex}", caller, callback_url)
    row = await get(conn, job_id, caller)
    assert row is not None  # inserted by this transaction
    return row, True


async def get(conn: DbConnection, job_id: UUID, caller: str) -> JobRow | None:
    record = await conn.fetchrow(sql.SELECT_ONE, job_id, caller)
    return None if record is None else _row(record)


async def get_any(conn: DbConnection, job_id: UUID) -> JobRow | None:
    """The job whoever submitted it (for the worker that ran it)."""
    record = await conn.fetchrow(sql.SELECT_ONE.replace("AND j.caller = $2", ""), job_id)
    return None if record is None else _row(record)


async def list_page(
    conn: DbConnection,
    caller: str,
    state: JobState | None,
    limit: int,
    cursor: PageCursor | None,
) -> list[JobRow]:
    """Up to ``limit`` jobs of the caller, newest first, after ``cursor`` (requests left out)."""
    conditions = ["j.caller = $1"]
    args: list[object] = [caller, limit]
    if state is not None:
        args.append(state.value)
        conditions.append(f"j.state = ${len(args)}")
    if cursor is not None:
        args.extend([cursor.created_at, cursor.inspection_id])
        conditions.append(f"(j.created_at, j.job_id) < (${len(args) - 1}, ${len(args)})")
    query = f"""
        SELECT {sql.COLUMNS}, {sql.QUEUE_POSITION}
        FROM inspection_jobs j LEFT JOIN webhook_deliveries w USING (job_id)
        WHERE {" AND ".join(conditions)}
        ORDER BY j.created_at DESC, j.job_id DESC
        LIMIT $2
    """  # noqa: S608 - the conditions are fixed text; every value is a bound parameter
    return [_row(r) for r in await conn.fetch(query, *args)]


async def cancel(
    conn: DbConnection, job_id: UUID, caller: str, cancelled_error: bytes, retention_s: float
) -> JobRow | None:
    """Cancels a queued job, flags a running one; a finished one is left. None: no such job."""
    state = await conn.fetchval(sql.CANCEL, job_id, caller, cancelled_error, retention_s)
    if state == JobState.CANCELLED:
        await conn.execute(sql.WEBHOOK_DUE, [job_id])
    return await get(conn, job_id, caller)


async def expire_leases(
    conn: DbConnection,
    max_attempts: int,
    cancelled_error: bytes,
    lost_error: bytes,
    retention_s: float,
) -> list[Finished]:
    """Ends the running jobs whose lease ran out and that may not run again."""
    records = await conn.fetch(
        sql.EXPIRE_LEASES, max_attempts, cancelled_error, lost_error, retention_s
    )
    ended = [Finished(r["job_id"], JobState(r["state"])) for r in records]
    if ended:
        await conn.execute(sql.WEBHOOK_DUE, [f.job_id for f in ended])
    return ended


async def claim(
    conn: DbConnection, worker: str, max_jobs: int, lease_s: float, max_attempts: int
) -> tuple[list[JobRow], int]:
    """Jobs taken for ``worker``: expired leases first (they waited longest), then the queue
    in submit order. Returns (jobs, how many were taken back from an expired lease)."""
    records = list(await conn.fetch(sql.CLAIM_EXPIRED, max_jobs, worker, lease_s, max_attempts))
    reclaimed = len(records)
    if len(records) < max_jobs:
        records += await conn.fetch(sql.CLAIM_QUEUED, max_jobs - len(records), worker, lease_s)
    return [_row(r) for r in records], reclaimed


async def renew(
    conn: DbConnection,
    leases: list[tuple[UUID, UUID, bytes | None]],
    lease_s: float,
) -> list[LeaseState]:
    """Per (job_id, lease_token, progress), in order: held, cancel requested, or lost."""
    records = await conn.fetch(
        sql.RENEW,
        [job for job, _, _ in leases],
        [token for _, token, _ in leases],
        [progress for _, _, progress in leases],
        lease_s,
    )
    held = {(r["job_id"], r["token"]): r["cancel_requested"] for r in records}
    return [
        LeaseState.LOST
        if (job, token) not in held
        else (LeaseState.CANCEL_REQUESTED if held[job, token] else LeaseState.HELD)
        for job, token, _ in leases
    ]


async def finish(
    conn: DbConnection,
    *,
    job_id: UUID,
    lease_token: UUID,
    outcome: Outcome,
    result: bytes | None,
    error: bytes | None,
    max_attempts: int,
    retention_s: float,
    result_events: Sequence[EventRecord],
) -> JobRow:
    """Ends a run and returns the job as it now is; a retried one goes back to the queue
    unless it has had ``max_attempts`` runs. LeaseLostError when the lease is no longer this
    token. ``result_events`` are applied in the same transaction (as RecordEvents does: once
    per event id), their results naming the job's export target."""
    held = await conn.fetchrow(sql.HELD_RUN, job_id, lease_token)
    if held is None:
        raise LeaseLostError(str(job_id))
    attempts: int = held["attempts"]
    state = {
        Outcome.SUCCEEDED: JobState.SUCCEEDED,
        Outcome.FAILED: JobState.FAILED,
        Outcome.CANCELLED: JobState.CANCELLED,
        Outcome.RETRY: JobState.QUEUED if attempts < max_attempts else JobState.FAILED,
    }[outcome]
    await conn.execute(sql.FINISH, job_id, lease_token, state.value, result, error, retention_s)
    if result_events:
        export_uri: str = held["export_uri"] or ""
        await apply_batch(conn, [_naming_export(e, export_uri) for e in result_events])
    if state in FINISHED:
        await conn.execute(sql.WEBHOOK_DUE, [job_id])
    row = await get_any(conn, job_id)
    assert row is not None, "the row is locked by this transaction"
    return row


def _naming_export(event: EventRecord, export_uri: str) -> EventRecord:
    # The export target was fixed at submit and stored with the job: the result recorded with
    # the job's end names it, as the spooled copy of the same result does, whichever lands first.
    if not isinstance(event.payload, ResultData):
        return event
    return dataclasses.replace(
        event, payload=dataclasses.replace(event.payload, export_uri=export_uri)
    )


async def delete(conn: DbConnection, job_id: UUID, caller: str) -> bool:
    """Deletes a finished job; False when there is none. JobNotFinishedError while it runs."""
    if await conn.fetchval(sql.DELETE, job_id, caller) is not None:
        return True
    if await conn.fetchval(sql.EXISTS, job_id, caller) is not None:
        raise JobNotFinishedError(str(job_id))
    return False


async def sweep(conn: DbConnection) -> int:
    """Deletes up to 1000 finished jobs past their retention; returns how many."""
    status = await conn.execute(sql.SWEEP)
    return int(status.split()[-1])


@dataclass(frozen=True)
class QueueStats:
    queued: int
    running: int
    oldest_queued_s: float


async def stats(conn: DbConnection) -> QueueStats:
    record = await conn.fetchrow(sql.STATS)
    assert record is not None
    return QueueStats(
        int(record["queued"]), int(record["running"]), float(record["oldest_queued_s"])
    )
