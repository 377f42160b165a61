//! Group commit: one writer task applies many callers' writes in one transaction.
//!
//! A commit costs a disk sync (SQLite) or a round trip and a WAL flush (PostgreSQL), so
//! committing each task on its own caps throughput at a few thousand per second. Callers
//! queue their write with a reply channel; the writer takes everything queued (up to
//! [`MAX_BATCH`]), applies it in one transaction, commits, and only then answers each
//! caller — so "202 after commit" still holds for every one of them. If the batch fails,
//! each write is retried alone so one bad write cannot fail its neighbours.

use actors::task::TaskStatus;
use actors::task::store::{Claim, NewTask, Progress, StoreError, Submitted, now_ms};
use tokio::sync::{mpsc, oneshot};

use std::collections::HashMap;

use super::tasks::{self, Outcome};
use super::{Store, batch};

/// Most writes per transaction.
pub const MAX_BATCH: usize = 512;

pub enum Op {
    Submit(NewTask),
    Claim { task_id: String, node: String },
    Record(Progress),
    CancelQueued { task_id: String, at_ms: i64 },
}

type Reply = oneshot::Sender<Result<Outcome, StoreError>>;

/// Handle to the writer task; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<(Op, Reply)>,
}

impl Writer {
    /// Starts the writer for `store`, with room for `capacity` queued writes (callers wait
    /// for room beyond that: backpressure, not unbounded memory).
    pub fn start(store: Store, capacity: usize) -> Writer {
        let (tx, rx) = mpsc::channel(capacity);
        // Its own thread: the writer is the node's one serial stage, so it must not wait
        // in the runtime's queues behind HTTP connections and actors between statements.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        match runtime {
            Ok(rt) => {
                let spawned = std::thread::Builder::new()
                    .name("ms-store-writer".into())
                    .spawn(move || rt.block_on(run(store, rx)));
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "cannot start the store writer thread");
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot start the store writer's runtime"),
        }
        Writer { tx }
    }

    async fn send(&self, op: Op) -> Result<Outcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((op, reply))
            .await
            .map_err(|_| StoreError::Unavailable("the store writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the store writer dropped the write".into()))?
    }

    pub async fn submit(&self, task: NewTask) -> Result<Submitted, StoreError> {
        match self.send(Op::Submit(task)).await? {
            Outcome::Submitted(s) => Ok(s),
            _ => Err(unexpected()),
        }
    }

    pub async fn claim(&self, task_id: String, node: String) -> Result<Option<Claim>, StoreError> {
        match self.send(Op::Claim { task_id, node }).await? {
            Outcome::Claimed(c) => Ok(c),
            _ => Err(unexpected()),
        }
    }

    pub async fn record(&self, progress: Progress) -> Result<(), StoreError> {
        let task_id = progress.task_id.clone();
        match self.send(Op::Record(progress)).await? {
            Outcome::Recorded(Ok(())) => Ok(()),
            Outcome::Recorded(Err(epoch)) => Err(StoreError::Fenced { task_id, epoch }),
            _ => Err(unexpected()),
        }
    }

    pub async fn cancel_queued(
        &self,
        task_id: String,
        at_ms: i64,
    ) -> Result<TaskStatus, StoreError> {
        let id = task_id.clone();
        match self.send(Op::CancelQueued { task_id, at_ms }).await? {
            Outcome::Cancelled(status) => Ok(status),
            Outcome::Claimed(None) => Err(StoreError::NotFound(id)),
            _ => Err(unexpected()),
        }
    }
}

fn unexpected() -> StoreError {
    StoreError::Unavailable("the store writer answered the wrong kind of write".into())
}

async fn run(store: Store, mut rx: mpsc::Receiver<(Op, Reply)>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (ops, replies): (Vec<Op>, Vec<Reply>) = batch.drain(..).unzip();
        metrics::histogram!("ms_store_batch_size").record(ops.len() as f64);
        let started = std::time::Instant::now();
        let applied = apply(&store, &ops).await;
        metrics::histogram!("ms_store_batch_seconds").record(started.elapsed().as_secs_f64());
        let results = match applied {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            Err(e) if ops.len() == 1 => vec![Err(unavailable(e))],
            Err(_) => {
                let mut results = Vec::with_capacity(ops.len());
                for op in ops.chunks(1) {
                    results.push(
                        apply(&store, op)
                            .await
                            .map(|mut o| o.remove(0))
                            .map_err(unavailable),
                    );
                }
                results
            }
        };
        for (reply, result) in replies.into_iter().zip(results) {
            let _ = reply.send(result);
        }
    }
}

fn unavailable(e: sqlx::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Applies the writes in one transaction; all or nothing. Writes of a kind go together
/// into multi-row statements (`batch`); within a batch, writes concern different tasks.
async fn apply(store: &Store, ops: &[Op]) -> Result<Vec<Outcome>, sqlx::Error> {
    let now = now_ms();
    let mut submits = Vec::new();
    let mut claims: HashMap<&str, Vec<(usize, &str)>> = HashMap::new();
    let mut records = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Submit(task) => submits.push((i, task)),
            Op::Claim { task_id, node } => {
                claims.entry(node.as_str()).or_default().push((i, task_id))
            }
            Op::Record(progress) => records.push((i, progress)),
            Op::CancelQueued { .. } => {}
        }
    }
    let mut out: Vec<Option<Outcome>> = ops.iter().map(|_| None).collect();
    macro_rules! in_transaction {
        ($pool:expr, $backend:ident) => {{
            let mut tx = $pool.begin().await?;
            if !submits.is_empty() {
                let tasks: Vec<&NewTask> = submits.iter().map(|(_, t)| *t).collect();
                for ((i, _), s) in submits
                    .iter()
                    .zip(batch::$backend::submit(&mut tx, &tasks).await?)
                {
                    out[*i] = Some(Outcome::Submitted(s));
                }
            }
            for (node, wanted) in &claims {
                let ids: Vec<&str> = wanted.iter().map(|(_, id)| *id).collect();
                for ((i, _), c) in wanted
                    .iter()
                    .zip(batch::$backend::claim(&mut tx, &ids, node, now).await?)
                {
                    out[*i] = Some(Outcome::Claimed(c));
                }
            }
            if !records.is_empty() {
                let list: Vec<&Progress> = records.iter().map(|(_, p)| *p).collect();
                for ((i, _), r) in records
                    .iter()
                    .zip(batch::$backend::record(&mut tx, &list, now).await?)
                {
                    out[*i] = Some(Outcome::Recorded(r));
                }
            }
            for (i, op) in ops.iter().enumerate() {
                if let Op::CancelQueued { task_id, at_ms } = op {
                    out[i] = Some(
                        match tasks::$backend::cancel_queued(&mut tx, task_id, *at_ms).await? {
                            Some(status) => Outcome::Cancelled(status),
                            None => Outcome::Claimed(None),
                        },
                    );
                }
            }
            tx.commit().await?;
        }};
    }
    match store {
        Store::Sqlite(pool) => in_transaction!(pool, sqlite),
        Store::Postgres(pool) => in_transaction!(pool, postgres),
    }
    Ok(out
        .into_iter()
        .map(|o| o.unwrap_or(Outcome::Claimed(None)))
        .collect())
}
