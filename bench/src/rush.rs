//! Driving the load: the closed or open loop over `--concurrency` workers,
//! one user at a time (claim with retries, retry-storm repeats and polls,
//! own cancellations), per-request timing, and the top-up claims after a
//! cancel storm. What one user does is in `rush/user.rs`. What the
//! answers mean for the invariants is `verify`'s; reading the service's
//! state after the rush is `probe`'s.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{
    api::Api,
    args::pool_of,
    verify::{Seen, SeenKind},
};

mod user;

use self::user::{claim_with_retry, one_user};

/// Error answers seen during a run (every attempt counted).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ErrorCounts {
    /// 5xx answers (503 during a fault).
    pub http_5xx: usize,
    /// Requests that got no HTTP answer (refused, reset).
    pub transport: usize,
    /// Claims retried on another URL after an error.
    pub retries: usize,
}

impl ErrorCounts {
    fn add(&mut self, o: ErrorCounts) {
        self.http_5xx += o.http_5xx;
        self.transport += o.transport;
        self.retries += o.retries;
    }
}

/// What one worker of the load loop collected.
struct WorkerOut {
    hist: Histogram<u64>,
    /// Slowest first answer (µs) of the users due in each window.
    worst: Windows,
    /// Answers not yet written into the shared table (see [`SEEN_BATCH`]).
    seen: Vec<(u32, Seen)>,
    unstable: usize,
    behind: u64,
    errors: ErrorCounts,
}

impl WorkerOut {
    fn new() -> Self {
        Self {
            hist: new_hist(),
            worst: Windows::default(),
            seen: Vec::new(),
            unstable: 0,
            behind: 0,
            errors: ErrorCounts::default(),
        }
    }
}

/// Answers a worker keeps before writing them into the rush's table: the
/// table is allocated once (40 B per user), and workers no longer each
/// grow a copy of their share until the end (a 10 M-user run peaked at
/// 1.4 GiB that way).
const SEEN_BATCH: usize = 4096;

/// Writes a worker's answers into the table, by user number.
fn flush_seen(table: &std::sync::Mutex<Vec<Seen>>, seen: &mut Vec<(u32, Seen)>) {
    let mut t = table.lock().expect("seen table");
    for (i, a) in seen.drain(..) {
        t[i as usize] = a;
    }
}

/// Width of a [`Windows`] window.
pub(crate) const WINDOW: Duration = Duration::from_millis(100);

/// The slowest latency (µs) among the requests that started in each
/// [`WINDOW`] of the rush: where the tail was made (a stall shows as a few
/// windows far above the rest; a slow service as all of them).
#[derive(Debug, Clone, Default)]
pub(crate) struct Windows(Vec<u32>);

impl Windows {
    /// Notes a request that started `since` after the rush's start.
    pub(crate) fn note(&mut self, since: Duration, latency_us: u64) {
        let w = (since.as_millis() / WINDOW.as_millis()) as usize;
        if self.0.len() <= w {
            self.0.resize(w + 1, 0);
        }
        self.0[w] = self.0[w].max(latency_us.min(u64::from(u32::MAX)) as u32);
    }

    fn merge(&mut self, o: &Windows) {
        if self.0.len() < o.0.len() {
            self.0.resize(o.0.len(), 0);
        }
        for (a, b) in self.0.iter_mut().zip(&o.0) {
            *a = (*a).max(*b);
        }
    }

    /// The `n` slowest windows, slowest first: (start s, slowest ms).
    pub(crate) fn slowest(&self, n: usize) -> Vec<(f64, f64)> {
        let mut v: Vec<(usize, u32)> = self.0.iter().copied().enumerate().collect();
        v.sort_by_key(|&(_, us)| std::cmp::Reverse(us));
        v.into_iter()
            .take(n)
            .map(|(w, us)| (w as f64 * WINDOW.as_secs_f64(), f64::from(us) / 1000.0))
            .collect()
    }

    /// The median window's slowest request, ms: the tail without stalls.
    pub(crate) fn median(&self) -> f64 {
        let mut v = self.0.clone();
        v.sort_unstable();
        v.get(v.len() / 2).map_or(0.0, |&us| f64::from(us) / 1000.0)
    }
}

/// What every user of a rush shares.
pub(crate) struct Rush {
    pub(crate) api: Api,
    /// Campaign id.
    pub(crate) id: i64,
    /// Repeats per user (retry-storm).
    pub(crate) repeats: usize,
    /// `--retry-secs`.
    pub(crate) retry: Duration,
    /// `--cancel-frac`.
    pub(crate) cancel_frac: f64,
    /// Start of the run: `Seen::at` counts from here.
    pub(crate) t0: Instant,
}

impl Rush {
    pub(crate) fn now_ms(&self) -> u32 {
        self.t0.elapsed().as_millis().min(u32::MAX as u128) as u32
    }

    pub(crate) fn status_path(&self, i: usize) -> String {
        format!("/v1/campaigns/{}/claims/u{i}", self.id)
    }
}

pub(crate) fn new_hist() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// The shape of a rush: who asks, for which pool, how fast.
pub(crate) struct Load {
    /// Users `u0` .. `u{users-1}`, each asking once (plus repeats).
    pub(crate) users: usize,
    /// Workers, one connection each.
    pub(crate) conc: usize,
    /// Open loop: users due per second (0 = closed loop).
    pub(crate) rate: u64,
    /// `--max-secs`: users not reached by then are skipped.
    pub(crate) max_secs: u64,
    /// Pool names, by index.
    pub(crate) names: Arc<Vec<String>>,
    /// Cumulative shares of the pools (see [`pool_of`]).
    pub(crate) cum: Arc<Vec<f64>>,
}

/// What a rush collected, every worker's output merged.
pub(crate) struct RushOut {
    /// Latency of every request, microseconds.
    pub(crate) hist: Histogram<u64>,
    /// Slowest first answer per window of the rush.
    pub(crate) worst: Windows,
    /// What each user was last told, by user number (`None`: not reached).
    pub(crate) seen: Vec<Seen>,
    /// Repeats and polls that contradicted the first answer.
    pub(crate) unstable: usize,
    /// Open loop: requests that started more than 1 ms behind schedule.
    pub(crate) behind: u64,
    /// Every error answer, retries included.
    pub(crate) errors: ErrorCounts,
    /// Seconds from the first user to the last worker's end.
    pub(crate) elapsed: f64,
}

/// Rushes the campaign: `load.conc` workers take the next user in turn
/// until every user asked or `--max-secs` passed, with a progress bar
/// labelled `mode`.
pub(crate) async fn drive(rush: &Arc<Rush>, mode: &str, load: &Load) -> anyhow::Result<RushOut> {
    let (users, rate) = (load.users, load.rate);
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(load.max_secs);
    let progress = indicatif::ProgressBar::new(users as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>12} [{bar:30}] {pos}/{len} users {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    progress.set_prefix(mode.to_string());
    let table = Arc::new(std::sync::Mutex::new(vec![Seen::default(); users]));
    let start = Instant::now();
    let mut handles = Vec::with_capacity(load.conc);
    for k in 0..load.conc {
        let (rush, next, names, cum, progress, table) = (
            rush.clone(),
            next.clone(),
            load.names.clone(),
            load.cum.clone(),
            progress.clone(),
            table.clone(),
        );
        handles.push(tokio::spawn(async move {
            let mut out = WorkerOut::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= users || Instant::now() > deadline {
                    break;
                }
                // Open loop: user i is due at start + i / rate. Latency is
                // counted from when it was due, so a service that falls
                // behind is charged for the wait (no coordinated omission).
                let t_start = if rate > 0 {
                    let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
                    let now = Instant::now();
                    if due > now {
                        tokio::time::sleep_until(due.into()).await;
                    } else if now - due > Duration::from_millis(1) {
                        out.behind += 1;
                    }
                    due
                } else {
                    Instant::now()
                };
                let p = pool_of(i, &cum);
                let (told, u) = one_user(&rush, k, i, (p, &names[p]), &mut out, t_start).await;
                out.unstable += u;
                out.seen.push((i as u32, told));
                if out.seen.len() >= SEEN_BATCH {
                    flush_seen(&table, &mut out.seen);
                }
                progress.inc(1);
            }
            flush_seen(&table, &mut out.seen);
            out
        }));
    }
    let mut merged = RushOut {
        hist: new_hist(),
        worst: Windows::default(),
        seen: Vec::new(),
        unstable: 0,
        behind: 0,
        errors: ErrorCounts::default(),
        elapsed: 0.0,
    };
    for h in handles {
        let o = h.await?;
        merged.hist.add(o.hist)?;
        merged.worst.merge(&o.worst);
        merged.unstable += o.unstable;
        merged.behind += o.behind;
        merged.errors.add(o.errors);
    }
    progress.finish_and_clear();
    // Every worker has ended: the table is ours alone.
    merged.seen = std::mem::take(&mut *table.lock().expect("seen table"));
    merged.elapsed = start.elapsed().as_secs_f64();
    Ok(merged)
}

/// Cancelled stock must return to stock: new users claim each pool that
/// had cancellations until one is told sold_out (at most stock + 1
/// claims), so stranded stock shows as undersold. Their answers are
/// appended to `seen`; returns how many were added.
pub(crate) async fn top_up(
    rush: &Rush,
    pools: &[(String, i64, f64)],
    seen: &mut Vec<Seen>,
    errors: &mut ErrorCounts,
) -> usize {
    let mut topup_users = 0;
    for (p, (name, stock, _)) in pools.iter().enumerate() {
        if !seen
            .iter()
            .any(|s| s.pool as usize == p && s.kind.cancelled())
        {
            continue;
        }
        for _ in 0..=*stock {
            let i = seen.len();
            let s = claim_with_retry(rush, i, i, (p, name), errors).await;
            seen.push(s);
            topup_users += 1;
            if !matches!(s.kind, SeenKind::Granted | SeenKind::Queued) {
                break;
            }
        }
    }
    topup_users
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_keep_each_windows_slowest_and_rank_them() {
        let mut a = Windows::default();
        a.note(Duration::from_millis(5), 2_000);
        a.note(Duration::from_millis(50), 9_000);
        a.note(Duration::from_millis(250), 3_000);
        let mut b = Windows::default();
        b.note(Duration::from_millis(120), 4_000);
        b.note(Duration::from_millis(260), 1_000);
        a.merge(&b);
        // 0-100 ms: 9 ms; 100-200: 4 ms; 200-300: 3 ms (the larger of the two).
        assert_eq!(a.slowest(2), vec![(0.0, 9.0), (0.1, 4.0)]);
        assert_eq!(a.slowest(9).len(), 3);
        assert_eq!(a.median(), 4.0);
        assert_eq!(Windows::default().median(), 0.0);
    }
}
