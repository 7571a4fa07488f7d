"""Retention SQL: one bounded batch per call, safe with several sweepers at once.

Each statement picks its batch with ``FOR UPDATE SKIP LOCKED``: a row another sweeper is
working on is skipped rather than waited for, and a row it has already changed no longer
matches when the lock is taken (Postgres re-checks the condition on the newest version), so
every row is removed by exactly one sweeper and the returned counts add up.
"""

from __future__ import annotations

from datetime import datetime

from persistence_svc.repository.connection import DbConnection

# Attempts keep their numbers, digests, validity and model; the prompt and outputs go.
_PURGE_ATTEMPT_PAYLOADS = """
UPDATE inspection_attempts a
SET prompt = '', raw_output = '', parsed_output = NULL, payload_purged_at = now()
WHERE a.ctid IN (
    SELECT ctid FROM inspection_attempts
    WHERE payload_purged_at IS NULL AND created_at < $1
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
"""

# A decision record and everything under it (attempts, result, failures, image hashes cascade).
_DELETE_RECORDS = """
DELETE FROM inspection_requests r
WHERE r.inspection_id IN (
    SELECT inspection_id FROM inspection_requests
    WHERE created_at < $1
    ORDER BY created_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
"""


# Idempotency keys only guard against an event delivered twice; a producer never holds an event
# longer than its pod lives, so old keys protect nothing.
_DELETE_EVENT_KEYS = """
DELETE FROM processed_events
WHERE ctid IN (
    SELECT ctid FROM processed_events
    WHERE recorded_at < $1
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
"""


def _count(status: str) -> int:
    """asyncpg's command status, e.g. "UPDATE 12" or "DELETE 0"."""
    return int(status.rsplit(" ", 1)[-1])


async def purge_attempt_payloads(conn: DbConnection, older_than: datetime, limit: int) -> int:
    """Empties the prompts and model outputs of at most ``limit`` attempts recorded before
    ``older_than``; returns how many."""
    return _count(await conn.execute(_PURGE_ATTEMPT_PAYLOADS, older_than, limit))


async def delete_records(conn: DbConnection, older_than: datetime, limit: int) -> int:
    """Deletes at most ``limit`` inspections created before ``older_than``; returns how many."""
    return _count(await conn.execute(_DELETE_RECORDS, older_than, limit))


async def delete_event_keys(conn: DbConnection, older_than: datetime, limit: int) -> int:
    """Deletes at most ``limit`` idempotency keys recorded before ``older_than``."""
    return _count(await conn.execute(_DELETE_EVENT_KEYS, older_than, limit))
