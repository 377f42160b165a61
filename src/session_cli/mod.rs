//! The `session` commands and the chat shell: conversations with a node's agent over
//! `/api/v1/sessions`. `start` and `send` follow the turn they take to its end (tool calls
//! and results as they are recorded, then the answer) and exit with the task commands'
//! codes; `--no-wait` prints the accepted turn instead. `--json` prints the node's JSON.

mod follow;
pub mod shell;

use clap::{Args, Subcommand};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::cli::TaskClientFlags;
use crate::client::{ClientError, pretty, text};
use crate::task_cli::api::Api;
use crate::task_cli::render::{one_line, table};
use crate::task_cli::{EXIT_OK, TaskError, final_exit_code};
use follow::{Ended, Followed, Follower};

/// `start`/`send`: the turn waits for a person's approval of a tool call (decide with
/// `session approve` or `session deny`).
pub const EXIT_AWAITING: u8 = 6;

/// A request's time limit: a turn is stored before the node answers (up to 30 s).
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(40);

#[derive(Debug, Args)]
pub struct SessionArgs {
    #[command(subcommand)]
    pub command: SessionCommand,
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Start a session (with --message, take its first turn and print the answer).
    Start(StartArgs),
    /// Take a turn: send a message and print the answer.
    Send(SendArgs),
    /// Show a session: its settings, usage, and every turn with its answer.
    Show(IdArgs),
    /// List sessions, newest first.
    List(ListArgs),
    /// End a session: it takes no more turns.
    End(IdArgs),
    /// Open the chat shell on a session (the latest open one with --last).
    Resume(ResumeArgs),
    /// Approve a turn's tool calls awaiting approval: they run.
    Approve(DecideArgs),
    /// Deny a turn's tool calls awaiting approval: the agent is told, with the reason.
    Deny(DecideArgs),
}

#[derive(Debug, Args)]
pub struct DecideArgs {
    /// The session's id.
    #[arg(value_name = "ID")]
    pub id: String,
    /// The turn's number.
    #[arg(value_name = "TURN")]
    pub turn: u32,
    /// Why (the agent reads a denial's reason).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Only this call (a step id the turn shows awaiting approval).
    #[arg(long, value_name = "STEP")]
    pub step: Option<String>,
    #[command(flatten)]
    pub client: TaskClientFlags,
}

/// What every turn of a new session runs with.
#[derive(Debug, Args, Clone, Default)]
pub struct SessionSettingsFlags {
    /// The system prompt.
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// A tool the agent may call (repeat for more).
    #[arg(long = "tool", value_name = "NAME")]
    pub tools: Vec<String>,
    /// LLM calls per turn at most.
    #[arg(long, value_name = "N")]
    pub max_iterations: Option<u32>,
    /// Wall time of a turn, in seconds.
    #[arg(long, value_name = "S")]
    pub timeout_secs: Option<f64>,
    /// The context window in tokens: older turns past it are summarized by the LLM.
    #[arg(long, value_name = "N")]
    pub context_tokens: Option<u64>,
}

impl SessionSettingsFlags {
    /// The body of `POST /api/v1/sessions`, with `message` when given.
    pub fn body(&self, message: Option<&str>) -> Value {
        let mut body = json!({"tools": self.tools});
        let fields = [
            ("message", message.map(Value::from)),
            ("system", self.system.clone().map(Value::from)),
            ("max_iterations", self.max_iterations.map(Value::from)),
            ("timeout_secs", self.timeout_secs.map(Value::from)),
            ("context_tokens", self.context_tokens.map(Value::from)),
        ];
        for (key, value) in fields {
            if let Some(value) = value {
                body[key] = value;
            }
        }
        body
    }
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// The first turn's message.
    #[arg(long, short, value_name = "TEXT")]
    pub message: Option<String>,
    #[command(flatten)]
    pub settings: SessionSettingsFlags,
    /// Print the accepted turn instead of following it.
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub client: TaskClientFlags,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// The session's id.
    #[arg(value_name = "ID")]
    pub id: String,
    /// The message.
    #[arg(value_name = "MESSAGE")]
    pub message: String,
    /// Print the accepted turn instead of following it.
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub client: TaskClientFlags,
}

#[derive(Debug, Args)]
pub struct IdArgs {
    /// The session's id.
    #[arg(value_name = "ID")]
    pub id: String,
    #[command(flatten)]
    pub client: TaskClientFlags,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only sessions in this status.
    #[arg(long, value_name = "S", value_parser = ["open", "ended"])]
    pub status: Option<String>,
    /// Sessions to show (1 to 1000; the node's default is 50).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: Option<u32>,
    #[command(flatten)]
    pub client: TaskClientFlags,
}

/// The chat shell's flags (`mister-smith` with no command takes them too).
#[derive(Debug, Args)]
pub struct ChatArgs {
    /// Continue this session.
    #[arg(long, value_name = "ID", conflicts_with = "last")]
    pub session: Option<String>,
    /// Continue the latest open session.
    #[arg(long)]
    pub last: bool,
    #[command(flatten)]
    pub settings: SessionSettingsFlags,
    #[command(flatten)]
    pub client: TaskClientFlags,
}

#[derive(Debug, Args)]
pub struct ResumeArgs {
    /// The session to resume.
    #[arg(
        value_name = "ID",
        required_unless_present = "last",
        conflicts_with = "last"
    )]
    pub id: Option<String>,
    /// The latest open session.
    #[arg(long)]
    pub last: bool,
    #[command(flatten)]
    pub client: TaskClientFlags,
}

/// Runs a `session` command, printing its output, and returns the exit code.
pub async fn run(args: &SessionArgs) -> u8 {
    let result = match &args.command {
        SessionCommand::Start(a) => start(a).await,
        SessionCommand::Send(a) => send(a).await,
        SessionCommand::Show(a) => show(a).await,
        SessionCommand::List(a) => list(a).await,
        SessionCommand::End(a) => end(a).await,
        SessionCommand::Resume(a) => resume(a).await,
        SessionCommand::Approve(a) => decide(a, true).await,
        SessionCommand::Deny(a) => decide(a, false).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprint!("{}", e.report());
            e.exit_code()
        }
    }
}

/// POSTs `body` to `segments`; an answer other than 2xx is an error (422 naming fields).
pub(crate) async fn post(
    api: &Api,
    segments: &[&str],
    body: Option<&Value>,
) -> Result<Value, TaskError> {
    let url = api.url(segments)?;
    let answer = api.send(Method::POST, url, &[], body, TIMEOUT).await?;
    match answer.status {
        s if s.is_success() => Ok(answer.body),
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => Err(answer.rejected()),
        _ => Err(answer.refused().into()),
    }
}

pub(crate) async fn get(
    api: &Api,
    segments: &[&str],
    query: &[(&str, &str)],
) -> Result<Value, ClientError> {
    let url = api.url(segments)?;
    let answer = api.send(Method::GET, url, query, None, TIMEOUT).await?;
    if answer.status != StatusCode::OK {
        return Err(answer.refused());
    }
    Ok(answer.body)
}

/// Follows the accepted `turn` (`{"task_id", …}`) and prints it; Ctrl-C cancels it.
async fn take(api: &Api, turn: &Value, json: bool) -> Result<u8, TaskError> {
    let task_id = turn["task_id"]
        .as_str()
        .ok_or_else(|| ClientError::BadAnswer {
            url: api.base.to_string(),
            reason: format!("no task_id in {turn}"),
        })?;
    let show = |line: &str| {
        if !json {
            println!("{line}");
        }
    };
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    // The answer is printed whole at the end, so that stdout is the answer for scripts;
    // the chat shell streams it.
    let followed = Follower::default()
        .follow(api, task_id, show, interrupt)
        .await?;
    let ended = match followed {
        Followed::Ended(ended) => ended,
        Followed::Awaiting(calls) => {
            let (id, n) = (text(&turn["session_id"]), text(&turn["turn"]));
            if json {
                print!(
                    "{}",
                    pretty(&json!({"turn": turn, "awaiting_approval": calls}))
                );
            }
            for (step, tool, args) in calls {
                eprintln!("  ? {tool} {args} ({step}) awaits approval");
            }
            eprintln!(
                "decide: mister-smith session approve {id} {n}, or session deny {id} {n} --reason …"
            );
            return Ok(EXIT_AWAITING);
        }
    };
    if json {
        print!(
            "{}",
            pretty(&json!({"turn": turn, "answer": ended.answer(), "task": ended.task}))
        );
    } else {
        print_outcome(&ended);
    }
    Ok(final_exit_code(&ended.status).unwrap_or(EXIT_OK))
}

fn print_outcome(ended: &Ended) {
    match ended.answer() {
        Some(answer) => println!("{answer}"),
        None => eprintln!("error: the turn ended {}", ended.error()),
    }
}

async fn start(args: &StartArgs) -> Result<u8, TaskError> {
    let api = args.client.api()?;
    let body = args.settings.body(args.message.as_deref());
    let started = post(&api, &["api", "v1", "sessions"], Some(&body)).await?;
    let json = args.client.json;
    if args.no_wait || started["turn"].is_null() {
        if json {
            print!("{}", pretty(&started));
        } else {
            println!("{}", text(&started["session_id"]));
        }
        return Ok(EXIT_OK);
    }
    if !json {
        eprintln!("session {}", text(&started["session_id"]));
    }
    take(&api, &started["turn"], json).await
}

async fn send(args: &SendArgs) -> Result<u8, TaskError> {
    let api = args.client.api()?;
    let body = json!({"message": args.message});
    let turn = post(
        &api,
        &["api", "v1", "sessions", &args.id, "turns"],
        Some(&body),
    )
    .await?;
    if args.no_wait {
        if args.client.json {
            print!("{}", pretty(&turn));
        } else {
            println!(
                "turn {} task {}",
                text(&turn["turn"]),
                text(&turn["task_id"])
            );
        }
        return Ok(EXIT_OK);
    }
    take(&api, &turn, args.client.json).await
}

/// A session for people: a header, then each turn's message and answer.
pub fn render_session(s: &Value) -> String {
    let usage = &s["usage"];
    let mut out = format!(
        "session {}  {}  node {}  {} LLM calls, {} tool calls, {} tokens in, {} out\n",
        text(&s["session_id"]),
        text(&s["status"]),
        text(&s["node"]),
        text(&usage["llm_calls"]),
        text(&usage["tool_calls"]),
        text(&usage["input_tokens"]),
        text(&usage["output_tokens"]),
    );
    for turn in s["turns"].as_array().into_iter().flatten() {
        out += &format!(
            "[{}] you> {}\n",
            text(&turn["turn"]),
            text(&turn["message"])
        );
        match turn["answer"].as_str() {
            Some(answer) => out += &format!("    agent> {answer}\n"),
            None => {
                let why = turn["error"]
                    .as_str()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                out += &format!("    ({}{why})\n", text(&turn["status"]));
            }
        }
    }
    out
}

async fn show(args: &IdArgs) -> Result<u8, TaskError> {
    let api = args.client.api()?;
    let session = get(&api, &["api", "v1", "sessions", &args.id], &[]).await?;
    if args.client.json {
        print!("{}", pretty(&session));
    } else {
        print!("{}", render_session(&session));
    }
    Ok(EXIT_OK)
}

/// The sessions the node lists for this query, as a table for people.
pub fn render_list(page: &Value) -> String {
    let mut rows = vec![["ID", "STATUS", "TURNS", "NODE", "UPDATED"].map(String::from)];
    for s in page["sessions"].as_array().into_iter().flatten() {
        rows.push([
            text(&s["session_id"]),
            text(&s["status"]),
            text(&s["turns"]),
            one_line(&text(&s["node"]), 30),
            text(&s["updated_at"]),
        ]);
    }
    table(&rows)
}

async fn list(args: &ListArgs) -> Result<u8, TaskError> {
    let api = args.client.api()?;
    let limit = args.limit.map(|n| n.to_string());
    let query: Vec<(&str, &str)> = [
        ("status", args.status.as_deref()),
        ("limit", limit.as_deref()),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect();
    let page = get(&api, &["api", "v1", "sessions"], &query).await?;
    if args.client.json {
        print!("{}", pretty(&page));
    } else {
        print!("{}", render_list(&page));
    }
    Ok(EXIT_OK)
}

async fn end(args: &IdArgs) -> Result<u8, TaskError> {
    let api = args.client.api()?;
    let ended = post(&api, &["api", "v1", "sessions", &args.id, "end"], None).await?;
    if args.client.json {
        print!("{}", pretty(&ended));
    } else {
        println!("session {} ended", args.id);
    }
    Ok(EXIT_OK)
}

/// The latest open session's id, if any.
pub(crate) async fn last_open(api: &Api) -> Result<Option<String>, ClientError> {
    let page = get(
        api,
        &["api", "v1", "sessions"],
        &[("status", "open"), ("limit", "1")],
    )
    .await?;
    Ok(page["sessions"][0]["session_id"]
        .as_str()
        .map(str::to_string))
}

async fn resume(args: &ResumeArgs) -> Result<u8, TaskError> {
    let api = args.client.api()?;
    let id = match &args.id {
        Some(id) => id.clone(),
        None => last_open(&api)
            .await?
            .ok_or_else(|| TaskError::Input("no open session to resume".into()))?,
    };
    shell::run(&args.client, Some(id), &SessionSettingsFlags::default()).await
}

async fn decide(args: &DecideArgs, approve: bool) -> Result<u8, TaskError> {
    let api = args.client.api()?;
    let turn = args.turn.to_string();
    let verb = if approve { "approve" } else { "deny" };
    let mut body = json!({});
    if let Some(reason) = &args.reason {
        body["reason"] = json!(reason);
    }
    if let Some(step) = &args.step {
        body["step"] = json!(step);
    }
    let segments = ["api", "v1", "sessions", &args.id, "turns", &turn, verb];
    let decided = post(&api, &segments, Some(&body)).await?;
    if args.client.json {
        print!("{}", pretty(&decided));
    } else {
        let done = if approve { "approved" } else { "denied" };
        println!("{done}: {}", text(&decided["steps"]));
    }
    Ok(EXIT_OK)
}
