//! The contract between worker threads and execution engines.

use std::sync::Arc;
use std::time::Duration;

use crate::{RuntimeError, Signature, Tensor};

/// A tensor with its input/output name.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub name: Arc<str>,
    pub tensor: Tensor,
}

impl NamedTensor {
    pub fn new(name: impl Into<Arc<str>>, tensor: Tensor) -> Self {
        Self {
            name: name.into(),
            tensor,
        }
    }
}

/// Time spent in each stage of one execution (Triton's statistics split).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageTimings {
    /// Waiting in the model's channel for a free worker.
    pub queue: Duration,
    /// Preparing backend inputs.
    pub input: Duration,
    /// The backend's own run.
    pub infer: Duration,
    /// Extracting outputs.
    pub output: Duration,
}

/// One execution engine instance (for ONNX Runtime, one session). Owned by one worker thread,
/// so `infer` takes `&mut self` and need not be `Sync`.
pub trait Backend: Send {
    /// Runs the model on validated inputs and returns every output in the model's order.
    /// Backends that can split their time fill `timings.input/infer/output`.
    fn infer(
        &mut self,
        inputs: &[NamedTensor],
        timings: &mut StageTimings,
    ) -> Result<Vec<NamedTensor>, RuntimeError>;
}

/// A loaded model artifact that can create backend instances.
pub trait BackendFactory: Send + Sync + 'static {
    /// The KServe `platform` string, e.g. `onnx_onnxv1`.
    fn platform(&self) -> &str;
    /// Inputs and outputs, read from the model.
    fn signature(&self) -> &Signature;
    /// Creates one instance; called on the worker thread that will own it.
    fn create(&self) -> Result<Box<dyn Backend>, RuntimeError>;
}
