//! Decisions on agents' tool calls awaiting approval (`migrations/*/0008_approvals.sql`):
//! written by the API, read by the run that holds the task (`actors/src/run/approval.rs`).

use actors::task::store::Decision;

use super::{Store, StoreError};

macro_rules! backend {
    ($module:ident, $db:ty) => {
        pub mod $module {
            use super::*;
            use sqlx::Pool;

            pub async fn decisions(pool: &Pool<$db>, task_id: &str) -> Result<Vec<Decision>, sqlx::Error> {
                let rows: Vec<(String, i64, Option<String>, Option<String>)> = sqlx::query_as(
                    "SELECT step_id, approved, reason, principal FROM approvals WHERE task_id = $1",
                )
                .bind(task_id)
                .fetch_all(pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(step_id, approved, reason, by)| Decision {
                        step_id,
                        approved: approved == 1,
                        reason,
                        by,
                    })
                    .collect())
            }

            /// Decides every step of `task_id` awaiting approval (only `step`, when given)
            /// that has no decision yet; returns the steps decided.
            pub async fn decide(
                pool: &Pool<$db>,
                task_id: &str,
                step: Option<&str>,
                approved: bool,
                reason: Option<&str>,
                by: Option<&str>,
                now: i64,
            ) -> Result<Vec<String>, sqlx::Error> {
                // One statement, a write from its start: SQLite then takes the write lock at
                // once (waiting its busy timeout), where a read first could not upgrade.
                let mut decided: Vec<(String,)> = sqlx::query_as(
                    "INSERT INTO approvals (task_id, step_id, approved, reason, principal, decided_at) \
                     SELECT task_id, step_id, $3, $4, $5, $6 FROM steps \
                     WHERE task_id = $1 AND status = 'awaiting_approval' AND ($2 IS NULL OR step_id = $2) \
                     ON CONFLICT DO NOTHING RETURNING step_id",
                )
                .bind(task_id)
                .bind(step)
                .bind(i64::from(approved))
                .bind(reason)
                .bind(by)
                .bind(now)
                .fetch_all(pool)
                .await?;
                decided.sort();
                Ok(decided.into_iter().map(|(s,)| s).collect())
            }
        }
    };
}

backend!(sqlite, sqlx::Sqlite);
backend!(postgres, sqlx::Postgres);

impl Store {
    pub async fn decisions(&self, task_id: &str) -> Result<Vec<Decision>, StoreError> {
        Ok(on_backend!(self, decisions(task_id))?)
    }

    /// See [`sqlite::decide`].
    pub async fn decide(
        &self,
        task_id: &str,
        step: Option<&str>,
        approved: bool,
        reason: Option<&str>,
        by: Option<&str>,
        now: i64,
    ) -> Result<Vec<String>, StoreError> {
        Ok(on_backend!(
            self,
            decide(task_id, step, approved, reason, by, now)
        )?)
    }
}
