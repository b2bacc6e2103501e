//! One flight per key: callers of one process that need the same slow
//! thing at the same moment (a campaign read from PostgreSQL, a campaign's
//! Redis state rebuilt) queue behind the first, which does it, rather than
//! each doing it or each sleeping and trying again. The ones that waited
//! are woken the moment it ends and find its result where it left it (a
//! cache, Redis).
//!
//! Why: a rush starts with every connection asking at once for a campaign
//! nobody has loaded yet. Each request read the campaign itself (a herd of
//! PostgreSQL reads) and all but one found the Redis state being rebuilt
//! and slept 20 ms before asking again: the first 100 ms of every rush were
//! its slowest (docs/BENCHMARKS.md, "The start of a rush").

use std::{
    collections::HashMap,
    future::Future,
    hash::Hash,
    sync::{Arc, Mutex},
};

use tokio::sync::OwnedMutexGuard;

/// The flights in progress, by key; clones share them.
#[derive(Debug)]
pub struct Flights<K> {
    /// The lock of each flight in progress, held by the one running it.
    running: Arc<Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>>,
}

impl<K> Clone for Flights<K> {
    fn clone(&self) -> Self {
        Self {
            running: self.running.clone(),
        }
    }
}

impl<K> Default for Flights<K> {
    fn default() -> Self {
        Self {
            running: Arc::default(),
        }
    }
}

/// Ends a flight: forgets it and wakes its waiters, also when the caller
/// running it is dropped half-way (a request cut by its timeout).
struct Landing<K: Hash + Eq> {
    running: Arc<Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>>,
    key: Option<K>,
    _held: OwnedMutexGuard<()>,
}

impl<K: Hash + Eq> Drop for Landing<K> {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            self.running.lock().expect("flights lock").remove(&k);
        }
    }
}

impl<K: Hash + Eq + Clone> Flights<K> {
    /// Runs `work` if no flight for `key` is in progress and returns its
    /// result; otherwise waits for that flight to end (however it ended) and
    /// returns `None`: the caller looks for its result, and may call again.
    pub async fn run<T>(&self, key: K, work: impl Future<Output = T>) -> Option<T> {
        self.run_waiting_until(key, None, work).await
    }

    /// [`Flights::run`], where a waiter gives up at `until` (returning
    /// `None`); the flight itself is never cut short by it.
    pub async fn run_waiting_until<T>(
        &self,
        key: K,
        until: Option<tokio::time::Instant>,
        work: impl Future<Output = T>,
    ) -> Option<T> {
        let (lock, held) = {
            let mut running = self.running.lock().expect("flights lock");
            match running.get(&key) {
                Some(lock) => (lock.clone(), None),
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    // A new lock is free: taken before anyone can see it.
                    let held = lock.clone().try_lock_owned().expect("a new lock is free");
                    running.insert(key.clone(), lock.clone());
                    (lock, Some(held))
                }
            }
        };
        match held {
            Some(held) => {
                let _landing = Landing {
                    running: self.running.clone(),
                    key: Some(key),
                    _held: held,
                };
                Some(work.await)
            }
            None => {
                match until {
                    Some(t) => drop(tokio::time::timeout_at(t, lock.lock()).await),
                    None => drop(lock.lock().await),
                }
                None
            }
        }
    }

    /// Flights in progress (for tests).
    pub fn in_flight(&self) -> usize {
        self.running.lock().expect("flights lock").len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// Lets every spawned task of this (single-threaded) test runtime run
    /// until it waits.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_flight_and_wake_when_it_lands() {
        let flights = Flights::<u32>::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let (release, gate) = tokio::sync::oneshot::channel::<()>();
        let first = {
            let (f, runs) = (flights.clone(), runs.clone());
            tokio::spawn(async move {
                f.run(7, async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    gate.await.ok();
                    "loaded"
                })
                .await
            })
        };
        // Wait (with a deadline) until the first flight is in progress.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while flights.in_flight() == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "flight never started"
            );
            tokio::task::yield_now().await;
        }
        let waiters: Vec<_> = (0..10)
            .map(|_| {
                let (f, runs) = (flights.clone(), runs.clone());
                tokio::spawn(async move {
                    f.run(7, async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        "again"
                    })
                    .await
                })
            })
            .collect();
        // Another key is not held up by key 7.
        assert_eq!(flights.run(8, async { 1 }).await, Some(1));
        // One thread: yielding lets every waiter reach the flight's lock.
        settle().await;
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap(), Some("loaded"));
        for w in waiters {
            assert_eq!(w.await.unwrap(), None, "a waiter ran its own flight");
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(flights.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_waiter_gives_up_at_its_bound_and_the_flight_goes_on() {
        let flights = Flights::<u32>::default();
        let (release, gate) = tokio::sync::oneshot::channel::<()>();
        let first = {
            let f = flights.clone();
            tokio::spawn(async move { f.run(3, async move { gate.await.is_ok() }).await })
        };
        settle().await;
        let until = tokio::time::Instant::now() + Duration::from_millis(20);
        assert_eq!(
            flights
                .run_waiting_until(3, Some(until), async { false })
                .await,
            None
        );
        assert_eq!(flights.in_flight(), 1, "the flight is still running");
        release.send(()).unwrap();
        assert_eq!(first.await.unwrap(), Some(true));
    }

    #[tokio::test]
    async fn a_flight_dropped_half_way_wakes_its_waiters_and_is_forgotten() {
        let flights = Flights::<u32>::default();
        let started = Arc::new(tokio::sync::Notify::new());
        let first = {
            let (f, started) = (flights.clone(), started.clone());
            tokio::spawn(async move {
                f.run(1, async move {
                    started.notify_one();
                    std::future::pending::<()>().await
                })
                .await
            })
        };
        started.notified().await;
        let waiter = {
            let f = flights.clone();
            tokio::spawn(async move { f.run(1, async { 2 }).await })
        };
        settle().await;
        first.abort();
        assert_eq!(waiter.await.unwrap(), None);
        assert_eq!(flights.in_flight(), 0);
        // The next caller runs a flight of its own.
        assert_eq!(flights.run(1, async { 3 }).await, Some(3));
    }
}
