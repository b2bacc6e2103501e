//! What one user of a rush does: its claim, retried over the API
//! processes while it errs; in retry-storm its repeats and status polls;
//! with `--cancel-frac` its own cancellation. Each request is timed into
//! the worker's histogram. The loop over users is in `rush.rs`.

use std::time::{Duration, Instant};

use hyper::Method;
use serde_json::json;

use super::{ErrorCounts, Rush, WorkerOut};
use crate::verify::{same_answer, seen_from, Seen, SeenKind};

/// Whether user `i` cancels once granted: a fixed pseudo-random draw, so a
/// rerun picks the same users.
fn cancels(i: usize, frac: f64) -> bool {
    let h = (i as u64 ^ 0x5DEE_CE66_D1CE_4E5B).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((h >> 11) as f64 / (1u64 << 53) as f64) < frac
}

/// User `i`'s claim on pool `p`, retried on the next URL (with backoff)
/// while it errs (5xx, or no answer: the process died or stopped) until
/// `--retry-secs` have passed: the user must still get an answer.
pub(super) async fn claim_with_retry(
    rush: &Rush,
    k: usize,
    i: usize,
    pool: (usize, &str),
    errors: &mut ErrorCounts,
) -> Seen {
    let (p, pool_name) = pool;
    let body = json!({"user_id": format!("u{i}"), "pool": pool_name});
    let path = format!("/v1/campaigns/{}/claims", rush.id);
    let retry_deadline = Instant::now() + rush.retry;
    let mut attempt = 0usize;
    loop {
        let r = rush
            .api
            .call(k + attempt, Method::POST, &path, Some(&body), false)
            .await;
        let mut seen = match &r {
            Ok((s, v)) => {
                if *s >= 500 {
                    errors.http_5xx += 1;
                }
                seen_from(*s, v, p as u8)
            }
            Err(_) => {
                errors.transport += 1;
                Seen {
                    kind: SeenKind::Error,
                    pool: p as u8,
                    ..Default::default()
                }
            }
        };
        seen.at = rush.now_ms();
        let retryable = r.is_err() || matches!(&r, Ok((s, _)) if *s >= 500);
        let backoff = Duration::from_millis((20u64 << attempt.min(5)).min(500));
        if !retryable || Instant::now() + backoff > retry_deadline {
            return seen;
        }
        errors.retries += 1;
        attempt += 1;
        tokio::time::sleep(backoff).await;
    }
}

/// `--cancel-frac`: user `i`, told `told`, cancels its grant (redis-queue:
/// polls until granted first, at most 3 s). Returns what the user now
/// holds: `Cancelled` (DELETE answered 200), `CancelInDoubt` (no answer
/// after the retries), or `told` unchanged (not granted, or the service
/// refused the DELETE: the check after the drain judges that).
async fn cancel_own(rush: &Rush, k: usize, i: usize, told: Seen, errors: &mut ErrorCounts) -> Seen {
    let mut told = told;
    let path = rush.status_path(i);
    if told.kind == SeenKind::Queued {
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Ok((200, v)) = rush.api.call(k, Method::GET, &path, None, false).await {
                let mut a = seen_from(200, &v, told.pool);
                a.at = rush.now_ms();
                match a.kind {
                    SeenKind::Queued => {}
                    // A final answer received by polling is one the user
                    // was given.
                    SeenKind::Granted | SeenKind::SoldOut => {
                        told = a;
                        break;
                    }
                    _ => break,
                }
            }
        }
    }
    if told.kind != SeenKind::Granted {
        return told;
    }
    let deadline = Instant::now() + rush.retry.max(Duration::from_secs(1));
    let mut attempt = 0usize;
    loop {
        let r = rush
            .api
            .call(k + attempt, Method::DELETE, &path, None, false)
            .await;
        match &r {
            Ok((200, v)) if v["status"] == "cancelled" => {
                return Seen {
                    kind: SeenKind::Cancelled,
                    at: rush.now_ms(),
                    ..told
                };
            }
            Ok((s, _)) if *s < 500 => return told,
            Ok(_) => errors.http_5xx += 1,
            Err(_) => errors.transport += 1,
        }
        let backoff = Duration::from_millis((20u64 << attempt.min(5)).min(500));
        if Instant::now() + backoff > deadline {
            return Seen {
                kind: SeenKind::CancelInDoubt,
                at: rush.now_ms(),
                ..told
            };
        }
        errors.retries += 1;
        attempt += 1;
        tokio::time::sleep(backoff).await;
    }
}

/// Sends user `i`'s claim (and, in retry-storm, repeats and polls; with
/// `--cancel-frac`, maybe a cancellation); returns the last final answer
/// the user was given (or the first answer) and how many later answers
/// contradicted the first.
pub(super) async fn one_user(
    rush: &Rush,
    k: usize,
    i: usize,
    pool: (usize, &str),
    out: &mut WorkerOut,
    t_start: Instant,
) -> (Seen, usize) {
    let (p, pool_name) = pool;
    let first = claim_with_retry(rush, k, i, pool, &mut out.errors).await;
    // The latency is the time to the final answer, retries included.
    let latency = t_start.elapsed().as_micros() as u64;
    out.hist.saturating_record(latency);
    out.worst
        .note(t_start.saturating_duration_since(rush.t0), latency);
    let mut told = first;
    let body = json!({"user_id": format!("u{i}"), "pool": pool_name});
    let path = format!("/v1/campaigns/{}/claims", rush.id);
    let mut unstable = 0;
    for _ in 0..rush.repeats {
        let t0 = Instant::now();
        let again = rush
            .api
            .call(k, Method::POST, &path, Some(&body), false)
            .await;
        out.hist.saturating_record(t0.elapsed().as_micros() as u64);
        if let Ok((s, v)) = again {
            let mut a = seen_from(s, &v, p as u8);
            a.at = rush.now_ms();
            // Queued may legitimately have become granted.
            let moved_on = first.kind == SeenKind::Queued
                && matches!(a.kind, SeenKind::Granted | SeenKind::Queued);
            if !same_answer(&a, &first) && !moved_on && a.kind != SeenKind::Error {
                unstable += 1;
            }
            if told.kind == SeenKind::Queued && a.kind == SeenKind::Granted {
                told = a;
            }
        }
        let t0 = Instant::now();
        let poll = rush
            .api
            .call(k, Method::GET, &rush.status_path(i), None, false)
            .await;
        out.hist.saturating_record(t0.elapsed().as_micros() as u64);
        if let Ok((200, v)) = poll {
            let mut a = seen_from(200, &v, p as u8);
            a.at = rush.now_ms();
            if a.kind != first.kind
                && !(first.kind == SeenKind::Queued && a.kind == SeenKind::Granted)
            {
                unstable += 1;
            }
            if told.kind == SeenKind::Queued
                && matches!(a.kind, SeenKind::Granted | SeenKind::SoldOut)
            {
                told = a;
            }
        }
    }
    if rush.cancel_frac > 0.0 && cancels(i, rush.cancel_frac) {
        told = cancel_own(rush, k, i, told, &mut out.errors).await;
    }
    (told, unstable)
}

#[cfg(test)]
mod tests {
    use super::cancels;

    #[test]
    fn cancels_draws_about_the_fraction() {
        let n = (0..10_000).filter(|&i| cancels(i, 0.2)).count();
        assert!((1_800..2_200).contains(&n), "{n}");
        assert_eq!((0..1000).filter(|&i| cancels(i, 0.0)).count(), 0);
        assert_eq!((0..1000).filter(|&i| cancels(i, 1.0)).count(), 1000);
    }
}
