//! Sessions and their turns (`migrations/*/0007_sessions.sql`), written once for both
//! backends like [`super::tasks`].
//!
//! A turn's task is submitted after its turn row is committed: the row takes the turn's
//! number (the primary key) and the session's turn counter under the session row's lock,
//! so two requests never both start a turn, and a turn runs only after the one before it
//! finished. A turn row whose task is not stored (yet) counts as running for
//! [`UNSUBMITTED_GRACE_MS`], long enough for its submission to commit or fail; after that
//! it is `abandoned` (the node stopped between the two writes, and its caller was never
//! told the turn was accepted).

use std::collections::HashMap;

use actors::run::summary::SUMMARY_STEP;
use actors::session::{PastTurn, SessionSettings, Usage, Window};
use actors::task::TaskStatus;
use serde::Serialize;
use serde_json::Value;

use super::tasks::rfc3339;
use super::{Store, StoreError};

/// How long a turn whose task is not stored still counts as being submitted.
pub const UNSUBMITTED_GRACE_MS: i64 = 60_000;

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
    /// The task's status; `submitting` while its task is being stored, `abandoned` if it
    /// never was (the node stopped before accepting it).
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

/// A turn taken: its number, and what its task is made from.
#[derive(Debug, Clone)]
pub struct Begun {
    pub turn: i64,
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

fn status_of_turn(task: Option<&str>, created_at: i64, now: i64) -> String {
    match task {
        Some(status) => status.to_string(),
        None if now - created_at < UNSUBMITTED_GRACE_MS => "submitting".into(),
        None => "abandoned".into(),
    }
}

/// Whether a turn with this (task) status keeps the next one from starting.
fn running(status: &str) -> bool {
    match TaskStatus::parse(status) {
        Some(s) => !s.is_final(),
        None => status == "submitting",
    }
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
    now: i64,
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
                let mut status = status_of_turn(status.as_deref(), created, now);
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
                now: i64,
            ) -> Result<Option<Refused>, sqlx::Error> {
                let row: Option<(String, i64, Option<String>)> = sqlx::query_as(
                    "SELECT t.task_id, t.created_at, k.status FROM session_turns t \
                     LEFT JOIN tasks k ON k.id = t.task_id WHERE t.session_id = $1 AND t.turn = $2",
                )
                .bind(id)
                .bind(turn)
                .fetch_optional(&mut **tx)
                .await?;
                Ok(row.and_then(|(task_id, created, status)| {
                    running(&status_of_turn(status.as_deref(), created, now))
                        .then_some(Refused::Busy { turn, task_id })
                }))
            }

            /// Takes the next turn of session `id` for `task_id`, unless the session is
            /// not `owner`'s (with `Some`), has ended, or its last turn still runs.
            ///
            /// What the turn is made from is read first, outside the write: the session's
            /// settings never change and turns that ended do not either, so only taking
            /// the turn needs the lock — one conditional update (on the turn count read)
            /// and the turn's row. Under load that keeps the write short (on SQLite it
            /// holds the database's one write lock). A request that raced another and lost
            /// is told the session is busy, as if it had come second.
            pub async fn begin_turn(
                pool: &Pool<$db>,
                id: &str,
                owner: Option<&str>,
                task_id: &str,
                message: &str,
                now: i64,
            ) -> Result<Result<Begun, Refused>, sqlx::Error> {
                let head: Option<(i64, String, String, Option<String>)> = sqlx::query_as(
                    "SELECT turns, settings, status, principal FROM sessions WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(pool)
                .await?;
                let Some((seen, settings, status, principal)) = head else {
                    return Ok(Err(Refused::NotFound(id.to_string())));
                };
                if owner.is_some() && principal.as_deref() != owner {
                    return Ok(Err(Refused::NotFound(id.to_string())));
                }
                if status != "open" {
                    return Ok(Err(Refused::Ended(id.to_string())));
                }
                let turns: Vec<TurnRow> = sqlx::query_as(SELECT_TURNS).bind(id).fetch_all(pool).await?;
                let steps: Vec<StepRow> = sqlx::query_as(SELECT_STEPS).bind(id).fetch_all(pool).await?;
                let views = turn_views(turns, steps, HashMap::new(), now);
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

                let mut tx = pool.begin().await?;
                // The turn after the one read, only if nobody took it meanwhile (the row's
                // lock, or SQLite's write lock, orders concurrent takers).
                let taken: Option<(i64,)> = sqlx::query_as(
                    "UPDATE sessions SET turns = turns + 1, updated_at = $2 \
                     WHERE id = $1 AND status = 'open' AND turns = $3 RETURNING turns",
                )
                .bind(id)
                .bind(now)
                .bind(seen)
                .fetch_optional(&mut *tx)
                .await?;
                let Some((turn,)) = taken else {
                    let refused = match refusal(&mut tx, id, owner).await? {
                        Refused::Ended(_) if still_open(&mut tx, id).await? => {
                            let latest: Option<(i64, String)> = sqlx::query_as(
                                "SELECT turn, task_id FROM session_turns WHERE session_id = $1 \
                                 ORDER BY turn DESC LIMIT 1",
                            )
                            .bind(id)
                            .fetch_optional(&mut *tx)
                            .await?;
                            let (turn, task_id) = latest.unwrap_or((seen + 1, String::new()));
                            Refused::Busy { turn, task_id }
                        }
                        other => other,
                    };
                    return Ok(Err(refused));
                };
                sqlx::query(
                    "INSERT INTO session_turns (session_id, turn, task_id, message, created_at, summarized_through) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(id)
                .bind(turn)
                .bind(task_id)
                .bind(message)
                .bind(now)
                .bind(window.summarized_through)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(Ok(Begun { turn, settings, window }))
            }

            /// Whether session `id` is open (a conditional update found it changed, not ended).
            async fn still_open(tx: &mut sqlx::Transaction<'_, $db>, id: &str) -> Result<bool, sqlx::Error> {
                let row: Option<(String,)> = sqlx::query_as("SELECT status FROM sessions WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut **tx)
                    .await?;
                Ok(row.is_some_and(|(status,)| status == "open"))
            }

            /// Gives turn `turn` back after its task was refused (never stored), so the
            /// session can take the next one at once.
            pub async fn abandon_turn(pool: &Pool<$db>, id: &str, turn: i64) -> Result<(), sqlx::Error> {
                let mut tx = pool.begin().await?;
                let gone = sqlx::query(
                    "DELETE FROM session_turns WHERE session_id = $1 AND turn = $2 \
                     AND NOT EXISTS (SELECT 1 FROM tasks WHERE tasks.id = session_turns.task_id)",
                )
                .bind(id)
                .bind(turn)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if gone == 1 {
                    sqlx::query("UPDATE sessions SET turns = turns - 1 WHERE id = $1 AND turns = $2")
                        .bind(id)
                        .bind(turn)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await
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
                if let Some(busy) = busy(&mut tx, id, turns, now).await? {
                    tx.rollback().await?;
                    return Ok(Err(busy));
                }
                tx.commit().await?;
                Ok(Ok(()))
            }

            pub async fn get(pool: &Pool<$db>, id: &str, now: i64) -> Result<Option<SessionView>, sqlx::Error> {
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
                tx.commit().await?;
                let turns = turn_views(turns, steps, awaiting_calls(awaiting), now);
                Ok(Some(SessionView {
                    usage: turns.iter().fold(Usage::default(), |sum, t| sum + t.usage),
                    session_id: id,
                    status,
                    principal,
                    node,
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

    pub async fn begin_turn(
        &self,
        id: &str,
        owner: Option<&str>,
        task_id: &str,
        message: &str,
        now: i64,
    ) -> Result<Result<Begun, Refused>, StoreError> {
        Ok(on_backend!(
            self,
            begin_turn(id, owner, task_id, message, now)
        )?)
    }

    pub async fn abandon_turn(&self, id: &str, turn: i64) -> Result<(), StoreError> {
        Ok(on_backend!(self, abandon_turn(id, turn))?)
    }

    pub async fn end_session(
        &self,
        id: &str,
        owner: Option<&str>,
        now: i64,
    ) -> Result<Result<(), Refused>, StoreError> {
        Ok(on_backend!(self, end(id, owner, now))?)
    }

    pub async fn session(&self, id: &str, now: i64) -> Result<Option<SessionView>, StoreError> {
        Ok(on_backend!(self, get(id, now))?)
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
    fn a_turn_without_a_task_is_submitting_then_abandoned() {
        assert_eq!(
            status_of_turn(None, 1_000, 1_000 + UNSUBMITTED_GRACE_MS - 1),
            "submitting"
        );
        assert_eq!(
            status_of_turn(None, 1_000, 1_000 + UNSUBMITTED_GRACE_MS),
            "abandoned"
        );
        assert_eq!(status_of_turn(Some("running"), 0, i64::MAX), "running");
        assert!(running("submitting") && running("queued") && running("running"));
        assert!(!running("abandoned") && !running("succeeded") && !running("timed_out"));
    }
}
