//! `mister-smith token issue`: mints an HS256 bearer token from the node's own `[auth]`
//! settings (the same layering as `run`: defaults → `--config` → environment), so an
//! operator needs neither a JWT library nor a second copy of the secret to call a node
//! with `auth.mode = "jwt"`.
//!
//! The token is [`Claims`], the struct the node's `Authenticator` decodes, signed by
//! [`auth::mint`]: what is minted here is what the node verifies. Only the token goes to
//! stdout, so `TOKEN=$(mister-smith token issue …)` works in scripts.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};

use crate::config::auth::{AuthMode, AuthSettings};
use crate::config::{ConfigError, Overrides, Settings};
use crate::http::auth::{self, Claims, KNOWN_SCOPES};

/// The longest validity `--ttl` accepts: a token is a bearer credential, not an account.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a bearer JWT signed with auth.secret (HS256) and print only the token.
    ///
    /// The secret comes from the configuration, as for `run`: auth.secret or
    /// auth.secret_file in --config, or MISTER_SMITH__AUTH__SECRET. Tokens for RS256/ES256
    /// (JWKS) nodes are minted by whoever holds the private key, not by this command.
    Issue(IssueArgs),
}

#[derive(Debug, Args)]
pub struct IssueArgs {
    /// Who the token stands for (`sub`): the tasks it submits belong to it.
    #[arg(long, value_name = "SUB", value_parser = parse_sub)]
    pub sub: String,
    /// A scope the token grants; repeat the flag for more.
    #[arg(long = "scope", value_name = "SCOPE", required = true, value_parser = KNOWN_SCOPES)]
    pub scopes: Vec<String>,
    /// How long the token is valid (`30m`, `1h`, `7d`…; at least 1s, at most 365 days).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// A TOML file layered over the defaults, as `run --config` reads it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Why no token was printed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "auth.secret: not set; `token issue` signs with the HS256 secret: set auth.secret or \
         auth.secret_file in --config, or MISTER_SMITH__AUTH__SECRET (e.g. \
         `openssl rand -hex 32`), the same the node is started with"
    )]
    NoSecret,
    #[error(
        "auth.secret: not set; this configuration verifies tokens with public keys only \
         ({0}): RS256/ES256 tokens are minted by whoever holds the private key, not by \
         `mister-smith token issue`"
    )]
    PublicKeysOnly(&'static str),
    #[error("cannot sign the token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
    #[error("the system clock is before 1970")]
    Clock,
}

impl TokenError {
    /// 2 for what the configuration lacks, 1 for anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            TokenError::Config(_) | TokenError::NoSecret | TokenError::PublicKeysOnly(_) => 2,
            TokenError::Sign(_) | TokenError::Clock => 1,
        }
    }
}

/// Runs a `token` command: prints the token (or the error) and returns the exit code.
pub fn run(args: &TokenArgs) -> u8 {
    let TokenCommand::Issue(issue_args) = &args.command;
    let result = Settings::load(&Overrides {
        config_file: issue_args.config.clone(),
        ..Overrides::default()
    })
    .map_err(TokenError::from)
    .and_then(|settings| {
        let token = issue(issue_args, &settings.auth, SystemTime::now())?;
        Ok((token, settings.auth.mode))
    });
    match result {
        Ok((token, mode)) => {
            if mode != AuthMode::Jwt {
                eprintln!(
                    "note: auth.mode is not `jwt` in this configuration: a node started with \
                     it does not ask for tokens"
                );
            }
            println!("{token}");
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// The token `args` ask for, signed with the secret of `auth`, issued at `now`.
pub fn issue(args: &IssueArgs, auth: &AuthSettings, now: SystemTime) -> Result<String, TokenError> {
    let secret = match (&auth.secret, &auth.jwks_file, &auth.jwks_url) {
        (Some(secret), _, _) => secret,
        (None, Some(_), _) => return Err(TokenError::PublicKeysOnly("auth.jwks_file")),
        (None, None, Some(_)) => return Err(TokenError::PublicKeysOnly("auth.jwks_url")),
        (None, None, None) => return Err(TokenError::NoSecret),
    };
    let iat = now
        .duration_since(UNIX_EPOCH)
        .map_err(|_| TokenError::Clock)?
        .as_secs();
    let claims = Claims {
        sub: args.sub.clone(),
        scope: Some(args.scopes.join(" ")),
        scopes: None,
        exp: Some(iat + args.ttl.as_secs()),
        iat: Some(iat),
        iss: auth.issuer.clone(),
        aud: auth.audience.clone(),
    };
    Ok(auth::mint(secret, &claims)?)
}

/// `--sub`: what the node accepts as a subject.
fn parse_sub(sub: &str) -> Result<String, String> {
    if auth::valid_sub(sub) {
        Ok(sub.to_string())
    } else {
        Err("must be 1-256 bytes without control characters".into())
    }
}

/// `--ttl`: a duration of at least a second (a token expired at birth is of no use) and at
/// most [`MAX_TTL`].
fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = humantime::parse_duration(text).map_err(|e| format!("{e} (e.g. 30m, 1h, 7d)"))?;
    if ttl < Duration::from_secs(1) {
        return Err("must be at least 1s: the token would be expired when issued".into());
    }
    if ttl > MAX_TTL {
        return Err(format!(
            "too long; at most {}d (issue a new token when it runs out)",
            MAX_TTL.as_secs() / 86_400
        ));
    }
    Ok(ttl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::auth::Secret;
    use crate::http::auth::Authenticator;

    fn settings(secret: Option<&str>) -> AuthSettings {
        AuthSettings {
            mode: AuthMode::Jwt,
            secret: secret.map(Secret::new),
            secret_file: None,
            jwks_file: None,
            jwks_url: None,
            jwks_refresh_secs: 300.0,
            issuer: Some("issuer-1".into()),
            audience: Some("audience-1".into()),
            leeway_secs: 0,
        }
    }

    fn args(scopes: &[&str], ttl: Duration) -> IssueArgs {
        IssueArgs {
            sub: "alice".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ttl,
            config: None,
        }
    }

    #[test]
    fn the_issued_token_is_what_the_authenticator_accepts() {
        let auth = settings(Some("a-secret-for-minting-of-32-bytes-or-more"));
        let token = issue(
            &args(&["tasks:write", "agents:read"], Duration::from_secs(60)),
            &auth,
            SystemTime::now(),
        )
        .unwrap();
        let verifier = Authenticator::from_settings(&auth).unwrap().unwrap();
        let principal = verifier.verify(&token).unwrap();
        assert_eq!(principal.sub, "alice");
        assert_eq!(principal.scopes, vec!["tasks:write", "agents:read"]);
        // Issued long enough ago, it has expired: `exp` is counted from `iat`.
        let old = SystemTime::now() - Duration::from_secs(120);
        let stale = issue(&args(&["tasks:write"], Duration::from_secs(60)), &auth, old).unwrap();
        assert!(matches!(
            verifier.verify(&stale),
            Err(auth::AuthError::Expired)
        ));
    }

    #[test]
    fn without_a_secret_the_error_names_the_key() {
        let mut auth = settings(None);
        let err = issue(&args(&["admin"], MAX_TTL), &auth, SystemTime::now()).unwrap_err();
        assert!(err.to_string().starts_with("auth.secret"), "{err}");
        assert_eq!(err.exit_code(), 2);
        auth.jwks_url = Some("https://keys.example/jwks.json".into());
        let err = issue(&args(&["admin"], MAX_TTL), &auth, SystemTime::now()).unwrap_err();
        assert!(err.to_string().contains("private key"), "{err}");
        assert!(err.to_string().contains("auth.jwks_url"), "{err}");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn ttl_is_bounded_both_ways() {
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("365d"), Ok(MAX_TTL));
        for bad in ["0", "0s", "500ms", "366d", "forever"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
