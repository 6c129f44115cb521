//! Serving from the model registry: production as the default version, every version by
//! number, ONNX and candle versions, digest and lineage in metadata, corrupt artifacts refused.

use std::collections::HashMap;
use std::sync::Arc;

use infergate_proto::inference::ModelMetadataRequest;
use infergate_registry::inspect::{META_ARCHITECTURE, META_SIGNATURE};
use infergate_registry::{ArtifactKind, Registry};
use infergate_server::repository::Repository;
use serde_json::json;

use crate::common::{TestServer, direct_ort_f32, f32s, loopback_config, ort_runtime, repo_dir};

/// A 2→2 MLP with one hidden unit per output, in the candle backend's safetensors form:
/// logits = W1·relu(W0·x + b0) + b1 with known weights.
fn tiny_candle_model() -> Vec<u8> {
    tiny_candle_model_with_bias(0.5)
}

fn tiny_candle_model_with_bias(bias: f32) -> Vec<u8> {
    let t = |shape: Vec<usize>, v: &[f32]| {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        (shape, bytes)
    };
    let tensors = [
        ("fc0.weight", t(vec![2, 2], &[1.0, 0.0, 0.0, 2.0])),
        ("fc0.bias", t(vec![2], &[0.0, -1.0])),
        ("fc1.weight", t(vec![2, 2], &[1.0, 1.0, -1.0, 0.5])),
        ("fc1.bias", t(vec![2], &[bias, 0.0])),
    ];
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, (shape, bytes))| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .unwrap();
            ((*n).to_string(), view)
        })
        .collect();
    let signature = json!({
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 2]}],
    });
    let arch = json!({"kind": "mlp", "inputs": 2, "hidden": [2], "classes": 2});
    let meta = HashMap::from([
        (META_SIGNATURE.to_string(), signature.to_string()),
        (META_ARCHITECTURE.to_string(), arch.to_string()),
    ]);
    safetensors::serialize(views, Some(meta)).unwrap()
}

/// The repository-index row of `name` version `version`, waiting up to `within` for it to
/// appear (the server follows the registry asynchronously).
async fn index_row(
    server: &TestServer,
    name: &str,
    version: &str,
    within: std::time::Duration,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        let r = server
            .http
            .post(server.url("/v2/repository/index"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        let index: serde_json::Value = r.json().await.unwrap();
        if let Some(row) = index
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name && e["version"] == version)
        {
            return row.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} version {version} never appeared in the index"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A server over `registry` that does not follow it (changes apply on a management load).
async fn serve(registry: &std::path::Path) -> TestServer {
    serve_following(registry, 0).await
}

async fn serve_following(registry: &std::path::Path, poll_ms: u64) -> TestServer {
    let mut config = loopback_config();
    config.models.registry = Some(registry.to_path_buf());
    config.models.registry_poll_ms = poll_ms;
    let repository = Repository::new(None, Some(ort_runtime()), config.runtime.clone())
        .with_registry(Arc::new(Registry::open(registry).unwrap()));
    let repository = Arc::new(repository);
    repository.load_all().await.unwrap();
    TestServer::serve(config, repository).await
}

#[tokio::test]
async fn serves_production_by_default_every_version_by_number_and_shows_lineage() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path()).unwrap();
    let v1 = reg
        .import("iris", &repo_dir().join("iris_mlp/1/model.onnx"), "alice")
        .unwrap();
    let v2 = reg
        .import("iris", &repo_dir().join("iris_mlp/2/model.onnx"), "alice")
        .unwrap();
    reg.promote("iris", 1, "production", false, "alice")
        .unwrap();
    let st = dir.path().join("tiny.safetensors");
    std::fs::write(&st, tiny_candle_model()).unwrap();
    let tiny = reg.import("tiny", &st, "bob").unwrap();
    assert_eq!(tiny.platform, "candle_safetensors");
    drop(reg);
    let server = serve(dir.path()).await;

    let x = [5.1f32, 3.5, 1.4, 0.2];
    let body =
        json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": x}]});
    // No version: production (1), even though 2 is newer.
    let (status, out) = server.post_json("/v2/models/iris/infer", &body).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["model_version"], "1");
    let expected = direct_ort_f32(
        &repo_dir().join("iris_mlp/1/model.onnx"),
        "input",
        &[1, 4],
        &x,
    );
    assert_eq!(f32s(&out["outputs"][0]["data"]), expected);
    let (status, out) = server
        .post_json("/v2/models/iris/versions/2/infer", &body)
        .await;
    assert_eq!((status, out["model_version"].as_str()), (200, Some("2")));
    // An alias names a version too.
    let (status, out) = server
        .post_json("/v2/models/iris/versions/production/infer", &body)
        .await;
    assert_eq!((status, out["model_version"].as_str()), (200, Some("1")));

    // Metadata carries the artifact digest, aliases and lineage (HTTP parameters).
    let (_, meta) = server.get_json("/v2/models/iris").await;
    assert_eq!(meta["versions"], json!(["1", "2"]));
    let params = &meta["parameters"];
    assert_eq!(
        params["artifact_digest"],
        format!("sha256:{}", v1.artifacts[0].digest)
    );
    assert_eq!(params["aliases"], "production");
    assert_eq!(params["author"], "alice");
    assert!(params["lineage"].is_string());
    let (_, meta2) = server.get_json("/v2/models/iris/versions/2").await;
    assert_eq!(
        meta2["parameters"]["artifact_digest"],
        format!("sha256:{}", v2.artifacts[0].digest)
    );
    assert_eq!(meta2["parameters"]["aliases"], "");

    // … and gRPC properties.
    let mut grpc = server.grpc().await;
    let meta = grpc
        .model_metadata(ModelMetadataRequest {
            name: "tiny".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.platform, "candle_safetensors");
    assert_eq!(
        meta.properties["artifact_digest"],
        format!(
            "sha256:{}",
            tiny.artifact(ArtifactKind::Safetensors).unwrap().digest
        )
    );

    // The candle version computes W1·relu(W0·x + b0) + b1.
    let body = json!({"inputs": [{"name": "input", "shape": [2, 2], "datatype": "FP32", "data": [1.0, 1.0, -2.0, 3.0]}]});
    let (status, out) = server.post_json("/v2/models/tiny/infer", &body).await;
    assert_eq!(status, 200, "{out}");
    // Row 1: h = relu([1, 1]) = [1, 1]; logits = [1+1+0.5, -1+0.5] = [2.5, -0.5].
    // Row 2: h = relu([-2, 5]) = [0, 5]; logits = [5+0.5, 2.5] = [5.5, 2.5].
    assert_eq!(f32s(&out["outputs"][0]["data"]), vec![2.5, -0.5, 5.5, 2.5]);
    let body = json!({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 1.0, 1.0]}]});
    let (status, out) = server.post_json("/v2/models/tiny/infer", &body).await;
    assert_eq!(status, 400, "{out}");

    // Another process promotes version 2; a load through the management API picks it up.
    Registry::open(dir.path())
        .unwrap()
        .promote("iris", 2, "production", false, "carol")
        .unwrap();
    let r = server
        .http
        .post(server.admin_url("/v2/repository/models/iris/load"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body =
        json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": x}]});
    let (_, out) = server.post_json("/v2/models/iris/infer", &body).await;
    assert_eq!(out["model_version"], "2");
    let (_, meta) = server.get_json("/v2/models/iris/versions/2").await;
    assert_eq!(meta["parameters"]["aliases"], "production");
    server.stop().await;
}

#[tokio::test]
async fn a_corrupt_artifact_is_refused_and_the_other_versions_serve() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path()).unwrap();
    reg.import("iris", &repo_dir().join("iris_mlp/1/model.onnx"), "ci")
        .unwrap();
    let v2 = reg
        .import("iris", &repo_dir().join("iris_mlp/2/model.onnx"), "ci")
        .unwrap();
    reg.promote("iris", 2, "production", false, "ci").unwrap();
    drop(reg);
    let digest = &v2.artifacts[0].digest;
    let blob = dir
        .path()
        .join("artifacts/sha256")
        .join(&digest[..2])
        .join(digest);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&blob, bytes).unwrap();

    let server = serve(dir.path()).await;
    let v2_row = index_row(&server, "iris", "2", std::time::Duration::ZERO).await;
    assert_eq!(v2_row["state"], "UNAVAILABLE");
    assert!(
        v2_row["reason"]
            .as_str()
            .unwrap()
            .contains("failed verification"),
        "{v2_row}"
    );
    // Production is broken, so an unversioned request gets the newest serving version.
    let body = json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}]});
    let (status, out) = server.post_json("/v2/models/iris/infer", &body).await;
    assert_eq!(
        (status, out["model_version"].as_str()),
        (200, Some("1")),
        "{out}"
    );
    let (status, _) = server
        .post_json("/v2/models/iris/versions/2/infer", &body)
        .await;
    assert_eq!(status, 404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_elsewhere_is_hot_swapped_under_load_without_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path()).unwrap();
    reg.import("iris", &repo_dir().join("iris_mlp/1/model.onnx"), "ci")
        .unwrap();
    reg.import("iris", &repo_dir().join("iris_mlp/2/model.onnx"), "ci")
        .unwrap();
    reg.promote("iris", 1, "production", false, "ci").unwrap();
    let tiny = dir.path().join("tiny.safetensors");
    std::fs::write(&tiny, tiny_candle_model()).unwrap();
    reg.import("tiny", &tiny, "ci").unwrap();
    reg.promote("tiny", 1, "production", false, "ci").unwrap();
    let server = Arc::new(serve_following(dir.path(), 100).await);

    // Four clients in closed loops, each recording the version that answered.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (server, stop) = (Arc::clone(&server), Arc::clone(&stop));
            tokio::spawn(async move {
                let body = json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]});
                let mut seen = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (status, out) = server.post_json("/v2/models/iris/infer", &body).await;
                    seen.push((status, out["model_version"].as_str().unwrap_or("").to_string()));
                }
                seen
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    Registry::open(dir.path())
        .unwrap()
        .promote("iris", 2, "production", false, "release")
        .unwrap();
    // The poll is 100 ms; allow a loaded machine ten times that.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let (_, meta) = server.get_json("/v2/models/iris/versions/2").await;
        if meta["parameters"]["aliases"] == "production" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "production did not move within 2 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for client in clients {
        let seen = client.await.unwrap();
        total += seen.len();
        assert!(seen.iter().all(|(status, _)| *status == 200), "{seen:?}");
        // Each client sees version 1, then version 2, never back.
        let first_two = seen
            .iter()
            .position(|(_, v)| v == "2")
            .expect("the swap reached every client");
        assert!(seen[..first_two].iter().all(|(_, v)| v == "1"));
        assert!(seen[first_two..].iter().all(|(_, v)| v == "2"), "{seen:?}");
    }
    assert!(total > 20, "only {total} requests ran");

    // Production back on 1, then a corrupt version 3 promoted: the default stays on 1 (not
    // the newest serving version, 2). Its blob is corrupt before it is registered.
    reg.promote("iris", 1, "production", false, "release")
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while server.get_json("/v2/models/iris/versions/1").await.1["parameters"]["aliases"]
        != "production"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "production did not move back to 1"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut v3 = std::fs::read(repo_dir().join("iris_mlp/1/model.onnx")).unwrap();
    v3.extend_from_slice(b"\x72\x0b\x0a\x09corrupted");
    let digest = infergate_registry::sha256_hex(&v3);
    let blob_dir = dir.path().join("artifacts/sha256").join(&digest[..2]);
    std::fs::create_dir_all(&blob_dir).unwrap();
    std::fs::write(blob_dir.join(&digest), b"not the model").unwrap();
    let v3_file = dir.path().join("iris-v3.onnx");
    std::fs::write(&v3_file, &v3).unwrap();
    assert_eq!(reg.import("iris", &v3_file, "ci").unwrap().version, 3);
    reg.promote("iris", 3, "production", false, "release")
        .unwrap();
    let row = index_row(&server, "iris", "3", std::time::Duration::from_secs(2)).await;
    assert_eq!(row["state"], "UNAVAILABLE");
    let body = json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]});
    let (status, out) = server.post_json("/v2/models/iris/infer", &body).await;
    assert_eq!(
        (status, out["model_version"].as_str()),
        (200, Some("1")),
        "{out}"
    );

    // A new production whose stored artifact is corrupt is refused; version 1 keeps serving.
    // (The corrupt blob is in place before the version exists, so no poll can see it intact.)
    let bytes = tiny_candle_model_with_bias(9.0);
    let digest = infergate_registry::sha256_hex(&bytes);
    let blob_dir = dir.path().join("artifacts/sha256").join(&digest[..2]);
    std::fs::create_dir_all(&blob_dir).unwrap();
    std::fs::write(blob_dir.join(&digest), b"not the model").unwrap();
    std::fs::write(&tiny, &bytes).unwrap();
    assert_eq!(reg.import("tiny", &tiny, "ci").unwrap().version, 2);
    reg.promote("tiny", 2, "production", true, "release")
        .unwrap();
    let row = index_row(&server, "tiny", "2", std::time::Duration::from_secs(2)).await;
    assert_eq!(row["state"], "UNAVAILABLE");
    assert!(
        row["reason"]
            .as_str()
            .unwrap()
            .contains("failed verification"),
        "{row}"
    );
    let body = json!({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 1.0]}]});
    let (status, out) = server.post_json("/v2/models/tiny/infer", &body).await;
    assert_eq!(
        (status, out["model_version"].as_str()),
        (200, Some("1")),
        "{out}"
    );
    assert_eq!(f32s(&out["outputs"][0]["data"]), vec![2.5, -0.5]);
    Arc::into_inner(server).unwrap().stop().await;
}

#[tokio::test]
async fn operators_pin_a_default_and_a_production_with_another_signature_is_not_swapped_in() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path()).unwrap();
    reg.import("iris", &repo_dir().join("iris_mlp/1/model.onnx"), "ci")
        .unwrap();
    reg.import("iris", &repo_dir().join("iris_mlp/2/model.onnx"), "ci")
        .unwrap();
    reg.promote("iris", 1, "production", false, "ci").unwrap();
    let server = serve_following(dir.path(), 50).await;
    let body = json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]});
    let default_version =
        |out: &serde_json::Value| out["model_version"].as_str().unwrap().to_string();
    let admin = |method: reqwest::Method, path: &str| {
        server.http.request(method, server.admin_url(path)).send()
    };

    let r = admin(reqwest::Method::POST, "/admin/models/iris/pin/2")
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["default_version"],
        "2"
    );
    let (_, out) = server.post_json("/v2/models/iris/infer", &body).await;
    assert_eq!(default_version(&out), "2");
    let row = index_row(&server, "iris", "2", std::time::Duration::ZERO).await;
    assert_eq!(row["reason"], "pinned as the default version");
    for (path, status) in [
        ("/admin/models/iris/pin/9", 404),
        ("/admin/models/iris/pin/two", 400),
        ("/admin/models/nope/pin/1", 404),
    ] {
        let r = admin(reqwest::Method::POST, path).await.unwrap();
        assert_eq!(r.status(), status, "{path}");
    }
    let r = admin(reqwest::Method::DELETE, "/admin/models/iris/pin")
        .await
        .unwrap();
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["default_version"],
        "1"
    );
    let (_, out) = server.post_json("/v2/models/iris/infer", &body).await;
    assert_eq!(default_version(&out), "1");

    // Version 3 is another model altogether (two INT32 inputs): promoted, it serves by number
    // but clients of "iris" keep version 1.
    reg.import("iris", &repo_dir().join("simple/1/model.onnx"), "ci")
        .unwrap();
    reg.promote("iris", 3, "production", false, "ci").unwrap();
    let row = index_row(&server, "iris", "3", std::time::Duration::from_secs(2)).await;
    assert_eq!(row["state"], "READY");
    assert!(
        row["reason"]
            .as_str()
            .unwrap()
            .contains("signature differs from version 1"),
        "{row}"
    );
    let (status, out) = server.post_json("/v2/models/iris/infer", &body).await;
    assert_eq!((status, default_version(&out)), (200, "1".to_string()));
    let (_, meta) = server.get_json("/v2/models/iris/versions/3").await;
    assert_eq!(meta["inputs"][0]["name"], "INPUT0");
    server.stop().await;
}

/// Two servers over one registry in PostgreSQL and S3 object storage (real servers on loopback,
/// started by `scripts/with_services.sh`): both serve the `production` version, and when
/// another process moves the alias, both follow.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs PostgreSQL and S3 servers: make test runs it through scripts/with_services.sh"]
async fn replicas_follow_one_registry_in_postgres_and_object_storage() {
    let (location, _) = infergate_registry::testing::remote_location();
    let admin = Registry::connect(&location).unwrap();
    for v in ["1", "2"] {
        admin
            .import(
                "iris",
                &repo_dir().join(format!("iris_mlp/{v}/model.onnx")),
                "ci",
            )
            .unwrap();
    }
    admin.set_alias("iris", "production", 1, "ci").unwrap();
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let mut config = loopback_config();
        config.models.registry_poll_ms = 100;
        let repository = Repository::new(None, Some(ort_runtime()), config.runtime.clone())
            .with_registry(Arc::new(Registry::connect(&location).unwrap()));
        let repository = Arc::new(repository);
        repository.load_all().await.unwrap();
        replicas.push(TestServer::serve(config, repository).await);
    }
    let body = json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]});
    let served = |s: &TestServer| {
        let (url, body, http) = (s.url("/v2/models/iris/infer"), body.clone(), s.http.clone());
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let v: serde_json::Value = r.json().await.unwrap();
            v["model_version"].as_str().unwrap().to_string()
        }
    };
    for s in &replicas {
        assert_eq!(served(s).await, "1");
    }
    admin.promote("iris", 2, "production", false, "ci").unwrap();
    for s in &replicas {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while served(s).await != "2" {
            assert!(
                std::time::Instant::now() < deadline,
                "a replica did not follow the alias"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let moves = admin.audit(Some("iris")).unwrap();
    assert_eq!(moves.last().unwrap().action, "promote");
    for s in replicas {
        s.stop().await;
    }
}

/// `runtime.memory_budget_bytes`: a version that would go over it is not loaded, says why in
/// the index, and what already serves keeps serving.
#[tokio::test]
async fn loads_over_the_memory_budget_fail_and_leave_what_serves() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path()).unwrap();
    let v1 = reg
        .import("iris", &repo_dir().join("iris_mlp/1/model.onnx"), "ci")
        .unwrap();
    reg.set_alias("iris", "production", 1, "ci").unwrap();
    let size1 = v1.artifacts[0].size;
    let mut config = loopback_config();
    config.models.registry = Some(dir.path().to_path_buf());
    config.models.registry_poll_ms = 50;
    // Room for version 1 and a little more, not for a second model file.
    config.runtime.memory_budget_bytes = size1 + 100;
    let repository = Repository::new(None, Some(ort_runtime()), config.runtime.clone())
        .with_registry(Arc::new(Registry::open(dir.path()).unwrap()));
    let repository = Arc::new(repository);
    repository.load_all().await.unwrap();
    let s = TestServer::serve(config, repository).await;

    let v2 = reg
        .import("iris", &repo_dir().join("iris_mlp/2/model.onnx"), "ci")
        .unwrap();
    reg.set_alias("iris", "production", 2, "ci").unwrap();
    let row = index_row(&s, "iris", "2", std::time::Duration::from_secs(5)).await;
    assert_eq!(row["state"], "UNAVAILABLE", "{row}");
    let reason = row["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!(
            "memory budget: iris version 2 needs {} bytes, and only 100 of runtime.memory_budget_bytes ({}) are free",
            v2.artifacts[0].size,
            size1 + 100
        )),
        "{reason}"
    );
    let body = json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]});
    let (status, out) = s.post_json("/v2/models/iris/infer", &body).await;
    assert_eq!(
        (status, out["model_version"].as_str()),
        (200, Some("1")),
        "{out}"
    );
    // The failed load is what the alert's gauge counts.
    let metrics = s.admin_get_text("/metrics").await;
    assert!(
        metrics.contains("infergate_unavailable_model_versions 1\n"),
        "{metrics}"
    );
    s.stop().await;
}

/// `models.registry_versions = "aliased"`: only versions an alias names serve; when
/// `production` moves, the new version takes over and the old one is dropped, its last
/// reference released, once nothing uses it.
#[tokio::test]
async fn aliased_registry_versions_drop_the_old_version_after_a_swap() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path()).unwrap();
    for v in ["1", "2"] {
        reg.import(
            "iris",
            &repo_dir().join(format!("iris_mlp/{v}/model.onnx")),
            "ci",
        )
        .unwrap();
    }
    reg.set_alias("iris", "production", 1, "ci").unwrap();
    let mut config = loopback_config();
    config.models.registry_poll_ms = 50;
    let repository = Repository::new(None, Some(ort_runtime()), config.runtime.clone())
        .with_registry(Arc::new(Registry::open(dir.path()).unwrap()))
        .with_registry_versions(infergate_config::RegistryVersions::Aliased);
    let repository = Arc::new(repository);
    repository.load_all().await.unwrap();
    let old = Arc::downgrade(&repository.resolve("iris", Some("1")).unwrap());
    assert!(
        repository.resolve("iris", Some("2")).is_err(),
        "version 2 has no alias and must not be loaded"
    );
    let s = TestServer::serve(config, Arc::clone(&repository)).await;
    let body = json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]});
    let (status, out) = s.post_json("/v2/models/iris/infer", &body).await;
    assert_eq!((status, out["model_version"].as_str()), (200, Some("1")));

    reg.set_alias("iris", "production", 2, "ci").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (status, out) = s.post_json("/v2/models/iris/infer", &body).await;
        assert_eq!(status, 200, "{out}");
        if out["model_version"] == "2" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "production never moved"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (status, _) = s.post_json("/v2/models/iris/versions/1/infer", &body).await;
    assert_eq!(status, 404, "version 1 no longer serves");
    assert!(
        old.upgrade().is_none(),
        "the old version is still referenced after the swap"
    );
    s.stop().await;
}

/// A version swapped in is warmed up with the input shapes clients recently sent to the
/// model (batch sizes included), not only with a batch of one.
#[tokio::test]
async fn a_new_version_is_warmed_up_with_recently_seen_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path()).unwrap();
    reg.import("iris", &repo_dir().join("iris_mlp/1/model.onnx"), "ci")
        .unwrap();
    reg.set_alias("iris", "production", 1, "ci").unwrap();
    let mut config = loopback_config();
    config.models.registry_poll_ms = 50;
    let repository = Arc::new(
        Repository::new(None, Some(ort_runtime()), config.runtime.clone())
            .with_registry(Arc::new(Registry::open(dir.path()).unwrap())),
    );
    repository.load_all().await.unwrap();
    let s = TestServer::serve(config, Arc::clone(&repository)).await;
    for rows in [5usize, 1] {
        let body = json!({"inputs": [{"name": "input", "shape": [rows, 4], "datatype": "FP32", "data": vec![0.5f32; rows * 4]}]});
        for _ in 0..40 {
            assert_eq!(s.post_json("/v2/models/iris/infer", &body).await.0, 200);
        }
    }
    reg.import("iris", &repo_dir().join("iris_mlp/2/model.onnx"), "ci")
        .unwrap();
    reg.set_alias("iris", "production", 2, "ci").unwrap();
    index_row(&s, "iris", "2", std::time::Duration::from_secs(5)).await;
    let v2 = repository.resolve("iris", Some("2")).unwrap();
    let shapes: Vec<Vec<i64>> = v2
        .warmed_with
        .iter()
        .map(|inputs| {
            assert_eq!(inputs.len(), 1);
            assert_eq!(inputs[0].0, "input");
            inputs[0].1.clone()
        })
        .collect();
    assert_eq!(shapes, vec![vec![5, 4], vec![1, 4]]);
    s.stop().await;
}
