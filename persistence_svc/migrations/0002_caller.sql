-- The authenticated caller of each inspection (the name from its API key, JWT subject or
-- client certificate; 'anonymous' when authentication is off). Empty for rows recorded before
-- callers were authenticated.
ALTER TABLE inspection_requests ADD COLUMN caller text NOT NULL DEFAULT '';
