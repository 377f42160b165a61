//! `http`: one HTTP request to an allowed host. Steps fetch and post data with it without
//! being able to reach arbitrary hosts: the URL's host must match `tools.http.allow_hosts`,
//! and redirects are followed here, one by one, so that every target host is checked again
//! (a redirect to a host not on the list is denied, not followed). A response of any status
//! is a result (`status` tells it) for the Critic to judge. The body is streamed and reading
//! stops once it passes the cap.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;

use super::net_guard::{Guard, GuardedResolver, Refused};
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

/// What every call shares: the TLS settings (system roots plus `tools.http.ca_file`) and
/// the address guard.
pub(super) struct HttpTool {
    tls: rustls::ClientConfig,
    guard: Arc<Guard>,
}

impl HttpTool {
    pub(super) fn new(config: &ToolsConfig) -> Result<HttpTool, String> {
        let (tls, roots) =
            crate::tls::client_config(config.http.ca_file.as_deref(), "tools.http.ca_file")
                .map_err(|e| e.to_string())?;
        if roots == 0 {
            tracing::warn!(
                "tools.http: no CA certificate found (install ca-certificates or set tools.http.ca_file); https requests will fail"
            );
        }
        let guard = Guard::new(config.http.cidrs()?, &config.http.node_listeners);
        Ok(HttpTool {
            tls,
            guard: Arc::new(guard),
        })
    }

    /// A client for one hop to `port`: no automatic redirects (they are checked here), no
    /// proxy from the environment, and a resolver that only yields allowed addresses.
    fn client(&self, port: u16) -> Result<reqwest::Client, ToolError> {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .tls_backend_preconfigured(self.tls.clone())
            .dns_resolver(Arc::new(GuardedResolver {
                guard: self.guard.clone(),
                port,
            }))
            .build()
            .map_err(|e| ToolError::Failed(format!("http: cannot build the HTTP client: {e}")))
    }
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
    if config.http.allow_hosts.is_empty() {
        return Err(ToolError::Denied(
            "http: tools.http.allow_hosts is empty, so the http tool refuses every request; list the hosts steps may call".into(),
        ));
    }
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
        if name == header::HOST {
            return Err(ToolError::InvalidArgs(
                "http: `headers` may not set Host (the host is the one in `url`)".into(),
            ));
        }
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

/// The port of `url` and, when its host is an IP literal (which no resolver sees), the
/// guard's verdict on it.
fn check_address(guard: &Guard, url: &Url) -> Result<u16, ToolError> {
    let port = url.port_or_known_default().unwrap_or(80);
    let ip = url
        .host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
        .and_then(|h| h.parse::<IpAddr>().ok());
    if let Some(ip) = ip {
        guard
            .check(SocketAddr::new(ip, port))
            .map_err(|refused| ToolError::Denied(refused.0))?;
    }
    Ok(port)
}

/// The guard's refusal when it is what failed the request, else the error with its causes.
fn send_error(method: &Method, url: &Url, e: &reqwest::Error) -> ToolError {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<Refused>() {
            return ToolError::Denied(refused.0.clone());
        }
        source = cause.source();
    }
    ToolError::Failed(format!("http: {method} {url}: {}", describe(e)))
}

pub(super) async fn run(
    config: &ToolsConfig,
    tool: &HttpTool,
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
        let port = check_address(&tool.guard, &url)?;
        let client = tool.client(port)?;
        let mut request = client
            .request(method.clone(), url.clone())
            .headers(headers.clone());
        if let Some(body) = &body {
            request = request.body(body.clone());
        }
        let response = request
            .send()
            .await
            .map_err(|e| send_error(&method, &url, &e))?;
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
