//! Decode: an image model's encoded images become the network's FP32 `[N, 3, size, size]`
//! before the batcher (on a bounded pool, off the async runtime), so that images of any size
//! and format batch together; the response cache above keys on the encoded bytes.

use std::task::{Context, Poll};

use futures::future::{BoxFuture, Either};
use infergate_runtime::image::{IMAGE_INPUT, PIXELS_INPUT};
use infergate_runtime::{NamedTensor, TensorData};
use tower::{Layer, Service, ServiceExt};

use crate::core::{InferRequest, InferResponse};
use crate::error::{BoxError, ServeError};

/// Adds [`Decode`].
#[derive(Clone, Default)]
pub struct DecodeLayer;

impl<S> Layer<S> for DecodeLayer {
    type Service = Decode<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Decode { inner }
    }
}

/// Decodes the images of image models; other requests pass straight on.
#[derive(Clone)]
pub struct Decode<S> {
    inner: S,
}

impl<S> Service<InferRequest> for Decode<S>
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
        let Some(model) = req.target.as_ref().and_then(|t| t.image.clone()) else {
            return Either::Left(self.inner.call(req));
        };
        let inner = self.inner.clone();
        Either::Right(Box::pin(async move {
            let images = take_images(&mut req)?;
            let pixels = {
                use tracing::Instrument as _;
                let span = crate::telemetry::stage_span!("decode", rows = images.len());
                model.preprocess(images).instrument(span).await?
            };
            req.inputs = vec![NamedTensor::new(PIXELS_INPUT, pixels)];
            inner.oneshot(req).await
        }))
    }
}

/// The encoded images of the `image` input (validated as BYTES `[N]`), at least one.
fn take_images(req: &mut InferRequest) -> Result<Vec<bytes::Bytes>, ServeError> {
    let at = req
        .inputs
        .iter()
        .position(|i| &*i.name == IMAGE_INPUT)
        .ok_or_else(|| ServeError::invalid(format!("missing input '{IMAGE_INPUT}'")))?;
    let input = req.inputs.swap_remove(at);
    match input.tensor.data() {
        TensorData::Bytes(elements) if elements.is_empty() => Err(ServeError::invalid(format!(
            "input '{IMAGE_INPUT}' holds no image: send at least one"
        ))),
        TensorData::Bytes(elements) => Ok(elements.clone()),
        TensorData::Fixed(_) => Err(ServeError::invalid(format!(
            "input '{IMAGE_INPUT}' must be BYTES (encoded JPEG, PNG or WebP images)"
        ))),
    }
}
