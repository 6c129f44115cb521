//! Where requests go and how: one HTTP/1.1 connection per in-flight request (reused), or a
//! gRPC channel; requests are serialized once and only cloned (`Bytes`) per send. On gRPC the
//! encoded `ModelInferRequest` goes out as it is and the answer is not decoded (tonic still
//! checks the status), so the generator spends no protobuf work per request.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use infergate_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
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
    /// An encoded `ModelInferRequest`.
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
            ("http", Protocol::HttpJson | Protocol::HttpBinary) | ("grpc", Protocol::Grpc) => {}
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
            Protocol::Grpc => {
                let channel = Channel::from_shared(format!("http://{}", self.authority))?
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .with_context(|| format!("cannot connect to grpc://{}", self.authority))?;
                Ok(Conn::Grpc(Box::new(GrpcConn::new(channel))))
            }
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

/// A gRPC channel: the generated client for metadata and statistics, and a raw one for
/// `ModelInfer` that sends pre-encoded requests.
#[derive(Clone)]
pub struct GrpcConn {
    client: GrpcInferenceServiceClient<Channel>,
    raw: tonic::client::Grpc<Channel>,
}

impl GrpcConn {
    fn new(channel: Channel) -> Self {
        Self {
            client: GrpcInferenceServiceClient::new(channel.clone())
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX),
            raw: tonic::client::Grpc::new(channel)
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX),
        }
    }

    /// One `ModelInfer` call with an encoded request; the answer's size in bytes.
    async fn model_infer(&mut self, request: Bytes) -> Result<usize, tonic::Status> {
        self.raw
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let path =
            http::uri::PathAndQuery::from_static("/inference.GRPCInferenceService/ModelInfer");
        let response = self
            .raw
            .unary(tonic::Request::new(request), path, RawCodec)
            .await?;
        Ok(response.into_inner())
    }
}

/// Messages as they are on the wire: an encoded message goes out unchanged, an answer is
/// skipped and counted in bytes.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = usize;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = usize;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<usize>, tonic::Status> {
        let len = bytes::Buf::remaining(src);
        bytes::Buf::advance(src, len);
        Ok(Some(len))
    }
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
            (Conn::Grpc(conn), Request::Grpc(req)) => {
                match conn.model_infer(req.clone()).await {
                    // A served request always has outputs.
                    Ok(0) => Err("grpc empty answer".into()),
                    Ok(_) => Ok(()),
                    Err(status) => Err(format!("grpc {:?}", status.code())),
                }
            }
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
