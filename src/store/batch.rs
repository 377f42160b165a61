//! Many tasks' writes as a few multi-row statements.
//!
//! The group-commit writer already puts a batch in one transaction; this module also
//! folds the batch's rows into one statement per table and kind (one `INSERT … VALUES
//! (…), (…)` for all new tasks, one `UPDATE … RETURNING` for all claims, one fenced
//! `UPDATE … FROM (VALUES …)` for all progress records). With SQLite every statement is a
//! round trip to sqlx's connection thread, so statements per task, not commits, set the
//! ceiling on throughput.

use std::collections::HashMap;

use actors::task::store::{Claim, FIRST_EPOCH, NewTask, Progress, Submitted};
use actors::task::{Priority, TaskSpec, TaskStatus};
use serde::Serialize;

use super::tasks::{StepRow, status_of, step_state};

/// Rows per statement: well under both backends' limits on bound parameters.
const CHUNK: usize = 256;

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

macro_rules! batch_backend {
    ($module:ident, $db:ty) => {
        pub mod $module {
            use super::*;
            use sqlx::{QueryBuilder, Transaction};

            type Tx<'a> = Transaction<'a, $db>;

            /// Inserts new tasks; a repeated idempotency key finds the earlier task.
            pub async fn submit(tx: &mut Tx<'_>, tasks: &[&NewTask]) -> Result<Vec<Submitted>, sqlx::Error> {
                let mut inserted = std::collections::HashSet::new();
                for chunk in tasks.chunks(CHUNK) {
                    let mut q = QueryBuilder::<$db>::new(
                        "INSERT INTO tasks (id, idempotency_key, priority, status, description, spec, \
                         owner, lease_epoch, created_at, updated_at) ",
                    );
                    q.push_values(chunk, |mut row, task| {
                        row.push_bind(task.id.clone())
                            .push_bind(task.spec.idempotency_key.clone())
                            .push_bind(task.spec.priority.rank())
                            .push_bind("queued")
                            .push_bind(task.spec.description.clone())
                            .push_bind(json(&*task.spec))
                            .push_bind(task.owner.clone())
                            .push_bind(FIRST_EPOCH)
                            .push_bind(task.created_at_ms)
                            .push_bind(task.created_at_ms);
                    });
                    q.push(" ON CONFLICT DO NOTHING RETURNING id");
                    let ids: Vec<(String,)> = q.build_query_as().fetch_all(&mut **tx).await?;
                    inserted.extend(ids.into_iter().map(|(id,)| id));
                }
                let fresh: Vec<&&NewTask> = tasks.iter().filter(|t| inserted.contains(&t.id)).collect();
                for chunk in fresh.chunks(CHUNK) {
                    let mut q = QueryBuilder::<$db>::new("INSERT INTO task_events (task_id, seq, at, kind, data) ");
                    q.push_values(chunk, |mut row, task| {
                        row.push_bind(task.id.clone())
                            .push_bind(0i64)
                            .push_bind(task.created_at_ms)
                            .push_bind("submitted")
                            .push_bind("{}");
                    });
                    q.build().execute(&mut **tx).await?;
                }
                let mut out = Vec::with_capacity(tasks.len());
                for task in tasks {
                    if inserted.contains(&task.id) {
                        out.push(Submitted {
                            task_id: task.id.clone(),
                            created: true,
                            status: TaskStatus::Queued,
                            priority: task.spec.priority,
                        });
                    } else {
                        // Rare: an idempotency key seen before (or earlier in this batch).
                        let (id, status, priority): (String, String, i64) = sqlx::query_as(
                            "SELECT id, status, priority FROM tasks WHERE idempotency_key = $1",
                        )
                        .bind(&task.spec.idempotency_key)
                        .fetch_one(&mut **tx)
                        .await?;
                        out.push(Submitted {
                            task_id: id,
                            created: false,
                            status: status_of(&status),
                            priority: Priority::from_rank(priority),
                        });
                    }
                }
                Ok(out)
            }

            /// Claims tasks for `node`: bumps their epochs (fencing earlier owners) and reads
            /// back what is recorded. The run records `started` itself.
            pub async fn claim(
                tx: &mut Tx<'_>,
                ids: &[&str],
                node: &str,
                now: i64,
            ) -> Result<Vec<Option<Claim>>, sqlx::Error> {
                let mut claimed: HashMap<String, (i64, String, String, Option<String>, i64)> = HashMap::new();
                for chunk in ids.chunks(CHUNK) {
                    let mut q = QueryBuilder::<$db>::new("UPDATE tasks SET lease_epoch = lease_epoch + 1, owner = ");
                    q.push_bind(node.to_string())
                        .push(", updated_at = ")
                        .push_bind(now)
                        .push(" WHERE status NOT IN ('succeeded', 'failed', 'cancelled', 'timed_out') AND id IN (");
                    let mut list = q.separated(", ");
                    for id in chunk {
                        list.push_bind(id.to_string());
                    }
                    q.push(") RETURNING id, lease_epoch, status, spec, plan, created_at");
                    let rows: Vec<(String, i64, String, String, Option<String>, i64)> =
                        q.build_query_as().fetch_all(&mut **tx).await?;
                    for (id, epoch, status, spec, plan, created) in rows {
                        claimed.insert(id, (epoch, status, spec, plan, created));
                    }
                }
                let mut out = Vec::with_capacity(ids.len());
                for id in ids {
                    let Some((epoch, status, spec, plan, created_at_ms)) = claimed.remove(*id) else {
                        out.push(None);
                        continue;
                    };
                    let status = status_of(&status);
                    // A run's first record marks its task running, so a task still queued
                    // has nothing recorded but `submitted` (seq 0).
                    let (steps, next_seq) = if status == TaskStatus::Queued {
                        (Vec::new(), 1)
                    } else {
                        let steps: Vec<StepRow> = sqlx::query_as(
                            "SELECT step_id, status, attempts, output FROM steps WHERE task_id = $1",
                        )
                        .bind(*id)
                        .fetch_all(&mut **tx)
                        .await?;
                        let (next,): (i64,) = sqlx::query_as(
                            "SELECT COALESCE(MAX(seq), -1) + 1 FROM task_events WHERE task_id = $1",
                        )
                        .bind(*id)
                        .fetch_one(&mut **tx)
                        .await?;
                        (steps, next)
                    };
                    let spec: TaskSpec = serde_json::from_str(&spec).map_err(|e| sqlx::Error::Decode(e.into()))?;
                    out.push(Some(Claim {
                        epoch,
                        spec: std::sync::Arc::new(spec),
                        status,
                        plan: plan.as_deref().and_then(|p| serde_json::from_str(p).ok()),
                        steps: steps.into_iter().map(step_state).collect(),
                        next_seq,
                        created_at_ms,
                    }));
                }
                Ok(out)
            }

            /// Records runs' progress; each is fenced by its lease epoch. `Err(epoch)` for a
            /// record whose epoch is stale (with the current one).
            pub async fn record(
                tx: &mut Tx<'_>,
                records: &[&Progress],
                now: i64,
            ) -> Result<Vec<Result<(), i64>>, sqlx::Error> {
                let mut current = std::collections::HashSet::new();
                for chunk in records.chunks(CHUNK) {
                    let mut q = QueryBuilder::<$db>::new(
                        "UPDATE tasks SET updated_at = v.column3, status = COALESCE(v.column4, tasks.status), \
                         plan = COALESCE(v.column5, tasks.plan), error = COALESCE(v.column6, tasks.error), \
                         finished_at = COALESCE(v.column7, tasks.finished_at) FROM (",
                    );
                    q.push_values(chunk, |mut row, p| {
                        let finished = p.status.filter(|s| s.is_final()).map(|_| now);
                        row.push_bind(p.task_id.clone())
                            .push_bind(p.epoch)
                            .push_bind(now)
                            .push_bind(p.status.map(|s| s.as_str()))
                            .push_bind(p.plan.as_ref().map(json))
                            .push_bind(p.error.clone())
                            .push_bind(finished);
                    });
                    q.push(") AS v WHERE tasks.id = v.column1 AND tasks.lease_epoch = v.column2 RETURNING tasks.id");
                    let ids: Vec<(String,)> = q.build_query_as().fetch_all(&mut **tx).await?;
                    current.extend(ids.into_iter().map(|(id,)| id));
                }
                let live: Vec<&&Progress> = records.iter().filter(|p| current.contains(&p.task_id)).collect();
                let steps: Vec<(&Progress, &actors::task::store::StepState)> =
                    live.iter().flat_map(|p| p.steps.iter().map(move |s| (**p, s))).collect();
                for chunk in steps.chunks(CHUNK) {
                    let mut q = QueryBuilder::<$db>::new(
                        "INSERT INTO steps (task_id, step_id, status, attempts, output, epoch, updated_at) ",
                    );
                    q.push_values(chunk, |mut row, (p, step)| {
                        row.push_bind(p.task_id.clone())
                            .push_bind(step.step_id.clone())
                            .push_bind(step.status.as_str())
                            .push_bind(json(&step.attempts))
                            .push_bind(step.output.as_ref().map(json))
                            .push_bind(p.epoch)
                            .push_bind(now);
                    });
                    // A final result is recorded once: a final row is never overwritten.
                    q.push(
                        " ON CONFLICT (task_id, step_id) DO UPDATE SET status = excluded.status, \
                         attempts = excluded.attempts, output = excluded.output, epoch = excluded.epoch, \
                         updated_at = excluded.updated_at \
                         WHERE steps.status IN ('pending', 'running') AND steps.epoch <= excluded.epoch",
                    );
                    q.build().execute(&mut **tx).await?;
                }
                let events: Vec<(&Progress, &actors::task::store::TaskEvent)> =
                    live.iter().flat_map(|p| p.events.iter().map(move |e| (**p, e))).collect();
                for chunk in events.chunks(CHUNK) {
                    let mut q = QueryBuilder::<$db>::new("INSERT INTO task_events (task_id, seq, at, kind, data) ");
                    q.push_values(chunk, |mut row, (p, e)| {
                        row.push_bind(p.task_id.clone())
                            .push_bind(e.seq)
                            .push_bind(e.at_ms)
                            .push_bind(e.kind.clone())
                            .push_bind(json(&e.data));
                    });
                    q.push(" ON CONFLICT DO NOTHING");
                    q.build().execute(&mut **tx).await?;
                }
                let mut out = Vec::with_capacity(records.len());
                for p in records {
                    if current.contains(&p.task_id) {
                        out.push(Ok(()));
                    } else {
                        let epoch: Option<(i64,)> = sqlx::query_as("SELECT lease_epoch FROM tasks WHERE id = $1")
                            .bind(&p.task_id)
                            .fetch_optional(&mut **tx)
                            .await?;
                        out.push(Err(epoch.map_or(-1, |e| e.0)));
                    }
                }
                Ok(out)
            }
        }
    };
}

batch_backend!(sqlite, sqlx::Sqlite);
batch_backend!(postgres, sqlx::Postgres);
