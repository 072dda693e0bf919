-- The audit log becomes a set of independent hash chains: a record's place is (chain, seq),
-- each chain has its own sequence numbers, head and anchor (audit_anchor row id = chain + 1).
-- SQLite keeps one chain (its single writer serialises every write anyway): every record is
-- chain 0, unchanged. SQLite cannot change a primary key in place, so both tables are rebuilt.
CREATE TABLE audit_log_chains (
    chain    INTEGER NOT NULL DEFAULT 0,
    seq      INTEGER NOT NULL,
    at       INTEGER NOT NULL,
    record   TEXT    NOT NULL,
    order_id TEXT,
    PRIMARY KEY (chain, seq)
);
INSERT INTO audit_log_chains (chain, seq, at, record, order_id)
    SELECT 0, seq, at, record, order_id FROM audit_log;
DROP TABLE audit_log;
ALTER TABLE audit_log_chains RENAME TO audit_log;
CREATE INDEX audit_log_order ON audit_log (order_id, seq);

CREATE TABLE audit_anchor_chains (
    id     INTEGER PRIMARY KEY CHECK (id >= 1),
    anchor TEXT    NOT NULL
);
INSERT INTO audit_anchor_chains (id, anchor) SELECT id, anchor FROM audit_anchor;
DROP TABLE audit_anchor;
ALTER TABLE audit_anchor_chains RENAME TO audit_anchor;
