//! `/metrics`: valid for Prometheus (`promtool check metrics`), and the histogram counts match
//! the requests sent, by model, protocol, variant and outcome.

use std::collections::HashMap;
use std::io::Write as _;

use infergate_config::{RouteConfig, VariantConfig};
use serde_json::json;

use crate::common::{TestServer, iris_grpc, repo_dir};

/// `promtool check metrics` on `text`: its exit status and what it printed.
fn promtool_check(text: &str) -> (bool, String) {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool missing: `make services` installs Debian's prometheus package");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Sample values of `name` by their label set (`{a="1",b="2"}` as written).
fn samples(text: &str, name: &str) -> HashMap<String, f64> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = rest.rsplit_once(' ')?;
            if !(labels.is_empty() || labels.starts_with('{')) {
                return None;
            }
            Some((labels.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn count(text: &str, name: &str, must: &[&str]) -> f64 {
    samples(text, name)
        .iter()
        .filter(|(labels, _)| must.iter().all(|m| labels.contains(m)))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test]
async fn metrics_pass_promtool_and_count_what_was_sent() {
    let route = RouteConfig {
        name: "iris-route".into(),
        variants: vec![VariantConfig {
            name: "only".into(),
            model: "iris_mlp".into(),
            version: Some("1".into()),
            weight: 1,
        }],
        shadow: None,
        canary: None,
        fallback: None,
    };
    let s = TestServer::start_with(|c| c.routes = vec![route]).await;
    let body = json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]});
    for _ in 0..7 {
        assert_eq!(s.post_json("/v2/models/iris_mlp/infer", &body).await.0, 200);
    }
    for _ in 0..3 {
        assert_eq!(
            s.post_json("/v2/models/iris-route/infer", &body).await.0,
            200
        );
    }
    let bad = json!({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]});
    for _ in 0..2 {
        assert_eq!(s.post_json("/v2/models/iris_mlp/infer", &bad).await.0, 400);
    }
    let mut grpc = s.grpc().await;
    for _ in 0..5 {
        grpc.model_infer(iris_grpc(&[5.1, 3.5, 1.4, 0.2]))
            .await
            .unwrap();
    }

    let text = s.admin_get_text("/metrics").await;
    let (ok, said) = promtool_check(&text);
    assert!(ok, "promtool check metrics failed:\n{said}");

    let latency = "infergate_request_duration_seconds_count";
    let http_ok = [
        "model=\"iris_mlp\"",
        "protocol=\"http\"",
        "outcome=\"success\"",
    ];
    assert_eq!(count(&text, latency, &http_ok), 7.0, "{text}");
    // Routed requests are counted under the route's name, with the variant that served them.
    assert_eq!(
        count(
            &text,
            latency,
            &["model=\"iris-route\"", "version=\"1\"", "variant=\"only\""]
        ),
        3.0
    );
    assert_eq!(
        count(
            &text,
            latency,
            &[
                "model=\"iris_mlp\"",
                "protocol=\"grpc\"",
                "outcome=\"success\""
            ]
        ),
        5.0
    );
    assert_eq!(count(&text, latency, &["outcome=\"invalid_input\""]), 2.0);
    // The counter agrees with the histogram.
    assert_eq!(count(&text, "infergate_requests_total", &http_ok), 7.0);
    // Gauges read when scraped.
    assert_eq!(count(&text, "infergate_inflight_requests", &[]), 0.0);
    let v1 = std::fs::metadata(repo_dir().join("iris_mlp/1/model.onnx"))
        .unwrap()
        .len() as f64;
    assert_eq!(
        count(
            &text,
            "infergate_model_weight_bytes",
            &["model=\"iris_mlp\"", "version=\"1\""]
        ),
        v1
    );
    assert!(count(&text, "infergate_process_resident_memory_bytes", &[]) > 1e6);
    assert!(count(&text, "infergate_process_cpu_seconds_total", &[]) > 0.0);
    // ONNX Runtime allocates through glibc's malloc: a loaded model holds some of it. The test
    // binary has no counting allocator, so there is no Rust series.
    if cfg!(all(target_os = "linux", target_env = "gnu")) {
        let allocated = count(&text, "infergate_heap_bytes", &["kind=\"c_allocated\""]);
        assert!(allocated > 1e5, "{allocated}");
        assert!(count(&text, "infergate_heap_bytes", &["kind=\"c_held\""]) >= allocated);
    }
    assert!(!text.contains("kind=\"rust_live\""));
    s.stop().await;
}

/// The server gives glibc's unused heap back on its own (`runtime.heap_trim_ms`): holes left in
/// the C heap of the (in-process) server are trimmed and counted.
#[tokio::test]
#[allow(unsafe_code)]
async fn unused_c_heap_is_given_back_and_counted() {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    let s = TestServer::start_with(|c| c.runtime.heap_trim_ms = 50).await;
    let trims = |text: &str| count(text, "infergate_heap_trims_total", &[]);
    // 32 MiB in 16 KiB blocks inside an arena, every other one freed: 16 MiB held unused.
    // SAFETY: each block is freed exactly once.
    let blocks: Vec<usize> = (0..2048)
        .map(|_| unsafe { libc::malloc(16 << 10) } as usize)
        .collect();
    assert!(blocks.iter().all(|&p| p != 0));
    for &p in blocks.iter().step_by(2) {
        unsafe { libc::free(p as *mut libc::c_void) };
    }
    let mut text = String::new();
    for _ in 0..100 {
        text = s.admin_get_text("/metrics").await;
        if trims(&text) >= 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(trims(&text) >= 1.0, "{text}");
    for &p in blocks.iter().skip(1).step_by(2) {
        unsafe { libc::free(p as *mut libc::c_void) };
    }
    s.stop().await;
}

#[tokio::test]
async fn request_metrics_off_leaves_out_the_per_request_series_but_not_the_statistics() {
    let s = TestServer::start_with(|c| c.telemetry.request_metrics = false).await;
    let body = json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]});
    for _ in 0..3 {
        let (status, out) = s.post_json("/v2/models/iris_mlp/infer", &body).await;
        assert_eq!(status, 200, "{out}");
    }
    let text = s.admin_get_text("/metrics").await;
    for name in [
        "infergate_requests_total",
        "infergate_request_duration_seconds_count",
        "infergate_queue_duration_seconds_count",
        "infergate_compute_duration_seconds_count",
        "infergate_batch_size_count",
    ] {
        assert!(samples(&text, name).is_empty(), "{name} in\n{text}");
    }
    assert!(text.contains("infergate_loaded_model_versions"), "{text}");
    let (ok, out) = promtool_check(&text);
    assert!(ok, "{out}");
    let (status, stats) = s.get_json("/v2/models/iris_mlp/stats").await;
    assert_eq!(status, 200);
    let counted: u64 = stats["model_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["inference_count"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, 3, "{stats}");
    s.stop().await;
}
