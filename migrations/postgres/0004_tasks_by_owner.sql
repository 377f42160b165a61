-- A cluster takes over the unfinished tasks of a node that is down; this index finds them
-- by owner without reading the finished ones (most of the table).
CREATE INDEX IF NOT EXISTS tasks_unfinished_by_owner ON tasks (owner, id)
    WHERE status NOT IN ('succeeded', 'failed', 'cancelled', 'timed_out');
