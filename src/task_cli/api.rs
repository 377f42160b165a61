//! The node's task API as the `task` commands use it.

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use super::{READ_TIMEOUT, TaskError};
use crate::client::{ClientError, POOL_IDLE, challenge, json_body, refusal, root_cause, text};

// ---------------------------------------------------------------------------------------
// HTTP.

/// A node's task API.
#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) base: Url,
    pub(crate) client: reqwest::Client,
    /// Sent as `Authorization: Bearer` on every request.
    pub(crate) token: Option<String>,
}

/// What the node answered.
pub(crate) struct Answer {
    pub(crate) url: String,
    pub(crate) status: StatusCode,
    pub(crate) retry_after: Option<String>,
    /// The `WWW-Authenticate` challenge of a 401 or 403.
    pub(crate) challenge: Option<String>,
    /// Whether the request carried a bearer token.
    pub(crate) token_sent: bool,
    pub(crate) body: Value,
}

impl Answer {
    pub(crate) fn message(&self) -> String {
        self.body["error"]["message"]
            .as_str()
            .unwrap_or("no message")
            .to_string()
    }

    pub(crate) fn refused(&self) -> ClientError {
        let refusal = refusal(
            self.url.clone(),
            self.status,
            self.challenge.as_deref(),
            &self.body,
            self.token_sent,
        );
        match (refusal, &self.retry_after) {
            (
                ClientError::Refused {
                    url,
                    status,
                    message,
                },
                Some(after),
            ) => ClientError::Refused {
                url,
                status,
                message: format!("{message} (Retry-After: {after} s)"),
            },
            (refusal, _) => refusal,
        }
    }

    pub(crate) fn rejected(&self) -> TaskError {
        let fields = self.body["error"]["fields"]
            .as_array()
            .map(|fields| {
                fields
                    .iter()
                    .map(|f| (text(&f["field"]), text(&f["message"])))
                    .collect()
            })
            .unwrap_or_default();
        TaskError::Rejected {
            url: self.url.clone(),
            message: self.message(),
            fields,
        }
    }
}

impl Api {
    pub(crate) fn new(addr: &str, token: Option<&str>) -> Result<Api, ClientError> {
        let base = if addr.starts_with("http://") || addr.starts_with("https://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let bad = |reason: String| ClientError::Unreachable {
            url: base.clone(),
            reason,
        };
        let base = Url::parse(&base).map_err(|e| bad(format!("not an address: {e}")))?;
        if base.cannot_be_a_base() {
            return Err(bad("not an address".into()));
        }
        // A node is addressed directly; a proxy from the environment would only get in
        // the way.
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_idle_timeout(POOL_IDLE)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(Api {
            base,
            client,
            token: token.map(str::to_string),
        })
    }

    /// The URL of `segments` (each one escaped, so an id cannot change the route).
    pub(crate) fn url(&self, segments: &[&str]) -> Result<Url, ClientError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| ClientError::Unreachable {
                url: self.base.to_string(),
                reason: "not an address".into(),
            })?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    pub(crate) async fn send(
        &self,
        method: Method,
        url: Url,
        query: &[(&str, &str)],
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Answer, ClientError> {
        let shown = url.to_string();
        let mut request = self
            .client
            .request(method, url)
            .query(query)
            .timeout(timeout);
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| ClientError::Unreachable {
            url: shown.clone(),
            reason: root_cause(&e),
        })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let challenge = challenge(response.headers());
        let body = json_body(response, &shown).await?;
        Ok(Answer {
            url: shown,
            status,
            retry_after,
            challenge,
            token_sent: self.token.is_some(),
            body,
        })
    }

    /// `GET /api/v1/tasks/{id}`.
    pub(crate) async fn task(&self, id: &str) -> Result<Value, ClientError> {
        let url = self.url(&["api", "v1", "tasks", id])?;
        let answer = self.send(Method::GET, url, &[], None, READ_TIMEOUT).await?;
        if answer.status != StatusCode::OK {
            return Err(answer.refused());
        }
        Ok(answer.body)
    }
}
