//! Every request limit answers with its own status, on HTTP and on gRPC where the limit
//! applies there: body size, tensor elements, batch size, header size, body timeout, client
//! rate.

use std::time::Duration;

use serde_json::json;

use crate::common::*;

fn iris_rows(rows: usize) -> Vec<f32> {
    (0..rows * 4).map(|i| (i % 7) as f32 * 0.5).collect()
}

fn http_body(rows: usize) -> serde_json::Value {
    json!({"inputs": [{"name": "input", "shape": [rows, 4], "datatype": "FP32", "data": iris_rows(rows)}]})
}

#[tokio::test]
async fn every_limit_answers_its_own_status() {
    let s = TestServer::start_with(|c| {
        c.server.max_body_bytes = 16 * 1024;
        c.server.max_tensor_elements = 200;
        c.server.max_header_bytes = 8192;
        c.server.body_timeout_ms = 300;
        c.limits.rate_limit_per_second = 0.001;
        c.limits.rate_limit_burst = 1000;
    })
    .await;
    let mut grpc = s.grpc().await;
    let infer = "/v2/models/iris_mlp/infer";

    // Within every limit: 200 (iris_mlp batches up to 64 rows).
    let (status, body) = s.post_json(infer, &http_body(50)).await;
    assert_eq!(status, 200, "{body}");
    grpc.model_infer(iris_grpc(&iris_rows(50))).await.unwrap();

    // Tensor elements: 51 rows x 4 = 204 > 200.
    let (status, body) = s.post_json(infer, &http_body(51)).await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("input 'input' has 204 elements, over the limit of 200"),
        "{body}"
    );
    let err = grpc
        .model_infer(iris_grpc(&iris_rows(51)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    assert!(
        err.message().contains("server.max_tensor_elements"),
        "{err}"
    );

    // Body size: 16 KiB.
    let big = json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
                     "parameters": {"padding": "x".repeat(20_000)}});
    let (status, body) = s.post_json(infer, &big).await;
    assert_eq!(status, 413, "{body}");
    let mut padded = iris_grpc(&iris_rows(1));
    padded.id = "x".repeat(20_000);
    let err = grpc.model_infer(padded).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");

    // Header size: 16 KiB of headers against 8 KiB.
    let head = format!(
        "GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Junk: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(16 * 1024)
    );
    let reply = raw_exchange(s.addrs.http, &head, b"", Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    let mut loud = tonic::Request::new(iris_grpc(&iris_rows(1)));
    loud.metadata_mut()
        .insert("x-junk", "a".repeat(16 * 1024).parse().unwrap());
    assert!(
        grpc.model_infer(loud).await.is_err(),
        "a 16 KiB header block got through an 8 KiB limit"
    );

    // Body timeout: 10 of 100 announced bytes, then nothing.
    let head = format!(
        "POST {infer} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n"
    );
    let reply = raw_exchange(s.addrs.http, &head, b"{\"inputs\":", Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");

    s.stop().await;

    // Batch size over the model's max_batch_size (64), within the other limits: 400.
    let s = TestServer::start().await;
    let (status, body) = s.post_json(infer, &http_body(65)).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("65"), "{body}");
    let err = s
        .grpc()
        .await
        .model_infer(iris_grpc(&iris_rows(65)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    s.stop().await;

    // Client rate: a burst of two, then 429 / RESOURCE_EXHAUSTED.
    let s = TestServer::start_with(|c| {
        c.limits.rate_limit_per_second = 0.001;
        c.limits.rate_limit_burst = 2;
    })
    .await;
    for _ in 0..2 {
        assert_eq!(s.post_json(infer, &http_body(1)).await.0, 200);
    }
    let (status, body) = s.post_json(infer, &http_body(1)).await;
    assert_eq!(status, 429, "{body}");
    let err = s
        .grpc()
        .await
        .model_infer(iris_grpc(&iris_rows(1)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    s.stop().await;
}
