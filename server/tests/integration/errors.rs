//! Every class of bad input on both protocols: the status, the gRPC code and a message that
//! names the culprit; the server stays healthy afterwards.

use std::collections::HashMap;

use infergate_proto::inference as pb;
use serde_json::{Value, json};

use crate::common::{TestServer, grpc_input as raw_input};
use crate::http::{DTYPES, json_values};

enum Body {
    Json(Value),
    Raw(Vec<u8>, Vec<(&'static str, String)>),
}

struct HttpCase {
    what: &'static str,
    path: &'static str,
    body: Body,
    status: u16,
    fragment: &'static str,
}

fn iris(input: Value) -> Value {
    json!({"inputs": [input]})
}

fn http_cases() -> Vec<HttpCase> {
    let good = json!({"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]});
    let simple = |rows: usize| {
        json!({"inputs": [
            {"name": "INPUT0", "shape": [rows, 16], "datatype": "INT32", "data": vec![1; rows * 16]},
            {"name": "INPUT1", "shape": [rows, 16], "datatype": "INT32", "data": vec![1; rows * 16]}
        ]})
    };
    let mut nested = String::new();
    for _ in 0..200 {
        nested.push('[');
    }
    nested.push('1');
    for _ in 0..200 {
        nested.push(']');
    }
    let deep = format!(
        r#"{{"inputs":[{{"name":"input","shape":[1,4],"datatype":"FP32","data":{nested}}}]}}"#
    );
    let binary_header = |size: usize, tail: usize| {
        let mut body = serde_json::to_vec(&iris(json!({"name": "input", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": size}}))).unwrap();
        let n = body.len();
        body.extend(std::iter::repeat_n(0u8, tail));
        (
            body,
            vec![("Inference-Header-Content-Length", n.to_string())],
        )
    };
    let (short, short_headers) = binary_header(100, 16);
    let (long, long_headers) = binary_header(16, 24);
    vec![
        HttpCase {
            what: "wrong shape",
            path: "/v2/models/iris_mlp/infer",
            body: Body::Json(iris(
                json!({"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}),
            )),
            status: 400,
            fragment: "input 'input' has shape [1, 3], model 'iris_mlp' expects [-1, 4]",
        },
        HttpCase {
            what: "wrong datatype",
            path: "/v2/models/iris_mlp/infer",
            body: Body::Json(iris(
                json!({"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}),
            )),
            status: 400,
            fragment: "input 'input' has datatype FP64, model 'iris_mlp' expects FP32",
        },
        HttpCase {
            what: "data length vs shape",
            path: "/v2/models/iris_mlp/infer",
            body: Body::Json(iris(
                json!({"name": "input", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6, 7]}),
            )),
            status: 400,
            fragment: "input 'input': expected 8 elements for shape [2, 4], got 7",
        },
        HttpCase {
            what: "unknown input",
            path: "/v2/models/iris_mlp/infer",
            body: Body::Json(iris(
                json!({"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}),
            )),
            status: 400,
            fragment: "model 'iris_mlp' has no input 'x'",
        },
        HttpCase {
            what: "unknown output",
            path: "/v2/models/iris_mlp/infer",
            body: Body::Json(json!({"inputs": [good.clone()], "outputs": [{"name": "nope"}]})),
            status: 400,
            fragment: "model 'iris_mlp' has no output 'nope'",
        },
        HttpCase {
            what: "missing input",
            path: "/v2/models/simple/infer",
            body: Body::Json(
                json!({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": vec![1; 16]}]}),
            ),
            status: 400,
            fragment: "model 'simple' requires input 'INPUT1'",
        },
        HttpCase {
            what: "duplicate input",
            path: "/v2/models/iris_mlp/infer",
            body: Body::Json(json!({"inputs": [good.clone(), good.clone()]})),
            status: 400,
            fragment: "input 'input' appears more than once",
        },
        HttpCase {
            what: "malformed json",
            path: "/v2/models/iris_mlp/infer",
            body: Body::Raw(b"{\"inputs\": [".to_vec(), vec![]),
            status: 400,
            fragment: "malformed request JSON",
        },
        HttpCase {
            what: "no inputs field",
            path: "/v2/models/iris_mlp/infer",
            body: Body::Json(json!({"id": "1"})),
            status: 400,
            fragment: "missing field `inputs`",
        },
        HttpCase {
            what: "unknown datatype",
            path: "/v2/models/iris_mlp/infer",
            body: Body::Json(iris(
                json!({"name": "input", "shape": [1, 4], "datatype": "FLOAT", "data": [1, 2, 3, 4]}),
            )),
            status: 400,
            fragment: "input 'input' has unknown datatype 'FLOAT'",
        },
        HttpCase {
            what: "negative dimension",
            path: "/v2/models/iris_mlp/infer",
            body: Body::Json(iris(
                json!({"name": "input", "shape": [-1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}),
            )),
            status: 400,
            fragment: "negative dimension",
        },
        HttpCase {
            what: "overflowing shape",
            path: "/v2/models/iris_mlp/infer",
            body: Body::Json(iris(
                json!({"name": "input", "shape": [i64::MAX, i64::MAX], "datatype": "FP32", "data": [1]}),
            )),
            status: 400,
            fragment: "too many elements",
        },
        HttpCase {
            what: "value out of range",
            path: "/v2/models/identity_all/infer",
            body: Body::Json(
                json!({"inputs": [{"name": "in_uint8", "shape": [1, 1], "datatype": "UINT8", "data": [300]}]}),
            ),
            status: 400,
            fragment: "value 300 is out of range for UINT8",
        },
        HttpCase {
            what: "string for a number",
            path: "/v2/models/iris_mlp/infer",
            body: Body::Json(iris(
                json!({"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ["a", 2, 3, 4]}),
            )),
            status: 400,
            fragment: "expected FP32 data, got a string",
        },
        HttpCase {
            what: "batch over max_batch_size",
            path: "/v2/models/simple/infer",
            body: Body::Json(simple(33)),
            status: 400,
            fragment: "batch size 33 exceeds max_batch_size 32 of model 'simple'",
        },
        HttpCase {
            what: "deeply nested data",
            path: "/v2/models/iris_mlp/infer",
            body: Body::Raw(deep.into_bytes(), vec![]),
            status: 400,
            fragment: "recursion limit",
        },
        HttpCase {
            what: "binary_data_size beyond body",
            path: "/v2/models/iris_mlp/infer",
            body: Body::Raw(short, short_headers),
            status: 400,
            fragment: "binary_data_size 100 exceeds the 16 bytes",
        },
        HttpCase {
            what: "unclaimed binary data",
            path: "/v2/models/iris_mlp/infer",
            body: Body::Raw(long, long_headers),
            status: 400,
            fragment: "8 bytes of binary data not claimed",
        },
        HttpCase {
            what: "header length beyond body",
            path: "/v2/models/iris_mlp/infer",
            body: Body::Raw(
                b"{}".to_vec(),
                vec![("Inference-Header-Content-Length", "99".into())],
            ),
            status: 400,
            fragment: "Inference-Header-Content-Length 99 exceeds the body length 2",
        },
        HttpCase {
            what: "corrupt gzip",
            path: "/v2/models/iris_mlp/infer",
            body: Body::Raw(
                b"not gzip".to_vec(),
                vec![("Content-Encoding", "gzip".into())],
            ),
            status: 400,
            fragment: "cannot decode gzip request body",
        },
        HttpCase {
            what: "unknown encoding",
            path: "/v2/models/iris_mlp/infer",
            body: Body::Raw(b"{}".to_vec(), vec![("Content-Encoding", "br".into())]),
            status: 400,
            fragment: "unsupported Content-Encoding 'br'",
        },
        HttpCase {
            what: "unknown model",
            path: "/v2/models/nope/infer",
            body: Body::Json(iris(good.clone())),
            status: 404,
            fragment: "unknown model 'nope'",
        },
        HttpCase {
            what: "unknown version",
            path: "/v2/models/iris_mlp/versions/9/infer",
            body: Body::Json(iris(good.clone())),
            status: 404,
            fragment: "model 'iris_mlp' has no version '9'",
        },
        HttpCase {
            what: "over the body limit",
            path: "/v2/models/iris_mlp/infer",
            body: Body::Raw(vec![b' '; 70_000], vec![]),
            status: 413,
            fragment: "request body exceeds the limit of 65536 bytes",
        },
    ]
}

#[tokio::test]
async fn bad_http_requests_get_precise_4xx() {
    let s = TestServer::start_with(|c| c.server.max_body_bytes = 65536).await;
    for case in http_cases() {
        let mut request = s.http.post(s.url(case.path));
        request = match case.body {
            Body::Json(v) => request.json(&v),
            Body::Raw(bytes, headers) => {
                for (k, v) in headers {
                    request = request.header(k, v);
                }
                request.body(bytes)
            }
        };
        let r = request.send().await.unwrap();
        assert_eq!(r.status().as_u16(), case.status, "{}", case.what);
        let body: Value = r
            .json()
            .await
            .unwrap_or_else(|e| panic!("{}: body is not JSON: {e}", case.what));
        let message = body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{}: no error field in {body}", case.what));
        assert!(
            message.contains(case.fragment),
            "{}: {message:?} lacks {:?}",
            case.what,
            case.fragment
        );
    }
    // Nothing above disturbed the server.
    let ok = json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]});
    assert_eq!(s.post_json("/v2/models/iris_mlp/infer", &ok).await.0, 200);
    assert_eq!(
        s.http
            .get(s.url("/v2/health/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let (_, stats) = s.get_json("/v2/models/iris_mlp/versions/2/stats").await;
    // Requests that reached validation of iris_mlp v2 count as failures there (decode errors
    // and unknown models never reach a model): shape, datatype, unknown input/output, duplicate.
    assert_eq!(
        stats["model_stats"][0]["inference_stats"]["fail"]["count"], 5,
        "{stats}"
    );
    s.stop().await;
}

fn request(
    model: &str,
    inputs: Vec<pb::model_infer_request::InferInputTensor>,
    raw: Vec<Vec<u8>>,
) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: model.into(),
        inputs,
        raw_input_contents: raw.into_iter().map(Into::into).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn bad_grpc_requests_get_matching_codes() {
    let s = TestServer::start_with(|c| c.server.max_body_bytes = 65536).await;
    let mut client = s.grpc().await;
    let f32x4 = vec![0u8; 16];
    let mut unknown_version = request(
        "iris_mlp",
        vec![raw_input("input", "FP32", &[1, 4])],
        vec![f32x4.clone()],
    );
    unknown_version.model_version = "9".into();
    let mut unknown_output = request(
        "iris_mlp",
        vec![raw_input("input", "FP32", &[1, 4])],
        vec![f32x4.clone()],
    );
    unknown_output
        .outputs
        .push(pb::model_infer_request::InferRequestedOutputTensor {
            name: "nope".into(),
            parameters: HashMap::new(),
        });
    let mut both = request(
        "iris_mlp",
        vec![raw_input("input", "FP32", &[1, 4])],
        vec![f32x4.clone()],
    );
    both.inputs[0].contents = Some(pb::InferTensorContents {
        fp32_contents: vec![1.0; 4],
        ..Default::default()
    });
    let mut typed_short = request(
        "iris_mlp",
        vec![raw_input("input", "FP32", &[1, 4])],
        vec![],
    );
    typed_short.inputs[0].contents = Some(pb::InferTensorContents {
        fp32_contents: vec![1.0; 3],
        ..Default::default()
    });
    let mut typed_fp16 = request(
        "identity_all",
        vec![raw_input("in_fp16", "FP16", &[1, 1])],
        vec![],
    );
    typed_fp16.inputs[0].contents = Some(pb::InferTensorContents {
        fp32_contents: vec![1.0],
        ..Default::default()
    });
    let mut typed_range = request(
        "identity_all",
        vec![raw_input("in_int8", "INT8", &[1, 1])],
        vec![],
    );
    typed_range.inputs[0].contents = Some(pb::InferTensorContents {
        int_contents: vec![1000],
        ..Default::default()
    });
    let cases: Vec<(&str, pb::ModelInferRequest, tonic::Code, &str)> = vec![
        (
            "wrong shape",
            request(
                "iris_mlp",
                vec![raw_input("input", "FP32", &[1, 3])],
                vec![vec![0; 12]],
            ),
            tonic::Code::InvalidArgument,
            "input 'input' has shape [1, 3], model 'iris_mlp' expects [-1, 4]",
        ),
        (
            "wrong datatype",
            request(
                "iris_mlp",
                vec![raw_input("input", "FP64", &[1, 4])],
                vec![vec![0; 32]],
            ),
            tonic::Code::InvalidArgument,
            "input 'input' has datatype FP64, model 'iris_mlp' expects FP32",
        ),
        (
            "raw length vs shape",
            request(
                "iris_mlp",
                vec![raw_input("input", "FP32", &[1, 4])],
                vec![vec![0; 15]],
            ),
            tonic::Code::InvalidArgument,
            "input 'input': expected 16 bytes of FP32 data for shape [1, 4], got 15",
        ),
        (
            "unknown input",
            request(
                "iris_mlp",
                vec![raw_input("x", "FP32", &[1, 4])],
                vec![f32x4.clone()],
            ),
            tonic::Code::InvalidArgument,
            "model 'iris_mlp' has no input 'x'",
        ),
        (
            "unknown output",
            unknown_output,
            tonic::Code::InvalidArgument,
            "model 'iris_mlp' has no output 'nope'",
        ),
        (
            "missing input",
            request(
                "simple",
                vec![raw_input("INPUT0", "INT32", &[1, 16])],
                vec![vec![0; 64]],
            ),
            tonic::Code::InvalidArgument,
            "model 'simple' requires input 'INPUT1'",
        ),
        (
            "raw count mismatch",
            request(
                "simple",
                vec![
                    raw_input("INPUT0", "INT32", &[1, 16]),
                    raw_input("INPUT1", "INT32", &[1, 16]),
                ],
                vec![vec![0; 64]],
            ),
            tonic::Code::InvalidArgument,
            "raw_input_contents has 1 entries for 2 inputs",
        ),
        (
            "contents and raw",
            both,
            tonic::Code::InvalidArgument,
            "sets contents while raw_input_contents is used",
        ),
        (
            "typed contents short",
            typed_short,
            tonic::Code::InvalidArgument,
            "expected 4 elements for shape [1, 4], got 3",
        ),
        (
            "typed fp16",
            typed_fp16,
            tonic::Code::InvalidArgument,
            "FP16 data must be sent in raw_input_contents",
        ),
        (
            "typed out of range",
            typed_range,
            tonic::Code::InvalidArgument,
            "value 1000 is out of range for INT8",
        ),
        (
            "unknown datatype",
            request(
                "iris_mlp",
                vec![raw_input("input", "FLOAT", &[1, 4])],
                vec![f32x4.clone()],
            ),
            tonic::Code::InvalidArgument,
            "unknown datatype 'FLOAT'",
        ),
        (
            "unknown model",
            request(
                "nope",
                vec![raw_input("input", "FP32", &[1, 4])],
                vec![f32x4.clone()],
            ),
            tonic::Code::NotFound,
            "unknown model 'nope'",
        ),
        (
            "unknown version",
            unknown_version,
            tonic::Code::NotFound,
            "model 'iris_mlp' has no version '9'",
        ),
        (
            "over the size limit",
            request(
                "iris_mlp",
                vec![raw_input("input", "FP32", &[1, 4])],
                vec![vec![0; 70_000]],
            ),
            tonic::Code::ResourceExhausted,
            "message length too large",
        ),
    ];
    for (what, req, code, fragment) in cases {
        let status = client.model_infer(req).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {}", status.message());
        assert!(
            status.message().contains(fragment),
            "{what}: {:?} lacks {fragment:?}",
            status.message()
        );
    }
    let ok = request(
        "iris_mlp",
        vec![raw_input("input", "FP32", &[1, 4])],
        vec![f32x4],
    );
    assert!(client.model_infer(ok).await.is_ok());
    assert!(
        client
            .server_ready(pb::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    s.stop().await;
}

#[tokio::test]
async fn bytes_with_nul_are_refused_for_onnx_string_inputs() {
    let s = TestServer::start().await;
    let inputs: Vec<Value> = DTYPES
        .iter()
        .map(|(n, d)| {
            let mut data = json_values(d);
            if *d == "BYTES" {
                data[0] = json!("a\u{0}b");
            }
            json!({"name": format!("in_{n}"), "shape": [2, 3], "datatype": d, "data": data})
        })
        .collect();
    let (status, body) = s
        .post_json("/v2/models/identity_all/infer", &json!({"inputs": inputs}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("BYTES element 0 contains a NUL byte"),
        "{body}"
    );
    s.stop().await;
}
