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

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use super::output::{parse_json, read_capped};
use super::programs::{Programs, STEP_PATH, env_refusal};
use super::{ToolError, ToolOutput, ToolsConfig, parse_args, reaper, workspace};

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
    /// The file `program` resolved to at start.
    path: PathBuf,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: Option<PathBuf>,
}

fn plan(
    config: &ToolsConfig,
    programs: &Programs,
    args: &serde_json::Value,
) -> Result<Plan, ToolError> {
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
    let path = programs.lookup(&program)?;
    for (key, value) in &args.env {
        if let Some(reason) = env_refusal(shell, key) {
            return Err(ToolError::Denied(reason));
        }
        if value.contains('\0') {
            return Err(ToolError::InvalidArgs(format!(
                "shell: `env` value of {key:?} contains a NUL byte"
            )));
        }
    }
    let cwd = match args.cwd {
        Some(cwd) => Some(workspace::relative("shell", &cwd)?),
        None => None,
    };
    Ok(Plan {
        program,
        path,
        args: rest,
        env: args.env,
        cwd,
    })
}

pub(super) fn validate(
    config: &ToolsConfig,
    programs: &Programs,
    args: &serde_json::Value,
) -> Result<(), ToolError> {
    plan(config, programs, args).map(|_| ())
}

/// Asks the keeper (see [`reaper`]) to kill the step's whole tree when dropped while
/// armed, so that even a caller that drops the run mid-way (an aborted task) leaves no
/// process behind.
struct Group(Option<Pid>);

impl Group {
    fn stop(&self) {
        if let Some(keeper) = self.0 {
            // ESRCH (already gone) is fine.
            let _ = kill(keeper, Signal::SIGTERM);
        }
    }

    /// Last resort if the keeper does not end: its process group (not a detached tree).
    fn kill(&self) {
        if let Some(pgid) = self.0 {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How long a keeper may take to sweep after being asked before its group is SIGKILLed.
const SWEEP_GRACE: Duration = Duration::from_secs(10);

enum Stop<T> {
    Done(T),
    TimedOut,
    Cancelled,
}

pub(super) async fn run(
    config: &ToolsConfig,
    programs: &Programs,
    workspace: &Path,
    args: &serde_json::Value,
    input: Option<&str>,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<ToolOutput, ToolError> {
    let plan = plan(config, programs, args)?;
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
    let mut command = tokio::process::Command::new(&plan.path);
    // A clean environment: nothing of the node's (it may hold secrets), a fixed PATH, and
    // only the variables tools.shell.env_allow lets the step set.
    command
        .arg0(&plan.program)
        .args(&plan.args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", STEP_PATH)
        .env("HOME", workspace)
        .env("TMPDIR", workspace)
        .env("LANG", "C.UTF-8")
        .envs(&plan.env)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        // Never SIGKILL the keeper: it must sweep the tree (Group asks it to).
        .kill_on_drop(false);
    // SAFETY: `reaper::split` runs in the forked child before exec and makes only
    // async-signal-safe calls.
    unsafe {
        command.pre_exec(|| reaper::split());
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
        // The keeper exits once the program and everything it started are gone.
        let status = child.wait();
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
            group.stop();
            if tokio::time::timeout(SWEEP_GRACE, child.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    "shell: the step's keeper did not end after SIGTERM; killing its group"
                );
                group.kill();
                let _ = child.wait().await;
            }
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
