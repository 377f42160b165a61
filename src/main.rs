//! The `mister-smith` binary: parses the command line and maps outcomes to exit codes
//! (0 ok, 1 runtime failure, 2 bad configuration, flags or input; `task` commands that
//! follow a task also exit 3 failed, 4 timed out, 5 cancelled).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use mister_smith::cli::{Cli, Command, NodeFlags};
use mister_smith::config::Settings;
use mister_smith::node::{self, Outcome};
use mister_smith::store::{Store, StoreOptions, redact};
use mister_smith::{client, session_cli, task_cli, telemetry, token_cli};

/// glibc's allocator spent a quarter of a loaded node's CPU in malloc/free (many small,
/// short-lived allocations across threads: messages, JSON, SQL arguments); mimalloc's
/// thread-local heaps cut that (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EXIT_FAILURE: u8 = 1;
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let started = Instant::now();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let code = runtime.block_on(async move {
        let Some(command) = cli.command else {
            return session_cli::shell::chat(&cli.chat).await;
        };
        match command {
            Command::Run(flags) => run(flags, started).await,
            Command::Migrate(flags) => migrate(flags).await,
            Command::Actors(args) => print(client::actors(&args).await),
            Command::Agents(args) => print(client::agents(&args).await),
            Command::Cluster(args) => print(client::cluster(&args).await),
            Command::Task(args) => task_cli::run(&args).await,
            Command::Session(args) => session_cli::run(&args).await,
            Command::Chat(args) => session_cli::shell::chat(&args).await,
            Command::Token(args) => token_cli::run(&args),
            Command::Events(args) => mister_smith::events_cli::run(&args).await,
            Command::Load(args) => match mister_smith::load::run(&args).await {
                Ok(out) => {
                    print!("{out}");
                    0
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    EXIT_FAILURE
                }
            },
        }
    });
    // Actors left behind by a failed start must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_secs(1));
    ExitCode::from(code)
}

fn load(flags: &NodeFlags) -> Result<Settings, u8> {
    Settings::load(&flags.overrides()).map_err(|e| {
        eprintln!("error: {e}");
        EXIT_CONFIG
    })
}

async fn run(flags: NodeFlags, started: Instant) -> u8 {
    let settings = match load(&flags) {
        Ok(s) => s,
        Err(code) => return code,
    };
    telemetry::init_logs(&settings.log.level, settings.log.format);
    let metrics = match telemetry::init_metrics() {
        Ok(handle) => Some(handle),
        Err(e) => {
            tracing::warn!(error = %e, "metrics recorder not installed; /metrics is off");
            None
        }
    };
    match node::run(settings, metrics, started).await {
        Ok(Outcome::Signalled) => {
            tracing::info!("stopped");
            0
        }
        Ok(Outcome::Drained) => {
            tracing::info!("drained and left the cluster; stopped");
            0
        }
        Ok(Outcome::Escalated(e)) => {
            tracing::error!(
                supervisor = %e.supervisor,
                child = %e.child,
                reason = %e.reason,
                "supervision escalated past the root: supervisor `{}` gave up after child `{}` failed ({}); stopping the node",
                e.supervisor, e.child, e.reason
            );
            EXIT_FAILURE
        }
        Ok(Outcome::RootDied) => {
            tracing::error!("the root supervisor stopped unexpectedly; stopping the node");
            EXIT_FAILURE
        }
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            // A setting found wrong only when used (a certificate that does not parse)
            // is still bad configuration.
            if e.downcast_ref::<mister_smith::config::ConfigError>()
                .is_some()
            {
                EXIT_CONFIG
            } else {
                EXIT_FAILURE
            }
        }
    }
}

async fn migrate(flags: NodeFlags) -> u8 {
    let settings = match load(&flags) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let options = StoreOptions {
        max_connections: 1,
        ..settings.database.store_options()
    };
    let result = async {
        let store = Store::connect(&options).await?;
        store.migrate().await?;
        store.close().await;
        Ok::<_, mister_smith::store::StoreError>(())
    }
    .await;
    match result {
        Ok(()) => {
            println!("migrations applied to {}", redact(&options.url));
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_FAILURE
        }
    }
}

fn print(result: Result<String, client::ClientError>) -> u8 {
    match result {
        Ok(out) => {
            print!("{out}");
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_FAILURE
        }
    }
}
