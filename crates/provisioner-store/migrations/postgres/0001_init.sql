-- portal-provisioner schema, PostgreSQL. Times are Unix milliseconds (UTC).

-- One job per Salesforce Order: the idempotency ledger. `step` is the recovery point.
CREATE TABLE jobs (
    seq             BIGSERIAL PRIMARY KEY,
    order_id        TEXT    NOT NULL UNIQUE,
    customer_number TEXT    NOT NULL,
    account_id      TEXT,
    event_id        TEXT,
    source          TEXT    NOT NULL,
    state           TEXT    NOT NULL,
    step            TEXT    NOT NULL,
    whmcs_order_id  TEXT,
    service_ids     TEXT,
    attempts        BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at BIGINT  NOT NULL,
    lease_owner     TEXT,
    lease_until     BIGINT,
    last_error      TEXT,
    created_at      BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL
);
CREATE INDEX jobs_claimable ON jobs (state, next_attempt_at, seq);
CREATE INDEX jobs_customer ON jobs (customer_number, seq);
-- At most one running job per customer, whatever the workers race.
CREATE UNIQUE INDEX jobs_one_running_per_customer ON jobs (customer_number) WHERE state = 'running';

-- Every event ever stored, by its unique event id (ConsumerEvent.event.id).
CREATE TABLE inbox (
    event_id    TEXT    PRIMARY KEY,
    topic       TEXT    NOT NULL,
    replay_id   BYTEA    NOT NULL,
    order_id    TEXT    NOT NULL,
    outcome     TEXT    NOT NULL,
    received_at BIGINT  NOT NULL
);

-- Where each topic's subscription resumes: the replay id of the last stored event.
CREATE TABLE checkpoints (
    topic      TEXT    PRIMARY KEY,
    replay_id  BYTEA    NOT NULL,
    updated_at BIGINT  NOT NULL
);

-- Events and jobs that could not be processed; payload is a field-crypto ciphertext.
CREATE TABLE dead_letters (
    id         TEXT    PRIMARY KEY,
    topic      TEXT,
    event_id   TEXT,
    replay_id  BYTEA,
    order_id   TEXT,
    reason     TEXT    NOT NULL,
    payload    TEXT,
    attempts   BIGINT  NOT NULL DEFAULT 0,
    state      TEXT    NOT NULL,
    created_at BIGINT  NOT NULL,
    updated_at BIGINT  NOT NULL
);
CREATE INDEX dead_letters_state ON dead_letters (state, created_at);

-- The audit chain: one sealed record (JSON) per row, and where the chain starts after purges.
CREATE TABLE audit_log (
    seq    BIGINT  PRIMARY KEY,
    at     BIGINT  NOT NULL,
    record TEXT    NOT NULL
);
CREATE TABLE audit_anchor (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    anchor TEXT    NOT NULL
);

-- The wrapped keyring of field-crypto (no key material in the clear).
CREATE TABLE keyring (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    stored     TEXT    NOT NULL,
    updated_at BIGINT  NOT NULL
);
