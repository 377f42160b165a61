//! Storage (DESIGN §5, §8, §10): the embedded SQLite default and PostgreSQL, migrations
//! at start and through `mister-smith migrate`, and readiness while the database is down.
//! The PostgreSQL tests need a real server (see `common::postgres_database`).

mod common;

use std::path::Path;

use common::{
    Launch, TestNode, Wait, closed_addr, eventually, postgres_database, run_to_exit, temp_dir,
};
use reqwest::StatusCode;
use sqlx::Connection as _;

/// How many migrations the binary embeds for a backend.
fn migrations(backend: &str) -> i64 {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend);
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "sql"))
        .count() as i64
}

async fn sqlite(path: &Path) -> sqlx::SqliteConnection {
    let url = format!("sqlite://{}?mode=ro", path.display());
    sqlx::SqliteConnection::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("opening {url}: {e}"))
}

#[tokio::test]
async fn default_sqlite_file_lands_in_the_working_directory() {
    let node = TestNode::start(&[], &[]).await;
    let file = node.dir().join("data/mister-smith.db");
    assert!(file.is_file(), "{} missing", file.display());
}

#[tokio::test]
async fn sqlite_file_and_missing_directories_are_created_in_wal_mode() {
    let dir = temp_dir();
    let file = dir.path().join("sub/dir/ms.db");
    assert!(!file.parent().expect("parent").exists());
    let url = format!("sqlite://{}", file.display());
    let node = TestNode::start(&["--database", &url, "--node", "walnode"], &[]).await;
    assert!(file.is_file(), "{} was not created", file.display());

    let mut conn = sqlite(&file).await;
    let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .expect("PRAGMA journal_mode");
    assert_eq!(mode.to_lowercase(), "wal");
    assert!(
        file.with_file_name("ms.db-wal").exists(),
        "a running node in WAL mode has a -wal file"
    );
    let (applied,): (i64,) = sqlx::query_as("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut conn)
        .await
        .expect("reading _sqlx_migrations");
    assert_eq!(applied, migrations("sqlite"));
    let (starts,): (i64,) = sqlx::query_as("SELECT starts FROM nodes WHERE name = 'walnode'")
        .fetch_one(&mut conn)
        .await
        .expect("the node's row");
    assert_eq!(starts, 1);
    drop(node);
}

#[tokio::test]
async fn migrate_creates_the_sqlite_file_and_is_idempotent() {
    let dir = temp_dir();
    let file = dir.path().join("sub/dir/ms.db");
    let url = format!("sqlite://{}", file.display());
    for run in 1..=2 {
        let out = run_to_exit(dir.path(), &["migrate", "--database", &url], &[]).await;
        assert_eq!(out.code(), Some(0), "migrate run {run}\n{}", out.describe());
        assert!(
            out.stdout.contains("migrations applied"),
            "{}",
            out.describe()
        );
    }
    assert!(file.is_file(), "{} was not created", file.display());
    let mut conn = sqlite(&file).await;
    let (applied,): (i64,) = sqlx::query_as("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .expect("reading _sqlx_migrations");
    assert_eq!(
        applied,
        migrations("sqlite"),
        "each migration recorded once"
    );
    let (nodes,): (i64,) = sqlx::query_as("SELECT count(*) FROM nodes")
        .fetch_one(&mut conn)
        .await
        .expect("the nodes table exists");
    assert_eq!(nodes, 0, "migrate runs no node");

    // A node starts on the migrated file.
    let node = TestNode::start(&["--database", &url], &[]).await;
    let (status, body) = node
        .get_json(&format!("{}/health/ready", node.http_url()))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn starts(conn: &mut sqlx::PgConnection, node: &str) -> i64 {
    let (starts,): (i64,) = sqlx::query_as("SELECT starts FROM nodes WHERE name = $1")
        .bind(node)
        .fetch_one(conn)
        .await
        .unwrap_or_else(|e| panic!("the row of node {node}: {e}"));
    starts
}

#[tokio::test]
async fn postgres_node_gets_ready_migrates_and_counts_its_starts() {
    let db = postgres_database().await;
    let mut first = TestNode::start(&["--database", &db.url, "--node", "pg-node"], &[]).await;
    assert!(
        first.log().contains("backend=\"postgres\""),
        "{}",
        first.log()
    );

    let mut conn = db.connect().await;
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' ORDER BY table_name",
    )
    .fetch_all(&mut conn)
    .await
    .expect("listing tables");
    let tables: Vec<&str> = tables.iter().map(|(t,)| t.as_str()).collect();
    assert!(tables.contains(&"_sqlx_migrations"), "{tables:?}");
    assert!(tables.contains(&"nodes"), "{tables:?}");
    let (applied,): (i64,) = sqlx::query_as("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut conn)
        .await
        .expect("reading _sqlx_migrations");
    assert_eq!(applied, migrations("postgres"));
    assert_eq!(starts(&mut conn, "pg-node").await, 1);

    first.sigterm();
    assert_eq!(first.wait_exit().await.code(), Some(0), "{}", first.log());
    drop(first);

    let second = TestNode::start(&["--database", &db.url, "--node", "pg-node"], &[]).await;
    assert_eq!(
        starts(&mut conn, "pg-node").await,
        2,
        "a second start is counted"
    );
    let (migrated,): (i64,) = sqlx::query_as("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .expect("reading _sqlx_migrations");
    assert_eq!(
        migrated,
        migrations("postgres"),
        "migrations are applied once"
    );
    let _ = conn.close().await;
    drop(second);
}

#[tokio::test]
async fn migrate_against_postgres_is_idempotent() {
    let db = postgres_database().await;
    let dir = temp_dir();
    for run in 1..=2 {
        let out = run_to_exit(dir.path(), &["migrate", "--database", &db.url], &[]).await;
        assert_eq!(out.code(), Some(0), "migrate run {run}\n{}", out.describe());
    }
    let mut conn = db.connect().await;
    let (applied,): (i64,) = sqlx::query_as("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&mut conn)
        .await
        .expect("reading _sqlx_migrations");
    assert_eq!(applied, migrations("postgres"));
    let _ = conn.close().await;
}

#[tokio::test]
async fn migrate_against_an_unreachable_database_fails_in_one_line() {
    let dir = temp_dir();
    let addr = closed_addr();
    let url = format!("postgres://postgres@{addr}/nowhere");
    let out = run_to_exit(
        dir.path(),
        &["migrate", "--database", &url],
        &[("MISTER_SMITH__DATABASE__CONNECT_TIMEOUT_SECS", "2")],
    )
    .await;
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let stderr = out.stderr.trim();
    assert_eq!(stderr.lines().count(), 1, "one line:\n{}", out.describe());
    assert!(stderr.starts_with("error:"), "{}", out.describe());
    assert!(
        stderr.contains(&addr),
        "names the address tried:\n{}",
        out.describe()
    );
    assert!(out.stdout.is_empty(), "{}", out.describe());
}

#[tokio::test]
async fn node_without_its_database_is_live_but_not_ready() {
    let addr = closed_addr();
    let url = format!("postgres://postgres@{addr}/nowhere");
    let mut node = Launch::new()
        .args(&["--database", &url])
        .env("MISTER_SMITH__DATABASE__CONNECT_TIMEOUT_SECS", "1")
        .wait_for(Wait::Live)
        .start()
        .await;

    // Wait until it has tried (and failed) to connect twice: it keeps trying.
    eventually("two failed connection attempts in the log", || async {
        let log = node.log();
        match log.matches("database unreachable").count() {
            n if n >= 2 => Ok(()),
            n => Err(format!("{n} attempts:\n{log}")),
        }
    })
    .await;
    assert!(
        node.log().contains(&addr),
        "the log names the database:\n{}",
        node.log()
    );

    let (status, live) = node
        .get_json(&format!("{}/health/live", node.http_url()))
        .await;
    assert_eq!(status, StatusCode::OK, "{live}");
    let (status, ready) = node
        .get_json(&format!("{}/health/ready", node.http_url()))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert_eq!(ready["status"], "not_ready", "{ready}");
    let storage = ready["checks"]["storage"]
        .as_str()
        .unwrap_or_else(|| panic!("no storage check: {ready}"));
    assert_ne!(storage, "up", "{ready}");
    assert!(
        node.is_running(),
        "an unreachable database must not stop the node"
    );

    // And it still stops cleanly on request.
    node.sigterm();
    assert_eq!(node.wait_exit().await.code(), Some(0), "{}", node.log());
}

/// A database outage while the node runs (its connections cut, new ones refused): a
/// submission gets 503 naming storage, readiness turns 503, nothing of the refused
/// submissions is stored; when the database is back the node serves again without a
/// restart.
#[tokio::test]
async fn database_outage_refuses_submissions_with_503_and_stores_nothing_half_written() {
    let db = postgres_database().await;
    let node = Launch::new()
        .args(&["--database", &db.url])
        .env("MISTER_SMITH__DATABASE__CONNECT_TIMEOUT_SECS", "1")
        .start()
        .await;
    let tasks = format!("{}/api/v1/tasks", node.http_url());
    let ready = format!("{}/health/ready", node.http_url());
    let task = serde_json::json!({"steps": [{"id": "a", "tool": "echo", "args": {"text": "x"}}]});
    let client = common::http_client();
    let submit = || async {
        let response = client
            .post(&tasks)
            .json(&task)
            .send()
            .await
            .expect("the node answers");
        let status = response.status();
        (
            status,
            response
                .json::<serde_json::Value>()
                .await
                .unwrap_or_default(),
        )
    };
    let (status, body) = submit().await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    db.set_reachable(false).await;
    for _ in 0..3 {
        let (status, body) = submit().await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        let (code, message) = common::assert_error_shape(&body, "a submission during the outage");
        assert_eq!(code, "unavailable", "{body}");
        assert!(message.contains("storage"), "names storage: {body}");
    }
    let (status, health) = node.get_json(&ready).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{health}");
    assert_ne!(health["checks"]["storage"], "up", "{health}");

    db.set_reachable(true).await;
    let mut conn = db.connect().await;
    let (stored,): (i64,) = sqlx::query_as("SELECT count(*) FROM tasks")
        .fetch_one(&mut conn)
        .await
        .expect("counting tasks");
    assert_eq!(
        stored, 1,
        "only the task accepted before the outage is stored"
    );
    let (events,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM task_events WHERE task_id NOT IN (SELECT id FROM tasks)",
    )
    .fetch_one(&mut conn)
    .await
    .expect("counting trace entries");
    assert_eq!(events, 0, "no trace entry without its task");

    // Back without a restart: accepted again, and the task runs to the end.
    let id = eventually("a submission accepted after the outage", || async {
        match submit().await {
            (StatusCode::ACCEPTED, body) => {
                Ok(body["task_id"].as_str().unwrap_or_default().to_string())
            }
            (status, body) => Err(format!("{status}: {body}")),
        }
    })
    .await;
    eventually("the task after the outage to succeed", || async {
        let (_, task) = node.get_json(&format!("{tasks}/{id}")).await;
        match task["status"].as_str() {
            Some("succeeded") => Ok(()),
            _ => Err(format!("{task}")),
        }
    })
    .await;
    let (status, health) = node.get_json(&ready).await;
    assert_eq!(status, StatusCode::OK, "{health}");
    let _ = conn.close().await;
}
