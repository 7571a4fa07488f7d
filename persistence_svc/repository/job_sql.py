"""Statement text of the job queue (repository/jobs.py runs it)."""

from __future__ import annotations

# Columns of JobRow, the outbox row joined (j = inspection_jobs, w = webhook_deliveries).
COLUMNS = """
    j.job_id, j.caller, j.request_id, j.inspection_id, j.state, j.attempts, j.cancel_requested,
    j.created_at, j.updated_at, j.started_at, j.ended_at, j.progress, j.result, j.error,
    j.request_sha256, j.lease_token, j.export_uri,
    coalesce(w.state, '') AS webhook_state, coalesce(w.url, '') AS webhook_url,
    coalesce(w.webhook_id, '') AS webhook_id, coalesce(w.attempts, 0) AS webhook_attempts,
    coalesce(w.last_error, '') AS webhook_last_error, w.next_attempt_at AS webhook_next_attempt_at
"""

QUEUE_POSITION = """
    CASE WHEN j.state = 'queued' THEN (
        SELECT count(*) FROM inspection_jobs q
        WHERE q.state = 'queued' AND (q.created_at, q.job_id) < (j.created_at, j.job_id)
    ) ELSE 0 END AS queue_position
"""

# Fixed text put together from the constants above; every value is a bound parameter.
SELECT_ONE = f"""
SELECT {COLUMNS}, {QUEUE_POSITION}, j.request
FROM inspection_jobs j LEFT JOIN webhook_deliveries w USING (job_id)
WHERE j.job_id = $1 AND j.caller = $2
"""  # noqa: S608

INSERT = """
INSERT INTO inspection_jobs
    (job_id, caller, request_id, request_sha256, inspection_id, request, export_uri)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT DO NOTHING
RETURNING job_id
"""

INSERT_WEBHOOK = """
INSERT INTO webhook_deliveries (job_id, webhook_id, caller, url) VALUES ($1, $2, $3, $4)
"""

BY_REQUEST_ID = """
SELECT job_id, request_sha256 FROM inspection_jobs WHERE caller = $1 AND request_id = $2
"""

CANCEL = """
UPDATE inspection_jobs SET
    state = CASE WHEN state = 'queued' THEN 'cancelled' ELSE state END,
    cancel_requested = (state = 'running'),
    error = CASE WHEN state = 'queued' THEN $3::bytea ELSE error END,
    ended_at = CASE WHEN state = 'queued' THEN now() ELSE ended_at END,
    expire_at = CASE WHEN state = 'queued' THEN now() + make_interval(secs => $4)
                ELSE expire_at END,
    updated_at = now()
WHERE job_id = $1 AND caller = $2 AND state IN ('queued', 'running')
RETURNING state
"""

# The lease of a running job ran out: taken back by the next claim, unless it has had its
# runs (failed) or a cancel was asked for (cancelled).
EXPIRE_LEASES = """
UPDATE inspection_jobs SET
    state = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'failed' END,
    error = CASE WHEN cancel_requested THEN $2::bytea ELSE $3::bytea END,
    lease_token = NULL, lease_expires_at = NULL,
    ended_at = now(), updated_at = now(), expire_at = now() + make_interval(secs => $4)
WHERE job_id IN (
    SELECT job_id FROM inspection_jobs
    WHERE state = 'running' AND lease_expires_at < now()
      AND (cancel_requested OR attempts >= $1)
    ORDER BY lease_expires_at
    LIMIT 100
    FOR UPDATE SKIP LOCKED
)
RETURNING job_id, state
"""

CLAIM = f"""
WITH picked AS (
    SELECT job_id, state = 'running' AS reclaimed FROM inspection_jobs
    WHERE %s
    ORDER BY %s
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE inspection_jobs j SET
    state = 'running', attempts = j.attempts + 1, worker = $2,
    lease_token = gen_random_uuid(), lease_expires_at = now() + make_interval(secs => $3),
    started_at = coalesce(j.started_at, now()), updated_at = now(), progress = NULL
FROM picked LEFT JOIN webhook_deliveries w USING (job_id)
WHERE j.job_id = picked.job_id
RETURNING {COLUMNS}, 0 AS queue_position, j.request, picked.reclaimed
"""  # noqa: S608 - fixed text; the two %s below are fixed text too
CLAIM_EXPIRED = CLAIM % (
    "state = 'running' AND lease_expires_at < now() AND NOT cancel_requested AND attempts < $4",
    "lease_expires_at",
)
CLAIM_QUEUED = CLAIM % ("state = 'queued'", "created_at, job_id")

RENEW = """
UPDATE inspection_jobs j SET
    lease_expires_at = now() + make_interval(secs => $4),
    progress = coalesce(l.progress, j.progress),
    updated_at = now()
FROM unnest($1::uuid[], $2::uuid[], $3::bytea[]) AS l(job_id, token, progress)
WHERE j.job_id = l.job_id AND j.lease_token = l.token AND j.state = 'running'
RETURNING j.job_id, l.token, j.cancel_requested
"""

FINISH = """
UPDATE inspection_jobs SET
    state = $3, result = $4, error = $5,
    lease_token = NULL, lease_expires_at = NULL, updated_at = now(),
    ended_at = CASE WHEN $3 = 'queued' THEN NULL ELSE now() END,
    expire_at = CASE WHEN $3 = 'queued' THEN NULL ELSE now() + make_interval(secs => $6) END
WHERE job_id = $1 AND lease_token = $2 AND state = 'running'
"""

# The run's attempts and the export target fixed at submit, the row locked until the run ends.
HELD_RUN = """
SELECT attempts, export_uri FROM inspection_jobs
WHERE job_id = $1 AND lease_token = $2 AND state = 'running'
FOR UPDATE
"""

# In the same transaction as the job's end: the webhook becomes due.
WEBHOOK_DUE = """
UPDATE webhook_deliveries SET state = 'pending', next_attempt_at = now(), updated_at = now()
WHERE job_id = ANY($1::uuid[]) AND state = 'waiting'
"""

DELETE = """
DELETE FROM inspection_jobs
WHERE job_id = $1 AND caller = $2 AND state IN ('succeeded', 'failed', 'cancelled')
RETURNING job_id
"""

EXISTS = "SELECT state FROM inspection_jobs WHERE job_id = $1 AND caller = $2"

SWEEP = """
DELETE FROM inspection_jobs WHERE job_id IN (
    SELECT job_id FROM inspection_jobs WHERE expire_at < now() LIMIT 1000
)
"""

STATS = """
SELECT count(*) FILTER (WHERE state = 'queued') AS queued,
       count(*) FILTER (WHERE state = 'running') AS running,
       coalesce(extract(epoch FROM now() - min(created_at) FILTER (WHERE state = 'queued')), 0)
           AS oldest_queued_s
FROM inspection_jobs WHERE state IN ('queued', 'running')
"""
