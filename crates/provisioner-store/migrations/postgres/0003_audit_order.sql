-- The Order an audit record is about, next to the record, so that one Order's records are
-- found by index (`provisioner jobs show`). Filled on insert from the sealed record's
-- `order_id`; NULL for records about no Order. Existing rows are filled from their JSON.
ALTER TABLE audit_log ADD COLUMN order_id TEXT;
UPDATE audit_log SET order_id = (record::jsonb) ->> 'order_id';
CREATE INDEX audit_log_order ON audit_log (order_id, seq);
