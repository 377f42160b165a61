//! An agent task's context window: when a conversation has outgrown its budget, the
//! older part (`agent.summarize`) is summarized by the LLM in a step of its own,
//! [`SUMMARY_STEP`], before the first LLM call of the loop; its answer joins the system
//! prompt of every call. It is a recorded step like any other (resumed, never made twice),
//! and its output is the summary a session keeps for its next turns.

use serde_json::{Value, json};

use super::plan::{Plan, failure};
use crate::llm::{ChatMessage, Role};
use crate::task::{AgentTask, StepSpec, StepStatus};

/// The id of the step that summarizes the earlier conversation.
pub const SUMMARY_STEP: &str = "summary";

const INSTRUCTIONS: &str = "You summarize conversations for an assistant that will continue \
     them. Keep every fact, name, number, decision and open question the assistant may need; \
     drop pleasantries. Write plain prose, at most a few hundred words.";

/// `messages` as a transcript a model reads.
fn transcript(messages: &[ChatMessage]) -> String {
    messages
        .iter()
        .map(|m| {
            let who = match m.role {
                Role::User => "user",
                Role::Assistant => "assistant",
                Role::Tool => "tool",
                Role::System => "system",
            };
            format!("{who}: {}", m.content)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The summary step an agent task starts with, when it has earlier messages to fold.
pub fn step(agent: &AgentTask) -> Option<StepSpec> {
    if agent.summarize.is_empty() {
        return None;
    }
    let args = json!({
        "system": INSTRUCTIONS,
        "messages": [ChatMessage::user(format!(
            "Summarize this conversation:\n\n{}",
            transcript(&agent.summarize)
        ))],
    });
    Some(StepSpec::internal(SUMMARY_STEP, "llm", args))
}

/// The system prompt of the loop's LLM calls: the task's, with the summary of the earlier
/// conversation (or why there is none) after it.
pub fn system(plan: &Plan, agent: &AgentTask) -> Option<String> {
    let Some(i) = plan.position(SUMMARY_STEP) else {
        return agent.system.clone();
    };
    let step = &plan.steps[i];
    let summary = match step.state.status {
        StepStatus::Succeeded => {
            let text = step
                .state
                .output
                .as_ref()
                .and_then(|o| o.get("text"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            format!("Summary of the earlier conversation:\n{text}")
        }
        _ => format!(
            "The earlier conversation could not be summarized ({}); only its latest part follows.",
            failure(step)
        ),
    };
    Some(match &agent.system {
        Some(system) => format!("{system}\n\n{summary}"),
        None => summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::store::StepState;

    fn folding() -> AgentTask {
        AgentTask {
            message: "and now?".into(),
            system: Some("Be brief.".into()),
            summarize: vec![
                ChatMessage::user("my name is Ada"),
                ChatMessage::assistant("Hi Ada"),
            ],
            ..AgentTask::default()
        }
    }

    #[test]
    fn the_summary_comes_first_and_joins_the_system_prompt() {
        let agent = folding();
        let specs = super::super::agent::first_plan(&agent);
        let ids: Vec<&str> = specs.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["summary", "llm_1"]);
        assert_eq!(specs[1].depends_on, ["summary"]);
        let asked = specs[0].args["messages"][0]["content"]
            .as_str()
            .unwrap_or_default();
        assert!(
            asked.ends_with("user: my name is Ada\nassistant: Hi Ada"),
            "{asked}"
        );

        let done = StepState {
            step_id: "summary".into(),
            status: StepStatus::Succeeded,
            attempts: Vec::new(),
            output: Some(json!({"text": "The user is Ada."})),
        };
        let plan = Plan::new(specs.clone(), vec![done.clone()]);
        assert_eq!(
            system(&plan, &agent).as_deref(),
            Some("Be brief.\n\nSummary of the earlier conversation:\nThe user is Ada.")
        );
        let failed = StepState {
            status: StepStatus::Failed,
            output: None,
            ..done
        };
        let plan = Plan::new(specs, vec![failed]);
        let said = system(&plan, &agent).unwrap_or_default();
        assert!(said.contains("could not be summarized"), "{said}");
        assert_eq!(step(&AgentTask::default()), None);
    }
}
