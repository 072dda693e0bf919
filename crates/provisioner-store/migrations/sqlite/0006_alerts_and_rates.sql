-- Security alerts waiting for the webhook (the durable outbox): an alert is stored here with its
-- `alert_raised` audit record in one transaction, and removed once the webhook took it. Rows
-- survive restarts and webhook outages; past the configured bound the oldest are dropped.
CREATE TABLE alert_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    kind            TEXT    NOT NULL,
    body            TEXT    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    created_at      INTEGER NOT NULL
);
CREATE INDEX alert_outbox_due ON alert_outbox (next_attempt_at, id);

-- Shared rate limits (GCRA): per key, the theoretical arrival time of the next event, in Unix
-- milliseconds. Every instance on the database draws from the same state.
CREATE TABLE rate_limits (
    scope  TEXT    NOT NULL,
    key    TEXT    NOT NULL,
    tat_ms INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
);
