-- Fenced leases: every claim of a job gets a new epoch, and its lease owner token names it
-- (`<owner>:<epoch>`), so a write of an earlier claim never passes the fence.
ALTER TABLE jobs ADD COLUMN claim_epoch INTEGER NOT NULL DEFAULT 0;
