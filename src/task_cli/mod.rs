//! The `task` commands (DESIGN §4, §8): `submit`, `get`, `list`, `cancel` and `watch`
//! against a running node's `/api/v1/tasks`, printed for people (or the node's JSON with
//! `--json`). `submit --wait` and `watch` follow a task to its end and exit with a code
//! that says how it ended (see [`EXIT_FAILED`] and the others, and `task --help`).

use std::fmt::Write as _;
use std::io::{IsTerminal as _, Read as _};
use std::path::Path;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::{Method, StatusCode};
use serde_json::{Map, Value, json};

pub(crate) mod api;
pub(crate) mod render;

use crate::cli::{
    TaskArgs, TaskClientFlags, TaskCommand, TaskIdArgs, TaskListArgs, TaskSubmitArgs,
};
use crate::client::{ClientError, pretty, text};
use api::Api;
use render::*;

/// Done; for `submit --wait` and `watch`: the task succeeded.
pub const EXIT_OK: u8 = 0;
/// The node could not be asked, or refused (unreachable, busy, no such task, not
/// cancellable).
pub const EXIT_ERROR: u8 = 1;
/// Bad input: an unreadable file, invalid JSON, a task the node rejects (422).
pub const EXIT_INPUT: u8 = 2;
/// The task failed.
pub const EXIT_FAILED: u8 = 3;
/// The task ran out of time.
pub const EXIT_TIMED_OUT: u8 = 4;
/// The task was cancelled.
pub const EXIT_CANCELLED: u8 = 5;

/// How often a followed task is read.
const POLL: Duration = Duration::from_millis(200);
/// How long a followed task's node may be out of reach (a restart) before we give up.
const LOST_GRACE: Duration = Duration::from_secs(30);
/// A read's time limit.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A submission's time limit: the node waits up to 30 s for the scheduler and the commit.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(40);
/// Characters of a step's output shown by `task get`.
const PREVIEW_CHARS: usize = 60;
/// Characters of an event's data shown by `task get`.
const EVENT_DATA_CHARS: usize = 100;

/// Why a `task` command did not do its job, in a line or a few.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// The input could not be read or is not JSON (nothing was sent).
    #[error("{0}")]
    Input(String),
    /// The node refused the task as invalid (400, 413 or 422), naming the fields.
    #[error("the node at {url} rejected the task: {message}")]
    Rejected {
        url: String,
        message: String,
        fields: Vec<(String, String)>,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
}

impl TaskError {
    pub fn exit_code(&self) -> u8 {
        match self {
            TaskError::Input(_) | TaskError::Rejected { .. } => EXIT_INPUT,
            TaskError::Client(_) => EXIT_ERROR,
        }
    }

    /// What to print on stderr: one line, or for a rejected task a line per field.
    pub fn report(&self) -> String {
        match self {
            TaskError::Rejected { url, fields, .. } if !fields.is_empty() => {
                let mut out = format!("error: the node at {url} rejected the task:\n");
                for (field, message) in fields {
                    let _ = writeln!(out, "  {field}: {message}");
                }
                out
            }
            other => format!("error: {other}\n"),
        }
    }
}

/// Runs a `task` command, printing its output, and returns the exit code.
pub async fn run(args: &TaskArgs) -> u8 {
    let result = match &args.command {
        TaskCommand::Submit(a) => submit(a).await,
        TaskCommand::Get(a) => get(a).await,
        TaskCommand::List(a) => list(a).await,
        TaskCommand::Cancel(a) => cancel(a).await,
        TaskCommand::Watch(a) => watch(a).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprint!("{}", e.report());
            e.exit_code()
        }
    }
}

impl TaskClientFlags {
    /// The node's task API these flags point at, with their token.
    pub(crate) fn api(&self) -> Result<Api, ClientError> {
        Api::new(&self.http, self.bearer.token.as_deref())
    }
}

/// The exit code of a final status; `None` while the task is not finished.
pub fn final_exit_code(status: &str) -> Option<u8> {
    match status {
        "succeeded" => Some(EXIT_OK),
        "failed" => Some(EXIT_FAILED),
        "timed_out" => Some(EXIT_TIMED_OUT),
        "cancelled" => Some(EXIT_CANCELLED),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// The commands.

async fn submit(args: &TaskSubmitArgs) -> Result<u8, TaskError> {
    let body = task_body(args)?;
    let api = args.client.api()?;
    let url = api.url(&["api", "v1", "tasks"])?;
    let answer = api
        .send(Method::POST, url, &[], Some(&body), SUBMIT_TIMEOUT)
        .await?;
    match answer.status {
        StatusCode::OK | StatusCode::ACCEPTED => {}
        StatusCode::BAD_REQUEST
        | StatusCode::PAYLOAD_TOO_LARGE
        | StatusCode::UNPROCESSABLE_ENTITY => return Err(answer.rejected()),
        _ => return Err(answer.refused().into()),
    }
    let id = answer.body["task_id"]
        .as_str()
        .filter(|id| !id.is_empty())
        .ok_or_else(|| ClientError::BadAnswer {
            url: answer.url.clone(),
            reason: format!("no task_id in {}", answer.body),
        })?
        .to_string();
    let json = args.client.json;
    if answer.body["created"] == false {
        eprintln!(
            "note: a task with this idempotency key exists already; this is it (status {})",
            text(&answer.body["status"])
        );
    }
    if !args.wait {
        if json {
            print!("{}", pretty(&answer.body));
        } else {
            println!("{id}");
        }
        return Ok(EXIT_OK);
    }
    if !json {
        println!("{id}");
    }
    follow(&api, &id, json).await
}

async fn get(args: &TaskIdArgs) -> Result<u8, TaskError> {
    let api = args.client.api()?;
    let task = api.task(&args.id).await?;
    if args.client.json {
        print!("{}", pretty(&task));
    } else {
        print!("{}", render_task(&task));
    }
    Ok(EXIT_OK)
}

async fn list(args: &TaskListArgs) -> Result<u8, TaskError> {
    let api = args.client.api()?;
    let url = api.url(&["api", "v1", "tasks"])?;
    let limit = args.limit.map(|n| n.to_string());
    let mut cursor = args.cursor.clone();
    let mut tasks: Vec<Value> = Vec::new();
    let next = loop {
        let query: Vec<(&str, &str)> = [
            ("status", args.status.as_deref()),
            ("priority", args.priority.as_deref()),
            ("limit", limit.as_deref()),
            ("cursor", cursor.as_deref()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
        let answer = api
            .send(Method::GET, url.clone(), &query, None, READ_TIMEOUT)
            .await?;
        if answer.status != StatusCode::OK {
            return Err(answer.refused().into());
        }
        let page = answer.body["tasks"]
            .as_array()
            .ok_or_else(|| ClientError::BadAnswer {
                url: answer.url.clone(),
                reason: "no `tasks` array".into(),
            })?;
        tasks.extend(page.iter().cloned());
        let next = answer.body["next_cursor"].as_str().map(str::to_string);
        match next {
            // A cursor that does not move would loop for ever.
            Some(next) if args.all && !page.is_empty() && cursor.as_ref() != Some(&next) => {
                cursor = Some(next);
            }
            next => break next,
        }
    };
    if args.client.json {
        print!(
            "{}",
            pretty(&json!({"tasks": tasks, "next_cursor": next.filter(|_| !args.all)}))
        );
        return Ok(EXIT_OK);
    }
    let mut rows = vec![
        [
            "ID",
            "STATUS",
            "PRIORITY",
            "CREATED",
            "FINISHED",
            "DESCRIPTION",
        ]
        .map(String::from),
    ];
    for t in &tasks {
        rows.push([
            text(&t["task_id"]),
            text(&t["status"]),
            text(&t["priority"]),
            text(&t["created_at"]),
            text(&t["finished_at"]),
            one_line(&text(&t["description"]), 60),
        ]);
    }
    print!("{}", table(&rows));
    if !args.all
        && let Some(next) = next
    {
        eprintln!("more tasks: --cursor {next} (or --all)");
    }
    Ok(EXIT_OK)
}

async fn cancel(args: &TaskIdArgs) -> Result<u8, TaskError> {
    let api = args.client.api()?;
    let url = api.url(&["api", "v1", "tasks", &args.id, "cancel"])?;
    let answer = api
        .send(Method::POST, url, &[], None, SUBMIT_TIMEOUT)
        .await?;
    if !answer.status.is_success() {
        return Err(answer.refused().into());
    }
    if args.client.json {
        print!("{}", pretty(&answer.body));
    } else {
        println!("task {} {}", args.id, text(&answer.body["status"]));
    }
    Ok(EXIT_OK)
}

async fn watch(args: &TaskIdArgs) -> Result<u8, TaskError> {
    let api = args.client.api()?;
    follow(&api, &args.id, args.client.json).await
}

// ---------------------------------------------------------------------------------------
// Submission body.

/// The task to submit: the file (a task object or a steps array) with the flags over it.
fn task_body(args: &TaskSubmitArgs) -> Result<Value, TaskError> {
    let mut task = match &args.steps {
        None => Map::new(),
        Some(path) => {
            let (name, source) = read_source(path)?;
            let value: Value = serde_json::from_str(&source)
                .map_err(|e| TaskError::Input(format!("{name} is not valid JSON: {e}")))?;
            match value {
                Value::Object(task) => task,
                Value::Array(steps) => {
                    let mut task = Map::new();
                    task.insert("steps".into(), Value::Array(steps));
                    task
                }
                other => {
                    return Err(TaskError::Input(format!(
                        "{name}: expected a task (a JSON object) or its steps (a JSON array), \
                         found {}",
                        kind(&other)
                    )));
                }
            }
        }
    };
    let overrides = [
        ("description", args.description.clone().map(Value::from)),
        ("priority", args.priority.clone().map(Value::from)),
        (
            "idempotency_key",
            args.idempotency_key.clone().map(Value::from),
        ),
        ("timeout_secs", args.timeout_secs.map(Value::from)),
        ("max_attempts", args.max_attempts.map(Value::from)),
    ];
    for (key, value) in overrides {
        if let Some(value) = value {
            task.insert(key.into(), value);
        }
    }
    Ok(Value::Object(task))
}

/// The text of `path` (`-`: stdin) and a name for it in messages.
fn read_source(path: &Path) -> Result<(String, String), TaskError> {
    if path.as_os_str() == "-" {
        let mut source = String::new();
        std::io::stdin()
            .read_to_string(&mut source)
            .map_err(|e| TaskError::Input(format!("cannot read the task from stdin: {e}")))?;
        return Ok(("stdin".into(), source));
    }
    let name = path.display().to_string();
    let source = std::fs::read_to_string(path)
        .map_err(|e| TaskError::Input(format!("cannot read the task file {name}: {e}")))?;
    Ok((name, source))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

// ---------------------------------------------------------------------------------------
// Following a task.

/// Where a task stands, as the progress display shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Progress {
    status: String,
    done: u64,
    total: u64,
    running: Vec<String>,
}

impl Progress {
    fn of(task: &Value) -> Progress {
        let steps = task["steps"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        let status_of = |s: &Value| s["status"].as_str().unwrap_or("").to_string();
        let status = text(&task["status"]);
        let mut running: Vec<String> = steps
            .iter()
            .filter(|s| status_of(s) == "running")
            .map(|s| text(&s["id"]))
            .collect();
        // A step may be recorded only when it ends; while the task runs, a pending step
        // whose dependencies all succeeded is the one being worked on.
        if running.is_empty() && status == "running" {
            let succeeded = |id: &Value| {
                steps
                    .iter()
                    .any(|s| &s["id"] == id && status_of(s) == "succeeded")
            };
            running = steps
                .iter()
                .filter(|s| status_of(s) == "pending")
                .filter(|s| {
                    s["depends_on"]
                        .as_array()
                        .is_none_or(|deps| deps.iter().all(succeeded))
                })
                .map(|s| text(&s["id"]))
                .collect();
        }
        Progress {
            status,
            done: steps
                .iter()
                .filter(|s| !matches!(status_of(s).as_str(), "pending" | "running" | ""))
                .count() as u64,
            total: steps.len() as u64,
            running,
        }
    }

    fn message(&self) -> String {
        if self.running.is_empty() {
            self.status.clone()
        } else {
            format!("{} · step {}", self.status, self.running.join(", "))
        }
    }

    fn line(&self, elapsed: Duration) -> String {
        let mut line = format!(
            "{:>6.1}s  {:<9}  {}/{} steps done",
            elapsed.as_secs_f64(),
            self.status,
            self.done,
            self.total
        );
        if !self.running.is_empty() {
            let _ = write!(line, "  running: {}", self.running.join(", "));
        }
        line
    }
}

/// How progress is shown: a bar on a terminal, a line per change otherwise, nothing with
/// `--json` (which prints the finished task).
enum Display {
    Bar(ProgressBar),
    Lines(Option<Progress>),
    Quiet,
}

impl Display {
    fn new(json: bool) -> Display {
        if json {
            return Display::Quiet;
        }
        if !std::io::stdout().is_terminal() {
            return Display::Lines(None);
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] [{bar:30}] {pos}/{len} steps  {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.enable_steady_tick(Duration::from_millis(100));
        Display::Bar(bar)
    }

    fn show(&mut self, progress: &Progress, started: Instant) {
        match self {
            Display::Bar(bar) => {
                // No steps yet (the Planner is at work): the length stays unknown.
                if progress.total > 0 {
                    bar.set_length(progress.total);
                }
                bar.set_position(progress.done);
                bar.set_message(progress.message());
            }
            Display::Lines(last) => {
                if last.as_ref() != Some(progress) {
                    println!("{}", progress.line(started.elapsed()));
                    *last = Some(progress.clone());
                }
            }
            Display::Quiet => {}
        }
    }

    fn note(&self, line: &str) {
        match self {
            Display::Bar(bar) => bar.println(line),
            _ => eprintln!("{line}"),
        }
    }

    fn clear(&self) {
        if let Display::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// Follows the task until its status is final (polling every [`POLL`]), then prints the
/// outcome and returns its exit code.
async fn follow(api: &Api, id: &str, json: bool) -> Result<u8, TaskError> {
    let started = Instant::now();
    let mut display = Display::new(json);
    let mut seen = false;
    let mut lost_since: Option<Instant> = None;
    loop {
        match api.task(id).await {
            Ok(task) => {
                seen = true;
                if lost_since.take().is_some() {
                    display.note("reached the node again");
                }
                let progress = Progress::of(&task);
                display.show(&progress, started);
                if let Some(code) = final_exit_code(&progress.status) {
                    display.clear();
                    if json {
                        print!("{}", pretty(&task));
                    } else {
                        print!("{}", outcome(&task, &progress));
                    }
                    return Ok(code);
                }
            }
            // A node that restarts resumes its tasks: ride out a short absence, but not
            // a wrong address or a task that is not there.
            Err(e) if seen && transient(&e) => {
                let since = *lost_since.get_or_insert_with(|| {
                    display.note(&format!("lost the node, retrying: {e}"));
                    Instant::now()
                });
                if since.elapsed() > LOST_GRACE {
                    display.clear();
                    return Err(e.into());
                }
            }
            Err(e) => {
                display.clear();
                return Err(e.into());
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

pub(crate) fn transient(e: &ClientError) -> bool {
    match e {
        ClientError::Unreachable { .. } | ClientError::BadAnswer { .. } => true,
        ClientError::Refused { status, .. } => *status >= 500 || *status == 429,
        ClientError::NoToken { .. }
        | ClientError::BadToken { .. }
        | ClientError::MissingScope { .. } => false,
    }
}

/// The final lines of a followed task: its status and, when it did not succeed, why.
fn outcome(task: &Value, progress: &Progress) -> String {
    let mut out = format!(
        "task {} {} ({}/{} steps done",
        text(&task["task_id"]),
        progress.status,
        progress.done,
        progress.total
    );
    if let Some(took) = took(task) {
        let _ = write!(out, ", {:.1} s", took.as_secs_f64());
    }
    out.push_str(")\n");
    if let Some(error) = task["error"].as_str() {
        let _ = writeln!(out, "error: {error}");
    }
    out
}

/// From creation to the end, by the node's clock.
fn took(task: &Value) -> Option<Duration> {
    let at = |v: &Value| v.as_str().and_then(|s| humantime::parse_rfc3339(s).ok());
    let created = at(&task["created_at"])?;
    let finished = at(&task["finished_at"])?;
    finished.duration_since(created).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steps_array_becomes_a_task_and_flags_override_the_file() {
        let dir = std::env::temp_dir().join(format!("ms-task-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("steps.json");
        std::fs::write(&file, r#"[{"id": "a", "tool": "echo"}]"#).unwrap();
        let args = TaskSubmitArgs {
            steps: Some(file.clone()),
            description: Some("d".into()),
            priority: Some("high".into()),
            idempotency_key: None,
            timeout_secs: Some(1.5),
            max_attempts: Some(2),
            wait: false,
            client: TaskClientFlags {
                http: "x".into(),
                bearer: crate::cli::BearerToken::default(),
                json: false,
            },
        };
        let body = task_body(&args).unwrap();
        assert_eq!(body["steps"][0]["id"], "a");
        assert_eq!(body["description"], "d");
        assert_eq!(body["priority"], "high");
        assert_eq!(body["timeout_secs"], 1.5);
        assert_eq!(body["max_attempts"], 2);
        assert!(body.get("idempotency_key").is_none(), "{body}");

        std::fs::write(
            &file,
            r#"{"description": "file", "priority": "low", "steps": []}"#,
        )
        .unwrap();
        let body = task_body(&TaskSubmitArgs {
            priority: None,
            ..args
        })
        .unwrap();
        assert_eq!(body["description"], "d", "the flag wins");
        assert_eq!(body["priority"], "low", "the file's value stays");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn progress_counts_finished_steps_and_names_running_ones() {
        let task = json!({"status": "running", "steps": [
            {"id": "a", "status": "succeeded"}, {"id": "b", "status": "running"},
            {"id": "c", "status": "skipped"}, {"id": "d", "status": "pending"}]});
        let p = Progress::of(&task);
        assert_eq!((p.done, p.total), (2, 4));
        assert_eq!(p.running, vec!["b".to_string()]);
        assert!(
            p.line(Duration::ZERO).contains("running: b"),
            "{}",
            p.line(Duration::ZERO)
        );
    }

    #[test]
    fn a_ready_pending_step_of_a_running_task_counts_as_running() {
        let task = json!({"status": "running", "steps": [
            {"id": "a", "status": "succeeded", "depends_on": []},
            {"id": "b", "status": "pending", "depends_on": ["a"]},
            {"id": "c", "status": "pending", "depends_on": ["b"]},
            {"id": "d", "status": "pending"}]});
        assert_eq!(Progress::of(&task).running, vec!["b", "d"]);
        let queued = json!({"status": "queued", "steps": [{"id": "a", "status": "pending"}]});
        assert!(Progress::of(&queued).running.is_empty());
    }

    #[test]
    fn final_statuses_have_their_exit_codes() {
        assert_eq!(final_exit_code("succeeded"), Some(EXIT_OK));
        assert_eq!(final_exit_code("failed"), Some(EXIT_FAILED));
        assert_eq!(final_exit_code("timed_out"), Some(EXIT_TIMED_OUT));
        assert_eq!(final_exit_code("cancelled"), Some(EXIT_CANCELLED));
        for s in ["queued", "planning", "running"] {
            assert_eq!(final_exit_code(s), None, "{s}");
        }
    }

    #[test]
    fn one_line_collapses_and_cuts() {
        assert_eq!(one_line("a\n  b\tc", 10), "a b c");
        assert_eq!(one_line("abcdefghij", 5), "abcd…");
    }
}
