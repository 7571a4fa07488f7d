"""The text of every SQL statement the repository runs against the tables.

Writes: the statements one RecordEvents batch runs (see writes.py for the order and why).
Reads: one inspection with its attempts, and keyset-paginated pages of a shipment's inspections.
"""

from __future__ import annotations

# Array order is the lock order: the caller sorts the keys.
LOCK = "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k"

CLAIM_EVENTS = """
INSERT INTO processed_events (event_id, inspection_id, kind)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[])
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
"""

# is_latest of a new row: NOT EXISTS (an inspection already naming it as previous).
UPSERT_REQUEST = """
INSERT INTO inspection_requests AS r (
    inspection_id, shipping_id, product_id, product_name, previous_inspection_id, method,
    legacy_questions, questions, images, request_recorded, is_latest, created_at, caller,
    vendor_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9::jsonb, true, NOT EXISTS (
            SELECT 1 FROM inspection_requests n WHERE n.previous_inspection_id = $1),
        COALESCE($10::timestamptz, now()), $11, $12)
ON CONFLICT (inspection_id) DO UPDATE SET
    vendor_id = EXCLUDED.vendor_id,
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
TOUCH_INSPECTION = """
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

MARK_NOT_LATEST = """
UPDATE inspection_requests SET is_latest = false, updated_at = now()
WHERE inspection_id = $1 AND is_latest
"""

UPSERT_ATTEMPT = """
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

UPSERT_RESULT = """
INSERT INTO inspection_results (
    inspection_id, decision, recommendation, match_score, payload, created_at, export_uri)
VALUES ($1, $2, $3, $4, $5::jsonb, COALESCE($6::timestamptz, now()), $7)
ON CONFLICT (inspection_id) DO UPDATE SET
    decision = EXCLUDED.decision,
    recommendation = EXCLUDED.recommendation,
    match_score = EXCLUDED.match_score,
    payload = EXCLUDED.payload,
    created_at = EXCLUDED.created_at,
    export_uri = EXCLUDED.export_uri
"""

INSERT_FAILURE = """
INSERT INTO inspection_failures (
    event_id, inspection_id, stage, reason, message, status_code, created_at)
VALUES ($1, $2, $3, $4, $5, $6, COALESCE($7::timestamptz, now()))
ON CONFLICT (event_id) DO NOTHING
"""

SELECT_RECORDS = """
SELECT r.inspection_id, r.shipping_id, r.product_id, r.product_name, r.previous_inspection_id,
       r.method, r.caller, r.legacy_questions, r.questions, r.images, r.request_recorded,
       r.is_latest, r.vendor_id, r.status, r.created_at, r.updated_at,
       res.payload AS result_payload, COALESCE(res.export_uri, '') AS export_uri,
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

GET_RECORD = SELECT_RECORDS + "WHERE r.inspection_id = $1"

GET_ATTEMPTS = """
SELECT attempt_number, prompt, prompt_sha256, template_version, template_sha256, raw_output,
       parsed_output, valid, validation_errors, prompt_tokens, completion_tokens, duration_ms,
       constrained, model_name, model_revision
FROM inspection_attempts WHERE inspection_id = $1 ORDER BY attempt_number
"""

LIST_FIRST_PAGE = (
    SELECT_RECORDS
    + """WHERE r.shipping_id = $1
ORDER BY r.created_at DESC, r.inspection_id DESC
LIMIT $2"""
)

LIST_NEXT_PAGE = (
    SELECT_RECORDS
    + """WHERE r.shipping_id = $1 AND (r.created_at, r.inspection_id) < ($3, $4)
ORDER BY r.created_at DESC, r.inspection_id DESC
LIMIT $2"""
)

# Every inspection created in [$1, $2), for replays over a period (index of migration 0003).
WINDOW_FIRST_PAGE = (
    SELECT_RECORDS
    + """WHERE r.created_at >= $1 AND r.created_at < $2
ORDER BY r.created_at DESC, r.inspection_id DESC
LIMIT $3"""
)

WINDOW_NEXT_PAGE = (
    SELECT_RECORDS
    + """WHERE r.created_at >= $1 AND r.created_at < $2
  AND (r.created_at, r.inspection_id) < ($4, $5)
ORDER BY r.created_at DESC, r.inspection_id DESC
LIMIT $3"""
)
