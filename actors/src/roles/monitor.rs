//! Monitor: heartbeats agents, measures latency and errors, marks agents unhealthy in the
//! registry, kills stuck ones (their supervisor restarts them), publishes health events.
//!
//! A heartbeat is a status call with a deadline. An agent that misses one is marked
//! unhealthy, so the Router stops choosing it; one that misses `kill_after` in a row is
//! stuck (its mailbox is not moving) and is killed, so its supervisor starts a fresh one —
//! the step it held times out at its run and is retried elsewhere. Heartbeat rounds run off
//! the monitor's mailbox and report back as a message.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ractor::ActorRef;

use crate::agent::{AgentMsg, Lifecycle};
use crate::context::NodeContext;
use crate::events::Event;
use crate::registry::{AgentFilter, RegistryMsg};

/// Capabilities the registry indexes this role under.
pub const CAPABILITIES: &[&str] = &["health.heartbeat", "health.watchdog"];

/// How often and how strictly agents are watched (`[monitor]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MonitorSettings {
    pub heartbeat: Duration,
    pub timeout: Duration,
    /// Missed heartbeats in a row after which an agent is killed.
    pub kill_after: u32,
}

impl Default for MonitorSettings {
    fn default() -> Self {
        MonitorSettings {
            heartbeat: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            kill_after: 5,
        }
    }
}

/// One agent's answer to a heartbeat round.
#[derive(Debug, Clone)]
pub struct Beat {
    pub instance_id: String,
    pub name: String,
    pub pid: u64,
    pub healthy_before: bool,
    /// `None`: no answer within the timeout.
    pub latency: Option<Duration>,
}

/// What a monitor remembers between rounds.
#[derive(Debug, Default)]
pub struct Watch {
    missed: HashMap<String, u32>,
    pub in_flight: bool,
}

/// Sends a heartbeat to every live agent but `me`, all at once, and collects the answers.
pub async fn round(ctx: &NodeContext, me: u64, timeout: Duration) -> Vec<Beat> {
    let Some(registry) = ctx.registry() else {
        return Vec::new();
    };
    let Ok(agents) = ractor::call_t!(registry, RegistryMsg::List, 5_000, AgentFilter::default())
    else {
        return Vec::new();
    };
    let calls = agents
        .into_iter()
        .filter(|a| a.state != Lifecycle::Terminated && a.actor_id != me)
        .filter_map(|a| Some((a.agent.clone()?, a)))
        .map(|(agent, record)| async move {
            let started = Instant::now();
            let answered = ping(&agent, timeout).await;
            Beat {
                instance_id: record.identity.instance_id,
                name: record.identity.name,
                pid: record.actor_id,
                healthy_before: record.healthy,
                latency: answered.then(|| started.elapsed()),
            }
        });
    futures::future::join_all(calls).await
}

async fn ping(agent: &ActorRef<AgentMsg>, timeout: Duration) -> bool {
    matches!(
        agent.call(AgentMsg::Status, Some(timeout)).await,
        Ok(ractor::rpc::CallResult::Success(_))
    )
}

impl Watch {
    /// Applies a round's answers: health changes to the registry, kills of stuck agents.
    pub fn judge(&mut self, ctx: &NodeContext, settings: &MonitorSettings, beats: Vec<Beat>) {
        let registry = ctx.registry();
        let mut seen = HashMap::new();
        for beat in beats {
            let healthy = beat.latency.is_some();
            if let Some(latency) = beat.latency {
                metrics::histogram!("ms_agent_heartbeat_seconds").record(latency.as_secs_f64());
            }
            let missed = if healthy {
                0
            } else {
                self.missed.get(&beat.instance_id).copied().unwrap_or(0) + 1
            };
            if healthy != beat.healthy_before
                && let Some(registry) = &registry
            {
                let _ = registry.cast(RegistryMsg::SetHealth {
                    instance_id: beat.instance_id.clone(),
                    healthy,
                });
                ctx.events.publish(Event::Health {
                    agent: beat.name.clone(),
                    healthy,
                    missed,
                });
            }
            if missed >= settings.kill_after
                && let Some(entry) = ctx.directory.get(beat.pid)
            {
                tracing::warn!(agent = %beat.name, missed, "agent stuck: no heartbeat answer; killing it so its supervisor restarts it");
                metrics::counter!("ms_monitor_kills_total").increment(1);
                entry.cell.kill();
                continue;
            }
            seen.insert(beat.instance_id, missed);
        }
        self.missed = seen;
    }
}
