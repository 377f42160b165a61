//! Every ractor actor of a Mister Smith node: the generic [`supervisor`], the agent
//! [`registry`], domain supervisors built from configuration ([`domain`]), the [`agent`]
//! actor the [`roles`] run in, and the node's [`root`]. Actors share a [`context`]:
//! the [`directory`] that makes them inspectable and the [`events`] they publish.

pub mod agent;
pub mod context;
pub mod deltas;
pub mod directory;
pub mod domain;
pub mod events;
pub mod lease;
pub mod llm;
pub mod operations;
pub mod registry;
pub mod remote;
pub mod roles;
pub mod root;
pub mod run;
pub mod scheduler;
pub mod secret;
pub mod session;
pub mod supervisor;
pub mod task;
pub mod time;
pub mod tls;
pub mod tools;

pub use context::NodeContext;
