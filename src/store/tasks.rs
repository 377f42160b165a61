//! Task queries, written once and compiled for each backend.
//!
//! Both schemas use only BIGINT and TEXT and sqlx binds `$N` on SQLite too, so one text
//! of each query serves both; the [`backend!`] macro instantiates the functions for
//! `Sqlite` and for `Postgres` (sqlx's executors are not generic enough to write them once
//! as plain generic functions without a wall of bounds).

use actors::task::store::{Claim, NewTask, Progress, StepState, Submitted, TaskEvent};
use actors::task::{Attempt, Priority, StepSpec, StepStatus, TaskSpec, TaskStatus};
use serde::Serialize;
use serde_json::Value;

/// Filters and paging for listing tasks.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub status: Option<TaskStatus>,
    pub priority: Option<Priority>,
    pub limit: i64,
    /// The `id` of the last task of the previous page (ids are time-ordered UUIDv7).
    pub cursor: Option<String>,
}

/// A task as `GET /api/v1/tasks/{id}` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TaskView {
    pub task_id: String,
    pub status: String,
    pub priority: String,
    pub description: Option<String>,
    pub owner: Option<String>,
    pub lease_epoch: i64,
    pub error: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub finished_at: Option<String>,
    pub steps: Vec<StepView>,
    pub events: Vec<TaskEvent>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepView {
    pub id: String,
    pub tool: String,
    pub depends_on: Vec<String>,
    pub status: String,
    pub attempts: Vec<Attempt>,
    pub output: Option<Value>,
}

/// A task in a listing.
#[derive(Debug, Clone, Serialize)]
pub struct TaskSummary {
    pub task_id: String,
    pub status: String,
    pub priority: String,
    pub description: Option<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
}

pub fn rfc3339(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

fn status_of(s: &str) -> TaskStatus {
    TaskStatus::parse(s).unwrap_or(TaskStatus::Failed)
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// Row of `tasks` read for a claim or a view.
type TaskRow = (
    String,         // id
    i64,            // priority
    String,         // status
    Option<String>, // description
    String,         // spec
    Option<String>, // plan
    Option<String>, // owner
    i64,            // lease_epoch
    Option<String>, // error
    i64,            // created_at
    i64,            // updated_at
    Option<i64>,    // finished_at
);

const SELECT_TASK: &str = "SELECT id, priority, status, description, spec, plan, owner, lease_epoch, \
                           error, created_at, updated_at, finished_at FROM tasks WHERE id = $1";

type StepRow = (String, String, String, Option<String>);

fn step_state((step_id, status, attempts, output): StepRow) -> StepState {
    StepState {
        step_id,
        status: StepStatus::parse(&status).unwrap_or(StepStatus::Pending),
        attempts: serde_json::from_str(&attempts).unwrap_or_default(),
        output: output.and_then(|o| serde_json::from_str(&o).ok()),
    }
}

fn view(row: TaskRow, steps: Vec<StepRow>, events: Vec<(i64, i64, String, String)>) -> TaskView {
    let (
        id,
        priority,
        status,
        description,
        spec,
        plan,
        owner,
        lease_epoch,
        error,
        created,
        updated,
        finished,
    ) = row;
    let spec: Option<TaskSpec> = serde_json::from_str(&spec).ok();
    let plan: Vec<StepSpec> = plan
        .and_then(|p| serde_json::from_str(&p).ok())
        .or_else(|| spec.and_then(|s| s.steps))
        .unwrap_or_default();
    let mut recorded: std::collections::HashMap<String, StepState> = steps
        .into_iter()
        .map(step_state)
        .map(|s| (s.step_id.clone(), s))
        .collect();
    let steps = plan
        .into_iter()
        .map(|p| {
            let state = recorded.remove(&p.id);
            StepView {
                status: state
                    .as_ref()
                    .map_or("pending", |s| s.status.as_str())
                    .to_string(),
                attempts: state
                    .as_ref()
                    .map(|s| s.attempts.clone())
                    .unwrap_or_default(),
                output: state.and_then(|s| s.output),
                id: p.id,
                tool: p.tool,
                depends_on: p.depends_on,
            }
        })
        .collect();
    TaskView {
        task_id: id,
        status,
        priority: Priority::from_rank(priority).as_str().to_string(),
        description,
        owner,
        lease_epoch,
        error,
        created_at: rfc3339(created),
        updated_at: rfc3339(updated),
        finished_at: finished.map(rfc3339),
        steps,
        events: events
            .into_iter()
            .map(|(seq, at_ms, kind, data)| TaskEvent {
                seq,
                at_ms,
                kind,
                data: serde_json::from_str(&data).unwrap_or(Value::Null),
            })
            .collect(),
    }
}

/// What one write operation produced, before the commit decides whether it stands.
pub enum Outcome {
    Submitted(Submitted),
    Claimed(Option<Claim>),
    Recorded(Result<(), i64>),
    Cancelled(TaskStatus),
}

macro_rules! backend {
    ($module:ident, $db:ty) => {
        pub mod $module {
            use super::*;
            use sqlx::{Pool, Transaction};

            type Tx<'a> = Transaction<'a, $db>;

            pub async fn submit(tx: &mut Tx<'_>, task: &NewTask) -> Result<Submitted, sqlx::Error> {
                let spec = &task.spec;
                let inserted = sqlx::query(
                    "INSERT INTO tasks (id, idempotency_key, priority, status, description, spec, \
                     created_at, updated_at) VALUES ($1, $2, $3, 'queued', $4, $5, $6, $6) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(&task.id)
                .bind(&spec.idempotency_key)
                .bind(spec.priority.rank())
                .bind(&spec.description)
                .bind(json(spec))
                .bind(task.created_at_ms)
                .execute(&mut **tx)
                .await?
                .rows_affected();
                if inserted == 1 {
                    sqlx::query(
                        "INSERT INTO task_events (task_id, seq, at, kind, data) VALUES ($1, 0, $2, 'submitted', '{}')",
                    )
                    .bind(&task.id)
                    .bind(task.created_at_ms)
                    .execute(&mut **tx)
                    .await?;
                    return Ok(Submitted {
                        task_id: task.id.clone(),
                        created: true,
                        status: TaskStatus::Queued,
                        priority: spec.priority,
                    });
                }
                let (id, status, priority): (String, String, i64) =
                    sqlx::query_as("SELECT id, status, priority FROM tasks WHERE idempotency_key = $1 OR id = $2")
                        .bind(&spec.idempotency_key)
                        .bind(&task.id)
                        .fetch_one(&mut **tx)
                        .await?;
                Ok(Submitted {
                    task_id: id,
                    created: false,
                    status: status_of(&status),
                    priority: Priority::from_rank(priority),
                })
            }

            /// Bumps the lease epoch, marks the task running and appends its `started`
            /// event, all in the caller's transaction.
            pub async fn claim(tx: &mut Tx<'_>, task_id: &str, node: &str, now: i64) -> Result<Option<Claim>, sqlx::Error> {
                let row: Option<(i64, String, String, Option<String>, i64)> = sqlx::query_as(
                    "UPDATE tasks SET lease_epoch = lease_epoch + 1, owner = $2, updated_at = $3, \
                     status = CASE WHEN status = 'queued' THEN 'running' ELSE status END \
                     WHERE id = $1 AND status NOT IN ('succeeded', 'failed', 'cancelled', 'timed_out') \
                     RETURNING lease_epoch, status, spec, plan, created_at",
                )
                .bind(task_id)
                .bind(node)
                .bind(now)
                .fetch_optional(&mut **tx)
                .await?;
                let Some((epoch, status, spec, plan, created_at_ms)) = row else {
                    return Ok(None);
                };
                // A first claim has nothing recorded but the `submitted` event (seq 0).
                let (steps, next_seq) = if epoch == 1 {
                    (Vec::new(), 1)
                } else {
                    let steps: Vec<StepRow> =
                        sqlx::query_as("SELECT step_id, status, attempts, output FROM steps WHERE task_id = $1")
                            .bind(task_id)
                            .fetch_all(&mut **tx)
                            .await?;
                    let (next,): (i64,) =
                        sqlx::query_as("SELECT COALESCE(MAX(seq), -1) + 1 FROM task_events WHERE task_id = $1")
                            .bind(task_id)
                            .fetch_one(&mut **tx)
                            .await?;
                    (steps, next)
                };
                sqlx::query("INSERT INTO task_events (task_id, seq, at, kind, data) VALUES ($1, $2, $3, 'started', $4)")
                    .bind(task_id)
                    .bind(next_seq)
                    .bind(now)
                    .bind(json(&serde_json::json!({"node": node, "epoch": epoch})))
                    .execute(&mut **tx)
                    .await?;
                let spec: TaskSpec = serde_json::from_str(&spec).map_err(|e| sqlx::Error::Decode(e.into()))?;
                Ok(Some(Claim {
                    epoch,
                    spec,
                    status: status_of(&status),
                    plan: plan.as_deref().and_then(|p| serde_json::from_str(p).ok()),
                    steps: steps.into_iter().map(step_state).collect(),
                    next_seq: next_seq + 1,
                    created_at_ms,
                }))
            }

            /// `Ok(Err(current_epoch))` when fenced.
            pub async fn record(tx: &mut Tx<'_>, p: &Progress, now: i64) -> Result<Result<(), i64>, sqlx::Error> {
                let status = p.status.map(|s| s.as_str());
                let finished = p.status.filter(|s| s.is_final()).map(|_| now);
                let plan = p.plan.as_ref().map(json);
                let fenced = sqlx::query(
                    "UPDATE tasks SET updated_at = $3, status = COALESCE($4, status), \
                     plan = COALESCE($5, plan), error = COALESCE($6, error), \
                     finished_at = COALESCE($7, finished_at) \
                     WHERE id = $1 AND lease_epoch = $2",
                )
                .bind(&p.task_id)
                .bind(p.epoch)
                .bind(now)
                .bind(status)
                .bind(plan)
                .bind(&p.error)
                .bind(finished)
                .execute(&mut **tx)
                .await?
                .rows_affected()
                    == 0;
                if fenced {
                    let current: Option<(i64,)> = sqlx::query_as("SELECT lease_epoch FROM tasks WHERE id = $1")
                        .bind(&p.task_id)
                        .fetch_optional(&mut **tx)
                        .await?;
                    return Ok(Err(current.map_or(-1, |c| c.0)));
                }
                for step in &p.steps {
                    // A final result is recorded once: a final row is never overwritten.
                    sqlx::query(
                        "INSERT INTO steps (task_id, step_id, status, attempts, output, epoch, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7) \
                         ON CONFLICT (task_id, step_id) DO UPDATE SET status = excluded.status, \
                         attempts = excluded.attempts, output = excluded.output, epoch = excluded.epoch, \
                         updated_at = excluded.updated_at \
                         WHERE steps.status IN ('pending', 'running') AND steps.epoch <= excluded.epoch",
                    )
                    .bind(&p.task_id)
                    .bind(&step.step_id)
                    .bind(step.status.as_str())
                    .bind(json(&step.attempts))
                    .bind(step.output.as_ref().map(json))
                    .bind(p.epoch)
                    .bind(now)
                    .execute(&mut **tx)
                    .await?;
                }
                for event in &p.events {
                    sqlx::query(
                        "INSERT INTO task_events (task_id, seq, at, kind, data) VALUES ($1, $2, $3, $4, $5) \
                         ON CONFLICT DO NOTHING",
                    )
                    .bind(&p.task_id)
                    .bind(event.seq)
                    .bind(event.at_ms)
                    .bind(&event.kind)
                    .bind(json(&event.data))
                    .execute(&mut **tx)
                    .await?;
                }
                Ok(Ok(()))
            }

            pub async fn cancel_queued(tx: &mut Tx<'_>, task_id: &str, now: i64) -> Result<Option<TaskStatus>, sqlx::Error> {
                sqlx::query(
                    "UPDATE tasks SET status = 'cancelled', updated_at = $2, finished_at = $2, \
                     error = 'cancelled before it started' WHERE id = $1 AND status = 'queued' AND owner IS NULL",
                )
                .bind(task_id)
                .bind(now)
                .execute(&mut **tx)
                .await?;
                let status: Option<(String,)> = sqlx::query_as("SELECT status FROM tasks WHERE id = $1")
                    .bind(task_id)
                    .fetch_optional(&mut **tx)
                    .await?;
                Ok(status.map(|s| status_of(&s.0)))
            }

            pub async fn get(pool: &Pool<$db>, task_id: &str) -> Result<Option<TaskView>, sqlx::Error> {
                let row: Option<TaskRow> = sqlx::query_as(SELECT_TASK)
                    .bind(task_id)
                    .fetch_optional(pool)
                    .await?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let steps: Vec<StepRow> =
                    sqlx::query_as("SELECT step_id, status, attempts, output FROM steps WHERE task_id = $1")
                        .bind(task_id)
                        .fetch_all(pool)
                        .await?;
                let events = sqlx::query_as(
                    "SELECT seq, at, kind, data FROM task_events WHERE task_id = $1 ORDER BY seq",
                )
                .bind(task_id)
                .fetch_all(pool)
                .await?;
                Ok(Some(view(row, steps, events)))
            }

            pub async fn list(pool: &Pool<$db>, f: &TaskFilter) -> Result<Vec<TaskSummary>, sqlx::Error> {
                let rows: Vec<(String, String, i64, Option<String>, i64, Option<i64>)> = sqlx::query_as(
                    "SELECT id, status, priority, description, created_at, finished_at FROM tasks \
                     WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR priority = $2) \
                     AND ($3 IS NULL OR id < $3) ORDER BY id DESC LIMIT $4",
                )
                .bind(f.status.map(|s| s.as_str()))
                .bind(f.priority.map(|p| p.rank()))
                .bind(&f.cursor)
                .bind(f.limit)
                .fetch_all(pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(id, status, priority, description, created, finished)| TaskSummary {
                        task_id: id,
                        status,
                        priority: Priority::from_rank(priority).as_str().to_string(),
                        description,
                        created_at: rfc3339(created),
                        finished_at: finished.map(rfc3339),
                    })
                    .collect())
            }

            pub async fn unfinished(pool: &Pool<$db>) -> Result<Vec<(String, Priority)>, sqlx::Error> {
                let rows: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT id, priority FROM tasks \
                     WHERE status NOT IN ('succeeded', 'failed', 'cancelled', 'timed_out') ORDER BY id",
                )
                .fetch_all(pool)
                .await?;
                Ok(rows.into_iter().map(|(id, p)| (id, Priority::from_rank(p))).collect())
            }
        }
    };
}

backend!(sqlite, sqlx::Sqlite);
backend!(postgres, sqlx::Postgres);
