//! Rate limits per user and per client IP (governor GCRA, in memory, per
//! process): the 429 answers of the API.
//!
//! [`RateLimits`] is built from [`RateConfig`]; the per-IP limit is the
//! [`limit_ip`] middleware (keyed by [`client_ip`]: the TCP peer, or the
//! header a trusted proxy sets), the per-user one is applied by
//! `auth::Caller::user`. Nothing here reads tokens or knows handlers.

use std::{
    hash::Hash,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    num::NonZeroU32,
    sync::Arc,
    time::Duration,
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderName},
    middleware::Next,
    response::{IntoResponse, Response},
};
use governor::{clock::Clock, DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::{error::ApiError, AppState};
use crate::{config::RateConfig, domain::UserId};

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

/// Failed token verifications per client address, in windows of a whole
/// second: once an address failed `per_sec` of them in the current second,
/// its user calls are refused before their token is verified until the
/// second ends. Only failures count, so it can be far stricter than the
/// per-address request limit: a client with a valid token rarely fails.
/// (A fixed window, not GCRA: governor has no check that does not spend,
/// and the check before verifying must not spend.)
struct BadTokens {
    /// Failures allowed per address and second.
    per_sec: u32,
    /// Start of the windows.
    epoch: std::time::Instant,
    /// Per address: (its window, as seconds since `epoch`; failures in it).
    seen: std::sync::Mutex<std::collections::HashMap<IpAddr, (u64, u32)>>,
}

impl BadTokens {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_secs()
    }

    /// 429 when `ip` used up its failures of this second.
    fn check(&self, ip: IpAddr) -> Result<(), ApiError> {
        let now = self.now();
        let seen = self.seen.lock().expect("bad tokens lock");
        match seen.get(&ip_key(ip)) {
            Some((w, n)) if *w == now && *n >= self.per_sec => {
                metrics::counter!("firstcome_rate_limited_total", "key" => "bad token")
                    .increment(1);
                Err(ApiError::RateLimited {
                    retry_after_secs: 1,
                    detail: "too many invalid tokens from this client address; retry later".into(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Counts a failed verification from `ip`.
    fn failed(&self, ip: IpAddr) {
        let now = self.now();
        let mut seen = self.seen.lock().expect("bad tokens lock");
        let e = seen.entry(ip_key(ip)).or_insert((now, 0));
        if e.0 != now {
            *e = (now, 0);
        }
        e.1 = e.1.saturating_add(1);
    }

    /// Drops past windows.
    fn forget_idle(&self) {
        let now = self.now();
        let mut seen = self.seen.lock().expect("bad tokens lock");
        seen.retain(|_, (w, _)| *w == now);
        seen.shrink_to_fit();
    }
}

/// The rate limits of a process. Each is `None` when disabled (rate 0).
#[derive(Clone, Default)]
pub struct RateLimits {
    per_ip: Option<Arc<Keyed<IpAddr>>>,
    per_user: Option<Arc<Keyed<UserId>>>,
    bad_tokens: Option<Arc<BadTokens>>,
}

impl RateLimits {
    /// Limits of `per_ip` and `per_user` requests per second (0 = off),
    /// each with its burst (0 = the rate).
    pub fn new(per_ip: (u32, u32), per_user: (u32, u32)) -> Self {
        Self {
            per_ip: Keyed::new(per_ip.0, per_ip.1).map(Arc::new),
            per_user: Keyed::new(per_user.0, per_user.1).map(Arc::new),
            bad_tokens: None,
        }
    }

    /// Also limits failed token verifications to `per_sec` per address and
    /// second (0 = no limit).
    pub fn with_bad_tokens(mut self, per_sec: u32) -> Self {
        self.bad_tokens = (per_sec > 0).then(|| {
            Arc::new(BadTokens {
                per_sec,
                epoch: std::time::Instant::now(),
                seen: Default::default(),
            })
        });
        self
    }

    /// The limits the settings ask for.
    pub fn from_config(c: &RateConfig) -> Self {
        Self::new((c.per_ip, c.per_ip_burst), (c.per_user, c.per_user_burst))
            .with_bad_tokens(c.bad_tokens_per_ip)
    }

    /// Whether any limit is on.
    pub fn enabled(&self) -> bool {
        self.per_ip.is_some() || self.per_user.is_some() || self.bad_tokens.is_some()
    }

    /// Before verifying a token from `ip`: 429 when the address failed too
    /// many verifications this second.
    pub fn check_bad_tokens(&self, ip: Option<IpAddr>) -> Result<(), ApiError> {
        match (&self.bad_tokens, ip) {
            (Some(b), Some(ip)) => b.check(ip),
            _ => Ok(()),
        }
    }

    /// After a failed token verification from `ip`.
    pub fn bad_token(&self, ip: Option<IpAddr>) {
        if let (Some(b), Some(ip)) = (&self.bad_tokens, ip) {
            b.failed(ip);
        }
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
        if let Some(b) = &self.bad_tokens {
            b.forget_idle();
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

/// The client address of a request as the per-address limits see it (set
/// by [`limit_ip`] for the routes behind it; `None` when the server did not
/// say).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

/// The client's address: with `proxy_header` (`--behind-proxy`), the last
/// address of the last such header, i.e. the hop our proxy appended (the
/// ones before it are whatever the client wrote, so reading the first would
/// let anyone pick their bucket); else, or when that header is missing or
/// unreadable, the TCP peer (then the proxy itself).
pub fn client_ip(
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    proxy_header: Option<&HeaderName>,
) -> Option<IpAddr> {
    let forwarded = proxy_header
        .and_then(|h| headers.get_all(h).iter().next_back())
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|hop| parse_hop(hop.trim()));
    forwarded.or(peer.map(|p| p.ip()))
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`
/// or `[2001:db8::1]:5678`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    hop.parse::<SocketAddr>().ok().map(|s| s.ip())
}

/// Middleware: the per-address limit, in front of every `/v1` handler and
/// therefore before any JWT is verified (a flood of forged tokens from one
/// address is refused 429 without a signature check). Keyed by
/// [`client_ip`], which it leaves in the request as [`ClientIp`].
pub async fn limit_ip(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let ip = client_ip(req.headers(), peer, state.proxy_header.as_ref());
    if let Some(ip) = ip {
        if let Err(e) = state.limits.check_ip(ip) {
            return e.into_response();
        }
    }
    req.extensions_mut().insert(ClientIp(ip));
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_is_keyed_by_its_64() {
        let a: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:4:5:6".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        let m: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(ip_key(m), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn behind_a_proxy_the_last_hop_is_the_client() {
        let peer: SocketAddr = "10.0.0.9:4000".parse().unwrap();
        let xff = HeaderName::from_static("x-forwarded-for");
        let mut h = HeaderMap::new();
        assert_eq!(client_ip(&h, Some(peer), Some(&xff)), Some(peer.ip()));
        h.append(&xff, "6.6.6.6, 1.2.3.4".parse().unwrap());
        assert_eq!(
            client_ip(&h, Some(peer), Some(&xff)),
            Some("1.2.3.4".parse().unwrap())
        );
        h.append(&xff, "[2001:db8::1]:443".parse().unwrap());
        assert_eq!(
            client_ip(&h, Some(peer), Some(&xff)),
            Some("2001:db8::1".parse().unwrap())
        );
        // Without --behind-proxy the header is not read at all.
        assert_eq!(client_ip(&h, Some(peer), None), Some(peer.ip()));
        let mut junk = HeaderMap::new();
        junk.insert(&xff, "not an address".parse().unwrap());
        assert_eq!(client_ip(&junk, Some(peer), Some(&xff)), Some(peer.ip()));
    }

    #[test]
    fn failed_tokens_close_the_address_for_the_second() {
        let l = RateLimits::default().with_bad_tokens(2);
        let (a, b) = (
            Some("10.0.0.1".parse().unwrap()),
            Some("10.0.0.2".parse().unwrap()),
        );
        l.bad_token(a);
        assert!(l.check_bad_tokens(a).is_ok());
        l.bad_token(a);
        // Unless the second turned in between, `a` is closed; `b` is not.
        assert!(l.check_bad_tokens(b).is_ok());
        let bt = l.bad_tokens.as_ref().unwrap();
        if bt.now() == bt.seen.lock().unwrap()[&a.unwrap()].0 {
            assert!(l.check_bad_tokens(a).is_err());
        }
        assert!(RateLimits::default().check_bad_tokens(a).is_ok());
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
