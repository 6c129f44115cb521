//! The wire contract: KServe V2 gRPC (`inference.GRPCInferenceService`, with Triton's
//! extension RPCs) and the standard `grpc.health.v1` health service, generated at build time.

/// `package inference`: the KServe V2 / Open Inference Protocol messages and service.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod inference {
    tonic::include_proto!("inference");
}

/// `package grpc.health.v1`: the standard gRPC health checking protocol.
pub mod health {
    #[allow(clippy::all, clippy::pedantic, missing_docs)]
    pub mod v1 {
        tonic::include_proto!("grpc.health.v1");
    }
}

/// Full method path prefix of the inference service, e.g. for routing or metrics.
pub const INFERENCE_SERVICE: &str = "inference.GRPCInferenceService";
