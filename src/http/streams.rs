//! Caps on open SSE streams (`GET .../claims/{user}/events`): in total, per
//! user and per client address. A stream holds a connection, a task and a
//! place in its campaign's watcher ([`super::fanout`]) for as long as it is
//! open, and the rate limit counts only the request that opens it, so
//! without caps one token could hold thousands of streams (issue 19,
//! item 1).
//!
//! A [`Slot`] is taken before the stream starts and given back when the
//! stream ends (it lives inside the stream), however it ends.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use super::error::ApiError;
use crate::{config::StreamCaps, domain::UserId};

/// Open streams of one process.
pub struct StreamSlots {
    /// The caps.
    caps: StreamCaps,
    /// Open streams: in total, per user, per client address.
    open: Mutex<Open>,
}

/// What is open now.
#[derive(Default)]
struct Open {
    /// All streams.
    total: usize,
    /// Per user id.
    per_user: HashMap<String, u32>,
    /// Per client address.
    per_ip: HashMap<IpAddr, u32>,
}

/// One open stream; gives its place back when dropped.
pub struct Slot {
    /// Where it was taken.
    slots: Arc<StreamSlots>,
    /// Whose.
    user: String,
    /// From where (unknown when the server did not say).
    ip: Option<IpAddr>,
}

impl StreamSlots {
    /// Slots under `caps`.
    pub fn new(caps: StreamCaps) -> Arc<Self> {
        Arc::new(Self {
            caps,
            open: Mutex::default(),
        })
    }

    /// Takes a slot for a stream of `user` from `ip`: 429 `rate_limited`
    /// beyond the per-user or per-address cap, 503 `stream_capacity` when
    /// the process holds its most streams.
    pub fn acquire(self: &Arc<Self>, user: &UserId, ip: Option<IpAddr>) -> Result<Slot, ApiError> {
        let mut open = self.open.lock().expect("stream slots lock");
        let refuse = |what: &str| {
            metrics::counter!("firstcome_sse_refused_total", "cap" => what.to_string())
                .increment(1);
        };
        if open.total >= self.caps.total {
            refuse("total");
            return Err(ApiError::unavailable(
                "stream_capacity",
                "this process holds its most event streams; poll the claim or retry later",
            ));
        }
        let too_many = |what: &str| ApiError::RateLimited {
            retry_after_secs: 1,
            detail: format!("too many open event streams for this {what}; close one first"),
        };
        if open.per_user.get(user.as_str()).copied().unwrap_or(0) >= self.caps.per_user {
            refuse("user");
            return Err(too_many("user"));
        }
        if let Some(ip) = ip {
            if open.per_ip.get(&ip).copied().unwrap_or(0) >= self.caps.per_ip {
                refuse("address");
                return Err(too_many("client address"));
            }
            *open.per_ip.entry(ip).or_default() += 1;
        }
        *open.per_user.entry(user.as_str().to_string()).or_default() += 1;
        open.total += 1;
        metrics::gauge!("firstcome_sse_streams_open").set(open.total as f64);
        Ok(Slot {
            slots: self.clone(),
            user: user.as_str().to_string(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().expect("stream slots lock");
        open.total -= 1;
        metrics::gauge!("firstcome_sse_streams_open").set(open.total as f64);
        // Counts at zero are removed: the maps hold only open streams.
        fn release<K: std::hash::Hash + Eq>(m: &mut HashMap<K, u32>, k: &K) {
            if let Some(n) = m.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    m.remove(k);
                }
            }
        }
        release(&mut open.per_user, &self.user);
        if let Some(ip) = &self.ip {
            release(&mut open.per_ip, ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_and_given_back() {
        let s = StreamSlots::new(StreamCaps {
            total: 3,
            per_user: 2,
            per_ip: 2,
        });
        let (a, b) = (UserId::parse("a").unwrap(), UserId::parse("b").unwrap());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a1 = s.acquire(&a, Some(ip)).unwrap();
        let _a2 = s.acquire(&a, None).unwrap();
        assert!(s.acquire(&a, None).is_err(), "per user");
        let _b1 = s.acquire(&b, Some(ip)).unwrap();
        assert!(s.acquire(&b, Some(ip)).is_err(), "total before address");
        drop(a1);
        assert!(s.acquire(&b, Some(ip)).is_ok(), "a slot given back");
        assert_eq!(s.open.lock().unwrap().per_user.get("a"), Some(&1));
    }
}
