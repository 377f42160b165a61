//! `http`: one HTTP request to an allowed host. Steps fetch and post data with it without
//! being able to reach arbitrary hosts: the URL's host must match `tools.http.allow_hosts`,
//! and redirects are followed here, one by one, so that every target host is checked again
//! (a redirect to a host not on the list is denied, not followed). A response of any status
//! is a result (`status` tells it) for the Critic to judge. The body is streamed and reading
//! stops once it passes the cap.

use std::collections::BTreeMap;

use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;

use super::output::{Capped, parse_json};
use super::{ToolError, ToolOutput, ToolsConfig, parse_args};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    url: String,
    method: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<serde_json::Value>,
}

struct Request {
    url: Url,
    method: Method,
    headers: HeaderMap,
    body: Option<Vec<u8>>,
}

/// The client every call shares: no automatic redirects (they are checked here) and no
/// proxy from the environment (requests go where the allowlist says).
pub(super) fn client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .map_err(|e| format!("tools.http: cannot build the HTTP client: {e}"))
}

/// Checks that `url` is http(s) and its host is allowed; `what` says where it came from.
fn check_url(config: &ToolsConfig, url: &Url, what: &str) -> Result<(), ToolError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ToolError::InvalidArgs(format!(
            "http: {what} {url} must use http or https"
        )));
    }
    let Some(host) = url.host_str() else {
        return Err(ToolError::InvalidArgs(format!(
            "http: {what} {url} has no host"
        )));
    };
    if !config.http.allows_host(host) {
        return Err(ToolError::Denied(format!(
            "http: {what} host {host:?} is not in tools.http.allow_hosts {:?}",
            config.http.allow_hosts
        )));
    }
    Ok(())
}

fn parse(config: &ToolsConfig, args: &serde_json::Value) -> Result<Request, ToolError> {
    let args: Args = parse_args("http", args)?;
    let url = Url::parse(&args.url).map_err(|e| {
        ToolError::InvalidArgs(format!("http: `url` {:?} is not a URL: {e}", args.url))
    })?;
    check_url(config, &url, "`url`")?;
    let method = args.method.as_deref().unwrap_or("GET").to_ascii_uppercase();
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| ToolError::InvalidArgs(format!("http: `method` {method:?} is not valid")))?;
    let mut headers = HeaderMap::new();
    for (name, value) in &args.headers {
        let bad = || ToolError::InvalidArgs(format!("http: `headers` entry {name:?} is not valid"));
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
        let value = HeaderValue::from_str(value).map_err(|_| bad())?;
        headers.insert(name, value);
    }
    let body = match args.body {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(text)) => Some(text.into_bytes()),
        Some(json) => {
            headers
                .entry(header::CONTENT_TYPE)
                .or_insert(HeaderValue::from_static("application/json"));
            Some(json.to_string().into_bytes())
        }
    };
    Ok(Request {
        url,
        method,
        headers,
        body,
    })
}

pub(super) fn validate(config: &ToolsConfig, args: &serde_json::Value) -> Result<(), ToolError> {
    parse(config, args).map(|_| ())
}

/// An error with its causes, which reqwest keeps out of its own message.
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

pub(super) async fn run(
    config: &ToolsConfig,
    client: &reqwest::Client,
    args: &serde_json::Value,
) -> Result<ToolOutput, ToolError> {
    let Request {
        mut url,
        mut method,
        mut headers,
        mut body,
    } = parse(config, args)?;
    let mut redirects = 0;
    loop {
        let mut request = client
            .request(method.clone(), url.clone())
            .headers(headers.clone());
        if let Some(body) = &body {
            request = request.body(body.clone());
        }
        let response = request
            .send()
            .await
            .map_err(|e| ToolError::Failed(format!("http: {method} {url}: {}", describe(&e))))?;
        let status = response.status();
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .map(str::to_owned);
        let Some(location) = location.filter(|_| status.is_redirection()) else {
            return read_body(response, config.max_output_bytes).await;
        };
        if redirects == config.http.max_redirects {
            return Err(ToolError::Failed(format!(
                "http: more than {redirects} redirects (tools.http.max_redirects), last to {location}"
            )));
        }
        redirects += 1;
        let next = url.join(&location).map_err(|e| {
            ToolError::Failed(format!("http: redirect to {location:?} is not a URL: {e}"))
        })?;
        check_url(config, &next, "redirect to").map_err(|e| match e {
            // The step's args were fine; the server sent something bad.
            ToolError::InvalidArgs(reason) => ToolError::Failed(reason),
            other => other,
        })?;
        let see_other = status == StatusCode::SEE_OTHER
            || (method == Method::POST
                && matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND));
        if see_other {
            method = Method::GET;
            body = None;
            headers.remove(header::CONTENT_TYPE);
            headers.remove(header::CONTENT_LENGTH);
        }
        if next.origin() != url.origin() {
            // Credentials meant for one origin are not sent to another.
            headers.remove(header::AUTHORIZATION);
            headers.remove(header::COOKIE);
            headers.remove(header::PROXY_AUTHORIZATION);
        }
        url = next;
    }
}

/// Reads the body up to the cap; stops reading once past it.
async fn read_body(mut response: reqwest::Response, cap: usize) -> Result<ToolOutput, ToolError> {
    let status = response.status().as_u16();
    let announced = response.content_length().unwrap_or(0);
    let mut body = Capped::new(cap);
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| ToolError::Failed(format!("http: reading the body: {}", describe(&e))))?
    {
        body.push(&chunk);
        if body.truncated() {
            break;
        }
    }
    let truncated = body.truncated();
    let text = body.text();
    Ok(ToolOutput {
        json: parse_json(&text, truncated),
        text,
        status: Some(status),
        truncated,
        bytes: body.bytes().max(announced),
        ..ToolOutput::default()
    })
}
