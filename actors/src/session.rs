//! Sessions: a conversation with an agent, turn by turn (the seeds' "durable same-agent
//! conversations").
//!
//! A turn is an agent task (`run/agent.rs`): the user's message, the session's settings
//! (system prompt, tools, limits) and the conversation so far as `history`. So a turn gets
//! everything a task has: durable once accepted, each LLM call and tool call a recorded
//! step, resumed after a crash or a takeover without repeating a finished call. This
//! module holds what a session adds to that, as plain functions over what is recorded:
//! the settings a turn is made from, the context window the next turn is given (the
//! latest turns verbatim, the older ones as a summary the LLM made), a turn's answer and
//! the tokens it used. Storage is the node's (`src/store/sessions.rs`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::llm::ChatMessage;
use crate::run::agent::{llm_number, tokens_of};
use crate::run::summary::SUMMARY_STEP;
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
    /// The context window, in tokens (estimated as bytes / 4): when the conversation so
    /// far outgrows it, its older turns are summarized by the LLM and the window slides.
    /// Without it, the latest 1000 messages are sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 256, maximum = 10000000)]
    pub context_tokens: Option<u64>,
}

/// Smallest context window a session may set: room for a summary and a turn.
pub const MIN_CONTEXT_TOKENS: u64 = 256;
/// Largest context window a session may set.
pub const MAX_CONTEXT_TOKENS: u64 = 10_000_000;

impl SessionSettings {
    /// Turn `turn` of session `session_id` as the agent task that runs it, with the
    /// conversation so far as [`window`] gives it.
    pub fn turn(&self, session_id: &str, turn: i64, message: String, window: Window) -> TaskSpec {
        let summary = window
            .summary
            .map(|s| format!("Summary of the earlier conversation:\n{s}"));
        let system = match (&self.system, summary) {
            (Some(system), Some(summary)) => Some(format!("{system}\n\n{summary}")),
            (system, summary) => summary.or_else(|| system.clone()),
        };
        let mut agent = AgentTask {
            message,
            history: window.history,
            summarize: window.summarize,
            system,
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

    /// Problems of the settings a task's validation does not see.
    pub fn check(&self) -> Result<(), crate::task::FieldError> {
        match self.context_tokens {
            Some(n) if !(MIN_CONTEXT_TOKENS..=MAX_CONTEXT_TOKENS).contains(&n) => {
                Err(crate::task::FieldError::new(
                    "context_tokens",
                    format!("must be between {MIN_CONTEXT_TOKENS} and {MAX_CONTEXT_TOKENS}"),
                ))
            }
            _ => Ok(()),
        }
    }
}

/// An earlier turn as the next one sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PastTurn {
    pub turn: i64,
    pub message: String,
    /// The agent's final answer; `None` for a turn that did not succeed.
    pub answer: Option<String>,
    /// The summary this turn made of the conversation up to `summarized_through`.
    pub summary: Option<String>,
    pub summarized_through: Option<i64>,
}

/// What a turn is given of the conversation so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    /// The summary of the turns before `history` (an earlier turn's), for the system prompt.
    pub summary: Option<String>,
    /// The latest turns, verbatim.
    pub history: Vec<ChatMessage>,
    /// What the turn must summarize first (the previous summary and the turns that no
    /// longer fit), and the last turn that summary covers.
    pub summarize: Vec<ChatMessage>,
    pub summarized_through: Option<i64>,
}

/// Tokens a message costs, estimated (bytes / 4, and a few for its framing).
fn tokens(m: &ChatMessage) -> u64 {
    (m.content.len() as u64).div_ceil(4) + 4
}

/// The conversation the next turn is given. Each answered turn is its message and its
/// answer; a turn without an answer (failed, cancelled, timed out) is left out, so the
/// model never sees a question as if it had been answered. The latest summary a turn made
/// stands for the turns it covers. With a `budget` (tokens) that the summary and the
/// turns after it outgrow, the oldest of those turns are to be summarized again, together
/// with that summary, so that the turns kept fill at most half the budget; without one,
/// the latest [`MAX_HISTORY`] messages are kept.
pub fn window(past: &[PastTurn], budget: Option<u64>) -> Window {
    let latest = past
        .iter()
        .rev()
        .find_map(|t| Some((t.summary.clone()?, t.summarized_through?)));
    let (summary, covered) = match latest {
        Some((summary, through)) => (Some(summary), through),
        None => (None, 0),
    };
    let answered: Vec<(i64, [ChatMessage; 2])> = past
        .iter()
        .filter(|t| t.turn > covered)
        .filter_map(|t| {
            let answer = t.answer.as_ref()?;
            let pair = [
                ChatMessage::user(t.message.clone()),
                ChatMessage::assistant(answer.clone()),
            ];
            Some((t.turn, pair))
        })
        .collect();
    let cost = |pair: &[ChatMessage; 2]| pair.iter().map(tokens).sum::<u64>();
    let summary_cost = summary.as_ref().map_or(0, |s| (s.len() as u64).div_ceil(4));
    let total = summary_cost + answered.iter().map(|(_, p)| cost(p)).sum::<u64>();
    let Some(budget) = budget.filter(|b| total > *b) else {
        let mut history: Vec<ChatMessage> = answered.into_iter().flat_map(|(_, p)| p).collect();
        let excess = history.len().saturating_sub(MAX_HISTORY);
        history.drain(..excess);
        return Window {
            summary,
            history,
            ..Window::default()
        };
    };
    // Keep the newest turns that fit in half the budget; fold the rest into the summary.
    let mut kept = 0;
    let mut used = 0;
    for (_, pair) in answered.iter().rev() {
        if used + cost(pair) > budget / 2 {
            break;
        }
        used += cost(pair);
        kept += 1;
    }
    let split = answered.len() - kept;
    let through = answered[..split].last().map_or(covered, |(turn, _)| *turn);
    let mut summarize: Vec<ChatMessage> = summary
        .iter()
        .map(|s| ChatMessage::user(format!("(A summary of what came before:) {s}")))
        .collect();
    let mut answered = answered.into_iter();
    summarize.extend(answered.by_ref().take(split).flat_map(|(_, p)| p));
    Window {
        summary: None,
        history: answered.flat_map(|(_, p)| p).collect(),
        summarize,
        summarized_through: Some(through),
    }
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
    /// The usage recorded in a turn's steps: each LLM call's token counts (the summary's
    /// included), and each tool call (every other step of an agent task) counted once.
    pub fn of<'a>(steps: impl IntoIterator<Item = (&'a str, Option<&'a Value>)>) -> Usage {
        let mut usage = Usage::default();
        for (id, output) in steps {
            if llm_number(id).is_none() && id != SUMMARY_STEP {
                usage.tool_calls += 1;
                continue;
            }
            usage.llm_calls += 1;
            let (input, output) = tokens_of(output);
            usage.input_tokens = usage.input_tokens.saturating_add(input);
            usage.output_tokens = usage.output_tokens.saturating_add(output);
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

    fn turn(n: i64, message: &str, answer: Option<&str>) -> PastTurn {
        PastTurn {
            turn: n,
            message: message.into(),
            answer: answer.map(str::to_string),
            ..PastTurn::default()
        }
    }

    fn said(messages: &[ChatMessage]) -> Vec<(Role, &str)> {
        messages
            .iter()
            .map(|m| (m.role, m.content.as_str()))
            .collect()
    }

    #[test]
    fn the_window_holds_answered_turns_in_order() {
        let past = [
            turn(1, "hi", Some("hello")),
            turn(2, "lost", None),
            turn(3, "2+2?", Some("4")),
        ];
        let w = window(&past, None);
        assert_eq!(
            said(&w.history),
            [
                (Role::User, "hi"),
                (Role::Assistant, "hello"),
                (Role::User, "2+2?"),
                (Role::Assistant, "4")
            ]
        );
        assert_eq!((w.summary, w.summarize.len()), (None, 0));
        // A budget it fits in changes nothing.
        assert_eq!(window(&past, Some(1000)).history.len(), 4);
    }

    #[test]
    fn without_a_budget_the_latest_messages_are_kept() {
        let past: Vec<PastTurn> = (0..MAX_HISTORY as i64)
            .map(|i| turn(i + 1, &format!("q{i}"), Some(&format!("a{i}"))))
            .collect();
        let h = window(&past, None).history;
        assert_eq!(h.len(), MAX_HISTORY);
        assert_eq!(h[0].content, format!("q{}", MAX_HISTORY / 2));
        assert_eq!(h[h.len() - 1].content, format!("a{}", MAX_HISTORY - 1));
    }

    #[test]
    fn an_outgrown_window_folds_its_oldest_turns_and_a_summary_stands_for_them() {
        // Each turn costs (100/4 + 4) * 2 = 58 tokens; four of them outgrow 200.
        let long = "x".repeat(100);
        let past: Vec<PastTurn> = (1..=4)
            .map(|n| turn(n, &format!("{n}{long}"), Some(&long)))
            .collect();
        let w = window(&past, Some(200));
        // Half the budget (100) keeps the newest turn only.
        assert_eq!(w.history.len(), 2);
        assert!(w.history[0].content.starts_with('4'));
        assert_eq!(w.summarize.len(), 6);
        assert_eq!(w.summarized_through, Some(3));
        assert_eq!(w.summary, None);

        // Turn 5 summarized turns 1-3: turn 6 sees that summary and turns 4 and 5.
        let mut past = past;
        past.push(PastTurn {
            summary: Some("turns one to three".into()),
            summarized_through: Some(3),
            ..turn(5, "5", Some("five"))
        });
        let w = window(&past, Some(200));
        assert_eq!(w.summary.as_deref(), Some("turns one to three"));
        assert!(w.summarize.is_empty());
        let history = said(&w.history);
        assert_eq!(history.len(), 4);
        assert!(history[0].1.starts_with('4'));
        assert_eq!(history[3], (Role::Assistant, "five"));
        // Folding again carries the old summary into the new one.
        let w = window(&past, Some(60));
        assert!(
            w.summarize[0].content.contains("turns one to three"),
            "{:?}",
            w.summarize
        );
        assert_eq!(w.summarized_through, Some(4));
    }

    #[test]
    fn the_answer_is_the_last_llm_call_and_usage_sums_calls() {
        let first = json!({"text": "", "json": {"input_tokens": 10, "output_tokens": 3}});
        let tool = json!({"text": "echoed"});
        let last = json!({"text": "done", "json": {"input_tokens": 20, "output_tokens": 5}});
        let summary = json!({"text": "s", "json": {"input_tokens": 7, "output_tokens": 1}});
        let steps = [
            ("llm_2", Some(&last)),
            ("t1_0", Some(&tool)),
            ("llm_1", Some(&first)),
            ("summary", Some(&summary)),
        ];
        assert_eq!(answer(steps).as_deref(), Some("done"));
        assert_eq!(
            Usage::of(steps),
            Usage {
                llm_calls: 3,
                tool_calls: 1,
                input_tokens: 37,
                output_tokens: 9
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
        let window = Window {
            summary: Some("earlier".into()),
            history: vec![ChatMessage::user("x")],
            ..Window::default()
        };
        let spec = settings.turn("s1", 2, "again".into(), window);
        let agent = spec.agent.as_ref().unwrap();
        assert_eq!(spec.session.as_deref(), Some("s1"));
        assert_eq!(spec.timeout_secs, Some(60.0));
        assert_eq!(agent.message, "again");
        assert_eq!(agent.max_iterations, 3);
        assert_eq!(agent.tools, ["echo"]);
        assert_eq!(agent.history.len(), 1);
        assert_eq!(
            agent.system.as_deref(),
            Some("be brief\n\nSummary of the earlier conversation:\nearlier")
        );
        let plain = SessionSettings::default().turn("s", 1, "m".into(), Window::default());
        assert_eq!(plain.agent.unwrap().max_iterations, 10);
        let tiny = SessionSettings {
            context_tokens: Some(10),
            ..SessionSettings::default()
        };
        assert_eq!(tiny.check().unwrap_err().field, "context_tokens");
    }
}
