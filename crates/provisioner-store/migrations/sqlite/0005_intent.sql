-- The settle rule: an intent (a non-idempotent WHMCS call about to be sent) records when it
-- was stored, by the database's clock, and the client timeout it is sent with, so a job resumed
-- by any instance, after any restart, waits until that call cannot still commit before it
-- repeats it.
ALTER TABLE jobs ADD COLUMN intent_sent_at INTEGER;
ALTER TABLE jobs ADD COLUMN intent_timeout_ms INTEGER;
