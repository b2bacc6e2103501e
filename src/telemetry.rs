//! Logs (tracing) and metrics (Prometheus exporter).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Buckets of the latency histograms, in seconds: fine below a millisecond
/// (Redis answers) up to seconds (a lock queue in db-lock).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Buckets of batch sizes (group commit rows).
pub const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide metrics recorder once (tests start many apps
/// in one process).
pub fn init_metrics() -> &'static PrometheusHandle {
    PROMETHEUS.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_rows".into()), BATCH_BUCKETS))
            .expect("valid buckets")
            // No idle expiry of series: every label set is bounded (routes,
            // statuses, nine methods and `other`), and the recency tracking
            // it needs cost gate 7 % of its claim rate (docs/BENCHMARKS.md).
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder is installed; keep ours for /metrics.
        let _ = metrics::set_global_recorder(recorder);
        register_known();
        handle
    })
}

/// How often histogram samples are folded into their buckets when nobody
/// scrapes: the recorder keeps every sample until then (`build_recorder`
/// runs no upkeep of its own), so an unscraped process grew by every
/// request's latency sample and spiked at the next scrape (922 MiB after
/// 3.5 million claims, docs/BENCHMARKS.md).
pub const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds histogram samples every [`UPKEEP_EVERY`] until `stop` turns true.
pub async fn upkeep(mut stop: tokio::sync::watch::Receiver<bool>) {
    let handle = init_metrics();
    while !*stop.borrow() {
        handle.run_upkeep();
        let _ = tokio::time::timeout(UPKEEP_EVERY, stop.changed()).await;
    }
}

/// Counters that alerts and dashboards (ops/) watch, with every label value
/// they can take, at zero from the start: a series that appears only on
/// its first event makes `rate()` and `increase()` miss that event, and an
/// alert on a counter that does not exist yet can never fire.
fn register_known() {
    for (name, label, values) in [
        (
            "firstcome_reconcile_repairs_total",
            "kind",
            &["rebuild", "answer", "counters", "settings"][..],
        ),
        (
            "firstcome_webhook_deliveries_total",
            "outcome",
            &["delivered", "failed", "dead"][..],
        ),
        (
            "firstcome_operator_actions_total",
            "action",
            &["pause", "resume", "patch"][..],
        ),
    ] {
        for v in values {
            metrics::counter!(name, label => *v).absolute(0);
        }
    }
    for name in [
        "firstcome_dead_letters_total",
        "firstcome_redis_rebuilds_total",
        "firstcome_redis_server_changes_total",
        "firstcome_restock_diverged_total",
        "firstcome_gate_compensations_total",
        "firstcome_orphans_settled_total",
        "firstcome_stream_batch_failures_total",
        "firstcome_flush_stale_total",
    ] {
        metrics::counter!(name).absolute(0);
    }
    for name in [
        "firstcome_webhook_pending",
        "firstcome_webhook_oldest_pending_seconds",
        "firstcome_sse_streams_open",
    ] {
        metrics::gauge!(name).set(0.0);
    }
}

/// This process' resident and peak resident memory in bytes, from
/// `/proc/self/status` (Linux); `None` elsewhere.
pub fn memory() -> Option<(f64, f64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v * 1024.0)
    };
    Some((kib("VmRSS:")?, kib("VmHWM:")?))
}

/// The metrics in Prometheus' text format, with the process' memory.
pub fn render_metrics() -> String {
    let handle = init_metrics();
    metrics::counter!("firstcome_redis_calls_total")
        .absolute(crate::storage::redis::CALLS.load(std::sync::atomic::Ordering::Relaxed));
    if let Some((rss, peak)) = memory() {
        metrics::gauge!("firstcome_process_resident_bytes").set(rss);
        metrics::gauge!("firstcome_process_peak_resident_bytes").set(peak);
    }
    handle.render()
}

/// Installs the log subscriber (RUST_LOG, default info). Idempotent.
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}
