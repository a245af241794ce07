-- Cedar policy documents managed through the admin API (files in policy.dir are
-- read from disk, not stored). `policy_revision` lets replicas notice changes.

CREATE TABLE policies (
    name       TEXT PRIMARY KEY,
    text       TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    updated_by TEXT NOT NULL
);

CREATE TABLE policy_revision (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL
);
INSERT INTO policy_revision (id, revision) VALUES (1, 0);
