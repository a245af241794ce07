-- Daily usage counters for cost attribution, and the daily quota counters
-- that let quotas survive restarts. Days are UTC, as `YYYY-MM-DD`. Rows only
-- ever grow by upserts of deltas, so replicas can add to the same rows.

CREATE TABLE usage_daily (
    day            TEXT NOT NULL,
    team           TEXT NOT NULL,    -- one of the caller's groups, or '-'
    user_name      TEXT NOT NULL,
    virtual_server TEXT NOT NULL,
    tool           TEXT NOT NULL,
    calls          INTEGER NOT NULL DEFAULT 0,   -- admitted by rate limits and quotas
    refused        INTEGER NOT NULL DEFAULT 0,   -- refused by a rate limit or quota
    PRIMARY KEY (day, team, user_name, virtual_server, tool)
);

CREATE TABLE quota_daily (
    day        TEXT NOT NULL,
    limit_name TEXT NOT NULL,
    bucket     TEXT NOT NULL,        -- user id, group, tool or virtual server
    used       INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, limit_name, bucket)
);
