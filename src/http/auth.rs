//! Who is calling: user identity from a JWT, and the rate limits per user
//! and per client IP.
//!
//! A user call takes a [`Caller`] extractor and turns the user id it names
//! (body or path) into a [`UserId`] with [`Caller::user`], which refuses a
//! name other than the token's `sub` and applies the per-user rate limit. A
//! new user endpoint gets the same protection by doing the same two things.

use std::{
    hash::Hash,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    num::NonZeroU32,
    path::Path,
    sync::Arc,
    time::Duration,
};

use axum::{
    extract::{ConnectInfo, FromRequestParts, Request, State},
    http::{header, request::Parts, HeaderMap},
    middleware::Next,
    response::{IntoResponse, Response},
};
use governor::{clock::Clock, DefaultKeyedRateLimiter, Quota, RateLimiter};
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::{config::ServeArgs, domain::UserId};

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
    pub fn from_args(args: &ServeArgs) -> Result<Option<Self>, AuthConfigError> {
        let secret = args.jwt_secret.as_deref().filter(|s| !s.is_empty());
        let public = args.jwt_public_key.as_deref().filter(|s| !s.is_empty());
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
        let v = match args.jwt_audience.as_deref().filter(|s| !s.is_empty()) {
            Some(a) => v.with_audience(a),
            None => v,
        };
        let v = match args.jwt_issuer.as_deref().filter(|s| !s.is_empty()) {
            Some(i) => v.with_issuer(i),
            None => v,
        };
        Ok(Some(v))
    }

    /// The user a token speaks for; 401 with a stable code otherwise.
    pub fn verify(&self, token: &str) -> Result<UserId, ApiError> {
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
        UserId::parse(data.claims.sub).map_err(|_| {
            ApiError::unauthenticated("invalid_token", "the token's sub is not a valid user id")
        })
    }
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
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(verifier) = &state.jwt else {
            return Ok(Caller { subject: None });
        };
        let token = bearer(&parts.headers).ok_or_else(|| {
            ApiError::unauthenticated(
                "missing_token",
                "user calls need Authorization: Bearer <jwt>",
            )
        })?;
        Ok(Caller {
            subject: Some(verifier.verify(token)?),
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

/// One keyed GCRA limiter (governor), in memory, per process.
struct Keyed<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    fn new(per_sec: u32, burst: u32) -> Option<Self> {
        let rate = NonZeroU32::new(per_sec)?;
        let burst = NonZeroU32::new(burst).unwrap_or(rate);
        Some(Self {
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
        })
    }

    fn check(&self, key: &K, what: &'static str) -> Result<(), ApiError> {
        self.limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.limiter.clock().now());
            // Whole seconds, at least 1: Retry-After has no fractions.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            metrics::counter!("firstcome_rate_limited_total", "key" => what).increment(1);
            ApiError::RateLimited {
                retry_after_secs: secs.max(1),
                detail: format!("too many requests for this {what}; retry later"),
            }
        })
    }

    fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// The rate limits of a process. Each is `None` when disabled (rate 0).
#[derive(Clone, Default)]
pub struct RateLimits {
    per_ip: Option<Arc<Keyed<IpAddr>>>,
    per_user: Option<Arc<Keyed<UserId>>>,
}

impl RateLimits {
    /// Limits of `per_ip` and `per_user` requests per second (0 = off),
    /// each with its burst (0 = the rate).
    pub fn new(per_ip: (u32, u32), per_user: (u32, u32)) -> Self {
        Self {
            per_ip: Keyed::new(per_ip.0, per_ip.1).map(Arc::new),
            per_user: Keyed::new(per_user.0, per_user.1).map(Arc::new),
        }
    }

    /// The limits the settings ask for.
    pub fn from_args(args: &ServeArgs) -> Self {
        Self::new(
            (args.rate_per_ip, args.rate_per_ip_burst),
            (args.rate_per_user, args.rate_per_user_burst),
        )
    }

    /// Whether any limit is on.
    pub fn enabled(&self) -> bool {
        self.per_ip.is_some() || self.per_user.is_some()
    }

    /// Counts one request of `user`; 429 when over the limit.
    pub fn check_user(&self, user: &UserId) -> Result<(), ApiError> {
        match &self.per_user {
            Some(l) => l.check(user, "user"),
            None => Ok(()),
        }
    }

    /// Counts one request from `ip`; 429 when over the limit.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), ApiError> {
        match &self.per_ip {
            Some(l) => l.check(&ip_key(ip), "client address"),
            None => Ok(()),
        }
    }

    /// Drops the state of keys that are back to a full burst, so the maps
    /// hold only recently active users and addresses (memory stays bounded
    /// by the request rate, not by how many ids were ever seen).
    pub fn forget_idle(&self) {
        if let Some(l) = &self.per_ip {
            l.forget_idle();
        }
        if let Some(l) = &self.per_user {
            l.forget_idle();
        }
    }

    /// Runs [`RateLimits::forget_idle`] every `every` until `stop` flips.
    pub async fn janitor(self, every: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => self.forget_idle(),
                _ = stop.changed() => return,
            }
        }
    }
}

/// The key of an address: IPv4 as is, IPv6 by its /64 (one host usually
/// owns a whole /64, so single addresses would be free to rotate).
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Middleware: the per-IP limit, keyed by the TCP peer address (not
/// `X-Forwarded-For`, which any client can write).
pub async fn limit_ip(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(ConnectInfo(addr)) = req.extensions().get::<ConnectInfo<SocketAddr>>() {
        if let Err(e) = state.limits.check_ip(addr.ip()) {
            return e.into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn ipv6_is_keyed_by_its_64() {
        let a: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:4:5:6".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        let m: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(ip_key(m), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_limit_refuses_beyond_the_burst() {
        let l = RateLimits::new((0, 0), (1, 2));
        let u = UserId::parse("u").unwrap();
        assert!(l.check_user(&u).is_ok());
        assert!(l.check_user(&u).is_ok());
        match l.check_user(&u) {
            Err(ApiError::RateLimited {
                retry_after_secs, ..
            }) => assert!(retry_after_secs >= 1),
            other => panic!("expected 429, got {other:?}"),
        }
        // Another user is not affected.
        assert!(l.check_user(&UserId::parse("v").unwrap()).is_ok());
        assert!(l.check_ip("127.0.0.1".parse().unwrap()).is_ok());
    }
}
