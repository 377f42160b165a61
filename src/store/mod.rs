//! Durable state in SQL through sqlx: SQLite (the embedded default) or PostgreSQL.
//!
//! One enum over the two pools rather than sqlx's `Any` driver, so each backend keeps its
//! own types and migrations (`migrations/sqlite`, `migrations/postgres`, embedded in the
//! binary and run at start).

/// Calls the backend's instance of a query function written once for both (the
/// submodules' `sqlite`/`postgres` modules): `on_backend!(store, f(args…))`.
macro_rules! on_backend {
    ($store:expr, $f:ident ( $($arg:expr),* )) => {
        match $store {
            Store::Sqlite(pool) => sqlite::$f(pool, $($arg),*).await,
            Store::Postgres(pool) => postgres::$f(pool, $($arg),*).await,
        }
    };
}

mod approvals;
mod batch;
mod cluster;
mod memory;
pub mod sessions;
pub mod tasks;
pub mod writer;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database.url `{url}` is invalid: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot create the directory {dir} for the SQLite file: {source}")]
    CreateDir { dir: String, source: std::io::Error },
    #[error("cannot connect to {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
}

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub url: String,
    pub max_connections: u32,
    pub connect_timeout: Duration,
    /// SQLite: fsync every commit (`synchronous = FULL`), not only at checkpoints.
    pub sqlite_fsync: bool,
}

/// A node as recorded in the `nodes` table.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeRecord {
    pub name: String,
    pub version: String,
    pub starts: i64,
}

#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Store {
    /// Opens a pool (creating the SQLite file and its directory if missing). Does not migrate.
    pub async fn connect(options: &StoreOptions) -> Result<Store, StoreError> {
        let url = &options.url;
        let invalid = |e: sqlx::Error| StoreError::InvalidUrl {
            url: redact(url),
            reason: e.to_string(),
        };
        let connect = |source| StoreError::Connect {
            url: redact(url),
            source,
        };
        if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(invalid)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(if options.sqlite_fsync {
                    SqliteSynchronous::Full
                } else {
                    SqliteSynchronous::Normal
                })
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(true)
                .statement_cache_capacity(1024);
            if let Some(dir) = Path::new(opts.get_filename()).parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                    dir: dir.display().to_string(),
                    source,
                })?;
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(options.max_connections)
                .acquire_timeout(options.connect_timeout)
                .connect_with(opts)
                .await
                .map_err(connect)?;
            Ok(Store::Sqlite(pool))
        } else {
            let opts = PgConnectOptions::from_str(url).map_err(invalid)?;
            let pool = PgPoolOptions::new()
                .max_connections(options.max_connections)
                .acquire_timeout(options.connect_timeout)
                .connect_with(opts)
                .await
                .map_err(connect)?;
            Ok(Store::Postgres(pool))
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Runs the embedded migrations of this backend.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(pool) => SQLITE_MIGRATIONS.run(pool).await?,
            Store::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await?,
        }
        Ok(())
    }

    /// A round trip to the database (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop)?,
            Store::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop)?,
        }
        Ok(())
    }

    /// Records that `node` started; returns its row (with how many times it has started).
    pub async fn record_node_start(
        &self,
        node: &str,
        version: &str,
    ) -> Result<NodeRecord, StoreError> {
        let (name, version, starts): (String, String, i64) = match self {
            Store::Sqlite(pool) => {
                sqlx::query_as(
                    "INSERT INTO nodes (name, version, first_started, last_started) \
                     VALUES (?1, ?2, strftime('%Y-%m-%dT%H:%M:%fZ','now'), strftime('%Y-%m-%dT%H:%M:%fZ','now')) \
                     ON CONFLICT (name) DO UPDATE SET version = excluded.version, \
                       last_started = excluded.last_started, starts = nodes.starts + 1 \
                     RETURNING name, version, starts",
                )
                .bind(node)
                .bind(version)
                .fetch_one(pool)
                .await?
            }
            Store::Postgres(pool) => {
                sqlx::query_as(
                    "INSERT INTO nodes (name, version, first_started, last_started) \
                     VALUES ($1, $2, now(), now()) \
                     ON CONFLICT (name) DO UPDATE SET version = excluded.version, \
                       last_started = excluded.last_started, starts = nodes.starts + 1 \
                     RETURNING name, version, starts",
                )
                .bind(node)
                .bind(version)
                .fetch_one(pool)
                .await?
            }
        };
        Ok(NodeRecord {
            name,
            version,
            starts,
        })
    }

    pub async fn close(&self) {
        match self {
            Store::Sqlite(pool) => pool.close().await,
            Store::Postgres(pool) => pool.close().await,
        }
    }
}

/// The URL without its password, for logs and error messages.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}")
            } else {
                format!("{scheme}://{user}@{host}")
            }
        }
        None => url.to_string(),
    }
}

/// The task store: writes through the group-commit [`writer::Writer`], reads from the pool.
#[derive(Clone)]
pub struct Tasks {
    store: Store,
    writer: writer::Writer,
}

impl Tasks {
    pub fn new(store: Store, queue: usize, max_connections: u32) -> Tasks {
        let writer = writer::Writer::start(store.clone(), queue, max_connections);
        Tasks { store, writer }
    }

    /// Why writes are failing right now, if they are (the database is unreachable).
    pub fn write_failing(&self) -> Option<String> {
        self.writer.failing()
    }

    /// Stops the group-commit writer (before the pool closes: it holds a connection).
    pub async fn close(&self) {
        self.writer.close().await;
    }

    pub async fn get(&self, task_id: &str) -> Result<Option<tasks::TaskView>, StoreError> {
        Ok(match &self.store {
            Store::Sqlite(pool) => tasks::sqlite::get(pool, task_id).await?,
            Store::Postgres(pool) => tasks::postgres::get(pool, task_id).await?,
        })
    }

    /// Whether task `task_id` exists (`None` if not) and who submitted it.
    pub async fn principal(&self, task_id: &str) -> Result<Option<Option<String>>, StoreError> {
        Ok(match &self.store {
            Store::Sqlite(pool) => tasks::sqlite::principal(pool, task_id).await?,
            Store::Postgres(pool) => tasks::postgres::principal(pool, task_id).await?,
        })
    }

    pub async fn list(
        &self,
        filter: &tasks::TaskFilter,
    ) -> Result<Vec<tasks::TaskSummary>, StoreError> {
        Ok(match &self.store {
            Store::Sqlite(pool) => tasks::sqlite::list(pool, filter).await?,
            Store::Postgres(pool) => tasks::postgres::list(pool, filter).await?,
        })
    }
}

type PortError = actors::task::store::StoreError;
type PortFuture<'a, T> = actors::task::store::BoxFuture<'a, Result<T, PortError>>;

impl actors::task::store::TaskStore for Tasks {
    fn submit(
        &self,
        task: actors::task::store::NewTask,
    ) -> PortFuture<'_, actors::task::store::Submitted> {
        Box::pin(self.writer.submit(task))
    }

    fn claim(
        &self,
        task_id: String,
        node: String,
        origin: Option<String>,
    ) -> PortFuture<'_, Option<actors::task::store::Claim>> {
        Box::pin(self.writer.claim(task_id, node, origin))
    }

    fn record<'a>(&'a self, progress: &'a actors::task::store::Progress) -> PortFuture<'a, ()> {
        Box::pin(self.writer.record(progress))
    }

    fn cancel_queued(
        &self,
        task_id: String,
        at_ms: i64,
    ) -> PortFuture<'_, actors::task::TaskStatus> {
        Box::pin(self.writer.cancel_queued(task_id, at_ms))
    }

    fn decisions(&self, task_id: String) -> PortFuture<'_, Vec<actors::task::store::Decision>> {
        Box::pin(async move {
            self.store
                .decisions(&task_id)
                .await
                .map_err(|e| PortError::Unavailable(e.to_string()))
        })
    }

    fn unfinished(
        &self,
        owner: String,
        started_only: bool,
    ) -> PortFuture<'_, Vec<(String, actors::task::Priority)>> {
        Box::pin(async move {
            let rows = match &self.store {
                Store::Sqlite(pool) => tasks::sqlite::unfinished(pool, &owner, started_only).await,
                Store::Postgres(pool) => {
                    tasks::postgres::unfinished(pool, &owner, started_only).await
                }
            };
            rows.map_err(|e| PortError::Unavailable(e.to_string()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://data/x.db"), "sqlite://data/x.db");
    }
}
