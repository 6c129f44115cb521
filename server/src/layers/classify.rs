//! Classify: Triton's classification extension. An output requested with the parameter
//! `classification: k` comes back as BYTES `[N, k]` of `score:index:label` (`score:index` for a
//! model without `labels.txt`), the top `k` classes of each row, best first. Applied to the
//! answer after the cache, so that one cached answer serves any `k`.

use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::{BoxFuture, Either};
use infergate_runtime::Tensor;
use tower::{Layer, Service, ServiceExt};

use crate::core::{InferRequest, InferResponse};
use crate::error::{BoxError, ServeError};

/// Adds [`Classify`].
#[derive(Clone, Default)]
pub struct ClassifyLayer;

impl<S> Layer<S> for ClassifyLayer {
    type Service = Classify<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Classify { inner }
    }
}

/// Turns requested outputs into classifications; other requests pass straight on.
#[derive(Clone)]
pub struct Classify<S> {
    inner: S,
}

impl<S> Service<InferRequest> for Classify<S>
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
        if req.classification.is_empty() {
            return Either::Left(self.inner.call(req));
        }
        let wanted = std::mem::take(&mut req.classification);
        let names = req.target.as_ref().and_then(|t| t.class_names.clone());
        let inner = self.inner.clone();
        Either::Right(Box::pin(async move {
            let mut resp = inner.oneshot(req).await?;
            for (name, k) in &wanted {
                let output = resp
                    .outputs
                    .iter_mut()
                    .find(|o| &*o.name == name.as_str())
                    .ok_or_else(|| ServeError::internal(format!("no output '{name}'")))?;
                output.tensor = classify(name, &output.tensor, *k, names.as_deref())?;
            }
            Ok(resp)
        }))
    }
}

/// The top `k` of every row of `scores` (`[N, classes]`, or `[classes]` unbatched).
pub fn classify(
    name: &str,
    scores: &Tensor,
    k: usize,
    names: Option<&[String]>,
) -> Result<Tensor, ServeError> {
    let values = scores.to_vec::<f32>().ok_or_else(|| {
        ServeError::invalid(format!(
            "output '{name}' is {}: classification needs an FP32 output",
            scores.dtype()
        ))
    })?;
    let shape = scores.shape();
    let classes = shape.last().copied().unwrap_or(0).max(0) as usize;
    if classes == 0 || shape.len() > 2 {
        return Err(ServeError::invalid(format!(
            "output '{name}' has shape {shape:?}: classification needs [classes] or [batch, classes]"
        )));
    }
    let k = k.min(classes);
    let mut elements = Vec::with_capacity(values.len() / classes * k);
    for row in values.chunks_exact(classes) {
        for (index, score) in top_k(row, k) {
            let text = match names.and_then(|n| n.get(index)) {
                Some(label) => format!("{score:.6}:{index}:{label}"),
                None => format!("{score:.6}:{index}"),
            };
            elements.push(Bytes::from(text));
        }
    }
    let mut out_shape = shape.to_vec();
    *out_shape.last_mut().expect("checked non-empty") = k as i64;
    Tensor::from_elements(out_shape, elements).map_err(|e| ServeError::internal(e.to_string()))
}

/// The `k` largest scores of `row` with their class indices, largest first (ties: lower index).
pub fn top_k(row: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut ranked: Vec<(usize, f32)> = row.iter().copied().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.truncate(k);
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_rows_with_and_without_labels() {
        let scores = Tensor::from_slice(vec![2, 3], &[0.1f32, 0.7, 0.2, 5.0, -1.0, 5.0]).unwrap();
        let names: Vec<String> = ["cat", "dog", "fox"].map(String::from).to_vec();
        let out = classify("logits", &scores, 2, Some(&names)).unwrap();
        assert_eq!(out.shape(), [2, 2]);
        let strings = |t: &Tensor| match t.data() {
            infergate_runtime::TensorData::Bytes(e) => e
                .iter()
                .map(|b| String::from_utf8(b.to_vec()).unwrap())
                .collect::<Vec<_>>(),
            _ => panic!("not BYTES"),
        };
        assert_eq!(
            strings(&out),
            [
                "0.700000:1:dog",
                "0.200000:2:fox",
                "5.000000:0:cat",
                "5.000000:2:fox"
            ]
        );
        let out = classify("logits", &scores, 9, None).unwrap();
        assert_eq!(out.shape(), [2, 3]);
        assert_eq!(
            strings(&out)[..3],
            ["0.700000:1", "0.200000:2", "0.100000:0"]
        );
        let ints = Tensor::from_slice(vec![3], &[1i32, 2, 3]).unwrap();
        let e = classify("logits", &ints, 1, None).unwrap_err();
        assert!(e.message.contains("needs an FP32 output"), "{}", e.message);
    }
}
