-- Declarative state loaded from portcullis.yaml, plus the history of applied revisions.
CREATE TABLE upstreams (
    name        TEXT PRIMARY KEY,
    transport   TEXT NOT NULL,
    owner       TEXT,
    team        TEXT,
    risk_tier   INTEGER,
    spec        TEXT NOT NULL,       -- JSON; secret header and env values redacted
    updated_at  INTEGER NOT NULL
);

CREATE TABLE virtual_servers (
    name        TEXT PRIMARY KEY,
    spec        TEXT NOT NULL,       -- JSON
    updated_at  INTEGER NOT NULL
);

CREATE TABLE config_revisions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    digest      TEXT NOT NULL,
    source      TEXT NOT NULL,
    applied_at  INTEGER NOT NULL
);
