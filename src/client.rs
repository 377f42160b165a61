//! The client commands (`actors`, `agents`, `cluster`): ask a running node over HTTP and
//! print the answer for people (or as JSON with `--json`).

use std::fmt::Write as _;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::cli::{ActorsArgs, AgentsArgs, ClusterArgs};

/// A failure a person can act on, in one line.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the node at {url}: {reason} (is `mister-smith run` listening there?)")]
    Unreachable { url: String, reason: String },
    /// 401 to a request sent without a token.
    #[error(
        "the node at {url} needs a bearer token (401): pass --token or set MISTER_SMITH_TOKEN \
         (`mister-smith token issue` mints one)"
    )]
    NoToken { url: String },
    /// 401 to a request with a token: expired, badly signed, for another issuer…
    #[error("the node at {url} refused the token (401): {reason}")]
    BadToken { url: String, reason: String },
    /// 403: the token is valid but does not grant what the route needs.
    #[error(
        "the node at {url} refused the request (403): the token lacks scope {scope} \
         (mint one with `mister-smith token issue --scope {scope}`)"
    )]
    MissingScope { url: String, scope: String },
    #[error("the node at {url} answered {status}: {message}")]
    Refused {
        url: String,
        status: u16,
        message: String,
    },
    #[error("the node at {url} sent an unreadable answer: {reason}")]
    BadAnswer { url: String, reason: String },
}

/// What a node's refusal (`status`, its `WWW-Authenticate` challenge, its JSON `body`)
/// means for whoever ran the command: 401 and 403 say what is wrong with the token.
pub(crate) fn refusal(
    url: String,
    status: StatusCode,
    challenge: Option<&str>,
    body: &Value,
    token_sent: bool,
) -> ClientError {
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or("no message")
        .to_string();
    match status {
        StatusCode::UNAUTHORIZED if token_sent => ClientError::BadToken {
            url,
            reason: message,
        },
        StatusCode::UNAUTHORIZED => ClientError::NoToken { url },
        StatusCode::FORBIDDEN => match challenge.and_then(challenged_scope) {
            Some(scope) => ClientError::MissingScope { url, scope },
            None => ClientError::Refused {
                url,
                status: status.as_u16(),
                message,
            },
        },
        _ => ClientError::Refused {
            url,
            status: status.as_u16(),
            message,
        },
    }
}

/// The scope an `insufficient_scope` challenge names (RFC 6750 §3).
fn challenged_scope(challenge: &str) -> Option<String> {
    challenge
        .strip_prefix("Bearer ")?
        .split(',')
        .find_map(|param| param.trim().strip_prefix("scope="))
        .map(|scope| scope.trim_matches('"').to_string())
        .filter(|scope| !scope.is_empty())
}

/// The `WWW-Authenticate` header of an answer, if it has one.
pub(crate) fn challenge(headers: &reqwest::header::HeaderMap) -> Option<String> {
    headers
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// How long the command clients keep an idle connection: a node closes a keep-alive
/// connection idle for `http.header_timeout_secs` (10 s by default), and a client that
/// drops its own sooner never sends a request on one the node is closing.
pub(crate) const POOL_IDLE: Duration = Duration::from_secs(5);

/// Whether an answer's status is a refusal of its credentials, whose body may be anything.
pub(crate) fn auth_refusal(status: StatusCode) -> bool {
    status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN
}

/// An answer's JSON body; a refusal of credentials may carry none (`Null` then).
pub(crate) async fn json_body(
    response: reqwest::Response,
    url: &str,
) -> Result<Value, ClientError> {
    let status = response.status();
    match response.json().await {
        Ok(body) => Ok(body),
        Err(_) if auth_refusal(status) => Ok(Value::Null),
        Err(e) => Err(ClientError::BadAnswer {
            url: url.to_string(),
            reason: format!("{status}: {}", root_cause(&e)),
        }),
    }
}

pub async fn actors(args: &ActorsArgs) -> Result<String, ClientError> {
    let query: Vec<(&str, &str)> = args.of_node.iter().map(|n| ("node", n.as_str())).collect();
    let t = &args.target;
    let body = get(&t.admin, "/admin/actors", &query, t.token()).await?;
    if args.json {
        return Ok(pretty(&body));
    }
    let mut out = format!("node {}\n", body["node"].as_str().unwrap_or("?"));
    draw_actor(&mut out, &body["root"], "", "", true);
    Ok(out)
}

pub async fn agents(args: &AgentsArgs) -> Result<String, ClientError> {
    let filters: Vec<(&str, &str)> = [
        ("capability", &args.capability),
        ("role", &args.role),
        ("domain", &args.domain),
        ("state", &args.state),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
    .collect();
    let body = get(
        &args.http,
        "/api/v1/agents",
        &filters,
        args.bearer.token.as_deref(),
    )
    .await?;
    if args.json {
        return Ok(pretty(&body));
    }
    let mut rows = vec![
        [
            "NAME",
            "DOMAIN",
            "ROLE",
            "STATE",
            "HEALTHY",
            "LOAD",
            "ACTOR",
            "CAPABILITIES",
        ]
        .map(String::from),
    ];
    for a in body["agents"].as_array().into_iter().flatten() {
        let caps: Vec<&str> = a["capabilities"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        rows.push([
            text(&a["name"]),
            text(&a["domain"]),
            text(&a["role"]),
            text(&a["state"]),
            text(&a["healthy"]),
            text(&a["load"]),
            text(&a["actor_id"]),
            caps.join(","),
        ]);
    }
    Ok(table(&rows))
}

pub async fn cluster(args: &ClusterArgs) -> Result<String, ClientError> {
    let t = &args.target;
    let body = get(&t.admin, "/admin/cluster", &[], t.token()).await?;
    if args.json {
        return Ok(pretty(&body));
    }
    let mut out = format!(
        "cluster {}  (asked {}, bus {}, {} tasks taken over)\n",
        text(&body["cluster"]),
        text(&body["node"]),
        text(&body["bus"]),
        text(&body["tasks_taken_over"]),
    );
    let mut rows = vec![
        [
            "NODE",
            "STATUS",
            "LINK",
            "HEARTBEAT",
            "DETECTOR",
            "RUNNING",
            "QUEUED",
            "CLUSTER",
            "HTTP",
        ]
        .map(String::from),
    ];
    for m in body["members"].as_array().into_iter().flatten() {
        let kind = if m["detector_kind"] == "phi" {
            "phi "
        } else {
            ""
        };
        rows.push([
            text(&m["node"]),
            text(&m["status"]),
            text(&m["link"]),
            format!("{} ms ago", text(&m["last_heartbeat_ms"])),
            format!("{kind}{:.1}", m["detector"].as_f64().unwrap_or_default()),
            text(&m["load"]["running"]),
            text(&m["load"]["queued"]),
            text(&m["cluster_addr"]),
            text(&m["http"]),
        ]);
    }
    out.push_str(&table(&rows));
    Ok(out)
}

fn base_url(addr: &str) -> String {
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.trim_end_matches('/').to_string()
    } else {
        format!("http://{addr}")
    }
}

async fn get(
    addr: &str,
    path: &str,
    query: &[(&str, &str)],
    token: Option<&str>,
) -> Result<Value, ClientError> {
    let url = format!("{}{path}", base_url(addr));
    // A node is addressed directly; a proxy from the environment would only get in the way.
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_idle_timeout(POOL_IDLE)
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| ClientError::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    let mut request = client.get(&url).query(query);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|e| ClientError::Unreachable {
        url: url.clone(),
        reason: root_cause(&e),
    })?;
    let status = response.status();
    let challenge = challenge(response.headers());
    let body = json_body(response, &url).await?;
    if !status.is_success() {
        return Err(refusal(
            url,
            status,
            challenge.as_deref(),
            &body,
            token.is_some(),
        ));
    }
    Ok(body)
}

/// reqwest's top-level message is generic; the innermost cause says what happened.
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

pub(crate) fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn draw_actor(out: &mut String, node: &Value, lead: &str, child_lead: &str, _last: bool) {
    let kind = node["kind"].as_str().unwrap_or("?");
    let role = node["role"].as_str().unwrap_or(kind);
    let mut label = format!("{lead}{} [{role}", text(&node["name"]));
    if let Some(strategy) = node["strategy"].as_str() {
        let _ = write!(label, " {strategy}");
    }
    let _ = write!(label, "] {}", text(&node["status"]));
    let id = node["id"].as_str().unwrap_or_default();
    if !id.is_empty() {
        let _ = write!(label, " id={id}");
    }
    let _ = write!(label, " msgs={}", text(&node["messages_handled"]));
    let restarts = node["restarts"].as_u64().unwrap_or(0);
    if restarts > 0 {
        let _ = write!(label, " restarts={restarts}");
    }
    if let Some(err) = node["last_error"].as_str() {
        let _ = write!(label, " last_error={err:?}");
    }
    out.push_str(&label);
    out.push('\n');
    let children = node["children"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (i, child) in children.iter().enumerate() {
        let last = i + 1 == children.len();
        let (branch, carry) = if last {
            ("└── ", "    ")
        } else {
            ("├── ", "│   ")
        };
        draw_actor(
            out,
            child,
            &format!("{child_lead}{branch}"),
            &format!("{child_lead}{carry}"),
            last,
        );
    }
}

fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_refusals_say_what_is_wrong_with_the_token() {
        let url = || "http://n/api/v1/tasks".to_string();
        let body = serde_json::json!({"error": {"code": "unauthorized", "message": "the token has expired"}});
        let expired = refusal(
            url(),
            StatusCode::UNAUTHORIZED,
            Some("Bearer error=\"invalid_token\""),
            &body,
            true,
        );
        assert!(
            expired
                .to_string()
                .contains("refused the token (401): the token has expired"),
            "{expired}"
        );
        let none = refusal(
            url(),
            StatusCode::UNAUTHORIZED,
            Some("Bearer"),
            &Value::Null,
            false,
        );
        assert!(none.to_string().contains("MISTER_SMITH_TOKEN"), "{none}");
        let challenge = "Bearer error=\"insufficient_scope\", scope=\"tasks:write\"";
        let scope = refusal(
            url(),
            StatusCode::FORBIDDEN,
            Some(challenge),
            &Value::Null,
            true,
        );
        assert!(
            scope.to_string().contains("lacks scope tasks:write"),
            "{scope}"
        );
        let other = refusal(url(), StatusCode::CONFLICT, None, &body, true);
        assert!(
            matches!(other, ClientError::Refused { status: 409, .. }),
            "{other}"
        );
    }
}
