-- Sessions: conversations with an agent, turn by turn. A turn is an agent task (its LLM
-- calls and tool calls are the task's steps); `session_turns` links each turn to its task.
-- The turn row is written before its task is submitted, so a turn number is taken by one
-- request only (the primary key) and a second turn cannot start while one runs.
CREATE TABLE IF NOT EXISTS sessions (
    id         TEXT PRIMARY KEY,
    -- The API token's `sub` that started it (NULL when the API does not authenticate).
    principal  TEXT,
    -- `open` or `ended`.
    status     TEXT NOT NULL,
    -- JSON: system prompt, tools and limits every turn runs with.
    settings   TEXT NOT NULL,
    -- The node whose Coordinator owns the session.
    node       TEXT NOT NULL,
    -- Turns taken (the last turn's number).
    turns      BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    ended_at   BIGINT
);
CREATE INDEX IF NOT EXISTS sessions_by_principal ON sessions (principal, id);

CREATE TABLE IF NOT EXISTS session_turns (
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    turn       BIGINT NOT NULL,
    task_id    TEXT NOT NULL,
    message    TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    -- When this turn folds older turns into a new summary (its task's `summary` step):
    -- the last turn that summary covers. Later turns are given that summary for them.
    summarized_through BIGINT,
    PRIMARY KEY (session_id, turn)
);
