//! The chat shell (`mister-smith` with no command, `mister-smith chat`, `session resume`):
//! a line editor with history (rustyline) over a session of the node. Each message is a
//! turn; its tool calls and results are printed as they are recorded, then the answer.
//! Ctrl-C while a turn runs cancels it; at the prompt it clears the line; Ctrl-D leaves.

use std::path::PathBuf;

use rustyline::DefaultEditor;
use rustyline::error::ReadlineError;
use serde_json::{Value, json};

use std::sync::{Arc, Mutex};

use super::follow::{Followed, Follower, Printed, drain, print_deltas};
use super::{SessionSettingsFlags, get, last_open, post, render_list, render_session};
use crate::cli::TaskClientFlags;
use crate::client::text;
use crate::task_cli::api::Api;
use crate::task_cli::{EXIT_OK, TaskError};

const HELP: &str = "\
/sessions      list open sessions
/resume [ID]   continue a session (the latest open one without ID)
/show          this session's turns so far
/new           start a new session with the next message
/end           end this session
/quit          leave (Ctrl-D too); Ctrl-C cancels a running turn";

/// Where the shell keeps its line history: `MISTER_SMITH_HISTORY`, else
/// `~/.mister_smith_history`.
fn history_file() -> Option<PathBuf> {
    std::env::var_os("MISTER_SMITH_HISTORY")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".mister_smith_history"))
        })
}

/// The shell's state: the node and the session messages go to.
struct Shell {
    api: Api,
    session: Option<String>,
    settings: SessionSettingsFlags,
    /// The line editor with its history (out while it reads a line).
    editor: Option<DefaultEditor>,
}

/// Runs the shell until `/quit` or end of input.
pub async fn run(
    client: &TaskClientFlags,
    session: Option<String>,
    settings: &SessionSettingsFlags,
) -> Result<u8, TaskError> {
    let mut shell = Shell {
        api: client.api()?,
        session: None,
        settings: settings.clone(),
        editor: None,
    };
    println!(
        "mister-smith chat on {} — /help for commands",
        shell.api.base
    );
    match session {
        Some(id) => shell.resume(Some(&id)).await?,
        None => println!("a new session starts with your first message"),
    }
    let mut editor = new_editor()?;
    let history = history_file();
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    shell.editor = Some(editor);
    loop {
        let line = match shell.read("you> ").await? {
            Some(line) => line,
            None => break, // Ctrl-D
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(editor) = shell.editor.as_mut() {
            let _ = editor.add_history_entry(line);
        }
        if matches!(line, "/quit" | "/exit") {
            break;
        }
        // A refusal or an unreachable node is shown, and the shell goes on.
        if let Err(e) = shell.line(line).await {
            eprint!("{}", e.report());
        }
    }
    if let (Some(path), Some(editor)) = (&history, shell.editor.as_mut()) {
        let _ = editor.save_history(path);
    }
    Ok(EXIT_OK)
}

impl Shell {
    async fn line(&mut self, line: &str) -> Result<(), TaskError> {
        let (command, arg) = line
            .split_once(' ')
            .map_or((line, ""), |(c, a)| (c, a.trim()));
        match command {
            "/help" => println!("{HELP}"),
            "/sessions" => {
                let page =
                    get(&self.api, &["api", "v1", "sessions"], &[("status", "open")]).await?;
                print!("{}", render_list(&page));
            }
            "/resume" => self.resume(Some(arg).filter(|a| !a.is_empty())).await?,
            "/show" => match &self.session {
                Some(id) => print!(
                    "{}",
                    render_session(&get(&self.api, &["api", "v1", "sessions", id], &[]).await?)
                ),
                None => println!("no session yet"),
            },
            "/new" => {
                self.session = None;
                println!("a new session starts with your next message");
            }
            "/end" => match self.session.take() {
                Some(id) => {
                    post(&self.api, &["api", "v1", "sessions", &id, "end"], None).await?;
                    println!("session {id} ended; a new one starts with your next message");
                }
                None => println!("no session to end"),
            },
            c if c.starts_with('/') => println!("unknown command {c}\n{HELP}"),
            _ => self.say(line).await?,
        }
        Ok(())
    }

    /// Continues session `id` (the latest open one when `None`), showing it so far.
    async fn resume(&mut self, id: Option<&str>) -> Result<(), TaskError> {
        let id = match id {
            Some(id) => id.to_string(),
            None => last_open(&self.api)
                .await?
                .ok_or_else(|| TaskError::Input("no open session to resume".into()))?,
        };
        let session = get(&self.api, &["api", "v1", "sessions", &id], &[]).await?;
        print!("{}", render_session(&session));
        self.session = Some(id);
        Ok(())
    }

    /// Takes a turn with `message` (starting the session first if there is none), follows
    /// it and prints the answer.
    async fn say(&mut self, message: &str) -> Result<(), TaskError> {
        let turn: Value = match &self.session {
            Some(id) => {
                let body = json!({"message": message});
                post(
                    &self.api,
                    &["api", "v1", "sessions", id, "turns"],
                    Some(&body),
                )
                .await?
            }
            None => {
                let body = self.settings.body(Some(message));
                let started = post(&self.api, &["api", "v1", "sessions"], Some(&body)).await?;
                let id = text(&started["session_id"]);
                println!("(session {id})");
                self.session = Some(id);
                started["turn"].clone()
            }
        };
        let task_id = text(&turn["task_id"]);
        let (id, n) = (text(&turn["session_id"]), text(&turn["turn"]));
        let printed = Arc::new(Mutex::new(Printed::default()));
        let mut follower = Follower::default();
        let deltas = print_deltas(
            &self.api,
            &task_id,
            &id,
            &n,
            printed.clone(),
            follower.shown.clone(),
        );
        let ended = loop {
            let interrupt = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            let followed = follower
                .follow(&self.api, &task_id, |l| println!("{l}"), interrupt)
                .await?;
            match followed {
                Followed::Ended(ended) => break ended,
                Followed::Awaiting(calls) => self.ask(&turn, calls).await?,
            }
        };
        drain(deltas).await;
        let answer = ended.answer();
        let streamed = printed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .finish(answer.as_deref());
        match answer {
            Some(_) if streamed => {}
            Some(answer) => println!("agent> {answer}"),
            None => println!("(the turn ended {})", ended.error()),
        }
        Ok(())
    }

    /// Asks the person at the terminal about each call awaiting approval: `y` approves,
    /// anything else denies with that as the reason.
    async fn ask(
        &mut self,
        turn: &Value,
        calls: Vec<(String, String, String)>,
    ) -> Result<(), TaskError> {
        let (id, n) = (text(&turn["session_id"]), text(&turn["turn"]));
        for (step, tool, args) in calls {
            println!("  ? {tool} {args} awaits your approval");
            let answer = self
                .read("approve? [y, or a reason to deny] ")
                .await?
                .unwrap_or_default();
            let answer = answer.trim();
            let approved = matches!(answer, "y" | "Y" | "yes");
            let verb = if approved { "approve" } else { "deny" };
            let mut body = json!({"step": step});
            if !approved {
                let reason = if answer.is_empty() {
                    "denied at the terminal"
                } else {
                    answer
                };
                body["reason"] = json!(reason);
            }
            post(
                &self.api,
                &["api", "v1", "sessions", &id, "turns", &n, verb],
                Some(&body),
            )
            .await?;
        }
        Ok(())
    }

    /// Reads a line with the editor (on a blocking thread of its own: rustyline blocks);
    /// Ctrl-C reads as an empty line, the end of input (Ctrl-D) as `None`.
    async fn read(&mut self, prompt: &str) -> Result<Option<String>, TaskError> {
        let editor = match self.editor.take() {
            Some(editor) => editor,
            None => new_editor()?,
        };
        let prompt = prompt.to_string();
        let (editor, read) = tokio::task::spawn_blocking(move || {
            let mut editor = editor;
            let read = editor.readline(&prompt);
            (editor, read)
        })
        .await
        .map_err(|e| TaskError::Input(format!("the line editor stopped: {e}")))?;
        self.editor = Some(editor);
        match read {
            Ok(line) => Ok(Some(line)),
            Err(ReadlineError::Interrupted) => Ok(Some(String::new())),
            Err(ReadlineError::Eof) => Ok(None),
            Err(e) => Err(TaskError::Input(format!("reading a line: {e}"))),
        }
    }
}

fn new_editor() -> Result<DefaultEditor, TaskError> {
    DefaultEditor::new().map_err(|e| TaskError::Input(format!("no line editor: {e}")))
}

/// `mister-smith` with no command, or `chat`: the shell, or the exit code of why it
/// could not start.
pub async fn chat(args: &super::ChatArgs) -> u8 {
    let result = async {
        let session = match (&args.session, args.last) {
            (Some(id), _) => Some(id.clone()),
            (None, true) => last_open(&args.client.api()?).await?,
            (None, false) => None,
        };
        run(&args.client, session, &args.settings).await
    }
    .await;
    match result {
        Ok(code) => code,
        Err(e) => {
            eprint!("{}", e.report());
            e.exit_code()
        }
    }
}
