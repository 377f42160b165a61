//! The Memory role's entries in SQL (the `memory` table), for both backends.
//!
//! Tags are stored as a JSON array and matched in Rust after a scope-and-text query: the
//! blackboard of one scope is small, and this keeps one query text for both backends.

use actors::roles::memory::{MemoryEntry, MemoryStore, SEARCH_LIMIT};
use actors::task::store::{BoxFuture, StoreError, now_ms};

use super::{Store, Tasks};

type Row = (String, String, String, String, String, Option<i64>);

fn entry((scope, scope_id, key, value, tags, expires_at_ms): Row) -> MemoryEntry {
    MemoryEntry {
        scope,
        scope_id,
        key,
        value,
        tags: serde_json::from_str(&tags).unwrap_or_default(),
        expires_at_ms,
    }
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            Store::Sqlite($pool) => $body,
            Store::Postgres($pool) => $body,
        }
    };
}

impl MemoryStore for Tasks {
    fn put(&self, e: MemoryEntry) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let now = now_ms();
            let tags = serde_json::to_string(&e.tags).unwrap_or_else(|_| "[]".into());
            on_pool!(&self.store, pool => {
                // Expired entries go as new ones come, so the table does not keep them.
                sqlx::query("DELETE FROM memory WHERE expires_at IS NOT NULL AND expires_at < $1")
                    .bind(now)
                    .execute(pool)
                    .await
                    .map_err(unavailable)?;
                sqlx::query(
                    "INSERT INTO memory (scope, scope_id, key, value, tags, expires_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (scope, scope_id, key) DO UPDATE \
                     SET value = excluded.value, tags = excluded.tags, expires_at = excluded.expires_at, \
                     updated_at = excluded.updated_at",
                )
                .bind(&e.scope)
                .bind(&e.scope_id)
                .bind(&e.key)
                .bind(&e.value)
                .bind(&tags)
                .bind(e.expires_at_ms)
                .bind(now)
                .execute(pool)
                .await
                .map_err(unavailable)?;
            });
            Ok(())
        })
    }

    fn get(
        &self,
        scope: String,
        scope_id: String,
        key: String,
    ) -> BoxFuture<'_, Result<Option<MemoryEntry>, StoreError>> {
        Box::pin(async move {
            let row: Option<Row> = on_pool!(&self.store, pool => sqlx::query_as(
                "SELECT scope, scope_id, key, value, tags, expires_at FROM memory \
                 WHERE scope = $1 AND scope_id = $2 AND key = $3 AND (expires_at IS NULL OR expires_at >= $4)",
            )
            .bind(&scope)
            .bind(&scope_id)
            .bind(&key)
            .bind(now_ms())
            .fetch_optional(pool)
            .await
            .map_err(unavailable)?);
            Ok(row.map(entry))
        })
    }

    fn search(
        &self,
        scope: String,
        scope_id: String,
        tags: Vec<String>,
        text: Option<String>,
    ) -> BoxFuture<'_, Result<Vec<MemoryEntry>, StoreError>> {
        Box::pin(async move {
            let pattern = text.map(|t| format!("%{}%", t.to_lowercase()));
            let rows: Vec<Row> = on_pool!(&self.store, pool => sqlx::query_as(
                "SELECT scope, scope_id, key, value, tags, expires_at FROM memory \
                 WHERE scope = $1 AND scope_id = $2 AND (expires_at IS NULL OR expires_at >= $3) \
                 AND ($4 IS NULL OR LOWER(key) LIKE $4 OR LOWER(value) LIKE $4) ORDER BY key",
            )
            .bind(&scope)
            .bind(&scope_id)
            .bind(now_ms())
            .bind(&pattern)
            .fetch_all(pool)
            .await
            .map_err(unavailable)?);
            Ok(rows
                .into_iter()
                .map(entry)
                .filter(|e| tags.iter().all(|t| e.tags.contains(t)))
                .take(SEARCH_LIMIT as usize)
                .collect())
        })
    }

    fn delete(
        &self,
        scope: String,
        scope_id: String,
        key: String,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let n = on_pool!(&self.store, pool => sqlx::query(
                "DELETE FROM memory WHERE scope = $1 AND scope_id = $2 AND key = $3",
            )
            .bind(&scope)
            .bind(&scope_id)
            .bind(&key)
            .execute(pool)
            .await
            .map_err(unavailable)?
            .rows_affected());
            Ok(n > 0)
        })
    }
}
