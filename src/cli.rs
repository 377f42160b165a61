//! The command line (clap): `run` starts a node; the other commands are clients of a
//! running node's HTTP and admin listeners; no command opens the chat shell.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Overrides;

#[derive(Debug, Parser)]
#[command(
    name = "mister-smith",
    version,
    about = "A distributed, supervised runtime for multi-agent work"
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Without a command: the chat shell against the node.
    #[command(flatten)]
    pub chat: crate::session_cli::ChatArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a node (embedded defaults: SQLite under data/, no NATS).
    Run(NodeFlags),
    /// Show a node's live supervision tree (this node's, or any node's of its cluster).
    Actors(ActorsArgs),
    /// List the members of the node's cluster: status, heartbeat, detector, link, load.
    Cluster(ClusterArgs),
    /// List the registered agents.
    Agents(AgentsArgs),
    /// Apply the database migrations and exit.
    Migrate(NodeFlags),
    /// Generate load: submit trivial tasks over HTTP and measure throughput and latency.
    Load(crate::load::LoadArgs),
    /// Submit, inspect, list, cancel and follow tasks.
    Task(TaskArgs),
    /// Follow the event feed of a node (every node's, in a cluster): filtered, resumable.
    Events(crate::events_cli::EventsArgs),
    /// Mint bearer tokens for a node with `auth.mode = "jwt"`.
    Token(crate::token_cli::TokenArgs),
    /// Talk to the node's agent in sessions: start, send, show, list, end, resume.
    Session(crate::session_cli::SessionArgs),
    /// The chat shell (also what `mister-smith` with no command runs).
    Chat(crate::session_cli::ChatArgs),
}

/// Flags that override configuration (DESIGN §8).
#[derive(Debug, Args, Default)]
pub struct NodeFlags {
    /// A TOML file layered over the defaults.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// node.name
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// http.listen
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// admin.listen
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,
    /// database.url
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
    /// nats.url
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
    /// cluster.name
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
}

impl NodeFlags {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            config_file: self.config.clone(),
            node: self.node.clone(),
            http: self.http.clone(),
            admin: self.admin.clone(),
            database: self.database.clone(),
            nats: self.nats.clone(),
            cluster: self.cluster.clone(),
        }
    }
}

/// The bearer token a client command sends to a node (`Authorization: Bearer`).
#[derive(Debug, Args, Clone, Default)]
pub struct BearerToken {
    /// Bearer token for a node that asks for one (`auth.mode = "jwt"`; mint it with
    /// `mister-smith token issue`).
    #[arg(
        long = "token",
        value_name = "JWT",
        env = "MISTER_SMITH_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
}

/// Which node's admin listener a client command asks.
#[derive(Debug, Args)]
pub struct AdminTarget {
    /// The node's admin address.
    #[arg(
        long,
        value_name = "ADDR",
        env = "MISTER_SMITH__ADMIN__LISTEN",
        default_value = "127.0.0.1:8081"
    )]
    pub admin: String,
    /// The node's `admin.token`; when given, it is sent instead of --token (which may be a
    /// JWT with the `admin` scope).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "MISTER_SMITH__ADMIN__TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    #[command(flatten)]
    pub bearer: BearerToken,
}

impl AdminTarget {
    /// The token to send: `admin.token` if given, else the bearer token.
    pub fn token(&self) -> Option<&str> {
        self.admin_token.as_deref().or(self.bearer.token.as_deref())
    }
}

#[derive(Debug, Args)]
pub struct ActorsArgs {
    #[command(flatten)]
    pub target: AdminTarget,
    /// Another node of the cluster, whose tree the asked node fetches over NATS.
    #[arg(long = "node", value_name = "NAME")]
    pub of_node: Option<String>,
    /// Print the tree as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ClusterArgs {
    #[command(flatten)]
    pub target: AdminTarget,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AgentsArgs {
    /// The node's HTTP address.
    #[arg(
        long,
        value_name = "ADDR",
        env = "MISTER_SMITH__HTTP__LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub http: String,
    /// Only agents offering this capability.
    #[arg(long)]
    pub capability: Option<String>,
    /// Only agents of this role.
    #[arg(long)]
    pub role: Option<String>,
    /// Only agents of this domain.
    #[arg(long)]
    pub domain: Option<String>,
    /// Only agents in this lifecycle state.
    #[arg(long)]
    pub state: Option<String>,
    #[command(flatten)]
    pub bearer: BearerToken,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// What `task …` commands exit with (also in the `task --help` text).
const TASK_EXIT_CODES: &str = "\
Exit codes:
  0  done (for submit --wait and watch: the task succeeded)
  1  the node could not be asked or refused (unreachable, busy, no such task, not cancellable)
  2  bad input (unreadable file, invalid JSON, a task the node rejects with 422, bad flags)
  3  the task failed
  4  the task timed out
  5  the task was cancelled";

#[derive(Debug, Args)]
#[command(after_help = TASK_EXIT_CODES)]
pub struct TaskArgs {
    #[command(subcommand)]
    pub command: TaskCommand,
}

/// The node to ask and the output form, shared by every `task` command.
#[derive(Debug, Args, Clone)]
pub struct TaskClientFlags {
    /// The node's HTTP address.
    #[arg(
        long,
        value_name = "ADDR",
        env = "MISTER_SMITH__HTTP__LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub http: String,
    #[command(flatten)]
    pub bearer: BearerToken,
    /// Print the node's JSON instead of text for people.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Submit a task and print its id (with --wait: follow it to its end).
    #[command(after_help = TASK_EXIT_CODES)]
    Submit(TaskSubmitArgs),
    /// Show a task: its steps with their attempts, verdicts and outputs, its error and
    /// its event trace.
    #[command(after_help = TASK_EXIT_CODES)]
    Get(TaskIdArgs),
    /// List tasks, newest first.
    #[command(after_help = TASK_EXIT_CODES)]
    List(TaskListArgs),
    /// Cancel a task that has not finished yet and print its new status.
    #[command(after_help = TASK_EXIT_CODES)]
    Cancel(TaskIdArgs),
    /// Follow a task to its end with a progress bar (one line per change when stdout is
    /// not a terminal); the exit code says how it ended.
    #[command(after_help = TASK_EXIT_CODES)]
    Watch(TaskIdArgs),
}

/// Task priorities (DESIGN §4).
pub const PRIORITIES: [&str; 5] = ["urgent", "high", "normal", "low", "background"];

/// Task statuses (DESIGN §4).
pub const TASK_STATUSES: [&str; 7] = [
    "queued",
    "planning",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "timed_out",
];

#[derive(Debug, Args)]
pub struct TaskSubmitArgs {
    /// A JSON file with the task (an object: `{"description", "steps": […], …}`) or just
    /// its steps (an array); `-` reads it from stdin. The flags below override its fields.
    #[arg(long, value_name = "FILE|-")]
    pub steps: Option<PathBuf>,
    /// What the task is for (the Planner's brief when there are no steps).
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// Scheduling priority.
    #[arg(long, value_name = "P", value_parser = PRIORITIES)]
    pub priority: Option<String>,
    /// Submitting again with the same key gives back the same task instead of a new one.
    #[arg(long, value_name = "K")]
    pub idempotency_key: Option<String>,
    /// The whole task must finish within this many seconds.
    #[arg(long, value_name = "S")]
    pub timeout_secs: Option<f64>,
    /// Attempts per step unless a step says otherwise.
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u32>,
    /// Follow the task to its end (as `task watch` does); the exit code says how it ended.
    /// With --json, prints the finished task's JSON instead of the submission's answer.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub client: TaskClientFlags,
}

#[derive(Debug, Args)]
pub struct TaskIdArgs {
    /// The task's id.
    #[arg(value_name = "ID")]
    pub id: String,
    #[command(flatten)]
    pub client: TaskClientFlags,
}

#[derive(Debug, Args)]
pub struct TaskListArgs {
    /// Only tasks in this status.
    #[arg(long, value_name = "S", value_parser = TASK_STATUSES)]
    pub status: Option<String>,
    /// Only tasks of this priority.
    #[arg(long, value_name = "P", value_parser = PRIORITIES)]
    pub priority: Option<String>,
    /// Tasks per page (1 to 1000; the node's default is 50).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: Option<u32>,
    /// Start after this task (the `next_cursor` of the previous page).
    #[arg(long, value_name = "C")]
    pub cursor: Option<String>,
    /// Follow `next_cursor` to the last page and show every task.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub client: TaskClientFlags,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn task_commands_take_the_node_address_and_json_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "mister-smith",
            "task",
            "list",
            "--status",
            "failed",
            "--all",
            "--http",
            "127.0.0.1:9",
            "--json",
        ])
        .expect("parses");
        let Some(Command::Task(TaskArgs {
            command: TaskCommand::List(list),
        })) = cli.command
        else {
            panic!("not task list: {cli:?}");
        };
        assert_eq!(list.status.as_deref(), Some("failed"));
        assert!(list.all && list.client.json);
        assert_eq!(list.client.http, "127.0.0.1:9");
        let bad = Cli::try_parse_from(["mister-smith", "task", "list", "--status", "done"]);
        assert!(bad.is_err(), "an unknown status is refused");
    }

    #[test]
    fn admin_commands_prefer_the_admin_token_over_the_bearer_token() {
        let target = |args: &[&str]| {
            let cli = Cli::try_parse_from(["mister-smith", "cluster"].iter().chain(args))
                .expect("parses");
            let Some(Command::Cluster(cluster)) = cli.command else {
                panic!("not cluster: {cli:?}");
            };
            cluster.target
        };
        assert_eq!(target(&["--token", "jwt"]).token(), Some("jwt"));
        assert_eq!(
            target(&["--token", "jwt", "--admin-token", "adm"]).token(),
            Some("adm")
        );
        assert_eq!(target(&["--admin-token", "adm"]).token(), Some("adm"));
    }
}
