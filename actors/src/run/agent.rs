//! An agent task's loop, as a plan that grows: the LLM call `llm_<n>` is a step; when its
//! answer asks for tools, each call it may make becomes a step `t<n>_<j>` and the next call
//! `llm_<n+1>` a step after them, stored with the result that asked for them (one write).
//! So the loop gets everything a step has: routed to an agent of its role, judged,
//! retried, recorded before its effect, fenced, and resumed after a crash or a takeover
//! from what was recorded: a finished LLM call or tool call is never made again.
//!
//! What the model is sent is rebuilt from the record each time: the history the task was
//! given (earlier turns of a conversation), the user's message, then
//! for each earlier call its answer and, for each tool call, the step's output, or why
//! it failed, or why it was refused (a tool it may not call, arguments that are not a JSON
//! object, arguments the tool refuses). Errors are results the model reads, not failures
//! of the task; the task fails only if an LLM call fails, or `max_iterations` calls pass
//! without an answer, or the calls used up `max_total_tokens`. One answer's calls past
//! [`MAX_CALLS_PER_ANSWER`] are refused, so a model cannot grow a plan without bound.

use serde_json::{Map, Value, json};

use super::plan::{Plan, failure};
use crate::llm::{ChatMessage, ToolCall};
use crate::roles::toolbox;
use crate::task::{AgentTask, StepSpec, StepStatus, TaskStatus};

/// Tool calls of one answer that become steps; later ones are refused.
pub const MAX_CALLS_PER_ANSWER: usize = 16;

/// The id of the `n`th LLM call (from 1).
pub fn llm_step(n: u32) -> String {
    format!("llm_{n}")
}

fn tool_step(n: u32, j: usize) -> String {
    format!("t{n}_{j}")
}

/// `llm_<n>` → `n`: whether a step of an agent's plan is one of its LLM calls.
pub fn llm_number(id: &str) -> Option<u32> {
    id.strip_prefix("llm_")?.parse().ok()
}

/// `t<n>_<j>`: whether a step of an agent's plan is one of its tool calls.
pub fn is_tool_call(id: &str) -> bool {
    id.strip_prefix('t')
        .and_then(|rest| rest.split_once('_'))
        .is_some_and(|(n, j)| n.parse::<u32>().is_ok() && j.parse::<usize>().is_ok())
}

/// The plan an agent task starts with: its first LLM call, after the summary of the
/// earlier conversation when there is one to make ([`super::summary`]).
pub fn first_plan(agent: &AgentTask) -> Vec<StepSpec> {
    match super::summary::step(agent) {
        Some(summary) => {
            let first = llm_spec(1, vec![summary.id.clone()]);
            vec![summary, first]
        }
        None => vec![llm_spec(1, Vec::new())],
    }
}

fn llm_spec(n: u32, depends_on: Vec<String>) -> StepSpec {
    // The args are filled when the call starts ([`llm_args`]): the conversation so far.
    StepSpec {
        depends_on,
        ..StepSpec::internal(llm_step(n), "llm", Value::Object(Map::new()))
    }
}

/// The text and tool calls a finished LLM step answered.
fn answer(plan: &Plan, i: usize) -> (String, Vec<ToolCall>) {
    let output = plan.steps[i].state.output.as_ref();
    let text = output
        .and_then(|o| o.get("text"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let calls = output
        .and_then(|o| o.pointer("/json/tool_calls"))
        .and_then(|c| serde_json::from_value(c.clone()).ok())
        .unwrap_or_default();
    (text, calls)
}

/// Why `call` gets no step: a tool the agent was not given, arguments that are not a JSON
/// object, or arguments the tool (with this node's settings) refuses.
fn refusal(
    agent: &AgentTask,
    j: usize,
    call: &ToolCall,
    check: &impl Fn(&str, &Value) -> Result<(), String>,
) -> Option<String> {
    if j >= MAX_CALLS_PER_ANSWER {
        return Some(format!(
            "error: at most {MAX_CALLS_PER_ANSWER} tool calls are made per answer; call the rest in the next one"
        ));
    }
    if !agent.tools.contains(&call.name) {
        return Some(format!(
            "error: `{}` is not a tool you may call here; you may call: {}",
            call.name,
            agent.tools.join(", ")
        ));
    }
    let args = match call.parsed_arguments() {
        Ok(args) => Value::Object(args),
        Err(why) => return Some(format!("error: {why}")),
    };
    check(&call.name, &args)
        .err()
        .map(|why| format!("error: {why}"))
}

/// The steps that the answer of LLM step `i` adds: one per call it may make, and the next
/// LLM call after them. None when it answered without calls, or when it was the last call
/// `max_iterations` allows.
pub fn grow(
    plan: &Plan,
    i: usize,
    agent: &AgentTask,
    check: &impl Fn(&str, &Value) -> Result<(), String>,
) -> Vec<StepSpec> {
    let Some(n) = llm_number(&plan.steps[i].spec.id) else {
        return Vec::new();
    };
    let (_, calls) = answer(plan, i);
    if calls.is_empty()
        || n >= agent.max_iterations
        || over_budget(plan, agent)
        || plan.position(&llm_step(n + 1)).is_some()
    {
        return Vec::new();
    }
    let asked_by = llm_step(n);
    let mut steps: Vec<StepSpec> = calls
        .iter()
        .enumerate()
        .filter(|(j, call)| refusal(agent, *j, call, check).is_none())
        .map(|(j, call)| StepSpec {
            id: tool_step(n, j),
            tool: call.name.clone(),
            args: Value::Object(call.parsed_arguments().unwrap_or_default()),
            depends_on: vec![asked_by.clone()],
            ..llm_spec(n, Vec::new())
        })
        .collect();
    let mut after: Vec<String> = steps.iter().map(|s| s.id.clone()).collect();
    after.push(asked_by);
    steps.push(llm_spec(n + 1, after));
    steps
}

/// Tokens the task's finished LLM calls used, as their providers reported them.
fn tokens_used(plan: &Plan) -> u64 {
    plan.steps
        .iter()
        .filter(|s| llm_number(&s.spec.id).is_some())
        .map(|s| {
            let (input, output) = tokens_of(s.state.output.as_ref());
            input.saturating_add(output)
        })
        .fold(0, u64::saturating_add)
}

/// The input and output tokens an LLM call's recorded output says it used (0 when its
/// provider did not say).
pub fn tokens_of(output: Option<&Value>) -> (u64, u64) {
    let count = |key: &str| {
        output
            .and_then(|o| o.get("json")?.get(key)?.as_u64())
            .unwrap_or(0)
    };
    (count("input_tokens"), count("output_tokens"))
}

fn over_budget(plan: &Plan, agent: &AgentTask) -> bool {
    agent
        .max_total_tokens
        .is_some_and(|budget| tokens_used(plan) >= budget)
}

/// What a tool call's step gave the model: its output, or why it has none.
fn result_of(plan: &Plan, id: &str) -> String {
    let Some(j) = plan.position(id) else {
        return "error: the call was refused".into();
    };
    let step = &plan.steps[j];
    match step.state.status {
        StepStatus::Succeeded => step
            .state
            .output
            .as_ref()
            .and_then(|o| o.get("text"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        _ => format!("error: {}", failure(step)),
    }
}

/// The arguments of LLM step `i` when it starts: the conversation so far and the tools.
pub fn llm_args(
    plan: &Plan,
    i: usize,
    agent: &AgentTask,
    check: &impl Fn(&str, &Value) -> Result<(), String>,
) -> Value {
    let n = llm_number(&plan.steps[i].spec.id).unwrap_or(1);
    let mut messages = agent.history.clone();
    messages.push(ChatMessage::user(agent.message.clone()));
    for m in 1..n {
        let Some(k) = plan.position(&llm_step(m)) else {
            break;
        };
        let (text, calls) = answer(plan, k);
        messages.push(ChatMessage {
            tool_calls: calls.clone(),
            ..ChatMessage::assistant(text)
        });
        for (j, call) in calls.iter().enumerate() {
            let id = tool_step(m, j);
            let content = match plan.position(&id) {
                Some(_) => result_of(plan, &id),
                None => refusal(agent, j, call, check)
                    .unwrap_or_else(|| "error: the call was refused".into()),
            };
            messages.push(ChatMessage::tool_result(&call.id, content));
        }
    }
    let mut args = json!({"messages": messages, "tools": toolbox::specs(&agent.tools)});
    if let Some(system) = super::summary::system(plan, agent) {
        args["system"] = json!(system);
    }
    if let Some(max_tokens) = agent.max_tokens {
        args["max_tokens"] = json!(max_tokens);
    }
    args
}

/// How an agent task ends, once every step is final: succeeded when its last LLM call
/// answered without calling tools; failed when an LLM call failed, or when the last one
/// allowed still called tools.
pub fn outcome(plan: &Plan, agent: &AgentTask) -> Option<(TaskStatus, Option<String>)> {
    if !plan.steps.iter().all(|s| s.state.status.is_final()) {
        return None;
    }
    let last = (0..plan.steps.len())
        .filter_map(|i| llm_number(&plan.steps[i].spec.id).map(|n| (n, i)))
        .max()
        .map(|(_, i)| i)?;
    let step = &plan.steps[last];
    if step.state.status != StepStatus::Succeeded {
        let why = failure(step);
        return Some((
            TaskStatus::Failed,
            Some(format!(
                "step `{}` {}: {why}",
                step.spec.id, step.state.status
            )),
        ));
    }
    if answer(plan, last).1.is_empty() {
        Some((TaskStatus::Succeeded, None))
    } else if over_budget(plan, agent) {
        Some((
            TaskStatus::Failed,
            Some(format!(
                "the agent's LLM calls used {} tokens, agent.max_total_tokens is {}, and it had not answered",
                tokens_used(plan),
                agent.max_total_tokens.unwrap_or_default()
            )),
        ))
    } else {
        Some((
            TaskStatus::Failed,
            Some(format!(
                "the agent made {} LLM calls (agent.max_iterations) without a final answer",
                agent.max_iterations
            )),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::store::StepState;

    fn agent(tools: &[&str], max_iterations: u32) -> AgentTask {
        AgentTask {
            message: "What is 2+2?".into(),
            tools: tools.iter().map(|t| t.to_string()).collect(),
            max_iterations,
            ..AgentTask::default()
        }
    }

    fn ok(_: &str, args: &Value) -> Result<(), String> {
        match args.get("text") {
            Some(Value::Number(_)) => Err("args.text: must be a string".into()),
            _ => Ok(()),
        }
    }

    /// Records `step` succeeded with `text` and `calls` (as the worker's `llm` output is).
    fn answered(plan: &mut Plan, step: &str, text: &str, calls: &[(&str, &str, &str)]) {
        let calls: Vec<ToolCall> = calls
            .iter()
            .map(|(id, name, arguments)| ToolCall {
                id: id.to_string(),
                name: name.to_string(),
                arguments: arguments.to_string(),
            })
            .collect();
        let i = plan.position(step).unwrap();
        plan.steps[i].state.status = StepStatus::Succeeded;
        plan.steps[i].state.output =
            Some(json!({"text": text, "json": {"text": text, "tool_calls": calls}}));
    }

    fn succeeded(plan: &mut Plan, step: &str, text: &str) {
        let i = plan.position(step).unwrap();
        plan.steps[i].state.status = StepStatus::Succeeded;
        plan.steps[i].state.output = Some(json!({"text": text}));
    }

    #[test]
    fn calls_become_steps_and_their_results_the_next_conversation() {
        let agent = agent(&["echo"], 5);
        let mut plan = Plan::new(first_plan(&AgentTask::default()), Vec::<StepState>::new());
        plan.tolerant = true;
        answered(
            &mut plan,
            "llm_1",
            "Checking.",
            &[
                ("c0", "echo", r#"{"text": "4"}"#),
                ("c1", "shell", r#"{"argv": ["rm"]}"#),
                ("c2", "echo", "{not json"),
                ("c3", "echo", r#"{"text": 4}"#),
            ],
        );
        let grown = grow(&plan, 0, &agent, &ok);
        let ids: Vec<&str> = grown.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["t1_0", "llm_2"]);
        assert_eq!(grown[0].args, json!({"text": "4"}));
        assert_eq!(grown[1].depends_on, ["t1_0", "llm_1"]);
        plan.extend(grown);
        assert!(grow(&plan, 0, &agent, &ok).is_empty(), "grown once only");
        succeeded(&mut plan, "t1_0", "4");

        let args = llm_args(&plan, plan.position("llm_2").unwrap(), &agent, &ok);
        let messages: Vec<ChatMessage> = serde_json::from_value(args["messages"].clone()).unwrap();
        assert_eq!(messages.len(), 6, "{messages:#?}");
        assert_eq!(messages[1].tool_calls.len(), 4);
        assert_eq!(messages[2].content, "4");
        assert!(
            messages[3].content.contains("not a tool you may call"),
            "{}",
            messages[3].content
        );
        assert!(
            messages[4].content.contains("not valid JSON"),
            "{}",
            messages[4].content
        );
        assert!(
            messages[5].content.contains("must be a string"),
            "{}",
            messages[5].content
        );
        assert_eq!(messages[5].tool_call_id.as_deref(), Some("c3"));
        assert_eq!(args["tools"][0]["name"], "echo");

        assert_eq!(outcome(&plan, &agent), None);
        answered(&mut plan, "llm_2", "2+2 is 4.", &[]);
        assert_eq!(outcome(&plan, &agent), Some((TaskStatus::Succeeded, None)));
    }

    #[test]
    fn calls_past_the_cap_and_the_token_budget_stop_the_growth() {
        let mut agent = agent(&["echo"], 50);
        let mut plan = Plan::new(first_plan(&AgentTask::default()), Vec::<StepState>::new());
        let ids: Vec<String> = (0..MAX_CALLS_PER_ANSWER + 3)
            .map(|j| format!("c{j}"))
            .collect();
        let many: Vec<(&str, &str, &str)> = ids
            .iter()
            .map(|id| (id.as_str(), "echo", r#"{"text": "x"}"#))
            .collect();
        answered(&mut plan, "llm_1", "", &many);
        let grown = grow(&plan, 0, &agent, &ok);
        assert_eq!(
            grown.len(),
            MAX_CALLS_PER_ANSWER + 1,
            "the cap, then the next call"
        );
        plan.extend(grown);
        let args = llm_args(&plan, plan.position("llm_2").unwrap(), &agent, &ok);
        // user, assistant, then one result per call: the last ones refused.
        let last = &args["messages"][MAX_CALLS_PER_ANSWER + 4];
        assert!(
            last["content"].as_str().unwrap().contains("at most"),
            "{last}"
        );

        agent.max_total_tokens = Some(1000);
        let mut spent = Plan::new(first_plan(&AgentTask::default()), Vec::<StepState>::new());
        answered(
            &mut spent,
            "llm_1",
            "",
            &[("c0", "echo", r#"{"text": "x"}"#)],
        );
        let json = &mut spent.steps[0].state.output.as_mut().unwrap()["json"];
        json["input_tokens"] = json!(700);
        json["output_tokens"] = json!(300);
        assert!(
            grow(&spent, 0, &agent, &ok).is_empty(),
            "the budget is spent"
        );
        let (status, why) = outcome(&spent, &agent).unwrap();
        assert_eq!(status, TaskStatus::Failed);
        assert!(why.unwrap().contains("max_total_tokens"));
    }

    #[test]
    fn the_history_goes_ahead_of_the_message() {
        let mut agent = agent(&[], 3);
        agent.history = vec![
            ChatMessage::user("My name is Ada."),
            ChatMessage::assistant("Hello, Ada."),
        ];
        let plan = Plan::new(first_plan(&AgentTask::default()), Vec::<StepState>::new());
        let args = llm_args(&plan, 0, &agent, &ok);
        let messages: Vec<ChatMessage> = serde_json::from_value(args["messages"].clone()).unwrap();
        assert_eq!(
            messages,
            [
                ChatMessage::user("My name is Ada."),
                ChatMessage::assistant("Hello, Ada."),
                ChatMessage::user("What is 2+2?"),
            ]
        );
    }

    #[test]
    fn a_failed_tool_is_a_result_and_the_last_allowed_call_still_calling_fails_the_task() {
        let agent = agent(&["echo"], 2);
        let mut plan = Plan::new(first_plan(&AgentTask::default()), Vec::<StepState>::new());
        plan.tolerant = true;
        answered(
            &mut plan,
            "llm_1",
            "",
            &[("c0", "echo", r#"{"text": "x"}"#)],
        );
        plan.extend(grow(&plan, 0, &agent, &ok));
        let t = plan.position("t1_0").unwrap();
        plan.steps[t].state.status = StepStatus::Failed;
        let (ready, skipped) = plan.scan();
        assert_eq!(
            ready,
            [plan.position("llm_2").unwrap()],
            "runs after a failed tool"
        );
        assert!(skipped.is_empty());
        let args = llm_args(&plan, plan.position("llm_2").unwrap(), &agent, &ok);
        assert!(
            args["messages"][2]["content"]
                .as_str()
                .unwrap()
                .starts_with("error: ")
        );

        answered(
            &mut plan,
            "llm_2",
            "",
            &[("c1", "echo", r#"{"text": "y"}"#)],
        );
        assert!(grow(&plan, plan.position("llm_2").unwrap(), &agent, &ok).is_empty());
        let (status, why) = outcome(&plan, &agent).unwrap();
        assert_eq!(status, TaskStatus::Failed);
        assert!(why.unwrap().contains("max_iterations"));
    }
}
