//! The operations files (ops/grafana/firstcome.json, ops/prometheus/alerts.yml)
//! name only metrics the service exports: after a claim in each Redis mode
//! (so the group commit, the flush and the drain have run), every
//! `firstcome_*` name they use is in `/metrics`.

use std::collections::BTreeSet;

use crate::common::spawn_app;

/// The `firstcome_*` metric names a file uses, a histogram's series
/// (`_bucket`, `_sum`, `_count`) by the histogram's name.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("firstcome_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        let mut name = &tail[..end];
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(base) = name.strip_suffix(suffix) {
                name = base;
            }
        }
        out.insert(name.to_string());
        rest = &tail[end..];
    }
    out
}

/// The metric names in a Prometheus text exposition (histograms by name).
fn exported(metrics: &str) -> BTreeSet<String> {
    names_in(
        &metrics
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(['{', ' ']).next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_alerts_name_is_exported() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dashboard = std::fs::read_to_string(format!("{root}/ops/grafana/firstcome.json")).unwrap();
    let alerts = std::fs::read_to_string(format!("{root}/ops/prometheus/alerts.yml")).unwrap();
    // The dashboard is valid JSON with its panels.
    let d: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    assert!(d["panels"].as_array().is_some_and(|p| p.len() >= 8));
    let mut wanted = names_in(&dashboard);
    wanted.extend(names_in(&alerts));
    assert!(wanted.len() >= 15, "{wanted:?}");

    let app = spawn_app().await;
    for mode in ["gate", "redis-lua", "redis-queue"] {
        let id = app.campaign(mode, &[("main", 5)]).await;
        for u in ["a", "b"] {
            let (s, v) = app.claim(id, u, None).await;
            assert!(s == 200 || s == 202, "{mode}: {s} {v}");
        }
        app.wait_durable(id, 2).await;
    }
    // The queue's gauges are sampled by the worker once a second.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let have = exported(&app.metrics().await);
        let missing: BTreeSet<&String> = wanted.difference(&have).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "named but not exported: {missing:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[test]
fn names_are_read_with_histograms_by_their_name() {
    let n = names_in("rate(firstcome_a_bucket[1m]) firstcome_b_total{x=\"1\"} firstcome_c_sum");
    let want: BTreeSet<String> = ["firstcome_a", "firstcome_b_total", "firstcome_c"]
        .map(String::from)
        .into();
    assert_eq!(n, want);
}
