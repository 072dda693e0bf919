-- The claim walks the due jobs by turn and passes over the customers that have a job running:
-- with the customer in the index, that walk (and the read of the running customers) stays in
-- the index instead of reading each job's row. Under faults the walk passes over dozens of
-- running customers' jobs on every claim.
DROP INDEX jobs_turns;
CREATE INDEX jobs_turns ON jobs (state, turn, next_attempt_at, seq, customer_number);
