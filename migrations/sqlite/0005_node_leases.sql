-- Each node's lease on its work, in milliseconds since the Unix epoch by the database's
-- clock (0: none). Another node may take a node's tasks over only once it has expired:
-- the database that holds the results is the arbiter of who owns them.
ALTER TABLE nodes ADD COLUMN lease_expires BIGINT NOT NULL DEFAULT 0;
