-- Refused and failed jobs can be reopened (a new event, the reconcile sweep, an operator), and a
-- write-back that keeps failing after WHMCS accepted is tracked until it is stuck.
ALTER TABLE jobs ADD COLUMN reopened_by TEXT;
ALTER TABLE jobs ADD COLUMN reopened_at INTEGER;
ALTER TABLE jobs ADD COLUMN writeback_since INTEGER;
ALTER TABLE jobs ADD COLUMN stuck_alerted_at INTEGER;
