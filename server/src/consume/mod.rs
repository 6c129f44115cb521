//! Asynchronous inference from a message broker (`[[consumers]]`).
//!
//! The broker-neutral part lives here: a delivered message becomes an [`InferRequest`] for the
//! consumer's model, goes through the same stack as an HTTP or gRPC request, and comes back as
//! a [`Decision`]: publish this reply then acknowledge, deliver again later, or dead-letter.
//! A broker adapter (`nats.rs`, NATS JetStream) only moves bytes: it turns its messages into a
//! [`Delivery`], carries out the decision, and acknowledges after the reply is confirmed. An
//! AMQP adapter would be a sibling of `nats.rs` driving the same [`Handler`].

mod nats;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use infergate_config::ConsumerConfig;
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::Gateway;
use crate::core::{InferRequest, Protocol};
use crate::error::{ErrorKind, ServeError};
use crate::metrics::ConsumerLabels;

/// Message headers the consumers read and write (the same names on every broker).
pub mod headers {
    /// The request's id: the client's correlation id, echoed on the reply.
    pub const REQUEST_ID: &str = "Infergate-Request-Id";
    /// Where the reply goes.
    pub const REPLY_TO: &str = "Reply-To";
    /// `application/json` (default), `application/octet-stream` with
    /// [`HEADER_LENGTH`] (the binary extension), or `application/x-protobuf`
    /// (a `ModelInferRequest`; the reply is a `ModelInferResponse`).
    pub const CONTENT_TYPE: &str = "Content-Type";
    pub const HEADER_LENGTH: &str = "Inference-Header-Content-Length";
    /// The reply's status, as the HTTP front end would answer: 200, 400, 404, 413, 503, ….
    pub const STATUS: &str = "Infergate-Status";
    /// Why a message was dead-lettered, and after how many deliveries.
    pub const REASON: &str = "Infergate-Reason";
    pub const ATTEMPTS: &str = "Infergate-Attempts";
    pub const CONSUMER: &str = "Infergate-Consumer";
    pub const TRACE_ID: &str = "x-trace-id";
    pub const ROUTE_KEY: &str = "x-infergate-route-key";
}

/// Starts every configured consumer; each runs until `shutdown`, finishing (and
/// acknowledging) what it took before it returns.
pub fn start(
    gateway: &Arc<Gateway>,
    shutdown: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    gateway
        .config
        .consumers
        .iter()
        .map(|config| {
            let handler = Arc::new(Handler::new(Arc::clone(gateway), config.clone()));
            tokio::spawn(nats::run(handler, shutdown.clone()))
        })
        .collect()
}

/// One delivered message, as any broker gives it.
#[derive(Debug, Default)]
pub struct Delivery {
    /// Headers, as sent (names compared without case).
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// 1 for the first delivery.
    pub attempt: u64,
    /// The broker's stable identity of the message (the stream sequence), the request id
    /// when neither a header nor the body names one.
    pub broker_id: String,
}

impl Delivery {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A reply to publish.
#[derive(Debug, Clone)]
pub struct Reply {
    pub subject: String,
    /// The request id, on the reply's [`headers::REQUEST_ID`] and as the broker's
    /// deduplication id of the publication.
    pub id: String,
    pub status: u16,
    pub content_type: &'static str,
    /// Set for a binary-extension reply: the JSON part's length.
    pub header_length: Option<usize>,
    pub trace_id: Option<String>,
    pub body: Bytes,
}

/// What to do with a delivery.
#[derive(Debug)]
pub enum Decision {
    /// Publish the reply, then acknowledge.
    Answer(Arc<Reply>),
    /// A failure that may pass: deliver again after the delay.
    Retry { reason: String, delay: Duration },
    /// Publish the message to the dead-letter subject with the reason (and the error reply
    /// when there is somewhere to send it), then acknowledge.
    DeadLetter {
        reason: String,
        reply: Option<Arc<Reply>>,
    },
}

/// The broker-neutral consumer: decodes, deduplicates, runs the stack, encodes.
pub struct Handler {
    pub gateway: Arc<Gateway>,
    pub config: ConsumerConfig,
    /// Recent replies by request id: a redelivered request is answered with the reply it got.
    replies: moka::future::Cache<String, Arc<Reply>>,
}

impl Handler {
    pub fn new(gateway: Arc<Gateway>, config: ConsumerConfig) -> Self {
        let replies = moka::future::Cache::builder()
            .max_capacity(config.dedup_entries)
            .time_to_live(Duration::from_millis(config.dedup_ttl_ms))
            .build();
        Self {
            gateway,
            config,
            replies,
        }
    }

    /// Counts a message result on `infergate_consumer_messages_total`.
    pub fn count(&self, result: &'static str) {
        self.gateway
            .metrics
            .consumer_messages
            .get_or_create(&ConsumerLabels {
                consumer: self.config.name.clone(),
                result,
            })
            .inc();
    }

    /// Decides what becomes of one delivery.
    pub async fn handle(&self, delivery: &Delivery) -> Decision {
        self.count("consumed");
        if delivery.attempt > 1 {
            self.count("redelivered");
        }
        let id = delivery
            .header(headers::REQUEST_ID)
            .filter(|id| !id.is_empty())
            .map(str::to_string);
        let reply_to = delivery
            .header(headers::REPLY_TO)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .or_else(|| self.config.reply_subject.clone());
        // Redeliveries of one message share the broker's id; a producer's retry of a request
        // shares its request id.
        let key = id.clone().unwrap_or_else(|| delivery.broker_id.clone());
        // (A message without either cannot be told apart from others: no window for it.)
        if !key.is_empty()
            && let Some(reply) = self.replies.get(&key).await
        {
            self.count("duplicate");
            return Decision::Answer(reply);
        }
        let Some(subject) = reply_to else {
            return Decision::DeadLetter {
                reason: format!(
                    "no {} header, and consumer '{}' has no reply_subject",
                    headers::REPLY_TO,
                    self.config.name
                ),
                reply: None,
            };
        };
        let max = u64::from(self.config.max_deliver);
        if delivery.attempt > max {
            // Taken max_deliver times without an answer: the server died on it each time.
            let reason = format!(
                "delivered {} times without an answer (max_deliver = {max})",
                delivery.attempt - 1
            );
            let error = ServeError::internal(reason.clone());
            let id = id.unwrap_or_else(|| delivery.broker_id.clone());
            return Decision::DeadLetter {
                reason,
                reply: Some(Arc::new(error_reply(subject, id, &error, None))),
            };
        }
        let (result, id, trace_id) = self.infer(delivery, id).await;
        match result {
            Ok((content_type, header_length, body)) => {
                let reply = Arc::new(Reply {
                    subject,
                    id,
                    status: 200,
                    content_type,
                    header_length,
                    trace_id,
                    body,
                });
                self.remember(key, &reply).await;
                Decision::Answer(reply)
            }
            Err(e) if final_error(e.kind) => {
                let reply = Arc::new(error_reply(subject, id, &e, trace_id));
                self.remember(key, &reply).await;
                Decision::Answer(reply)
            }
            Err(e) if delivery.attempt >= max => Decision::DeadLetter {
                reason: format!("{} ({} deliveries)", e.message, delivery.attempt),
                reply: Some(Arc::new(error_reply(subject, id, &e, trace_id))),
            },
            Err(e) => Decision::Retry {
                reason: e.message,
                delay: Duration::from_millis(self.config.retry_delay_ms),
            },
        }
    }

    async fn remember(&self, key: String, reply: &Arc<Reply>) {
        if !key.is_empty() {
            self.replies.insert(key, Arc::clone(reply)).await;
        }
    }

    /// Decodes and runs the request: the reply's content type, binary header length and body,
    /// with the request id (the header's, the body's or the broker's) and trace id.
    async fn infer(
        &self,
        delivery: &Delivery,
        id: Option<String>,
    ) -> (
        Result<(&'static str, Option<usize>, Bytes), ServeError>,
        String,
        Option<String>,
    ) {
        let g = &self.gateway;
        let caller = trace_headers(delivery);
        let crate::telemetry::RequestTrace { span, trace_id } = crate::telemetry::request_span(
            &caller,
            &self.config.model,
            Protocol::Nats.as_str(),
            g.config.telemetry.sampling_ratio,
        );
        let mut id = id;
        let result = async {
            let (mut req, encoding) = self.decode(delivery)?;
            if id.is_none() {
                id = req.id.clone();
            }
            req.check_limits(g.config.server.max_tensor_elements)?;
            req.apply_parameters()?;
            req.route_key = delivery.header(headers::ROUTE_KEY).map(str::to_string);
            let resp = g.infer(req).await?;
            Ok::<_, ServeError>(match encoding {
                Encoding::Protobuf => (
                    PROTOBUF,
                    None,
                    Bytes::from(crate::grpc::convert::response(resp).encode_to_vec()),
                ),
                Encoding::Json(prefs) => {
                    let (json, binary) = crate::http::codec::encode(&resp, &prefs);
                    if binary.is_empty() {
                        ("application/json", None, Bytes::from(json))
                    } else {
                        let length = json.len();
                        let mut body = json;
                        for part in &binary {
                            body.extend_from_slice(part);
                        }
                        ("application/octet-stream", Some(length), Bytes::from(body))
                    }
                }
            })
        }
        .instrument(span.clone())
        .await;
        if let Err(e) = &result {
            span.record("outcome", e.kind.as_str());
        }
        let id = id.unwrap_or_else(|| delivery.broker_id.clone());
        (result, id, trace_id)
    }

    /// The request a message carries, for the consumer's model.
    fn decode(&self, delivery: &Delivery) -> Result<(InferRequest, Encoding), ServeError> {
        let model = self.config.model.clone();
        let version = self.config.version.clone();
        let content_type = delivery.header(headers::CONTENT_TYPE).map(|c| {
            c.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
        let body = delivery.body.clone();
        let (mut req, encoding) = match content_type.as_deref() {
            Some("application/x-protobuf" | "application/protobuf") => {
                let message =
                    infergate_proto::inference::ModelInferRequest::decode(body).map_err(|e| {
                        ServeError::invalid(format!("malformed ModelInferRequest: {e}"))
                    })?;
                let mut req = crate::grpc::convert::request(message)?;
                req.model = model;
                req.version = version;
                (req, Encoding::Protobuf)
            }
            None | Some("application/json" | "application/octet-stream") => {
                let split = match delivery.header(headers::HEADER_LENGTH) {
                    None => body.len(),
                    Some(n) => n
                        .trim()
                        .parse::<usize>()
                        .ok()
                        .filter(|&n| n <= body.len())
                        .ok_or_else(|| {
                            ServeError::invalid(format!(
                                "{} {n:?} is not a length within the body ({} bytes)",
                                headers::HEADER_LENGTH,
                                body.len()
                            ))
                        })?,
                };
                let (req, prefs) = crate::http::codec::decode(
                    model,
                    version,
                    &body[..split],
                    body.slice(split..),
                )?;
                (req, Encoding::Json(prefs))
            }
            Some(other) => {
                return Err(ServeError::invalid(format!(
                    "unsupported Content-Type '{other}' (application/json, application/octet-stream with {}, or application/x-protobuf)",
                    headers::HEADER_LENGTH
                )));
            }
        };
        req.protocol = Protocol::Nats;
        Ok((req, encoding))
    }
}

const PROTOBUF: &str = "application/x-protobuf";

/// How the request was encoded, and so how its reply is.
enum Encoding {
    Json(crate::http::codec::OutputPrefs),
    Protobuf,
}

/// Errors that the same request would get again: answered at once, not retried.
fn final_error(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::InvalidInput
            | ErrorKind::TooLarge
            | ErrorKind::NotFound
            | ErrorKind::Unauthenticated
            | ErrorKind::Forbidden
            | ErrorKind::Conflict
    )
}

/// `{"error": message}` with the status the HTTP front end would give.
fn error_reply(subject: String, id: String, e: &ServeError, trace_id: Option<String>) -> Reply {
    Reply {
        subject,
        id,
        status: e.kind.http_status().as_u16(),
        content_type: "application/json",
        header_length: None,
        trace_id,
        body: Bytes::from(serde_json::json!({ "error": e.message }).to_string()),
    }
}

/// The message's W3C trace context as HTTP headers, for joining the producer's trace.
fn trace_headers(delivery: &Delivery) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for name in ["traceparent", "tracestate"] {
        if let Some(value) = delivery
            .header(name)
            .and_then(|v| http::HeaderValue::from_str(v).ok())
        {
            map.insert(name, value);
        }
    }
    map
}
