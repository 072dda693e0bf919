-- Order intake's idempotency ledger: one row per (customer, Idempotency-Key), written before
-- anything is sent to Salesforce. `fingerprint` is the SHA-256 of the request body as the
-- service normalised it; `answer` the final answer (status and JSON body) once there is one.
-- An in-flight row is claimed until `claimed_until` (Unix ms); after that a retry takes it
-- over and first looks the Order up by its external id (`<customer>:<key>`).
CREATE TABLE order_requests (
    customer_number TEXT    NOT NULL,
    idempotency_key TEXT    NOT NULL,
    fingerprint     TEXT    NOT NULL,
    state           TEXT    NOT NULL,
    order_id        TEXT,
    answer_status   BIGINT,
    answer          TEXT,
    claimed_until   BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (customer_number, idempotency_key)
);
CREATE INDEX order_requests_order ON order_requests (order_id);
