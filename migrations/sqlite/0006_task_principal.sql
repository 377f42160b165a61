-- Who submitted a task (the API token's `sub`; NULL when the API does not authenticate):
-- a caller lists, reads, follows and cancels only its own tasks unless its scopes say
-- otherwise. Idempotency keys are kept per principal (the stored key is prefixed with
-- the principal's name), so that callers never collide or learn of each other's tasks.
ALTER TABLE tasks ADD COLUMN principal TEXT;
-- A principal's listing, newest first, without reading other principals' tasks.
CREATE INDEX IF NOT EXISTS tasks_by_principal ON tasks (principal, id);
