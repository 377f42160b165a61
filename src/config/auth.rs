//! `[auth]`: how callers of the API listener prove who they are (bearer JWTs), and the
//! rule that keeps a node reachable off loopback from serving without it by accident.
//!
//! The secret is a [`Secret`], whose `Debug` never shows it, so no log line or config dump
//! carries it.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::ConfigError;

/// Shortest HS256 secret accepted: 256 bits, the size of the hash (RFC 7518 §3.2).
pub const MIN_SECRET_BYTES: usize = 32;

/// A value that must never be printed (shared with the LLM providers' API keys).
pub use actors::secret::Secret;

/// Whether the API listener asks for a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Open on a loopback `http.listen`; anywhere else the node refuses to start.
    Auto,
    /// Explicitly open, wherever it listens.
    None,
    /// Every `/api/v1` request needs a bearer JWT.
    Jwt,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub mode: AuthMode,
    /// HS256 key (at least 32 bytes). Env: MISTER_SMITH__AUTH__SECRET.
    pub secret: Option<Secret>,
    /// A file holding the HS256 key (surrounding whitespace ignored); read at start.
    pub secret_file: Option<PathBuf>,
    /// A JWKS file of RS256/ES256 public keys.
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL, fetched at start and every `jwks_refresh_secs`.
    pub jwks_url: Option<String>,
    pub jwks_refresh_secs: f64,
    /// When set, the token's `iss` must equal it.
    pub issuer: Option<String>,
    /// When set, the token's `aud` must contain it.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_secs: u64,
}

impl AuthSettings {
    /// Whether the API listener checks tokens.
    pub fn enabled(&self) -> bool {
        self.mode == AuthMode::Jwt
    }

    /// Checks the settings and reads `secret_file` into `secret`.
    pub fn validate(&mut self, http_listen: SocketAddr) -> Result<(), ConfigError> {
        let fail = |msg: String| Err(ConfigError(msg));
        if self.secret.is_some() && self.secret_file.is_some() {
            return fail("auth.secret_file: give auth.secret or auth.secret_file, not both".into());
        }
        if let Some(path) = &self.secret_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError(format!(
                    "auth.secret_file: cannot read {}: {e}",
                    path.display()
                ))
            })?;
            self.secret = Some(Secret::new(text.trim()));
        }
        if let Some(secret) = &self.secret
            && secret.expose().len() < MIN_SECRET_BYTES
        {
            let key = if self.secret_file.is_some() {
                "auth.secret_file"
            } else {
                "auth.secret"
            };
            return fail(format!(
                "{key}: the HS256 secret must be at least {MIN_SECRET_BYTES} bytes \
                 (e.g. `openssl rand -hex 32`)"
            ));
        }
        if let Some(path) = &self.jwks_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError(format!(
                    "auth.jwks_file: cannot read {}: {e}",
                    path.display()
                ))
            })?;
            serde_json::from_str::<jsonwebtoken::jwk::JwkSet>(&text).map_err(|e| {
                ConfigError(format!(
                    "auth.jwks_file: {} is not a JWKS document: {e}",
                    path.display()
                ))
            })?;
        }
        if let Some(url) = &self.jwks_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return fail(format!(
                "auth.jwks_url: `{url}` must start with https:// or http://"
            ));
        }
        super::seconds("auth.jwks_refresh_secs", self.jwks_refresh_secs)?;
        if self.leeway_secs > 300 {
            return fail(format!(
                "auth.leeway_secs: {} is too lax; at most 300",
                self.leeway_secs
            ));
        }
        match self.mode {
            AuthMode::Jwt
                if self.secret.is_none() && self.jwks_file.is_none() && self.jwks_url.is_none() =>
            {
                fail(
                    "auth.mode: `jwt` needs a key: auth.secret (MISTER_SMITH__AUTH__SECRET), \
                     auth.secret_file, auth.jwks_file or auth.jwks_url"
                        .into(),
                )
            }
            AuthMode::Auto if !http_listen.ip().is_loopback() => fail(format!(
                "auth.mode: http.listen ({http_listen}) is not a loopback address, so the API \
                 needs authentication: set auth.mode = \"jwt\" with auth.secret \
                 (MISTER_SMITH__AUTH__MODE=jwt, MISTER_SMITH__AUTH__SECRET=…) or a JWKS, or \
                 auth.mode = \"none\" to serve it open on purpose"
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(mode: AuthMode) -> AuthSettings {
        AuthSettings {
            mode,
            secret: None,
            secret_file: None,
            jwks_file: None,
            jwks_url: None,
            jwks_refresh_secs: 300.0,
            issuer: None,
            audience: None,
            leeway_secs: 30,
        }
    }

    #[test]
    fn the_secret_never_shows_in_debug() {
        let mut s = settings(AuthMode::Jwt);
        s.secret = Some(Secret::new("a-very-secret-value-of-32-bytes-or-more"));
        let dump = format!("{s:?}");
        assert!(!dump.contains("very-secret"), "{dump}");
        assert!(dump.contains("redacted"), "{dump}");
    }

    #[test]
    fn open_off_loopback_needs_an_explicit_choice() {
        let public: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let err = settings(AuthMode::Auto).validate(public).unwrap_err();
        assert!(err.to_string().contains("auth.mode"), "{err}");
        settings(AuthMode::None).validate(public).unwrap();
        settings(AuthMode::Auto)
            .validate("127.0.0.1:8080".parse().unwrap())
            .unwrap();
    }

    #[test]
    fn jwt_needs_a_long_enough_key() {
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let err = settings(AuthMode::Jwt).validate(local).unwrap_err();
        assert!(err.to_string().contains("auth.mode"), "{err}");
        let mut short = settings(AuthMode::Jwt);
        short.secret = Some(Secret::new("short"));
        let err = short.validate(local).unwrap_err();
        assert!(err.to_string().contains("auth.secret"), "{err}");
    }
}
