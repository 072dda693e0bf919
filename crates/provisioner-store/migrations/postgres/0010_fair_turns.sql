-- Customers take turns: a job's turn is one past its customer's last queued job, and never
-- below the round the queue is at (the lowest turn of a pending job); claims walk the due jobs
-- by turn. A customer who queues a hundred Orders at once gets one claim per round, like
-- every other customer, instead of the next hundred.
ALTER TABLE jobs ADD COLUMN turn BIGINT NOT NULL DEFAULT 0;
CREATE INDEX jobs_turns ON jobs (state, turn, next_attempt_at, seq);
-- Every read of jobs_claimable (by state, then due time) is served by jobs_turns now; one
-- index less to keep up on every change of state.
DROP INDEX jobs_claimable;
