//! The command line (clap): `run` starts a node; the other commands are clients of a
//! running node's HTTP and admin listeners.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Overrides;

#[derive(Debug, Parser)]
#[command(
    name = "mister-smith",
    version,
    about = "A distributed, supervised runtime for multi-agent work"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a node (embedded defaults: SQLite under data/, no NATS).
    Run(NodeFlags),
    /// Show the node's live supervision tree.
    Actors(ActorsArgs),
    /// List the registered agents.
    Agents(AgentsArgs),
    /// Apply the database migrations and exit.
    Migrate(NodeFlags),
    /// Generate load: submit trivial tasks over HTTP and measure throughput and latency.
    Load(crate::load::LoadArgs),
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

#[derive(Debug, Args)]
pub struct ActorsArgs {
    /// The node's admin address.
    #[arg(
        long,
        value_name = "ADDR",
        env = "MISTER_SMITH__ADMIN__LISTEN",
        default_value = "127.0.0.1:8081"
    )]
    pub admin: String,
    /// Admin bearer token.
    #[arg(long, env = "MISTER_SMITH__ADMIN__TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the tree as JSON.
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
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}
