//! LLM providers behind one trait, so the Planner, Worker and Critic ask for a completion
//! without knowing who answers it.
//!
//! [`Llm`] is the handle they hold: it picks the provider from [`LlmConfig`] (`openai`,
//! `anthropic`, `scripted`, or `none`), puts a [`CircuitBreaker`] in front of it, retries
//! transient failures (429, 5xx, timeouts, transport) with backoff that honours
//! `Retry-After`, and records `ms_llm_requests_total{provider,outcome}` and
//! `ms_llm_request_duration_seconds{provider}`. A provider ([`Provider`]) only makes one
//! attempt. With provider `none`, every call fails with [`LlmError::NotConfigured`] and a
//! message that says which settings to set.

pub mod anthropic;
mod anthropic_stream;
pub mod breaker;
pub mod config;
mod http;
mod message;
mod openai;
mod openai_stream;
pub mod scripted;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::secret::Secret;
pub use breaker::{BreakerState, CircuitBreaker, Outcome};
pub use config::{BreakerConfig, LlmConfig, ProviderKind};
pub use message::{
    ChatMessage, Completion, CompletionRequest, DeltaSink, Role, ToolCall, ToolSpec,
};

/// What a call with provider `none` answers.
pub const NOT_CONFIGURED: &str = "no LLM provider is configured: set llm.provider = \"openai\" \
    (with llm.base_url, llm.api_key, llm.model) or \"anthropic\" (with llm.api_key, llm.model) \
    or \"scripted\" (with llm.script = FILE)";

/// Why a completion failed.
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum LlmError {
    /// No provider, or a provider configured badly; the message names the settings.
    #[error("{0}")]
    NotConfigured(String),
    #[error("the LLM provider's circuit is open after repeated failures; retry in {retry_after:?}")]
    CircuitOpen { retry_after: Duration },
    #[error("the LLM provider did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the LLM provider is rate limiting requests{}", after(retry_after))]
    RateLimited { retry_after: Option<Duration> },
    #[error("the LLM provider answered HTTP {status}: {message}")]
    Http { status: u16, message: String },
    #[error("could not reach the LLM provider: {0}")]
    Transport(String),
    #[error("the LLM provider's answer could not be understood: {0}")]
    BadResponse(String),
    #[error("no scripted reply for {0}")]
    NoScriptedReply(String),
}

fn after(retry_after: &Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!(" (retry after {d:?})"),
        None => String::new(),
    }
}

impl LlmError {
    /// Worth another attempt: rate limits, server errors, timeouts, transport errors.
    pub fn is_transient(&self) -> bool {
        match self {
            LlmError::Timeout(_) | LlmError::RateLimited { .. } | LlmError::Transport(_) => true,
            LlmError::Http { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// Counts against the provider in its circuit breaker: every transient failure, and an
    /// answer that cannot be understood. Client errors (4xx) and script misses do not.
    pub fn is_provider_failure(&self) -> bool {
        self.is_transient() || matches!(self, LlmError::BadResponse(_))
    }

    /// The `outcome` label of `ms_llm_requests_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            LlmError::NotConfigured(_) => "not_configured",
            LlmError::CircuitOpen { .. } => "circuit_open",
            LlmError::Timeout(_) => "timeout",
            LlmError::RateLimited { .. } => "rate_limited",
            LlmError::Http { status, .. } if *status >= 500 => "server_error",
            LlmError::Http { .. } => "client_error",
            LlmError::Transport(_) => "transport",
            LlmError::BadResponse(_) => "bad_response",
            LlmError::NoScriptedReply(_) => "no_scripted_reply",
        }
    }
}

/// A failed attempt: the error, and how long the server asked us to wait, if it did.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderError {
    pub error: LlmError,
    pub retry_after: Option<Duration>,
}

impl From<LlmError> for ProviderError {
    fn from(error: LlmError) -> ProviderError {
        let retry_after = match &error {
            LlmError::RateLimited { retry_after } => *retry_after,
            _ => None,
        };
        ProviderError { error, retry_after }
    }
}

/// A boxed, sendable future (the trait is used as `dyn Provider`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One LLM backend. `complete` makes exactly one attempt; [`Llm`] adds retries, timeouts
/// between attempts, the circuit breaker and metrics.
pub trait Provider: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> ProviderKind;
    fn complete<'a>(
        &'a self,
        request: &'a CompletionRequest,
    ) -> BoxFuture<'a, Result<Completion, ProviderError>>;
}

/// The handle to the configured LLM provider. Cheap to clone; clones share the breaker.
#[derive(Clone, Debug)]
pub struct Llm {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    kind: ProviderKind,
    provider: Option<Box<dyn Provider>>,
    breaker: CircuitBreaker,
    max_retries: u32,
    retry_initial: Duration,
    retry_max: Duration,
}

impl Llm {
    /// Builds the configured provider. The config is validated first; a scripted provider's
    /// file is read now. Errors are [`LlmError::NotConfigured`] naming the setting.
    pub fn new(config: &LlmConfig) -> Result<Llm, LlmError> {
        config.validate().map_err(LlmError::NotConfigured)?;
        let http = || {
            http::HttpClient::new(
                Duration::from_secs_f64(config.timeout_secs),
                config.ca_file.as_deref(),
                config.max_response_bytes,
            )
        };
        let model = config.model.as_deref().unwrap_or_default();
        let api_key = match config.provider {
            ProviderKind::Openai | ProviderKind::Anthropic => {
                config.resolved_api_key().map_err(LlmError::NotConfigured)?
            }
            _ => None,
        };
        let api_key = api_key.as_ref().map(Secret::expose);
        let root = config.endpoint_root();
        let provider: Option<Box<dyn Provider>> = match config.provider {
            ProviderKind::None => None,
            ProviderKind::Scripted => {
                // validate() has made sure the path is set.
                let path = config.script.clone().unwrap_or_default();
                Some(Box::new(scripted::Scripted::load(&path)?))
            }
            ProviderKind::Openai => Some(Box::new(openai::OpenAi::new(
                http()?,
                &root,
                api_key,
                model,
            ))),
            ProviderKind::Anthropic => Some(Box::new(anthropic::Anthropic::new(
                http()?,
                &root,
                api_key.unwrap_or_default(),
                model,
            ))),
        };
        Ok(Llm::assemble(config, config.provider, provider))
    }

    /// Wraps a provider of one's own in the configured retries, breaker and metrics; the
    /// provider-specific settings of `config` (provider, base_url, key, model, script) are
    /// not used.
    pub fn with_provider(config: &LlmConfig, provider: Box<dyn Provider>) -> Result<Llm, LlmError> {
        let generic = LlmConfig {
            provider: ProviderKind::None,
            ..config.clone()
        };
        generic.validate().map_err(LlmError::NotConfigured)?;
        Ok(Llm::assemble(config, provider.kind(), Some(provider)))
    }

    fn assemble(
        config: &LlmConfig,
        kind: ProviderKind,
        provider: Option<Box<dyn Provider>>,
    ) -> Llm {
        metrics::counter!("ms_llm_requests_total", "provider" => kind.as_str(), "outcome" => "success")
            .increment(0);
        Llm {
            inner: Arc::new(Inner {
                kind,
                provider,
                breaker: CircuitBreaker::new(&config.breaker),
                max_retries: config.max_retries,
                retry_initial: Duration::from_millis(config.retry_initial_ms),
                retry_max: Duration::from_millis(config.retry_max_ms),
            }),
        }
    }

    pub fn provider(&self) -> ProviderKind {
        self.inner.kind
    }

    /// False for provider `none`.
    pub fn is_configured(&self) -> bool {
        self.inner.provider.is_some()
    }

    /// The circuit breaker's state now.
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.breaker.state(Instant::now())
    }

    /// Asks for a completion: fails fast while the breaker is open, retries transient
    /// failures, and counts one outcome per call in the breaker and the metrics.
    pub async fn complete(&self, request: CompletionRequest) -> Result<Completion, LlmError> {
        let inner = &*self.inner;
        let provider_label = inner.kind.as_str();
        let Some(provider) = &inner.provider else {
            return Err(count(
                provider_label,
                LlmError::NotConfigured(NOT_CONFIGURED.into()),
            ));
        };
        let permit = match inner.breaker.try_acquire(Instant::now()) {
            Ok(permit) => permit,
            Err(retry_after) => {
                return Err(count(provider_label, LlmError::CircuitOpen { retry_after }));
            }
        };
        let started = Instant::now();
        let result = self.attempts(provider.as_ref(), &request).await;
        let outcome = match &result {
            Ok(_) => Outcome::Success,
            Err(e) if e.is_provider_failure() => Outcome::Failure,
            Err(_) => Outcome::Ignored,
        };
        permit.record(outcome, Instant::now());
        metrics::histogram!("ms_llm_request_duration_seconds", "provider" => provider_label)
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(completion) => {
                metrics::counter!("ms_llm_requests_total", "provider" => provider_label, "outcome" => "success")
                    .increment(1);
                Ok(completion)
            }
            Err(e) => Err(count(provider_label, e)),
        }
    }

    async fn attempts(
        &self,
        provider: &dyn Provider,
        request: &CompletionRequest,
    ) -> Result<Completion, LlmError> {
        let inner = &*self.inner;
        let mut retry = 0;
        loop {
            match provider.complete(request).await {
                Ok(completion) => return Ok(completion),
                Err(failed) if failed.error.is_transient() && retry < inner.max_retries => {
                    let delay = http::retry_delay(
                        retry,
                        failed.retry_after,
                        inner.retry_initial,
                        inner.retry_max,
                    );
                    tracing::warn!(
                        provider = inner.kind.as_str(),
                        error = %failed.error,
                        retry = retry + 1,
                        of = inner.max_retries,
                        delay_ms = delay.as_millis() as u64,
                        "LLM request failed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    retry += 1;
                }
                Err(failed) => return Err(failed.error),
            }
        }
    }
}

/// Counts a failed call in `ms_llm_requests_total` and hands the error back.
fn count(provider: &'static str, error: LlmError) -> LlmError {
    metrics::counter!("ms_llm_requests_total", "provider" => provider, "outcome" => error.outcome())
        .increment(1);
    error
}
