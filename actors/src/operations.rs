//! Operator actions on live actors (the admin API's stop, kill and restart).
//!
//! A stop or restart goes through the actor's supervisor, so the supervisor's bookkeeping
//! stays true (a stopped permanent child is not restarted behind the operator's back); a
//! kill goes straight to the actor and its supervisor reacts as to any crash.

use std::time::Duration;

use ractor::{ActorRef, RactorErr};

use crate::context::NodeContext;
use crate::supervisor::{SupervisorError, SupervisorMsg};

/// How long an operation may wait for the supervisor (it may be stopping slow children).
const OPERATION_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum OperationError {
    #[error("no live actor with id {0}")]
    NotFound(u64),
    #[error("actor {0} is the root supervisor; stop the node with SIGTERM instead")]
    Root(u64),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error("the supervisor of actor {pid} did not answer: {reason}")]
    Unavailable { pid: u64, reason: String },
}

/// What an operation is aimed at: a live actor by pid, or a supervisor's child slot
/// (`<supervisor pid>:<child id>`, how the tree names a stopped or restarting child).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Actor(u64),
    Slot { supervisor: u64, child: String },
}

impl Target {
    pub fn parse(id: &str) -> Option<Target> {
        match id.split_once(':') {
            None => id.parse().ok().map(Target::Actor),
            Some((sup, child)) if !child.is_empty() => Some(Target::Slot {
                supervisor: sup.parse().ok()?,
                child: child.to_string(),
            }),
            Some(_) => None,
        }
    }

    fn pid(&self) -> u64 {
        match self {
            Target::Actor(pid)
            | Target::Slot {
                supervisor: pid, ..
            } => *pid,
        }
    }
}

/// Kills an actor; its supervisor restarts it as its strategy prescribes.
pub fn kill(ctx: &NodeContext, target: &Target) -> Result<(), OperationError> {
    let pid = match target {
        Target::Actor(pid) => *pid,
        Target::Slot { supervisor, child } => ctx
            .directory
            .get(*supervisor)
            .and_then(|e| e.supervisor)
            .ok_or(OperationError::NotFound(*supervisor))?
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .children
            .iter()
            .find(|c| &c.id == child)
            .ok_or_else(|| SupervisorError::NoSuchChild(child.clone()))?
            .pid
            .ok_or_else(|| SupervisorError::NotRunning(child.clone()))?,
    };
    let entry = ctx
        .directory
        .get(pid)
        .ok_or(OperationError::NotFound(pid))?;
    if ctx.directory.parent_of(pid).is_none() {
        return Err(OperationError::Root(pid));
    }
    entry.cell.kill();
    Ok(())
}

/// Stops an actor through its supervisor; it stays stopped until restarted.
pub async fn stop(ctx: &NodeContext, target: &Target) -> Result<(), OperationError> {
    let (supervisor, child) = parent(ctx, target)?;
    let reply = supervisor
        .call(
            |r| SupervisorMsg::TerminateChild(child, r),
            Some(OPERATION_TIMEOUT),
        )
        .await;
    ask(target.pid(), reply)?
}

/// Restarts an actor (or starts a stopped child slot) through its supervisor; returns the
/// new actor's id.
pub async fn restart(ctx: &NodeContext, target: &Target) -> Result<u64, OperationError> {
    let (supervisor, child) = parent(ctx, target)?;
    let reply = supervisor
        .call(
            |r| SupervisorMsg::RestartChild(child, r),
            Some(OPERATION_TIMEOUT),
        )
        .await;
    ask(target.pid(), reply)?
}

/// The supervisor responsible for the target, and the target's child id there.
fn parent(
    ctx: &NodeContext,
    target: &Target,
) -> Result<(ActorRef<SupervisorMsg>, String), OperationError> {
    match target {
        Target::Actor(pid) => {
            ctx.directory
                .get(*pid)
                .ok_or(OperationError::NotFound(*pid))?;
            let (entry, child) = ctx
                .directory
                .parent_of(*pid)
                .ok_or(OperationError::Root(*pid))?;
            Ok((ActorRef::from(entry.cell), child))
        }
        Target::Slot { supervisor, child } => {
            let entry = ctx
                .directory
                .get(*supervisor)
                .filter(|e| e.supervisor.is_some())
                .ok_or(OperationError::NotFound(*supervisor))?;
            Ok((ActorRef::from(entry.cell), child.clone()))
        }
    }
}

fn ask<T>(
    pid: u64,
    result: Result<
        ractor::rpc::CallResult<Result<T, SupervisorError>>,
        ractor::MessagingErr<SupervisorMsg>,
    >,
) -> Result<Result<T, OperationError>, OperationError> {
    let unavailable = |reason: String| OperationError::Unavailable { pid, reason };
    match result.map_err(RactorErr::from) {
        Ok(ractor::rpc::CallResult::Success(r)) => Ok(r.map_err(OperationError::from)),
        Ok(ractor::rpc::CallResult::Timeout) => Err(unavailable("timed out".into())),
        Ok(ractor::rpc::CallResult::SenderError) => Err(unavailable("it stopped".into())),
        Err(e) => Err(unavailable(e.to_string())),
    }
}
