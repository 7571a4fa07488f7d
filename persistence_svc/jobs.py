"""The job queue as the persistence service runs it: each call one transaction of the
repository (``repository/jobs.py`` holds the SQL), its errors as the service's domain errors,
and the periodic sweep (leases that ran out for good, finished jobs past their retention, the
queue gauges)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from uuid import UUID

from opentelemetry.instrumentation.utils import suppress_instrumentation

from persistence_svc.errors import DatabaseUnavailableError, JobNotFoundError, JobStateError
from persistence_svc.records import EventRecord, PageCursor
from persistence_svc.repository import Repository
from persistence_svc.repository import jobs as q
from persistence_svc.repository import webhooks as w
from persistence_svc.repository.jobs import (
    Finished,
    InspectionIdTakenError,
    JobNotFinishedError,
    JobRow,
    JobState,
    LeaseLostError,
    LeaseState,
    Outcome,
    QueueStats,
    RequestIdReusedError,
)

__all__ = [
    "JobQueue",
    "JobQueueHooks",
    "JobRow",
    "JobState",
    "LeaseState",
    "Outcome",
]

log = logging.getLogger(__name__)


@dataclass
class JobQueueHooks:
    """Metrics: what the queue did (each called with a count or a state)."""

    on_created: Callable[[], None] = lambda: None
    on_claimed: Callable[[int, int], None] = lambda claimed, reclaimed: None
    on_finished: Callable[[str], None] = lambda state: None
    on_stats: Callable[[QueueStats], None] = lambda stats: None
    on_expired: Callable[[int], None] = lambda n: None
    on_webhook: Callable[[str], None] = lambda state: None
    on_dead_letters: Callable[[int], None] = lambda n: None


@dataclass
class JobQueue:
    repository: Repository
    max_attempts: int
    retention_s: float
    # google.rpc.Status, serialised: what a job cancelled, or lost too often, ends with.
    cancelled_error: bytes
    lost_error: bytes
    hooks: JobQueueHooks = field(default_factory=JobQueueHooks)
    # After failed webhook attempt n the next waits webhook_schedule_s[n - 1]; then dead.
    webhook_schedule_s: tuple[float, ...] = (5.0,)

    async def create(
        self,
        *,
        caller: str,
        request_id: str,
        request_sha256: bytes,
        inspection_id: UUID,
        request: bytes,
        callback_url: str,
        export_uri: str = "",
    ) -> tuple[JobRow, bool]:
        job_id = uuid.uuid4()
        try:
            row, created = await self.repository.transact(
                lambda conn: q.create(
                    conn,
                    job_id=job_id,
                    caller=caller,
                    request_id=request_id,
                    request_sha256=request_sha256,
                    inspection_id=inspection_id,
                    request=request,
                    callback_url=callback_url,
                    export_uri=export_uri,
                )
            )
        except RequestIdReusedError:
            raise JobStateError(
                "REQUEST_ID_REUSED",
                f"request_id {request_id!r} was used for another request; use a new one",
            ) from None
        except InspectionIdTakenError:
            raise JobStateError(
                "INSPECTION_ID_TAKEN",
                f"inspection {inspection_id} already has a job; send another inspection_id",
            ) from None
        if created:
            self.hooks.on_created()
        return row, created

    async def get(self, job_id: UUID, caller: str) -> JobRow:
        row = await self.repository.transact(
            lambda conn: q.get(conn, job_id, caller), readonly=True
        )
        if row is None:
            raise JobNotFoundError(f"operation {job_id} not found")
        return row

    async def list_page(
        self, caller: str, state: JobState | None, limit: int, cursor: PageCursor | None
    ) -> list[JobRow]:
        return await self.repository.transact(
            lambda conn: q.list_page(conn, caller, state, limit, cursor), readonly=True
        )

    async def cancel(self, job_id: UUID, caller: str) -> JobRow:
        row = await self.repository.transact(
            lambda conn: q.cancel(conn, job_id, caller, self.cancelled_error, self.retention_s)
        )
        if row is None:
            raise JobNotFoundError(f"operation {job_id} not found")
        if row.state == JobState.CANCELLED and not row.cancel_requested:
            self.hooks.on_finished(row.state.value)
        return row

    async def delete(self, job_id: UUID, caller: str) -> None:
        try:
            deleted = await self.repository.transact(lambda conn: q.delete(conn, job_id, caller))
        except JobNotFinishedError:
            raise JobStateError(
                "JOB_NOT_FINISHED", f"operation {job_id} has not finished; cancel it first"
            ) from None
        if not deleted:
            raise JobNotFoundError(f"operation {job_id} not found")

    async def claim(self, worker: str, max_jobs: int, lease_s: float) -> tuple[list[JobRow], int]:
        rows, reclaimed = await self.repository.transact(
            lambda conn: q.claim(conn, worker, max_jobs, lease_s, self.max_attempts)
        )
        if rows:
            self.hooks.on_claimed(len(rows), reclaimed)
        return rows, reclaimed

    async def renew(
        self, leases: list[tuple[UUID, UUID, bytes | None]], lease_s: float
    ) -> list[LeaseState]:
        return await self.repository.transact(lambda conn: q.renew(conn, leases, lease_s))

    async def finish(
        self,
        job_id: UUID,
        lease_token: UUID,
        outcome: Outcome,
        result: bytes | None,
        error: bytes | None,
        result_events: Sequence[EventRecord] = (),
    ) -> JobRow:
        """Ends a run; returns the job as the same transaction left it. ``result_events``:
        the inspection's result, recorded in that transaction (idempotent like RecordEvents),
        so a succeeded operation's inspection is recorded even when the replica dies before
        its spool delivers the same result."""

        try:
            row = await self.repository.transact(
                lambda conn: q.finish(
                    conn,
                    job_id=job_id,
                    lease_token=lease_token,
                    outcome=outcome,
                    result=result,
                    error=error,
                    max_attempts=self.max_attempts,
                    retention_s=self.retention_s,
                    result_events=result_events,
                )
            )
        except LeaseLostError:
            raise JobStateError(
                "LEASE_LOST", f"the lease of operation {job_id} is no longer this worker's"
            ) from None
        self.hooks.on_finished("retried" if row.state == JobState.QUEUED else row.state.value)
        return row

    async def claim_webhooks(self, max_deliveries: int, lease_s: float) -> list[w.Delivery]:
        return await self.repository.transact(lambda conn: w.claim(conn, max_deliveries, lease_s))

    async def report_webhook(
        self, webhook_id: str, lease_token: UUID, outcome: w.WebhookOutcome, error: str
    ) -> w.DeliveryState:
        state = await self.repository.transact(
            lambda conn: w.report(
                conn, webhook_id, lease_token, outcome, error, self.webhook_schedule_s
            )
        )
        if state is None:
            raise JobStateError(
                "LEASE_LOST", f"the lease of webhook {webhook_id} is no longer this sender's"
            )
        self.hooks.on_webhook(state.state)
        return state

    async def sweep_once(self) -> tuple[list[Finished], int]:
        """Ends runs whose lease ran out for good, deletes expired jobs, updates the gauges."""
        ended = await self.repository.transact(
            lambda conn: q.expire_leases(
                conn, self.max_attempts, self.cancelled_error, self.lost_error, self.retention_s
            )
        )
        for job in ended:
            self.hooks.on_finished(job.state.value)
        if ended:
            self.hooks.on_expired(len(ended))
        deleted = await self.repository.transact(q.sweep)
        self.hooks.on_stats(await self.repository.transact(q.stats, readonly=True))
        self.hooks.on_dead_letters(await self.repository.transact(w.dead_letters, readonly=True))
        return ended, deleted

    async def sweep_forever(self, interval_s: float) -> None:
        while True:
            try:
                # Housekeeping, not a request: its SQL would start a trace every interval.
                with suppress_instrumentation():
                    await self.sweep_once()
            except DatabaseUnavailableError as exc:
                log.warning("job sweep skipped: %s", exc)
            await asyncio.sleep(interval_s)
