-- Object storage and retention (docs/storage.md).

-- Where the result export wrote the inspection's JSON (RESULT_EXPORT_URI); '' when it did not.
ALTER TABLE inspection_results ADD COLUMN export_uri text NOT NULL DEFAULT '';

-- Retention of the bulky parts of attempts (prompt, raw and parsed model output), kept apart
-- from the decision record: set when the sweeper emptied them, so no sweep visits a row twice.
ALTER TABLE inspection_attempts ADD COLUMN payload_purged_at timestamptz NULL;

CREATE INDEX inspection_attempts_unpurged_created_idx
    ON inspection_attempts (created_at)
    WHERE payload_purged_at IS NULL;
