//! A/B routes: sticky by key, spread without one, the served variant in the response on both
//! protocols.

use infergate_config::{RouteConfig, VariantConfig};
use infergate_proto::inference as pb;
use serde_json::json;

use crate::common::TestServer;

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
    }
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
    server.stop().await;
}
