-- SQLite keeps one audit chain, chain 0 (its single writer is the only appender), so the
-- (chain, seq) primary key was a second B-tree beside the table's own rowid B-tree, written
-- with every record and carrying nothing the rowid does not. `seq` becomes the rowid: one
-- B-tree fewer per record, `seq` stays unique, and reads by chain and seq become rowid
-- ranges. The CHECK states the one-chain rule (PostgreSQL keeps its chains and its key).
-- The table is copied once, in one transaction, when this migration runs.
CREATE TABLE audit_log_by_seq (
    chain    INTEGER NOT NULL DEFAULT 0 CHECK (chain = 0),
    seq      INTEGER PRIMARY KEY,
    at       INTEGER NOT NULL,
    record   TEXT    NOT NULL,
    order_id TEXT,
    job      INTEGER
);
INSERT INTO audit_log_by_seq (chain, seq, at, record, order_id, job)
    SELECT chain, seq, at, record, order_id, job FROM audit_log ORDER BY seq;
DROP TABLE audit_log;
ALTER TABLE audit_log_by_seq RENAME TO audit_log;
CREATE INDEX audit_log_order ON audit_log (order_id, seq) WHERE job IS NULL;
CREATE INDEX audit_log_job ON audit_log (job) WHERE job IS NOT NULL;
