//! The hostile-input suite: adversarial requests on both protocols beyond the plain mistakes of
//! `errors.rs` (lying lengths, overflowing and gigantic shapes, NaN where the model forbids
//! it, absurd scheduling parameters, bombs, slow clients, thousands of concurrent streams).
//! Each case names its expected status and a fragment of the message; after every table the
//! server must still be ready and answer a good request.

use std::io::Write;
use std::time::{Duration, Instant};

use infergate_proto::inference as pb;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{TestServer, grpc_input as input, raw_exchange};

const IRIS: &str = "/v2/models/iris_mlp/infer";
const SIMPLE: &str = "/v2/models/simple/infer";
const IDENTITY: &str = "/v2/models/identity_all/infer";

struct Case {
    what: &'static str,
    path: &'static str,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
    status: u16,
    /// Part of the error message, or for a 2xx a part of the response body.
    fragment: &'static str,
}

fn json_case(
    what: &'static str,
    path: &'static str,
    body: Value,
    status: u16,
    fragment: &'static str,
) -> Case {
    raw_case(
        what,
        path,
        serde_json::to_vec(&body).unwrap(),
        status,
        fragment,
    )
}

fn raw_case(
    what: &'static str,
    path: &'static str,
    body: Vec<u8>,
    status: u16,
    fragment: &'static str,
) -> Case {
    Case {
        what,
        path,
        body,
        headers: vec![],
        status,
        fragment,
    }
}

/// A binary-extension body: the JSON header, then `tail` as the binary section.
fn binary_case(
    what: &'static str,
    path: &'static str,
    header: Value,
    tail: &[u8],
    status: u16,
    fragment: &'static str,
) -> Case {
    let mut body = serde_json::to_vec(&header).unwrap();
    let n = body.len();
    body.extend_from_slice(tail);
    Case {
        what,
        path,
        body,
        headers: vec![("Inference-Header-Content-Length", n.to_string())],
        status,
        fragment,
    }
}

fn iris_input(extra: Value) -> Value {
    let mut input =
        json!({"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]});
    for (k, v) in extra.as_object().unwrap() {
        input[k] = v.clone();
    }
    input
}

fn iris_with(params: Value) -> Value {
    json!({"inputs": [iris_input(json!({}))], "parameters": params})
}

fn binary_iris(values: [f32; 4]) -> (Value, Vec<u8>) {
    let header = json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]});
    (
        header,
        values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )
}

fn bytes_header(size: usize) -> Value {
    json!({"inputs": [{"name": "in_bytes", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": size}}]})
}

fn nested_params(depth: usize) -> Vec<u8> {
    let mut s = String::from(
        r#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}],"parameters":{"p":"#,
    );
    s.push_str(&"{\"a\":".repeat(depth));
    s.push('1');
    s.push_str(&"}".repeat(depth));
    s.push_str("}}");
    s.into_bytes()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn http_cases() -> Vec<Case> {
    let good = serde_json::to_vec(&json!({"inputs": [iris_input(json!({}))]})).unwrap();
    let mut cases = vec![
        raw_case("empty body", IRIS, vec![], 400, "malformed request JSON"),
        raw_case("truncated body", IRIS, good[..good.len() / 2].to_vec(), 400, "malformed request JSON"),
        raw_case("body is an array", IRIS, b"[1, 2, 3]".to_vec(), 400, "malformed request JSON"),
        raw_case("invalid utf-8 in a string", IRIS, b"{\"id\": \"\xff\xfe\", \"inputs\": []}".to_vec(), 400, "malformed request JSON"),
        raw_case("number beyond f64", IRIS, br#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[1e400,2,3,4]}]}"#.to_vec(), 400, "number out of range"),
        raw_case("NaN literal", IRIS, br#"{"inputs":[{"name":"input","shape":[1,4],"datatype":"FP32","data":[NaN,2,3,4]}]}"#.to_vec(), 400, "malformed request JSON"),
        raw_case("duplicate inputs key", IRIS, br#"{"inputs":[],"inputs":[]}"#.to_vec(), 400, "duplicate field `inputs`"),
        raw_case("parameters nested 1000 deep", IRIS, nested_params(1000), 400, "recursion limit exceeded"),
        json_case("inputs is an object", IRIS, json!({"inputs": {"name": "input"}}), 400, "malformed request JSON"),
        json_case("shape of strings", IRIS, json!({"inputs": [iris_input(json!({"shape": ["1", "4"]}))]}), 400, "malformed request JSON"),
        json_case("dimension beyond i64", IRIS, json!({"inputs": [iris_input(json!({"shape": [1u64 << 63, 4]}))]}), 400, "malformed request JSON"),
        json_case("shape overflowing usize", IRIS, json!({"inputs": [iris_input(json!({"shape": [1i64 << 40, 1i64 << 40]}))]}), 400, "has too many elements"),
        json_case("1 GB declared by shape", IRIS, json!({"inputs": [iris_input(json!({"shape": [1 << 28, 4]}))]}), 400, "expected 1073741824 elements"),
        json_case("scalar shape", IRIS, json!({"inputs": [iris_input(json!({"shape": [], "data": [1]}))]}), 400, "has shape [], model 'iris_mlp' expects [-1, 4]"),
        json_case("null data", IRIS, json!({"inputs": [iris_input(json!({"data": null}))]}), 400, "input 'input'"),
        json_case("data of objects", IRIS, json!({"inputs": [iris_input(json!({"data": [{}, {}, {}, {}]}))]}), 400, "input 'input'"),
        json_case("bool data as strings", IDENTITY, json!({"inputs": [{"name": "in_bool", "shape": [1, 1], "datatype": "BOOL", "data": ["true"]}]}), 400, "in_bool"),
        json_case("fp32 overflow to infinity", IRIS, json!({"inputs": [iris_input(json!({"data": [1e39, 2, 3, 4]}))]}), 400, "value 1000000000000000000000000000000000000000 is out of range for FP32"),
        json_case("five hundred inputs", IRIS, json!({"inputs": (0..500).map(|i| json!({"name": format!("x{i}"), "shape": [1], "datatype": "FP32", "data": [0]})).collect::<Vec<_>>()}), 400, "model 'iris_mlp' has no input 'x0'"),
        json_case("output requested twice", IRIS, json!({"inputs": [iris_input(json!({}))], "outputs": [{"name": "probabilities"}, {"name": "probabilities"}]}), 400, "requested more than once"),
        json_case("priority beyond u32", IRIS, iris_with(json!({"priority": 1u64 << 40})), 400, "parameter 'priority' must be a non-negative integer"),
        json_case("negative priority", IRIS, iris_with(json!({"priority": -1})), 400, "parameter 'priority' must be a non-negative integer"),
        json_case("priority as a string", IRIS, iris_with(json!({"priority": "high"})), 400, "parameter 'priority' must be a non-negative integer"),
        json_case("negative timeout", IRIS, iris_with(json!({"timeout": -5})), 400, "parameter 'timeout' must be a non-negative integer"),
        json_case("fractional timeout", IRIS, iris_with(json!({"timeout": 1.5})), 400, "parameter 'timeout' must be a non-negative integer"),
        json_case("zero timeout", IRIS, iris_with(json!({"timeout": 0})), 504, "timed out before it could start"),
        json_case("u64::MAX timeout saturates", IRIS, iris_with(json!({"timeout": u64::MAX})), 200, "\"model_name\":\"iris_mlp\""),
        json_case("unknown scalar parameter is ignored", IRIS, iris_with(json!({"x-trace-me": true})), 200, "\"model_name\":\"iris_mlp\""),
        json_case("parameter that is an object", IRIS, iris_with(json!({"x": {"y": 1}})), 400, "request parameter 'x' must be a bool, number or string"),
        json_case("batch of 10 million rows", IRIS, json!({"inputs": [iris_input(json!({"shape": [10_000_000, 4]}))]}), 400, "expected 40000000 elements"),
        json_case("path traversal in model name", "/v2/models/..%2F..%2Fetc%2Fpasswd/infer", json!({"inputs": []}), 404, "unknown model"),
        json_case("version that is not a number", "/v2/models/iris_mlp/versions/latest%00/infer", json!({"inputs": [iris_input(json!({}))]}), 404, "has no version"),
    ];
    cases.push(json_case(
        "inputs disagreeing on the batch size",
        SIMPLE,
        json!({"inputs": [
            {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": vec![1; 16]},
            {"name": "INPUT1", "shape": [2, 16], "datatype": "INT32", "data": vec![1; 32]}
        ]}),
        400,
        "input 'INPUT1' has batch size 2, other inputs have batch size 1",
    ));
    let (nan, nan_tail) = binary_iris([1.0, f32::NAN, 3.0, 4.0]);
    let (inf, inf_tail) = binary_iris([1.0, 2.0, 3.0, f32::NEG_INFINITY]);
    let mut lying_bytes = 1000u32.to_le_bytes().to_vec();
    lying_bytes.extend_from_slice(b"abcd");
    cases.extend([
        binary_case("NaN where the model forbids it", IRIS, nan, &nan_tail, 400, "input 'input' element 1 is NaN or infinite"),
        binary_case("-inf where the model forbids it", IRIS, inf, &inf_tail, 400, "input 'input' element 3 is NaN or infinite"),
        binary_case("binary_data_size of 1 GB", IRIS, json!({"inputs": [iris_input(json!({"data": null, "parameters": {"binary_data_size": 1u64 << 30}}))]}), &[0; 16], 400, "binary_data_size"),
        binary_case("negative binary_data_size", IRIS, json!({"inputs": [iris_input(json!({"data": null, "parameters": {"binary_data_size": -16}}))]}), &[0; 16], 400, "binary_data_size"),
        binary_case("binary_data_size as a string", IRIS, json!({"inputs": [iris_input(json!({"data": null, "parameters": {"binary_data_size": "16"}}))]}), &[0; 16], 400, "binary_data_size"),
        binary_case("BYTES length prefix lying", IDENTITY, bytes_header(8), &lying_bytes, 400, "is longer than the remaining data"),
        binary_case("BYTES prefix cut short", IDENTITY, bytes_header(2), &[1, 0], 400, "element 0 is missing"),
        binary_case("BYTES count beyond the data", IDENTITY, json!({"inputs": [{"name": "in_bytes", "shape": [1000, 1000], "datatype": "BYTES", "parameters": {"binary_data_size": 4}}]}), &[0; 4], 400, "element 1 is missing (data shorter than the shape requires)"),
    ]);
    let mut header_not_number = raw_case(
        "Inference-Header-Content-Length not a number",
        IRIS,
        good.clone(),
        400,
        "Inference-Header-Content-Length",
    );
    header_not_number.headers = vec![("Inference-Header-Content-Length", "twelve".into())];
    let mut header_negative = raw_case(
        "negative Inference-Header-Content-Length",
        IRIS,
        good.clone(),
        400,
        "Inference-Header-Content-Length",
    );
    header_negative.headers = vec![("Inference-Header-Content-Length", "-1".into())];
    let mut header_huge = raw_case(
        "Inference-Header-Content-Length of 2^64",
        IRIS,
        good.clone(),
        400,
        "Inference-Header-Content-Length",
    );
    header_huge.headers = vec![(
        "Inference-Header-Content-Length",
        "18446744073709551616".into(),
    )];
    // 16 MiB of zeros compress to a few KiB: inflating is bounded by the body limit.
    let mut bomb = raw_case(
        "gzip bomb",
        IRIS,
        gzip(&vec![0u8; 16 << 20]),
        413,
        "request body exceeds the limit of 65536 bytes",
    );
    bomb.headers = vec![("Content-Encoding", "gzip".into())];
    cases.extend([header_not_number, header_negative, header_huge, bomb]);
    cases
}

async fn assert_healthy(s: &TestServer) {
    let ok = json!({"inputs": [iris_input(json!({}))]});
    let (status, body) = s.post_json(IRIS, &ok).await;
    assert_eq!(status, 200, "server unhealthy after the suite: {body}");
    let ready = s.http.get(s.url("/v2/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn hostile_http_requests_get_their_status_and_message() {
    let s = TestServer::start_with(|c| c.server.max_body_bytes = 65536).await;
    let cases = http_cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut wrong = Vec::new();
    for case in cases {
        let mut request = s.http.post(s.url(case.path)).body(case.body);
        for (k, v) in case.headers {
            request = request.header(k, v);
        }
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let message = match serde_json::from_str::<Value>(&text) {
            Ok(body) if status >= 400 => body["error"].as_str().unwrap_or_default().to_string(),
            _ => text,
        };
        if status != case.status || !message.contains(case.fragment) {
            wrong.push(format!(
                "{}: {status} {message:?}, expected {} with {:?}",
                case.what, case.status, case.fragment
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_healthy(&s).await;
    s.stop().await;
}

fn iris_raw(shape: &[i64], raw: Vec<u8>) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: "iris_mlp".into(),
        inputs: vec![input("input", "FP32", shape)],
        raw_input_contents: vec![raw.into()],
        ..Default::default()
    }
}

fn param(p: pb::infer_parameter::ParameterChoice) -> pb::InferParameter {
    pb::InferParameter {
        parameter_choice: Some(p),
    }
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn grpc_cases() -> Vec<(
    &'static str,
    pb::ModelInferRequest,
    tonic::Code,
    &'static str,
)> {
    use pb::infer_parameter::ParameterChoice as P;
    let good = f32_bytes(&[1.0, 2.0, 3.0, 4.0]);
    let with_param = |key: &str, value: P| {
        let mut r = iris_raw(&[1, 4], good.clone());
        r.parameters.insert(key.into(), param(value));
        r
    };
    let mut duplicate = iris_raw(&[1, 4], good.clone());
    duplicate.inputs.push(input("input", "FP32", &[1, 4]));
    duplicate.raw_input_contents.push(good.clone().into());
    let mut extra_raw = iris_raw(&[1, 4], good.clone());
    extra_raw.raw_input_contents.push(good.clone().into());
    let mut wrong_field = iris_raw(&[1, 4], vec![]);
    wrong_field.raw_input_contents.clear();
    wrong_field.inputs[0].contents = Some(pb::InferTensorContents {
        int_contents: vec![1, 2, 3, 4],
        ..Default::default()
    });
    let mut bytes_for_ints = iris_raw(&[1, 4], vec![]);
    bytes_for_ints.raw_input_contents.clear();
    bytes_for_ints.inputs[0].contents = Some(pb::InferTensorContents {
        bytes_contents: vec![b"1".to_vec().into(); 4],
        ..Default::default()
    });
    let mut lying_bytes = 1000u32.to_le_bytes().to_vec();
    lying_bytes.extend_from_slice(b"abcd");
    let identity_bytes = |shape: &[i64], raw: Vec<u8>| pb::ModelInferRequest {
        model_name: "identity_all".into(),
        inputs: vec![input("in_bytes", "BYTES", shape)],
        raw_input_contents: vec![raw.into()],
        ..Default::default()
    };
    let mut empty_name = iris_raw(&[1, 4], good.clone());
    empty_name.model_name.clear();
    vec![
        (
            "negative dimension",
            iris_raw(&[-1, 4], good.clone()),
            tonic::Code::InvalidArgument,
            "negative",
        ),
        (
            "shape overflowing usize",
            iris_raw(&[1 << 40, 1 << 40], good.clone()),
            tonic::Code::InvalidArgument,
            "has too many elements",
        ),
        (
            "1 GB declared by shape",
            iris_raw(&[1 << 28, 4], good.clone()),
            tonic::Code::InvalidArgument,
            "expected 4294967296 bytes",
        ),
        (
            "NaN where the model forbids it",
            iris_raw(&[1, 4], f32_bytes(&[f32::NAN, 0.0, 0.0, 0.0])),
            tonic::Code::InvalidArgument,
            "element 0 is NaN or infinite",
        ),
        (
            "+inf where the model forbids it",
            iris_raw(&[1, 4], f32_bytes(&[0.0, 0.0, f32::INFINITY, 0.0])),
            tonic::Code::InvalidArgument,
            "element 2 is NaN or infinite",
        ),
        (
            "negative priority",
            with_param("priority", P::Int64Param(-1)),
            tonic::Code::InvalidArgument,
            "parameter 'priority'",
        ),
        (
            "priority beyond u32",
            with_param("priority", P::Uint64Param(u64::MAX)),
            tonic::Code::InvalidArgument,
            "parameter 'priority'",
        ),
        (
            "priority as a string",
            with_param("priority", P::StringParam("high".into())),
            tonic::Code::InvalidArgument,
            "parameter 'priority'",
        ),
        (
            "timeout as a bool",
            with_param("timeout", P::BoolParam(true)),
            tonic::Code::InvalidArgument,
            "parameter 'timeout'",
        ),
        (
            "zero timeout",
            with_param("timeout", P::Int64Param(0)),
            tonic::Code::DeadlineExceeded,
            "timed out before it could start",
        ),
        (
            "duplicate input",
            duplicate,
            tonic::Code::InvalidArgument,
            "appears more than once",
        ),
        (
            "more raw contents than inputs",
            extra_raw,
            tonic::Code::InvalidArgument,
            "raw_input_contents has 2 entries for 1 inputs",
        ),
        (
            "typed contents in the wrong field",
            wrong_field,
            tonic::Code::InvalidArgument,
            "input 'input'",
        ),
        (
            "bytes contents for FP32",
            bytes_for_ints,
            tonic::Code::InvalidArgument,
            "input 'input'",
        ),
        (
            "BYTES length prefix lying",
            identity_bytes(&[1, 1], lying_bytes),
            tonic::Code::InvalidArgument,
            "is longer than the remaining data",
        ),
        (
            "BYTES count beyond the data",
            identity_bytes(&[1000, 1000], vec![0; 4]),
            tonic::Code::InvalidArgument,
            "element 1 is missing (data shorter than the shape requires)",
        ),
        (
            "batch over max_batch_size",
            iris_raw(&[65, 4], vec![0; 65 * 16]),
            tonic::Code::InvalidArgument,
            "exceeds max_batch_size 64",
        ),
        (
            "empty model name",
            empty_name,
            tonic::Code::NotFound,
            "unknown model ''",
        ),
    ]
}

#[tokio::test]
async fn hostile_grpc_requests_get_their_code_and_message() {
    let s = TestServer::start_with(|c| c.server.max_body_bytes = 65536).await;
    let mut client = s.grpc().await;
    let mut wrong = Vec::new();
    for (what, req, code, fragment) in grpc_cases() {
        match client.model_infer(req).await {
            Err(status) if status.code() == code && status.message().contains(fragment) => {}
            Err(status) => wrong.push(format!(
                "{what}: {:?} {:?}, expected {code:?} with {fragment:?}",
                status.code(),
                status.message()
            )),
            Ok(_) => wrong.push(format!("{what}: succeeded, expected {code:?}")),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let ok = iris_raw(&[1, 4], f32_bytes(&[1.0, 2.0, 3.0, 4.0]));
    assert!(client.model_infer(ok).await.is_ok());
    assert_healthy(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn slow_and_lying_clients_are_cut_off() {
    let s = TestServer::start_with(|c| {
        c.server.max_body_bytes = 65536;
        c.server.header_timeout_ms = 300;
        c.server.body_timeout_ms = 300;
    })
    .await;
    let addr = s.addrs.http;

    // Slow headers (slowloris): the connection is closed once the header timeout passes.
    let started = Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"POST /v2/models/iris_mlp/infer HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut sink)).await;
    assert!(
        read.is_ok(),
        "a slow-header connection was still open after 5 s"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );

    // Slow body: 10 of 100 declared bytes, then silence -> 408 after the body timeout.
    let head = "POST /v2/models/iris_mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n";
    let started = Instant::now();
    let reply = raw_exchange(addr, head, b"{\"inputs\":", Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(
        reply.contains("request body not received within 300 ms"),
        "{reply}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));

    // 1 GB declared by Content-Length: refused before a byte of body is read.
    let head = "POST /v2/models/iris_mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\nConnection: close\r\n\r\n";
    let reply = raw_exchange(addr, head, b"", Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(
        reply.contains("request body exceeds the limit of 65536 bytes"),
        "{reply}"
    );

    // A chunked body whose chunk size is not hexadecimal.
    let head = "POST /v2/models/iris_mlp/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    let reply = raw_exchange(addr, head, b"zz\r\n{}\r\n0\r\n\r\n", Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");

    // A header block larger than any sane client sends.
    let head = format!(
        "GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Junk: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let reply = raw_exchange(addr, &head, b"", Duration::from_secs(5)).await;
    assert!(
        reply.starts_with("HTTP/1.1 431") || reply.is_empty(),
        "{reply}"
    );

    assert_healthy(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn thousands_of_concurrent_streams_are_all_answered() {
    let s = TestServer::start().await;
    // 2000 gRPC calls at once on one HTTP/2 connection (more than max_concurrent_streams: the
    // client queues the rest), and 300 HTTP/1 connections at once.
    let client = s.grpc().await;
    let grpc = (0..2000).map(|i| {
        let mut client = client.clone();
        async move {
            let x = (i % 7) as f32;
            client
                .model_infer(iris_raw(&[1, 4], f32_bytes(&[x, 1.0, 2.0, 3.0])))
                .await
        }
    });
    let http = (0..300).map(|_| {
        let c = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let url = s.url(IRIS);
        async move {
            let body = json!({"inputs": [iris_input(json!({}))]});
            c.post(url)
                .json(&body)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    let (grpc, http) = tokio::join!(
        futures::future::join_all(grpc),
        futures::future::join_all(http)
    );
    let grpc_ok = grpc.iter().filter(|r| r.is_ok()).count();
    let http_ok = http.iter().filter(|r| matches!(r, Ok(200))).count();
    assert_eq!(grpc_ok, 2000, "{:?}", grpc.iter().find(|r| r.is_err()));
    assert_eq!(
        http_ok,
        300,
        "{:?}",
        http.iter().find(|r| !matches!(r, Ok(200)))
    );
    let (_, stats) = s.get_json("/v2/models/iris_mlp/versions/2/stats").await;
    assert_eq!(
        stats["model_stats"][0]["inference_stats"]["success"]["count"],
        2300
    );
    assert_healthy(&s).await;
    s.stop().await;
}
