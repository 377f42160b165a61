//! Sessions and their turns (`migrations/*/0007_sessions.sql`), written once for both
//! backends like [`super::tasks`].
//!
//! A turn is taken in the commit that stores its task (`store/batch.rs`, `claim_turns`):
//! the session's turn counter moves on only if it still holds the count the turn was
//! prepared at (here, [`sqlite::prepare_turn`]), and the turn's row goes in beside the
//! task's. So two requests never both take a turn, a turn runs only after the one before
//! it finished, and a turn and its task exist together or not at all.

use std::collections::HashMap;

use actors::run::summary::SUMMARY_STEP;
use actors::session::{PastTurn, SessionSettings, Usage, Window};
use actors::task::TaskStatus;
use serde::Serialize;
use serde_json::Value;

use super::tasks::rfc3339;
use super::{Store, StoreError};

/// A session as `GET /api/v1/sessions/{id}` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SessionView {
    pub session_id: String,
    /// `open` or `ended`.
    pub status: String,
    /// Who started it (the API token's `sub`); `null` when the API does not authenticate.
    #[schema(required)]
    pub principal: Option<String>,
    /// The node whose Coordinator owns the session: the one that runs (or last ran) its
    /// latest turn — after a takeover, the node that took it over —; before any turn,
    /// the node that started it.
    pub node: String,
    /// The Coordinator agent (on `node`) that coordinates its latest turn: the same one
    /// for every turn on a node; after a takeover, one of the new node's.
    #[schema(required)]
    pub coordinator: Option<String>,
    pub settings: SessionSettings,
    /// Tokens and calls of every turn.
    pub usage: Usage,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    #[schema(required, format = DateTime)]
    pub ended_at: Option<String>,
    pub turns: Vec<TurnView>,
}

/// One turn: the user's message, the task that answers it, and what came of it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TurnView {
    /// The turn's number, from 1.
    pub turn: i64,
    /// The agent task that runs the turn (its LLM calls and tool calls are its steps).
    pub task_id: String,
    /// The task's status, `awaiting_approval` while a call of it waits for a person.
    pub status: String,
    pub message: String,
    /// The agent's final answer, once the turn succeeded.
    #[schema(required)]
    pub answer: Option<String>,
    /// The summary this turn made of the conversation through turn `summarized_through`
    /// (its context window was outgrown); later turns are given it for those turns.
    #[schema(required)]
    pub summary: Option<String>,
    #[schema(required)]
    pub summarized_through: Option<i64>,
    /// The tool calls waiting for a person's approval (`tools.approval`); the turn's
    /// status is `awaiting_approval` while there are any.
    pub awaiting_approval: Vec<AwaitingCall>,
    #[schema(required)]
    pub error: Option<String>,
    pub usage: Usage,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(required, format = DateTime)]
    pub finished_at: Option<String>,
}

/// A tool call waiting for approval: approve or deny it at
/// `/api/v1/sessions/{id}/turns/{turn}/approve` (or `/deny`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AwaitingCall {
    pub step: String,
    pub tool: String,
    /// The arguments the model gave (any JSON value).
    pub arguments: Value,
}

/// A session in a listing.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SessionSummary {
    pub session_id: String,
    pub status: String,
    pub node: String,
    /// Turns taken.
    pub turns: i64,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    #[schema(required, format = DateTime)]
    pub ended_at: Option<String>,
}

/// Filters and paging for listing sessions.
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    /// `open` or `ended`.
    pub status: Option<String>,
    pub limit: i64,
    /// The id of the last session of the previous page (ids are time-ordered UUIDv7).
    pub cursor: Option<String>,
    /// Only this principal's sessions (`None`: everyone's).
    pub principal: Option<String>,
}

/// A new session, as stored.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: String,
    pub principal: Option<String>,
    pub settings: SessionSettings,
    pub node: String,
    pub now_ms: i64,
}

/// What a session's next turn is made from, and the turn count it was read at.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub after: i64,
    pub settings: SessionSettings,
    /// The conversation so far as the turn is given it ([`actors::session::window`]).
    pub window: Window,
}

/// Why a session refused a change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refused {
    /// No such session, or another principal's.
    #[error("no session {0}")]
    NotFound(String),
    #[error("session {0} has ended; start a new session")]
    Ended(String),
    #[error(
        "turn {turn} of this session is still running (task {task_id}); wait for it to finish or cancel it"
    )]
    Busy { turn: i64, task_id: String },
}

/// A turn's status: its task's (stored in the same commit, so always there; `lost` if
/// it ever were not, which does not hold the session).
fn status_of_turn(task: Option<&str>) -> String {
    task.unwrap_or("lost").to_string()
}

/// Whether a turn with this (task) status keeps the next one from starting.
fn running(status: &str) -> bool {
    TaskStatus::parse(status).is_some_and(|s| !s.is_final())
}

/// Row of a turn joined with its task: turn, task id, message, created, status, error,
/// finished, summarized through.
type TurnRow = (
    i64,
    String,
    String,
    i64,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

const SELECT_TURNS: &str = "SELECT t.turn, t.task_id, t.message, t.created_at, k.status, k.error, k.finished_at, \
     t.summarized_through \
     FROM session_turns t LEFT JOIN tasks k ON k.id = t.task_id \
     WHERE t.session_id = $1 ORDER BY t.turn";

/// Every recorded step of the session's turns, with the output of the LLM calls (and the
/// summary) only: a tool's output can be large, and neither the answer nor the usage
/// needs it.
const SELECT_STEPS: &str = "SELECT s.task_id, s.step_id, \
     CASE WHEN s.step_id LIKE 'llm%' OR s.step_id = 'summary' THEN s.output END \
     FROM steps s JOIN session_turns t ON t.task_id = s.task_id \
     WHERE t.session_id = $1 AND s.status IN ('succeeded', 'failed')";

type StepRow = (String, String, Option<String>);

/// What preparing a turn reads, in one statement: the session's row, each turn with its
/// task, and each turn's finished LLM calls and summary (one row per such step, or one
/// with no step).
const SELECT_PREPARE: &str = "SELECT s.turns, s.settings, s.status, s.principal, \
     t.turn, t.task_id, t.message, t.created_at, k.status, k.error, k.finished_at, t.summarized_through, \
     st.step_id, st.output \
     FROM sessions s \
     LEFT JOIN session_turns t ON t.session_id = s.id \
     LEFT JOIN tasks k ON k.id = t.task_id \
     LEFT JOIN steps st ON st.task_id = t.task_id AND st.status IN ('succeeded', 'failed') \
          AND (st.step_id LIKE 'llm%' OR st.step_id = 'summary') \
     WHERE s.id = $1 ORDER BY t.turn";

/// A row of [`SELECT_PREPARE`]: the session's head, then a turn's columns and a step's.
type PrepareRow = (
    i64,
    String,
    String,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

/// The session's head: turns, settings, status, principal.
type Head = (i64, String, String, Option<String>);

/// [`SELECT_PREPARE`]'s rows as the session's head, its turns and their steps; `None`
/// when there is no such session.
fn fold_prepare(rows: Vec<PrepareRow>) -> Option<(Head, Vec<TurnRow>, Vec<StepRow>)> {
    let first = rows.first()?;
    let head = (first.0, first.1.clone(), first.2.clone(), first.3.clone());
    let mut turns: Vec<TurnRow> = Vec::new();
    let mut steps = Vec::new();
    for row in rows {
        let (
            _,
            _,
            _,
            _,
            turn,
            task_id,
            message,
            created,
            status,
            error,
            finished,
            through,
            step,
            output,
        ) = row;
        let (Some(turn), Some(task_id)) = (turn, task_id) else {
            continue;
        };
        if turns.last().is_none_or(|t| t.0 != turn) {
            let row = (
                turn,
                task_id.clone(),
                message.unwrap_or_default(),
                created.unwrap_or_default(),
                status,
                error,
                finished,
                through,
            );
            turns.push(row);
        }
        if let Some(step) = step {
            steps.push((task_id, step, output));
        }
    }
    Some((head, turns, steps))
}

/// The steps of the session's turns awaiting approval, with their task's plan (where the
/// call's tool and arguments are).
const SELECT_AWAITING: &str = "SELECT s.task_id, s.step_id, k.plan \
     FROM steps s JOIN session_turns t ON t.task_id = s.task_id JOIN tasks k ON k.id = s.task_id \
     WHERE t.session_id = $1 AND s.status = 'awaiting_approval'";

type AwaitingRow = (String, String, Option<String>);

/// The calls awaiting approval, by task.
fn awaiting_calls(rows: Vec<AwaitingRow>) -> HashMap<String, Vec<AwaitingCall>> {
    let mut by_task: HashMap<String, Vec<AwaitingCall>> = HashMap::new();
    for (task_id, step, plan) in rows {
        let plan: Vec<actors::task::StepSpec> = plan
            .and_then(|p| serde_json::from_str(&p).ok())
            .unwrap_or_default();
        let Some(spec) = plan.into_iter().find(|s| s.id == step) else {
            continue;
        };
        by_task.entry(task_id).or_default().push(AwaitingCall {
            step,
            tool: spec.tool,
            arguments: spec.args,
        });
    }
    by_task
}

/// Turns as views, from their rows, their steps and their calls awaiting approval.
fn turn_views(
    turns: Vec<TurnRow>,
    steps: Vec<StepRow>,
    mut awaiting: HashMap<String, Vec<AwaitingCall>>,
) -> Vec<TurnView> {
    let mut by_task: HashMap<String, Vec<(String, Option<Value>)>> = HashMap::new();
    for (task_id, step_id, output) in steps {
        let output = output.and_then(|o| serde_json::from_str(&o).ok());
        by_task.entry(task_id).or_default().push((step_id, output));
    }
    turns
        .into_iter()
        .map(
            |(turn, task_id, message, created, status, error, finished, through)| {
                let steps = by_task.remove(&task_id).unwrap_or_default();
                let refs = || steps.iter().map(|(id, o)| (id.as_str(), o.as_ref()));
                let awaiting_approval = awaiting.remove(&task_id).unwrap_or_default();
                let mut status = status_of_turn(status.as_deref());
                if status == "running" && !awaiting_approval.is_empty() {
                    status = "awaiting_approval".into();
                }
                let answer = (status == "succeeded")
                    .then(|| actors::session::answer(refs()))
                    .flatten();
                let summary = refs()
                    .find(|(id, _)| *id == SUMMARY_STEP)
                    .and_then(|(_, o)| o?.get("text")?.as_str().map(str::to_string));
                TurnView {
                    turn,
                    task_id,
                    status,
                    message,
                    answer,
                    summarized_through: summary.as_ref().and(through),
                    summary,
                    awaiting_approval,
                    error,
                    usage: Usage::of(refs()),
                    created_at: rfc3339(created),
                    finished_at: finished.map(rfc3339),
                }
            },
        )
        .collect()
}

/// The node that owns a session, as SQL over a `sessions` row: the owner of its latest
/// turn's task, else the node that started it.
macro_rules! owning_node {
    () => {
        "COALESCE((SELECT k.owner FROM session_turns t JOIN tasks k ON k.id = t.task_id \
         WHERE t.session_id = sessions.id ORDER BY t.turn DESC LIMIT 1), node)"
    };
}

fn settings_of(json: &str) -> SessionSettings {
    serde_json::from_str(json).unwrap_or_default()
}

macro_rules! backend {
    ($module:ident, $db:ty, $snapshot:literal) => {
        pub mod $module {
            use super::*;
            use sqlx::Pool;

            pub async fn create(pool: &Pool<$db>, s: &NewSession) -> Result<(), sqlx::Error> {
                let settings = serde_json::to_string(&s.settings).unwrap_or_else(|_| "{}".into());
                sqlx::query(
                    "INSERT INTO sessions (id, principal, status, settings, node, turns, created_at, updated_at) \
                     VALUES ($1, $2, 'open', $3, $4, 0, $5, $5)",
                )
                .bind(&s.id)
                .bind(&s.principal)
                .bind(settings)
                .bind(&s.node)
                .bind(s.now_ms)
                .execute(pool)
                .await?;
                Ok(())
            }

            /// Why session `id` took no change: it does not exist for `owner`, or it ended.
            async fn refusal(
                tx: &mut sqlx::Transaction<'_, $db>,
                id: &str,
                owner: Option<&str>,
            ) -> Result<Refused, sqlx::Error> {
                let row: Option<(String, Option<String>)> =
                    sqlx::query_as("SELECT status, principal FROM sessions WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&mut **tx)
                        .await?;
                Ok(match row {
                    Some((_, principal)) if owner.is_some() && principal.as_deref() != owner => {
                        Refused::NotFound(id.to_string())
                    }
                    Some(_) => Refused::Ended(id.to_string()),
                    None => Refused::NotFound(id.to_string()),
                })
            }

            /// The turn before `turn`, if it still runs.
            async fn busy(
                tx: &mut sqlx::Transaction<'_, $db>,
                id: &str,
                turn: i64,
            ) -> Result<Option<Refused>, sqlx::Error> {
                let row: Option<(String, Option<String>)> = sqlx::query_as(
                    "SELECT t.task_id, k.status FROM session_turns t \
                     LEFT JOIN tasks k ON k.id = t.task_id WHERE t.session_id = $1 AND t.turn = $2",
                )
                .bind(id)
                .bind(turn)
                .fetch_optional(&mut **tx)
                .await?;
                Ok(row.and_then(|(task_id, status)| {
                    running(&status_of_turn(status.as_deref()))
                        .then_some(Refused::Busy { turn, task_id })
                }))
            }

            /// What the next turn of session `id` is made from, unless the session is
            /// not `owner`'s (with `Some`), has ended, or its last turn still runs. Only
            /// reads: the turn is taken when its task is stored, in the same commit, on
            /// condition that the session still has the turns read here
            /// (`actors::task::store::TurnClaim`), so a request that raced another and
            /// lost is told the session is busy, as if it had come second.
            pub async fn prepare_turn(
                pool: &Pool<$db>,
                id: &str,
                owner: Option<&str>,
            ) -> Result<Result<Prepared, Refused>, sqlx::Error> {
                // One round trip: the pool is shared with every other reader under load.
                let rows: Vec<PrepareRow> = sqlx::query_as(SELECT_PREPARE).bind(id).fetch_all(pool).await?;
                let Some((head, turns, steps)) = fold_prepare(rows) else {
                    return Ok(Err(Refused::NotFound(id.to_string())));
                };
                let (seen, settings, status, principal) = head;
                if owner.is_some() && principal.as_deref() != owner {
                    return Ok(Err(Refused::NotFound(id.to_string())));
                }
                if status != "open" {
                    return Ok(Err(Refused::Ended(id.to_string())));
                }
                let views = turn_views(turns, steps, HashMap::new());
                if let Some(last) = views.last().filter(|t| running(&t.status)) {
                    return Ok(Err(Refused::Busy { turn: last.turn, task_id: last.task_id.clone() }));
                }
                let past: Vec<PastTurn> = views
                    .into_iter()
                    .map(|t| PastTurn {
                        turn: t.turn,
                        message: t.message,
                        answer: t.answer,
                        summary: t.summary,
                        summarized_through: t.summarized_through,
                    })
                    .collect();
                let settings = settings_of(&settings);
                let window = actors::session::window(&past, settings.context_tokens);
                Ok(Ok(Prepared { after: seen, settings, window }))
            }

            /// Ends session `id` (again: nothing changes), unless it is not `owner`'s or
            /// its last turn still runs.
            pub async fn end(
                pool: &Pool<$db>,
                id: &str,
                owner: Option<&str>,
                now: i64,
            ) -> Result<Result<(), Refused>, sqlx::Error> {
                let mut tx = pool.begin().await?;
                let ended: Option<(i64,)> = sqlx::query_as(
                    "UPDATE sessions SET status = 'ended', ended_at = $2, updated_at = $2 \
                     WHERE id = $1 AND status = 'open' AND ($3 IS NULL OR principal = $3) RETURNING turns",
                )
                .bind(id)
                .bind(now)
                .bind(owner)
                .fetch_optional(&mut *tx)
                .await?;
                let Some((turns,)) = ended else {
                    return Ok(match refusal(&mut tx, id, owner).await? {
                        Refused::Ended(_) => Ok(()),
                        other => Err(other),
                    });
                };
                if let Some(busy) = busy(&mut tx, id, turns).await? {
                    tx.rollback().await?;
                    return Ok(Err(busy));
                }
                tx.commit().await?;
                Ok(Ok(()))
            }

            pub async fn get(pool: &Pool<$db>, id: &str) -> Result<Option<SessionView>, sqlx::Error> {
                let mut tx = pool.begin_with($snapshot).await?;
                type Row = (String, Option<String>, String, String, String, i64, i64, Option<i64>);
                let row: Option<Row> = sqlx::query_as(
                    concat!(
                        "SELECT id, principal, status, settings, ",
                        owning_node!(),
                        ", created_at, updated_at, ended_at FROM sessions WHERE id = $1"
                    ),
                )
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
                let Some((id, principal, status, settings, node, created, updated, ended)) = row else {
                    return Ok(None);
                };
                let turns: Vec<TurnRow> = sqlx::query_as(SELECT_TURNS).bind(&id).fetch_all(&mut *tx).await?;
                let steps: Vec<StepRow> = sqlx::query_as(SELECT_STEPS).bind(&id).fetch_all(&mut *tx).await?;
                let awaiting: Vec<AwaitingRow> =
                    sqlx::query_as(SELECT_AWAITING).bind(&id).fetch_all(&mut *tx).await?;
                let started: Option<(String,)> = sqlx::query_as(
                    "SELECT e.data FROM task_events e JOIN session_turns t ON t.task_id = e.task_id \
                     WHERE t.session_id = $1 AND e.kind = 'started' ORDER BY t.turn DESC, e.seq DESC LIMIT 1",
                )
                .bind(&id)
                .fetch_optional(&mut *tx)
                .await?;
                let coordinator = started
                    .and_then(|(data,)| serde_json::from_str::<Value>(&data).ok())
                    .and_then(|d| d.get("coordinator")?.as_str().map(str::to_string));
                tx.commit().await?;
                let turns = turn_views(turns, steps, awaiting_calls(awaiting));
                Ok(Some(SessionView {
                    usage: turns.iter().fold(Usage::default(), |sum, t| sum + t.usage),
                    session_id: id,
                    status,
                    principal,
                    node,
                    coordinator,
                    settings: settings_of(&settings),
                    created_at: rfc3339(created),
                    updated_at: rfc3339(updated),
                    ended_at: ended.map(rfc3339),
                    turns,
                }))
            }

            /// The task of turn `turn` of session `id`, if both exist for `owner`.
            pub async fn turn_task(
                pool: &Pool<$db>,
                id: &str,
                turn: i64,
                owner: Option<&str>,
            ) -> Result<Option<String>, sqlx::Error> {
                let row: Option<(String,)> = sqlx::query_as(
                    "SELECT t.task_id FROM session_turns t JOIN sessions s ON s.id = t.session_id \
                     WHERE t.session_id = $1 AND t.turn = $2 AND ($3 IS NULL OR s.principal = $3)",
                )
                .bind(id)
                .bind(turn)
                .bind(owner)
                .fetch_optional(pool)
                .await?;
                Ok(row.map(|(task,)| task))
            }

            pub async fn list(pool: &Pool<$db>, f: &SessionFilter) -> Result<Vec<SessionSummary>, sqlx::Error> {
                let rows: Vec<(String, String, String, i64, i64, i64, Option<i64>)> = sqlx::query_as(
                    concat!(
                        "SELECT id, status, ",
                        owning_node!(),
                        ", turns, created_at, updated_at, ended_at FROM sessions \
                     WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR id < $2) \
                     AND ($3 IS NULL OR principal = $3) ORDER BY id DESC LIMIT $4"
                    ),
                )
                .bind(&f.status)
                .bind(&f.cursor)
                .bind(&f.principal)
                .bind(f.limit)
                .fetch_all(pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(id, status, node, turns, created, updated, ended)| SessionSummary {
                        session_id: id,
                        status,
                        node,
                        turns,
                        created_at: rfc3339(created),
                        updated_at: rfc3339(updated),
                        ended_at: ended.map(rfc3339),
                    })
                    .collect())
            }
        }
    };
}

backend!(sqlite, sqlx::Sqlite, "BEGIN");
backend!(
    postgres,
    sqlx::Postgres,
    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
);

impl Store {
    pub async fn create_session(&self, session: &NewSession) -> Result<(), StoreError> {
        Ok(on_backend!(self, create(session))?)
    }

    pub async fn prepare_turn(
        &self,
        id: &str,
        owner: Option<&str>,
    ) -> Result<Result<Prepared, Refused>, StoreError> {
        Ok(on_backend!(self, prepare_turn(id, owner))?)
    }

    pub async fn end_session(
        &self,
        id: &str,
        owner: Option<&str>,
        now: i64,
    ) -> Result<Result<(), Refused>, StoreError> {
        Ok(on_backend!(self, end(id, owner, now))?)
    }

    pub async fn session(&self, id: &str) -> Result<Option<SessionView>, StoreError> {
        Ok(on_backend!(self, get(id))?)
    }

    pub async fn turn_task(
        &self,
        id: &str,
        turn: i64,
        owner: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        Ok(on_backend!(self, turn_task(id, turn, owner))?)
    }

    pub async fn sessions(
        &self,
        filter: &SessionFilter,
    ) -> Result<Vec<SessionSummary>, StoreError> {
        Ok(on_backend!(self, list(filter))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turn_holds_the_session_while_its_task_is_unfinished() {
        assert_eq!(status_of_turn(Some("running")), "running");
        assert_eq!(status_of_turn(None), "lost");
        assert!(running("queued") && running("planning") && running("running"));
        assert!(!running("lost") && !running("succeeded") && !running("timed_out"));
    }
}
