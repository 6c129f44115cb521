//! What the user sees: a table, one JSON document (`--json`), and SVG plots (`--plot`).

use std::fmt::Write as _;

use anyhow::Context as _;

use crate::Args;
use crate::record::{Report, RunResult};

/// Prints the report as `--json` or a table, and writes the plot if asked.
pub fn emit(args: &Args, report: &Report) -> anyhow::Result<()> {
    if args.json {
        let doc = match report.results.as_slice() {
            [one] if args.concurrency.len() <= 1 => serde_json::to_string_pretty(one)?,
            _ => serde_json::to_string_pretty(report)?,
        };
        println!("{doc}");
    } else {
        print!("{}", table(report));
    }
    if let Some(path) = &args.plot {
        let svg = if report.results.len() > 1 {
            sweep_svg(&report.results)
        } else {
            timeline_svg(&report.results[0])
        };
        std::fs::write(path, svg).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// A fixed-width table, one row per scenario, then error and server-side details.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<12} {:>6} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>6}",
        "protocol",
        "load",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "errors",
        "cpu%"
    );
    for r in &report.results {
        let load = r
            .concurrency
            .map(|c| format!("c{c}"))
            .or(r.rate.map(|x| format!("r{x}")))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<12} {:>6} {:>10.1} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>7} {:>6.0}",
            r.protocol,
            load,
            r.throughput,
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.p999_ms,
            r.max_ms,
            r.errors,
            r.client_cpu_percent
        );
    }
    for r in &report.results {
        if !r.errors_by_class.is_empty() {
            let classes: Vec<String> = r
                .errors_by_class
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            let _ = writeln!(out, "errors ({}): {}", r.protocol, classes.join(", "));
        }
        if let Some(s) = &r.server {
            let _ = writeln!(
                out,
                "server ({}, c{:?}): avg batch {:.2}, queue {:.1} us, compute in/infer/out {:.1}/{:.1}/{:.1} us",
                r.protocol,
                r.concurrency.unwrap_or_default(),
                s.avg_batch_size,
                s.avg_queue_us,
                s.avg_compute_input_us,
                s.avg_compute_infer_us,
                s.avg_compute_output_us
            );
        }
    }
    out
}

struct Series<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

fn chart(title: &str, x_label: &str, y_label: &str, series: &[Series<'_>]) -> String {
    let (w, h, left, bottom, top, right) = (720.0, 420.0, 70.0, 50.0, 40.0, 150.0);
    let all = series.iter().flat_map(|s| s.points.iter());
    let x_max = all.clone().map(|p| p.0).fold(0.0, f64::max).max(1e-9) * 1.05;
    let y_max = all.map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.1;
    let sx = |x: f64| left + x / x_max * (w - left - right);
    let sy = |y: f64| h - bottom - y / y_max * (h - bottom - top);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{title}</text>\n\
         <line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{x_label}</text>\n\
         <text x=\"16\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {})\">{y_label}</text>\n",
        (w - right + left) / 2.0,
        h - bottom,
        w - right,
        h - bottom,
        h - bottom,
        (w - right + left) / 2.0,
        h - 12.0,
        (h - bottom + top) / 2.0,
        (h - bottom + top) / 2.0,
    );
    for i in 0..=4 {
        let (xv, yv) = (x_max * i as f64 / 4.0, y_max * i as f64 / 4.0);
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{xv:.1}</text><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{yv:.3}</text>",
            sx(xv),
            h - bottom + 16.0,
            left - 6.0,
            sy(yv) + 4.0
        );
    }
    for (i, s) in series.iter().enumerate() {
        let points: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
            s.color,
            points.join(" ")
        );
        for &(x, y) in &s.points {
            let _ = writeln!(
                svg,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{}\"/>",
                sx(x),
                sy(y),
                s.color
            );
        }
        let ly = top + 10.0 + 18.0 * i as f64;
        let _ = writeln!(
            svg,
            "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">{}</text>",
            w - right + 10.0,
            w - right + 30.0,
            s.color,
            w - right + 36.0,
            ly + 4.0,
            s.name
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// Latency percentiles against throughput, one point per scenario of a sweep.
pub fn sweep_svg(results: &[RunResult]) -> String {
    let mut sorted: Vec<&RunResult> = results.iter().collect();
    sorted.sort_by(|a, b| a.throughput.total_cmp(&b.throughput));
    let series = |name, color, f: fn(&RunResult) -> f64| Series {
        name,
        color,
        points: sorted.iter().map(|r| (r.throughput, f(r))).collect(),
    };
    chart(
        &format!(
            "{} {}: latency vs throughput",
            results[0].protocol, results[0].model
        ),
        "throughput (successful requests/s)",
        "latency (ms)",
        &[
            series("p50", "#1b9e77", |r| r.p50_ms),
            series("p90", "#7570b3", |r| r.p90_ms),
            series("p99", "#d95f02", |r| r.p99_ms),
        ],
    )
}

/// p50 and p99 per second of one run.
pub fn timeline_svg(result: &RunResult) -> String {
    let series = |name, color, f: fn(&crate::record::Second) -> f64| Series {
        name,
        color,
        points: result
            .timeline
            .iter()
            .map(|s| (s.second as f64, f(s)))
            .collect(),
    };
    chart(
        &format!("{} {}: latency over time", result.protocol, result.model),
        "seconds since warm-up",
        "latency (ms)",
        &[
            series("p50", "#1b9e77", |s| s.p50_ms),
            series("p99", "#d95f02", |s| s.p99_ms),
        ],
    )
}
