//! The protocol-neutral request and response that both front ends translate to and from.

use std::sync::Arc;

use infergate_runtime::{NamedTensor, StageTimings, Tensor};
use tokio::time::{Duration, Instant};

use crate::error::ServeError;
use crate::repository::ModelVersion;

/// Which front end a request came through (a metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http,
    Grpc,
    /// `infergate batch`: offline scoring in the same process.
    Batch,
    /// A broker consumer (`[[consumers]]`, NATS JetStream).
    Nats,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Grpc => "grpc",
            Self::Batch => "batch",
            Self::Nats => "nats",
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

/// One decoded inference request. Cloning is cheap: tensor data is shared.
#[derive(Debug, Clone)]
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
    /// When the front end finished decoding it.
    pub received: Instant,
    /// Latest time the request may start executing (`timeout` parameter, gRPC deadline).
    pub deadline: Option<Instant>,
    /// Scheduling priority: 1 is the highest, 0 means the model's default level.
    pub priority: u32,
    /// Sticky routing key for A/B routes (header/metadata `x-infergate-route-key`).
    pub route_key: Option<String>,
    /// The request's trace span (the front end's, current when the request was made): a
    /// batch that serves it links to it.
    pub span: tracing::Span,
    /// Set by the batch layer on the request it runs: raised once every caller in the batch has
    /// gone away, so that the model's worker skips it if it has not started it.
    pub abandoned: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// How many callers' requests this one carries: 1, or the number the batch layer combined
    /// into it. A refusal counts once per caller.
    pub requests: usize,
    /// Set by the tokenize layer on a text model's request: its inputs are token sequences,
    /// which batch together whatever their length (padded to the longest).
    pub tokens: Option<Tokens>,
    /// Outputs asked for as classifications (Triton's extension: the output parameter
    /// `classification`): name and how many of the top classes.
    pub classification: Vec<(String, usize)>,
}

/// The token sequences a request carries as `input_ids` / `attention_mask` `[rows, seq]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tokens {
    /// Length of the longest row (the padded width).
    pub seq: usize,
    /// Real tokens in all rows together (the rest is padding).
    pub real: usize,
}

impl InferRequest {
    /// Reads a requested output's parameters: `classification: k` asks for its top `k`
    /// classes (Triton's classification extension).
    pub fn request_output(&mut self, name: String, params: &Parameters) -> Result<(), ServeError> {
        let k = params.iter().find(|(k, _)| k == "classification");
        if let Some((_, v)) = k {
            let k = match v {
                ParamValue::Int64(k) => usize::try_from(*k).ok(),
                ParamValue::Uint64(k) => usize::try_from(*k).ok(),
                _ => None,
            }
            .filter(|k| *k > 0)
            .ok_or_else(|| {
                ServeError::invalid(format!(
                    "output '{name}': parameter 'classification' must be a positive integer"
                ))
            })?;
            self.classification.push((name.clone(), k));
        }
        self.outputs.push(name);
        Ok(())
    }

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
            route_key: None,
            received: Instant::now(),
            deadline: None,
            priority: 0,
            span: tracing::Span::current(),
            abandoned: None,
            requests: 1,
            tokens: None,
            classification: Vec::new(),
        }
    }

    /// Refuses an input with more elements than `max_elements` (`server.max_tensor_elements`).
    pub fn check_limits(&self, max_elements: usize) -> Result<(), ServeError> {
        for input in &self.inputs {
            let n = input.tensor.len();
            if n > max_elements {
                return Err(ServeError::new(
                    crate::error::ErrorKind::TooLarge,
                    format!(
                        "input '{}' has {n} elements, over the limit of {max_elements} (server.max_tensor_elements)",
                        input.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Reads the `priority` and `timeout` (µs) request parameters.
    pub fn apply_parameters(&mut self) -> Result<(), ServeError> {
        let params: Vec<(String, Option<u64>)> = self
            .parameters
            .iter()
            .filter(|(k, _)| k == "priority" || k == "timeout")
            .map(|(k, v)| {
                let number = match v {
                    ParamValue::Int64(i) => u64::try_from(*i).ok(),
                    ParamValue::Uint64(u) => Some(*u),
                    _ => None,
                };
                (k.clone(), number)
            })
            .collect();
        for (key, number) in params {
            match key.as_str() {
                "priority" => {
                    self.priority = number.and_then(|n| u32::try_from(n).ok()).ok_or_else(|| {
                        ServeError::invalid("parameter 'priority' must be a non-negative integer (1 is the highest)")
                    })?;
                }
                "timeout" => {
                    let micros = number.ok_or_else(|| {
                        ServeError::invalid("parameter 'timeout' must be a non-negative integer number of microseconds")
                    })?;
                    self.tighten_deadline(Duration::from_micros(micros));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Sets the deadline to `after` from reception unless an earlier one is already set.
    pub fn tighten_deadline(&mut self, after: Duration) {
        // Absurd timeouts saturate to a year instead of overflowing the clock.
        let after = after.min(Duration::from_secs(86_400 * 365));
        let deadline = self.received + after;
        self.deadline = Some(self.deadline.map_or(deadline, |d| d.min(deadline)));
    }

    /// Rows of the batch dimension (the first dimension of the first input).
    pub fn rows(&self) -> usize {
        self.inputs
            .first()
            .and_then(|i| i.tensor.shape().first())
            .map_or(1, |&b| b.max(0) as usize)
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
    /// Where this request's time went (queue includes any batching wait).
    pub timings: StageTimings,
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
