//! Repository management on the admin listener and graceful shutdown with requests in flight.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use infergate_config::ModelConfig;
use infergate_runtime::test_util::{Behavior, FakeFactory};
use infergate_server::repository::Repository;
use serde_json::json;

use crate::common::{TestServer, ort_runtime, repo_dir};

#[tokio::test]
async fn admin_load_unload_and_index_states() {
    let s = TestServer::start().await;
    let (status, body) = s
        .post_json("/v2/repository/models/simple/unload", &json!({}))
        .await;
    assert_eq!(status, 403, "load/unload is not on the public port");
    assert!(body["error"].as_str().unwrap().contains("admin listener"));

    let unload = s
        .http
        .post(s.admin_url("/v2/repository/models/simple/unload"))
        .send()
        .await
        .unwrap();
    assert_eq!(unload.status(), 200);
    let (status, body) = s
        .post_json("/v2/models/simple/infer", &json!({"inputs": []}))
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("model 'simple' is not ready")
    );
    let index: serde_json::Value = s
        .http
        .post(s.url("/v2/repository/index"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        index
            .as_array()
            .unwrap()
            .contains(&json!({"name": "simple", "state": "UNAVAILABLE", "reason": "unloaded"})),
        "{index}"
    );
    let ready_only: serde_json::Value = s
        .http
        .post(s.url("/v2/repository/index"))
        .json(&json!({"ready": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!ready_only.to_string().contains("simple"));

    let load = s
        .http
        .post(s.admin_url("/v2/repository/models/simple/load"))
        .send()
        .await
        .unwrap();
    assert_eq!(load.status(), 200);
    assert_eq!(
        s.http
            .get(s.url("/v2/models/simple/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let missing = s
        .http
        .post(s.admin_url("/v2/repository/models/nope/load"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let bad = s
        .http
        .post(s.admin_url("/v2/repository/models/..%2Fetc/load"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    s.stop().await;
}

#[tokio::test]
async fn a_broken_version_is_reported_and_the_rest_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    for v in ["1", "2", "3"] {
        std::fs::create_dir_all(model.join(v)).unwrap();
    }
    std::fs::copy(
        repo_dir().join("iris_mlp/1/model.onnx"),
        model.join("1/model.onnx"),
    )
    .unwrap();
    std::fs::copy(
        repo_dir().join("iris_mlp/2/model.onnx"),
        model.join("2/model.onnx"),
    )
    .unwrap();
    std::fs::write(model.join("3/model.onnx"), b"garbage").unwrap();
    std::fs::write(
        model.join("config.toml"),
        "max_batch_size = 8\nversion_policy = { latest = 2 }\n",
    )
    .unwrap();
    let s = TestServer::start_with(|c| c.models.repository = Some(dir.path().to_path_buf())).await;
    let index: serde_json::Value = s
        .http
        .post(s.url("/v2/repository/index"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rows = index.as_array().unwrap();
    assert_eq!(rows.len(), 2, "latest 2 of 3 versions: {index}");
    assert_eq!(
        rows[0],
        json!({"name": "m", "state": "READY", "version": "2"})
    );
    assert_eq!(rows[1]["state"], "UNAVAILABLE");
    assert_eq!(rows[1]["version"], "3");
    assert!(
        rows[1]["reason"]
            .as_str()
            .unwrap()
            .contains("cannot load model"),
        "{index}"
    );
    let (_, meta) = s.get_json("/v2/models/m").await;
    assert_eq!(meta["versions"], json!(["2"]));
    s.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_answers_every_accepted_request() {
    let mut config = crate::common::loopback_config();
    config.runtime.instances = 2;
    let _ = ort_runtime();
    let repository = Arc::new(Repository::new(None, None, config.runtime.clone()));
    let slow = Arc::new(FakeFactory::fp32(Behavior::Slow(Duration::from_millis(
        400,
    ))));
    let executions = Arc::clone(&slow.executions);
    repository
        .insert_factory("slow", 1, slow, ModelConfig::default())
        .unwrap();
    let s = TestServer::serve(config, repository).await;

    let body = json!({"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [1.5, 2.5]}]});
    let mut in_flight = Vec::new();
    for _ in 0..6 {
        let (client, url, body) = (s.http.clone(), s.url("/v2/models/slow/infer"), body.clone());
        in_flight.push(tokio::spawn(async move {
            let r = client.post(url).json(&body).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }));
    }
    let mut grpc = s.grpc().await;
    let grpc_call = tokio::spawn(async move {
        let req = infergate_proto::inference::ModelInferRequest {
            model_name: "slow".into(),
            inputs: vec![
                infergate_proto::inference::model_infer_request::InferInputTensor {
                    name: "INPUT0".into(),
                    datatype: "FP32".into(),
                    shape: vec![1, 1],
                    ..Default::default()
                },
            ],
            raw_input_contents: vec![vec![0u8; 4].into()],
            ..Default::default()
        };
        grpc.model_infer(req).await
    });
    // Shut down once the first requests are executing and the rest are queued.
    while executions.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    s.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let refused = reqwest::Client::new()
        .get(s.url("/v2/health/live"))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "new connections must be refused while draining"
    );

    for call in in_flight {
        let (status, body) = call.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["outputs"][0]["data"], json!([1.5, 2.5]));
    }
    let grpc_result = grpc_call.await.unwrap();
    assert!(grpc_result.is_ok(), "{grpc_result:?}");
    tokio::time::timeout(Duration::from_secs(10), s.handle)
        .await
        .expect("server did not exit after draining")
        .unwrap()
        .unwrap();
    assert_eq!(executions.load(Ordering::SeqCst), 7);
}
