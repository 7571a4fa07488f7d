-- Initial schema of the persistence service.
--
-- Events arrive in any order, so every child row can create its parent inspection_requests row
-- as a placeholder (request_recorded = false) that the RequestReceived event fills in later.

CREATE TABLE inspection_requests (
    inspection_id          uuid        PRIMARY KEY,
    shipping_id            text        NOT NULL DEFAULT '',
    product_id             text        NOT NULL DEFAULT '',
    product_name           text        NOT NULL DEFAULT '',
    previous_inspection_id uuid        NULL,
    method                 text        NOT NULL DEFAULT '',
    legacy_questions       boolean     NOT NULL DEFAULT false,
    questions              jsonb       NOT NULL DEFAULT '[]'::jsonb,
    -- Image digests, sizes and sources only: image bytes are never stored.
    images                 jsonb       NOT NULL DEFAULT '[]'::jsonb,
    -- False while only attempts/results/failures of this inspection have arrived.
    request_recorded       boolean     NOT NULL DEFAULT false,
    -- False once a later inspection named this one as its previous inspection.
    is_latest              boolean     NOT NULL DEFAULT true,
    status                 text        NOT NULL DEFAULT 'pending'
                                       CHECK (status IN ('pending', 'completed', 'failed')),
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    CHECK (jsonb_typeof(questions) = 'array'),
    CHECK (jsonb_typeof(images) = 'array')
);

-- ListInspections: one shipment, newest first, keyset-paginated on (created_at, inspection_id).
CREATE INDEX inspection_requests_shipping_created_idx
    ON inspection_requests (shipping_id, created_at DESC, inspection_id DESC);

-- is_latest maintenance looks up "who names me as previous".
CREATE INDEX inspection_requests_previous_idx
    ON inspection_requests (previous_inspection_id)
    WHERE previous_inspection_id IS NOT NULL;

CREATE TABLE inspection_attempts (
    inspection_id     uuid             NOT NULL
                      REFERENCES inspection_requests (inspection_id) ON DELETE CASCADE,
    attempt_number    integer          NOT NULL CHECK (attempt_number >= 1),
    prompt            text             NOT NULL,
    prompt_sha256     text             NOT NULL,
    template_version  text             NOT NULL,
    template_sha256   text             NOT NULL,
    raw_output        text             NOT NULL,
    parsed_output     jsonb            NULL,
    valid             boolean          NOT NULL,
    validation_errors jsonb            NOT NULL DEFAULT '[]'::jsonb,
    prompt_tokens     integer          NOT NULL,
    completion_tokens integer          NOT NULL,
    duration_ms       double precision NOT NULL,
    constrained       boolean          NOT NULL,
    model_name        text             NOT NULL,
    model_revision    text             NOT NULL,
    created_at        timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (inspection_id, attempt_number)
);

CREATE TABLE inspection_results (
    inspection_id  uuid             PRIMARY KEY
                   REFERENCES inspection_requests (inspection_id) ON DELETE CASCADE,
    decision       text             NOT NULL,
    recommendation text             NOT NULL,
    match_score    double precision NOT NULL,
    -- The rpi.inspection.v1.Inspection message as JSON (proto field names).
    payload        jsonb            NOT NULL,
    created_at     timestamptz      NOT NULL DEFAULT now()
);

CREATE INDEX inspection_results_decision_idx ON inspection_results (decision, created_at DESC);

-- One row per FailureRecorded event.
CREATE TABLE inspection_failures (
    event_id      uuid        PRIMARY KEY,
    inspection_id uuid        NOT NULL
                  REFERENCES inspection_requests (inspection_id) ON DELETE CASCADE,
    stage         text        NOT NULL,
    reason        text        NOT NULL,
    message       text        NOT NULL,
    status_code   text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX inspection_failures_inspection_idx
    ON inspection_failures (inspection_id, created_at DESC, event_id DESC);

CREATE INDEX inspection_failures_reason_idx ON inspection_failures (reason, created_at DESC);

-- Idempotency keys: an event is applied in the same transaction that inserts its key here.
CREATE TABLE processed_events (
    event_id      uuid        PRIMARY KEY,
    inspection_id uuid        NOT NULL,
    kind          text        NOT NULL
                  CHECK (kind IN ('request_received', 'attempt_recorded', 'result_recorded',
                                  'failure_recorded')),
    recorded_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX processed_events_recorded_at_idx ON processed_events (recorded_at);
