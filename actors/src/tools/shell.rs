//! `shell`: runs an allowed program with the step's input on stdin. It is the most powerful
//! tool, so it is off unless `tools.shell.enabled`, runs only programs listed in
//! `tools.shell.allow` (`argv` form), and accepts `cmd` strings (run by `sh -c`) only with
//! `tools.shell.use_sh`. The child gets a clean environment (a few harmless variables plus the
//! step's `env`), so secrets in the node's environment are not handed to it, and runs in the
//! workspace (or a `cwd` inside it).
//!
//! The child leads a process group of its own. On timeout or cancellation the whole group is
//! killed (so `sh -c "sleep 100 & sleep 100"` leaves nothing behind) and the child is reaped
//! before the error is returned; when the child exits by itself, whatever it left running in
//! its group is killed too, so a step never leaves processes behind; if the node itself dies,
//! the kernel kills the child (`PR_SET_PDEATHSIG`). stdout and stderr are
//! read concurrently and capped; a non-zero exit is a normal result for the Critic to judge.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::output::{parse_json, read_capped};
use super::{ToolError, ToolOutput, ToolsConfig, parse_args, workspace};

/// Variables of the node's environment a child may see (the rest may hold secrets).
const PASSED_ENV: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR"];
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    argv: Option<Vec<String>>,
    cmd: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<String>,
}

/// What to start, after every check.
struct Plan {
    program: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: Option<PathBuf>,
}

fn plan(config: &ToolsConfig, args: &serde_json::Value) -> Result<Plan, ToolError> {
    let shell = &config.shell;
    if !shell.enabled {
        return Err(ToolError::Disabled(
            "shell is off; set tools.shell.enabled = true and list the allowed programs in tools.shell.allow".into(),
        ));
    }
    let args: Args = parse_args("shell", args)?;
    let (program, rest) = match (args.argv, args.cmd) {
        (Some(_), Some(_)) => {
            return Err(ToolError::InvalidArgs(
                "shell: give either `argv` or `cmd`, not both".into(),
            ));
        }
        (None, None) => {
            return Err(ToolError::InvalidArgs(
                "shell: `argv` (a program and its arguments) is required".into(),
            ));
        }
        (Some(mut argv), None) => {
            if argv.is_empty() || argv[0].is_empty() {
                return Err(ToolError::InvalidArgs(
                    "shell: `argv` must start with a program name".into(),
                ));
            }
            let program = argv.remove(0);
            (program, argv)
        }
        (None, Some(cmd)) => {
            if !shell.use_sh || !shell.allows_program("sh") {
                return Err(ToolError::Denied(
                    "shell: `cmd` strings run through sh -c, which needs tools.shell.use_sh = true and \"sh\" in tools.shell.allow; give `argv` instead".into(),
                ));
            }
            ("sh".to_owned(), vec!["-c".to_owned(), cmd])
        }
    };
    if !shell.allows_program(&program) {
        return Err(ToolError::Denied(format!(
            "shell: program {program:?} is not in tools.shell.allow {:?}",
            shell.allow
        )));
    }
    if program.contains('\0') || rest.iter().any(|a| a.contains('\0')) {
        return Err(ToolError::InvalidArgs(
            "shell: `argv` contains a NUL byte".into(),
        ));
    }
    for (key, value) in &args.env {
        if key.is_empty() || key.contains(['=', '\0']) || value.contains('\0') {
            return Err(ToolError::InvalidArgs(format!(
                "shell: `env` key {key:?} is not a valid variable"
            )));
        }
    }
    let cwd = match args.cwd {
        Some(cwd) => Some(workspace::relative("shell", &cwd)?),
        None => None,
    };
    Ok(Plan {
        program,
        args: rest,
        env: args.env,
        cwd,
    })
}

pub(super) fn validate(config: &ToolsConfig, args: &serde_json::Value) -> Result<(), ToolError> {
    plan(config, args).map(|_| ())
}

/// Kills the child's process group when dropped while armed, so that even a caller that
/// drops the run mid-way (an aborted task) leaves no process behind.
struct Group(Option<Pid>);

impl Group {
    fn kill(&self) {
        if let Some(pgid) = self.0 {
            // ESRCH (nothing left in the group) is fine.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

enum Stop<T> {
    Done(T),
    TimedOut,
    Cancelled,
}

pub(super) async fn run(
    config: &ToolsConfig,
    workspace: &Path,
    args: &serde_json::Value,
    input: Option<&str>,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<ToolOutput, ToolError> {
    let plan = plan(config, args)?;
    let dir = match &plan.cwd {
        Some(rel) => {
            let dir = workspace::existing("shell", workspace, rel)?;
            if !dir.is_dir() {
                return Err(ToolError::InvalidArgs(format!(
                    "shell: `cwd` {:?} is not a directory",
                    rel.display().to_string()
                )));
            }
            dir
        }
        None => workspace.to_path_buf(),
    };
    let mut command = tokio::process::Command::new(&plan.program);
    command.args(&plan.args).current_dir(dir).env_clear();
    for key in PASSED_ENV {
        if let Some(value) = std::env::var_os(key) {
            command.env(key, value);
        }
    }
    if std::env::var_os("PATH").is_none() {
        command.env("PATH", DEFAULT_PATH);
    }
    command
        .envs(&plan.env)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // If the node dies (SIGKILL included), the kernel kills the child: its run will be
    // resumed and the step retried, so a leftover would only duplicate the work.
    // SAFETY: the closure runs in the forked child before exec and only makes the
    // async-signal-safe prctl(2) call.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| ToolError::Failed(format!("shell: cannot start {:?}: {e}", plan.program)))?;
    let mut group = Group(child.id().map(|id| Pid::from_raw(id as i32)));
    let cap = config.max_output_bytes;
    let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let (Some(stdout), Some(stderr)) = (stdout, stderr) else {
        return Err(ToolError::Failed("shell: no pipes to the child".into()));
    };

    let stop = {
        let feed = async {
            if let (Some(mut pipe), Some(text)) = (stdin, input) {
                // A child that does not read its input closes the pipe: not an error.
                let _ = pipe.write_all(text.as_bytes()).await;
            }
        };
        let status = async {
            let status = child.wait().await;
            // Whatever the child left running in its group would hold the pipes open.
            group.kill();
            status
        };
        let work = async {
            tokio::join!(
                feed,
                read_capped(stdout, cap),
                read_capped(stderr, cap),
                status
            )
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => Stop::Cancelled,
            _ = tokio::time::sleep(timeout) => Stop::TimedOut,
            done = work => Stop::Done(done),
        }
    };

    let (_, out, err, status) = match stop {
        Stop::Done(done) => done,
        stopped => {
            group.kill();
            // SIGKILL cannot be ignored: the wait is short, and it reaps the child.
            let _ = child.wait().await;
            group.disarm();
            return Err(match stopped {
                Stop::Cancelled => ToolError::Cancelled,
                _ => ToolError::TimedOut(timeout),
            });
        }
    };
    group.disarm();
    let status = status.map_err(|e| ToolError::Failed(format!("shell: wait: {e}")))?;
    let out = out.map_err(|e| ToolError::Failed(format!("shell: reading stdout: {e}")))?;
    let err = err.map_err(|e| ToolError::Failed(format!("shell: reading stderr: {e}")))?;
    let exit_code = status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal));
    let text = out.text();
    Ok(ToolOutput {
        json: parse_json(&text, out.truncated()),
        text,
        stderr: Some(err.text()),
        exit_code,
        status: None,
        truncated: out.truncated() || err.truncated(),
        bytes: out.bytes() + err.bytes(),
    })
}
