-- Tasks, their steps and their trace (DESIGN §4, §5). Timestamps are milliseconds since
-- the Unix epoch and JSON is stored as text, so both backends share one set of queries.
CREATE TABLE IF NOT EXISTS tasks (
    id              TEXT PRIMARY KEY,
    idempotency_key TEXT UNIQUE,
    priority        BIGINT NOT NULL,
    status          TEXT NOT NULL,
    description     TEXT,
    spec            TEXT NOT NULL,
    plan            TEXT,
    owner           TEXT,
    lease_epoch     BIGINT NOT NULL DEFAULT 0,
    error           TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    finished_at     BIGINT
);
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (status, priority, created_at);
CREATE INDEX IF NOT EXISTS tasks_by_created ON tasks (created_at, id);

CREATE TABLE IF NOT EXISTS steps (
    task_id    TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    step_id    TEXT NOT NULL,
    status     TEXT NOT NULL,
    attempts   TEXT NOT NULL,
    output     TEXT,
    epoch      BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (task_id, step_id)
);

CREATE TABLE IF NOT EXISTS task_events (
    task_id TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    seq     BIGINT NOT NULL,
    at      BIGINT NOT NULL,
    kind    TEXT NOT NULL,
    data    TEXT NOT NULL,
    PRIMARY KEY (task_id, seq)
);

CREATE TABLE IF NOT EXISTS memory (
    scope      TEXT NOT NULL,
    scope_id   TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    tags       TEXT NOT NULL,
    expires_at BIGINT,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (scope, scope_id, key)
);
