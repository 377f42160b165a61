//! Planner: turns a task description into a plan (a DAG of steps) through the configured
//! LLM provider, and validates plans given explicitly (cycles, unknown tools, missing inputs).
//!
//! Planning is a pure request to the provider followed by the same validation a submitted
//! plan gets, so an LLM's plan is held to the same rules as a person's.

use serde::Deserialize;

use crate::llm::{CompletionRequest, Llm, LlmError};
use crate::task::spec::{FieldError, StepSpec, validate_plan};
use crate::tools::{ToolError, ToolOutput, Tools};

/// Capabilities the registry indexes this role under.
pub const CAPABILITIES: &[&str] = &["plan.generate", "plan.validate"];

#[derive(Debug, Clone, thiserror::Error)]
pub enum PlanError {
    /// The Planner agent could not be reached or did not plan (its message says why).
    #[error("{0}")]
    Agent(String),
    #[error("the planner's LLM call failed: {0}")]
    Llm(#[from] LlmError),
    #[error("the planner's answer is not a plan: {0}")]
    Unreadable(String),
    #[error("the planner's plan is invalid: {0}")]
    Invalid(String),
}

const SYSTEM: &str = "You are the planner of a task runtime. Turn the user's task into a plan: \
reply with one JSON object {\"steps\": [...]} and nothing else. Each step is \
{\"id\": \"short_id\", \"tool\": TOOL, \"args\": {...}, \"depends_on\": [ids], \
\"input_from\": optional id whose output feeds this step, \"expect\": optional \
{\"exit_code\"|\"status\"|\"contains\"|\"regex\"|\"json\": ...}}. Tools: \
echo {\"text\"}, sleep {\"ms\"}, shell {\"argv\": [...]}, http {\"url\", \"method\"}, \
file {\"op\": read|write|append|list|delete, \"path\", \"content\"}.";

#[derive(Deserialize)]
struct PlanReply {
    steps: Vec<StepSpec>,
}

/// Asks the provider for a plan for `description` and validates it against `tools`.
pub async fn plan(llm: &Llm, tools: &Tools, description: &str) -> Result<Vec<StepSpec>, PlanError> {
    let request = CompletionRequest {
        system: Some(SYSTEM.to_string()),
        ..CompletionRequest::user(description)
    };
    let reply = llm.complete(request).await?;
    let steps = parse(&reply.text)?;
    let mut errors: Vec<FieldError> = Vec::new();
    let check = |tool: &str, args: &serde_json::Value| {
        crate::roles::validate_step_tool(tools, llm.is_configured(), tool, args)
    };
    validate_plan(&steps, &check, &mut errors);
    if !errors.is_empty() {
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        return Err(PlanError::Invalid(list.join("; ")));
    }
    Ok(steps)
}

/// The pseudo-tool a run hands the Planner agent (routed by `plan.generate`; never a step
/// of a plan: submitted plans cannot name it).
pub const PLAN_TOOL: &str = "plan";

/// The Planner agent's job: plans `args.description`; the plan is the output's JSON
/// (`{"steps": [...]}`), a failure the reason [`PlanError`] gives.
pub async fn run(
    llm: &Llm,
    tools: &Tools,
    args: &serde_json::Value,
) -> Result<ToolOutput, ToolError> {
    let description = args
        .get("description")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| ToolError::InvalidArgs("args.description: a string is required".into()))?;
    let steps = plan(llm, tools, description)
        .await
        .map_err(|e| ToolError::Failed(e.to_string()))?;
    let json = serde_json::json!({ "steps": steps });
    let text = json.to_string();
    Ok(ToolOutput {
        bytes: text.len() as u64,
        json: Some(json),
        exit_code: Some(0),
        text,
        ..Default::default()
    })
}

/// The plan in a Planner agent's output, or why there is none.
pub fn planned(result: Result<ToolOutput, ToolError>) -> Result<Vec<StepSpec>, PlanError> {
    let output = result.map_err(|e| match e {
        ToolError::Failed(why) => PlanError::Agent(why),
        other => PlanError::Agent(format!("the Planner agent did not plan: {other}")),
    })?;
    let steps = output
        .json
        .as_ref()
        .and_then(|j| j.get("steps"))
        .cloned()
        .unwrap_or_default();
    serde_json::from_value(steps).map_err(|e| PlanError::Unreadable(e.to_string()))
}

/// The first JSON object in the answer (models like to wrap JSON in prose or fences).
fn parse(text: &str) -> Result<Vec<StepSpec>, PlanError> {
    let start = text
        .find('{')
        .ok_or_else(|| PlanError::Unreadable("no JSON object".into()))?;
    let end = text
        .rfind('}')
        .ok_or_else(|| PlanError::Unreadable("no JSON object".into()))?;
    if end < start {
        return Err(PlanError::Unreadable("no JSON object".into()));
    }
    serde_json::from_str::<PlanReply>(&text[start..=end])
        .map(|r| r.steps)
        .map_err(|e| PlanError::Unreadable(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn reads_a_plan_wrapped_in_prose() {
        let steps = parse("Here:\n```json\n{\"steps\": [{\"id\": \"a\", \"tool\": \"echo\", \"args\": {\"text\": \"hi\"}}]}\n```").unwrap();
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].tool, "echo");
        assert!(parse("no plan here").is_err());
        assert!(parse("{\"steps\": [{\"id\": 1}]}").is_err());
    }
}
