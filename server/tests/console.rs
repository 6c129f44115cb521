//! The operator's console: its admin API (promotion with gates, canary rollback, live
//! traffic, who am I) with real HTTP calls, then the page itself in a real headless Chromium
//! (Debian's `chromium` and `chromium-driver`, installed by `make browser`) driven through
//! WebDriver: sign in, models and lineage, live numbers moving, a promotion refused by the
//! gates then forced, a canary rolled back, drift, the audit log, and a read-only token.
//!
//! With `CONSOLE_SCREENSHOTS=DIR` the browser test saves a screenshot of every page there
//! (`make console-screenshots` writes `docs/console/`).

#[allow(dead_code)]
#[path = "integration/common.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use infergate_config::{Config, RouteConfig, Scope, TokenConfig};
use infergate_registry::{
    ArtifactKind, Baseline, Lineage, NewArtifact, NewVersion, PLATFORM_ONNX, Registry, inspect,
};
use infergate_server::repository::Repository;
use infergate_server::security::hash_token;
use serde_json::{Value, json};

const ADMIN: &str = "console-admin-secret";
const READ: &str = "console-read-secret";

/// Iris-like rows from a seeded generator; `shift` moves every feature (drifted traffic).
fn rows(n: usize, seed: u64, shift: f32) -> Vec<f32> {
    let (low, span) = ([4.5f32, 2.2, 1.0, 0.1], [3.0f32, 2.0, 5.5, 2.4]);
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n * 4)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let u = (state >> 11) as f32 / (1u64 << 53) as f32;
            low[i % 4] + span[i % 4] * u + shift
        })
        .collect()
}

/// A registry with `iris` v1 (production, accuracy 0.95), v2 distilled from it (0.90: the
/// default gate refuses it) and v3 quantized from v2; the committed demo repository beside
/// it; an A/B route and a route with a running canary and a shadow; tokens for `ops`
/// (admin) and `viewer` (read).
async fn console_server() -> (TestServer, tempfile::TempDir, LogFilter) {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(dir.path()).unwrap();
    let model = repo_dir().join("iris_mlp/1/model.onnx");
    let onnx = std::fs::read(&model).unwrap();
    let train = rows(2000, 1, 0.0);
    let probabilities = direct_ort_f32(&model, "input", &[2000, 4], &train);
    let labels: Vec<u32> = probabilities
        .chunks(3)
        .map(|p| (0..3).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap() as u32)
        .collect();
    let baseline = Baseline::from_rows(&train, 4, 10, &labels, 3);
    let lineages = [
        Lineage {
            dataset: Some("iris-synthetic".into()),
            dataset_digest: Some("sha256:0123456789abcdef".into()),
            ..Lineage::default()
        },
        Lineage {
            parent: Some(1),
            distillation_teacher: Some("iris:1".into()),
            ..Lineage::default()
        },
        Lineage {
            parent: Some(2),
            quantization: Some("int8-qdq-per-channel".into()),
            ..Lineage::default()
        },
    ];
    for (lineage, accuracy) in lineages.into_iter().zip([0.95, 0.90, 0.899]) {
        registry
            .register(NewVersion {
                model: "iris".into(),
                platform: PLATFORM_ONNX.into(),
                signature: inspect::onnx_signature(&onnx).unwrap(),
                artifacts: vec![NewArtifact {
                    kind: ArtifactKind::Onnx,
                    bytes: onnx.clone(),
                }],
                metrics: [("accuracy".to_string(), accuracy)].into(),
                lineage,
                baseline: Some(baseline.clone()),
                author: "test".into(),
                ..NewVersion::default()
            })
            .unwrap();
    }
    registry.set_alias("iris", "production", 1, "test").unwrap();

    let mut config: Config = loopback_config();
    config.security.insecure_admin = false;
    let token = |name: &str, secret: &str, scope| TokenConfig {
        name: name.into(),
        sha256: hash_token(secret),
        scopes: vec![scope],
    };
    config.security.tokens = vec![
        token("ops", ADMIN, Scope::Admin),
        token("viewer", READ, Scope::Read),
    ];
    config.models.repository = Some(repo_dir());
    config.models.registry = Some(dir.path().to_path_buf());
    config.models.registry_poll_ms = 0;
    config.drift.sample_every = 1;
    config.drift.window_rows = 40;
    config.routes = serde_json::from_value::<Vec<RouteConfig>>(json!([
        {"name": "iris-ab", "variants": [
            {"name": "v1", "model": "iris", "version": "1", "weight": 50},
            {"name": "v2", "model": "iris", "version": "2", "weight": 50}]},
        {"name": "iris-canary", "variants": [
            {"name": "stable", "model": "iris", "version": "1", "weight": 100},
            {"name": "candidate", "model": "iris", "version": "3", "weight": 0}],
         "shadow": {"model": "iris", "version": "2", "fraction": 1.0, "queue": 64},
         "canary": {"variant": "candidate", "steps": [10, 50, 100], "step_ms": 600000,
                    "min_requests": 10, "max_error_rate": 0.5}}
    ]))
    .unwrap();
    let repository = Arc::new(
        Repository::new(
            config.models.repository.clone(),
            Some(ort_runtime()),
            config.runtime.clone(),
        )
        .with_registry(Arc::new(registry))
        .with_drift(config.drift.clone()),
    );
    repository.load_all().await.unwrap();
    // A log filter the admin API (and so the console) may change.
    use tracing_subscriber::layer::SubscriberExt as _;
    let (filter, handle) =
        tracing_subscriber::reload::Layer::new(tracing_subscriber::EnvFilter::new("info"));
    let subscriber = Box::new(tracing_subscriber::registry().with(filter));
    let log = Arc::new(infergate_server::logging::LogControl::new("info", handle));
    let s = TestServer::serve_with(config, repository, reqwest::Client::new(), Some(log)).await;
    (s, dir, subscriber)
}

/// Keeps the subscriber whose filter the server changes alive for the test.
type LogFilter = Box<dyn std::any::Any + Send>;

fn iris_body(row: &[f32]) -> Value {
    json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": row}]})
}

/// Sends `n` requests to `target` (a model or route), one at a time.
async fn send(s: &TestServer, target: &str, n: usize, shift: f32) {
    for row in rows(n, 7, shift).chunks(4) {
        let (status, out) = s
            .post_json(&format!("/v2/models/{target}/infer"), &iris_body(row))
            .await;
        assert_eq!(status, 200, "{out}");
    }
}

async fn admin(
    s: &TestServer,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = s.http.request(method.parse().unwrap(), s.admin_url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn the_console_api_promotes_through_the_gates_rolls_back_canaries_and_counts_traffic() {
    let (s, _dir, _log) = console_server().await;

    // The page is open (it holds no data) and locked down; the data wants a token.
    let page = s.http.get(s.admin_url("/ui")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert!(page.text().await.unwrap().contains("id=\"login-form\""));
    let js = s.http.get(s.admin_url("/ui/app.js")).send().await.unwrap();
    assert_eq!(
        js.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(
        s.http
            .get(s.admin_url("/ui/nope.js"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let (status, body) = admin(&s, "GET", "/admin/console/models", None, None).await;
    assert_eq!(status, 401, "{body}");
    let (status, me) = admin(&s, "GET", "/admin/whoami", Some(READ), None).await;
    assert_eq!(
        (status, me),
        (200, json!({"name": "viewer", "scopes": ["read"]}))
    );

    // Models: the registry's versions with lineage and metrics, the repository's beside them.
    let (_, models) = admin(&s, "GET", "/admin/console/models", Some(READ), None).await;
    let names: Vec<&str> = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["identity_all", "iris", "iris_mlp", "simple"]);
    let iris = &models["models"][1];
    assert_eq!(iris["source"], "registry");
    assert_eq!(iris["default_version"], "1");
    assert_eq!(
        iris["versions"][1]["lineage"]["distillation_teacher"],
        "iris:1"
    );
    assert_eq!(
        iris["versions"][2]["lineage"]["quantization"],
        "int8-qdq-per-channel"
    );
    assert_eq!(iris["versions"][0]["aliases"], json!(["production"]));
    assert_eq!(iris["versions"][0]["state"], "READY");
    assert!(
        iris["versions"][0]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );

    // The gates' verdict first: v2 is five points worse than production.
    let (status, verdict) = admin(
        &s,
        "GET",
        "/admin/models/iris/promotion?version=2",
        Some(READ),
        None,
    )
    .await;
    assert_eq!(status, 200, "{verdict}");
    assert_eq!(verdict["passed"], false);
    assert_eq!(verdict["current"], 1);
    assert!(
        verdict["reasons"][0].as_str().unwrap().contains("accuracy"),
        "{verdict}"
    );
    let promote = |force| json!({"version": 2, "force": force});
    let (status, body) = admin(
        &s,
        "POST",
        "/admin/models/iris/promote",
        Some(READ),
        Some(promote(true)),
    )
    .await;
    assert_eq!(status, 403, "a read token cannot promote: {body}");
    let (status, body) = admin(
        &s,
        "POST",
        "/admin/models/iris/promote",
        Some(ADMIN),
        Some(promote(false)),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("refused"),
        "{body}"
    );
    let (status, body) = admin(
        &s,
        "POST",
        "/admin/models/iris/promote",
        Some(ADMIN),
        Some(json!({"version": 9})),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = admin(
        &s,
        "POST",
        "/admin/models/iris/promote",
        Some(ADMIN),
        Some(json!({"alias": 3})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = admin(
        &s,
        "POST",
        "/admin/models/iris/promote",
        Some(ADMIN),
        Some(promote(true)),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["previous"].clone(), body["forced"].clone()),
        (json!(1), json!(true))
    );
    // Applied at once (this server does not poll the registry).
    let (_, models) = admin(&s, "GET", "/admin/console/models", Some(READ), None).await;
    assert_eq!(models["models"][1]["default_version"], "2");
    let (_, audit) = admin(
        &s,
        "GET",
        "/admin/registry/audit?model=iris",
        Some(READ),
        None,
    )
    .await;
    let actions: Vec<(String, String)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["actor"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        actions.contains(&("promote.refused".into(), "ops".into())),
        "{actions:?}"
    );
    assert!(
        actions.contains(&("promote.forced".into(), "ops".into())),
        "{actions:?}"
    );

    // Canary rollback: only a running canary, with the operator's reason in its history.
    let (status, body) = admin(
        &s,
        "POST",
        "/admin/routes/iris-ab/canary/rollback",
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "'iris-ab' is not a route with a canary");
    let (status, body) = admin(
        &s,
        "POST",
        "/admin/routes/iris-canary/canary/rollback",
        Some(ADMIN),
        Some(json!({"reason": "bad reviews"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["canary"]["phase"], "rolled_back");
    assert_eq!(body["canary"]["percent"], 0);
    assert_eq!(
        body["canary"]["transitions"][1]["reason"],
        "rolled back by ops: bad reviews"
    );
    let (status, body) = admin(
        &s,
        "POST",
        "/admin/routes/iris-canary/canary/rollback",
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "the canary of 'iris-canary' is not running");
    // Rolled back means no traffic to the candidate.
    send(&s, "iris-canary", 30, 0.0).await;
    let (_, exp) = admin(
        &s,
        "GET",
        "/admin/experiments/iris-canary",
        Some(READ),
        None,
    )
    .await;
    assert_eq!(exp["variants"][1]["requests"], 0, "{exp}");
    assert_eq!(exp["variants"][0]["requests"], 30, "{exp}");
    let ci = exp["variants"][0]["latency_mean_ci_ms"].as_array().unwrap();
    let mean = exp["variants"][0]["latency_ms"]["mean"].as_f64().unwrap();
    assert!(
        ci[0].as_f64().unwrap() <= mean && mean <= ci[1].as_f64().unwrap(),
        "{exp}"
    );

    // Live traffic: every request of the last minutes is in a series, counted once.
    send(&s, "iris/versions/3", 25, 0.0).await;
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let (_, traffic) = admin(&s, "GET", "/admin/console/traffic", Some(READ), None).await;
    let series = |kind: &str, name: &str, part: &str| {
        traffic["series"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["kind"] == kind && x["name"] == name && x["part"] == part)
            .unwrap_or_else(|| panic!("no series {kind}/{name}/{part}: {traffic}"))
            .clone()
    };
    let total = |x: &Value| {
        x["requests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_u64().unwrap())
            .sum::<u64>()
    };
    let v3 = series("model", "iris", "3");
    assert_eq!(total(&v3), 25, "{v3}");
    assert!(
        v3["p99_ms"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_f64().is_some_and(|p| p > 0.0)),
        "{v3}"
    );
    assert_eq!(total(&series("route", "iris-canary", "stable")), 30);
    assert_eq!(total(&series("route", "iris-canary", "candidate")), 0);
    s.stop().await;
}

// ------------------------------------------------------------------------------------------
// The page in a real browser.

fn find_binary(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is missing: run `make browser` (Debian packages chromium and chromium-driver)"))
}

/// chromedriver on a loopback port, stopped on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(find_binary("chromedriver"))
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port }
    }

    async fn browser(&self, profile: &Path) -> Client {
        let caps = json!({"goog:chromeOptions": {
            "binary": find_binary("chromium").to_string_lossy(),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1100", "--no-first-run",
                     format!("--user-data-dir={}", profile.display())],
        }});
        let serde_json::Value::Object(caps) = caps else {
            unreachable!()
        };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a WebDriver session in headless Chromium")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (up to 20 s) for the element at `css` to exist with text that `ok` accepts; returns
/// the text.
async fn wait_text(c: &Client, css: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = String::from("(no element)");
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await
            && let Ok(text) = e.text().await
        {
            if ok(&text) {
                return text;
            }
            seen = text;
        }
        if Instant::now() >= deadline {
            let page = c
                .execute(
                    "return location.hash + ' | ' + document.body.innerText.slice(0, 600)",
                    vec![],
                )
                .await
                .map(|v| v.to_string())
                .unwrap_or_default();
            panic!("waited for {css}; last saw: {seen}; the page: {page}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn click(c: &Client, css: &str) {
    wait_text(c, css, |_| true).await;
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

async fn open(c: &Client, page: &str) {
    c.execute(&format!("location.hash = '#{page}'"), vec![])
        .await
        .unwrap();
    wait_text(c, &format!("#view[data-loaded=\"{page}\"]"), |_| true).await;
}

async fn sign_in(c: &Client, token: &str) {
    let field = c.find(Locator::Id("token")).await.unwrap();
    field.send_keys(token).await.unwrap();
    c.find(Locator::Id("login-button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Saves a screenshot with the element at `css` scrolled to the top, when asked to.
async fn screenshot(c: &Client, name: &str, css: &str) {
    if let Some(dir) = std::env::var_os("CONSOLE_SCREENSHOTS") {
        let script = format!("document.querySelector({css:?}).scrollIntoView()");
        c.execute(&script, vec![]).await.unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        let png = c.screenshot().await.unwrap();
        std::fs::write(Path::new(&dir).join(format!("{name}.png")), png).unwrap();
    }
}

#[tokio::test]
async fn an_operator_signs_in_watches_traffic_promotes_rolls_back_and_reads_the_audit_in_chromium()
{
    let (s, _dir, _log) = console_server().await;
    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let c = driver.browser(profile.path()).await;

    // Without a token: the sign-in form and no data.
    c.goto(&s.admin_url("/ui")).await.unwrap();
    wait_text(&c, "#login-title", |t| t == "Sign in").await;
    let body = c
        .find(Locator::Css("body"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!body.contains("iris"), "no data before signing in: {body}");
    let paint = c
        .execute(
            "return performance.getEntriesByType('paint').map(p => [p.name, p.startTime])",
            vec![],
        )
        .await
        .unwrap();
    println!("console first paint (ms since navigation): {paint}");
    screenshot(&c, "sign-in", "body").await;
    sign_in(&c, "not-a-token").await;
    wait_text(&c, "#login-error", |t| t.contains("invalid token")).await;

    // Models with their lineage.
    sign_in(&c, ADMIN).await;
    open(&c, "models").await;
    for model in ["identity_all", "iris", "iris_mlp", "simple"] {
        wait_text(&c, &format!("[data-model=\"{model}\"] h2"), |t| {
            t.contains(model)
        })
        .await;
    }
    wait_text(&c, "#who", |t| t == "ops (admin)").await;
    wait_text(&c, "[data-model=\"iris\"] [data-default=\"iris\"]", |t| {
        t == "1"
    })
    .await;
    for node in ["iris v1", "iris v2", "iris v3", "iris-synthetic"] {
        wait_text(
            &c,
            &format!("[data-model=\"iris\"] svg.lineage [data-node=\"{node}\"]"),
            |t| t.contains(node),
        )
        .await;
    }
    let labels = c
        .execute("return [...document.querySelectorAll('[data-model=\"iris\"] svg.lineage .edge-label')].map(e => e.textContent)", vec![])
        .await
        .unwrap();
    assert_eq!(
        labels,
        json!(["trained on", "distilled", "int8-qdq-per-channel"]),
        "{labels}"
    );
    screenshot(&c, "models", "body").await;

    // Live traffic: the numbers move while requests flow.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
        let (http, url) = (s.http.clone(), s.url(""));
        tokio::spawn(async move {
            // Bounded: at most 20,000 requests, whatever happens to the test.
            for (i, row) in rows(20_000, 11, 0.0).chunks(4).enumerate() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let target = ["iris", "iris-ab", "iris-canary"][i % 3];
                // A third of the traffic is shifted: drift shows on the drift page.
                let row: Vec<f32> = row
                    .iter()
                    .map(|v| if i % 3 == 0 { v + 2.0 } else { *v })
                    .collect();
                let r = http
                    .post(format!("{url}/v2/models/{target}/infer"))
                    .json(&iris_body(&row))
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status() == 200) {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    open(&c, "traffic").await;
    let rps = "[data-series=\"model/iris/1\"] [data-measure=\"rps\"]";
    let first = wait_text(&c, rps, |t| t.parse::<f64>().is_ok_and(|v| v > 0.0)).await;
    let moved = wait_text(&c, rps, |t| {
        t.parse::<f64>().is_ok_and(|v| v > 0.0) && t != first
    })
    .await;
    println!("live req/s of iris v1: {first} then {moved}");
    wait_text(
        &c,
        "[data-series=\"route/iris-ab/v2\"] [data-measure=\"p99_ms\"]",
        |t| t.parse::<f64>().is_ok(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    screenshot(&c, "traffic", "body").await;

    // A promotion the gates refuse, then forced.
    open(&c, "models").await;
    click(&c, "[data-model=\"iris\"] [data-promote=\"2\"]").await;
    wait_text(&c, "[data-model=\"iris\"] [data-gates=\"refused\"]", |t| {
        t.contains("accuracy")
    })
    .await;
    screenshot(&c, "promote-gates", "[data-model=\"iris\"]").await;
    click(&c, "[data-model=\"iris\"] [data-action=\"promote\"]").await;
    wait_text(&c, "[data-model=\"iris\"] .gate-result", |t| {
        t.contains("refused")
    })
    .await;
    click(&c, "[data-model=\"iris\"] [data-action=\"force\"]").await;
    wait_text(&c, "[data-model=\"iris\"] [data-default=\"iris\"]", |t| {
        t == "2"
    })
    .await;
    wait_text(&c, "#status", |t| t.contains("forced over the gates")).await;
    // Pinned over production, then unpinned.
    click(&c, "[data-model=\"iris\"] [data-pin=\"3\"] button").await;
    click(&c, "[data-model=\"iris\"] [data-pin=\"3\"] button").await;
    wait_text(&c, "[data-model=\"iris\"] [data-default=\"iris\"]", |t| {
        t == "3"
    })
    .await;
    click(&c, "[data-model=\"iris\"] [data-pin=\"3\"] button").await;
    click(&c, "[data-model=\"iris\"] [data-pin=\"3\"] button").await;
    wait_text(&c, "#status", |t| t == "iris: unpinned").await;
    wait_text(&c, "[data-model=\"iris\"] [data-default=\"iris\"]", |t| {
        t == "2"
    })
    .await;

    // Routes: the experiment, the shadow, and the canary rolled back by hand.
    open(&c, "routes").await;
    wait_text(&c, "[data-route=\"iris-ab\"] .verdicts", |t| {
        t.contains("v2 against v1")
    })
    .await;
    wait_text(&c, "[data-route=\"iris-canary\"]", |t| {
        t.contains("Top-1 agreement")
    })
    .await;
    let canary = "[data-route=\"iris-canary\"] .canary[data-phase=\"running\"]";
    wait_text(&c, canary, |t| t.contains("rollout started")).await;
    c.find(Locator::Id("reason-iris-canary"))
        .await
        .unwrap()
        .send_keys("p99 too high")
        .await
        .unwrap();
    click(&c, &format!("{canary} button.danger")).await;
    click(&c, &format!("{canary} button.danger")).await;
    wait_text(
        &c,
        "[data-route=\"iris-canary\"] .canary[data-phase=\"rolled_back\"] .timeline",
        |t| t.contains("10% → 0%: rolled back by ops: p99 too high"),
    )
    .await;
    screenshot(&c, "routes", "[data-route=\"iris-canary\"]").await;

    // New weights, then a canary started from the page.
    let weight = c.find(Locator::Id("w-iris-ab-v2")).await.unwrap();
    weight.clear().await.unwrap();
    weight.send_keys("0").await.unwrap();
    click(
        &c,
        "[data-route=\"iris-ab\"] [data-action=\"weights\"] button",
    )
    .await;
    click(
        &c,
        "[data-route=\"iris-ab\"] [data-action=\"weights\"] button",
    )
    .await;
    wait_text(&c, "#status", |t| t == "iris-ab: weights changed").await;
    let (_, live) = admin(&s, "GET", "/admin/routes", Some(READ), None).await;
    assert_eq!(live["routes"][0]["variants"][1]["weight"], 0, "{live}");
    click(
        &c,
        "[data-route=\"iris-ab\"] [data-action=\"start-canary\"] button",
    )
    .await;
    click(
        &c,
        "[data-route=\"iris-ab\"] [data-action=\"start-canary\"] button",
    )
    .await;
    wait_text(
        &c,
        "[data-route=\"iris-ab\"] .canary[data-phase=\"running\"]",
        |t| t.contains("Variant v2 is running at 10%") && t.contains("0% → 10%: rollout started"),
    )
    .await;

    // Drift against the training baseline.
    open(&c, "drift").await;
    wait_text(&c, "[data-drift=\"iris/1\"]", |t| {
        t.contains("largest feature PSI") && t.contains("Predicted classes")
    })
    .await;
    screenshot(&c, "drift", "body").await;

    // Audit: the calls just made, by whom.
    open(&c, "audit").await;
    let server = wait_text(&c, "[data-audit=\"server\"]", |t| {
        t.contains("POST /admin/models/iris/promote")
    })
    .await;
    assert!(
        server.contains("ops")
            && server.contains("409")
            && server.contains("POST /admin/routes/iris-canary/canary/rollback"),
        "{server}"
    );
    wait_text(&c, "[data-audit=\"registry\"]", |t| {
        t.contains("promote.forced") && t.contains("promote.refused")
    })
    .await;
    screenshot(&c, "audit", "body").await;

    // The log filter, changed from the page.
    let level = c.find(Locator::Id("log-level")).await.unwrap();
    level.clear().await.unwrap();
    level
        .send_keys("warn,infergate_server=debug")
        .await
        .unwrap();
    click(&c, "[data-action=\"log-level\"] button").await;
    click(&c, "[data-action=\"log-level\"] button").await;
    wait_text(&c, "#status", |t| t == "log level changed").await;
    let (_, now) = admin(&s, "GET", "/admin/log-level", Some(READ), None).await;
    assert_eq!(now["level"], "warn,infergate_server=debug");

    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert!(sent.load(Ordering::Relaxed) > 0);

    // Signed out, then a read-only token: every page, no action.
    click(&c, "#logout").await;
    wait_text(&c, "#login-error", |t| t == "Signed out.").await;
    let body = c
        .find(Locator::Css("main"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!body.contains("iris"), "signing out drops the data: {body}");
    sign_in(&c, READ).await;
    open(&c, "models").await;
    wait_text(&c, "#who", |t| t == "viewer (read)").await;
    let disabled = c
        .execute(
            "return [...document.querySelectorAll('[data-promote]')].map(b => b.disabled)",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        !disabled.as_array().unwrap().is_empty()
            && disabled.as_array().unwrap().iter().all(|d| d == true),
        "{disabled}"
    );
    c.close().await.unwrap();
    s.stop().await;
}
