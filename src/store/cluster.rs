//! What the cluster asks of storage: the nodes that ever ran against this database, their
//! leases, and taking a gone node's unfinished tasks over.
//!
//! The database is the arbiter of ownership. Each node renews a lease in its `nodes` row,
//! stamped by the database's clock (so no two nodes' clocks are compared), and a takeover
//! moves a node's tasks only while that lease is expired — checked in the same statement
//! that moves them. A node that is paused, slow or cut from NATS but still reaches the
//! database keeps renewing, so its tasks stay its own whatever the others think of its
//! silence. The move bumps each task's lease epoch, so the old owner (should it come
//! back) is fenced at once: its next record finds a newer epoch and is refused. On
//! PostgreSQL, `FOR UPDATE SKIP LOCKED` lets several survivors take batches side by side,
//! each task going to exactly one of them.

use actors::task::Priority;
use actors::task::store::now_ms;

use super::{Store, StoreError};

/// The database's clock in milliseconds since the Unix epoch, per backend.
macro_rules! pg_now_ms {
    () => {
        "(extract(epoch from clock_timestamp()) * 1000)::bigint"
    };
}
macro_rules! sqlite_now_ms {
    () => {
        "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
    };
}

/// The takeover statement, with the database's clock and the subquery's row-lock clause
/// of a backend. Nothing moves while the owner's lease holds.
macro_rules! take_over_sql {
    ($now:expr, $lock:literal) => {
        concat!(
            "UPDATE tasks SET owner = $1, lease_epoch = lease_epoch + 1, updated_at = $2 ",
            "WHERE id IN (SELECT id FROM tasks WHERE owner = $3 ",
            "AND status NOT IN ('succeeded', 'failed', 'cancelled', 'timed_out') ",
            "AND NOT EXISTS (SELECT 1 FROM nodes WHERE name = $3 AND lease_expires > ",
            $now,
            ") ORDER BY id LIMIT $4",
            $lock,
            ") RETURNING id, priority"
        )
    };
}

/// The lease renewal, by the database's clock.
macro_rules! renew_sql {
    ($now:expr) => {
        concat!(
            "UPDATE nodes SET lease_expires = ",
            $now,
            " + $2 WHERE name = $1"
        )
    };
}

impl Store {
    /// Renews `node`'s lease for `ttl_ms` from now by the database's clock.
    pub async fn renew_lease(&self, node: &str, ttl_ms: i64) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(pool) => {
                sqlx::query(renew_sql!(sqlite_now_ms!()))
                    .bind(node)
                    .bind(ttl_ms)
                    .execute(pool)
                    .await?;
            }
            Store::Postgres(pool) => {
                sqlx::query(renew_sql!(pg_now_ms!()))
                    .bind(node)
                    .bind(ttl_ms)
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// Gives `node`'s lease up (it stops): its tasks may be taken over at once.
    pub async fn release_lease(&self, node: &str) -> Result<(), StoreError> {
        let q = "UPDATE nodes SET lease_expires = 0 WHERE name = $1";
        match self {
            Store::Sqlite(pool) => sqlx::query(q).bind(node).execute(pool).await.map(|_| ())?,
            Store::Postgres(pool) => sqlx::query(q).bind(node).execute(pool).await.map(|_| ())?,
        }
        Ok(())
    }

    /// Makes `node` the owner of every unfinished task: for a single node on its own
    /// SQLite file, which owns all of them whatever names it ran under before.
    pub async fn adopt_all(&self, node: &str) -> Result<u64, StoreError> {
        // No epoch bump: nobody else can hold them (the claim that follows bumps it).
        let q = "UPDATE tasks SET owner = $1 \
                 WHERE (owner IS NULL OR owner <> $1) \
                 AND status NOT IN ('succeeded', 'failed', 'cancelled', 'timed_out')";
        Ok(match self {
            Store::Sqlite(pool) => sqlx::query(q)
                .bind(node)
                .execute(pool)
                .await?
                .rows_affected(),
            Store::Postgres(pool) => sqlx::query(q)
                .bind(node)
                .execute(pool)
                .await?
                .rows_affected(),
        })
    }

    /// Names of every node that has started against this database.
    pub async fn known_nodes(&self) -> Result<Vec<String>, StoreError> {
        let q = "SELECT name FROM nodes ORDER BY name";
        let rows: Vec<(String,)> = match self {
            Store::Sqlite(pool) => sqlx::query_as(q).fetch_all(pool).await?,
            Store::Postgres(pool) => sqlx::query_as(q).fetch_all(pool).await?,
        };
        Ok(rows.into_iter().map(|(n,)| n).collect())
    }

    /// Which of `ids` are final (their result recorded).
    pub async fn finished_among(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let q = "SELECT id FROM tasks WHERE id = ANY($1) \
                 AND status IN ('succeeded', 'failed', 'cancelled', 'timed_out')";
        let rows: Vec<(String,)> = match self {
            // Clusters run on PostgreSQL; SQLite has no arrays, so ask one by one.
            Store::Sqlite(pool) => {
                let mut out = Vec::new();
                for id in ids {
                    out.extend(
                        sqlx::query_as::<_, (String,)>(
                            "SELECT id FROM tasks WHERE id = $1 \
                             AND status IN ('succeeded', 'failed', 'cancelled', 'timed_out')",
                        )
                        .bind(id)
                        .fetch_optional(pool)
                        .await?,
                    );
                }
                out
            }
            Store::Postgres(pool) => sqlx::query_as(q).bind(ids).fetch_all(pool).await?,
        };
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// How many unfinished tasks `owner` holds.
    pub async fn count_unfinished(&self, owner: &str) -> Result<usize, StoreError> {
        let q = "SELECT COUNT(*) FROM tasks WHERE owner = $1 \
                 AND status NOT IN ('succeeded', 'failed', 'cancelled', 'timed_out')";
        let (n,): (i64,) = match self {
            Store::Sqlite(pool) => sqlx::query_as(q).bind(owner).fetch_one(pool).await?,
            Store::Postgres(pool) => sqlx::query_as(q).bind(owner).fetch_one(pool).await?,
        };
        Ok(n as usize)
    }

    /// Moves up to `limit` unfinished tasks owned by `from` to `to`, fencing `from`, if
    /// `from`'s lease has expired; returns them oldest first.
    pub async fn take_over(
        &self,
        from: &str,
        to: &str,
        limit: usize,
    ) -> Result<Vec<(String, Priority)>, StoreError> {
        let (now, limit) = (now_ms(), limit as i64);
        let mut rows: Vec<(String, i64)> = match self {
            Store::Sqlite(pool) => {
                sqlx::query_as(take_over_sql!(sqlite_now_ms!(), ""))
                    .bind(to)
                    .bind(now)
                    .bind(from)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?
            }
            Store::Postgres(pool) => {
                sqlx::query_as(take_over_sql!(pg_now_ms!(), " FOR UPDATE SKIP LOCKED"))
                    .bind(to)
                    .bind(now)
                    .bind(from)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?
            }
        };
        rows.sort();
        Ok(rows
            .into_iter()
            .map(|(id, p)| (id, Priority::from_rank(p)))
            .collect())
    }
}
