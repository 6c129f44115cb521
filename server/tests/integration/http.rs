//! The HTTP/REST front end against the committed models.

use std::io::Write;

use serde_json::{Value, json};

use crate::common::{
    TestServer, direct_ort_f32, f32s, loopback_config, ort_runtime, raw_sample, repo_dir,
    split_binary,
};
use infergate_server::repository::Repository;

const ROWS: [[f32; 4]; 3] = [
    [5.1, 3.5, 1.4, 0.2],
    [6.2, 2.9, 4.3, 1.3],
    [7.7, 3.0, 6.1, 2.3],
];

fn flat_rows() -> Vec<f32> {
    ROWS.iter().flatten().copied().collect()
}

#[tokio::test]
async fn health_and_server_metadata() {
    let s = TestServer::start().await;
    for path in ["/v2/health/live", "/v2/health/ready"] {
        assert_eq!(
            s.http.get(s.url(path)).send().await.unwrap().status(),
            200,
            "{path}"
        );
    }
    let (status, meta) = s.get_json("/v2").await;
    assert_eq!(status, 200);
    assert_eq!(meta["name"], "infergate");
    let extensions: Vec<&str> = meta["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    for ext in [
        "binary_tensor_data",
        "model_repository",
        "statistics",
        "model_configuration",
    ] {
        assert!(extensions.contains(&ext), "missing {ext}");
    }
    s.stop().await;
}

#[tokio::test]
async fn model_metadata_lists_versions_and_signature() {
    let s = TestServer::start().await;
    let (status, meta) = s.get_json("/v2/models/iris_mlp").await;
    assert_eq!(status, 200);
    assert_eq!(meta["versions"], json!(["1", "2"]));
    assert_eq!(meta["platform"], "onnx_onnxv1");
    assert_eq!(
        meta["inputs"],
        json!([{"name": "input", "datatype": "FP32", "shape": [-1, 4]}])
    );
    assert_eq!(
        meta["outputs"],
        json!([{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}])
    );
    let (status, meta) = s.get_json("/v2/models/iris_mlp/versions/1").await;
    assert_eq!((status, meta["versions"].clone()), (200, json!(["1"])));
    let ready = s
        .http
        .get(s.url("/v2/models/simple/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let ready = s
        .http
        .get(s.url("/v2/models/nope/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 400);
    s.stop().await;
}

#[tokio::test]
async fn json_infer_equals_direct_onnx_runtime_nested_or_flat() {
    let s = TestServer::start().await;
    let expected = direct_ort_f32(
        &repo_dir().join("iris_mlp/2/model.onnx"),
        "input",
        &[3, 4],
        &flat_rows(),
    );
    for data in [json!(flat_rows()), json!(ROWS)] {
        let body = json!({"id": "req-7", "inputs": [{"name": "input", "shape": [3, 4], "datatype": "FP32", "data": data}]});
        let (status, resp) = s.post_json("/v2/models/iris_mlp/infer", &body).await;
        assert_eq!(status, 200, "{resp}");
        assert_eq!(resp["id"], "req-7");
        assert_eq!(resp["model_version"], "2");
        assert_eq!(resp["outputs"][0]["shape"], json!([3, 3]));
        assert_eq!(
            f32s(&resp["outputs"][0]["data"]),
            expected,
            "server output differs from direct ort"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn versions_are_served_separately() {
    let s = TestServer::start().await;
    let body = json!({"inputs": [{"name": "input", "shape": [3, 4], "datatype": "FP32", "data": flat_rows()}]});
    for version in ["1", "2"] {
        let expected = direct_ort_f32(
            &repo_dir().join(format!("iris_mlp/{version}/model.onnx")),
            "input",
            &[3, 4],
            &flat_rows(),
        );
        let (status, resp) = s
            .post_json(
                &format!("/v2/models/iris_mlp/versions/{version}/infer"),
                &body,
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(resp["model_version"], version);
        assert_eq!(f32s(&resp["outputs"][0]["data"]), expected);
    }
    let v1 = direct_ort_f32(
        &repo_dir().join("iris_mlp/1/model.onnx"),
        "input",
        &[3, 4],
        &flat_rows(),
    );
    let v2 = direct_ort_f32(
        &repo_dir().join("iris_mlp/2/model.onnx"),
        "input",
        &[3, 4],
        &flat_rows(),
    );
    assert_ne!(v1, v2, "the two versions must be different models");
    s.stop().await;
}

/// A binary-extension request: JSON header, then raw tensors in the order of the JSON.
/// Posts a binary-extension request (JSON header, then the raw tensors in order), expects 200,
/// and returns the response's JSON header and binary tail.
async fn post_binary(
    s: &TestServer,
    path: &str,
    header: &Value,
    tensors: &[&[u8]],
    content_type: &str,
) -> (Value, Vec<u8>) {
    let mut body = serde_json::to_vec(header).unwrap();
    let n = body.len();
    for t in tensors {
        body.extend_from_slice(t);
    }
    let r = s
        .http
        .post(s.url(path))
        .header("Inference-Header-Content-Length", n)
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let headers = r.headers().clone();
    split_binary(&headers, &r.bytes().await.unwrap())
}

#[tokio::test]
async fn binary_tensor_extension_both_ways() {
    let s = TestServer::start().await;
    let a: Vec<i32> = (0..32).collect();
    let b: Vec<i32> = (0..32).map(|x| x * 3 - 7).collect();
    let header = json!({
        "inputs": [
            {"name": "INPUT0", "shape": [2, 16], "datatype": "INT32", "parameters": {"binary_data_size": 128}},
            {"name": "INPUT1", "shape": [2, 16], "datatype": "INT32", "parameters": {"binary_data_size": 128}}
        ],
        "outputs": [{"name": "OUTPUT1", "parameters": {"binary_data": true}}, {"name": "OUTPUT0", "parameters": {"binary_data": false}}]
    });
    let (json, tail) = post_binary(
        &s,
        "/v2/models/simple/infer",
        &header,
        &[bytemuck::cast_slice(&a), bytemuck::cast_slice(&b)],
        "application/octet-stream",
    )
    .await;
    let outputs = json["outputs"].as_array().unwrap();
    assert_eq!(outputs[0]["name"], "OUTPUT1");
    assert_eq!(outputs[0]["parameters"]["binary_data_size"], 128);
    let diff: Vec<i32> = bytemuck::pod_collect_to_vec(&tail);
    assert_eq!(
        diff,
        a.iter().zip(&b).map(|(x, y)| x - y).collect::<Vec<_>>()
    );
    let sum: Vec<i64> = outputs[1]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(
        sum,
        a.iter()
            .zip(&b)
            .map(|(x, y)| i64::from(x + y))
            .collect::<Vec<_>>()
    );

    // binary_data_output makes every output binary; JSON parsed whatever the Content-Type.
    let header = json!({
        "parameters": {"binary_data_output": true},
        "inputs": [{"name": "input", "shape": [3, 4], "datatype": "FP32", "parameters": {"binary_data_size": 48}}]
    });
    let rows = flat_rows();
    let (_, tail) = post_binary(
        &s,
        "/v2/models/iris_mlp/infer",
        &header,
        &[bytemuck::cast_slice(&rows)],
        "text/plain",
    )
    .await;
    let expected = direct_ort_f32(
        &repo_dir().join("iris_mlp/2/model.onnx"),
        "input",
        &[3, 4],
        &rows,
    );
    assert_eq!(bytemuck::pod_collect_to_vec::<u8, f32>(&tail), expected);
    s.stop().await;
}

#[tokio::test]
async fn raw_binary_request_for_a_single_input_model() {
    let s = TestServer::start().await;
    let row = ROWS[1];
    let r = s
        .http
        .post(s.url("/v2/models/iris_mlp/versions/1/infer"))
        .header("Inference-Header-Content-Length", 0)
        .body(bytemuck::cast_slice::<f32, u8>(&row).to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let headers = r.headers().clone();
    let (json, tail) = split_binary(&headers, &r.bytes().await.unwrap());
    assert_eq!(json["outputs"][0]["shape"], json!([1, 3]));
    let expected = direct_ort_f32(
        &repo_dir().join("iris_mlp/1/model.onnx"),
        "input",
        &[1, 4],
        &row,
    );
    assert_eq!(bytemuck::pod_collect_to_vec::<u8, f32>(&tail), expected);
    // A multi-input model cannot take a raw body.
    let r = s
        .http
        .post(s.url("/v2/models/simple/infer"))
        .header("Inference-Header-Content-Length", 0)
        .body(vec![0u8; 64])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("single-input model"),
        "{body}"
    );
    s.stop().await;
}

#[tokio::test]
async fn gzip_and_deflate_request_bodies() {
    let s = TestServer::start().await;
    let body = serde_json::to_vec(&json!({"inputs": [{"name": "input", "shape": [3, 4], "datatype": "FP32", "data": flat_rows()}]})).unwrap();
    let expected = direct_ort_f32(
        &repo_dir().join("iris_mlp/2/model.onnx"),
        "input",
        &[3, 4],
        &flat_rows(),
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&body).unwrap();
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    zlib.write_all(&body).unwrap();
    for (encoding, data) in [
        ("gzip", gz.finish().unwrap()),
        ("deflate", zlib.finish().unwrap()),
    ] {
        let r = s
            .http
            .post(s.url("/v2/models/iris_mlp/infer"))
            .header("Content-Encoding", encoding)
            .body(data)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{encoding}");
        let resp: Value = r.json().await.unwrap();
        assert_eq!(f32s(&resp["outputs"][0]["data"]), expected, "{encoding}");
    }
    // A small answer goes out plain even when the client accepts gzip (server.compress_min_bytes,
    // 1024 by default): the 3-row answer is about 200 bytes.
    let r = s
        .http
        .post(s.url("/v2/models/iris_mlp/infer"))
        .header("Accept-Encoding", "gzip")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("content-encoding").is_none());
    let plain = r.bytes().await.unwrap();
    assert!(plain.len() < 1024, "{} bytes", plain.len());
    let resp: Value = serde_json::from_slice(&plain).unwrap();
    assert_eq!(f32s(&resp["outputs"][0]["data"]), expected);
    // A large one is compressed when the client asks for it: 60 rows, about 2.5 KB of JSON.
    let rows: Vec<f32> = flat_rows().repeat(20);
    let expected = direct_ort_f32(
        &repo_dir().join("iris_mlp/2/model.onnx"),
        "input",
        &[60, 4],
        &rows,
    );
    let large = serde_json::to_vec(
        &json!({"inputs": [{"name": "input", "shape": [60, 4], "datatype": "FP32", "data": rows}]}),
    )
    .unwrap();
    let r = s
        .http
        .post(s.url("/v2/models/iris_mlp/infer"))
        .header("Accept-Encoding", "gzip")
        .body(large)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let mut inflated = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(&r.bytes().await.unwrap()[..]),
        &mut inflated,
    )
    .unwrap();
    assert!(inflated.len() >= 1024, "{} bytes", inflated.len());
    let resp: Value = serde_json::from_slice(&inflated).unwrap();
    assert_eq!(f32s(&resp["outputs"][0]["data"]), expected);
    s.stop().await;
}

pub fn json_values(dtype: &str) -> Value {
    match dtype {
        "BOOL" => json!([true, false, true, true, false, false]),
        "UINT8" => json!([0, 1, 2, 3, 254, 255]),
        "INT8" => json!([-128, -1, 0, 1, 2, 127]),
        "UINT16" => json!([0, 1, 2, 3, 4, 65535]),
        "INT16" => json!([-32768, -1, 0, 1, 2, 32767]),
        "UINT32" => json!([0, 1, 2, 3, 4, 4294967295u32]),
        "INT32" => json!([-2147483648i64, -1, 0, 1, 2, 2147483647]),
        "UINT64" => json!([0, 1, 2, 3, 4, 18446744073709551615u64]),
        "INT64" => json!([-9223372036854775808i64, -1, 0, 1, 2, 9223372036854775807i64]),
        "FP16" | "BF16" => json!([0.5, -1.0, 2.0, 0.0, 1.5, -0.25]),
        "FP32" => json!([0.5, -1.25, 3.0e10, 0.0, 1.5, -0.1]),
        "FP64" => json!([0.5, -1.25, 3.0e100, 0.0, 1.5, -0.1]),
        "BYTES" => json!(["a", "", "héllo", "with space", "0", "z"]),
        other => panic!("{other}"),
    }
}

pub const DTYPES: [(&str, &str); 14] = [
    ("bool", "BOOL"),
    ("uint8", "UINT8"),
    ("uint16", "UINT16"),
    ("uint32", "UINT32"),
    ("uint64", "UINT64"),
    ("int8", "INT8"),
    ("int16", "INT16"),
    ("int32", "INT32"),
    ("int64", "INT64"),
    ("fp16", "FP16"),
    ("bf16", "BF16"),
    ("fp32", "FP32"),
    ("fp64", "FP64"),
    ("bytes", "BYTES"),
];

#[tokio::test]
async fn every_datatype_round_trips_as_json() {
    let s = TestServer::start().await;
    let inputs: Vec<Value> = DTYPES
        .iter()
        .map(|(n, d)| json!({"name": format!("in_{n}"), "shape": [2, 3], "datatype": d, "data": json_values(d)}))
        .collect();
    let (status, resp) = s
        .post_json("/v2/models/identity_all/infer", &json!({"inputs": inputs}))
        .await;
    assert_eq!(status, 200, "{resp}");
    for ((n, d), out) in DTYPES.iter().zip(resp["outputs"].as_array().unwrap()) {
        assert_eq!(out["name"], format!("out_{n}"));
        assert_eq!(out["datatype"], *d);
        assert_eq!(out["shape"], json!([2, 3]));
        if *d == "FP32" {
            assert_eq!(f32s(&out["data"]), f32s(&json_values(d)), "{d}");
        } else {
            assert_eq!(out["data"], json_values(d), "{d}");
        }
    }
    s.stop().await;
}

#[tokio::test]
async fn every_datatype_round_trips_as_binary() {
    let s = TestServer::start().await;
    let mut inputs = Vec::new();
    let mut tensors: Vec<Vec<u8>> = Vec::new();
    for (i, (n, d)) in DTYPES.iter().enumerate() {
        let raw = raw_sample(
            d,
            6,
            i,
            &[b"\xff\xfenot utf-8", b"", b"x", b"yz", b"\x01", b"end"],
        );
        inputs.push(json!({"name": format!("in_{n}"), "shape": [3, 2], "datatype": d, "parameters": {"binary_data_size": raw.len()}}));
        tensors.push(raw);
    }
    let header = json!({"inputs": inputs, "parameters": {"binary_data_output": true}});
    let refs: Vec<&[u8]> = tensors.iter().map(Vec::as_slice).collect();
    let (json, tail) = post_binary(
        &s,
        "/v2/models/identity_all/infer",
        &header,
        &refs,
        "application/octet-stream",
    )
    .await;
    let mut offset = 0;
    for (out, sent) in json["outputs"].as_array().unwrap().iter().zip(&tensors) {
        let size = out["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
        assert_eq!(&tail[offset..offset + size], &sent[..], "{}", out["name"]);
        offset += size;
    }
    assert_eq!(offset, tail.len());
    s.stop().await;
}

#[tokio::test]
async fn batch_of_1_and_32_and_statistics() {
    let s = TestServer::start().await;
    for batch in [1usize, 32] {
        let a: Vec<i32> = (0..batch as i32 * 16).collect();
        let b: Vec<i32> = a.iter().map(|x| 1000 - x).collect();
        let body = json!({"inputs": [
            {"name": "INPUT0", "shape": [batch, 16], "datatype": "INT32", "data": a},
            {"name": "INPUT1", "shape": [batch, 16], "datatype": "INT32", "data": b}
        ]});
        let (status, resp) = s.post_json("/v2/models/simple/infer", &body).await;
        assert_eq!(status, 200, "{resp}");
        let sum: Vec<i64> = resp["outputs"][0]["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(sum, vec![1000; batch * 16]);
        assert_eq!(resp["outputs"][1]["shape"], json!([batch, 16]));
    }
    let (status, stats) = s.get_json("/v2/models/simple/stats").await;
    assert_eq!(status, 200);
    let m = &stats["model_stats"][0];
    assert_eq!(m["name"], "simple");
    assert_eq!(m["version"], "1");
    assert_eq!(m["inference_count"], 33);
    assert_eq!(m["execution_count"], 2);
    assert_eq!(m["inference_stats"]["success"]["count"], 2);
    assert!(
        m["inference_stats"]["compute_infer"]["ns"]
            .as_u64()
            .unwrap()
            > 0
    );
    let sizes: Vec<u64> = m["batch_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["batch_size"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, vec![1, 32]);
    let (_, all) = s.get_json("/v2/models/stats").await;
    assert_eq!(
        all["model_stats"].as_array().unwrap().len(),
        4,
        "every loaded version"
    );
    s.stop().await;
}

#[tokio::test]
async fn model_config_for_perf_analyzer() {
    let s = TestServer::start().await;
    let (status, config) = s.get_json("/v2/models/simple/config").await;
    assert_eq!(status, 200);
    assert_eq!(config["max_batch_size"], 32);
    assert_eq!(config["platform"], "onnx_onnxv1");
    assert_eq!(config["backend"], "onnxruntime");
    assert_eq!(
        config["input"][0],
        json!({"name": "INPUT0", "data_type": "TYPE_INT32", "format": "FORMAT_NONE", "dims": [16]})
    );
    assert_eq!(config["output"][1]["name"], "OUTPUT1");
    let (_, config) = s.get_json("/v2/models/identity_all/config").await;
    assert_eq!(config["max_batch_size"], 0);
    assert_eq!(config["input"][13]["data_type"], "TYPE_STRING");
    assert_eq!(config["input"][13]["dims"], json!([-1, -1]));
    s.stop().await;
}

#[tokio::test]
async fn metrics_count_requests_by_outcome() {
    let s = TestServer::start().await;
    let good = json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]});
    let bad = json!({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]});
    for _ in 0..3 {
        assert_eq!(s.post_json("/v2/models/iris_mlp/infer", &good).await.0, 200);
    }
    assert_eq!(s.post_json("/v2/models/iris_mlp/infer", &bad).await.0, 400);
    assert_eq!(
        s.post_json("/v2/models/evil-name-1/infer", &bad).await.0,
        404
    );
    let text = s.admin_get_text("/metrics").await;
    assert!(
        text.contains(r#"infergate_requests_total{model="iris_mlp",version="2",variant="",protocol="http",outcome="success"} 3"#),
        "{text}"
    );
    assert!(text.contains(r#"outcome="invalid_input"} 1"#), "{text}");
    assert!(text.contains(r#"infergate_requests_total{model="_unknown",version="",variant="",protocol="http",outcome="not_found"} 1"#));
    assert!(
        !text.contains("evil-name-1"),
        "unknown model names must not become labels"
    );
    assert!(text.contains(r#"infergate_request_duration_seconds_count{model="iris_mlp",version="2",variant="",protocol="http",outcome="success"} 3"#));
    assert!(text.contains("infergate_loaded_model_versions 4"));
    // Metrics live on the admin listener only.
    assert_eq!(
        s.http.get(s.url("/metrics")).send().await.unwrap().status(),
        404
    );
    s.stop().await;
}

/// The server's `[batching]` defaults reach a model that turns batching on without settings,
/// and the model config (Triton's shape) shows the batching in force.
#[tokio::test]
async fn server_batching_defaults_reach_models_and_show_in_their_config() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("iris_mlp");
    std::fs::create_dir_all(model.join("1")).unwrap();
    std::fs::copy(
        repo_dir().join("iris_mlp/1/model.onnx"),
        model.join("1/model.onnx"),
    )
    .unwrap();
    std::fs::write(
        model.join("config.toml"),
        "max_batch_size = 64\n[dynamic_batching]\npreferred_batch_sizes = [8]\n",
    )
    .unwrap();
    let mut config = loopback_config();
    config.models.repository = Some(dir.path().to_path_buf());
    config.batching.max_queue_delay_us = 250;
    let repository = std::sync::Arc::new(
        Repository::new(
            config.models.repository.clone(),
            Some(ort_runtime()),
            config.runtime.clone(),
        )
        .with_model_defaults(config.model_defaults()),
    );
    repository.load_all().await.unwrap();
    let s = TestServer::serve(config, repository).await;
    let (status, c) = s.get_json("/v2/models/iris_mlp/config").await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(
        c["dynamic_batching"],
        json!({"preferred_batch_size": [8], "max_queue_delay_microseconds": 250})
    );
    let (_, plain) = s.get_json("/v2/models/iris_mlp/versions/1/config").await;
    assert_eq!(plain["max_batch_size"], 64);
    s.stop().await;
    // A model without batching shows none.
    let s = TestServer::start().await;
    let (_, c) = s.get_json("/v2/models/iris_mlp/config").await;
    assert!(c.get("dynamic_batching").is_none(), "{c}");
    s.stop().await;
}
