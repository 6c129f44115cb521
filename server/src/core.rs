//! The protocol-neutral request and response that both front ends translate to and from.

use std::sync::Arc;

use infergate_runtime::{NamedTensor, Tensor};

use crate::repository::ModelVersion;

/// Which front end a request came through (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http,
    Grpc,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Grpc => "grpc",
        }
    }
}

/// A request or response parameter value.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    Bool(bool),
    Int64(i64),
    Uint64(u64),
    Double(f64),
    String(String),
}

/// Request/response parameters in arrival order.
pub type Parameters = Vec<(String, ParamValue)>;

/// One decoded inference request.
#[derive(Debug)]
pub struct InferRequest {
    pub model: String,
    /// Requested version; `None` means the newest ready version.
    pub version: Option<String>,
    pub id: Option<String>,
    pub parameters: Parameters,
    pub inputs: Vec<NamedTensor>,
    /// Requested output names; empty means every output.
    pub outputs: Vec<String>,
    pub protocol: Protocol,
    /// Set by the resolve layer: the model version that will serve the request.
    pub target: Option<Arc<ModelVersion>>,
}

impl InferRequest {
    pub fn new(model: impl Into<String>, version: Option<String>, protocol: Protocol) -> Self {
        Self {
            model: model.into(),
            version,
            id: None,
            parameters: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            protocol,
            target: None,
        }
    }
}

/// The result of one inference.
#[derive(Debug)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    pub id: Option<String>,
    pub parameters: Parameters,
    /// Outputs in the order requested (model order when none were named).
    pub outputs: Vec<NamedTensor>,
}

impl InferResponse {
    /// The output called `name`.
    pub fn output(&self, name: &str) -> Option<&Tensor> {
        self.outputs
            .iter()
            .find(|o| &*o.name == name)
            .map(|o| &o.tensor)
    }
}
