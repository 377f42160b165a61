//! Bearer JWT authentication and scope checks for `/api/v1` (and the admin listener's
//! `admin` scope).
//!
//! A token is verified in memory (HS256 with the configured secret, RS256/ES256 with keys
//! from a JWKS decoded once and refreshed in the background): no request waits on the
//! database or the network. The caller becomes a [`Principal`] in the request's
//! extensions; a refusal is a JSON 401 or 403 and an audit event.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actors::NodeContext;
use axum::extract::{ConnectInfo, MatchedPath, Request};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

use crate::config::auth::{AuthSettings, Secret};
use crate::http::error::ApiError;
use crate::http::verified::Verified;

pub const TASKS_WRITE: &str = "tasks:write";
pub const TASKS_READ: &str = "tasks:read";
pub const TASKS_READ_ALL: &str = "tasks:read:all";
pub const AGENTS_READ: &str = "agents:read";
pub const SESSIONS_WRITE: &str = "sessions:write";
pub const SESSIONS_READ: &str = "sessions:read";
/// The cluster's event feed: every node's events, every principal's tasks.
pub const EVENTS_READ: &str = "events:read";
pub const ADMIN: &str = "admin";

/// Every scope a route or the admin listener checks: what a token may usefully carry.
pub const KNOWN_SCOPES: [&str; 8] = [
    EVENTS_READ,
    TASKS_WRITE,
    TASKS_READ,
    TASKS_READ_ALL,
    AGENTS_READ,
    SESSIONS_WRITE,
    SESSIONS_READ,
    ADMIN,
];

/// The scope each `/api/v1` route needs (method, route as axum matches it, scope).
/// A route missing here needs `admin`, so a new route is closed until it is listed.
pub const ROUTE_SCOPES: &[(&str, &str, &str)] = &[
    ("POST", "/api/v1/tasks", TASKS_WRITE),
    ("GET", "/api/v1/tasks", TASKS_READ),
    ("GET", "/api/v1/tasks/{id}", TASKS_READ),
    ("POST", "/api/v1/tasks/{id}/cancel", TASKS_WRITE),
    ("GET", "/api/v1/tasks/{id}/events", TASKS_READ),
    ("GET", "/api/v1/tasks/{id}/steps/{step}/output", TASKS_READ),
    ("GET", "/api/v1/agents", AGENTS_READ),
    ("GET", "/api/v1/events/ws", EVENTS_READ),
    ("POST", "/api/v1/sessions", SESSIONS_WRITE),
    ("GET", "/api/v1/sessions", SESSIONS_READ),
    ("GET", "/api/v1/sessions/{id}", SESSIONS_READ),
    ("POST", "/api/v1/sessions/{id}/turns", SESSIONS_WRITE),
    ("POST", "/api/v1/sessions/{id}/end", SESSIONS_WRITE),
    (
        "POST",
        "/api/v1/sessions/{id}/turns/{turn}/{decision}",
        SESSIONS_WRITE,
    ),
    (
        "GET",
        "/api/v1/sessions/{id}/turns/{turn}/events",
        SESSIONS_READ,
    ),
];

/// Who made a request, from its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub sub: String,
    pub scopes: Vec<String>,
}

impl Principal {
    /// Whether the token grants `scope` (`tasks:read:all` includes `tasks:read`).
    pub fn has(&self, scope: &str) -> bool {
        self.scopes
            .iter()
            .any(|s| s == scope || (scope == TASKS_READ && s == TASKS_READ_ALL))
    }
}

/// Whose tasks a caller may see: `None` for everyone's (auth off, or `tasks:read:all`).
pub fn owner_filter(principal: Option<&Principal>) -> Option<&str> {
    principal
        .filter(|p| !p.has(TASKS_READ_ALL))
        .map(|p| p.sub.as_str())
}

/// Whether `caller` may read a task that `submitter` submitted (without auth: anyone).
pub fn may_read(caller: Option<&Principal>, submitter: Option<&str>) -> bool {
    owner_filter(caller).is_none_or(|sub| submitter == Some(sub))
}

/// Whether `caller` may change (cancel) a task that `submitter` submitted: its own, or
/// any with the `admin` scope (without auth: anyone).
pub fn may_change(caller: Option<&Principal>, submitter: Option<&str>) -> bool {
    caller.is_none_or(|p| p.has(ADMIN) || submitter == Some(p.sub.as_str()))
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("a bearer token is required (Authorization: Bearer <JWT>)")]
    Missing,
    #[error("the token has expired")]
    Expired,
    #[error("the token's algorithm {0:?} is not accepted here")]
    Algorithm(Algorithm),
    #[error("no key for the token (kid {0:?})")]
    UnknownKey(Option<String>),
    #[error("the token is invalid: {0}")]
    Invalid(String),
}

/// The claims of a token: what [`Authenticator::verify`] reads and what
/// `mister-smith token issue` signs ([`mint`]), so the two cannot drift apart.
///
/// The registered claims (`exp`, `iat`, `iss`, `aud`) are only written here: jsonwebtoken's
/// [`Validation`] checks them on the raw token, which may carry them in forms this struct
/// does not model (an `aud` array, a fractional `exp`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    /// Scopes, space-separated (RFC 8693 §4.2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Scopes as an array (accepted too, never minted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// Expiry, seconds since the epoch (read leniently: jsonwebtoken has checked it).
    #[serde(
        default,
        deserialize_with = "lenient_secs",
        skip_serializing_if = "Option::is_none"
    )]
    pub exp: Option<u64>,
    /// Issued at, seconds since the epoch.
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

impl Claims {
    /// Every scope the token grants, from `scope` and `scopes` alike.
    pub fn granted(&self) -> Vec<String> {
        let mut scopes: Vec<String> = self
            .scope
            .as_deref()
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect();
        scopes.extend(self.scopes.iter().flatten().cloned());
        scopes
    }
}

/// A time claim as whole seconds; `None` for anything but a non-negative number.
fn lenient_secs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(value
        .as_f64()
        .filter(|secs| secs.is_finite() && *secs >= 0.0)
        .map(|secs| secs as u64))
}

/// Whether `sub` is a subject tokens may name: 1-256 bytes, no control characters.
pub fn valid_sub(sub: &str) -> bool {
    !sub.is_empty() && sub.len() <= 256 && !sub.chars().any(char::is_control)
}

/// Signs `claims` with the HS256 `secret`, as [`Authenticator::verify`] checks them.
pub fn mint(secret: &Secret, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.expose().as_bytes()),
    )
}

/// A public key of the JWKS and the algorithm it verifies.
struct JwksKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// Verifies tokens. Built once at start from `[auth]`.
pub struct Authenticator {
    hs256: Option<DecodingKey>,
    /// Keys of `jwks_file` (fixed) followed by those last fetched from `jwks_url`.
    file_keys: Vec<Arc<JwksKey>>,
    url_keys: RwLock<Arc<Vec<Arc<JwksKey>>>>,
    validations: [Validation; 3],
    verified: Verified,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("hs256", &self.hs256.is_some())
            .field("jwks_file_keys", &self.file_keys.len())
            .finish_non_exhaustive()
    }
}

const ALGORITHMS: [Algorithm; 3] = [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256];

impl Authenticator {
    /// The authenticator `[auth]` describes; `None` when the API is open.
    pub fn from_settings(settings: &AuthSettings) -> anyhow::Result<Option<Arc<Authenticator>>> {
        if !settings.enabled() {
            return Ok(None);
        }
        let file_keys = match &settings.jwks_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)?;
                jwks_keys(&serde_json::from_str(&text)?)
            }
            None => Vec::new(),
        };
        let validations = ALGORITHMS.map(|alg| {
            let mut v = Validation::new(alg);
            v.leeway = settings.leeway_secs;
            // jsonwebtoken checks `iss` and `aud` only when the token has them: a token
            // without them must be refused when they are configured, so they are required.
            let mut required = vec!["exp", "sub"];
            required.extend(settings.issuer.as_ref().map(|_| "iss"));
            required.extend(settings.audience.as_ref().map(|_| "aud"));
            v.set_required_spec_claims(&required);
            if let Some(iss) = &settings.issuer {
                v.set_issuer(&[iss]);
            }
            match &settings.audience {
                Some(aud) => v.set_audience(&[aud]),
                None => v.validate_aud = false,
            }
            v
        });
        Ok(Some(Arc::new(Authenticator {
            hs256: settings
                .secret
                .as_ref()
                .map(|s| DecodingKey::from_secret(s.expose().as_bytes())),
            file_keys,
            url_keys: RwLock::new(Arc::new(Vec::new())),
            validations,
            verified: Verified::new(settings.leeway_secs),
        })))
    }

    /// Keeps the keys of `url` fresh: fetched now, then every `every`; until the first
    /// fetch succeeds it is retried every few seconds. A failed fetch keeps the old keys.
    pub fn refresh_from(self: &Arc<Self>, url: String, every: Duration) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default();
            let mut fetched_once = false;
            loop {
                let Some(auth) = me.upgrade() else { return };
                match fetch_jwks(&client, &url).await {
                    Ok(keys) => {
                        tracing::info!(url = %url, keys = keys.len(), "JWKS fetched");
                        if let Ok(mut slot) = auth.url_keys.write() {
                            *slot = Arc::new(keys);
                        }
                        // Tokens of a key no longer served must not pass from memory.
                        auth.verified.forget_all();
                        fetched_once = true;
                    }
                    Err(e) => {
                        tracing::warn!(url = %url, error = %e, "JWKS fetch failed; keeping the keys held")
                    }
                }
                drop(auth);
                let wait = if fetched_once {
                    every
                } else {
                    Duration::from_secs(5).min(every)
                };
                tokio::time::sleep(wait).await;
            }
        });
    }

    /// The principal a bearer token stands for.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if let Some(principal) = self.verified.get(token) {
            return Ok(principal);
        }
        let (principal, exp) = self.check(token)?;
        self.verified.keep(token, &principal, exp);
        Ok(principal)
    }

    /// Verifies `token`'s signature and claims: the principal and the token's expiry.
    fn check(&self, token: &str) -> Result<(Principal, Option<u64>), AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let index = ALGORITHMS
            .iter()
            .position(|a| *a == header.alg)
            .ok_or(AuthError::Algorithm(header.alg))?;
        let validation = &self.validations[index];
        let claims = if header.alg == Algorithm::HS256 {
            let key = self
                .hs256
                .as_ref()
                .ok_or(AuthError::Algorithm(header.alg))?;
            decode(token, key, validation)?
        } else {
            let url_keys = self
                .url_keys
                .read()
                .map(|k| Arc::clone(&k))
                .unwrap_or_default();
            let mut candidates = self
                .file_keys
                .iter()
                .chain(url_keys.iter())
                .filter(|k| k.alg == header.alg)
                .filter(|k| header.kid.is_none() || k.kid == header.kid)
                .peekable();
            if candidates.peek().is_none() {
                return Err(AuthError::UnknownKey(header.kid));
            }
            let mut last = AuthError::UnknownKey(header.kid.clone());
            let mut found = None;
            for key in candidates {
                match decode(token, &key.key, validation) {
                    Ok(claims) => {
                        found = Some(claims);
                        break;
                    }
                    Err(e) => last = e,
                }
            }
            found.ok_or(last)?
        };
        if !valid_sub(&claims.sub) {
            return Err(AuthError::Invalid(
                "`sub` must be 1-256 characters without control characters".into(),
            ));
        }
        let principal = Principal {
            scopes: claims.granted(),
            sub: claims.sub,
        };
        Ok((principal, claims.exp))
    }
}

fn decode(token: &str, key: &DecodingKey, validation: &Validation) -> Result<Claims, AuthError> {
    jsonwebtoken::decode::<Claims>(token, key, validation)
        .map(|data| data.claims)
        .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid(e.to_string()),
        })
}

async fn fetch_jwks(client: &reqwest::Client, url: &str) -> anyhow::Result<Vec<Arc<JwksKey>>> {
    let set: JwkSet = client
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(jwks_keys(&set))
}

/// The RS256 and ES256 (P-256) keys of a JWKS; others are skipped with a warning.
fn jwks_keys(set: &JwkSet) -> Vec<Arc<JwksKey>> {
    set.keys
        .iter()
        .filter_map(|jwk| {
            let alg = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                    Algorithm::ES256
                }
                _ => {
                    tracing::warn!(kid = ?jwk.common.key_id, "JWKS key skipped: only RSA and P-256 keys are used");
                    return None;
                }
            };
            match DecodingKey::from_jwk(jwk) {
                Ok(key) => Some(Arc::new(JwksKey {
                    kid: jwk.common.key_id.clone(),
                    alg,
                    key,
                })),
                Err(e) => {
                    tracing::warn!(kid = ?jwk.common.key_id, error = %e, "JWKS key skipped");
                    None
                }
            }
        })
        .collect()
}

/// The bearer token of a request, if it has one.
pub fn bearer(request: &Request) -> Option<std::borrow::Cow<'_, str>> {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| std::borrow::Cow::Borrowed(t.trim()));
    header.or_else(|| websocket_token(request).map(std::borrow::Cow::Owned))
}

/// A WebSocket upgrade's token from its `access_token` query parameter: browsers cannot
/// set headers on a WebSocket. Only for upgrades, so no other request carries a token in
/// its URL (URLs end up in logs and histories; the node logs paths only).
fn websocket_token(request: &Request) -> Option<String> {
    let upgrade = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !upgrade {
        return None;
    }
    form_urlencoded::parse(request.uri().query()?.as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.trim().to_string())
}

/// Where a request came from, when the listener records it.
pub fn remote(request: &Request) -> String {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_string(), |c| c.0.to_string())
}

/// A 401 with `WWW-Authenticate: Bearer` (RFC 6750).
pub fn unauthorized(message: impl Into<String>, invalid_token: bool) -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    let challenge = if invalid_token {
        "Bearer error=\"invalid_token\""
    } else {
        "Bearer"
    };
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
}

/// A 403 naming the scope that is missing.
pub fn forbidden(scope: &str) -> Response {
    let mut response = ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!("the token lacks the scope this route needs: `{scope}`"),
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!(
        "Bearer error=\"insufficient_scope\", scope=\"{scope}\""
    )) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    response
}

/// The scope a route needs.
pub fn required_scope(method: &Method, route: &str) -> &'static str {
    ROUTE_SCOPES
        .iter()
        .find(|(m, r, _)| *r == route && method.as_str() == *m)
        .map_or(ADMIN, |(_, _, scope)| scope)
}

/// The middleware of the `/api/v1` routes: a valid token with the route's scope, or a
/// refusal (audited).
pub async fn require(
    auth: Arc<Authenticator>,
    ctx: Arc<NodeContext>,
    mut request: Request,
    next: Next,
) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or_else(
        || request.uri().path().to_string(),
        |m| m.as_str().to_string(),
    );
    let what = format!("{} {}", request.method(), request.uri().path());
    let verified = bearer(&request)
        .ok_or(AuthError::Missing)
        .and_then(|token| auth.verify(&token));
    let principal = match verified {
        Ok(principal) => principal,
        Err(e) => {
            let detail = format!("401 {what} from {}: {e}", remote(&request));
            ctx.events.audit("api.auth", "anonymous", "refused", detail);
            return unauthorized(e.to_string(), !matches!(e, AuthError::Missing));
        }
    };
    let scope = required_scope(request.method(), &route);
    if !principal.has(scope) {
        let detail = format!(
            "403 {what} from {}: scope `{scope}` missing",
            remote(&request)
        );
        ctx.events
            .audit("api.auth", &principal.sub, "refused", detail);
        return forbidden(scope);
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_its_scope_and_others_need_admin() {
        assert_eq!(required_scope(&Method::POST, "/api/v1/tasks"), TASKS_WRITE);
        assert_eq!(
            required_scope(&Method::GET, "/api/v1/tasks/{id}"),
            TASKS_READ
        );
        assert_eq!(required_scope(&Method::DELETE, "/api/v1/tasks/{id}"), ADMIN);
    }

    fn jwt_settings(issuer: Option<&str>, audience: Option<&str>) -> AuthSettings {
        AuthSettings {
            mode: crate::config::auth::AuthMode::Jwt,
            secret: Some(Secret::new("a-test-secret-of-at-least-32-bytes!!")),
            secret_file: None,
            jwks_file: None,
            jwks_url: None,
            jwks_refresh_secs: 300.0,
            issuer: issuer.map(str::to_string),
            audience: audience.map(str::to_string),
            leeway_secs: 0,
        }
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn a_minted_token_verifies_with_its_scopes_issuer_and_audience() {
        let settings = jwt_settings(Some("ms"), Some("api"));
        let auth = Authenticator::from_settings(&settings).unwrap().unwrap();
        let secret = settings.secret.as_ref().unwrap();
        let claims = Claims {
            sub: "alice".into(),
            scope: Some(format!("{TASKS_WRITE} {AGENTS_READ}")),
            exp: Some(now() + 600),
            iat: Some(now()),
            iss: Some("ms".into()),
            aud: Some("api".into()),
            ..Claims::default()
        };
        let principal = auth.verify(&mint(secret, &claims).unwrap()).unwrap();
        assert_eq!(principal.sub, "alice");
        assert_eq!(principal.scopes, vec![TASKS_WRITE, AGENTS_READ]);

        let other_audience = Claims {
            aud: Some("elsewhere".into()),
            ..claims.clone()
        };
        assert!(matches!(
            auth.verify(&mint(secret, &other_audience).unwrap()),
            Err(AuthError::Invalid(_))
        ));
        for (what, unclaimed) in [
            (
                "no issuer",
                Claims {
                    iss: None,
                    ..claims.clone()
                },
            ),
            (
                "no audience",
                Claims {
                    aud: None,
                    ..claims.clone()
                },
            ),
        ] {
            assert!(
                matches!(
                    auth.verify(&mint(secret, &unclaimed).unwrap()),
                    Err(AuthError::Invalid(_))
                ),
                "{what}"
            );
        }
        let expired = Claims {
            exp: Some(now() - 60),
            ..claims
        };
        assert!(matches!(
            auth.verify(&mint(secret, &expired).unwrap()),
            Err(AuthError::Expired)
        ));
    }

    #[test]
    fn read_all_includes_read() {
        let p = Principal {
            sub: "a".into(),
            scopes: vec![TASKS_READ_ALL.into()],
        };
        assert!(p.has(TASKS_READ));
        assert!(!p.has(TASKS_WRITE));
        assert_eq!(owner_filter(Some(&p)), None);
        let q = Principal {
            sub: "b".into(),
            scopes: vec![TASKS_READ.into()],
        };
        assert_eq!(owner_filter(Some(&q)), Some("b"));
        assert_eq!(owner_filter(None), None);
    }
}
