//! Task queries, written once and compiled for each backend.
//!
//! Both schemas use only BIGINT and TEXT and sqlx binds `$N` on SQLite too, so one text
//! of each query serves both; the [`backend!`] macro instantiates the functions for
//! `Sqlite` and for `Postgres` (sqlx's executors are not generic enough to write them once
//! as plain generic functions without a wall of bounds).

use actors::task::store::{Claim, StepState, Submitted, TaskEvent};
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
    /// Only this principal's tasks (`None`: everyone's).
    pub principal: Option<String>,
}

/// A task as `GET /api/v1/tasks/{id}` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TaskView {
    pub task_id: String,
    #[schema(value_type = TaskStatus)]
    pub status: String,
    #[schema(value_type = Priority)]
    pub priority: String,
    #[schema(required)]
    pub description: Option<String>,
    /// The node that runs it (or last ran it).
    #[schema(required)]
    pub owner: Option<String>,
    /// Who submitted it (the API token's `sub`); `null` when the API does not authenticate.
    #[schema(required)]
    pub principal: Option<String>,
    pub lease_epoch: i64,
    #[schema(required)]
    pub error: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    #[schema(required, format = DateTime)]
    pub finished_at: Option<String>,
    pub steps: Vec<StepView>,
    pub events: Vec<TaskEvent>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StepView {
    pub id: String,
    pub tool: String,
    pub depends_on: Vec<String>,
    #[schema(value_type = StepStatus)]
    pub status: String,
    pub attempts: Vec<Attempt>,
    /// Shown up to `tasks.inline_output_bytes`: see `output_truncated`.
    #[schema(required)]
    pub output: Option<Value>,
    /// An output of this step (its own or an attempt's) was cut here; the whole one is at
    /// `/api/v1/tasks/{id}/steps/{step}/output`.
    pub output_truncated: bool,
}

/// A task in a listing.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TaskSummary {
    pub task_id: String,
    #[schema(value_type = TaskStatus)]
    pub status: String,
    #[schema(value_type = Priority)]
    pub priority: String,
    #[schema(required)]
    pub description: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(required, format = DateTime)]
    pub finished_at: Option<String>,
}

pub fn rfc3339(ms: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(at).to_string()
}

pub(super) fn status_of(s: &str) -> TaskStatus {
    TaskStatus::parse(s).unwrap_or(TaskStatus::Failed)
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
    Option<String>, // principal
);

const SELECT_TASK: &str = "SELECT id, priority, status, description, spec, plan, owner, lease_epoch, \
                           error, created_at, updated_at, finished_at, principal FROM tasks WHERE id = $1";

pub(super) type StepRow = (String, String, String, Option<String>);

pub(super) fn step_state((step_id, status, attempts, output): StepRow) -> StepState {
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
        principal,
    ) = row;
    let spec: Option<TaskSpec> = serde_json::from_str(&spec).ok();
    let plan: Vec<StepSpec> = plan
        .and_then(|p| serde_json::from_str(&p).ok())
        .or_else(|| spec.and_then(|s| s.steps))
        .unwrap_or_default();
    // A step with no record of a task that ended never ran: it reads as the task ended.
    let unrecorded = match status_of(&status) {
        TaskStatus::Cancelled | TaskStatus::TimedOut => "cancelled",
        TaskStatus::Failed | TaskStatus::Succeeded => "skipped",
        _ => "pending",
    };
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
                    .map_or(unrecorded, |s| s.status.as_str())
                    .to_string(),
                attempts: state
                    .as_ref()
                    .map(|s| s.attempts.clone())
                    .unwrap_or_default(),
                output: state.and_then(|s| s.output),
                output_truncated: false,
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
        principal,
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
    ($module:ident, $db:ty, $snapshot:literal) => {
        pub mod $module {
            use super::*;
            use sqlx::{Pool, Transaction};

            type Tx<'a> = Transaction<'a, $db>;

            pub async fn cancel_queued(tx: &mut Tx<'_>, task_id: &str, now: i64) -> Result<Option<TaskStatus>, sqlx::Error> {
                let cancelled = sqlx::query(
                    "UPDATE tasks SET status = 'cancelled', updated_at = $2, finished_at = $2, \
                     lease_epoch = lease_epoch + 1, error = 'cancelled before it started' \
                     WHERE id = $1 AND status = 'queued'",
                )
                .bind(task_id)
                .bind(now)
                .execute(&mut **tx)
                .await?
                .rows_affected()
                    == 1;
                if cancelled {
                    sqlx::query(
                        "INSERT INTO task_events (task_id, seq, at, kind, data) \
                         SELECT $1, COALESCE(MAX(seq), -1) + 1, $2, 'cancelled', \
                         '{\"error\":\"cancelled before it started\"}' FROM task_events WHERE task_id = $1",
                    )
                    .bind(task_id)
                    .bind(now)
                    .execute(&mut **tx)
                    .await?;
                }
                let status: Option<(String,)> = sqlx::query_as("SELECT status FROM tasks WHERE id = $1")
                    .bind(task_id)
                    .fetch_optional(&mut **tx)
                    .await?;
                Ok(status.map(|s| status_of(&s.0)))
            }

            pub async fn get(pool: &Pool<$db>, task_id: &str) -> Result<Option<TaskView>, sqlx::Error> {
                let mut tx = pool.begin_with($snapshot).await?;
                let row: Option<TaskRow> = sqlx::query_as(SELECT_TASK)
                    .bind(task_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let steps: Vec<StepRow> =
                    sqlx::query_as("SELECT step_id, status, attempts, output FROM steps WHERE task_id = $1")
                        .bind(task_id)
                        .fetch_all(&mut *tx)
                        .await?;
                let events = sqlx::query_as(
                    "SELECT seq, at, kind, data FROM task_events WHERE task_id = $1 ORDER BY seq",
                )
                .bind(task_id)
                .fetch_all(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(Some(view(row, steps, events)))
            }

            /// Whether task `task_id` exists and, if so, who submitted it.
            pub async fn principal(pool: &Pool<$db>, task_id: &str) -> Result<Option<Option<String>>, sqlx::Error> {
                let row: Option<(Option<String>,)> = sqlx::query_as("SELECT principal FROM tasks WHERE id = $1")
                    .bind(task_id)
                    .fetch_optional(pool)
                    .await?;
                Ok(row.map(|(p,)| p))
            }

            pub async fn list(pool: &Pool<$db>, f: &TaskFilter) -> Result<Vec<TaskSummary>, sqlx::Error> {
                let rows: Vec<(String, String, i64, Option<String>, i64, Option<i64>)> = sqlx::query_as(
                    "SELECT id, status, priority, description, created_at, finished_at FROM tasks \
                     WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR priority = $2) \
                     AND ($3 IS NULL OR id < $3) AND ($5 IS NULL OR principal = $5) \
                     ORDER BY id DESC LIMIT $4",
                )
                .bind(f.status.map(|s| s.as_str()))
                .bind(f.priority.map(|p| p.rank()))
                .bind(&f.cursor)
                .bind(f.limit)
                .bind(&f.principal)
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

            /// `owner`'s unfinished tasks, oldest first; only those a run has started
            /// (`planning`, `running`: found by the status index, so a deep queue costs
            /// nothing) when `started_only`.
            pub async fn unfinished(
                pool: &Pool<$db>,
                owner: &str,
                started_only: bool,
            ) -> Result<Vec<(String, Priority)>, sqlx::Error> {
                let q = if started_only {
                    "SELECT id, priority FROM tasks \
                     WHERE status IN ('planning', 'running') AND owner = $1 ORDER BY id"
                } else {
                    "SELECT id, priority FROM tasks \
                     WHERE status NOT IN ('succeeded', 'failed', 'cancelled', 'timed_out') \
                       AND owner = $1 ORDER BY id"
                };
                let rows: Vec<(String, i64)> = sqlx::query_as(q).bind(owner).fetch_all(pool).await?;
                Ok(rows.into_iter().map(|(id, p)| (id, Priority::from_rank(p))).collect())
            }
        }
    };
}

// A task is read in one snapshot: its row, steps and trace are written in one
// transaction, and separate reads could show a step recorded on a task still `queued`.
backend!(sqlite, sqlx::Sqlite, "BEGIN");
backend!(
    postgres,
    sqlx::Postgres,
    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
);
