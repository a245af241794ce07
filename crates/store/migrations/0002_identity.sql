-- Identity: people and service accounts, groups, credentials, OAuth state, and the
-- change feed replicas follow to invalidate their in-memory view.

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    kind          TEXT NOT NULL CHECK (kind IN ('user', 'service')),
    username      TEXT NOT NULL UNIQUE,
    email         TEXT,
    display_name  TEXT,
    external_id   TEXT,
    idp           TEXT,            -- 'local', an IdP name, or 'scim'
    idp_subject   TEXT,
    password_hash TEXT,            -- argon2id PHC string; local users only
    active        INTEGER NOT NULL DEFAULT 1,
    is_admin      INTEGER NOT NULL DEFAULT 0,
    owner_id      TEXT,            -- service accounts: the person accountable
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE UNIQUE INDEX users_idp_subject ON users (idp, idp_subject) WHERE idp_subject IS NOT NULL;

CREATE TABLE groups (
    id           TEXT PRIMARY KEY,
    display_name TEXT NOT NULL UNIQUE,
    external_id  TEXT,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);

CREATE TABLE group_members (
    group_id TEXT NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    user_id  TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, user_id)
);

-- Personal access tokens and service-account tokens. Only a SHA-256 of the secret
-- is kept; the token is shown once.
CREATE TABLE api_tokens (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    secret_hash TEXT NOT NULL UNIQUE,
    scopes      TEXT NOT NULL,     -- JSON array: "vs:<name>", "vs:*", "admin", "scim"
    expires_at  INTEGER,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);

CREATE TABLE oauth_clients (
    client_id        TEXT PRIMARY KEY,
    secret_hash      TEXT,
    kind             TEXT NOT NULL,   -- 'dcr' or 'cimd'
    client_name      TEXT NOT NULL,
    redirect_uris    TEXT NOT NULL,   -- JSON array
    application_type TEXT NOT NULL,
    auth_method      TEXT NOT NULL,
    metadata         TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    fetched_at       INTEGER
);

-- A browser's authorization request between /authorize and the code.
CREATE TABLE auth_requests (
    id          TEXT PRIMARY KEY,
    params      TEXT NOT NULL,       -- JSON of the validated request
    csrf        TEXT NOT NULL,
    idp_state   TEXT UNIQUE,         -- set only after consent
    idp_nonce   TEXT,
    idp_verifier TEXT,
    idp         TEXT,
    expires_at  INTEGER NOT NULL
);

CREATE TABLE auth_codes (
    code_hash      TEXT PRIMARY KEY,
    client_id      TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    redirect_uri   TEXT NOT NULL,
    code_challenge TEXT NOT NULL,
    resource       TEXT NOT NULL,
    scope          TEXT NOT NULL,
    expires_at     INTEGER NOT NULL,
    used_at        INTEGER,
    family_id      TEXT             -- set when redeemed; revoked on replay
);

-- One family per authorization: refresh tokens rotate inside it; reuse of a spent
-- refresh token revokes the family and every access token that names it.
CREATE TABLE token_families (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_id  TEXT NOT NULL,
    resource   TEXT NOT NULL,
    scope      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER,
    revoke_reason TEXT
);

CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    family_id  TEXT NOT NULL REFERENCES token_families (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    used_at    INTEGER
);

CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY,
    alg         TEXT NOT NULL,
    private_der TEXT NOT NULL,     -- base64 PKCS#8
    public_raw  TEXT NOT NULL,     -- base64url
    created_at  INTEGER NOT NULL,
    retired_at  INTEGER
);

CREATE TABLE identity_events (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    kind    TEXT NOT NULL,
    subject TEXT,
    at      INTEGER NOT NULL
);
