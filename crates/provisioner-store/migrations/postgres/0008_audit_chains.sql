-- The audit log becomes a set of independent hash chains: a record's place is (chain, seq),
-- each chain has its own sequence numbers, head and anchor (audit_anchor row id = chain + 1).
-- Every record so far is chain 0, unchanged. Concurrent writers (of one process or of
-- several instances) each take a free chain instead of all waiting for one head.
ALTER TABLE audit_log ADD COLUMN chain INTEGER NOT NULL DEFAULT 0;
ALTER TABLE audit_log DROP CONSTRAINT audit_log_pkey;
ALTER TABLE audit_log ADD PRIMARY KEY (chain, seq);
ALTER TABLE audit_anchor DROP CONSTRAINT IF EXISTS audit_anchor_id_check;
ALTER TABLE audit_anchor ADD CONSTRAINT audit_anchor_id_check CHECK (id >= 1);
