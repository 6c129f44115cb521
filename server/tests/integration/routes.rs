//! A/B routes: sticky by key, spread without one, the served variant in the response on both
//! protocols.

use infergate_config::{RouteConfig, VariantConfig};
use infergate_proto::inference as pb;
use serde_json::json;

use crate::common::TestServer;

fn shadowed(name: &str, primary: &str, shadow: &str) -> RouteConfig {
    RouteConfig {
        name: name.into(),
        variants: vec![VariantConfig {
            name: "primary".into(),
            model: "iris_mlp".into(),
            version: Some(primary.into()),
            weight: 1,
        }],
        shadow: Some(infergate_config::ShadowConfig {
            model: "iris_mlp".into(),
            version: Some(shadow.into()),
            fraction: 1.0,
            queue: 64,
        }),
        canary: None,
        fallback: None,
    }
}

fn ab_route() -> RouteConfig {
    let variant = |name: &str, version: &str| VariantConfig {
        name: name.into(),
        model: "iris_mlp".into(),
        version: Some(version.into()),
        weight: 1,
    };
    RouteConfig {
        name: "iris-ab".into(),
        variants: vec![variant("a", "1"), variant("b", "2")],
        shadow: None,
        canary: None,
        fallback: None,
    }
}

/// `/admin/routes/{route}/{what}` (shadow or canary), the part named `what`.
async fn route_state(server: &TestServer, route: &str, what: &str) -> serde_json::Value {
    server
        .admin_get_json(&format!("/admin/routes/{route}/{what}"))
        .await[what]
        .clone()
}

fn body(extra: serde_json::Value) -> serde_json::Value {
    let mut b = json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]});
    if !extra.is_null() {
        b["parameters"] = extra;
    }
    b
}

#[tokio::test]
async fn a_route_key_sticks_to_one_variant_and_the_response_says_which() {
    let server = TestServer::start_with(|c| c.routes = vec![ab_route()]).await;
    let mut seen = std::collections::BTreeMap::new();
    for user in 0..40 {
        let key = format!("user-{user}");
        let mut variants = Vec::new();
        for _ in 0..2 {
            let r = server
                .http
                .post(server.url("/v2/models/iris-ab/infer"))
                .header("x-infergate-route-key", &key)
                .json(&body(serde_json::Value::Null))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let header = r.headers()["x-infergate-variant"]
                .to_str()
                .unwrap()
                .to_string();
            let out: serde_json::Value = r.json().await.unwrap();
            assert_eq!(out["model_name"], "iris-ab");
            assert_eq!(out["parameters"]["variant"], header.as_str());
            let expected_version = if header == "a" { "1" } else { "2" };
            assert_eq!(out["model_version"], expected_version);
            variants.push(header);
        }
        assert_eq!(variants[0], variants[1], "key {key} moved between variants");
        *seen.entry(variants[0].clone()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    // The request parameter works as a key too, and agrees with the header.
    let (_, by_param) = server
        .post_json(
            "/v2/models/iris-ab/infer",
            &body(json!({"route_key": "user-7"})),
        )
        .await;
    let r = server
        .http
        .post(server.url("/v2/models/iris-ab/infer"))
        .header("x-infergate-route-key", "user-7")
        .json(&body(serde_json::Value::Null))
        .send()
        .await
        .unwrap();
    assert_eq!(
        by_param["parameters"]["variant"],
        r.headers()["x-infergate-variant"].to_str().unwrap()
    );

    // No key: spread over both.
    let mut unkeyed = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let (status, out) = server
            .post_json("/v2/models/iris-ab/infer", &body(serde_json::Value::Null))
            .await;
        assert_eq!(status, 200);
        unkeyed.insert(out["parameters"]["variant"].as_str().unwrap().to_string());
    }
    assert_eq!(unkeyed.len(), 2);

    // A raw binary request has no JSON header to route by.
    let r = server
        .http
        .post(server.url("/v2/models/iris-ab/infer"))
        .header("Inference-Header-Content-Length", "0")
        .body(vec![0u8; 16])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("'iris-ab' is a route"));

    // gRPC: the key in metadata, the variant in metadata and parameters.
    let mut grpc = server.grpc().await;
    for user in ["user-1", "user-2", "user-3"] {
        let input = pb::model_infer_request::InferInputTensor {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![1, 4],
            contents: Some(pb::InferTensorContents {
                fp32_contents: vec![5.1, 3.5, 1.4, 0.2],
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut request = tonic::Request::new(pb::ModelInferRequest {
            model_name: "iris-ab".into(),
            inputs: vec![input],
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("x-infergate-route-key", user.parse().unwrap());
        let response = grpc.model_infer(request).await.unwrap();
        let variant = response
            .metadata()
            .get("x-infergate-variant")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let r = server
            .http
            .post(server.url("/v2/models/iris-ab/infer"))
            .header("x-infergate-route-key", user)
            .json(&body(serde_json::Value::Null))
            .send()
            .await
            .unwrap();
        assert_eq!(
            variant,
            r.headers()["x-infergate-variant"].to_str().unwrap(),
            "{user}"
        );
        let resp = response.into_inner();
        assert_eq!(resp.model_name, "iris-ab");
        assert_eq!(resp.model_version, if variant == "a" { "1" } else { "2" });
    }

    // Every routed request (the raw one never reached the route) is in the experiment report.
    let r = server
        .http
        .get(server.admin_url("/admin/experiments/iris-ab"))
        .send()
        .await
        .unwrap();
    let report: serde_json::Value = r.json().await.unwrap();
    let variants = report["variants"].as_array().unwrap();
    let total: u64 = variants
        .iter()
        .map(|v| v["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 40 * 2 + 2 + 40 + 3 * 2, "{report}");
    assert!(variants.iter().all(|v| v["errors"] == 0), "{report}");
    assert_eq!(report["comparisons"][0]["variant"], "b");
    assert!(
        report["comparisons"][0]["verdict"]
            .as_str()
            .unwrap()
            .contains("error rate"),
        "{report}"
    );
    server.stop().await;
}

#[tokio::test]
async fn shadow_traffic_is_compared_with_the_primary_off_the_request_path() {
    let server = TestServer::start_with(|c| {
        c.routes = vec![shadowed("self", "1", "1"), shadowed("v1-vs-v2", "1", "2")]
    })
    .await;
    let x = [5.1f32, 3.5, 1.4, 0.2, 6.7, 3.1, 5.6, 2.4];
    let body =
        json!({"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32", "data": x}]});
    for route in ["self", "v1-vs-v2"] {
        for _ in 0..20 {
            let (status, out) = server
                .post_json(&format!("/v2/models/{route}/infer"), &body)
                .await;
            assert_eq!(status, 200, "{out}");
            assert_eq!(out["model_version"], "1");
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    for route in ["self", "v1-vs-v2"] {
        let r = loop {
            let r = route_state(&server, route, "shadow").await;
            let done = r["both_ok"].as_u64().unwrap() + r["shadow_failed"].as_u64().unwrap();
            if done + r["dropped"].as_u64().unwrap() == 20 {
                break r;
            }
            assert!(std::time::Instant::now() < deadline, "{route}: {r}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        assert_eq!(
            r["sent"].as_u64().unwrap() + r["dropped"].as_u64().unwrap(),
            20,
            "{r}"
        );
        assert_eq!(r["shadow_failed"], 0, "{r}");
        assert_eq!(
            r["rows"].as_u64().unwrap(),
            2 * r["both_ok"].as_u64().unwrap()
        );
        if route == "self" {
            assert_eq!(r["max_abs_diff"], 0.0, "{r}");
            assert_eq!(r["top1_agreement"], 1.0, "{r}");
        } else {
            // The same numbers computed directly with ONNX Runtime.
            let a = crate::common::direct_ort_f32(
                &crate::common::repo_dir().join("iris_mlp/1/model.onnx"),
                "input",
                &[2, 4],
                &x,
            );
            let b = crate::common::direct_ort_f32(
                &crate::common::repo_dir().join("iris_mlp/2/model.onnx"),
                "input",
                &[2, 4],
                &x,
            );
            let max = a
                .iter()
                .zip(&b)
                .map(|(u, v)| f64::from((u - v).abs()))
                .fold(0.0, f64::max);
            assert!(
                (r["max_abs_diff"].as_f64().unwrap() - max).abs() < 1e-6,
                "{r} vs {max}"
            );
            assert!(max > 0.0);
        }
    }
    let r = server
        .http
        .get(server.admin_url("/admin/routes/nope/shadow"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    server.stop().await;
}

fn canary_route(name: &str, canary_model: &str, steps: Vec<u32>, min_requests: u64) -> RouteConfig {
    RouteConfig {
        name: name.into(),
        variants: vec![
            VariantConfig {
                name: "stable".into(),
                model: "iris_mlp".into(),
                version: Some("1".into()),
                weight: 1,
            },
            VariantConfig {
                name: "canary".into(),
                model: canary_model.into(),
                version: None,
                weight: 0,
            },
        ],
        shadow: None,
        canary: Some(infergate_config::CanaryConfig {
            variant: "canary".into(),
            steps,
            step_ms: 100,
            min_requests,
            max_error_rate: 0.1,
            max_p95_ms: Some(5_000.0),
        }),
        fallback: None,
    }
}

#[tokio::test]
async fn a_healthy_canary_advances_to_100_percent_and_a_failing_one_rolls_back_at_once() {
    let server = TestServer::start_with(|c| {
        c.routes = vec![
            canary_route("good", "iris_mlp", vec![20, 50, 100], 3),
            // "simple" cannot take iris inputs: every canary request fails.
            canary_route("bad", "simple", vec![50, 100], 5),
        ]
    })
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let good = loop {
        let (status, _) = server
            .post_json("/v2/models/good/infer", &body(serde_json::Value::Null))
            .await;
        assert_eq!(status, 200);
        let report = route_state(&server, "good", "canary").await;
        if report["phase"] == "completed" {
            break report;
        }
        assert!(std::time::Instant::now() < deadline, "{report}");
    };
    let path: Vec<(u64, u64)> = good["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["from_percent"].as_u64().unwrap(),
                t["to_percent"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(path, [(0, 20), (20, 50), (50, 100), (100, 100)]);
    for _ in 0..10 {
        let (_, out) = server
            .post_json("/v2/models/good/infer", &body(serde_json::Value::Null))
            .await;
        assert_eq!(out["parameters"]["variant"], "canary");
    }

    let mut failures = 0;
    let bad = loop {
        let (status, _) = server
            .post_json("/v2/models/bad/infer", &body(serde_json::Value::Null))
            .await;
        failures += usize::from(status != 200);
        let report = route_state(&server, "bad", "canary").await;
        if report["phase"] == "rolled_back" {
            break report;
        }
        assert!(std::time::Instant::now() < deadline, "{report}");
    };
    assert!(failures >= 1);
    let last = bad["transitions"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["to_percent"], 0);
    assert!(
        last["reason"]
            .as_str()
            .unwrap()
            .starts_with("rolled back: error rate"),
        "{last}"
    );
    assert_eq!(bad["percent"], 0);
    for _ in 0..20 {
        let (status, out) = server
            .post_json("/v2/models/bad/infer", &body(serde_json::Value::Null))
            .await;
        assert_eq!(
            (status, out["parameters"]["variant"].as_str()),
            (200, Some("stable"))
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_variant_falls_back_to_the_cheaper_one_and_says_so() {
    use infergate_runtime::test_util::{Behavior, FakeFactory};
    use std::sync::Arc;
    let runtime = infergate_config::RuntimeConfig {
        instances: 1,
        queue_capacity: 1,
        ..Default::default()
    };
    let repository = Arc::new(infergate_server::repository::Repository::new(
        None, None, runtime,
    ));
    let slow = Arc::new(FakeFactory::fp32(Behavior::Slow(
        std::time::Duration::from_millis(300),
    )));
    repository
        .insert_factory("slow", 1, slow, infergate_config::ModelConfig::default())
        .unwrap();
    let quick = Arc::new(FakeFactory::fp32(Behavior::Echo));
    // Batching queues the burst of fallbacks, so the fallback itself is never the bottleneck.
    let quick_config = infergate_config::ModelConfig {
        max_batch_size: 8,
        dynamic_batching: Some(infergate_config::DynamicBatching::default()),
        ..Default::default()
    };
    repository
        .insert_factory("quick", 1, quick, quick_config)
        .unwrap();
    let mut config = crate::common::loopback_config();
    config.routes = vec![RouteConfig {
        name: "r".into(),
        variants: vec![
            VariantConfig {
                name: "big".into(),
                model: "slow".into(),
                version: None,
                weight: 1,
            },
            VariantConfig {
                name: "cheap".into(),
                model: "quick".into(),
                version: None,
                weight: 0,
            },
        ],
        shadow: None,
        canary: None,
        fallback: Some("cheap".into()),
    }];
    let server = Arc::new(TestServer::serve(config, repository).await);
    let body = json!({"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]});
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let (server, body) = (Arc::clone(&server), body.clone());
            tokio::spawn(async move {
                let r = server
                    .http
                    .post(server.url("/v2/models/r/infer"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                (status, r.json::<serde_json::Value>().await.unwrap())
            })
        })
        .collect();
    let mut fell_back = 0;
    for call in calls {
        let (status, out) = call.await.unwrap();
        assert_eq!(status, 200, "{out}");
        if out["parameters"]["fallback"] == true {
            fell_back += 1;
            assert_eq!(out["parameters"]["variant"], "cheap");
        } else {
            assert_eq!(out["parameters"]["variant"], "big");
        }
        assert_eq!(out["outputs"][0]["data"], json!([1.0, 2.0]));
    }
    // One runs, one waits in the queue of one; the rest would have been 503s.
    assert!(fell_back >= 3, "{fell_back} of 5 fell back");
    Arc::into_inner(server).unwrap().stop().await;
}

#[tokio::test]
async fn feedback_by_request_id_gives_per_variant_accuracy() {
    let server = TestServer::start_with(|c| c.routes = vec![ab_route()]).await;
    let mut served = Vec::new();
    for i in 0..60 {
        let mut b = body(serde_json::Value::Null);
        b["id"] = json!(format!("req-{i}"));
        let (status, out) = server.post_json("/v2/models/iris-ab/infer", &b).await;
        assert_eq!(status, 200, "{out}");
        let probs = crate::common::f32s(&out["outputs"][0]["data"]);
        let predicted = probs
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |m, (i, &p)| if p > m.1 { (i, p) } else { m })
            .0;
        served.push((
            out["parameters"]["variant"].as_str().unwrap().to_string(),
            predicted as u64,
        ));
    }
    let post = |body: serde_json::Value| {
        let (http, url) = (server.http.clone(), server.admin_url("/admin/feedback"));
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    // Variant a is always right, b always wrong.
    for (i, (variant, predicted)) in served.iter().enumerate() {
        let label = if variant == "a" {
            *predicted
        } else {
            (predicted + 1) % 3
        };
        let (status, out) =
            post(json!({"route": "iris-ab", "id": format!("req-{i}"), "labels": [label]})).await;
        assert_eq!(
            (status, out["variant"].as_str()),
            (200, Some(variant.as_str())),
            "{out}"
        );
    }
    let (status, out) = post(json!({"route": "iris-ab", "id": "req-0", "labels": [0]})).await;
    assert_eq!(status, 404, "feedback twice: {out}");
    let (status, _) = post(json!({"route": "nope", "id": "req-1", "outcome": true})).await;
    assert_eq!(status, 404);
    let (status, _) = post(json!({"route": "iris-ab", "id": "req-1"})).await;
    assert_eq!(status, 400);

    let r = server
        .http
        .get(server.admin_url("/admin/experiments/iris-ab"))
        .send()
        .await
        .unwrap();
    let report: serde_json::Value = r.json().await.unwrap();
    let by_name = |n: &str| {
        report["variants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["variant"] == n)
            .unwrap()
            .clone()
    };
    let (a, b) = (by_name("a"), by_name("b"));
    assert_eq!(a["accuracy"], 1.0);
    assert_eq!(b["accuracy"], 0.0);
    assert_eq!(
        a["feedback"].as_u64().unwrap() + b["feedback"].as_u64().unwrap(),
        60
    );
    let verdict = report["comparisons"][0]["verdict"].as_str().unwrap();
    assert!(
        verdict.contains("b is less accurate (0.00% vs 100.00%"),
        "{verdict}"
    );
    server.stop().await;
}

#[tokio::test]
async fn routes_are_replaced_at_run_time_all_at_once_and_only_when_valid() {
    let server = TestServer::start_with(|c| c.routes = vec![ab_route()]).await;
    let admin = server.admin_url("/admin/routes");
    let listed: serde_json::Value = server
        .http
        .get(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["routes"][0]["name"], "iris-ab");

    // An invalid set is refused with every problem, and nothing changes.
    let bad = json!([
        {"name": "x", "variants": [{"name": "a", "model": "iris_mlp", "weight": 0}]},
        {"name": "x", "variants": []}
    ]);
    let r = server.http.put(&admin).json(&bad).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("needs at least one variant") && text.contains("another route has this name"),
        "{text}"
    );
    let (status, _) = server
        .post_json("/v2/models/iris-ab/infer", &body(serde_json::Value::Null))
        .await;
    assert_eq!(status, 200);

    let good = json!([{"name": "iris-v2", "variants": [{"name": "only", "model": "iris_mlp", "version": "2", "weight": 1}]}]);
    let r = server.http.put(&admin).json(&good).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (status, out) = server
        .post_json("/v2/models/iris-v2/infer", &body(serde_json::Value::Null))
        .await;
    assert_eq!(
        (
            status,
            out["model_version"].as_str(),
            out["parameters"]["variant"].as_str()
        ),
        (200, Some("2"), Some("only"))
    );
    let (status, _) = server
        .post_json("/v2/models/iris-ab/infer", &body(serde_json::Value::Null))
        .await;
    assert_eq!(status, 404, "the old route is gone");
    server.stop().await;
}

#[tokio::test]
async fn replacing_routes_keeps_the_statistics_of_unchanged_variants() {
    let server = TestServer::start_with(|c| c.routes = vec![ab_route()]).await;
    for i in 0..20 {
        let (status, _) = server
            .post_json(
                "/v2/models/iris-ab/infer",
                &body(json!({"route_key": format!("user-{i}")})),
            )
            .await;
        assert_eq!(status, 200);
    }
    let requests = |report: &serde_json::Value, variant: &str| {
        report["variants"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["variant"] == variant)
            .map(|v| v["requests"].as_u64().unwrap())
    };
    let before = server.admin_get_json("/admin/experiments/iris-ab").await;
    let (a, b) = (
        requests(&before, "a").unwrap(),
        requests(&before, "b").unwrap(),
    );
    assert_eq!(a + b, 20);

    // New weights, same variants: the counts carry over. A variant whose version changed
    // ("b" now serves version 1) is another experiment arm and starts from zero.
    let replaced = json!([{"name": "iris-ab", "variants": [
        {"name": "a", "model": "iris_mlp", "version": "1", "weight": 3},
        {"name": "b", "model": "iris_mlp", "version": "1", "weight": 1}
    ]}]);
    let r = server
        .http
        .put(server.admin_url("/admin/routes"))
        .json(&replaced)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let after = server.admin_get_json("/admin/experiments/iris-ab").await;
    assert_eq!(requests(&after, "a"), Some(a));
    assert_eq!(requests(&after, "b"), Some(0));
    server.stop().await;
}

#[tokio::test]
async fn canary_transitions_of_registry_models_are_audited_in_the_registry() {
    use std::sync::Arc;

    use infergate_registry::Registry;
    use infergate_server::repository::Repository;

    let dir = tempfile::tempdir().unwrap();
    let registry = Arc::new(Registry::open(dir.path()).unwrap());
    let repo = crate::common::repo_dir();
    for v in ["1", "2"] {
        registry
            .import(
                "iris",
                &repo.join(format!("iris_mlp/{v}/model.onnx")),
                "test",
            )
            .unwrap();
    }
    registry.set_alias("iris", "production", 1, "test").unwrap();
    let mut config = crate::common::loopback_config();
    config.models.registry = Some(dir.path().to_path_buf());
    let mut route = canary_route("iris-canary", "iris", vec![50, 100], 5);
    route.variants[0].model = "iris".into();
    route.variants[1].version = Some("2".into());
    // A p95 bound no real request meets: the canary must roll back.
    route.canary.as_mut().unwrap().max_p95_ms = Some(0.000_001);
    config.routes = vec![route];
    let repository = Repository::new(
        None,
        Some(crate::common::ort_runtime()),
        config.runtime.clone(),
    )
    .with_registry(Arc::clone(&registry));
    let repository = Arc::new(repository);
    repository.load_all().await.unwrap();
    let server = TestServer::serve(config, repository).await;

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let entry = loop {
        let _ = server
            .post_json(
                "/v2/models/iris-canary/infer",
                &body(serde_json::Value::Null),
            )
            .await;
        let audit = registry.audit(Some("iris")).unwrap();
        if let Some(e) = audit.iter().find(|e| e.action == "canary_transition") {
            break e.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no canary transition audited"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(entry.actor, "canary");
    let detail = entry.detail.to_string();
    assert!(detail.contains("\"route\":\"iris-canary\""), "{detail}");
    assert!(detail.contains("\"to_percent\":0"), "{detail}");
    assert!(detail.contains("rolled back: p95 latency"), "{detail}");
    server.stop().await;
}

/// Clients ask a route for metadata before they call it (tritonclient does): the route
/// answers with its first variant's interface under its own name, on both protocols.
#[tokio::test]
async fn a_route_has_the_metadata_of_its_interface() {
    let server = TestServer::start_with(|c| c.routes = vec![ab_route()]).await;
    let (status, meta) = server.get_json("/v2/models/iris-ab").await;
    assert_eq!(status, 200, "{meta}");
    let (_, model) = server.get_json("/v2/models/iris_mlp/versions/1").await;
    assert_eq!(meta["name"], "iris-ab");
    assert_eq!(meta["inputs"], model["inputs"]);
    assert_eq!(meta["outputs"], model["outputs"]);
    let grpc = server
        .grpc()
        .await
        .model_metadata(pb::ModelMetadataRequest {
            name: "iris-ab".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(grpc.name, "iris-ab");
    assert_eq!(grpc.inputs[0].shape, vec![-1, 4]);
    assert_eq!(server.get_json("/v2/models/no-such-route").await.0, 404);
    server.stop().await;
}
