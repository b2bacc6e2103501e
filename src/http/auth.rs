//! Who is calling: the admin ([`AdminToken`]) or a user (JWT -> [`Caller`]).
//!
//! An admin handler takes an [`AdminToken`] extractor: without the admin
//! bearer token it never runs. A user call takes a [`Caller`] extractor and
//! turns the user id it names (body or path) into a [`UserId`] with
//! [`Caller::user`], which refuses a name other than the token's `sub` and
//! applies the per-user rate limit. A new user endpoint gets the same
//! protection by doing the same two things.
//!
//! Settings come in as plain [`JwtConfig`]; this module knows neither the
//! command line nor the wiring of the application.

use std::path::Path;

use axum::{
    extract::FromRequestParts,
    http::{header, request::Parts, HeaderMap},
};
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::{error::ApiError, AppState};
use crate::{config::JwtConfig, domain::UserId};

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const JWT_LEEWAY_SECS: u64 = 30;

/// Why the JWT settings could not be turned into a verifier.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// The public key file could not be read.
    #[error("reading the JWT public key {path}: {source}")]
    Read {
        /// The path given.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The PEM is neither an RSA nor an EC (P-256) public key.
    #[error("the JWT public key is neither an RSA nor an EC P-256 PEM public key")]
    BadKey,
}

/// Verifies user JWTs: signature, algorithm, `exp` (required), `nbf`, and
/// `aud`/`iss` when configured.
pub struct JwtVerifier {
    key: DecodingKey,
    validation: Validation,
}

/// The claims firstcome reads; others are ignored.
#[derive(Debug, Deserialize)]
struct Claims {
    /// The user.
    sub: String,
    /// Expiry, seconds since the epoch (required by the validation).
    exp: i64,
}

impl JwtVerifier {
    /// A verifier of HS256 tokens signed with `secret`.
    pub fn hs256(secret: &[u8]) -> Self {
        Self::new(DecodingKey::from_secret(secret), Algorithm::HS256)
    }

    /// A verifier of RS256 or ES256 tokens, from a PEM public key.
    pub fn from_pem(pem: &[u8]) -> Result<Self, AuthConfigError> {
        if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
            return Ok(Self::new(k, Algorithm::RS256));
        }
        if let Ok(k) = DecodingKey::from_ec_pem(pem) {
            return Ok(Self::new(k, Algorithm::ES256));
        }
        Err(AuthConfigError::BadKey)
    }

    fn new(key: DecodingKey, alg: Algorithm) -> Self {
        // One algorithm, fixed by the key: a token cannot pick another one
        // (no `none`, no HS256 signed with the RSA public key).
        let mut validation = Validation::new(alg);
        validation.leeway = JWT_LEEWAY_SECS;
        // jsonwebtoken checks `nbf` only when asked (its default is off).
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_aud = false;
        Self { key, validation }
    }

    /// Also requires `aud` to contain `audience`.
    pub fn with_audience(mut self, audience: &str) -> Self {
        self.validation.set_audience(&[audience]);
        self.validation.validate_aud = true;
        self.validation
            .required_spec_claims
            .insert("aud".to_string());
        self
    }

    /// Also requires `iss` to be `issuer`.
    pub fn with_issuer(mut self, issuer: &str) -> Self {
        self.validation.set_issuer(&[issuer]);
        self.validation
            .required_spec_claims
            .insert("iss".to_string());
        self
    }

    /// The verifier the settings ask for, or `None` when no key is set (the
    /// user id in the request is then trusted).
    pub fn from_config(c: &JwtConfig) -> Result<Option<Self>, AuthConfigError> {
        let secret = c.secret.as_deref().filter(|s| !s.is_empty());
        let public = c.public_key.as_deref().filter(|s| !s.is_empty());
        let v = match (secret, public) {
            (Some(s), _) => Self::hs256(s.as_bytes()),
            (None, Some(p)) if p.trim_start().starts_with("-----BEGIN") => {
                Self::from_pem(p.as_bytes())?
            }
            (None, Some(path)) => {
                let pem =
                    std::fs::read(Path::new(path)).map_err(|source| AuthConfigError::Read {
                        path: path.to_string(),
                        source,
                    })?;
                Self::from_pem(&pem)?
            }
            (None, None) => return Ok(None),
        };
        let v = match c.audience.as_deref().filter(|s| !s.is_empty()) {
            Some(a) => v.with_audience(a),
            None => v,
        };
        let v = match c.issuer.as_deref().filter(|s| !s.is_empty()) {
            Some(i) => v.with_issuer(i),
            None => v,
        };
        Ok(Some(v))
    }

    /// The user a token speaks for; 401 with a stable code otherwise.
    /// The token's user and expiry (seconds since the epoch).
    pub fn verify(&self, token: &str) -> Result<(UserId, i64), ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => {
                    ApiError::unauthenticated("expired_token", "the token has expired")
                }
                ErrorKind::ImmatureSignature => {
                    ApiError::unauthenticated("invalid_token", "the token is not valid yet")
                }
                ErrorKind::InvalidAudience | ErrorKind::InvalidIssuer => {
                    ApiError::unauthenticated("invalid_token", "the token is not meant for us")
                }
                ErrorKind::MissingRequiredClaim(c) => ApiError::unauthenticated(
                    "invalid_token",
                    format!("the token has no {c} claim"),
                ),
                // Signature, algorithm, shape: say no more than "invalid".
                _ => ApiError::unauthenticated("invalid_token", "the token is not valid"),
            },
        )?;
        let user = UserId::parse(data.claims.sub).map_err(|_| {
            ApiError::unauthenticated("invalid_token", "the token's sub is not a valid user id")
        })?;
        Ok((user, data.claims.exp))
    }
}

/// Proof that the call carries the admin bearer token: an admin handler
/// takes one, and without the token answers 401 `unauthorized` before it
/// runs (and before its body is read).
#[derive(Debug, Clone, Copy)]
pub struct AdminToken;

impl FromRequestParts<AppState> for AdminToken {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if is_admin(&parts.headers, state) {
            Ok(AdminToken)
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

/// Proof that the call may confirm a hold: it carries the payment
/// service's token (`--confirm-token`) or the admin token. A user's own
/// JWT is refused with 403 `forbidden_confirm` (a hold stands for "payment
/// done", which the user cannot vouch for), anything else with 401
/// `unauthorized`.
#[derive(Debug, Clone, Copy)]
pub struct Confirmer;

impl FromRequestParts<AppState> for Confirmer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let payment = given
            .zip(state.confirm_token_digest.as_ref())
            .is_some_and(|(g, d)| admin_token_matches(g, d));
        if payment || is_admin(&parts.headers, state) {
            return Ok(Confirmer);
        }
        let ip = client_ip(parts);
        let user_token = match bearer(&parts.headers).zip(state.jwt.as_deref()) {
            Some((t, v)) => {
                state.limits.check_bad_tokens(ip)?;
                let ok = v.verify(t).is_ok();
                // Not the payment service's, not the admin's, not a user's.
                if !ok {
                    state.limits.bad_token(ip);
                }
                ok
            }
            None => false,
        };
        if user_token {
            return Err(ApiError::Forbidden {
                code: "forbidden_confirm",
                detail: "a user cannot confirm a hold; the payment service does".into(),
            });
        }
        Err(ApiError::Unauthorized)
    }
}

/// Whether the request carries the admin bearer token; for a public route
/// that serves the admin differently (a fresh campaign read) and refuses
/// nobody.
pub fn is_admin(headers: &HeaderMap, state: &AppState) -> bool {
    // Exactly `Bearer <token>`: stricter than the user's `bearer`, as the
    // admin check always was.
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| admin_token_matches(given, &state.admin_token_digest))
}

/// The SHA-256 digest of a token.
pub fn token_digest(token: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(token.as_bytes()).into()
}

/// Whether `given` is the token whose digest is `expected`. Digests of
/// fixed length are compared in constant time: the time shows neither
/// where the bytes differ nor how long the configured token is.
fn admin_token_matches(given: &str, expected: &[u8; 32]) -> bool {
    use subtle::ConstantTimeEq;
    token_digest(given).ct_eq(expected).into()
}

/// The client address the per-address limits key by (set by
/// `limits::limit_ip` on every `/v1` route).
fn client_ip(parts: &Parts) -> Option<std::net::IpAddr> {
    parts
        .extensions
        .get::<super::limits::ClientIp>()
        .and_then(|c| c.0)
}

/// The bearer token of `Authorization`, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The caller of a user endpoint: the verified `sub` when JWTs are
/// configured, nobody in particular otherwise.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's subject; `None` when no JWT key is configured.
    pub subject: Option<UserId>,
    /// The token's expiry (seconds since the epoch): what the token allows
    /// ends there, an event stream included.
    pub expires_at: Option<i64>,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(verifier) = &state.jwt else {
            return Ok(Caller {
                subject: None,
                expires_at: None,
            });
        };
        let token = bearer(&parts.headers).ok_or_else(|| {
            ApiError::unauthenticated(
                "missing_token",
                "user calls need Authorization: Bearer <jwt>",
            )
        })?;
        // An address that sent too many bad tokens this second is refused
        // before its next one costs a signature check.
        let ip = client_ip(parts);
        state.limits.check_bad_tokens(ip)?;
        let (user, exp) = verifier.verify(token).inspect_err(|_| {
            state.limits.bad_token(ip);
        })?;
        Ok(Caller {
            subject: Some(user),
            expires_at: Some(exp),
        })
    }
}

impl Caller {
    /// The user this call acts for. `claimed` is the user id of the body or
    /// path: it must be the token's `sub` when there is a token (403
    /// `forbidden_user` otherwise). Then the per-user rate limit applies.
    pub fn user(&self, state: &AppState, claimed: String) -> Result<UserId, ApiError> {
        if let Some(sub) = &self.subject {
            if sub.as_str() != claimed {
                return Err(ApiError::Forbidden {
                    code: "forbidden_user",
                    detail: "the user id differs from the token's subject".into(),
                });
            }
        }
        let user = UserId::parse(claimed)?;
        state.limits.check_user(&user)?;
        Ok(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_token_is_compared_by_digest() {
        let d = token_digest("the-admin-token");
        assert!(admin_token_matches("the-admin-token", &d));
        for other in ["", "the-admin-toke", "the-admin-token ", "the-admin-tokeN"] {
            assert!(!admin_token_matches(other, &d), "{other:?}");
        }
    }

    #[test]
    fn bearer_is_parsed() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}

/// Header naming who performs an admin call, for the log of operator
/// actions.
pub const ACTOR_HEADER: &str = "x-firstcome-actor";

/// Longest actor name, in characters.
pub const MAX_ACTOR_LEN: usize = 64;

/// Who performs an operator action: the `X-Firstcome-Actor` header (1..=64
/// printable characters), else `admin`. A malformed header is refused with
/// 400 `invalid_actor` rather than logged as something else.
#[derive(Debug, Clone)]
pub struct Actor(pub String);

impl FromRequestParts<AppState> for Actor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        let Some(v) = parts.headers.get(ACTOR_HEADER) else {
            return Ok(Actor("admin".into()));
        };
        let bad = || {
            ApiError::bad_request(
                "invalid_actor",
                format!("{ACTOR_HEADER} must be 1..={MAX_ACTOR_LEN} printable characters"),
            )
        };
        let s = std::str::from_utf8(v.as_bytes()).map_err(|_| bad())?.trim();
        // Control characters would forge lines in logs and terminals.
        if s.is_empty() || s.chars().count() > MAX_ACTOR_LEN || s.chars().any(char::is_control) {
            return Err(bad());
        }
        Ok(Actor(s.to_string()))
    }
}
