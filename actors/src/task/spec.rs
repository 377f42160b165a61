//! What a client submits (DESIGN §4): a task with an optional plan of steps, and the
//! checks that refuse a bad one before anything is stored.
//!
//! Validation reports every problem with the field it is about
//! (`steps[2].depends_on[0]`), so a client can fix its request in one go.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::supervisor::spec::parse_from_string;

/// Largest plan accepted, in steps.
pub const MAX_STEPS: usize = 1000;
/// Most attempts a step may be given.
pub const MAX_ATTEMPTS: u32 = 100;
/// Longest timeout a task or a step may be given, in seconds: thirty days, the bound of
/// `tools.default_timeout_secs` too. Bounded so that every conversion of it (to a
/// `Duration`, to a deadline in milliseconds) stays far inside its type.
pub const MAX_TIMEOUT_SECS: f64 = crate::tools::MAX_TIMEOUT_SECS;

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    Default,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case", try_from = "String")]
pub enum Priority {
    Urgent,
    High,
    #[default]
    Normal,
    Low,
    Background,
}

impl Priority {
    pub const ALL: [Priority; 5] = [
        Priority::Urgent,
        Priority::High,
        Priority::Normal,
        Priority::Low,
        Priority::Background,
    ];
    pub const ALLOWED: &'static str = "urgent, high, normal, low, background";

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Urgent => "urgent",
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
            Priority::Background => "background",
        }
    }

    pub fn parse(s: &str) -> Option<Priority> {
        Priority::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// 0 for urgent … 4 for background (what is stored and sorted on).
    pub fn rank(self) -> i64 {
        self as i64
    }

    pub fn from_rank(rank: i64) -> Priority {
        Priority::ALL[rank.clamp(0, 4) as usize]
    }
}

parse_from_string!(Priority, "priority");

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A submitted task. `steps` is required unless an LLM provider is configured for the
/// Planner (then a `description` alone will do).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "description": "say hello",
    "steps": [{"id": "hello", "tool": "echo", "args": {"text": "hello"}}]
}))]
pub struct TaskSpec {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    #[schema(default = "normal")]
    pub priority: Priority,
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200)]
    pub idempotency_key: Option<String>,
    /// The whole task must finish within this; `None`: no limit.
    #[serde(default)]
    #[schema(exclusive_minimum = 0, maximum = 2592000)]
    pub timeout_secs: Option<f64>,
    /// Attempts per step unless the step says otherwise.
    #[serde(default = "default_attempts")]
    #[schema(default = 3, minimum = 1, maximum = 100)]
    pub max_attempts: u32,
    /// The plan; when absent the Planner makes one from the description.
    #[serde(default)]
    #[schema(required, value_type = Vec<StepSpec>, min_items = 1, max_items = 1000)]
    pub steps: Option<Vec<StepSpec>>,
    /// An agent loop instead of a plan: the LLM is asked `agent.message`, may call the
    /// listed tools (each call a recorded step), sees their results and goes on until it
    /// answers. Give `steps`, `agent`, or a `description` for the Planner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentTask>,
    /// A session this task belongs to: its `memory` steps with `scope: "session"` share
    /// entries with the other tasks of the same session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 200)]
    pub session: Option<String>,
}

fn default_attempts() -> u32 {
    3
}

/// What serde makes of `{}`, so a task built in code validates like a submitted one.
impl Default for TaskSpec {
    fn default() -> TaskSpec {
        TaskSpec {
            description: None,
            priority: Priority::default(),
            idempotency_key: None,
            timeout_secs: None,
            max_attempts: default_attempts(),
            steps: None,
            agent: None,
            session: None,
        }
    }
}

/// Most LLM calls one agent task may make.
pub const MAX_ITERATIONS: u32 = 50;
/// Longest `agent.message` and `agent.system`, in bytes.
pub const MAX_AGENT_TEXT: usize = 100_000;
/// Most messages of `agent.history`.
pub const MAX_HISTORY: usize = 1000;

/// What an agent task asks and may use.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentTask {
    /// The user's message.
    #[schema(min_length = 1, max_length = 100000)]
    pub message: String,
    /// The conversation before `message` (earlier turns: `user`, `assistant` and `tool`
    /// messages, with their tool calls), sent ahead of it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>, max_items = 1000)]
    pub history: Vec<crate::llm::ChatMessage>,
    /// Earlier messages still, before `history`, to be summarized by the LLM first (a
    /// step `summary` of their own); the summary joins the system prompt of every call.
    /// A session puts here what no longer fits its context window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>, max_items = 1000)]
    pub summarize: Vec<crate::llm::ChatMessage>,
    /// The system prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 100000)]
    pub system: Option<String>,
    /// The step tools the model may call, by name (each call is checked as a submitted
    /// step would be; one this node refuses goes back to the model as an error).
    #[serde(default)]
    #[schema(example = json!(["echo", "http"]))]
    pub tools: Vec<String>,
    /// LLM calls at most; reaching it without an answer fails the task.
    #[serde(default = "default_iterations")]
    #[schema(default = 10, minimum = 1, maximum = 50)]
    pub max_iterations: u32,
    /// Upper bound on tokens per LLM call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000000)]
    pub max_tokens: Option<u32>,
    /// Tokens (in and out, as the provider counts them) all the task's LLM calls may use;
    /// once they have, no further call is made and the task fails saying so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub max_total_tokens: Option<u64>,
}

fn default_iterations() -> u32 {
    10
}

/// Why a user's message cannot be sent: empty, only spaces, longer than
/// [`MAX_AGENT_TEXT`], or holding a NUL (which no provider takes and PostgreSQL's text
/// refuses).
pub fn check_agent_text(text: &str) -> Result<(), String> {
    if text.trim().is_empty() || text.len() > MAX_AGENT_TEXT || text.contains('\0') {
        return Err(format!(
            "must be 1-{MAX_AGENT_TEXT} bytes, not only spaces, without NUL characters"
        ));
    }
    Ok(())
}

/// What serde makes of `{"message": ""}`.
impl Default for AgentTask {
    fn default() -> AgentTask {
        AgentTask {
            message: String::new(),
            history: Vec::new(),
            summarize: Vec::new(),
            system: None,
            tools: Vec::new(),
            max_iterations: default_iterations(),
            max_tokens: None,
            max_total_tokens: None,
        }
    }
}

/// One step of a plan.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub id: String,
    #[schema(example = "echo")]
    pub tool: String,
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub args: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Expectation>,
    /// Feed this step's output (stdin for `shell`, `{{input}}` for `echo`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_from: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0, maximum = 2592000)]
    pub timeout_secs: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: Option<u32>,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// What a step's output must satisfy (all given checks must hold).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// A JSON pointer (`/a/0/b`) into the output's JSON and the value it must equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<JsonExpectation>,
    /// A question for the LLM judge; needs a configured provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonExpectation {
    pub path: String,
    pub equals: Value,
}

/// One problem with a submission, and the field it is about.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl TaskSpec {
    /// Checks the task and its plan. `check_tool` validates a step's tool and args
    /// (unknown tool, disabled tool, bad args) and returns the reason on failure.
    pub fn validate(
        &self,
        check_tool: impl Fn(&str, &Value) -> Result<(), String>,
    ) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        let described = self
            .description
            .as_deref()
            .is_some_and(|d| !d.trim().is_empty());
        if self
            .description
            .as_deref()
            .is_some_and(|d| d.contains('\0'))
        {
            errors.push(FieldError::new(
                "description",
                "must not contain NUL characters",
            ));
        }
        if self.steps.is_none() && self.agent.is_none() && !described {
            errors.push(FieldError::new(
                "steps",
                "give `steps` (a plan), `agent` (an agent loop) or a `description` for the Planner",
            ));
        }
        if let Some(agent) = &self.agent {
            if self.steps.is_some() {
                errors.push(FieldError::new(
                    "agent",
                    "give either `steps` or `agent`, not both",
                ));
            }
            agent.validate(&check_tool, &mut errors);
        }
        if let Some(key) = &self.idempotency_key
            && !is_name(key)
        {
            errors.push(FieldError::new(
                "idempotency_key",
                "must be 1-200 characters, none of them a control character",
            ));
        }
        check_timeout("timeout_secs", self.timeout_secs, &mut errors);
        if !(1..=MAX_ATTEMPTS).contains(&self.max_attempts) {
            errors.push(FieldError::new(
                "max_attempts",
                format!("must be between 1 and {MAX_ATTEMPTS}"),
            ));
        }
        if let Some(session) = &self.session
            && !is_name(session)
        {
            errors.push(FieldError::new(
                "session",
                "must be 1-200 characters, none of them a control character",
            ));
        }
        if let Some(steps) = &self.steps {
            validate_plan(steps, &check_tool, &mut errors);
            if self.session.is_none() {
                for (i, step) in steps.iter().enumerate() {
                    if step.tool == "memory" && step.args.get("scope") == Some(&json!("session")) {
                        errors.push(FieldError::new(
                            format!("steps[{i}].args.scope"),
                            "`session` scope needs the task's `session`",
                        ));
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

impl AgentTask {
    fn validate(
        &self,
        check_tool: &impl Fn(&str, &Value) -> Result<(), String>,
        errors: &mut Vec<FieldError>,
    ) {
        if let Err(why) = check_agent_text(&self.message) {
            errors.push(FieldError::new("agent.message", why));
        }
        if self
            .system
            .as_ref()
            .is_some_and(|s| s.len() > MAX_AGENT_TEXT)
        {
            errors.push(FieldError::new(
                "agent.system",
                format!("must be at most {MAX_AGENT_TEXT} bytes"),
            ));
        }
        if !(1..=MAX_ITERATIONS).contains(&self.max_iterations) {
            errors.push(FieldError::new(
                "agent.max_iterations",
                format!("must be between 1 and {MAX_ITERATIONS}"),
            ));
        }
        if self
            .max_tokens
            .is_some_and(|n| !(1..=1_000_000).contains(&n))
        {
            errors.push(FieldError::new(
                "agent.max_tokens",
                "must be between 1 and 1000000",
            ));
        }
        if self.summarize.len() > MAX_HISTORY {
            errors.push(FieldError::new(
                "agent.summarize",
                format!(
                    "at most {MAX_HISTORY} messages, got {}",
                    self.summarize.len()
                ),
            ));
        }
        if self.history.len() > MAX_HISTORY {
            errors.push(FieldError::new(
                "agent.history",
                format!("at most {MAX_HISTORY} messages, got {}", self.history.len()),
            ));
        }
        for (i, m) in self.history.iter().enumerate() {
            if m.role == crate::llm::Role::System {
                errors.push(FieldError::new(
                    format!("agent.history[{i}].role"),
                    "`system` belongs in `agent.system`",
                ));
            }
            if (m.role == crate::llm::Role::Tool) != m.tool_call_id.is_some() {
                errors.push(FieldError::new(
                    format!("agent.history[{i}].tool_call_id"),
                    "a `tool` message names the call it answers; no other message has one",
                ));
            }
        }
        if self.max_total_tokens == Some(0) {
            errors.push(FieldError::new(
                "agent.max_total_tokens",
                "must be at least 1",
            ));
        }
        let known = crate::roles::toolbox::names();
        for (i, tool) in self.tools.iter().enumerate() {
            if !known.contains(&tool.as_str()) {
                errors.push(FieldError::new(
                    format!("agent.tools[{i}]"),
                    format!(
                        "`{tool}` is not a tool an agent can call; these are: {}",
                        known.join(", ")
                    ),
                ));
            } else if self.tools[..i].contains(tool) {
                errors.push(FieldError::new(
                    format!("agent.tools[{i}]"),
                    format!("`{tool}` is listed twice"),
                ));
            }
        }
        // The loop's calls are `llm` steps: refused here when no provider is configured.
        if let Err(why) = check_tool("llm", &json!({"prompt": "-"})) {
            errors.push(FieldError::new("agent", why));
        }
    }
}

/// A caller's name for something (an idempotency key, a session): 1-200 bytes and no
/// control character, so that the store can put it beside the principal's name behind a
/// newline without two names ever meaning the same.
fn is_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 200 && !s.chars().any(char::is_control)
}

/// A timeout must be a number of seconds above 0 and at most [`MAX_TIMEOUT_SECS`].
fn check_timeout(field: &str, secs: Option<f64>, errors: &mut Vec<FieldError>) {
    if let Some(t) = secs
        && !(t.is_finite() && t > 0.0 && t <= MAX_TIMEOUT_SECS)
    {
        errors.push(FieldError::new(
            field,
            format!(
                "must be a number of seconds above 0 and at most {MAX_TIMEOUT_SECS} (30 days), got {t}"
            ),
        ));
    }
}

/// Checks a plan: ids, references, cycles, tools, expectations.
pub fn validate_plan(
    steps: &[StepSpec],
    check_tool: &impl Fn(&str, &Value) -> Result<(), String>,
    errors: &mut Vec<FieldError>,
) {
    if steps.is_empty() {
        errors.push(FieldError::new("steps", "must not be empty"));
        return;
    }
    if steps.len() > MAX_STEPS {
        errors.push(FieldError::new(
            "steps",
            format!("at most {MAX_STEPS} steps are allowed, got {}", steps.len()),
        ));
        return;
    }
    let mut seen = HashSet::new();
    for (i, step) in steps.iter().enumerate() {
        let at = format!("steps[{i}]");
        if step.id.is_empty()
            || step.id.len() > 64
            || !step
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            errors.push(FieldError::new(
                format!("{at}.id"),
                format!("`{}`: use 1-64 letters, digits, `-` or `_`", step.id),
            ));
        }
        if !seen.insert(step.id.as_str()) {
            errors.push(FieldError::new(
                format!("{at}.id"),
                format!("duplicate step id `{}`", step.id),
            ));
        }
        if let Err(reason) = check_tool(&step.tool, &step.args) {
            errors.push(FieldError::new(format!("{at}.tool"), reason));
        }
        check_timeout(&format!("{at}.timeout_secs"), step.timeout_secs, errors);
        if let Some(n) = step.max_attempts
            && !(1..=MAX_ATTEMPTS).contains(&n)
        {
            errors.push(FieldError::new(
                format!("{at}.max_attempts"),
                format!("must be between 1 and {MAX_ATTEMPTS}"),
            ));
        }
        if let Some(expect) = &step.expect {
            if let Some(re) = &expect.regex
                && let Err(e) = regex::Regex::new(re)
            {
                errors.push(FieldError::new(format!("{at}.expect.regex"), e.to_string()));
            }
            if let Some(json) = &expect.json
                && !(json.path.is_empty() || json.path.starts_with('/'))
            {
                errors.push(FieldError::new(
                    format!("{at}.expect.json.path"),
                    "must be a JSON pointer such as /a/0/b",
                ));
            }
        }
    }
    let ids: HashSet<&str> = steps.iter().map(|s| s.id.as_str()).collect();
    for (i, step) in steps.iter().enumerate() {
        for (j, dep) in step.depends_on.iter().enumerate() {
            if !ids.contains(dep.as_str()) {
                errors.push(FieldError::new(
                    format!("steps[{i}].depends_on[{j}]"),
                    format!("no step `{dep}` in this plan"),
                ));
            } else if dep == &step.id {
                errors.push(FieldError::new(
                    format!("steps[{i}].depends_on[{j}]"),
                    "a step cannot depend on itself",
                ));
            }
        }
        if let Some(from) = &step.input_from
            && !ids.contains(from.as_str())
        {
            errors.push(FieldError::new(
                format!("steps[{i}].input_from"),
                format!("no step `{from}` in this plan"),
            ));
        }
    }
    if errors.is_empty()
        && let Err(cycle) = order(steps)
    {
        errors.push(FieldError::new(
            "steps",
            format!(
                "the dependencies form a cycle through {}",
                cycle.join(" → ")
            ),
        ));
    }
}

impl StepSpec {
    /// A step the runtime makes itself (an agent's call, the Planner's or the Critic's
    /// job): `tool` with `args`, no expectation, dependency or limit of its own.
    pub fn internal(id: impl Into<String>, tool: impl Into<String>, args: Value) -> StepSpec {
        StepSpec {
            id: id.into(),
            tool: tool.into(),
            args,
            expect: None,
            input_from: None,
            depends_on: Vec::new(),
            timeout_secs: None,
            max_attempts: None,
        }
    }

    /// Every step this one waits for: `depends_on` plus `input_from`.
    pub fn prerequisites(&self) -> impl Iterator<Item = &str> {
        self.depends_on
            .iter()
            .map(String::as_str)
            .chain(self.input_from.as_deref())
    }
}

/// Indices of the steps in an order that respects dependencies (Kahn), or the ids of
/// steps caught in a cycle.
pub fn order(steps: &[StepSpec]) -> Result<Vec<usize>, Vec<String>> {
    let index: HashMap<&str, usize> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.as_str(), i))
        .collect();
    let mut waiting = vec![0usize; steps.len()];
    let mut dependents = vec![Vec::new(); steps.len()];
    for (i, step) in steps.iter().enumerate() {
        let prereqs: HashSet<usize> = step
            .prerequisites()
            .filter_map(|p| index.get(p).copied())
            .collect();
        waiting[i] = prereqs.len();
        for p in prereqs {
            dependents[p].push(i);
        }
    }
    let mut ready: VecDeque<usize> = (0..steps.len()).filter(|&i| waiting[i] == 0).collect();
    let mut out = Vec::with_capacity(steps.len());
    while let Some(i) = ready.pop_front() {
        out.push(i);
        for &d in &dependents[i] {
            waiting[d] -= 1;
            if waiting[d] == 0 {
                ready.push_back(d);
            }
        }
    }
    if out.len() == steps.len() {
        Ok(out)
    } else {
        Err((0..steps.len())
            .filter(|&i| waiting[i] > 0)
            .map(|i| steps[i].id.clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn any_tool(tool: &str, _: &Value) -> Result<(), String> {
        if tool == "echo" || tool == "shell" {
            Ok(())
        } else {
            Err(format!("unknown tool `{tool}`"))
        }
    }

    fn spec(steps: Value) -> TaskSpec {
        serde_json::from_value(json!({ "steps": steps })).unwrap()
    }

    fn fields(spec: &TaskSpec) -> Vec<String> {
        spec.validate(any_tool)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn a_good_plan_passes_and_orders_by_dependency() {
        let s = spec(json!([
            {"id": "b", "tool": "echo", "depends_on": ["a"]},
            {"id": "a", "tool": "echo"},
            {"id": "c", "tool": "shell", "input_from": "b"},
        ]));
        s.validate(any_tool).unwrap();
        assert_eq!(order(s.steps.as_ref().unwrap()).unwrap(), vec![1, 0, 2]);
    }

    #[test]
    fn needs_steps_or_description() {
        assert_eq!(fields(&TaskSpec::default()), vec!["steps"]);
    }

    #[test]
    fn names_each_bad_field() {
        let s = spec(json!([
            {"id": "a", "tool": "nope"},
            {"id": "a", "tool": "echo", "depends_on": ["zz"]},
            {"id": "c", "tool": "echo", "input_from": "yy", "expect": {"regex": "("}},
        ]));
        assert_eq!(
            fields(&s),
            vec![
                "steps[0].tool",
                "steps[1].id",
                "steps[2].expect.regex",
                "steps[1].depends_on[0]",
                "steps[2].input_from"
            ]
        );
    }

    #[test]
    fn cycles_are_refused_with_their_members() {
        let s = spec(json!([
            {"id": "a", "tool": "echo", "depends_on": ["c"]},
            {"id": "b", "tool": "echo", "depends_on": ["a"]},
            {"id": "c", "tool": "echo", "depends_on": ["b"]},
            {"id": "d", "tool": "echo"},
        ]));
        let errors = s.validate(any_tool).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].message.contains("a → b → c"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn timeouts_are_bounded_numbers_of_seconds() {
        let bad = [
            0.0,
            -1.0,
            1e308,
            MAX_TIMEOUT_SECS * 1.01,
            f64::INFINITY,
            f64::NAN,
        ];
        for t in bad {
            let mut s = spec(json!([{"id": "a", "tool": "echo"}]));
            s.timeout_secs = Some(t);
            s.steps.as_mut().unwrap()[0].timeout_secs = Some(t);
            assert_eq!(
                fields(&s),
                vec!["timeout_secs", "steps[0].timeout_secs"],
                "{t}"
            );
        }
        let mut s = spec(json!([{"id": "a", "tool": "echo", "timeout_secs": 0.001}]));
        s.timeout_secs = Some(MAX_TIMEOUT_SECS);
        s.validate(any_tool).unwrap();
    }

    #[test]
    fn a_plan_checked_alone_bounds_its_timeouts_too() {
        // What the Planner's plans go through.
        let steps: Vec<StepSpec> =
            serde_json::from_value(json!([{"id": "a", "tool": "echo", "timeout_secs": 1e308}]))
                .unwrap();
        let mut errors = Vec::new();
        validate_plan(&steps, &any_tool, &mut errors);
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["steps[0].timeout_secs"]);
        assert!(errors[0].message.contains("at most"), "{}", errors[0]);
    }

    #[test]
    fn json_numbers_too_large_for_a_float_do_not_parse() {
        // serde_json refuses them (no infinity sneaks in); the API answers 400.
        let e = serde_json::from_str::<TaskSpec>(r#"{"timeout_secs": 1e400, "description": "x"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
        let e = serde_json::from_str::<TaskSpec>(r#"{"max_attempts": 1e308, "description": "x"}"#)
            .unwrap_err();
        assert!(e.is_data(), "{e}");
    }

    #[test]
    fn unknown_fields_and_bad_priorities_do_not_parse() {
        let e = serde_json::from_value::<TaskSpec>(json!({"steps": [], "colour": 1})).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        let e = serde_json::from_value::<TaskSpec>(json!({"priority": "asap"})).unwrap_err();
        assert!(e.to_string().contains("allowed: urgent"), "{e}");
    }
}
