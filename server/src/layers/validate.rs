//! Validate: names, datatypes, shapes and batch size against the model signature, so a bad
//! request gets a precise 400 and never reaches a backend.

use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use infergate_runtime::Signature;
use tower::{Layer, Service};

use crate::core::{InferRequest, InferResponse};
use crate::error::{BoxError, ServeError};
use crate::repository::ModelVersion;

/// Adds [`Validate`].
#[derive(Clone, Default)]
pub struct ValidateLayer;

impl<S> Layer<S> for ValidateLayer {
    type Service = Validate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Validate { inner }
    }
}

/// Rejects requests that do not fit the resolved model's signature.
#[derive(Clone)]
pub struct Validate<S> {
    inner: S,
}

impl<S> Service<InferRequest> for Validate<S>
where
    S: Service<InferRequest, Response = InferResponse, Error = BoxError>,
{
    type Response = InferResponse;
    type Error = BoxError;
    type Future = Either<Ready<Result<InferResponse, BoxError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: InferRequest) -> Self::Future {
        let Some(target) = req.target.as_ref() else {
            return Either::Left(ready(Err(ServeError::internal(
                "request reached validation unresolved",
            )
            .into())));
        };
        let checked = {
            let _span = crate::telemetry::stage_span!("validate").entered();
            check(&req, target)
        };
        match checked {
            Ok(()) => {
                target.recent_shapes.record(&req.inputs);
                Either::Right(self.inner.call(req))
            }
            Err(e) => Either::Left(ready(Err(e.into()))),
        }
    }
}

/// Every rule, in the order a user would want to hear about them.
pub fn check(req: &InferRequest, target: &ModelVersion) -> Result<(), ServeError> {
    let model = &target.name;
    let signature: &Signature = target.model.signature();
    for (i, input) in req.inputs.iter().enumerate() {
        if req.inputs[..i].iter().any(|o| o.name == input.name) {
            return Err(ServeError::invalid(format!(
                "input '{}' appears more than once",
                input.name
            )));
        }
        let Some(spec) = signature.input(&input.name) else {
            let known: Vec<&str> = signature.inputs.iter().map(|s| s.name.as_str()).collect();
            return Err(ServeError::invalid(format!(
                "model '{model}' has no input '{}' (inputs: {})",
                input.name,
                known.join(", ")
            )));
        };
        let tensor = &input.tensor;
        if tensor.dtype() != spec.dtype {
            return Err(ServeError::invalid(format!(
                "input '{}' has datatype {}, model '{model}' expects {}",
                input.name,
                tensor.dtype(),
                spec.dtype
            )));
        }
        let shape = tensor.shape();
        let fits = shape.len() == spec.shape.len()
            && shape
                .iter()
                .zip(&spec.shape)
                .all(|(&got, &want)| want < 0 || got == want);
        if !fits {
            return Err(ServeError::invalid(format!(
                "input '{}' has shape {shape:?}, model '{model}' expects {:?}",
                input.name, spec.shape
            )));
        }
        if target.config.reject_non_finite
            && let Some(index) = tensor.first_non_finite()
        {
            return Err(ServeError::invalid(format!(
                "input '{}' element {index} is NaN or infinite; model '{model}' accepts finite values only (reject_non_finite)",
                input.name
            )));
        }
    }
    for spec in &signature.inputs {
        if !req.inputs.iter().any(|i| *i.name == spec.name) {
            return Err(ServeError::invalid(format!(
                "model '{model}' requires input '{}'",
                spec.name
            )));
        }
    }
    let max_batch = target.config.max_batch_size as i64;
    if max_batch > 0 {
        let batch = req
            .inputs
            .first()
            .and_then(|i| i.tensor.shape().first().copied())
            .unwrap_or(0);
        if let Some(other) = req
            .inputs
            .iter()
            .find(|i| i.tensor.shape().first() != Some(&batch))
        {
            let theirs = other
                .tensor
                .shape()
                .first()
                .map_or("no batch dimension".to_string(), |b| {
                    format!("batch size {b}")
                });
            return Err(ServeError::invalid(format!(
                "input '{}' has {theirs}, other inputs have batch size {batch}",
                other.name
            )));
        }
        if batch > max_batch {
            return Err(ServeError::invalid(format!(
                "batch size {batch} exceeds max_batch_size {max_batch} of model '{model}'"
            )));
        }
    }
    for (i, name) in req.outputs.iter().enumerate() {
        if signature.output(name).is_none() {
            let known: Vec<&str> = signature.outputs.iter().map(|s| s.name.as_str()).collect();
            return Err(ServeError::invalid(format!(
                "model '{model}' has no output '{name}' (outputs: {})",
                known.join(", ")
            )));
        }
        if req.outputs[..i].contains(name) {
            return Err(ServeError::invalid(format!(
                "output '{name}' is requested more than once"
            )));
        }
    }
    Ok(())
}
