//! The `[llm]` settings: which provider, where it is, and how patient to be with it.
//!
//! The node reads this section from its layered configuration; [`LlmConfig::validate`]
//! names the offending key (`llm.…`) so a bad setting stops the node with a message an
//! operator can act on, instead of surfacing later as a failed task.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// Which LLM provider answers completions.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// No provider: tasks that need planning fail with a message saying how to configure one.
    #[default]
    None,
    /// Deterministic replies read from a JSON file (`llm.script`); no network.
    Scripted,
    /// Any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama, llama.cpp).
    Openai,
    /// Anthropic's messages API.
    Anthropic,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::None => "none",
            ProviderKind::Scripted => "scripted",
            ProviderKind::Openai => "openai",
            ProviderKind::Anthropic => "anthropic",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Settings of the `[llm]` section.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LlmConfig {
    /// `none` (default), `scripted`, `openai` or `anthropic`.
    pub provider: ProviderKind,
    /// Endpoint root. openai: default `https://api.openai.com/v1` (requests go to
    /// `{base_url}/chat/completions`); anthropic: default `https://api.anthropic.com`
    /// (requests go to `{base_url}/v1/messages`).
    pub base_url: Option<String>,
    /// Secret sent as `Authorization: Bearer` (openai) or `x-api-key` (anthropic). Also
    /// from the environment (`MISTER_SMITH__LLM__API_KEY`) or a file (`api_key_file`). Printed as
    /// `[redacted]`.
    pub api_key: Option<Secret>,
    /// A file holding the API key (surrounding whitespace ignored); read at start. Used
    /// when `api_key` is not set.
    pub api_key_file: Option<PathBuf>,
    /// A PEM file of extra CA certificates trusted for https, besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Largest answer body read, in bytes; a bigger one fails the call. Default 16 MiB.
    pub max_response_bytes: usize,
    /// Model name sent with every request; required for openai and anthropic.
    pub model: Option<String>,
    /// The scripted provider's reply file (JSON, see [`super::scripted`]).
    pub script: Option<PathBuf>,
    /// Time allowed for one HTTP attempt (sending and reading the whole answer). Default 60.
    pub timeout_secs: f64,
    /// Retries after the first attempt on 429, 5xx, timeouts and transport errors. Default 3.
    pub max_retries: u32,
    /// First retry delay in milliseconds; doubles per retry, with jitter. Default 200.
    pub retry_initial_ms: u64,
    /// Largest computed retry delay in milliseconds. Default 5000. A server's
    /// `Retry-After` is honoured above this, up to 60 s.
    pub retry_max_ms: u64,
    /// The circuit breaker in front of the provider.
    pub breaker: BreakerConfig,
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            provider: ProviderKind::None,
            base_url: None,
            api_key: None,
            api_key_file: None,
            ca_file: None,
            max_response_bytes: 16 << 20,
            model: None,
            script: None,
            timeout_secs: 60.0,
            max_retries: 3,
            retry_initial_ms: 200,
            retry_max_ms: 5_000,
            breaker: BreakerConfig::default(),
        }
    }
}

/// Settings of the circuit breaker (`[llm.breaker]`).
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Outcomes older than this are forgotten. Default 30.
    pub window_secs: f64,
    /// The breaker never opens on fewer outcomes than this in the window. Default 5.
    pub min_samples: u32,
    /// Opens when failures / outcomes in the window reach this (0 < ratio ≤ 1). Default 0.5.
    pub failure_ratio: f64,
    /// How long it stays open (failing fast) before letting probes through. Default 15.
    pub open_secs: f64,
    /// How many calls may probe a half-open provider at the same time. Default 1.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            window_secs: 30.0,
            min_samples: 5,
            failure_ratio: 0.5,
            open_secs: 15.0,
            half_open_probes: 1,
        }
    }
}

fn positive_secs(key: &str, value: f64) -> Result<(), String> {
    // Also rejects NaN, infinities and values `Duration` cannot hold.
    if value > 0.0 && value <= 1.0e9 {
        Ok(())
    } else {
        Err(format!(
            "{key}: must be a positive number of seconds, got {value}"
        ))
    }
}

impl LlmConfig {
    /// Checks the settings together; the error names the key (`llm.…`) and what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        positive_secs("llm.timeout_secs", self.timeout_secs)?;
        if self.max_response_bytes == 0 || self.max_response_bytes > 1 << 30 {
            return Err(format!(
                "llm.max_response_bytes: must be between 1 and 1073741824, got {}",
                self.max_response_bytes
            ));
        }
        if self.retry_initial_ms > self.retry_max_ms {
            return Err(format!(
                "llm.retry_initial_ms: must not exceed llm.retry_max_ms ({} > {})",
                self.retry_initial_ms, self.retry_max_ms
            ));
        }
        let b = &self.breaker;
        positive_secs("llm.breaker.window_secs", b.window_secs)?;
        positive_secs("llm.breaker.open_secs", b.open_secs)?;
        if b.min_samples == 0 {
            return Err("llm.breaker.min_samples: must be at least 1".into());
        }
        if !(b.failure_ratio > 0.0 && b.failure_ratio <= 1.0) {
            return Err(format!(
                "llm.breaker.failure_ratio: must be in (0, 1], got {}",
                b.failure_ratio
            ));
        }
        if b.half_open_probes == 0 {
            return Err("llm.breaker.half_open_probes: must be at least 1".into());
        }
        let provider = self.provider;
        match provider {
            ProviderKind::None => Ok(()),
            ProviderKind::Scripted => match &self.script {
                Some(_) => Ok(()),
                None => {
                    Err("llm.script: required for provider scripted (a JSON reply file)".into())
                }
            },
            ProviderKind::Openai | ProviderKind::Anthropic => {
                if self.model.as_deref().is_none_or(str::is_empty) {
                    return Err(format!("llm.model: required for provider {provider}"));
                }
                if let Some(url) = &self.base_url {
                    check_url(url)?;
                }
                let key_missing = self.api_key.as_ref().is_none_or(Secret::is_empty)
                    && self.api_key_file.is_none();
                // A self-hosted OpenAI-compatible server (base_url set) often needs no key.
                let key_needed = provider == ProviderKind::Anthropic || self.base_url.is_none();
                if key_missing && key_needed {
                    return Err(format!("llm.api_key: required for provider {provider}"));
                }
                Ok(())
            }
        }
    }

    /// The API key in effect: `api_key`, else the content of `api_key_file` (trimmed).
    pub fn resolved_api_key(&self) -> Result<Option<Secret>, String> {
        if let Some(key) = self.api_key.as_ref().filter(|k| !k.is_empty()) {
            return Ok(Some(key.clone()));
        }
        let Some(path) = &self.api_key_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("llm.api_key_file: cannot read {}: {e}", path.display()))?;
        let key = text.trim();
        if key.is_empty() {
            return Err(format!("llm.api_key_file: {} is empty", path.display()));
        }
        Ok(Some(Secret::new(key)))
    }

    /// The endpoint root in effect: `base_url` without a trailing `/`, or the provider's default.
    pub fn endpoint_root(&self) -> String {
        let default = match self.provider {
            ProviderKind::Anthropic => "https://api.anthropic.com",
            _ => "https://api.openai.com/v1",
        };
        self.base_url
            .as_deref()
            .unwrap_or(default)
            .trim_end_matches('/')
            .to_string()
    }
}

fn check_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.starts_with('/') => Ok(()),
        _ => Err(format!(
            "llm.base_url: must be an http:// or https:// URL with a host, got {url:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openai() -> LlmConfig {
        LlmConfig {
            provider: ProviderKind::Openai,
            base_url: Some("http://127.0.0.1:9/v1".into()),
            api_key: Some("k".into()),
            model: Some("m".into()),
            ..LlmConfig::default()
        }
    }

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let c = LlmConfig::default();
        assert_eq!(c.provider, ProviderKind::None);
        assert_eq!((c.timeout_secs, c.max_retries), (60.0, 3));
        assert_eq!((c.retry_initial_ms, c.retry_max_ms), (200, 5_000));
        assert_eq!(c.breaker.min_samples, 5);
        assert_eq!(c.breaker.half_open_probes, 1);
        c.validate().unwrap();
        openai().validate().unwrap();
    }

    #[test]
    fn errors_name_the_key() {
        let mut c = openai();
        c.model = None;
        assert!(c.validate().unwrap_err().starts_with("llm.model:"));
        let mut c = openai();
        c.provider = ProviderKind::Anthropic;
        c.api_key = None;
        let e = c.validate().unwrap_err();
        assert_eq!(e, "llm.api_key: required for provider anthropic");
        let mut c = openai();
        c.base_url = None;
        c.api_key = None;
        assert_eq!(
            c.validate().unwrap_err(),
            "llm.api_key: required for provider openai"
        );
        let c = LlmConfig {
            provider: ProviderKind::Scripted,
            ..LlmConfig::default()
        };
        assert!(c.validate().unwrap_err().starts_with("llm.script:"));
        let mut c = openai();
        c.breaker.failure_ratio = 0.0;
        assert!(
            c.validate()
                .unwrap_err()
                .starts_with("llm.breaker.failure_ratio:")
        );
        let mut c = openai();
        c.timeout_secs = f64::NAN;
        assert!(c.validate().unwrap_err().starts_with("llm.timeout_secs:"));
        let mut c = openai();
        c.base_url = Some("ftp://x".into());
        assert!(c.validate().unwrap_err().starts_with("llm.base_url:"));
    }

    #[test]
    fn https_is_accepted_and_the_key_is_redacted() {
        let mut c = openai();
        c.base_url = Some("https://api.example.com/v1".into());
        c.api_key = Some("sk-secret-value".into());
        c.validate().unwrap();
        assert!(!format!("{c:?}").contains("sk-secret-value"));
    }

    #[test]
    fn api_key_file_is_read_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "sk-from-file\n").unwrap();
        let mut c = openai();
        c.api_key = None;
        c.api_key_file = Some(path);
        assert_eq!(
            c.resolved_api_key().unwrap().unwrap().expose(),
            "sk-from-file"
        );
        c.api_key_file = Some(dir.path().join("missing"));
        assert!(
            c.resolved_api_key()
                .unwrap_err()
                .starts_with("llm.api_key_file:")
        );
    }

    #[test]
    fn deserializes_snake_case_and_rejects_unknown_keys() {
        let c: LlmConfig = serde_json::from_str(
            r#"{"provider":"anthropic","model":"x","breaker":{"min_samples":2}}"#,
        )
        .unwrap();
        assert_eq!(c.provider, ProviderKind::Anthropic);
        assert_eq!(c.breaker.min_samples, 2);
        assert_eq!(c.breaker.open_secs, 15.0);
        assert!(serde_json::from_str::<LlmConfig>(r#"{"provder":"openai"}"#).is_err());
        assert!(serde_json::from_str::<LlmConfig>(r#"{"provider":"gpt"}"#).is_err());
    }
}
