-- jobs_turns serves the claim: the pending jobs in turn order and the running customers. A
-- finished job (done, failed, refused) is never read through it, yet every finished job
-- added an entry, so the index grew with the whole history and each Order's last step wrote
-- one more index page. It now holds the pending and running jobs only; a reopened job comes
-- back into it as pending.
DROP INDEX jobs_turns;
CREATE INDEX jobs_turns ON jobs (state, turn, next_attempt_at, seq, customer_number)
    WHERE state = 'pending' OR state = 'running';
