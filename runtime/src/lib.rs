//! Model execution: the `Tensor` type for every KServe V2 datatype, the `Backend` trait, the
//! ONNX Runtime and candle backends, and per-model-version worker threads that keep inference off the
//! async runtime.

mod backend;
pub mod candle;
pub mod image;
pub mod ort;
mod signature;
mod tensor;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;
pub mod text;
mod worker;

pub use backend::{Backend, BackendFactory, NamedTensor, StageTimings};
pub use signature::{Signature, TensorSpec};
pub use tensor::{DataType, Tensor, TensorData, TensorError, element_count};
pub use worker::{InferOutput, Model, ModelOptions, StartIf};

/// Errors of model loading and execution.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No ONNX Runtime shared library was found; the message says how to install one.
    #[error("{0}")]
    OrtNotFound(String),
    /// ONNX Runtime refused to initialize or to build a session.
    #[error("onnx runtime: {0}")]
    Ort(String),
    /// A model file could not be read or parsed.
    #[error("cannot load model {path}: {message}")]
    Load { path: String, message: String },
    /// The model uses a type infergate cannot serve.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// A tensor did not match its declared datatype/shape.
    #[error(transparent)]
    Tensor(#[from] TensorError),
    /// The backend found an input it cannot take (a client error).
    #[error("{0}")]
    InvalidInput(String),
    /// The model version's request channel is full.
    #[error("model '{0}' is overloaded: request queue is full")]
    QueueFull(String),
    /// Nobody waited for the job's answer any more when a worker picked it up.
    #[error("request to model '{0}' was abandoned by its callers before it started")]
    Abandoned(String),
    /// The job's deadline passed before a worker could start it.
    #[error("request to model '{0}' timed out before it could start")]
    DeadlineExceeded(String),
    /// The model version is unloading or its workers stopped.
    #[error("model '{0}' is not available")]
    Unavailable(String),
    /// Inference failed inside the backend (a caught panic included).
    #[error("inference failed: {0}")]
    Backend(String),
}

impl From<::ort::Error> for RuntimeError {
    fn from(e: ::ort::Error) -> Self {
        Self::Ort(e.to_string())
    }
}
