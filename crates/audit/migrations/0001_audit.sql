-- The audit log: one row per event, hash-chained in `seq` order. `body` is the
-- canonical JSON of the event; the other columns are copies for search, and
-- `portcullis audit verify` checks they still match the body.
CREATE TABLE audit_records (
    seq            INTEGER PRIMARY KEY,
    event_id       TEXT NOT NULL,
    time_us        INTEGER NOT NULL,
    event_type     TEXT NOT NULL,
    replica        TEXT NOT NULL,
    username       TEXT,
    virtual_server TEXT,
    upstream       TEXT,
    tool           TEXT,
    method         TEXT,
    outcome        TEXT,
    body           TEXT NOT NULL,
    prev_hash      TEXT NOT NULL,
    hash           TEXT NOT NULL
);
CREATE INDEX audit_records_time ON audit_records (time_us);
CREATE INDEX audit_records_user ON audit_records (username, time_us);
CREATE INDEX audit_records_tool ON audit_records (tool, time_us);

-- Signed chain heads. The signing key lives outside this database.
CREATE TABLE audit_checkpoints (
    seq        INTEGER PRIMARY KEY,
    hash       TEXT NOT NULL,
    time_us    INTEGER NOT NULL,
    key_id     TEXT NOT NULL,
    signature  TEXT NOT NULL
);

-- How far each SIEM sink has delivered.
CREATE TABLE audit_sink_cursors (
    sink        TEXT PRIMARY KEY,
    seq         INTEGER NOT NULL,
    updated_us  INTEGER NOT NULL
);
