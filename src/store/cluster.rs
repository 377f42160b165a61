//! What the cluster asks of storage: the nodes that ever ran against this database, and
//! taking a down node's unfinished tasks over.
//!
//! A takeover moves ownership and bumps the lease epoch in one statement, so the old
//! owner (should it be alive after all, cut off) is fenced at once: its next record finds
//! a newer epoch and is refused. On PostgreSQL, `FOR UPDATE SKIP LOCKED` lets several
//! survivors take batches side by side, each task going to exactly one of them.

use actors::task::Priority;
use actors::task::store::now_ms;

use super::{Store, StoreError};

/// The takeover statement, with the subquery's row-lock clause of a backend.
macro_rules! take_over_sql {
    ($lock:literal) => {
        concat!(
            "UPDATE tasks SET owner = $1, lease_epoch = lease_epoch + 1, updated_at = $2 ",
            "WHERE id IN (SELECT id FROM tasks WHERE owner = $3 ",
            "AND status NOT IN ('succeeded', 'failed', 'cancelled', 'timed_out') ",
            "ORDER BY id LIMIT $4",
            $lock,
            ") RETURNING id, priority"
        )
    };
}

impl Store {
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

    /// Moves up to `limit` unfinished tasks owned by `from` to `to`, fencing `from`;
    /// returns them oldest first.
    pub async fn take_over(
        &self,
        from: &str,
        to: &str,
        limit: usize,
    ) -> Result<Vec<(String, Priority)>, StoreError> {
        let (now, limit) = (now_ms(), limit as i64);
        let mut rows: Vec<(String, i64)> = match self {
            Store::Sqlite(pool) => {
                sqlx::query_as(take_over_sql!(""))
                    .bind(to)
                    .bind(now)
                    .bind(from)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?
            }
            Store::Postgres(pool) => {
                sqlx::query_as(take_over_sql!(" FOR UPDATE SKIP LOCKED"))
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
