//! Sessions: a conversation with an agent, turn by turn (the seeds' "durable same-agent
//! conversations").
//!
//! A turn is an agent task (`run/agent.rs`): the user's message, the session's settings
//! (system prompt, tools, limits) and the conversation so far as `history`. So a turn gets
//! everything a task has: durable once accepted, each LLM call and tool call a recorded
//! step, resumed after a crash or a takeover without repeating a finished call. This
//! module holds what a session adds to that, as plain functions over what is recorded:
//! the settings a turn is made from, the history the next turn is given, a turn's answer
//! and the tokens it used. Storage is the node's (`src/store/sessions.rs`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::llm::ChatMessage;
use crate::run::agent::llm_number;
use crate::task::spec::MAX_HISTORY;
use crate::task::{AgentTask, Priority, TaskSpec};

/// What every turn of a session runs with, fixed when the session starts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionSettings {
    /// The system prompt of every turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 100000)]
    pub system: Option<String>,
    /// The step tools the model may call, by name.
    #[serde(default)]
    #[schema(example = json!(["echo", "memory"]))]
    pub tools: Vec<String>,
    /// LLM calls per turn at most (default 10, at most 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 50)]
    pub max_iterations: Option<u32>,
    /// Upper bound on tokens per LLM call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000000)]
    pub max_tokens: Option<u32>,
    /// Tokens (in and out) all LLM calls of one turn may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub max_total_tokens: Option<u64>,
    /// Wall time of one turn, in seconds; past it the turn ends `timed_out`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.001, maximum = 86400)]
    pub timeout_secs: Option<f64>,
}

impl SessionSettings {
    /// Turn `turn` of session `session_id` as the agent task that runs it.
    pub fn turn(
        &self,
        session_id: &str,
        turn: i64,
        message: String,
        history: Vec<ChatMessage>,
    ) -> TaskSpec {
        let mut agent = AgentTask {
            message,
            history,
            system: self.system.clone(),
            tools: self.tools.clone(),
            max_tokens: self.max_tokens,
            max_total_tokens: self.max_total_tokens,
            ..AgentTask::default()
        };
        if let Some(n) = self.max_iterations {
            agent.max_iterations = n;
        }
        TaskSpec {
            description: Some(format!("session {session_id}, turn {turn}")),
            priority: Priority::Normal,
            timeout_secs: self.timeout_secs,
            agent: Some(agent),
            session: Some(session_id.to_string()),
            ..TaskSpec::default()
        }
    }
}

/// An earlier turn as the next one sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PastTurn {
    pub message: String,
    /// The agent's final answer; `None` for a turn that did not succeed.
    pub answer: Option<String>,
}

/// The conversation the next turn is given: each answered turn's message and answer, in
/// order, the latest [`MAX_HISTORY`] messages. A turn without an answer (failed, cancelled,
/// timed out) is left out, so the model never sees a question as if it had been answered.
pub fn history(past: &[PastTurn]) -> Vec<ChatMessage> {
    let mut messages: Vec<ChatMessage> = past
        .iter()
        .filter_map(|t| Some((t, t.answer.as_ref()?)))
        .flat_map(|(t, answer)| {
            [
                ChatMessage::user(t.message.clone()),
                ChatMessage::assistant(answer.clone()),
            ]
        })
        .collect();
    let excess = messages.len().saturating_sub(MAX_HISTORY);
    messages.drain(..excess);
    messages
}

/// A turn's answer: the text of its last LLM call, from its steps' recorded outputs.
pub fn answer<'a>(steps: impl IntoIterator<Item = (&'a str, Option<&'a Value>)>) -> Option<String> {
    steps
        .into_iter()
        .filter_map(|(id, output)| Some((llm_number(id)?, output?)))
        .max_by_key(|(n, _)| *n)
        .and_then(|(_, output)| output.get("text")?.as_str().map(str::to_string))
}

/// What a turn (or a session, summed) used, as the providers counted it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Usage {
    pub llm_calls: u64,
    pub tool_calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl Usage {
    /// The usage recorded in a turn's steps: each LLM call's token counts, and each tool
    /// call (every other step of an agent task) counted once.
    pub fn of<'a>(steps: impl IntoIterator<Item = (&'a str, Option<&'a Value>)>) -> Usage {
        let mut usage = Usage::default();
        for (id, output) in steps {
            if llm_number(id).is_none() {
                usage.tool_calls += 1;
                continue;
            }
            usage.llm_calls += 1;
            let count = |key: &str| {
                output
                    .and_then(|o| o.get("json")?.get(key)?.as_u64())
                    .unwrap_or(0)
            };
            usage.input_tokens = usage.input_tokens.saturating_add(count("input_tokens"));
            usage.output_tokens = usage.output_tokens.saturating_add(count("output_tokens"));
        }
        usage
    }
}

impl std::ops::Add for Usage {
    type Output = Usage;

    fn add(self, other: Usage) -> Usage {
        Usage {
            llm_calls: self.llm_calls + other.llm_calls,
            tool_calls: self.tool_calls + other.tool_calls,
            input_tokens: self.input_tokens.saturating_add(other.input_tokens),
            output_tokens: self.output_tokens.saturating_add(other.output_tokens),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::Role;
    use serde_json::json;

    #[test]
    fn history_holds_answered_turns_in_order() {
        let past = [
            PastTurn {
                message: "hi".into(),
                answer: Some("hello".into()),
            },
            PastTurn {
                message: "lost".into(),
                answer: None,
            },
            PastTurn {
                message: "2+2?".into(),
                answer: Some("4".into()),
            },
        ];
        let h = history(&past);
        let said: Vec<(Role, &str)> = h.iter().map(|m| (m.role, m.content.as_str())).collect();
        assert_eq!(
            said,
            [
                (Role::User, "hi"),
                (Role::Assistant, "hello"),
                (Role::User, "2+2?"),
                (Role::Assistant, "4")
            ]
        );
    }

    #[test]
    fn history_keeps_the_latest_messages() {
        let past: Vec<PastTurn> = (0..MAX_HISTORY)
            .map(|i| PastTurn {
                message: format!("q{i}"),
                answer: Some(format!("a{i}")),
            })
            .collect();
        let h = history(&past);
        assert_eq!(h.len(), MAX_HISTORY);
        assert_eq!(h[0].content, format!("q{}", MAX_HISTORY / 2));
        assert_eq!(h[h.len() - 1].content, format!("a{}", MAX_HISTORY - 1));
    }

    #[test]
    fn the_answer_is_the_last_llm_call_and_usage_sums_calls() {
        let first = json!({"text": "", "json": {"input_tokens": 10, "output_tokens": 3}});
        let tool = json!({"text": "echoed"});
        let last = json!({"text": "done", "json": {"input_tokens": 20, "output_tokens": 5}});
        let steps = [
            ("llm_2", Some(&last)),
            ("t1_0", Some(&tool)),
            ("llm_1", Some(&first)),
        ];
        assert_eq!(answer(steps).as_deref(), Some("done"));
        assert_eq!(
            Usage::of(steps),
            Usage {
                llm_calls: 2,
                tool_calls: 1,
                input_tokens: 30,
                output_tokens: 8
            }
        );
        assert_eq!(answer([("t1_0", Some(&tool))]), None);
    }

    #[test]
    fn a_turn_is_an_agent_task_of_its_session() {
        let settings = SessionSettings {
            system: Some("be brief".into()),
            tools: vec!["echo".into()],
            max_iterations: Some(3),
            timeout_secs: Some(60.0),
            ..SessionSettings::default()
        };
        let spec = settings.turn("s1", 2, "again".into(), vec![ChatMessage::user("x")]);
        let agent = spec.agent.as_ref().unwrap();
        assert_eq!(spec.session.as_deref(), Some("s1"));
        assert_eq!(spec.timeout_secs, Some(60.0));
        assert_eq!(agent.message, "again");
        assert_eq!(agent.max_iterations, 3);
        assert_eq!(agent.tools, ["echo"]);
        assert_eq!(agent.history.len(), 1);
        assert_eq!(
            SessionSettings::default()
                .turn("s", 1, "m".into(), vec![])
                .agent
                .unwrap()
                .max_iterations,
            10
        );
    }
}
