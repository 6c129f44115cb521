//! Drift detection: traffic drawn like the training data stays under the PSI threshold;
//! shifted traffic crosses it, on the admin endpoint and in the metrics.

use std::sync::Arc;

use infergate_registry::{
    ArtifactKind, Baseline, NewArtifact, NewVersion, PLATFORM_ONNX, Registry, inspect,
};
use infergate_server::repository::Repository;
use serde_json::{Value, json};

use crate::common::{
    TestServer, direct_ort_f32, grpc_input, loopback_config, ort_runtime, repo_dir,
};

/// Iris-like rows: four features, each normal with its own mean and spread (a seeded
/// generator, Box-Muller), each feature then scaled by `scale` and moved by `shift`.
fn rows(n: usize, seed: u64, scale: f32, shift: f32) -> Vec<f32> {
    let (mean, sd) = ([5.8f32, 3.0, 4.3, 1.3], [0.8f32, 0.4, 1.7, 0.7]);
    let mut state = seed;
    let mut uniform = move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n * 4)
        .map(|i| {
            let z = (-2.0 * uniform().ln()).sqrt() * (2.0 * std::f64::consts::PI * uniform()).cos();
            (mean[i % 4] + sd[i % 4] * z as f32) * scale + shift
        })
        .collect()
}

fn argmax_rows(probabilities: &[f32], classes: usize) -> Vec<u32> {
    probabilities
        .chunks(classes)
        .map(|p| {
            p.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i as u32)
        })
        .collect()
}

/// A server whose registry holds `model` version 1 with its training `baseline`, comparing
/// every request (`sample_every` 1) in windows of `window_rows`.
async fn serve_with_baseline(
    model: &str,
    signature: infergate_registry::Signature,
    onnx: Vec<u8>,
    baseline: Baseline,
    window_rows: usize,
) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path()).unwrap();
    reg.register(NewVersion {
        model: model.into(),
        platform: PLATFORM_ONNX.into(),
        signature,
        artifacts: vec![NewArtifact {
            kind: ArtifactKind::Onnx,
            bytes: onnx,
        }],
        baseline: Some(baseline),
        author: "test".into(),
        ..NewVersion::default()
    })
    .unwrap();
    let mut config = loopback_config();
    config.drift.sample_every = 1;
    config.drift.window_rows = window_rows;
    let repository = Arc::new(
        Repository::new(None, Some(ort_runtime()), config.runtime.clone())
            .with_registry(Arc::new(reg))
            .with_drift(config.drift.clone()),
    );
    repository.load_all().await.unwrap();
    (TestServer::serve(config, repository).await, dir)
}

async fn send(s: &TestServer, rows: &[f32]) {
    for row in rows.chunks(4) {
        let body = json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": row}]});
        let (status, out) = s.post_json("/v2/models/iris/infer", &body).await;
        assert_eq!(status, 200, "{out}");
    }
}

async fn last_window(s: &TestServer) -> Value {
    let report = s.admin_get_json("/admin/models/iris/drift").await;
    report["versions"][0]["last_window"].clone()
}

#[tokio::test]
async fn shifted_traffic_crosses_the_drift_threshold_and_training_like_traffic_does_not() {
    let model = repo_dir().join("iris_mlp/1/model.onnx");
    let bytes = std::fs::read(&model).unwrap();
    // The baseline the trainer would record: input bins and the model's class distribution
    // on the training rows.
    let train = rows(4000, 1, 1.0, 0.0);
    let labels = argmax_rows(&direct_ort_f32(&model, "input", &[4000, 4], &train), 3);
    let baseline = Baseline::from_rows(&train, 4, 10, &labels, 3);
    let signature = inspect::onnx_signature(&bytes).unwrap();
    let (s, _dir) = serve_with_baseline("iris", signature, bytes, baseline, 300).await;

    // Fresh rows drawn like the training data (another seed).
    send(&s, &rows(300, 2, 1.0, 0.0)).await;
    let calm = last_window(&s).await;
    assert_eq!(calm["rows"], 300, "{calm}");
    assert_eq!(calm["drifted"], false, "{calm}");
    assert!(calm["max_feature_psi"].as_f64().unwrap() < 0.1, "{calm}");
    assert!(calm["class_psi"].as_f64().unwrap() < 0.1, "{calm}");

    // The same traffic, brighter: every feature 30% larger and moved up by one.
    send(&s, &rows(300, 3, 1.3, 1.0)).await;
    let shifted = last_window(&s).await;
    assert_eq!(shifted["drifted"], true, "{shifted}");
    assert!(
        shifted["max_feature_psi"].as_f64().unwrap() > 0.2,
        "{shifted}"
    );
    assert_eq!(shifted["features_over_threshold"], 4, "{shifted}");

    let metrics = s.admin_get_text("/metrics").await;
    let psi = metrics
        .lines()
        .find(|l| {
            l.starts_with("infergate_drift_psi{")
                && l.contains("model=\"iris\"")
                && l.contains("kind=\"max_feature\"")
        })
        .expect("drift metric");
    let value: f64 = psi.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(
        (value - shifted["max_feature_psi"].as_f64().unwrap()).abs() < 1e-9,
        "{psi}"
    );
    // A model that is not loaded is a 404.
    let r = s
        .http
        .get(s.admin_url("/admin/models/nope/drift"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    s.stop().await;
}

/// Fashion-MNIST as `make dataset` installs it (the test fails, saying so, without it).
fn fashion() -> (
    infergate_trainer::data::Dataset,
    infergate_trainer::data::Dataset,
) {
    infergate_trainer::data::fashion_mnist(std::path::Path::new(
        infergate_trainer::data::FASHION_MNIST_DIR,
    ))
    .expect("Fashion-MNIST is installed by `make dataset` (part of `make test`)")
}

/// Sends each 784-pixel row as its own gRPC request (raw contents).
async fn send_images(s: &TestServer, pixels: &[f32]) {
    let mut grpc = s.grpc().await;
    for row in pixels.chunks(784) {
        let request = infergate_proto::inference::ModelInferRequest {
            model_name: "fashion".into(),
            inputs: vec![grpc_input("input", "FP32", &[1, 784])],
            raw_input_contents: vec![row.iter().flat_map(|v| v.to_le_bytes()).collect()],
            ..Default::default()
        };
        grpc.model_infer(request).await.unwrap();
    }
}

#[tokio::test]
async fn brightness_shifted_fashion_mnist_crosses_the_drift_threshold_and_test_images_do_not() {
    use infergate_runtime::candle::Arch;
    use infergate_trainer::train::{TrainConfig, train};

    // What the trainer does, on a slice small enough for a test: a network trained on the
    // training images, registered with their baseline (pixel quantile bins, label counts).
    let (train_set, test_set) = fashion();
    let rows: Vec<usize> = (0..12_000).collect();
    let parts = train_set.subset(&rows).stratified_split(&[0.9, 0.1], 5);
    let (train_rows, val_rows) = (&parts[0], &parts[1]);
    let arch = Arch::Mlp {
        inputs: 784,
        hidden: vec![64],
        classes: 10,
    };
    let config = TrainConfig {
        epochs: 2,
        batch_size: 128,
        learning_rate: 3e-3,
        weight_decay: 1e-4,
        patience: 2,
        seed: 7,
        distill: None,
    };
    let (net, _) = train(&arch, &config, train_rows, val_rows, None, "drift test").unwrap();
    let baseline = Baseline::from_rows(&train_rows.x, 784, 10, &train_rows.y, 10);
    let (s, _dir) = serve_with_baseline(
        "fashion",
        infergate_trainer::export::signature(&arch),
        infergate_trainer::export::onnx(&net).unwrap(),
        baseline,
        500,
    )
    .await;
    let window = || async {
        let report = s.admin_get_json("/admin/models/fashion/drift").await;
        report["versions"][0]["last_window"].clone()
    };

    // Held-out test images: the training distribution.
    let calm: Vec<f32> = test_set.x[..500 * 784].to_vec();
    send_images(&s, &calm).await;
    let calm = window().await;
    assert_eq!(calm["rows"], 500, "{calm}");
    assert_eq!(calm["drifted"], false, "{calm}");
    assert!(calm["class_psi"].as_f64().unwrap() < 0.1, "{calm}");

    // The next test images, brighter: every pixel moved up by 0.3 (clipped at white).
    let bright: Vec<f32> = test_set.x[500 * 784..1000 * 784]
        .iter()
        .map(|p| (p + 0.3).min(1.0))
        .collect();
    send_images(&s, &bright).await;
    let shifted = window().await;
    assert_eq!(shifted["drifted"], true, "{shifted}");
    assert!(
        shifted["features_over_threshold"].as_u64().unwrap() > 100,
        "most pixels move: {shifted}"
    );
    eprintln!(
        "fashion drift: calm max feature PSI {} class PSI {}; bright max feature PSI {} class PSI {}, {} pixels over",
        calm["max_feature_psi"],
        calm["class_psi"],
        shifted["max_feature_psi"],
        shifted["class_psi"],
        shifted["features_over_threshold"]
    );
    s.stop().await;
}
