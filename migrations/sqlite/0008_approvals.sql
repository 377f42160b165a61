-- Decisions on agents' tool calls that wait for a person's approval (`tools.approval`):
-- one per step, the first one stands. The run of the task reads them while a step of
-- its waits `awaiting_approval`, so a decision reaches it on any node and after restarts.
CREATE TABLE IF NOT EXISTS approvals (
    task_id    TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    step_id    TEXT NOT NULL,
    -- 1: approved; 0: denied.
    approved   BIGINT NOT NULL,
    reason     TEXT,
    principal  TEXT,
    decided_at BIGINT NOT NULL,
    PRIMARY KEY (task_id, step_id)
);
