//! Resolve: find the model version a request names (or the newest ready one) before any
//! per-model work; unknown models and versions end here with 404.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use tower::{Layer, Service};

use crate::core::{InferRequest, InferResponse};
use crate::error::BoxError;
use crate::repository::Repository;

/// Adds [`Resolve`].
#[derive(Clone)]
pub struct ResolveLayer {
    repository: Arc<Repository>,
}

impl ResolveLayer {
    pub fn new(repository: Arc<Repository>) -> Self {
        Self { repository }
    }
}

impl<S> Layer<S> for ResolveLayer {
    type Service = Resolve<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Resolve {
            inner,
            repository: Arc::clone(&self.repository),
        }
    }
}

/// Sets `InferRequest::target`.
#[derive(Clone)]
pub struct Resolve<S> {
    inner: S,
    repository: Arc<Repository>,
}

impl<S> Service<InferRequest> for Resolve<S>
where
    S: Service<InferRequest, Response = InferResponse, Error = BoxError>,
{
    type Response = InferResponse;
    type Error = BoxError;
    type Future = Either<Ready<Result<InferResponse, BoxError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: InferRequest) -> Self::Future {
        match self.repository.resolve(&req.model, req.version.as_deref()) {
            Ok(target) => {
                req.target = Some(target);
                Either::Right(self.inner.call(req))
            }
            Err(e) => Either::Left(ready(Err(e.into()))),
        }
    }
}
