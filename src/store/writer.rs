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
use sqlx::Pool;
use sqlx::pool::PoolConnection;
use sqlx::postgres::Postgres;
use sqlx::sqlite::Sqlite;
use tokio::sync::{mpsc, oneshot, watch};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::tasks::{self, Outcome};
use super::{Store, batch};

/// Most writes per transaction.
pub const MAX_BATCH: usize = 512;

pub enum Op {
    Submit(batch::TaskRow),
    Claim {
        task_id: String,
        node: String,
        origin: Option<String>,
    },
    Record(batch::ProgressRows),
    CancelQueued {
        task_id: String,
        at_ms: i64,
    },
}

type Reply = oneshot::Sender<Result<Outcome, StoreError>>;

/// Handle to the writer task; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<(Op, Reply)>,
    control: Arc<Control>,
    health: Arc<WriteHealth>,
}

/// How the node stops the writer (it holds connections the pool waits for at close).
struct Control {
    stop: watch::Sender<bool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Batches applied at once. SQLite has one writer, so one. PostgreSQL spends most of a
/// batch waiting (round trips, the WAL flush of its commit), so several batches overlap,
/// each on a connection of its own — half of the pool's, so reads always have some. Their
/// writes concern different tasks (a run waits for its write before the next, and a task's
/// first write follows its submission's commit).
fn pipelines(store: &Store, max_connections: u32) -> usize {
    match store {
        Store::Sqlite(_) => 1,
        Store::Postgres(_) => (max_connections as usize / 2).max(1),
    }
}

impl Writer {
    /// Starts the writer for `store`, with room for `capacity` queued writes (callers wait
    /// for room beyond that: backpressure, not unbounded memory). `max_connections` is the
    /// pool's size (see [`pipelines`]).
    pub fn start(store: Store, capacity: usize, max_connections: u32) -> Writer {
        let lanes = pipelines(&store, max_connections);
        let (tx, rx) = mpsc::channel(capacity);
        // Its own thread: the writer is the node's one serial stage, so it must not wait
        // in the runtime's queues behind HTTP connections and actors between statements.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let control = Arc::new(Control {
            stop: watch::channel(false).0,
            thread: Mutex::new(None),
        });
        let health = Arc::new(WriteHealth::default());
        match runtime {
            Ok(rt) => {
                let stop = control.stop.subscribe();
                let health = health.clone();
                let spawned = std::thread::Builder::new()
                    .name("ms-store-writer".into())
                    .spawn(move || rt.block_on(run(store, lanes, rx, stop, health)));
                match spawned {
                    Ok(thread) => *lock(&control.thread) = Some(thread),
                    Err(e) => tracing::error!(error = %e, "cannot start the store writer thread"),
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot start the store writer's runtime"),
        }
        Writer {
            tx,
            control,
            health,
        }
    }

    /// Why writes are failing right now, if they are (readiness says it).
    pub fn failing(&self) -> Option<String> {
        self.health.failing()
    }

    /// Stops the writer after the batches in flight and waits until it has let go of its
    /// connections. Writes after this fail as unavailable.
    pub async fn close(&self) {
        let _ = self.control.stop.send(true);
        let thread = lock(&self.control.thread).take();
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
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
        match self.send(Op::Submit(task.into())).await? {
            Outcome::Submitted(s) => Ok(s),
            _ => Err(unexpected()),
        }
    }

    pub async fn claim(
        &self,
        task_id: String,
        node: String,
        origin: Option<String>,
    ) -> Result<Option<Claim>, StoreError> {
        let op = Op::Claim {
            task_id,
            node,
            origin,
        };
        match self.send(op).await? {
            Outcome::Claimed(c) => Ok(c),
            _ => Err(unexpected()),
        }
    }

    pub async fn record(&self, progress: &Progress) -> Result<(), StoreError> {
        match self.send(Op::Record(progress.into())).await? {
            Outcome::Recorded(Ok(())) => Ok(()),
            Outcome::Recorded(Err(epoch)) => Err(StoreError::Fenced {
                task_id: progress.task_id.clone(),
                epoch,
            }),
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

/// The writer's own connection, kept from batch to batch (a pool checkout pings the
/// database: a round trip per batch on the serial path); dropped after an error so the
/// next batch starts on a fresh one. One field is used, the store's backend's.
#[derive(Default)]
struct Held {
    sqlite: Option<PoolConnection<Sqlite>>,
    postgres: Option<PoolConnection<Postgres>>,
}

async fn connection<'a, DB: sqlx::Database>(
    slot: &'a mut Option<PoolConnection<DB>>,
    pool: &Pool<DB>,
) -> Result<&'a mut DB::Connection, sqlx::Error> {
    if slot.is_none() {
        *slot = Some(pool.acquire().await?);
    }
    slot.as_deref_mut().ok_or(sqlx::Error::PoolClosed)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn run(
    store: Store,
    lanes: usize,
    rx: mpsc::Receiver<(Op, Reply)>,
    stop: watch::Receiver<bool>,
    health: Arc<WriteHealth>,
) {
    let rx = tokio::sync::Mutex::new(rx);
    let lanes = (0..lanes).map(|_| pipeline(&store, &rx, stop.clone(), &health));
    futures::future::join_all(lanes).await;
}

/// Takes what is queued (up to [`MAX_BATCH`]), applies it in one transaction, answers each
/// caller; again until stopped.
async fn pipeline(
    store: &Store,
    rx: &tokio::sync::Mutex<mpsc::Receiver<(Op, Reply)>>,
    mut stop: watch::Receiver<bool>,
    health: &WriteHealth,
) {
    let mut held = Held::default();
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let received = tokio::select! {
            biased;
            _ = stop.wait_for(|stopping| *stopping) => 0,
            n = async { rx.lock().await.recv_many(&mut batch, MAX_BATCH).await } => n,
        };
        if received == 0 {
            break;
        }
        let (ops, replies): (Vec<Op>, Vec<Reply>) = batch.drain(..).unzip();
        metrics::histogram!("ms_store_batch_size").record(ops.len() as f64);
        let started = std::time::Instant::now();
        let applied = apply(store, &mut held, &ops).await;
        metrics::histogram!("ms_store_batch_seconds").record(started.elapsed().as_secs_f64());
        // A lost connection (killed backend, restarted server) says nothing about the
        // writes: the batch is tried once more on a fresh connection before anyone hears
        // of it. Every write is idempotent when replayed after a commit whose answer was
        // lost (fresh ids, fenced epochs, trace entries kept as they were).
        let applied = match applied {
            Err(e) if connection_lost(&e) => {
                tracing::warn!(error = %e, writes = ops.len(), "store connection lost; retrying the batch once");
                metrics::counter!("ms_store_batch_retries_total").increment(1);
                apply(store, &mut held, &ops).await
            }
            other => other,
        };
        health.note(&applied);
        let results = match applied {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            Err(e) if ops.len() == 1 || connection_lost(&e) => {
                let e = unavailable(e);
                ops.iter().map(|_| Err(e.clone())).collect()
            }
            Err(_) => {
                let mut results = Vec::with_capacity(ops.len());
                for op in ops.chunks(1) {
                    results.push(
                        apply(store, &mut held, op)
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

/// The error a caller hears: `Unavailable` (wait and retry) when the database could not
/// be reached or the failure is transient, `Rejected` when the write itself was refused.
fn unavailable(e: sqlx::Error) -> StoreError {
    if transient(&e) {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Rejected(e.to_string())
    }
}

/// Lost connections, and database errors that pass (SQLSTATE 40: serialization and
/// deadlocks, 53: resources, 55: lock not available, 57: cancelled or shutting down).
fn transient(e: &sqlx::Error) -> bool {
    connection_lost(e)
        || matches!(e, sqlx::Error::Database(db) if db.code().is_some_and(|c| {
            ["40", "53", "55", "57"].iter().any(|class| c.starts_with(class))
        }))
}

/// Whether `e` is about reaching the database rather than about the writes: the
/// connection broke, none could be had, or the server is going away (SQLSTATE class 08,
/// and 57P01–57P03: terminated by an administrator, crash or shutdown, not accepting).
pub fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

/// What the writer last saw of the database, for readiness: why writes fail, if they do.
#[derive(Default)]
pub struct WriteHealth {
    failing: Mutex<Option<String>>,
}

impl WriteHealth {
    fn note<T>(&self, applied: &Result<T, sqlx::Error>) {
        let mut failing = lock(&self.failing);
        match applied {
            Ok(_) => *failing = None,
            Err(e) if connection_lost(e) => *failing = Some(e.to_string()),
            Err(_) => {}
        }
    }

    /// Why the last batch could not reach the database (none once one commits again).
    pub fn failing(&self) -> Option<String> {
        lock(&self.failing).clone()
    }
}

/// Applies the writes in one transaction; all or nothing. Writes of a kind go together
/// into multi-row statements (`batch`); within a batch, writes concern different tasks.
async fn apply(store: &Store, held: &mut Held, ops: &[Op]) -> Result<Vec<Outcome>, sqlx::Error> {
    let applied = apply_on(store, held, ops).await;
    if applied.is_err() {
        *held = Held::default();
    }
    applied
}

async fn apply_on(store: &Store, held: &mut Held, ops: &[Op]) -> Result<Vec<Outcome>, sqlx::Error> {
    let now = now_ms();
    let mut submits = Vec::new();
    // Claims by (node, origin): each group is one statement.
    type ClaimGroup<'a> = (&'a str, Option<&'a str>);
    let mut claims: HashMap<ClaimGroup, Vec<(usize, &str)>> = HashMap::new();
    let mut records = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Submit(task) => submits.push((i, task)),
            Op::Claim {
                task_id,
                node,
                origin,
            } => claims
                .entry((node.as_str(), origin.as_deref()))
                .or_default()
                .push((i, task_id)),
            Op::Record(progress) => records.push((i, progress)),
            Op::CancelQueued { .. } => {}
        }
    }
    let mut out: Vec<Option<Outcome>> = ops.iter().map(|_| None).collect();
    macro_rules! in_transaction {
        ($conn:expr, $backend:ident) => {{
            let mut tx = sqlx::Connection::begin($conn).await?;
            let mut events = Vec::new();
            if !submits.is_empty() {
                let tasks: Vec<&batch::TaskRow> = submits.iter().map(|(_, t)| *t).collect();
                for ((i, _), s) in submits
                    .iter()
                    .zip(batch::$backend::submit(&mut tx, &tasks, &mut events).await?)
                {
                    out[*i] = Some(Outcome::Submitted(s));
                }
            }
            for ((node, origin), wanted) in &claims {
                let ids: Vec<&str> = wanted.iter().map(|(_, id)| *id).collect();
                for ((i, _), c) in wanted
                    .iter()
                    .zip(batch::$backend::claim(&mut tx, &ids, node, *origin, now).await?)
                {
                    out[*i] = Some(Outcome::Claimed(c));
                }
            }
            if !records.is_empty() {
                let list: Vec<&batch::ProgressRows> = records.iter().map(|(_, p)| *p).collect();
                for ((i, _), r) in records
                    .iter()
                    .zip(batch::$backend::record(&mut tx, &list, now, &mut events).await?)
                {
                    out[*i] = Some(Outcome::Recorded(r));
                }
            }
            batch::$backend::insert_events(&mut tx, &events).await?;
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
        Store::Sqlite(pool) => in_transaction!(connection(&mut held.sqlite, pool).await?, sqlite),
        Store::Postgres(pool) => {
            in_transaction!(connection(&mut held.postgres, pool).await?, postgres)
        }
    }
    Ok(out
        .into_iter()
        .map(|o| o.unwrap_or(Outcome::Claimed(None)))
        .collect())
}
