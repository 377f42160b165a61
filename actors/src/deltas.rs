//! Text deltas of LLM calls as the provider streams them, for whoever watches a task
//! right now (a turn's event stream, the chat shell).
//!
//! A delta is not recorded: the call's whole answer is, once it is done, and that is what
//! resumes a task and what a late watcher reads. So this hub is best effort by design: a
//! call streams only while someone on this node is subscribed to its task (otherwise it
//! asks the provider for a plain answer), and a subscriber that falls behind loses deltas,
//! never the answer.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::llm::DeltaSink;

/// Deltas a subscriber may fall behind by before it loses some.
const BUFFER: usize = 1024;

/// A piece of an LLM call's answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Delta {
    /// The step making the call (`llm_<n>`, `summary`).
    pub step: String,
    pub text: String,
}

/// The node's delta channels, one per task someone watches.
#[derive(Default)]
pub struct Deltas {
    channels: Mutex<HashMap<String, broadcast::Sender<Delta>>>,
}

impl Deltas {
    /// Watches task `task_id`'s deltas from now on.
    pub fn subscribe(&self, task_id: &str) -> broadcast::Receiver<Delta> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        channels.retain(|_, tx| tx.receiver_count() > 0);
        channels
            .entry(task_id.to_string())
            .or_insert_with(|| broadcast::channel(BUFFER).0)
            .subscribe()
    }

    /// Where step `step` of task `task_id` sends its deltas, while anyone watches it.
    pub fn sink(&self, task_id: &str, step: &str) -> Option<DeltaSink> {
        let channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let tx = channels
            .get(task_id)
            .filter(|tx| tx.receiver_count() > 0)?
            .clone();
        let step = step.to_string();
        Some(DeltaSink::new(move |text: &str| {
            let _ = tx.send(Delta {
                step: step.clone(),
                text: text.to_string(),
            });
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_reach_the_watchers_of_their_task_only_while_watched() {
        let hub = Deltas::default();
        assert!(hub.sink("t1", "llm_1").is_none(), "nobody watches");
        let mut watcher = hub.subscribe("t1");
        let _other = hub.subscribe("t2");
        let sink = hub.sink("t1", "llm_1").expect("a sink");
        sink.send("Hel");
        sink.send("lo");
        assert_eq!(watcher.try_recv().map(|d| d.text).as_deref(), Ok("Hel"));
        assert_eq!(
            watcher.try_recv(),
            Ok(Delta {
                step: "llm_1".into(),
                text: "lo".into()
            })
        );
        drop(watcher);
        assert!(hub.sink("t1", "llm_2").is_none(), "nobody watches any more");
    }
}
