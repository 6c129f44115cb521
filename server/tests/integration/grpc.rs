//! The gRPC front end: metadata, raw and typed tensors, streaming, statistics, health.

use std::collections::HashMap;

use infergate_proto::health::v1 as health;
use infergate_proto::inference as pb;
use tokio_stream::StreamExt;

use crate::common::grpc_input as input;
use crate::common::{TestServer, direct_ort_f32, repo_dir};
use crate::http::DTYPES;

fn iris_request(rows: &[f32], id: &str) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: "iris_mlp".into(),
        id: id.into(),
        inputs: vec![input("input", "FP32", &[rows.len() as i64 / 4, 4])],
        raw_input_contents: vec![bytemuck::cast_slice::<f32, u8>(rows).to_vec().into()],
        ..Default::default()
    }
}

#[tokio::test]
async fn metadata_config_and_server_calls() {
    let s = TestServer::start().await;
    let mut c = s.grpc().await;
    assert!(
        c.server_live(pb::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    let meta = c
        .server_metadata(pb::ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.name, "infergate");
    assert!(meta.extensions.contains(&"binary_tensor_data".to_string()));
    let m = c
        .model_metadata(pb::ModelMetadataRequest {
            name: "iris_mlp".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.versions, vec!["1", "2"]);
    assert_eq!(m.inputs[0].shape, vec![-1, 4]);
    assert_eq!(m.outputs[0].datatype, "FP32");
    let ready = c
        .model_ready(pb::ModelReadyRequest {
            name: "simple".into(),
            version: "1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ready.ready);
    let missing = c
        .model_ready(pb::ModelReadyRequest {
            name: "simple".into(),
            version: "7".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!missing.ready);
    let config = c
        .model_config(pb::ModelConfigRequest {
            name: "simple".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    assert_eq!(config.max_batch_size, 32);
    assert_eq!(config.input[0].dims, vec![16]);
    assert_eq!(config.input[0].data_type, pb::DataType::TypeInt32 as i32);
    let err = c
        .model_metadata(pb::ModelMetadataRequest {
            name: "nope".into(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    s.stop().await;
}

#[tokio::test]
async fn raw_infer_equals_direct_onnx_runtime() {
    let s = TestServer::start().await;
    let mut c = s.grpc().await;
    let rows: Vec<f32> = (0..32 * 4).map(|i| (i as f32 * 0.37).sin() * 4.0).collect();
    let resp = c
        .model_infer(iris_request(&rows, "g-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.id, "g-1");
    assert_eq!(resp.model_version, "2");
    assert_eq!(resp.outputs[0].shape, vec![32, 3]);
    assert_eq!(resp.raw_output_contents.len(), 1);
    let got: Vec<f32> = bytemuck::pod_collect_to_vec(&resp.raw_output_contents[0]);
    let expected = direct_ort_f32(
        &repo_dir().join("iris_mlp/2/model.onnx"),
        "input",
        &[32, 4],
        &rows,
    );
    assert_eq!(got, expected);
    s.stop().await;
}

#[tokio::test]
async fn typed_contents_are_accepted() {
    let s = TestServer::start().await;
    let mut c = s.grpc().await;
    let a: Vec<i32> = (0..16).collect();
    let b: Vec<i32> = (0..16).map(|x| 2 * x).collect();
    let mut req = pb::ModelInferRequest {
        model_name: "simple".into(),
        inputs: vec![
            input("INPUT0", "INT32", &[1, 16]),
            input("INPUT1", "INT32", &[1, 16]),
        ],
        outputs: vec![pb::model_infer_request::InferRequestedOutputTensor {
            name: "OUTPUT1".into(),
            parameters: HashMap::new(),
        }],
        ..Default::default()
    };
    req.inputs[0].contents = Some(pb::InferTensorContents {
        int_contents: a.clone(),
        ..Default::default()
    });
    req.inputs[1].contents = Some(pb::InferTensorContents {
        int_contents: b.clone(),
        ..Default::default()
    });
    let resp = c.model_infer(req).await.unwrap().into_inner();
    assert_eq!(resp.outputs.len(), 1, "only the requested output");
    assert_eq!(resp.outputs[0].name, "OUTPUT1");
    let diff: Vec<i32> = bytemuck::pod_collect_to_vec(&resp.raw_output_contents[0]);
    assert_eq!(
        diff,
        a.iter().zip(&b).map(|(x, y)| x - y).collect::<Vec<_>>()
    );

    let mut bytes = pb::ModelInferRequest {
        model_name: "identity_all".into(),
        ..Default::default()
    };
    for (n, d) in DTYPES {
        let mut i = input(&format!("in_{n}"), d, &[1, 2]);
        let c = &mut i.contents.get_or_insert_with(Default::default);
        match d {
            "BOOL" => c.bool_contents = vec![true, false],
            "INT8" | "INT16" | "INT32" => c.int_contents = vec![-5, 7],
            "INT64" => c.int64_contents = vec![-5, 1 << 40],
            "UINT8" | "UINT16" | "UINT32" => c.uint_contents = vec![5, 7],
            "UINT64" => c.uint64_contents = vec![5, 1 << 63],
            "FP32" => c.fp32_contents = vec![0.5, -2.0],
            "FP64" => c.fp64_contents = vec![0.5, -2.0],
            "BYTES" => c.bytes_contents = vec!["one".into(), "two".into()],
            _ => i.contents = None,
        }
        bytes.inputs.push(i);
    }
    // FP16/BF16 cannot travel typed (and typed cannot mix with raw): every other datatype
    // decodes, and validation then reports the first missing input.
    bytes.inputs.retain(|i| i.contents.is_some());
    assert_eq!(bytes.inputs.len(), 12);
    let err = c.model_infer(bytes).await.unwrap_err();
    assert!(
        err.message().contains("requires input 'in_fp16'"),
        "{}",
        err.message()
    );
    s.stop().await;
}

#[tokio::test]
async fn every_datatype_round_trips_as_raw_contents() {
    let s = TestServer::start().await;
    let mut c = s.grpc().await;
    let mut req = pb::ModelInferRequest {
        model_name: "identity_all".into(),
        ..Default::default()
    };
    let mut sent = Vec::new();
    for (i, (n, d)) in DTYPES.iter().enumerate() {
        let raw = crate::common::raw_sample(d, 4, i, &[b"\xc3(bad utf-8", b"", b"x", b"yz"]);
        req.inputs.push(input(&format!("in_{n}"), d, &[2, 2]));
        req.raw_input_contents.push(raw.clone().into());
        sent.push(raw);
    }
    let resp = c.model_infer(req).await.unwrap().into_inner();
    assert_eq!(resp.outputs.len(), 14);
    for (out, (n, d)) in resp.outputs.iter().zip(DTYPES.iter()) {
        assert_eq!(out.name, format!("out_{n}"));
        assert_eq!(out.datatype, *d);
        assert_eq!(out.shape, vec![2, 2]);
    }
    for (raw, expected) in resp.raw_output_contents.iter().zip(&sent) {
        assert_eq!(&raw[..], &expected[..]);
    }
    s.stop().await;
}

#[tokio::test]
async fn stream_infer_answers_every_request_and_reports_errors_inline() {
    let s = TestServer::start().await;
    let mut c = s.grpc().await;
    let mut requests = Vec::new();
    for i in 0..20 {
        let rows: Vec<f32> = (0..4).map(|j| (i * 4 + j) as f32 * 0.1).collect();
        requests.push(iris_request(&rows, &format!("s-{i}")));
    }
    let mut bad = iris_request(&[1.0; 4], "bad");
    bad.inputs[0].shape = vec![1, 3];
    requests.push(bad);
    let mut responses = c
        .model_stream_infer(tokio_stream::iter(requests.clone()))
        .await
        .unwrap()
        .into_inner();
    let mut seen = HashMap::new();
    while let Some(item) = responses.next().await {
        let item = item.unwrap();
        let id = item.infer_response.as_ref().unwrap().id.clone();
        seen.insert(id, item);
        if seen.len() == requests.len() {
            break;
        }
    }
    assert_eq!(seen.len(), 21);
    assert!(
        seen["bad"]
            .error_message
            .contains("expected 12 bytes of FP32 data for shape [1, 3], got 16"),
        "{}",
        seen["bad"].error_message
    );
    for i in 0..20 {
        let item = &seen[&format!("s-{i}")];
        assert_eq!(item.error_message, "");
        let rows: Vec<f32> = (0..4).map(|j| (i * 4 + j) as f32 * 0.1).collect();
        let expected = direct_ort_f32(
            &repo_dir().join("iris_mlp/2/model.onnx"),
            "input",
            &[1, 4],
            &rows,
        );
        let got: Vec<f32> = bytemuck::pod_collect_to_vec(
            &item.infer_response.as_ref().unwrap().raw_output_contents[0],
        );
        assert_eq!(got, expected);
    }
    s.stop().await;
}

#[tokio::test]
async fn statistics_index_and_repository_control_over_grpc() {
    let s = TestServer::start().await;
    let mut c = s.grpc().await;
    for _ in 0..3 {
        c.model_infer(iris_request(&[1.0; 8], "")).await.unwrap();
    }
    let stats = c
        .model_statistics(pb::ModelStatisticsRequest {
            name: "iris_mlp".into(),
            version: "2".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let m = &stats.model_stats[0];
    assert_eq!((m.inference_count, m.execution_count), (6, 3));
    assert_eq!(m.inference_stats.unwrap().success.unwrap().count, 3);
    let index = c
        .repository_index(pb::RepositoryIndexRequest {
            repository_name: String::new(),
            ready: true,
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<(String, String)> = index
        .models
        .iter()
        .map(|m| (m.name.clone(), m.version.clone()))
        .collect();
    assert_eq!(
        names,
        [
            ("identity_all", "1"),
            ("iris_mlp", "1"),
            ("iris_mlp", "2"),
            ("simple", "1")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let denied = c
        .repository_model_unload(pb::RepositoryModelUnloadRequest {
            model_name: "simple".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert!(
        denied
            .message()
            .contains("disabled on the public grpc port")
    );
    s.stop().await;
}

#[tokio::test]
async fn repository_control_over_grpc_when_enabled() {
    let s = TestServer::start_with(|c| c.server.grpc_repository_control = true).await;
    let mut c = s.grpc().await;
    c.repository_model_unload(pb::RepositoryModelUnloadRequest {
        model_name: "simple".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let ready = c
        .model_ready(pb::ModelReadyRequest {
            name: "simple".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!ready.ready);
    c.repository_model_load(pb::RepositoryModelLoadRequest {
        model_name: "simple".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let ready = c
        .model_ready(pb::ModelReadyRequest {
            name: "simple".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ready.ready);
    s.stop().await;
}

#[tokio::test]
async fn grpc_health_service() {
    let s = TestServer::start().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", s.addrs.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut h = health::health_client::HealthClient::new(channel);
    for service in ["", "inference.GRPCInferenceService"] {
        let r = h
            .check(health::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            health::health_check_response::ServingStatus::Serving as i32
        );
    }
    let err = h
        .check(health::HealthCheckRequest {
            service: "other".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let mut watch = h
        .watch(health::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(
        first.status,
        health::health_check_response::ServingStatus::Serving as i32
    );
    s.shutdown.cancel();
    let update = watch
        .next()
        .await
        .expect("a NOT_SERVING update before the stream ends")
        .unwrap();
    assert_eq!(
        update.status,
        health::health_check_response::ServingStatus::NotServing as i32
    );
    assert!(
        watch.next().await.is_none(),
        "the watch ends when the server shuts down"
    );
    tokio::time::timeout(std::time::Duration::from_secs(5), s.handle)
        .await
        .expect("an open health watch must not hold up shutdown")
        .unwrap()
        .unwrap();
}
