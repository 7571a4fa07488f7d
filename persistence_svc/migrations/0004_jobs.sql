-- Asynchronous inspections (docs/operations-async.md): the job queue and the webhook outbox.
--
-- Workers in the inference pods claim jobs through the persistence service's RPCs with
-- SELECT ... FOR UPDATE SKIP LOCKED under a lease (lease_token, lease_expires_at) that they
-- renew; a job whose lease ran out is claimable again. The job's inspection_id is fixed here,
-- so however often it runs its events update the one inspection record.

CREATE TABLE inspection_jobs (
    job_id           uuid        PRIMARY KEY,
    caller           text        NOT NULL,
    -- The submit's idempotency key (AIP-155), unique per caller; '' when none was given.
    request_id       text        NOT NULL DEFAULT '',
    request_sha256   bytea       NOT NULL,
    inspection_id    uuid        NOT NULL UNIQUE,
    -- The validated rpi.inspection.v1.InspectRequest, serialised.
    request          bytea       NOT NULL,
    state            text        NOT NULL DEFAULT 'queued'
                     CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    attempts         integer     NOT NULL DEFAULT 0,
    cancel_requested boolean     NOT NULL DEFAULT false,
    worker           text        NOT NULL DEFAULT '',
    lease_token      uuid,
    lease_expires_at timestamptz,
    -- rpi.inspection.v1.InspectionProgress, Inspection and google.rpc.Status, serialised.
    progress         bytea,
    result           bytea,
    error            bytea,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    ended_at         timestamptz,
    -- Finished jobs are deleted by the sweep once this has passed (JOB_RETENTION_S).
    expire_at        timestamptz,
    CHECK ((state = 'running') = (lease_token IS NOT NULL))
);

CREATE UNIQUE INDEX inspection_jobs_request_id_idx
    ON inspection_jobs (caller, request_id) WHERE request_id <> '';
-- What ClaimJobs scans: the queue in submit order, and the running jobs by lease end.
CREATE INDEX inspection_jobs_queued_idx
    ON inspection_jobs (created_at, job_id) WHERE state = 'queued';
CREATE INDEX inspection_jobs_lease_idx
    ON inspection_jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX inspection_jobs_caller_idx
    ON inspection_jobs (caller, created_at DESC, job_id DESC);
CREATE INDEX inspection_jobs_expire_idx
    ON inspection_jobs (expire_at) WHERE expire_at IS NOT NULL;

-- The webhook outbox: a row per callback, made due ('pending') in the same transaction as the
-- job's end and delivered by the inference pods (which hold the SSRF-checking HTTP client)
-- under a lease like a job's, so a delivery survives restarts of either service. The body is
-- rendered from the finished job, which no longer changes. webhook_id is the Standard Webhooks
-- "webhook-id", the same every attempt.
CREATE TABLE webhook_deliveries (
    job_id          uuid        PRIMARY KEY REFERENCES inspection_jobs (job_id) ON DELETE CASCADE,
    webhook_id      text        NOT NULL UNIQUE,
    caller          text        NOT NULL,
    url             text        NOT NULL,
    state           text        NOT NULL DEFAULT 'waiting'
                    CHECK (state IN ('waiting', 'pending', 'delivered', 'dead_letter')),
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text        NOT NULL DEFAULT '',
    next_attempt_at timestamptz,
    lease_token     uuid,
    lease_expires_at timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX webhook_deliveries_due_idx
    ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
