//! Tokenize: a text model's strings become token sequences before the batcher (on a bounded
//! pool, off the async runtime), so that batches can close on a token budget; its pooled
//! vectors are normalized and cut to the dimensions asked for on the way back.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{BoxFuture, Either};
use infergate_runtime::text::{self, TextProcessor};
use infergate_runtime::{NamedTensor, Tensor, TensorData};
use tower::{Layer, Service, ServiceExt};

use crate::core::{InferRequest, InferResponse, ParamValue, Parameters, Tokens};
use crate::error::{BoxError, ServeError};
use crate::metrics::Metrics;
use crate::text::TextOptions;

/// The response parameter that carries a request's token count (OpenAI's `prompt_tokens`).
pub const PROMPT_TOKENS: &str = "prompt_tokens";

/// Adds [`Tokenize`].
#[derive(Clone)]
pub struct TokenizeLayer {
    metrics: Arc<Metrics>,
}

impl TokenizeLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for TokenizeLayer {
    type Service = Tokenize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Tokenize {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// Tokenizes the requests of text models; others pass straight on.
#[derive(Clone)]
pub struct Tokenize<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> Service<InferRequest> for Tokenize<S>
where
    S: Service<InferRequest, Response = InferResponse, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = InferResponse;
    type Error = BoxError;
    type Future = Either<S::Future, BoxFuture<'static, Result<InferResponse, BoxError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: InferRequest) -> Self::Future {
        let Some(model) = req.target.as_ref().and_then(|t| t.text.clone()) else {
            return Either::Left(self.inner.call(req));
        };
        let inner = self.inner.clone();
        let metrics = Arc::clone(&self.metrics);
        Either::Right(Box::pin(async move {
            let processor = &model.processor;
            let options = options(&req.parameters, processor)?;
            let texts = take_texts(&mut req)?;
            let rows = if options.token_ids {
                model.token_ids(&texts, options.truncate)?
            } else {
                use tracing::Instrument as _;
                let span = crate::telemetry::stage_span!("tokenize", rows = texts.len());
                model
                    .tokenize(texts, options.truncate)
                    .instrument(span)
                    .await?
            };
            let refs: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
            let (ids, mask) = text::pad(&refs).map_err(|e| ServeError::internal(e.to_string()))?;
            let tokens = Tokens {
                seq: refs.iter().map(|r| r.len()).max().unwrap_or(0),
                real: refs.iter().map(|r| r.len()).sum(),
            };
            let first_tokens = refs.first().map_or(0, |r| r.len());
            let drift = req
                .target
                .as_ref()
                .and_then(|t| t.drift.clone())
                .filter(|d| d.on_text() && d.should_sample());
            if let Some(target) = req.target.as_ref() {
                metrics.record_tokens(&target.labels, tokens.real);
            }
            req.tokens = Some(tokens);
            req.inputs = vec![
                NamedTensor::new(text::INPUT_IDS, ids),
                NamedTensor::new(text::ATTENTION_MASK, mask),
            ];
            let mut resp = inner.oneshot(req).await?;
            if let Some(drift) = drift
                && let Some(pooled) = resp
                    .output(text::EMBEDDING_OUTPUT)
                    .and_then(|t| t.to_vec::<f32>())
            {
                let first = pooled.get(..processor.dim).unwrap_or(&pooled);
                drift.observe(&crate::drift::text_row(first_tokens, first), &[]);
            }
            finish(&mut resp, processor, &options)?;
            resp.parameters
                .push((PROMPT_TOKENS.into(), ParamValue::Int64(tokens.real as i64)));
            Ok(resp)
        }))
    }
}

/// The `truncate`, `normalize` and `dimensions` parameters, checked against the model.
fn options(params: &Parameters, processor: &TextProcessor) -> Result<TextOptions, ServeError> {
    let mut options = TextOptions::default();
    for (key, value) in params {
        match (key.as_str(), value) {
            ("truncate", ParamValue::Bool(b)) => options.truncate = *b,
            (crate::text::TOKEN_IDS, ParamValue::Bool(b)) => options.token_ids = *b,
            ("normalize", ParamValue::Bool(b)) => options.normalize = Some(*b),
            ("dimensions", ParamValue::Int64(n)) => {
                options.dimensions = Some(usize::try_from(*n).unwrap_or(0));
            }
            ("dimensions", ParamValue::Uint64(n)) => {
                options.dimensions = Some(usize::try_from(*n).unwrap_or(0));
            }
            ("truncate" | "normalize" | crate::text::TOKEN_IDS, _) => {
                return Err(ServeError::invalid(format!(
                    "parameter '{key}' must be a boolean"
                )));
            }
            ("dimensions", _) => {
                return Err(ServeError::invalid(
                    "parameter 'dimensions' must be a positive integer",
                ));
            }
            _ => {}
        }
    }
    if let Some(d) = options.dimensions {
        if d == 0 || d > processor.dim {
            return Err(ServeError::invalid(format!(
                "dimensions must be between 1 and the model's {}, not {d}",
                processor.dim
            )));
        }
        if d != processor.dim && !processor.truncatable_dimensions {
            return Err(ServeError::invalid(format!(
                "this model's embeddings cannot be shortened: it answers {} dimensions only",
                processor.dim
            )));
        }
    }
    Ok(options)
}

/// The strings of the `text` input (validated as BYTES `[N]`), at least one.
fn take_texts(req: &mut InferRequest) -> Result<Vec<bytes::Bytes>, ServeError> {
    let at = req
        .inputs
        .iter()
        .position(|i| &*i.name == text::TEXT_INPUT)
        .ok_or_else(|| ServeError::invalid(format!("missing input '{}'", text::TEXT_INPUT)))?;
    let input = req.inputs.swap_remove(at);
    match input.tensor.data() {
        TensorData::Bytes(elements) if elements.is_empty() => Err(ServeError::invalid(format!(
            "input '{}' holds no text: send at least one string",
            text::TEXT_INPUT
        ))),
        TensorData::Bytes(elements) => Ok(elements.clone()),
        TensorData::Fixed(_) => Err(ServeError::invalid(format!(
            "input '{}' must be BYTES",
            text::TEXT_INPUT
        ))),
    }
}

/// Normalizes and cuts the pooled `embedding` output as the request asked.
fn finish(
    resp: &mut InferResponse,
    processor: &TextProcessor,
    options: &TextOptions,
) -> Result<(), ServeError> {
    let normalize = options.normalize.unwrap_or(processor.normalize);
    let dims = options.dimensions.unwrap_or(processor.dim);
    for output in &mut resp.outputs {
        if &*output.name != text::EMBEDDING_OUTPUT {
            continue;
        }
        let values = output
            .tensor
            .to_vec::<f32>()
            .ok_or_else(|| ServeError::internal("embedding output is not FP32"))?;
        let rows = output.tensor.shape().first().copied().unwrap_or(0);
        let done = TextProcessor::finish(&values, processor.dim, dims, normalize);
        output.tensor = Tensor::from_slice(vec![rows, dims as i64], &done)
            .map_err(|e| ServeError::internal(e.to_string()))?;
    }
    Ok(())
}
