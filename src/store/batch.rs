//! Many tasks' writes as a few multi-row statements.
//!
//! The group-commit writer already puts a batch in one transaction; this module also
//! folds the batch's rows into one statement per table and kind (one `INSERT … VALUES
//! (…), (…)` for all new tasks, one `UPDATE … RETURNING` for all claims, one fenced
//! `UPDATE … FROM (VALUES …)` for all progress records, one insert of every trace entry). With SQLite every statement is a
//! round trip to sqlx's connection thread, so statements per task, not commits, set the
//! ceiling on throughput.

use std::collections::HashMap;

use actors::task::store::{Claim, FIRST_EPOCH, NewTask, Progress, Submitted, TurnClaim};
use actors::task::{Priority, TaskSpec, TaskStatus};
use serde::Serialize;

use super::tasks::{StepRow, status_of, step_state};

/// Rows per statement: well under both backends' limits on bound parameters.
const CHUNK: usize = 256;

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// A new task as its `tasks` row. Encoded by the submitter's task, so JSON encoding
/// happens in parallel and not in the writer, the node's one serial stage.
pub struct TaskRow {
    id: String,
    idempotency_key: Option<String>,
    priority: Priority,
    description: Option<String>,
    spec: String,
    owner: String,
    principal: Option<String>,
    created_at_ms: i64,
    turn: Option<TurnClaim>,
}

impl From<NewTask> for TaskRow {
    fn from(task: NewTask) -> TaskRow {
        TaskRow {
            turn: task.turn,
            spec: json(&*task.spec),
            idempotency_key: task
                .spec
                .idempotency_key
                .as_deref()
                .map(|key| stored_key(task.principal.as_deref(), key)),
            priority: task.spec.priority,
            description: task.spec.description.clone(),
            id: task.id,
            owner: task.owner,
            principal: task.principal,
            created_at_ms: task.created_at_ms,
        }
    }
}

/// An idempotency key as stored: one namespace per principal (a key holds no control
/// character, so `principal\nkey` is never another principal's key nor an unprefixed one).
fn stored_key(principal: Option<&str>, key: &str) -> String {
    match principal {
        Some(p) => format!("{p}\n{key}"),
        None => key.to_string(),
    }
}

/// One trace entry as a row: task id, seq, at (ms), kind, data (JSON).
pub type EventRow = (String, i64, i64, String, String);

/// A run's progress as rows, encoded by the run's task (see [`TaskRow`]).
pub struct ProgressRows {
    pub task_id: String,
    epoch: i64,
    status: Option<&'static str>,
    finished: bool,
    plan: Option<String>,
    error: Option<String>,
    steps: Vec<(String, &'static str, String, Option<String>)>,
    events: Vec<EventRow>,
}

/// Encoded from a borrow: the run keeps its progress until the write is committed (to
/// write it again if storage was unreachable), so nothing is copied but the text.
impl From<&Progress> for ProgressRows {
    fn from(p: &Progress) -> ProgressRows {
        ProgressRows {
            epoch: p.epoch,
            status: p.status.map(|s| s.as_str()),
            finished: p.status.is_some_and(|s| s.is_final()),
            plan: p.plan.as_ref().map(json),
            // PostgreSQL's text refuses NUL; a tool's error message may carry one.
            error: p.error.as_ref().map(|e| e.replace('\0', "\u{FFFD}")),
            steps: p
                .steps
                .iter()
                .map(|s| {
                    let output = s.output.as_ref().map(json);
                    (
                        s.step_id.clone(),
                        s.status.as_str(),
                        json(&s.attempts),
                        output,
                    )
                })
                .collect(),
            events: p
                .events
                .iter()
                .map(|e| {
                    (
                        p.task_id.clone(),
                        e.seq,
                        e.at_ms,
                        e.kind.clone(),
                        json(&e.data),
                    )
                })
                .collect(),
            task_id: p.task_id.clone(),
        }
    }
}

macro_rules! batch_backend {
    ($module:ident, $db:ty) => {
        pub mod $module {
            use super::*;
            use sqlx::{QueryBuilder, Transaction};

            type Tx<'a> = Transaction<'a, $db>;

            /// Inserts new tasks; a repeated idempotency key finds the earlier task. Their
            /// `submitted` entries go into `events`, written by [`insert_events`].
            /// Takes the session turns the batch's tasks claim ([`TurnClaim`]): the
            /// turn after `after` when the session still has `after` turns (and its turn
            /// row, in this transaction); a task whose claim fails is not stored. A replay
            /// of a committed batch finds its own turn row and takes it as taken.
            async fn claim_turns(
                tx: &mut Tx<'_>,
                tasks: &[&TaskRow],
            ) -> Result<HashMap<String, Option<i64>>, sqlx::Error> {
                let mut turns = HashMap::new();
                for task in tasks {
                    let Some(claim) = &task.turn else { continue };
                    let taken: Option<(i64,)> = sqlx::query_as(
                        "UPDATE sessions SET turns = turns + 1, updated_at = $2 \
                         WHERE id = $1 AND status = 'open' AND turns = $3 RETURNING turns",
                    )
                    .bind(&claim.session_id)
                    .bind(task.created_at_ms)
                    .bind(claim.after)
                    .fetch_optional(&mut **tx)
                    .await?;
                    let turn = match taken {
                        Some((turn,)) => {
                            sqlx::query(
                                "INSERT INTO session_turns \
                                 (session_id, turn, task_id, message, created_at, summarized_through) \
                                 VALUES ($1, $2, $3, $4, $5, $6)",
                            )
                            .bind(&claim.session_id)
                            .bind(turn)
                            .bind(&task.id)
                            .bind(&claim.message)
                            .bind(task.created_at_ms)
                            .bind(claim.summarized_through)
                            .execute(&mut **tx)
                            .await?;
                            Some(turn)
                        }
                        None => {
                            let mine: Option<(i64,)> = sqlx::query_as(
                                "SELECT turn FROM session_turns WHERE session_id = $1 AND task_id = $2",
                            )
                            .bind(&claim.session_id)
                            .bind(&task.id)
                            .fetch_optional(&mut **tx)
                            .await?;
                            mine.map(|(turn,)| turn)
                        }
                    };
                    turns.insert(task.id.clone(), turn);
                }
                Ok(turns)
            }

            pub async fn submit(
                tx: &mut Tx<'_>,
                tasks: &[&TaskRow],
                events: &mut Vec<EventRow>,
            ) -> Result<Vec<Submitted>, sqlx::Error> {
                let turns = claim_turns(tx, tasks).await?;
                // Tasks whose turn another request took are not stored.
                let refused = |t: &TaskRow| turns.get(&t.id).is_some_and(Option::is_none);
                let all = tasks;
                let kept: Vec<&TaskRow> = tasks.iter().copied().filter(|t| !refused(t)).collect();
                let tasks = &kept[..];
                // Without idempotency keys nothing can conflict (ids are fresh UUIDv7s), so
                // the common case needs no RETURNING rows (each is a message from SQLite's
                // worker thread in sqlx).
                let keyed = tasks.iter().any(|t| t.idempotency_key.is_some());
                let mut inserted = std::collections::HashSet::new();
                for chunk in tasks.chunks(CHUNK) {
                    let mut q = QueryBuilder::<$db>::new(
                        "INSERT INTO tasks (id, idempotency_key, priority, status, description, spec, \
                         owner, principal, lease_epoch, created_at, updated_at) ",
                    );
                    q.push_values(chunk, |mut row, task| {
                        row.push_bind(task.id.clone())
                            .push_bind(task.idempotency_key.clone())
                            .push_bind(task.priority.rank())
                            .push_bind("queued")
                            .push_bind(task.description.clone())
                            .push_bind(task.spec.clone())
                            .push_bind(task.owner.clone())
                            .push_bind(task.principal.clone())
                            .push_bind(FIRST_EPOCH)
                            .push_bind(task.created_at_ms)
                            .push_bind(task.created_at_ms);
                    });
                    if keyed {
                        q.push(" ON CONFLICT DO NOTHING RETURNING id");
                        let ids: Vec<(String,)> = q.build_query_as().fetch_all(&mut **tx).await?;
                        inserted.extend(ids.into_iter().map(|(id,)| id));
                    } else {
                        // Ids are fresh, so a conflict can only be this very write replayed
                        // after a commit whose answer was lost: it is stored, as asked.
                        q.push(" ON CONFLICT (id) DO NOTHING");
                        q.build().execute(&mut **tx).await?;
                        inserted.extend(chunk.iter().map(|t| t.id.clone()));
                    }
                }
                events.extend(tasks.iter().filter(|t| inserted.contains(&t.id)).map(|t| {
                    (t.id.clone(), 0, t.created_at_ms, "submitted".to_string(), "{}".to_string())
                }));
                let mut out = Vec::with_capacity(all.len());
                for task in all {
                    if refused(task) {
                        out.push(Submitted {
                            task_id: task.id.clone(),
                            created: false,
                            conflict: false,
                            status: TaskStatus::Queued,
                            priority: task.priority,
                            turn: None,
                            turn_taken: true,
                        });
                    } else if inserted.contains(&task.id) {
                        out.push(Submitted {
                            task_id: task.id.clone(),
                            created: true,
                            conflict: false,
                            status: TaskStatus::Queued,
                            priority: task.priority,
                            turn: turns.get(&task.id).copied().flatten(),
                            turn_taken: false,
                        });
                    } else {
                        // Rare: an idempotency key seen before (or earlier in this batch).
                        let (id, status, priority, spec): (String, String, i64, String) = sqlx::query_as(
                            "SELECT id, status, priority, spec FROM tasks WHERE idempotency_key = $1",
                        )
                        .bind(&task.idempotency_key)
                        .fetch_one(&mut **tx)
                        .await?;
                        // The same key with another request is a conflict, not that task
                        // (as Stripe does): the specs are compared as parsed JSON.
                        let same = serde_json::from_str::<serde_json::Value>(&spec).ok()
                            == serde_json::from_str::<serde_json::Value>(&task.spec).ok();
                        out.push(Submitted {
                            task_id: id,
                            created: false,
                            conflict: !same,
                            status: status_of(&status),
                            priority: Priority::from_rank(priority),
                            turn: None,
                            turn_taken: false,
                        });
                    }
                }
                Ok(out)
            }

            /// Claims tasks for `node`: bumps their epochs (fencing earlier holders) and reads
            /// back what is recorded. Only tasks `node` owns, or still-queued ones `origin`
            /// owns (work-queue tickets), are claimed. The run records `started` itself.
            pub async fn claim(
                tx: &mut Tx<'_>,
                ids: &[&str],
                node: &str,
                origin: Option<&str>,
                now: i64,
            ) -> Result<Vec<Option<Claim>>, sqlx::Error> {
                let mut claimed: HashMap<String, (i64, String, String, Option<String>, i64, Option<String>)> = HashMap::new();
                for chunk in ids.chunks(CHUNK) {
                    let mut q = QueryBuilder::<$db>::new("UPDATE tasks SET lease_epoch = lease_epoch + 1, owner = ");
                    q.push_bind(node.to_string())
                        .push(", updated_at = ")
                        .push_bind(now)
                        .push(" WHERE status NOT IN ('succeeded', 'failed', 'cancelled', 'timed_out') AND (owner = ")
                        .push_bind(node.to_string())
                        .push(" OR (status = 'queued' AND owner = ")
                        .push_bind(origin.map(str::to_string))
                        .push(")) AND id IN (");
                    let mut list = q.separated(", ");
                    for id in chunk {
                        list.push_bind(id.to_string());
                    }
                    q.push(") RETURNING id, lease_epoch, status, spec, plan, created_at, principal");
                    let rows: Vec<(String, i64, String, String, Option<String>, i64, Option<String>)> =
                        q.build_query_as().fetch_all(&mut **tx).await?;
                    for (id, epoch, status, spec, plan, created, principal) in rows {
                        claimed.insert(id, (epoch, status, spec, plan, created, principal));
                    }
                }
                let mut out = Vec::with_capacity(ids.len());
                for id in ids {
                    let Some((epoch, status, spec, plan, created_at_ms, principal)) = claimed.remove(*id) else {
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
                        principal,
                    }));
                }
                Ok(out)
            }

            /// Records runs' progress; each is fenced by its lease epoch. `Err(epoch)` for a
            /// record whose epoch is stale (with the current one). The live records' trace
            /// entries go into `events`, written by [`insert_events`].
            pub async fn record(
                tx: &mut Tx<'_>,
                records: &[&ProgressRows],
                now: i64,
                events: &mut Vec<EventRow>,
            ) -> Result<Vec<Result<(), i64>>, sqlx::Error> {
                let mut updated = 0;
                for chunk in records.chunks(CHUNK) {
                    let mut q = QueryBuilder::<$db>::new(
                        "UPDATE tasks SET updated_at = v.column3, status = COALESCE(v.column4, tasks.status), \
                         plan = COALESCE(v.column5, tasks.plan), error = COALESCE(v.column6, tasks.error), \
                         finished_at = COALESCE(v.column7, tasks.finished_at) FROM (",
                    );
                    q.push_values(chunk, |mut row, p| {
                        let finished = p.finished.then_some(now);
                        row.push_bind(p.task_id.clone())
                            .push_bind(p.epoch)
                            .push_bind(now)
                            .push_bind(p.status)
                            .push_bind(p.plan.clone())
                            .push_bind(p.error.clone())
                            .push_bind(finished);
                    });
                    q.push(") AS v WHERE tasks.id = v.column1 AND tasks.lease_epoch = v.column2");
                    let n = q.build().execute(&mut **tx).await?.rows_affected();
                    updated += n;
                }
                // Usually every record holds its lease; only otherwise find out whose is stale.
                let mut stale = HashMap::new();
                if updated != records.len() as u64 {
                    for p in records {
                        let epoch: Option<(i64,)> = sqlx::query_as("SELECT lease_epoch FROM tasks WHERE id = $1")
                            .bind(&p.task_id)
                            .fetch_optional(&mut **tx)
                            .await?;
                        let epoch = epoch.map_or(-1, |e| e.0);
                        if epoch != p.epoch {
                            stale.insert(p.task_id.as_str(), epoch);
                        }
                    }
                }
                let live: Vec<&&ProgressRows> = records.iter().filter(|p| !stale.contains_key(p.task_id.as_str())).collect();
                let steps: Vec<(&ProgressRows, &(String, &'static str, String, Option<String>))> =
                    live.iter().flat_map(|p| p.steps.iter().map(move |s| (**p, s))).collect();
                for chunk in steps.chunks(CHUNK) {
                    let mut q = QueryBuilder::<$db>::new(
                        "INSERT INTO steps (task_id, step_id, status, attempts, output, epoch, updated_at) ",
                    );
                    q.push_values(chunk, |mut row, (p, (step_id, status, attempts, output))| {
                        row.push_bind(p.task_id.clone())
                            .push_bind(step_id.clone())
                            .push_bind(*status)
                            .push_bind(attempts.clone())
                            .push_bind(output.clone())
                            .push_bind(p.epoch)
                            .push_bind(now);
                    });
                    // A final result is recorded once: a final row is never overwritten.
                    q.push(
                        " ON CONFLICT (task_id, step_id) DO UPDATE SET status = excluded.status, \
                         attempts = excluded.attempts, output = excluded.output, epoch = excluded.epoch, \
                         updated_at = excluded.updated_at \
                         WHERE steps.status IN ('pending', 'running', 'awaiting_approval') \
                         AND steps.epoch <= excluded.epoch",
                    );
                    q.build().execute(&mut **tx).await?;
                }
                for p in &live {
                    events.extend(p.events.iter().cloned());
                }
                Ok(records
                    .iter()
                    .map(|p| match stale.get(p.task_id.as_str()) {
                        Some(epoch) => Err(*epoch),
                        None => Ok(()),
                    })
                    .collect())
            }

            /// Appends trace entries (of every write in the batch: one statement per chunk).
            /// An entry already there (a retried write) is kept as it was.
            pub async fn insert_events(tx: &mut Tx<'_>, events: &[EventRow]) -> Result<(), sqlx::Error> {
                for chunk in events.chunks(CHUNK) {
                    let mut q = QueryBuilder::<$db>::new("INSERT INTO task_events (task_id, seq, at, kind, data) ");
                    q.push_values(chunk, |mut row, (task_id, seq, at, kind, data)| {
                        row.push_bind(task_id.clone())
                            .push_bind(*seq)
                            .push_bind(*at)
                            .push_bind(kind.clone())
                            .push_bind(data.clone());
                    });
                    q.push(" ON CONFLICT DO NOTHING");
                    q.build().execute(&mut **tx).await?;
                }
                Ok(())
            }
        }
    };
}

batch_backend!(sqlite, sqlx::Sqlite);
batch_backend!(postgres, sqlx::Postgres);
