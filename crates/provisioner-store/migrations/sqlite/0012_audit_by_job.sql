-- An Order's audit records are found through its job: each new record carries the `seq` of
-- its Order's job (read when the record is written), and is indexed by that. Jobs are
-- numbered as they arrive, so the records of the Orders in flight share the index's last
-- pages, where an index by Order Id put every insert on a page of its own (Order Ids come in
-- no useful order). Records about no job, and every record written before this migration,
-- keep the index by Order Id, now partial: nothing is rewritten.
ALTER TABLE audit_log ADD COLUMN job INTEGER;
DROP INDEX audit_log_order;
CREATE INDEX audit_log_order ON audit_log (order_id, seq) WHERE job IS NULL;
CREATE INDEX audit_log_job ON audit_log (job) WHERE job IS NOT NULL;
