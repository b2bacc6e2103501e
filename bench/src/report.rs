//! Output of `firstcome-bench`: the terminal table, the JSON document
//! (scripts read its fields: keep them), and an HTML report with SVG plots
//! (plotters) that opens offline. Rendering only: nothing here measures,
//! calls the service, or decides what counts as a violation.

use std::{collections::BTreeMap, fmt::Write as _};

use plotters::prelude::*;

use crate::{limits::Limit, RunResult};

/// Colours of the modes in every plot.
const PALETTE: [RGBColor; 6] = [
    RGBColor(214, 39, 40),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(31, 119, 180),
    RGBColor(148, 103, 189),
    RGBColor(127, 127, 127),
];

fn colour(modes: &[String], mode: &str) -> RGBColor {
    PALETTE[modes.iter().position(|m| m == mode).unwrap_or(5) % PALETTE.len()]
}

/// The unpipelined Lua limit at a concurrency, if measured.
fn lua_limit(limits: &[Limit], conc: usize) -> Option<f64> {
    limits
        .iter()
        .find(|l| l.concurrency == conc && l.name.ends_with("pipeline 1"))
        .map(|l| l.per_sec)
}

/// `redis-benchmark`'s unpipelined rate of the claim script at `conc`.
fn rb_limit(limits: &[Limit], conc: usize) -> Option<f64> {
    limits
        .iter()
        .find(|l| l.concurrency == conc && l.name == crate::limits::REDIS_BENCHMARK)
        .map(|l| l.per_sec)
}

/// Markdown table of the limits (empty when none were measured).
fn limits_table(limits: &[Limit]) -> String {
    let mut s = String::new();
    if !limits.is_empty() {
        let _ = writeln!(s, "\n| limit | conc | per s | p50 ms | p99 ms |");
        let _ = writeln!(s, "|---|---|---|---|---|");
        for l in limits {
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {:.3} | {:.3} |",
                l.name, l.concurrency, l.per_sec, l.p50_ms, l.p99_ms
            );
        }
    }
    s
}

/// Markdown table of the runs, with ratios to db-lock and to the limits.
pub fn table(results: &[RunResult], limits: &[Limit]) -> String {
    if results.is_empty() {
        return limits_table(limits);
    }
    let mut s = String::new();
    let base: BTreeMap<usize, f64> = results
        .iter()
        .filter(|r| r.mode == "db-lock")
        .map(|r| (r.concurrency, r.rps))
        .collect();
    let _ = writeln!(
        s,
        "| mode | scenario | conc | requests | req/s | x db-lock | x lua limit | x redis-benchmark | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | grants | durable/s | drain s | errors | violations |"
    );
    let _ = writeln!(
        s,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in results {
        let ratio = |b: Option<f64>| {
            b.filter(|b| *b > 0.0)
                .map(|b| format!("{:.2}", r.rps / b))
                .unwrap_or_else(|| "-".into())
        };
        let _ = writeln!(
            s,
            "| {} | {:?} | {} | {} | {:.0} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.0} | {:.2} | {} | {} |",
            r.mode,
            r.scenario,
            r.concurrency,
            r.requests,
            r.rps,
            ratio(base.get(&r.concurrency).copied()),
            ratio(lua_limit(limits, r.concurrency)),
            ratio(rb_limit(limits, r.concurrency)),
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.p999_ms,
            r.max_ms,
            r.grants,
            r.durable_per_sec,
            r.drain_secs,
            r.errors,
            r.violations.summary()
        );
    }
    s.push_str(&limits_table(limits));
    let _ = writeln!(
        s,
        "\nLittle's law (seed 004): concurrency = throughput x latency. Mean latency x req/s per run:"
    );
    for r in results {
        let _ = writeln!(
            s,
            "- {} c={}: {:.0} req/s x {:.2} ms = {:.1} requests in flight (of {})",
            r.mode,
            r.concurrency,
            r.rps,
            r.mean_ms,
            r.rps * r.mean_ms / 1000.0,
            r.concurrency
        );
    }
    let extra: Vec<&RunResult> = results.iter().filter(|r| r.service.is_some()).collect();
    if !extra.is_empty() {
        let _ = writeln!(s, "\nService side (scraped from /metrics and Redis INFO):");
        for r in extra {
            let sv = r.service.as_ref().expect("filtered");
            let _ = writeln!(
                s,
                "- {} c={}: peak RSS {:.1} MiB; Redis memory {}; claim-to-durable p99 <= {}; group-commit mean batch {}",
                r.mode,
                r.concurrency,
                sv.peak_rss_bytes as f64 / 1048576.0,
                // The db-* modes keep nothing in Redis: no per-claimant figure.
                if r.mode.starts_with("db-") {
                    "not used".to_string()
                } else {
                    format!(
                        "{:+.1} MiB ({:.0} B per claimant)",
                        sv.redis_memory_delta as f64 / 1048576.0,
                        sv.redis_bytes_per_claimant
                    )
                },
                sv.durable_p99_ms.map(|v| format!("{v} ms")).unwrap_or_else(|| "-".into()),
                sv.group_commit_mean_rows.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into()),
            );
        }
    }
    s
}

/// An SVG of `size` drawn by `draw` on a white background.
fn svg(
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend, plotters::coord::Shift>) -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    Ok(out)
}

/// The runs at the highest concurrency measured, and that concurrency.
fn at_top_concurrency(results: &[RunResult]) -> (usize, Vec<&RunResult>) {
    let conc = results.iter().map(|r| r.concurrency).max().unwrap_or(0);
    (
        conc,
        results.iter().filter(|r| r.concurrency == conc).collect(),
    )
}

/// A legend entry: a short line in the series' colour.
fn line_legend(c: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
}

/// Draws the legend of `chart`'s labelled series at `at`.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    at: SeriesLabelPosition,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(at)
        .draw()?;
    Ok(())
}

fn svg_throughput(results: &[RunResult], modes: &[String]) -> anyhow::Result<String> {
    svg((720, 360), |root| {
        let (conc, rows) = at_top_concurrency(results);
        let max = rows.iter().map(|r| r.rps).fold(1.0, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("Claims per second by mode (concurrency {conc})"),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(70)
            .build_cartesian_2d((0..rows.len()).into_segmented(), 0.0..max)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => {
                    rows.get(*i).map(|r| r.mode.clone()).unwrap_or_default()
                }
                _ => String::new(),
            })
            .y_desc("requests/s")
            .draw()?;
        for (i, r) in rows.iter().enumerate() {
            let c = colour(modes, &r.mode);
            chart.draw_series(std::iter::once(Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), r.rps),
                ],
                c.filled(),
            )))?;
        }
        Ok(())
    })
}

fn svg_cdf(results: &[RunResult], modes: &[String]) -> anyhow::Result<String> {
    svg((720, 400), |root| {
        let (conc, rows) = at_top_concurrency(results);
        let max_ms = rows.iter().map(|r| r.p999_ms).fold(1.0, f64::max).max(0.1) * 1.2;
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("Latency CDF (concurrency {conc})"),
                ("sans-serif", 18),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d((0.01..max_ms).log_scale(), 0.0..1.0)?;
        chart
            .configure_mesh()
            .x_desc("latency ms (log)")
            .y_desc("fraction")
            .draw()?;
        for r in rows {
            let c = colour(modes, &r.mode);
            chart
                .draw_series(LineSeries::new(
                    r.cdf.iter().map(|(ms, q)| (ms.max(0.01), *q)),
                    c.stroke_width(2),
                ))?
                .label(r.mode.clone())
                .legend(line_legend(c));
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight)
    })
}

fn svg_scaling(results: &[RunResult], modes: &[String]) -> anyhow::Result<String> {
    svg((720, 400), |root| {
        let conc = || results.iter().map(|r| r.concurrency);
        let max_c = conc().max().unwrap_or(1).max(2) as f64;
        let min_c = conc().min().unwrap_or(1).max(1) as f64;
        let max = results.iter().map(|r| r.rps).fold(1.0, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(root)
            .caption("Throughput against concurrency", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(70)
            .build_cartesian_2d((min_c..max_c * 1.01).log_scale(), 0.0..max)?;
        chart
            .configure_mesh()
            .x_desc("connections (log)")
            .y_desc("requests/s")
            .draw()?;
        for m in modes {
            let c = colour(modes, m);
            let mut pts: Vec<(f64, f64)> = results
                .iter()
                .filter(|r| &r.mode == m)
                .map(|r| (r.concurrency as f64, r.rps))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
                .label(m.clone())
                .legend(line_legend(c));
            chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, c.filled())))?;
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft)
    })
}

/// The JSON document: the command line, every run and every limit.
pub fn json(results: &[RunResult], limits: &[Limit], command: &str) -> anyhow::Result<Vec<u8>> {
    Ok(serde_json::to_vec_pretty(
        &serde_json::json!({ "command": command, "results": results, "limits": limits }),
    )?)
}

/// The HTML report: the table and three plots, self-contained.
pub fn html(results: &[RunResult], limits: &[Limit], command: &str) -> anyhow::Result<String> {
    let mut modes: Vec<String> = Vec::new();
    for r in results {
        if !modes.contains(&r.mode) {
            modes.push(r.mode.clone());
        }
    }
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>firstcome bench</title>\
         <style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}pre{{background:#f4f4f4;padding:1em;overflow-x:auto}}</style>\
         </head><body><h1>firstcome bench</h1><p>Command:</p><pre>{}</pre>",
        esc(command)
    );
    let _ = write!(h, "<h2>Throughput</h2>{}", svg_throughput(results, &modes)?);
    let _ = write!(h, "<h2>Latency</h2>{}", svg_cdf(results, &modes)?);
    if results
        .iter()
        .map(|r| r.concurrency)
        .collect::<std::collections::HashSet<_>>()
        .len()
        > 1
    {
        let _ = write!(h, "<h2>Scaling</h2>{}", svg_scaling(results, &modes)?);
    }
    let _ = write!(
        h,
        "<h2>Table</h2><pre>{}</pre></body></html>",
        esc(&table(results, limits))
    );
    Ok(h)
}
