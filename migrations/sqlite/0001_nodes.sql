-- Nodes that have run against this database: one row per node name.
CREATE TABLE IF NOT EXISTS nodes (
    name          TEXT PRIMARY KEY,
    version       TEXT NOT NULL,
    first_started TEXT NOT NULL,
    last_started  TEXT NOT NULL,
    starts        INTEGER NOT NULL DEFAULT 1
);
