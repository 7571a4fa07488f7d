"""The webhook outbox (asyncpg): due deliveries claimed under a lease like jobs (``FOR UPDATE
SKIP LOCKED``, so two senders never send the same attempt), and each attempt's report. A row
becomes due in the transaction that ends its job (repository/jobs.py)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from persistence_svc.repository import jobs
from persistence_svc.repository.connection import DbConnection


class WebhookOutcome(enum.Enum):
    DELIVERED = 1
    FAILED = 2
    GONE = 3


@dataclass(frozen=True)
class Delivery:
    webhook_id: str
    url: str
    attempt: int
    lease_token: UUID
    job: jobs.JobRow


@dataclass(frozen=True)
class DeliveryState:
    state: str  # pending, delivered or dead_letter
    attempts: int
    last_error: str
    next_attempt_at: datetime | None
    url: str
    webhook_id: str


_CLAIM = """
WITH due AS (
    SELECT job_id FROM webhook_deliveries
    WHERE state = 'pending' AND next_attempt_at <= now()
      AND (lease_expires_at IS NULL OR lease_expires_at < now())
    ORDER BY next_attempt_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE webhook_deliveries w SET
    attempts = w.attempts + 1, lease_token = gen_random_uuid(),
    lease_expires_at = now() + make_interval(secs => $2), updated_at = now()
FROM due WHERE w.job_id = due.job_id
RETURNING w.job_id, w.webhook_id, w.url, w.attempts, w.lease_token, w.caller
"""

# $3: the outcome; $5: the delay before the next attempt, NULL when the schedule is spent.
_REPORT = """
UPDATE webhook_deliveries SET
    state = CASE
        WHEN $3 = 1 THEN 'delivered'
        WHEN $3 = 3 OR $5::float8 IS NULL THEN 'dead_letter'
        ELSE 'pending' END,
    next_attempt_at = CASE
        WHEN $3 = 2 AND $5::float8 IS NOT NULL THEN now() + make_interval(secs => $5)
        ELSE NULL END,
    last_error = CASE WHEN $3 = 1 THEN last_error ELSE $4 END,
    lease_token = NULL, lease_expires_at = NULL, updated_at = now()
WHERE webhook_id = $1 AND lease_token = $2 AND state = 'pending'
RETURNING state, attempts, last_error, next_attempt_at, url, webhook_id
"""

_ATTEMPTS = "SELECT attempts FROM webhook_deliveries WHERE webhook_id = $1 AND lease_token = $2"

_DEAD_LETTERS = "SELECT count(*) FROM webhook_deliveries WHERE state = 'dead_letter'"


async def claim(conn: DbConnection, max_deliveries: int, lease_s: float) -> list[Delivery]:
    found = []
    for r in await conn.fetch(_CLAIM, max_deliveries, lease_s):
        job = await jobs.get(conn, r["job_id"], r["caller"])
        if job is None:  # deleted meanwhile: its row went with it
            continue
        found.append(Delivery(r["webhook_id"], r["url"], r["attempts"], r["lease_token"], job))
    return found


async def report(
    conn: DbConnection,
    webhook_id: str,
    lease_token: UUID,
    outcome: WebhookOutcome,
    error: str,
    schedule_s: tuple[float, ...],
) -> DeliveryState | None:
    """Records an attempt; None when the lease is no longer this token. After a failed
    attempt n the next is due after schedule_s[n - 1]; past the schedule it is dead."""
    attempts = await conn.fetchval(_ATTEMPTS, webhook_id, lease_token)
    if attempts is None:
        return None
    delay = schedule_s[attempts - 1] if attempts <= len(schedule_s) else None
    r = await conn.fetchrow(_REPORT, webhook_id, lease_token, outcome.value, error, delay)
    if r is None:
        return None
    return DeliveryState(
        r["state"], r["attempts"], r["last_error"], r["next_attempt_at"], r["url"], r["webhook_id"]
    )


async def dead_letters(conn: DbConnection) -> int:
    return int(await conn.fetchval(_DEAD_LETTERS))
