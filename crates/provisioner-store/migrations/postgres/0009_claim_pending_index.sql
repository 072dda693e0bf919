-- The claim asks, per candidate, for its customer's first due pending job: an index over the
-- pending jobs only, by customer and arrival, answers it without walking the customer's
-- finished jobs (a long-standing customer has many).
CREATE INDEX jobs_pending_customer ON jobs (customer_number, seq) WHERE state = 'pending';
