-- Listings and resumption order tasks by id, which is time-ordered (UUIDv7), so an index on
-- created_at is never read; every insert paid for it. The status index serves
-- `?status=…` listings newest first.
DROP INDEX IF EXISTS tasks_by_created;
DROP INDEX IF EXISTS tasks_by_status;
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (status, id);
