//! Where requests go and how: one HTTP/1.1 connection per in-flight request (reused), or a
//! gRPC connection; requests are serialized once and only cloned (`Bytes`) per send. On gRPC
//! the framed `ModelInferRequest` goes out as it is and only the answer's status is read, so
//! the generator spends no protobuf work per request.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use infergate_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use tonic::transport::Channel;

use crate::Protocol;

/// The server under test.
#[derive(Debug, Clone)]
pub struct Target {
    pub protocol: Protocol,
    /// `host:port`.
    pub authority: String,
}

/// One pre-serialized request.
#[derive(Debug, Clone)]
pub enum Request {
    Http {
        path: Arc<str>,
        body: Bytes,
        /// `Inference-Header-Content-Length` for binary bodies.
        header_len: Option<usize>,
    },
    /// An encoded `ModelInferRequest`, framed for gRPC ([`grpc_frame`]).
    Grpc(Bytes),
}

/// The result of one request: success, or the error class it is counted under.
pub type Outcome = Result<(), String>;

impl Target {
    /// `http://HOST:PORT` for the HTTP protocols, `grpc://HOST:PORT` for gRPC.
    pub fn parse(url: &str, protocol: Protocol) -> anyhow::Result<Self> {
        let (scheme, rest) = url
            .split_once("://")
            .context("--url must look like http://HOST:PORT or grpc://HOST:PORT")?;
        match (scheme, protocol) {
            (
                "http",
                Protocol::HttpJson | Protocol::HttpBinary | Protocol::Openai | Protocol::Tei,
            )
            | ("grpc", Protocol::Grpc) => {}
            ("grpc", _) => bail!("--url {url} is gRPC; pass --protocol grpc"),
            ("http", Protocol::Grpc) => bail!("--protocol grpc needs a grpc://HOST:PORT url"),
            _ => bail!("unsupported url scheme {scheme:?} (use http or grpc)"),
        }
        let authority = rest.trim_end_matches('/').to_string();
        if authority.is_empty() || authority.contains('/') {
            bail!("--url must be SCHEME://HOST:PORT without a path, got {url}");
        }
        Ok(Self {
            protocol,
            authority,
        })
    }

    /// Opens one connection (HTTP) or channel (gRPC).
    pub async fn connect(&self) -> anyhow::Result<Conn> {
        match self.protocol {
            Protocol::Grpc => Ok(Conn::Grpc(Box::new(GrpcConn::open(&self.authority).await?))),
            _ => Ok(Conn::Http(
                HttpConn::open(&self.authority).await?,
                self.authority.clone(),
            )),
        }
    }
}

/// An HTTP/1.1 connection.
pub struct HttpConn {
    sender: http1::SendRequest<Full<Bytes>>,
}

impl HttpConn {
    async fn open(authority: &str) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(authority)
            .await
            .with_context(|| format!("cannot connect to http://{authority}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self { sender })
    }
}

/// A gRPC connection: the generated tonic client for metadata and statistics, and a plain
/// HTTP/2 connection (the `h2` crate) for `ModelInfer`. Each call queues its HEADERS and the
/// pre-framed request as one DATA frame that ends the stream before the connection writes, so
/// a request is one write and one segment (tonic's client writes HEADERS, DATA and an empty
/// frame ending the stream apart); the answer is read to its trailers and only its
/// `grpc-status` is looked at.
#[derive(Clone)]
pub struct GrpcConn {
    client: GrpcInferenceServiceClient<Channel>,
    sender: h2::client::SendRequest<Bytes>,
    uri: http::Uri,
    authority: String,
}

/// A new HTTP/2 connection, driven by a task of its own.
async fn h2_connect(authority: &str) -> anyhow::Result<h2::client::SendRequest<Bytes>> {
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .with_context(|| format!("cannot connect to grpc://{authority}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = h2::client::handshake(stream).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

impl GrpcConn {
    async fn open(authority: &str) -> anyhow::Result<Self> {
        let sender = h2_connect(authority).await?;
        // Connects on its first call: only connections used for metadata or statistics open
        // one, not those that only send requests.
        let channel = Channel::from_shared(format!("http://{authority}"))?
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Self {
            client: GrpcInferenceServiceClient::new(channel)
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX),
            sender,
            authority: authority.to_string(),
            uri: format!("http://{authority}/inference.GRPCInferenceService/ModelInfer").parse()?,
        })
    }

    /// One `ModelInfer` call with a framed request (`grpc_frame`).
    async fn model_infer(&mut self, frame: Bytes) -> Outcome {
        let request = http::Request::post(self.uri.clone())
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(())
            .map_err(|e| format!("request: {e}"))?;
        let lost = |_| "connection".to_string();
        let mut sender = match self.sender.clone().ready().await {
            Ok(sender) => sender,
            Err(_) => {
                // The connection is gone (closed, GOAWAY): this request counts as lost, the
                // next goes out on a new one.
                self.sender = h2_connect(&self.authority)
                    .await
                    .map_err(|_| "connect".to_string())?;
                return Err("connection".into());
            }
        };
        let (response, mut stream) = sender.send_request(request, false).map_err(lost)?;
        stream.send_data(frame, true).map_err(lost)?;
        let (parts, mut body) = response.await.map_err(lost)?.into_parts();
        if parts.status != http::StatusCode::OK {
            return Err(format!("http {}", parts.status.as_u16()));
        }
        let mut received = 0;
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(lost)?;
            received += chunk.len();
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        let trailers = body.trailers().await.map_err(lost)?;
        // A trailers-only answer (an error) carries the status in its headers.
        let status = parts
            .headers
            .get("grpc-status")
            .or_else(|| trailers.as_ref().and_then(|t| t.get("grpc-status")))
            .map(|v| tonic::Code::from_bytes(v.as_bytes()));
        match status {
            Some(tonic::Code::Ok) if received > 5 => Ok(()),
            // A served request always has outputs.
            Some(tonic::Code::Ok) => Err("grpc empty answer".into()),
            Some(code) => Err(format!("grpc {code:?}")),
            None => Err("grpc no status".into()),
        }
    }
}

/// A gRPC message as it goes on the wire: uncompressed flag, 4-byte big-endian length, message.
pub fn grpc_frame(message: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0);
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    Bytes::from(frame)
}

/// A live connection to the target.
pub enum Conn {
    Http(HttpConn, String),
    Grpc(Box<GrpcConn>),
}

impl Conn {
    /// Sends one request and waits for the whole response.
    pub async fn send(&mut self, request: &Request, timeout: Duration) -> Outcome {
        match tokio::time::timeout(timeout, self.send_inner(request)).await {
            Ok(outcome) => outcome,
            Err(_) => Err("timeout".into()),
        }
    }

    async fn send_inner(&mut self, request: &Request) -> Outcome {
        match (self, request) {
            (
                Conn::Http(conn, authority),
                Request::Http {
                    path,
                    body,
                    header_len,
                },
            ) => {
                if conn.sender.is_closed() {
                    *conn = HttpConn::open(authority)
                        .await
                        .map_err(|_| "connect".to_string())?;
                }
                let mut builder = http::Request::post(&**path)
                    .header(http::header::HOST, authority.as_str())
                    .header(http::header::CONTENT_TYPE, "application/json");
                if let Some(n) = header_len {
                    builder = builder.header("inference-header-content-length", *n);
                }
                let req = builder
                    .body(Full::new(body.clone()))
                    .map_err(|e| format!("request: {e}"))?;
                conn.sender
                    .ready()
                    .await
                    .map_err(|_| "connection".to_string())?;
                let response = conn
                    .sender
                    .send_request(req)
                    .await
                    .map_err(|_| "connection".to_string())?;
                let status = response.status();
                response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|_| "connection".to_string())?;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("http {}", status.as_u16()))
                }
            }
            (Conn::Grpc(conn), Request::Grpc(frame)) => conn.model_infer(frame.clone()).await,
            _ => Err("protocol mismatch".into()),
        }
    }

    /// HTTP GET on this connection: `(status, body)`.
    pub async fn get(&mut self, path: &str) -> anyhow::Result<(u16, Bytes)> {
        let Conn::Http(conn, authority) = self else {
            bail!("GET needs an HTTP connection")
        };
        let req = http::Request::get(path)
            .header(http::header::HOST, authority.as_str())
            .body(Full::new(Bytes::new()))?;
        conn.sender.ready().await?;
        let response = conn.sender.send_request(req).await?;
        let status = response.status().as_u16();
        Ok((status, response.into_body().collect().await?.to_bytes()))
    }

    /// The gRPC client, for metadata and statistics calls.
    pub fn grpc(&mut self) -> Option<&mut GrpcInferenceServiceClient<Channel>> {
        match self {
            Conn::Grpc(c) => Some(&mut c.client),
            Conn::Http(..) => None,
        }
    }
}
