-- The object a job's result export writes (a SubmitInspection's result_export_uri, or the
-- RESULT_EXPORT_URI prefix), fixed at submit so that every replica running the job writes it.
ALTER TABLE inspection_jobs ADD COLUMN export_uri text NOT NULL DEFAULT '';
