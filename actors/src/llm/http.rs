//! What the HTTP providers share: one POST of a JSON body under a per-attempt timeout, the
//! mapping of HTTP answers to [`LlmError`]s, `Retry-After` parsing and retry backoff.
//!
//! Kept apart from the wire formats so openai and anthropic differ only in their JSON.

use std::time::Duration;

use rand::Rng;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Completion, LlmError, ProviderError};

/// Longest `Retry-After` we are willing to wait between two attempts.
pub(crate) const RETRY_AFTER_CAP: Duration = Duration::from_secs(60);

/// How much of an unparseable body is quoted in an error message.
const QUOTE_LIMIT: usize = 300;

/// A provider's HTTP client and per-attempt timeout.
#[derive(Debug, Clone)]
pub(crate) struct HttpClient {
    client: reqwest::Client,
    timeout: Duration,
    /// Largest answer body read (`llm.max_response_bytes`); a bigger one is a
    /// [`LlmError::BadResponse`].
    max_body: usize,
}

/// An answer that arrived in full: status, `Retry-After` if any, body.
pub(crate) struct Answer {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

impl HttpClient {
    /// rustls with the system's roots plus `ca_file` (`llm.ca_file`).
    pub fn new(
        timeout: Duration,
        ca_file: Option<&std::path::Path>,
        max_body: usize,
    ) -> Result<HttpClient, LlmError> {
        let (tls, _roots) = crate::tls::client_config(ca_file, "llm.ca_file")
            .map_err(|e| LlmError::NotConfigured(e.to_string()))?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .build()
            .map_err(|e| LlmError::NotConfigured(format!("llm: cannot build HTTP client: {e}")))?;
        Ok(HttpClient {
            client,
            timeout,
            max_body,
        })
    }

    /// POSTs `body` as JSON; the whole exchange (connect, send, read) gets one timeout.
    pub async fn post_json(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: &impl Serialize,
    ) -> Result<Answer, LlmError> {
        let mut request = self.client.post(url).json(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let exchange = async {
            let mut response = request.send().await.map_err(transport)?;
            let status = response.status().as_u16();
            let retry_after = parse_retry_after(response.headers());
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(transport)? {
                if body.len() + chunk.len() > self.max_body {
                    let limit = self.max_body;
                    return Err(LlmError::BadResponse(format!(
                        "answer larger than {limit} bytes (llm.max_response_bytes) (HTTP {status})"
                    )));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Answer {
                status,
                retry_after,
                body,
            })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(answer) => answer,
            Err(_) => Err(LlmError::Timeout(self.timeout)),
        }
    }
}

/// A provider's streamed answer, folded into a completion event by event.
pub(crate) trait Fold: Send {
    /// Folds in one event's `data`.
    fn feed(&mut self, data: &str) -> Result<(), LlmError>;
    /// The whole answer, once the stream has ended (`model` if it named none).
    fn finish(self, model: &str) -> Result<Completion, LlmError>;
}

impl HttpClient {
    /// POSTs `body` asking for a Server-Sent Events stream and folds each event's `data`
    /// into `fold` as it arrives: the completion. An answer that is not an event stream
    /// (an error, or a provider that ignores `stream`) is read whole instead, and handed
    /// back (`Err`) to be read as [`Self::post_json`]'s. One timeout for the whole
    /// exchange, and `max_body` for all of it, as for [`Self::post_json`].
    pub async fn post_streamed(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: &impl Serialize,
        mut fold: impl Fold,
        model: &str,
    ) -> Result<Result<Completion, Answer>, LlmError> {
        let mut request = self.client.post(url).json(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let exchange = async {
            let mut response = request.send().await.map_err(transport)?;
            let status = response.status().as_u16();
            let retry_after = parse_retry_after(response.headers());
            let is_stream = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/event-stream"));
            let mut read = 0;
            let mut buffer: Vec<u8> = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(transport)? {
                read += chunk.len();
                if read > self.max_body {
                    let limit = self.max_body;
                    return Err(LlmError::BadResponse(format!(
                        "answer larger than {limit} bytes (llm.max_response_bytes) (HTTP {status})"
                    )));
                }
                buffer.extend_from_slice(&chunk);
                if !(is_stream && (200..300).contains(&status)) {
                    continue;
                }
                // Whole lines only: an event's line may be split across chunks.
                while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=end).collect();
                    let line = String::from_utf8_lossy(&line);
                    if let Some(data) = line.trim_end().strip_prefix("data:") {
                        fold.feed(data.trim_start())?;
                    }
                }
            }
            if is_stream && (200..300).contains(&status) {
                return fold.finish(model).map(Ok);
            }
            Ok(Err(Answer {
                status,
                retry_after,
                body: buffer,
            }))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(answer) => answer,
            Err(_) => Err(LlmError::Timeout(self.timeout)),
        }
    }
}

impl Answer {
    /// A 2xx body as `T`, or the error this answer stands for. `error_message` pulls the
    /// provider's own message out of an error body.
    pub fn into_result<T: DeserializeOwned>(
        self,
        error_message: impl Fn(&[u8]) -> Option<String>,
    ) -> Result<T, ProviderError> {
        if (200..300).contains(&self.status) {
            return serde_json::from_slice(&self.body).map_err(|e| {
                LlmError::BadResponse(format!("{e} in body {}", quote(&self.body))).into()
            });
        }
        let error = if self.status == 429 {
            LlmError::RateLimited {
                retry_after: self.retry_after,
            }
        } else {
            let message = error_message(&self.body).unwrap_or_else(|| quote(&self.body));
            LlmError::Http {
                status: self.status,
                message,
            }
        };
        Err(ProviderError {
            error,
            retry_after: self.retry_after,
        })
    }
}

/// The start of a body, for error messages.
pub(crate) fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut end = text.len().min(QUOTE_LIMIT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let ellipsis = if end < text.len() { "…" } else { "" };
    format!("{:?}{ellipsis}", &text[..end])
}

fn transport(e: reqwest::Error) -> LlmError {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    LlmError::Transport(message)
}

/// `Retry-After` in seconds (fractions accepted). HTTP dates are not understood: they yield
/// `None`, and the caller falls back to its own backoff.
pub(crate) fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let secs: f64 = value.parse().ok()?;
    if !(secs.is_finite() && secs >= 0.0) {
        return None;
    }
    Some(Duration::from_secs_f64(
        secs.min(RETRY_AFTER_CAP.as_secs_f64()),
    ))
}

/// How long to wait before retry number `retry` (0 for the first retry): the server's
/// `Retry-After` when it gave one (capped at [`RETRY_AFTER_CAP`]), else exponential backoff
/// from `initial` doubling up to `max`, with "equal jitter" (half fixed, half random).
pub(crate) fn retry_delay(
    retry: u32,
    server_hint: Option<Duration>,
    initial: Duration,
    max: Duration,
) -> Duration {
    if let Some(hint) = server_hint {
        return hint.min(RETRY_AFTER_CAP);
    }
    let factor = 2u32.saturating_pow(retry.min(30));
    let delay = initial.saturating_mul(factor).min(max);
    let half = delay / 2;
    let jitter_nanos = rand::rng().random_range(0..=half.as_nanos() as u64);
    half + Duration::from_nanos(jitter_nanos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn retry_after_is_seconds_capped_at_a_minute() {
        assert_eq!(
            parse_retry_after(&headers("1")),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            parse_retry_after(&headers(" 0.5 ")),
            Some(Duration::from_millis(500))
        );
        assert_eq!(parse_retry_after(&headers("86400")), Some(RETRY_AFTER_CAP));
        assert_eq!(parse_retry_after(&headers("-1")), None);
        assert_eq!(
            parse_retry_after(&headers("Wed, 21 Oct 2015 07:28:00 GMT")),
            None
        );
        assert_eq!(parse_retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn backoff_doubles_within_bounds_and_jitters() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_millis(1000));
        for retry in 0..40 {
            let full = (initial * 2u32.saturating_pow(retry.min(30))).min(max);
            let d = retry_delay(retry, None, initial, max);
            assert!(
                d >= full / 2 && d <= full,
                "retry {retry}: {d:?} vs {full:?}"
            );
        }
        let hint = Some(Duration::from_secs(2));
        assert_eq!(retry_delay(0, hint, initial, max), Duration::from_secs(2));
        let huge = Some(Duration::from_secs(3600));
        assert_eq!(retry_delay(0, huge, initial, max), RETRY_AFTER_CAP);
    }

    #[test]
    fn quotes_are_bounded_and_utf8_safe() {
        let body = "é".repeat(400);
        let q = quote(body.as_bytes());
        assert!(q.ends_with('…'));
        assert!(q.len() < 320);
        assert_eq!(quote(b"ok"), "\"ok\"");
    }
}
