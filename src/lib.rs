//! The Mister Smith node around the actors: command line, configuration, storage, the HTTP
//! and admin adapters, telemetry, and the node's start/stop sequence. See ARCHITECTURE.md.

pub mod admin;
pub mod bridge;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod console;
pub mod events_cli;
pub mod feed;
pub mod http;
pub mod load;
pub mod node;
pub mod session_cli;
pub mod state;
pub mod store;
pub mod task_cli;
pub mod telemetry;
pub mod token_cli;
