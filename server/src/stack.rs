//! The inference stack, composed in this one place, outermost first.

use std::sync::Arc;

use tower::ServiceBuilder;

use crate::layers::execute::Execute;
use crate::layers::observe::{Observe, ObserveLayer};
use crate::layers::resolve::{Resolve, ResolveLayer};
use crate::layers::validate::{Validate, ValidateLayer};
use crate::metrics::Metrics;
use crate::repository::Repository;

/// The composed service both front ends call.
pub type Stack = Observe<Resolve<Validate<Execute>>>;

/// Builds the stack over a repository.
pub fn build(repository: Arc<Repository>, metrics: Arc<Metrics>) -> Stack {
    ServiceBuilder::new()
        // outermost so every outcome, rejections included, is counted and timed
        .layer(ObserveLayer::new(Arc::clone(&metrics)))
        // before validation: the signature to check against belongs to the resolved version
        .layer(ResolveLayer::new(repository))
        // before execution: nothing malformed reaches a worker thread
        .layer(ValidateLayer)
        .service(Execute::new(metrics))
}
