//! The KServe V2 gRPC front end (`inference.GRPCInferenceService`) and `grpc.health.v1`.

pub(crate) mod convert;

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use infergate_proto::health::v1 as health;
use infergate_proto::inference as pb;
use pb::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::Gateway;
use crate::error::{ErrorKind, ServeError};
use crate::layers::route::{ROUTE_KEY_HEADER, VARIANT_HEADER, VARIANT_PARAM};
use crate::views;

/// Requests of one ModelStreamInfer stream that may run at once.
const STREAM_CONCURRENCY: usize = 128;

/// Serves both gRPC services on `listener` until `shutdown` is cancelled.
pub fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<impl Future<Output = Result<(), tonic::transport::Error>>> {
    let limit = gateway.config.server.max_body_bytes;
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|tcp| {
            let _ = tcp.set_nodelay(true);
        })
    });
    let inference = GrpcInferenceServiceServer::new(Inference {
        gateway: Arc::clone(&gateway),
    })
    .max_decoding_message_size(limit)
    .max_encoding_message_size(usize::MAX);
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = &gateway.config.security.tls {
        server = server.tls_config(crate::tls::grpc_config(tls)?)?;
    }
    let max_header = u32::try_from(gateway.config.server.max_header_bytes).unwrap_or(u32::MAX);
    Ok(server
        .max_concurrent_streams(gateway.config.server.max_concurrent_streams)
        .http2_max_header_list_size(max_header)
        .layer(tower::util::MapResponseLayer::new(
            oversized_is_resource_exhausted,
        ))
        // first of all: who is calling (a refused call is not decoded or counted)
        .layer(crate::security::GrpcAuthLayer {
            gateway: Arc::clone(&gateway),
        })
        // before tonic decodes a message: shed inference calls over the global limit
        .layer(crate::admission::GrpcGlobalLimitLayer {
            gateway: Arc::clone(&gateway),
        })
        .add_service(inference)
        .add_service(health::health_server::HealthServer::new(Health { gateway }))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned()))
}

struct Inference {
    gateway: Arc<Gateway>,
}

/// tonic reports a request over `max_decoding_message_size` as OUT_OF_RANGE; the error table
/// says a body over the limit is RESOURCE_EXHAUSTED (as HTTP says 413), so rewrite that status.
fn oversized_is_resource_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let out_of_range = headers.get("grpc-status").is_some_and(|s| s == "11");
    let too_large = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .is_some_and(|m| {
            m.contains("message%20length%20too%20large") || m.contains("message length too large")
        });
    if out_of_range && too_large {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    response
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// `grpc-timeout` header value (`<digits><H|M|S|m|u|n>`) as a duration.
fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<std::time::Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => std::time::Duration::from_secs(n.saturating_mul(3600)),
        "M" => std::time::Duration::from_secs(n.saturating_mul(60)),
        "S" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_millis(n),
        "u" => std::time::Duration::from_micros(n),
        "n" => std::time::Duration::from_nanos(n),
        _ => return None,
    })
}

/// The client key for rate limiting: the configured header, else the peer address.
fn client_key(
    gateway: &Gateway,
    metadata: &tonic::metadata::MetadataMap,
    peer: Option<std::net::SocketAddr>,
) -> String {
    metadata
        .get(gateway.admission.client_key_header.as_str())
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| peer.map(|p| p.ip().to_string()))
        .unwrap_or_default()
}

async fn infer_one(
    gateway: &Gateway,
    request: pb::ModelInferRequest,
    client: &str,
    timeout: Option<std::time::Duration>,
    route_key: Option<String>,
) -> Result<pb::ModelInferResponse, ServeError> {
    // The global permit was taken in front of tonic (`GrpcGlobalLimitLayer`), before decoding.
    let _admitted = gateway.admission.admit_model(
        &gateway.repository,
        &gateway.metrics,
        &request.model_name,
        client,
    )?;
    let decode = crate::telemetry::stage_span!("decode").entered();
    let mut req = convert::request(request)?;
    req.check_limits(gateway.config.server.max_tensor_elements)?;
    req.apply_parameters()?;
    if let Some(timeout) = timeout {
        req.tighten_deadline(timeout);
    }
    req.route_key = route_key;
    drop(decode);
    let resp = gateway.infer(req).await?;
    let _encode = crate::telemetry::stage_span!("encode").entered();
    Ok(convert::response(resp))
}

#[tonic::async_trait]
impl GrpcInferenceService for Inference {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: self.gateway.is_ready(),
        }))
    }

    async fn model_ready(
        &self,
        r: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = r.into_inner();
        let ready = self.gateway.is_ready()
            && self
                .gateway
                .repository
                .resolve(&r.name, non_empty(&r.version))
                .is_ok();
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: views::SERVER_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: views::EXTENSIONS.iter().map(|s| s.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        r: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = r.into_inner();
        Ok(Response::new(views::metadata_or_route(
            &self.gateway.repository,
            &self.gateway.routes.load(),
            &r.name,
            non_empty(&r.version),
        )?))
    }

    async fn model_infer(
        &self,
        r: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        use tracing::Instrument as _;
        let client = client_key(&self.gateway, r.metadata(), r.remote_addr());
        let timeout = grpc_timeout(r.metadata());
        let route_key = r
            .metadata()
            .get(ROUTE_KEY_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let crate::telemetry::RequestTrace { span, trace_id } = crate::telemetry::request_span_with(
            || crate::telemetry::caller_context_grpc(r.metadata()),
            &r.get_ref().model_name,
            "grpc",
            self.gateway.config.telemetry.sampling_ratio,
        );
        let resp = infer_one(&self.gateway, r.into_inner(), &client, timeout, route_key)
            .instrument(span.clone())
            .await
            .inspect_err(|e| {
                span.record("outcome", e.kind.as_str());
            })?;
        let variant = resp
            .parameters
            .get(VARIANT_PARAM)
            .and_then(|p| match &p.parameter_choice {
                Some(pb::infer_parameter::ParameterChoice::StringParam(s)) => s.parse().ok(),
                _ => None,
            });
        let mut response = Response::new(resp);
        if let Some(variant) = variant {
            response.metadata_mut().insert(VARIANT_HEADER, variant);
        }
        if let Some(id) = trace_id.and_then(|id| id.parse().ok()) {
            response
                .metadata_mut()
                .insert(crate::telemetry::TRACE_ID_HEADER, id);
        }
        Ok(response)
    }

    async fn model_stream_infer(
        &self,
        r: Request<Streaming<pb::ModelInferRequest>>,
    ) -> Result<Response<BoxStream<pb::ModelStreamInferResponse>>, Status> {
        let client = client_key(&self.gateway, r.metadata(), r.remote_addr());
        // Every message is a request span in the trace the stream's metadata names.
        let caller = crate::telemetry::caller_context_grpc(r.metadata());
        let mut inbound = r.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_CONCURRENCY);
        let gateway = Arc::clone(&self.gateway);
        tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(STREAM_CONCURRENCY));
            while let Ok(Some(request)) = inbound.message().await {
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                    break;
                };
                let (gateway, tx, client) = (Arc::clone(&gateway), tx.clone(), client.clone());
                let crate::telemetry::RequestTrace { span, trace_id } =
                    crate::telemetry::request_span_with(
                        || caller.clone(),
                        &request.model_name,
                        "grpc_stream",
                        gateway.config.telemetry.sampling_ratio,
                    );
                tokio::spawn(async move {
                    use tracing::Instrument as _;
                    let echo = pb::ModelInferResponse {
                        model_name: request.model_name.clone(),
                        model_version: request.model_version.clone(),
                        id: request.id.clone(),
                        ..Default::default()
                    };
                    let answer = infer_one(&gateway, request, &client, None, None)
                        .instrument(span.clone())
                        .await;
                    let (error_message, mut resp) = match answer {
                        Ok(resp) => (String::new(), resp),
                        Err(e) => {
                            span.record("outcome", e.kind.as_str());
                            (e.message, echo)
                        }
                    };
                    // The stream's response metadata went out before this message, so its
                    // trace id travels in the message, as the `trace_id` parameter.
                    if let Some(id) = trace_id {
                        resp.parameters
                            .insert("trace_id".into(), convert::string_parameter(id));
                    }
                    let message = pb::ModelStreamInferResponse {
                        error_message,
                        infer_response: Some(resp),
                    };
                    let _ = tx.send(Ok(message)).await;
                    drop(permit);
                });
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn model_config(
        &self,
        r: Request<pb::ModelConfigRequest>,
    ) -> Result<Response<pb::ModelConfigResponse>, Status> {
        let r = r.into_inner();
        let target = self
            .gateway
            .repository
            .resolve(&r.name, non_empty(&r.version))?;
        Ok(Response::new(pb::ModelConfigResponse {
            config: Some(views::model_config(&target)),
        }))
    }

    async fn model_statistics(
        &self,
        r: Request<pb::ModelStatisticsRequest>,
    ) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let r = r.into_inner();
        Ok(Response::new(views::statistics(
            &self.gateway.repository,
            non_empty(&r.name),
            non_empty(&r.version),
        )?))
    }

    async fn repository_index(
        &self,
        r: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        Ok(Response::new(views::index(
            &self.gateway.repository,
            r.into_inner().ready,
        )))
    }

    async fn repository_model_load(
        &self,
        r: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        self.control_allowed()?;
        self.gateway
            .repository
            .load(&r.into_inner().model_name)
            .await?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        r: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        self.control_allowed()?;
        self.gateway
            .repository
            .unload(&r.into_inner().model_name)
            .await?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }
}

impl Inference {
    fn control_allowed(&self) -> Result<(), ServeError> {
        if self.gateway.config.server.grpc_repository_control {
            Ok(())
        } else {
            Err(ServeError::new(
                ErrorKind::Forbidden,
                "model load/unload is disabled on the public grpc port (enable server.grpc_repository_control, or use the admin listener)",
            ))
        }
    }
}

struct Health {
    gateway: Arc<Gateway>,
}

fn health_status(ready: bool) -> health::HealthCheckResponse {
    use health::health_check_response::ServingStatus;
    let status = if ready {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    health::HealthCheckResponse {
        status: status as i32,
    }
}

impl Health {
    fn check_service(&self, service: &str) -> Result<(), Status> {
        if service.is_empty() || service == infergate_proto::INFERENCE_SERVICE {
            Ok(())
        } else {
            Err(Status::not_found(format!("unknown service '{service}'")))
        }
    }
}

#[tonic::async_trait]
impl health::health_server::Health for Health {
    async fn check(
        &self,
        r: Request<health::HealthCheckRequest>,
    ) -> Result<Response<health::HealthCheckResponse>, Status> {
        self.check_service(&r.into_inner().service)?;
        Ok(Response::new(health_status(self.gateway.is_ready())))
    }

    async fn watch(
        &self,
        r: Request<health::HealthCheckRequest>,
    ) -> Result<Response<BoxStream<health::HealthCheckResponse>>, Status> {
        self.check_service(&r.into_inner().service)?;
        let rx = self.gateway.watch_ready();
        // Report every change; once readiness drops after the first report the server is
        // shutting down, so say NOT_SERVING and end the stream to let draining finish.
        let updates =
            futures::stream::unfold((rx, true, false), |(mut rx, first, done)| async move {
                if done || (!first && rx.changed().await.is_err()) {
                    return None;
                }
                let ready = *rx.borrow_and_update();
                Some((Ok(health_status(ready)), (rx, false, !first && !ready)))
            });
        Ok(Response::new(Box::pin(updates)))
    }
}
