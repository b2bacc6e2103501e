//! The short-lived cache of `GET /v1/campaigns/{id}` answers: the body (or
//! the fact that no such campaign exists) per campaign id, kept for a TTL
//! of about a second, with its ETag.
//!
//! The read is public and, uncached, costs a PostgreSQL count per call: a
//! crowd refreshing the page (or a bot) would compete with the claims'
//! commits for the pool. One fill per id and TTL, concurrent readers of an
//! id wait for the fill in progress rather than start their own. Nothing
//! here knows what the body holds: `campaigns` fills it.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::http::HeaderValue;
use bytes::Bytes;
use tokio::time::Instant;

use super::ApiError;

/// Most ids cached at once: beyond, expired entries are dropped, and if
/// none is, the answer is served uncached (memory stays bounded whatever
/// ids a client invents).
pub const MAX_ENTRIES: usize = 10_000;

/// A cached answer.
#[derive(Debug, Clone)]
pub enum Cached {
    /// The campaign's JSON body and its strong ETag.
    Found {
        /// `application/json` body.
        body: Bytes,
        /// Quoted digest of `body`.
        etag: HeaderValue,
    },
    /// No campaign has this id (404 `campaign_not_found`).
    NotFound,
}

impl Cached {
    /// A found body, with its ETag (a digest of the bytes, so the same
    /// counts give the same tag across fills and processes).
    pub fn found(body: Vec<u8>) -> Self {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(&body);
        let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        Self::Found {
            body: Bytes::from(body),
            etag: HeaderValue::from_str(&format!("\"{hex}\"")).expect("hex is a valid header"),
        }
    }
}

/// One id's slot: the answer and when it was filled. The async mutex makes
/// concurrent readers of a stale slot wait for one fill.
type Slot = Arc<tokio::sync::Mutex<Option<(Instant, Cached)>>>;

/// The cache; clones share it.
#[derive(Clone)]
pub struct BodyCache {
    /// How long an answer is served; zero turns the cache off.
    ttl: Duration,
    /// The slots by campaign id.
    slots: Arc<Mutex<HashMap<i64, Slot>>>,
}

impl BodyCache {
    /// A cache keeping answers for `ttl` (zero: no caching).
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            slots: Arc::default(),
        }
    }

    /// How long an answer is served.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The answer for `id`: cached if filled less than a TTL ago, else from
    /// `fill` (whose errors are not cached).
    /// With `fresh`, `fill` runs whatever the cache holds, and its answer
    /// is kept for the next readers.
    pub async fn get<F, Fut>(&self, id: i64, fresh: bool, fill: F) -> Result<Cached, ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Cached, ApiError>>,
    {
        let Some(slot) = self.slot(id) else {
            return fill().await;
        };
        let mut guard = slot.lock().await;
        if let Some((at, v)) = guard.as_ref() {
            if !fresh && at.elapsed() < self.ttl {
                return Ok(v.clone());
            }
        }
        let v = fill().await?;
        *guard = Some((Instant::now(), v.clone()));
        Ok(v)
    }

    /// Forgets `id` (a campaign was just created under it here).
    pub fn forget(&self, id: i64) {
        self.slots.lock().expect("cache lock").remove(&id);
    }

    /// The slot of `id`, made if needed; `None` when caching is off or the
    /// map is full of live entries.
    fn slot(&self, id: i64) -> Option<Slot> {
        if self.ttl.is_zero() {
            return None;
        }
        let mut slots = self.slots.lock().expect("cache lock");
        if let Some(s) = slots.get(&id) {
            return Some(s.clone());
        }
        if slots.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            // A slot being filled is busy: keep it.
            slots.retain(|_, s| match s.try_lock() {
                Ok(g) => g.as_ref().is_some_and(|(at, _)| at.elapsed() < ttl),
                Err(_) => true,
            });
            if slots.len() >= MAX_ENTRIES {
                return None;
            }
        }
        Some(slots.entry(id).or_default().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn one_fill_per_ttl_and_errors_are_not_kept() {
        let cache = BodyCache::new(Duration::from_secs(60));
        let fills = AtomicUsize::new(0);
        for _ in 0..5 {
            let v = cache
                .get(7, false, || async {
                    fills.fetch_add(1, Ordering::Relaxed);
                    Ok(Cached::NotFound)
                })
                .await
                .unwrap();
            assert!(matches!(v, Cached::NotFound));
        }
        assert_eq!(fills.load(Ordering::Relaxed), 1);
        cache.forget(7);
        let err = cache
            .get(7, false, || async { Err(ApiError::unavailable("x", "y")) })
            .await;
        assert!(err.is_err());
        let v = cache
            .get(7, false, || async { Ok(Cached::found(b"{}".to_vec())) })
            .await
            .unwrap();
        assert!(matches!(v, Cached::Found { .. }));
        // A fresh read fills again, and what it read is kept.
        let v = cache
            .get(7, true, || async { Ok(Cached::NotFound) })
            .await
            .unwrap();
        assert!(matches!(v, Cached::NotFound));
        let v = cache
            .get(7, false, || async { panic!("cached") })
            .await
            .unwrap();
        assert!(matches!(v, Cached::NotFound));
    }

    #[test]
    fn the_etag_follows_the_bytes() {
        let tag = |b: &[u8]| match Cached::found(b.to_vec()) {
            Cached::Found { etag, .. } => etag,
            Cached::NotFound => unreachable!(),
        };
        assert_eq!(tag(b"{\"a\":1}"), tag(b"{\"a\":1}"));
        assert_ne!(tag(b"{\"a\":1}"), tag(b"{\"a\":2}"));
    }
}
