//! The `[tools]` configuration section. It lives beside the tools, not in the node's
//! config module, because it is the tools' safety envelope: what is on, which programs and
//! hosts are allowed, where files may be touched, and how long and how much a step may run
//! and print. [`ToolsConfig::validate`] names the offending key so the node can stop with a
//! clear message (exit code 2) instead of running with a setting it does not understand.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::programs::{forbidden_env, runs_anything};

/// Longest timeout a step may be given (and the default may be set to): thirty days.
pub const MAX_TIMEOUT_SECS: f64 = 30.0 * 24.0 * 3600.0;

/// Settings of every tool (the `[tools]` section).
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ToolsConfig {
    /// Timeout of a step that does not set its own, in seconds.
    pub default_timeout_secs: f64,
    /// Most bytes of output (stdout, stderr, body, file content) kept per step.
    pub max_output_bytes: usize,
    pub shell: ShellConfig,
    pub http: HttpToolConfig,
    pub file: FileToolConfig,
    /// Tools whose calls by an agent's model wait for a person's approval
    /// (`approval = { shell = "required" }`): the call's step waits `awaiting_approval`,
    /// durably, until it is approved or denied through the API. Steps submitted in a plan
    /// are a person's already and never wait.
    pub approval: std::collections::BTreeMap<String, Approval>,
}

/// Whether an agent's calls of a tool wait for approval.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(try_from = "String")]
pub enum Approval {
    Required,
    None,
}

impl TryFrom<String> for Approval {
    type Error = String;

    fn try_from(s: String) -> Result<Approval, String> {
        match s.as_str() {
            "required" => Ok(Approval::Required),
            "none" => Ok(Approval::None),
            other => Err(format!("must be \"required\" or \"none\", not {other:?}")),
        }
    }
}

/// The tools `tools.approval` may name.
pub const APPROVABLE: &[&str] = &[
    "echo", "sleep", "shell", "http", "file", "memory", "llm", "json", "template", "hash",
];

/// `[tools.shell]`: off unless enabled, and then only the listed programs.
#[derive(Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ShellConfig {
    pub enabled: bool,
    /// Programs allowed as `argv[0]`, matched exactly: names (resolved once, with the
    /// node's `PATH` at start) or absolute paths; `"*"` allows any program.
    pub allow: Vec<String>,
    /// Whether `cmd` strings may run through `sh -c`; needs `"sh"` (or `"*"`) in `allow`.
    pub use_sh: bool,
    /// Explicit consent to list programs that run any command they are given (shells,
    /// `env`, `find`, `xargs`, interpreters…, see [`super::programs::RUN_ANYTHING`]) or `"*"`.
    pub allow_run_anything: bool,
    /// Variables a step's `env` may set (none by default); never `PATH`, `LD_*` and the
    /// like (see [`super::programs::forbidden_env`]).
    pub env_allow: Vec<String>,
}

/// `[tools.http]`: which hosts requests (and redirects) may go to, and which addresses.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpToolConfig {
    /// Exact host names (`"api.example.com"`, `"203.0.113.7"`), wildcard subdomains
    /// (`"*.example.com"`), or `"*"` for any host. Empty (the default): every request is
    /// refused.
    pub allow_hosts: Vec<String>,
    /// CIDRs (`"127.0.0.1/32"`, `"10.0.0.0/8"`) whose addresses may be connected to although
    /// they are loopback, private, link-local or otherwise special. Empty by default.
    pub allow_cidrs: Vec<String>,
    /// A PEM file of extra CA certificates trusted for https, besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Redirects followed per request; each target host is checked again.
    pub max_redirects: usize,
    /// The node's own listeners (set by the node at start, not configurable): never
    /// reachable by a step, whatever `allow_cidrs` says.
    #[serde(skip)]
    pub node_listeners: Vec<SocketAddr>,
}

/// `[tools.file]`: the one directory the `file` tool (and `shell`'s `cwd`) may touch.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FileToolConfig {
    pub workspace: PathBuf,
}

impl Default for ToolsConfig {
    fn default() -> Self {
        ToolsConfig {
            default_timeout_secs: 60.0,
            max_output_bytes: 1024 * 1024,
            shell: ShellConfig::default(),
            http: HttpToolConfig::default(),
            file: FileToolConfig::default(),
            approval: std::collections::BTreeMap::new(),
        }
    }
}

impl Default for HttpToolConfig {
    fn default() -> Self {
        HttpToolConfig {
            allow_hosts: Vec::new(),
            allow_cidrs: Vec::new(),
            ca_file: None,
            max_redirects: 5,
            node_listeners: Vec::new(),
        }
    }
}

impl Default for FileToolConfig {
    fn default() -> Self {
        FileToolConfig {
            workspace: PathBuf::from("data/workspace"),
        }
    }
}

impl ToolsConfig {
    /// Whether an agent's call of `tool` waits for a person's approval.
    pub fn needs_approval(&self, tool: &str) -> bool {
        self.approval.get(tool) == Some(&Approval::Required)
    }

    /// Checks every setting; the error names the key and what is allowed.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(tool) = self
            .approval
            .keys()
            .find(|t| !APPROVABLE.contains(&t.as_str()))
        {
            return Err(format!(
                "tools.approval.{tool}: no such tool; one of: {}",
                APPROVABLE.join(", ")
            ));
        }
        let t = self.default_timeout_secs;
        if !t.is_finite() || t <= 0.0 || t > MAX_TIMEOUT_SECS {
            return Err(format!(
                "tools.default_timeout_secs: must be more than 0 and at most {MAX_TIMEOUT_SECS} (got {t})"
            ));
        }
        if self.max_output_bytes == 0 {
            return Err("tools.max_output_bytes: must be at least 1".into());
        }
        if self.max_output_bytes > 1 << 30 {
            return Err("tools.max_output_bytes: must be at most 1073741824 (1 GiB)".into());
        }
        for program in &self.shell.allow {
            if program.is_empty() || program.contains('\0') {
                return Err(format!(
                    "tools.shell.allow: {program:?} is not a program name (use names like \"wc\", absolute paths, or \"*\")"
                ));
            }
        }
        if !self.shell.allow_run_anything
            && let Some(program) = self.shell.allow.iter().find(|p| runs_anything(p))
        {
            return Err(format!(
                "tools.shell.allow: {program:?} runs any command it is given; set tools.shell.allow_run_anything = true to allow it anyway"
            ));
        }
        for key in &self.shell.env_allow {
            if key.is_empty() || key.contains(['=', '\0']) {
                return Err(format!(
                    "tools.shell.env_allow: {key:?} is not a variable name"
                ));
            }
            if forbidden_env(key) {
                return Err(format!(
                    "tools.shell.env_allow: {key:?} may never be set by a step (it chooses which code runs)"
                ));
            }
        }
        if self.shell.use_sh && !self.shell.allows_program("sh") {
            return Err(
                "tools.shell.use_sh: needs \"sh\" in tools.shell.allow (cmd strings run as sh -c)"
                    .into(),
            );
        }
        for host in &self.http.allow_hosts {
            let bare = host.strip_prefix("*.").unwrap_or(host);
            let ok = host == "*"
                || (!bare.is_empty() && !bare.contains(['*', '/', ' ']) && !bare.starts_with('.'));
            if !ok {
                return Err(format!(
                    "tools.http.allow_hosts: {host:?} is not a host pattern (use \"example.com\", \"*.example.com\" or \"*\")"
                ));
            }
        }
        self.http.cidrs()?;
        if self
            .http
            .ca_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err("tools.http.ca_file: must be a file path".into());
        }
        if self.http.max_redirects > 20 {
            return Err("tools.http.max_redirects: must be at most 20".into());
        }
        if self.file.workspace.as_os_str().is_empty() {
            return Err("tools.file.workspace: must be a directory path".into());
        }
        Ok(())
    }
}

impl ShellConfig {
    /// Whether `program` may run as `argv[0]`.
    pub fn allows_program(&self, program: &str) -> bool {
        self.allow.iter().any(|a| a == "*" || a == program)
    }
}

impl HttpToolConfig {
    /// `allow_cidrs` parsed; the error names the key and the entry.
    pub fn cidrs(&self) -> Result<Vec<ipnet::IpNet>, String> {
        self.allow_cidrs
            .iter()
            .map(|cidr| {
                cidr.trim().parse::<ipnet::IpNet>().map_err(|_| {
                    format!(
                        "tools.http.allow_cidrs: {cidr:?} is not a CIDR (use \"127.0.0.1/32\", \"10.0.0.0/8\", \"::1/128\")"
                    )
                })
            })
            .collect()
    }

    /// Whether requests may go to `host` (as `Url::host_str` gives it).
    pub fn allows_host(&self, host: &str) -> bool {
        let unbracket = |h: &str| {
            h.trim_start_matches('[')
                .trim_end_matches([']', '.'])
                .to_ascii_lowercase()
        };
        let host = unbracket(host);
        self.allow_hosts.iter().any(|pattern| {
            let pattern = unbracket(pattern);
            if pattern == "*" {
                return true;
            }
            match pattern.strip_prefix("*.") {
                Some(domain) => host
                    .strip_suffix(domain)
                    .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
                None => host == pattern,
            }
        })
    }
}
