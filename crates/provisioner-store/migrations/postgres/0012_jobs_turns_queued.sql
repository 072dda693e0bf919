-- jobs_turns serves the claims (the pending jobs in turn order, the expired running ones) and
-- the lowest pending turn read when a job is queued. A finished job (done, failed, refused)
-- is never read through it, yet each one kept an entry: the index grew with the whole
-- history, and every change of a job's state (a claim, a job's end: updates PostgreSQL
-- cannot make in place, as they change an indexed column) inserted into it. It now holds the
-- pending and running jobs only, as on SQLite; a reopened job comes back into it as pending.
DROP INDEX jobs_turns;
CREATE INDEX jobs_turns ON jobs (state, turn, next_attempt_at, seq)
    WHERE state = 'pending' OR state = 'running';
