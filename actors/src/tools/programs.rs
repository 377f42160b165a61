//! What a `shell` step may start, and with which environment. Program names are resolved
//! to absolute paths once, with the node's `PATH` when the tools are built, and a step's
//! `argv[0]` is looked up only in that map: a step cannot put its own `date` first in
//! `PATH` (the step never sets `PATH`) nor run a file it wrote into the workspace.
//!
//! It also holds the two lists a reviewer needs: the programs that amount to "run
//! anything" (a shell, or a tool that starts any command it is given), refused in
//! `tools.shell.allow` unless `tools.shell.allow_run_anything = true`, and the environment
//! variables a step may never set (they change which code a program loads or runs).

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{ShellConfig, ToolError};

/// `PATH` of every step (and the node's search path when the node has none): fixed, so a
/// program that starts another by name finds the system's, never the workspace's.
pub(super) const STEP_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Programs that run any command they are given (directly, or through an option, a
/// script, an escape or a hook). Allowing one allows everything the node's user can do.
pub const RUN_ANYTHING: &[&str] = &[
    // shells and interpreters
    "sh",
    "bash",
    "dash",
    "zsh",
    "ksh",
    "mksh",
    "ash",
    "csh",
    "tcsh",
    "fish",
    "busybox",
    "toybox",
    "awk",
    "gawk",
    "mawk",
    "nawk",
    "sed",
    "perl",
    "ruby",
    "node",
    "nodejs",
    "deno",
    "bun",
    "php",
    "lua",
    "tclsh",
    "wish",
    "expect",
    // run a command given as arguments
    "env",
    "find",
    "xargs",
    "parallel",
    "nice",
    "ionice",
    "chrt",
    "taskset",
    "nohup",
    "timeout",
    "setsid",
    "stdbuf",
    "time",
    "watch",
    "flock",
    "chroot",
    "unshare",
    "nsenter",
    "runuser",
    "su",
    "sudo",
    "doas",
    "pkexec",
    "script",
    "systemd-run",
    "at",
    "batch",
    "strace",
    "ltrace",
    "gdb",
    "lldb",
    "valgrind",
    "ld.so",
    // escapes, hooks, pagers, helpers
    "vi",
    "vim",
    "nvim",
    "view",
    "ex",
    "emacs",
    "less",
    "more",
    "man",
    "git",
    "tar",
    "zip",
    "rsync",
    "ssh",
    "scp",
    "sftp",
    "make",
    "cmake",
    "ninja",
    "tmux",
    "screen",
    "socat",
    "nc",
    "ncat",
    "crontab",
    "docker",
    "podman",
    "kubectl",
    "pip",
    "pip3",
    "npm",
    "npx",
    "cargo",
    "go",
    "cc",
    "gcc",
    "g++",
    "c++",
    "clang",
    "dpkg",
    "rpm",
    "apt",
    "apt-get",
];

/// Name prefixes of versioned interpreters and loaders (`python3.12`, `ld-linux-x86-64.so.2`).
const RUN_ANYTHING_PREFIXES: &[&str] = &[
    "python", "pypy", "perl", "ruby", "php", "lua", "ld-linux", "ld-musl",
];

/// Variables a step may never set, even when listed in `tools.shell.env_allow`: they
/// choose the programs, libraries or startup code that run.
const FORBIDDEN_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "TMPDIR",
    "BASH_ENV",
    "ENV",
    "IFS",
    "SHELLOPTS",
    "BASHOPTS",
    "PS4",
    "CDPATH",
    "GLOBIGNORE",
    "PROMPT_COMMAND",
    "PERL5LIB",
    "PERL5OPT",
    "PERLLIB",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONINSPECT",
    "RUBYOPT",
    "RUBYLIB",
    "NODE_OPTIONS",
    "NODE_PATH",
    "GCONV_PATH",
    "HOSTALIASES",
    "LOCPATH",
    "NLSPATH",
    "RESOLV_HOST_CONF",
    "RES_OPTIONS",
    "LOCALDOMAIN",
    "TZDIR",
    "EDITOR",
    "VISUAL",
    "PAGER",
    "LESSOPEN",
    "LESSCLOSE",
    "MANPAGER",
    "GIT_EXEC_PATH",
];
const FORBIDDEN_ENV_PREFIXES: &[&str] =
    &["LD_", "DYLD_", "BASH_FUNC_", "MALLOC_", "GLIBC_", "GIT_"];

/// Whether `program` (a name or a path; its file name counts) amounts to "run anything".
pub fn runs_anything(program: &str) -> bool {
    let name = Path::new(program)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(program);
    program == "*"
        || RUN_ANYTHING.contains(&name)
        || RUN_ANYTHING_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Why a step may not set `key`, if it may not; `None` when it is allowed.
pub(super) fn env_refusal(config: &ShellConfig, key: &str) -> Option<String> {
    if key.is_empty() || key.contains(['=', '\0']) {
        return Some(format!(
            "shell: `env` key {key:?} is not a valid variable name"
        ));
    }
    if forbidden_env(key) {
        return Some(format!(
            "shell: `env` may not set {key:?}: it chooses which code runs (never allowed)"
        ));
    }
    if !config.env_allow.iter().any(|k| k == key) {
        return Some(format!(
            "shell: `env` may not set {key:?}; allowed variables are listed in tools.shell.env_allow {:?}",
            config.env_allow
        ));
    }
    None
}

/// Whether `key` is never settable by a step.
pub fn forbidden_env(key: &str) -> bool {
    let upper = key.to_ascii_uppercase();
    FORBIDDEN_ENV.contains(&upper.as_str())
        || FORBIDDEN_ENV_PREFIXES.iter().any(|p| upper.starts_with(p))
}

/// The allowed programs, resolved at start.
#[derive(Debug, Default)]
pub(super) struct Programs {
    /// Allowlist entry (a name or an absolute path) → the file to run; `None` when it
    /// was not found at start (refused at use, with the reason).
    resolved: HashMap<String, Option<PathBuf>>,
    /// `"*"` in the allowlist: any name is looked up in [`Self::search`].
    any: bool,
    /// The node's `PATH` at start (absolute entries only).
    search: Vec<PathBuf>,
}

impl Programs {
    /// Resolves every entry of `tools.shell.allow`; returns the warnings to log (entries
    /// found nowhere).
    pub(super) fn resolve(config: &ShellConfig) -> (Programs, Vec<String>) {
        let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from(STEP_PATH));
        let search: Vec<PathBuf> = std::env::split_paths(&path)
            .filter(|dir| dir.is_absolute())
            .collect();
        let mut programs = Programs {
            resolved: HashMap::new(),
            any: false,
            search,
        };
        let mut warnings = Vec::new();
        for entry in &config.allow {
            if entry == "*" {
                programs.any = true;
                continue;
            }
            let found = programs.find(entry);
            if found.is_none() && config.enabled {
                warnings.push(format!(
                    "tools.shell.allow: {entry:?} is not an executable file{}; steps that run it will be refused",
                    if entry.contains('/') { "" } else { " in the node's PATH" }
                ));
            }
            programs.resolved.insert(entry.clone(), found);
        }
        (programs, warnings)
    }

    fn find(&self, program: &str) -> Option<PathBuf> {
        if program.contains('/') {
            let path = PathBuf::from(program);
            return (path.is_absolute() && executable(&path)).then_some(path);
        }
        self.search
            .iter()
            .map(|dir| dir.join(program))
            .find(|path| executable(path))
    }

    /// The file to run for `argv[0]`, or why not.
    pub(super) fn lookup(&self, program: &str) -> Result<PathBuf, ToolError> {
        match self.resolved.get(program) {
            Some(Some(path)) => return Ok(path.clone()),
            Some(None) => {
                return Err(ToolError::Denied(format!(
                    "shell: program {program:?} (in tools.shell.allow) was not found when the node started"
                )));
            }
            None => {}
        }
        if !self.any {
            return Err(ToolError::Denied(format!(
                "shell: program {program:?} is not in tools.shell.allow"
            )));
        }
        // "*": a path must be absolute (never the step's cwd); a name is searched in the
        // node's PATH, not the step's.
        self.find(program).ok_or_else(|| {
            ToolError::Failed(format!(
                "shell: program {program:?} is not an absolute path to an executable nor found in the node's PATH"
            ))
        })
    }
}

fn executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
