//! Starting a server for a test and small client helpers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use infergate_config::Config;
use infergate_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use infergate_runtime::ort::{OrtRuntime, discover};
use infergate_runtime::{DataType, Tensor};
use infergate_server::repository::Repository;
use infergate_server::{BoundAddrs, Listeners, RunArgs};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/repository")
}

pub fn ort_runtime() -> OrtRuntime {
    let env = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);
    let lib = discover(None, env.as_deref()).expect("ONNX Runtime missing: run `make ort`");
    OrtRuntime::init(&lib).unwrap()
}

/// Defaults with every listener on 127.0.0.1 and a port the OS picks, and the management API
/// open (`security.insecure_admin`; `security.rs` tests the tokens).
pub fn loopback_config() -> Config {
    let mut config = Config::default();
    config.security.insecure_admin = true;
    for addr in [
        &mut config.server.http_addr,
        &mut config.server.grpc_addr,
        &mut config.server.admin_addr,
    ] {
        *addr = "127.0.0.1:0".parse().unwrap();
    }
    config
}

pub struct TestServer {
    pub addrs: BoundAddrs,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<anyhow::Result<()>>,
    pub http: reqwest::Client,
    /// `http`, or `https` when the server has TLS.
    pub scheme: &'static str,
}

impl TestServer {
    /// A server over the committed model repository.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> Self {
        let mut config = loopback_config();
        config.models.repository = Some(repo_dir());
        configure(&mut config);
        let repository = Arc::new(Repository::new(
            config.models.repository.clone(),
            Some(ort_runtime()),
            config.runtime.clone(),
        ));
        repository.load_all().await.unwrap();
        Self::serve(config, repository).await
    }

    pub async fn serve(config: Config, repository: Arc<Repository>) -> Self {
        Self::serve_with_client(config, repository, reqwest::Client::new()).await
    }

    /// [`Self::serve`] with the HTTP client the helpers use (one that trusts a test CA, say).
    pub async fn serve_with_client(
        config: Config,
        repository: Arc<Repository>,
        http: reqwest::Client,
    ) -> Self {
        Self::serve_with(config, repository, http, None).await
    }

    /// [`Self::serve_with_client`] with a log filter the admin API may change.
    pub async fn serve_with(
        config: Config,
        repository: Arc<Repository>,
        http: reqwest::Client,
        log: Option<Arc<infergate_server::logging::LogControl>>,
    ) -> Self {
        let scheme = if config.security.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let listeners = Listeners::bind(&config.server).await.unwrap();
        let addrs = listeners.addrs().unwrap();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(infergate_server::run(RunArgs {
            config,
            repository,
            listeners,
            shutdown: shutdown.clone(),
            log,
            metrics: None,
        }));
        let server = Self {
            addrs,
            shutdown,
            handle,
            http,
            scheme,
        };
        for _ in 0..200 {
            let ready = server.http.get(server.url("/v2/health/ready")).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                return server;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("server did not become ready");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addrs.http)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addrs.admin)
    }

    pub async fn grpc(&self) -> GrpcInferenceServiceClient<Channel> {
        GrpcInferenceServiceClient::connect(format!("http://{}", self.addrs.grpc))
            .await
            .unwrap()
            .max_decoding_message_size(usize::MAX)
    }

    /// POST JSON, returning status and parsed body.
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let bytes = r.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    /// GET a JSON document from the admin listener.
    pub async fn admin_get_json(&self, path: &str) -> serde_json::Value {
        let r = self.http.get(self.admin_url(path)).send().await.unwrap();
        r.json().await.unwrap()
    }

    /// GET a JSON document from the admin listener with a bearer token.
    pub async fn admin_get_json_as(&self, path: &str, token: &str) -> serde_json::Value {
        let r = self
            .http
            .get(self.admin_url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.unwrap()
    }

    /// GET a text document (e.g. `/metrics`) from the admin listener.
    pub async fn admin_get_text(&self, path: &str) -> String {
        let r = self.http.get(self.admin_url(path)).send().await.unwrap();
        r.text().await.unwrap()
    }

    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self.http.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        let bytes = r.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .expect("server did not stop")
            .unwrap()
            .unwrap();
    }
}

/// A gRPC input tensor without contents (the data goes in `raw_input_contents`).
pub fn grpc_input(
    name: &str,
    dtype: &str,
    shape: &[i64],
) -> infergate_proto::inference::model_infer_request::InferInputTensor {
    infergate_proto::inference::model_infer_request::InferInputTensor {
        name: name.into(),
        datatype: dtype.into(),
        shape: shape.to_vec(),
        parameters: Default::default(),
        contents: None,
    }
}

/// Splits a binary-extension response into its JSON header and the binary tail.
pub fn split_binary(
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
) -> (serde_json::Value, Vec<u8>) {
    let n: usize = headers
        .get("inference-header-content-length")
        .expect("binary response without Inference-Header-Content-Length")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    (
        serde_json::from_slice(&body[..n]).unwrap(),
        body[n..].to_vec(),
    )
}

/// Deterministic raw wire data for `count` elements of `datatype`: BOOL as 0/1, other
/// fixed-size types as small byte values (finite floats), BYTES as `elements` length-prefixed.
pub fn raw_sample(datatype: &str, count: usize, seed: usize, elements: &[&[u8]]) -> Vec<u8> {
    let dtype = DataType::parse(datatype).expect("a V2 datatype");
    match dtype.size() {
        None => {
            assert_eq!(elements.len(), count, "one BYTES element per position");
            let elements = elements
                .iter()
                .map(|e| bytes::Bytes::copy_from_slice(e))
                .collect();
            Tensor::from_elements(vec![count as i64], elements)
                .unwrap()
                .to_raw()
                .to_vec()
        }
        Some(size) => (0..count * size)
            .map(|j| {
                if dtype == DataType::Bool {
                    (j % 2) as u8
                } else {
                    ((j * 7 + seed) % 60) as u8
                }
            })
            .collect(),
    }
}

/// Runs a model directly with the `ort` crate (a second implementation for golden checks).
pub fn direct_ort_f32(model: &Path, input: &str, shape: &[usize], data: &[f32]) -> Vec<f32> {
    let runtime = ort_runtime();
    let mut session = ort::session::Session::builder(runtime.environment())
        .unwrap()
        .commit_from_file(model)
        .unwrap();
    let array = ndarray::ArrayD::from_shape_vec(shape.to_vec(), data.to_vec()).unwrap();
    let value = ort::value::Tensor::from_array(array).unwrap();
    let outputs = session.run(vec![(input, value)]).unwrap();
    let (_, out) = outputs[0].try_extract_tensor::<f32>().unwrap();
    out.to_vec()
}

pub fn f32s(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// Sends `head` (and `body`) on a fresh connection and reads until the server closes it or
/// `wait` passes; returns what came back.
pub async fn raw_exchange(
    addr: std::net::SocketAddr,
    head: &str,
    body: &[u8],
    wait: Duration,
) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(body).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A gRPC infer request for `iris_mlp`: `rows` (four values a row) as raw contents.
pub fn iris_grpc(rows: &[f32]) -> infergate_proto::inference::ModelInferRequest {
    infergate_proto::inference::ModelInferRequest {
        model_name: "iris_mlp".into(),
        inputs: vec![grpc_input("input", "FP32", &[rows.len() as i64 / 4, 4])],
        raw_input_contents: vec![bytemuck::cast_slice::<f32, u8>(rows).to_vec().into()],
        ..Default::default()
    }
}
