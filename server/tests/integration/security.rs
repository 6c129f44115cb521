//! Bearer tokens and scopes on the admin, HTTP and gRPC listeners; the audit log; TLS and
//! mutual TLS with certificates generated for the test.

use std::sync::Arc;

use infergate_config::{Config, Scope, TlsConfig, TokenConfig};
use infergate_proto::inference as pb;
use infergate_server::repository::Repository;
use infergate_server::security::hash_token;
use serde_json::{Value, json};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::common::*;

const ADMIN: &str = "admin-token-1";
const READ: &str = "read-token-1";
const INFER: &str = "infer-token-1";
const IRIS_ROW: [f32; 4] = [5.1, 3.5, 1.4, 0.2];

fn token(name: &str, secret: &str, scopes: Vec<Scope>) -> TokenConfig {
    TokenConfig {
        name: name.into(),
        sha256: hash_token(secret),
        scopes,
    }
}

/// Three tokens, the management API closed (no `insecure_admin`).
fn secured(config: &mut Config) {
    config.security.insecure_admin = false;
    config.security.tokens = vec![
        token("ops", ADMIN, vec![Scope::Admin]),
        token("dashboards", READ, vec![Scope::Read]),
        token("app", INFER, vec![Scope::Infer]),
    ];
    config.server.grpc_repository_control = true;
}

fn iris_body() -> Value {
    json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]})
}

async fn send(
    s: &TestServer,
    method: reqwest::Method,
    url: String,
    bearer: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = s.http.request(method, url);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null);
    (status, body, headers)
}

fn with_token<T>(message: T, bearer: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    if let Some(t) = bearer {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req
}

#[tokio::test]
async fn admin_routes_want_a_token_with_the_right_scope() {
    let audit = tempfile::tempdir().unwrap();
    let audit_path = audit.path().join("audit.jsonl");
    let path = audit_path.clone();
    let s = TestServer::start_with(move |c| {
        secured(c);
        c.security.audit_log = Some(path);
    })
    .await;
    let load = s.admin_url("/v2/repository/models/iris_mlp/load");
    let post = reqwest::Method::POST;

    let (status, body, headers) = send(&s, post.clone(), load.clone(), None, None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("missing bearer token"),
        "{body}"
    );
    let (status, body, _) = send(&s, post.clone(), load.clone(), Some("guess"), None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid token"))
    );
    let (status, body, _) = send(&s, post.clone(), load.clone(), Some(READ), None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("token 'dashboards' lacks the 'admin' scope"))
    );
    let (status, body, _) = send(&s, post.clone(), load.clone(), Some(INFER), None).await;
    assert_eq!(status, 403, "{body}");
    let (status, body, _) = send(&s, post.clone(), load.clone(), Some(ADMIN), None).await;
    assert_eq!(status, 200, "{body}");

    // Reading: `read` (or any scope); metrics included. Health is open.
    let get = reqwest::Method::GET;
    let metrics = s.admin_url("/metrics");
    assert_eq!(
        send(&s, get.clone(), metrics.clone(), None, None).await.0,
        401
    );
    assert_eq!(
        send(&s, get.clone(), metrics.clone(), Some(READ), None)
            .await
            .0,
        200
    );
    assert_eq!(
        send(&s, get.clone(), s.admin_url("/v2/health/ready"), None, None)
            .await
            .0,
        200
    );
    let routes = s.admin_url("/admin/routes");
    let (status, _, _) = send(
        &s,
        reqwest::Method::PUT,
        routes.clone(),
        Some(READ),
        Some(&json!([])),
    )
    .await;
    assert_eq!(status, 403);
    let (status, body, _) = send(
        &s,
        reqwest::Method::PUT,
        routes,
        Some(ADMIN),
        Some(&json!([])),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // The public listener never serves management calls, token or not.
    let (status, _, _) = send(
        &s,
        post.clone(),
        s.url("/v2/repository/models/iris_mlp/load"),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!(status, 403);
    // Without `require_infer_token`, inference needs nothing.
    let (status, body, _) = send(
        &s,
        post,
        s.url("/v2/models/iris_mlp/infer"),
        None,
        Some(&iris_body()),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Every management call is in the audit log, refused ones too, with who and the outcome.
    let (_, audit, _) = send(&s, get, s.admin_url("/admin/audit"), Some(READ), None).await;
    let entries: Vec<(String, String, u64)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert!(e["time"].as_str().unwrap().ends_with('Z'), "{e}");
            assert!(e["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{e}");
            (
                e["actor"].as_str().unwrap().to_string(),
                e["action"].as_str().unwrap().to_string(),
                e["outcome"].as_u64().unwrap(),
            )
        })
        .collect();
    let load_action = "POST /v2/repository/models/iris_mlp/load".to_string();
    let routes_action = "PUT /admin/routes".to_string();
    assert_eq!(
        entries,
        vec![
            ("anonymous".into(), load_action.clone(), 401),
            ("anonymous".into(), load_action.clone(), 401),
            ("anonymous".into(), load_action.clone(), 403),
            ("anonymous".into(), load_action.clone(), 403),
            ("ops".into(), load_action, 200),
            ("anonymous".into(), routes_action.clone(), 403),
            ("ops".into(), routes_action, 200),
        ]
    );
    let lines = std::fs::read_to_string(&audit_path).unwrap();
    let from_file: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(from_file, audit["entries"].as_array().unwrap().clone());
    s.stop().await;
}

#[tokio::test]
async fn grpc_model_control_wants_an_admin_token_and_is_audited() {
    let s = TestServer::start_with(secured).await;
    let mut c = s.grpc().await;
    let load = |bearer| {
        with_token(
            pb::RepositoryModelLoadRequest {
                model_name: "iris_mlp".into(),
                ..Default::default()
            },
            bearer,
        )
    };
    let err = c.repository_model_load(load(None)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    let err = c.repository_model_load(load(Some(READ))).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    assert!(err.message().contains("lacks the 'admin' scope"), "{err}");
    c.repository_model_load(load(Some(ADMIN))).await.unwrap();
    let unload = with_token(
        pb::RepositoryModelUnloadRequest {
            model_name: "simple".into(),
            ..Default::default()
        },
        Some(ADMIN),
    );
    c.repository_model_unload(unload).await.unwrap();
    // Inference and metadata stay open without `require_infer_token`; health always is.
    c.model_infer(iris_grpc(&IRIS_ROW)).await.unwrap();
    assert!(
        c.server_ready(pb::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );

    let audit = s.admin_get_json_as("/admin/audit", READ).await;
    let entries: Vec<(&str, &str, u64)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["protocol"], "grpc");
            (
                e["actor"].as_str().unwrap(),
                e["action"].as_str().unwrap(),
                e["outcome"].as_u64().unwrap(),
            )
        })
        .collect();
    let load = "/inference.GRPCInferenceService/RepositoryModelLoad";
    assert_eq!(
        entries,
        vec![
            ("anonymous", load, 16),
            ("anonymous", load, 7),
            ("ops", load, 0),
            (
                "ops",
                "/inference.GRPCInferenceService/RepositoryModelUnload",
                0
            ),
        ]
    );
    s.stop().await;
}

#[tokio::test]
async fn inference_tokens_when_required_on_both_protocols() {
    let s = TestServer::start_with(|c| {
        secured(c);
        c.security.require_infer_token = true;
    })
    .await;
    let post = reqwest::Method::POST;
    let infer = s.url("/v2/models/iris_mlp/infer");
    let body = iris_body();
    let (status, _, headers) = send(&s, post.clone(), infer.clone(), None, Some(&body)).await;
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Bearer");
    let (status, resp, _) = send(&s, post.clone(), infer.clone(), Some(READ), Some(&body)).await;
    assert_eq!(
        (status, resp["error"].as_str()),
        (403, Some("token 'dashboards' lacks the 'infer' scope"))
    );
    let (status, resp, _) = send(&s, post.clone(), infer.clone(), Some(INFER), Some(&body)).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["outputs"][0]["shape"], json!([1, 3]));
    let get = reqwest::Method::GET;
    let meta = s.url("/v2/models/iris_mlp");
    assert_eq!(send(&s, get.clone(), meta.clone(), None, None).await.0, 401);
    assert_eq!(
        send(&s, get.clone(), meta.clone(), Some(READ), None)
            .await
            .0,
        200
    );
    assert_eq!(send(&s, get.clone(), meta, Some(INFER), None).await.0, 200);
    assert_eq!(
        send(&s, get, s.url("/v2/health/live"), None, None).await.0,
        200,
        "probes need no token"
    );

    let mut c = s.grpc().await;
    let err = c.model_infer(iris_grpc(&IRIS_ROW)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err = c
        .model_infer(with_token(iris_grpc(&IRIS_ROW), Some(READ)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    let resp = c
        .model_infer(with_token(iris_grpc(&IRIS_ROW), Some(INFER)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.outputs[0].shape, vec![1, 3]);
    let err = c
        .model_metadata(pb::ModelMetadataRequest {
            name: "iris_mlp".into(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    c.model_metadata(with_token(
        pb::ModelMetadataRequest {
            name: "iris_mlp".into(),
            version: String::new(),
        },
        Some(READ),
    ))
    .await
    .unwrap();
    s.stop().await;
}

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    ca: String,
    client_cert: String,
    client_key: String,
}

impl Pki {
    fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "infergate test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>| {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(vec!["localhost".into(), "127.0.0.1".into()]);
        let (client_cert, client_key) = leaf(vec!["client.infergate.test".into()]);
        for (name, pem) in [
            ("ca.crt", &ca),
            ("server.crt", &server_cert),
            ("server.key", &server_key),
        ] {
            std::fs::write(dir.path().join(name), pem).unwrap();
        }
        Self {
            dir,
            ca,
            client_cert,
            client_key,
        }
    }

    fn tls(&self, mutual: bool) -> TlsConfig {
        TlsConfig {
            cert: self.dir.path().join("server.crt"),
            key: self.dir.path().join("server.key"),
            client_ca: mutual.then(|| self.dir.path().join("ca.crt")),
        }
    }

    fn http_client(&self, with_identity: bool) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca.as_bytes()).unwrap());
        if with_identity {
            let pem = format!("{}{}", self.client_cert, self.client_key);
            builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
        }
        builder.build().unwrap()
    }

    async fn grpc(
        &self,
        addr: std::net::SocketAddr,
        with_identity: bool,
    ) -> Result<
        pb::grpc_inference_service_client::GrpcInferenceServiceClient<Channel>,
        tonic::transport::Error,
    > {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .domain_name("localhost");
        if with_identity {
            tls = tls.identity(Identity::from_pem(&self.client_cert, &self.client_key));
        }
        let channel = Channel::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)?
            .connect()
            .await?;
        Ok(pb::grpc_inference_service_client::GrpcInferenceServiceClient::new(channel))
    }
}

async fn start_tls(pki: &Pki, mutual: bool) -> TestServer {
    let mut config = loopback_config();
    config.models.repository = Some(repo_dir());
    config.security.tls = Some(pki.tls(mutual));
    let repository = Arc::new(Repository::new(
        config.models.repository.clone(),
        Some(ort_runtime()),
        config.runtime.clone(),
    ));
    repository.load_all().await.unwrap();
    TestServer::serve_with_client(config, repository, pki.http_client(mutual)).await
}

#[tokio::test]
async fn tls_on_every_listener() {
    let pki = Pki::new();
    let s = start_tls(&pki, false).await;
    let (status, resp) = s.post_json("/v2/models/iris_mlp/infer", &iris_body()).await;
    assert_eq!(status, 200, "{resp}");
    let r = s.http.get(s.admin_url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // HTTP/2 is negotiated by ALPN on the same port.
    let h2 = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca.as_bytes()).unwrap())
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2.get(s.url("/v2/health/ready")).send().await.unwrap();
    assert_eq!(
        (r.status().as_u16(), r.version()),
        (200, reqwest::Version::HTTP_2)
    );

    let mut c = pki.grpc(s.addrs.grpc, false).await.unwrap();
    let resp = c
        .model_infer(iris_grpc(&IRIS_ROW))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.outputs[0].shape, vec![1, 3]);

    // Plain text on a TLS port gets no answer; a client that does not trust the CA fails.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/v2/health/live", s.addrs.http))
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);
    let untrusting = reqwest::Client::builder().use_rustls_tls().build().unwrap();
    assert!(
        untrusting
            .get(s.url("/v2/health/live"))
            .send()
            .await
            .is_err()
    );
    s.stop().await;
}

#[tokio::test]
async fn mutual_tls_wants_a_client_certificate_from_the_ca() {
    let pki = Pki::new();
    let s = start_tls(&pki, true).await;
    // The helper client presents its certificate.
    let (status, resp) = s.post_json("/v2/models/iris_mlp/infer", &iris_body()).await;
    assert_eq!(status, 200, "{resp}");
    let anonymous = pki.http_client(false);
    let refused = anonymous.get(s.url("/v2/health/live")).send().await;
    assert!(refused.is_err(), "a client without a certificate got in");
    let refused = anonymous.get(s.admin_url("/metrics")).send().await;
    assert!(
        refused.is_err(),
        "admin: a client without a certificate got in"
    );
    // A certificate from another CA is refused too.
    let other = Pki::new();
    let stranger = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca.as_bytes()).unwrap())
        .identity(
            reqwest::Identity::from_pem(
                format!("{}{}", other.client_cert, other.client_key).as_bytes(),
            )
            .unwrap(),
        )
        .build()
        .unwrap();
    assert!(stranger.get(s.url("/v2/health/live")).send().await.is_err());

    let mut c = pki.grpc(s.addrs.grpc, true).await.unwrap();
    c.model_infer(iris_grpc(&IRIS_ROW)).await.unwrap();
    let without = match pki.grpc(s.addrs.grpc, false).await {
        Err(_) => true,
        Ok(mut c) => c.server_live(pb::ServerLiveRequest {}).await.is_err(),
    };
    assert!(without, "grpc: a client without a certificate got in");
    s.stop().await;
}

/// `infergate health`, the container health check, against a real server: ready passes, a
/// stopped server fails.
#[tokio::test]
async fn health_probe_follows_readiness() {
    let s = TestServer::start().await;
    let addr = s.addrs.http;
    tokio::task::spawn_blocking(move || infergate_server::cli::probe_ready(addr))
        .await
        .unwrap()
        .unwrap();
    let admin = s.addrs.admin;
    s.stop().await;
    let err = tokio::task::spawn_blocking(move || infergate_server::cli::probe_ready(admin))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("cannot connect"), "{err}");
}

/// With model control off on the public gRPC port, load and unload are PERMISSION_DENIED for
/// everyone (as HTTP's 403), not a prompt for a token; the attempt is still audited.
#[tokio::test]
async fn grpc_model_control_switched_off_is_permission_denied_token_or_not() {
    let s = TestServer::start_with(|c| {
        secured(c);
        c.server.grpc_repository_control = false;
    })
    .await;
    let mut c = s.grpc().await;
    for bearer in [None, Some(ADMIN)] {
        let err = c
            .repository_model_unload(with_token(
                pb::RepositoryModelUnloadRequest {
                    model_name: "simple".into(),
                    ..Default::default()
                },
                bearer,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    }
    let audit = s.admin_get_json_as("/admin/audit", READ).await;
    let outcomes: Vec<u64> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["outcome"].as_u64().unwrap())
        .collect();
    assert_eq!(outcomes, vec![7, 7]);
    s.stop().await;
}

/// The log level changes at run time through the admin API: `read` sees it, `admin` changes
/// it (audited), an invalid directive is a 400 that changes nothing.
#[tokio::test]
async fn the_log_level_changes_at_run_time_with_an_admin_token() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let (filter, handle) =
        tracing_subscriber::reload::Layer::new(tracing_subscriber::EnvFilter::new("info"));
    let _subscriber = tracing_subscriber::registry().with(filter);
    let control = Arc::new(infergate_server::logging::LogControl::new(
        "info",
        handle.clone(),
    ));
    let mut config = loopback_config();
    config.models.repository = Some(repo_dir());
    secured(&mut config);
    let repository = Arc::new(Repository::new(
        config.models.repository.clone(),
        Some(ort_runtime()),
        config.runtime.clone(),
    ));
    repository.load_all().await.unwrap();
    let s = TestServer::serve_with(config, repository, reqwest::Client::new(), Some(control)).await;
    let url = s.admin_url("/admin/log-level");
    let (status, body, _) = send(&s, reqwest::Method::GET, url.clone(), Some(READ), None).await;
    assert_eq!((status, body["level"].as_str()), (200, Some("info")));
    let change = json!({"level": "warn,infergate_server=debug"});
    let (status, _, _) = send(
        &s,
        reqwest::Method::PUT,
        url.clone(),
        Some(READ),
        Some(&change),
    )
    .await;
    assert_eq!(status, 403);
    let (status, body, _) = send(
        &s,
        reqwest::Method::PUT,
        url.clone(),
        Some(ADMIN),
        Some(&change),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // The filter in force is the new one (tracing writes its directives in its own order).
    assert_eq!(
        handle.with_current(|f| f.to_string()).unwrap(),
        "infergate_server=debug,warn"
    );
    let bad = json!({"level": "info,[unclosed"});
    let (status, body, _) = send(
        &s,
        reqwest::Method::PUT,
        url.clone(),
        Some(ADMIN),
        Some(&bad),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("invalid log level directive"),
        "{body}"
    );
    let (_, body, _) = send(&s, reqwest::Method::GET, url, Some(READ), None).await;
    assert_eq!(body["level"], "warn,infergate_server=debug");
    let audit = s.admin_get_json_as("/admin/audit", READ).await;
    let changes: Vec<(&str, u64)> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["actor"].as_str().unwrap(), e["outcome"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        changes,
        vec![("anonymous", 403), ("ops", 200), ("ops", 400)]
    );
    s.stop().await;
}
