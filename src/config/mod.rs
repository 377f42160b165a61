//! Configuration: `config/default.toml` (embedded) → `--config FILE` → environment
//! `MISTER_SMITH__SECTION__KEY` → command-line flags (DESIGN §8).
//!
//! Every setting is typed and unknown keys are refused, so a typo stops the node (exit 2)
//! with a message naming the key instead of being silently ignored.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use actors::agent::AgentLimits;
use actors::context::SchedulerSettings;
use actors::domain::{DomainDefaults, DomainSpec};
use actors::llm::LlmConfig;
use actors::root::RootPolicy;
use actors::supervisor::{Backoff, Restart, Strategy};
use actors::tools::ToolsConfig;
use serde::Deserialize;

pub mod auth;
mod nats;
pub use nats::NatsSettings;
mod limits;
pub use limits::{ListenerLimits, TasksConfig};
mod cluster;
pub use cluster::{ClusterSettings, DetectorKind};

/// The embedded defaults; also the documentation of every setting.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// Prefix of environment overrides: `MISTER_SMITH__HTTP__LISTEN=0.0.0.0:8080`.
pub const ENV_PREFIX: &str = "MISTER_SMITH";

/// A configuration the node refuses to run with. The message names the key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub node: NodeSettings,
    pub http: HttpSettings,
    pub admin: AdminSettings,
    pub auth: auth::AuthSettings,
    pub database: DatabaseSettings,
    pub nats: NatsSettings,
    pub cluster: ClusterSettings,
    pub log: LogSettings,
    pub supervision: SupervisionSettings,
    pub scheduler: SchedulerConfig,
    pub tasks: TasksConfig,
    pub monitor: MonitorConfig,
    pub agents: AgentLimits,
    pub tools: ToolsConfig,
    pub llm: LlmConfig,
    pub domains: Vec<DomainSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorConfig {
    pub heartbeat_ms: u64,
    pub timeout_ms: u64,
    pub kill_after: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerConfig {
    pub max_running: usize,
    pub max_queued: usize,
    pub aging_secs: f64,
    pub store_queue: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSettings {
    /// Empty means the host name.
    pub name: String,
    pub shutdown_timeout_secs: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub listen: SocketAddr,
    pub body_limit_bytes: usize,
    pub header_timeout_secs: f64,
    pub idle_timeout_secs: f64,
    pub max_connections: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    pub token: Option<String>,
    pub header_timeout_secs: f64,
    pub idle_timeout_secs: f64,
    pub max_connections: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
    pub connect_timeout_secs: f64,
    pub sqlite_synchronous: SqliteSynchronous,
}

impl DatabaseSettings {
    /// How to open the store these settings describe.
    pub fn store_options(&self) -> crate::store::StoreOptions {
        crate::store::StoreOptions {
            url: self.url.clone(),
            max_connections: self.max_connections,
            connect_timeout: Duration::from_secs_f64(self.connect_timeout_secs),
            sqlite_fsync: self.sqlite_synchronous == SqliteSynchronous::Full,
        }
    }
}

/// When a SQLite commit is on disk: `full` (the default) survives an OS crash or power
/// loss (one fsync per group commit), `normal` only the process being killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum SqliteSynchronous {
    Normal,
    Full,
}

impl TryFrom<String> for SqliteSynchronous {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "normal" => Ok(SqliteSynchronous::Normal),
            "full" => Ok(SqliteSynchronous::Full),
            other => Err(format!("unknown mode `{other}`; allowed: normal, full")),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisionSettings {
    pub strategy: Strategy,
    pub max_restarts: u32,
    pub within_secs: f64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub backoff_jitter: f64,
    pub agent_shutdown_ms: u64,
}

/// Values given on the command line; they override every other layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub node: Option<String>,
    pub http: Option<String>,
    pub admin: Option<String>,
    pub database: Option<String>,
    pub nats: Option<String>,
    pub cluster: Option<String>,
}

impl Settings {
    /// Loads every layer from the real environment.
    pub fn load(overrides: &Overrides) -> Result<Settings, ConfigError> {
        Self::load_from(overrides, std::env::vars())
    }

    /// Loads every layer, with the environment given explicitly (for tests).
    pub fn load_from(
        overrides: &Overrides,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        use config::{Config, Environment, File, FileFormat};

        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
            .collect();
        let mut builder =
            Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        if let Some(path) = &overrides.config_file {
            if !path.is_file() {
                return Err(ConfigError(format!(
                    "--config: no such file {}",
                    path.display()
                )));
            }
            builder = builder.add_source(File::from(path.as_path()).format(FileFormat::Toml));
        }
        builder = builder.add_source(
            Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        );
        let flags = [
            ("node.name", &overrides.node),
            ("http.listen", &overrides.http),
            ("admin.listen", &overrides.admin),
            ("database.url", &overrides.database),
            ("nats.url", &overrides.nats),
            ("cluster.name", &overrides.cluster),
        ];
        for (key, value) in flags {
            builder = builder
                .set_override_option(key, value.clone())
                .map_err(|e| ConfigError(e.to_string()))?;
        }
        let mut settings: Settings = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError(dotted_keys(&e.to_string())))?;
        settings.validate()?;
        Ok(settings)
    }

    /// The cluster's settings, which matter only when NATS is configured.
    fn validate_cluster(&mut self) -> Result<(), ConfigError> {
        self.nats.validate()?;
        self.cluster
            .validate(self.nats.url.is_some(), &self.database.url)
    }

    /// Checks what types cannot: impossible values and combinations.
    fn validate(&mut self) -> Result<(), ConfigError> {
        let fail = |msg: String| Err(ConfigError(msg));
        if self.node.name.is_empty() {
            self.node.name = host_name();
        }
        if !valid_name(&self.node.name) {
            return fail(format!(
                "node.name: `{}` is not allowed; use 1-64 letters, digits, `-` or `_`",
                self.node.name
            ));
        }
        seconds(
            "node.shutdown_timeout_secs",
            self.node.shutdown_timeout_secs,
        )?;
        if self.http.body_limit_bytes == 0 {
            return fail("http.body_limit_bytes: must be at least 1".into());
        }
        match &self.admin.token {
            Some(t) if t.trim().is_empty() => {
                return fail("admin.token: must not be empty (leave it unset for none)".into());
            }
            None if !self.admin.listen.ip().is_loopback() => {
                return fail(format!(
                    "admin.token: required because admin.listen ({}) is not a loopback address; \
                     set admin.token (MISTER_SMITH__ADMIN__TOKEN) or listen on 127.0.0.1",
                    self.admin.listen
                ));
            }
            _ => {}
        }
        let url = &self.database.url;
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return fail(format!(
                "database.url: `{url}` is not supported; allowed: sqlite://PATH, postgres://…"
            ));
        }
        if self.database.max_connections == 0 {
            return fail("database.max_connections: must be at least 1".into());
        }
        // On PostgreSQL the writer keeps connections of its own; the lease renewals and
        // the reads need at least one more.
        if !url.starts_with("sqlite:") && self.database.max_connections < 2 {
            return fail(format!(
                "database.max_connections: {} is too few for PostgreSQL; at least 2",
                self.database.max_connections
            ));
        }
        seconds(
            "database.connect_timeout_secs",
            self.database.connect_timeout_secs,
        )?;
        if let Some(nats) = &self.nats.url
            && !(nats.starts_with("nats://") || nats.starts_with("tls://"))
        {
            return fail(format!(
                "nats.url: `{nats}` must start with nats:// or tls://"
            ));
        }
        if !valid_name(&self.cluster.name) {
            return fail(format!(
                "cluster.name: `{}` is not allowed; use 1-64 letters, digits, `-` or `_`",
                self.cluster.name
            ));
        }
        self.validate_cluster()?;
        self.auth.validate(self.http.listen)?;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return fail(format!("log.level: `{}`: {e}", self.log.level));
        }
        let s = &self.supervision;
        seconds("supervision.within_secs", s.within_secs)?;
        if s.backoff_max_ms < s.backoff_initial_ms {
            return fail(
                "supervision.backoff_max_ms: must not be below supervision.backoff_initial_ms"
                    .into(),
            );
        }
        if !(0.0..=1.0).contains(&s.backoff_jitter) {
            return fail("supervision.backoff_jitter: must be between 0.0 and 1.0".into());
        }
        let q = &self.scheduler;
        if q.max_running == 0 || q.max_queued == 0 || q.store_queue == 0 {
            return fail(
                "scheduler: max_running, max_queued and store_queue must be at least 1".into(),
            );
        }
        seconds("scheduler.aging_secs", q.aging_secs)?;
        let m = &self.monitor;
        if m.heartbeat_ms == 0 || m.timeout_ms == 0 || m.kill_after == 0 {
            return fail(
                "monitor: heartbeat_ms, timeout_ms and kill_after must be at least 1".into(),
            );
        }
        self.tasks.validate()?;
        self.http_limits()?;
        self.admin_limits()?;
        self.agents.validate().map_err(ConfigError)?;
        self.tools.validate().map_err(ConfigError)?;
        self.llm.validate().map_err(ConfigError)?;
        if let Some(script) = &self.llm.script
            && !script.is_file()
        {
            return fail(format!("llm.script: no such file {}", script.display()));
        }
        self.validate_domains()
    }

    pub fn monitor_settings(&self) -> actors::roles::monitor::MonitorSettings {
        actors::roles::monitor::MonitorSettings {
            heartbeat: Duration::from_millis(self.monitor.heartbeat_ms),
            timeout: Duration::from_millis(self.monitor.timeout_ms),
            kill_after: self.monitor.kill_after,
        }
    }

    pub fn scheduler_settings(&self) -> SchedulerSettings {
        SchedulerSettings {
            max_running: self.scheduler.max_running,
            max_queued: self.scheduler.max_queued,
            aging_ms: (self.scheduler.aging_secs * 1000.0) as u64,
            spill_above: (self.nats.url.is_some() && self.cluster.spill_queued > 0)
                .then_some(self.cluster.spill_queued),
            max_task_output_bytes: self.tasks.max_output_bytes,
        }
    }

    /// The API listener's connection limits.
    pub fn http_limits(&self) -> Result<ListenerLimits, ConfigError> {
        let h = &self.http;
        ListenerLimits::from_settings(
            "http",
            h.header_timeout_secs,
            h.idle_timeout_secs,
            h.max_connections,
        )
    }

    /// The admin listener's connection limits.
    pub fn admin_limits(&self) -> Result<ListenerLimits, ConfigError> {
        let a = &self.admin;
        ListenerLimits::from_settings(
            "admin",
            a.header_timeout_secs,
            a.idle_timeout_secs,
            a.max_connections,
        )
    }

    fn validate_domains(&self) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        for (i, domain) in self.domains.iter().enumerate() {
            let key = format!("domains[{i}]");
            if !valid_name(&domain.name) {
                return Err(ConfigError(format!(
                    "{key}.name: `{}` is not allowed; use 1-64 letters, digits, `-` or `_`",
                    domain.name
                )));
            }
            if ["root", "runs", "registry", "scheduler"].contains(&domain.name.as_str()) {
                return Err(ConfigError(format!(
                    "{key}.name: `{}` is reserved for the node's own actors",
                    domain.name
                )));
            }
            if !names.insert(domain.name.as_str()) {
                return Err(ConfigError(format!(
                    "{key}.name: domain `{}` is defined twice",
                    domain.name
                )));
            }
            seconds(&format!("{key}.within_secs"), domain.within_secs)?;
            let mut roles = HashSet::new();
            for (j, agent) in domain.agents.iter().enumerate() {
                let key = format!("{key}.agents[{j}]");
                if !roles.insert(agent.role) {
                    return Err(ConfigError(format!(
                        "{key}.role: `{}` is listed twice in domain `{}`; raise its instances instead",
                        agent.role, domain.name
                    )));
                }
                if agent.instances == 0 && agent.restart == Restart::Permanent {
                    return Err(ConfigError(format!(
                        "{key}.instances: a permanent `{}` agent needs at least 1 instance",
                        agent.role
                    )));
                }
            }
        }
        Ok(())
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.node.shutdown_timeout_secs)
    }

    pub fn root_policy(&self) -> RootPolicy {
        RootPolicy {
            strategy: self.supervision.strategy,
            max_restarts: self.supervision.max_restarts,
            within: Duration::from_secs_f64(self.supervision.within_secs),
        }
    }

    pub fn domain_defaults(&self) -> DomainDefaults {
        let s = &self.supervision;
        DomainDefaults {
            backoff: Backoff {
                initial: Duration::from_millis(s.backoff_initial_ms),
                max: Duration::from_millis(s.backoff_max_ms),
                jitter: s.backoff_jitter,
            },
            agent_shutdown: Duration::from_millis(s.agent_shutdown_ms),
        }
    }
}

/// The config crate prints `domains[0]strategy`; people write `domains[0].strategy`.
fn dotted_keys(message: &str) -> String {
    let mut out = String::with_capacity(message.len() + 8);
    let mut chars = message.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == ']' && chars.peek().is_some_and(|n| n.is_ascii_alphabetic()) {
            out.push('.');
        }
    }
    out
}

fn positive(key: &str, value: f64) -> Result<(), ConfigError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(ConfigError(format!(
            "{key}: must be a positive number, got {value}"
        )))
    }
}

/// Longest duration a setting may give, in seconds: ten years. Bounded so that turning it
/// into a `Duration` (or milliseconds) cannot overflow and stop the node with a panic.
const MAX_SETTING_SECS: f64 = 10.0 * 365.0 * 24.0 * 3600.0;

fn seconds(key: &str, value: f64) -> Result<(), ConfigError> {
    if value.is_finite() && value > 0.0 && value <= MAX_SETTING_SECS {
        Ok(())
    } else {
        Err(ConfigError(format!(
            "{key}: must be a number of seconds above 0 and at most {MAX_SETTING_SECS} (ten years), got {value}"
        )))
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The host name's first label, made safe for subjects and names.
pub(super) fn host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let label: String = raw
        .trim()
        .split('.')
        .next()
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if label.is_empty() {
        "node".into()
    } else {
        label
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(env: &[(&str, &str)], overrides: Overrides) -> Result<Settings, ConfigError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Settings::load_from(&overrides, env)
    }

    #[test]
    fn embedded_domains_are_the_actor_crates_defaults() {
        let settings = load(&[], Overrides::default()).expect("defaults load");
        let ours = serde_json::to_value(&settings.domains).unwrap();
        let theirs = serde_json::to_value(actors::domain::default_domains()).unwrap();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn flags_override_env_which_overrides_defaults() {
        let s = load(
            &[("MISTER_SMITH__NODE__NAME", "from-env")],
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.node.name, "from-env");
        let flags = Overrides {
            node: Some("from-flag".into()),
            ..Default::default()
        };
        let s = load(&[("MISTER_SMITH__NODE__NAME", "from-env")], flags).unwrap();
        assert_eq!(s.node.name, "from-flag");
    }

    #[test]
    fn env_values_are_typed() {
        let s = load(
            &[("MISTER_SMITH__SUPERVISION__MAX_RESTARTS", "7")],
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.supervision.max_restarts, 7);
        let err = load(
            &[("MISTER_SMITH__SUPERVISION__MAX_RESTARTS", "lots")],
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("max_restarts"), "{err}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = load(&[("MISTER_SMITH__HTTP__BOGUS", "1")], Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn admin_off_loopback_needs_a_token() {
        let off_loopback = Overrides {
            admin: Some("0.0.0.0:8081".into()),
            ..Default::default()
        };
        let err = load(&[], off_loopback.clone()).unwrap_err().to_string();
        assert!(err.contains("admin.token"), "{err}");
        let s = load(&[("MISTER_SMITH__ADMIN__TOKEN", "t")], off_loopback).unwrap();
        assert_eq!(s.admin.token.as_deref(), Some("t"));
    }

    #[test]
    fn array_keys_are_dotted() {
        assert_eq!(
            dotted_keys("bad for key `domains[0]agents[1]role`"),
            "bad for key `domains[0].agents[1].role`"
        );
    }

    #[test]
    fn empty_node_name_means_host_name() {
        let s = load(&[], Overrides::default()).unwrap();
        assert!(valid_name(&s.node.name), "{}", s.node.name);
        let bad = Overrides {
            node: Some("a.b".into()),
            ..Default::default()
        };
        assert!(
            load(&[], bad)
                .unwrap_err()
                .to_string()
                .contains("node.name")
        );
    }
}
