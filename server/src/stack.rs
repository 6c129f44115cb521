//! The inference stack, composed in this one place, outermost first.

use std::sync::Arc;

use tower::ServiceBuilder;

use crate::layers::account::{Account, AccountLayer};
use crate::layers::batch::{Batch, BatchLayer};
use crate::layers::cache::{Cache, CacheLayer};
use crate::layers::classify::{Classify, ClassifyLayer};
use crate::layers::decode::{Decode, DecodeLayer};
use crate::layers::execute::Execute;
use crate::layers::observe::{Observe, ObserveLayer};
use crate::layers::resolve::{Resolve, ResolveLayer};
use crate::layers::route::{RouteLayer, RouteService, RouteTable};
use crate::layers::tokenize::{Tokenize, TokenizeLayer};
use crate::layers::validate::{Validate, ValidateLayer};
use crate::metrics::Metrics;
use crate::repository::Repository;

/// The composed service both front ends call. Admission control (concurrency limits, load
/// shedding, rate limits) runs in front of it, in the front ends, before bodies are decoded.
pub type Stack = Observe<
    RouteService<Resolve<Account<Validate<Classify<Cache<Decode<Tokenize<Batch<Execute>>>>>>>>>,
>;

/// Builds the stack over a repository.
pub fn build(repository: Arc<Repository>, metrics: Arc<Metrics>, routes: Arc<RouteTable>) -> Stack {
    ServiceBuilder::new()
        // outermost so every outcome, rejections included, is counted and timed
        .layer(ObserveLayer::new(Arc::clone(&metrics)))
        // before resolve: a route's name becomes the chosen variant's model and version
        .layer(RouteLayer::new(routes))
        // before validation: the signature to check against belongs to the resolved version
        .layer(ResolveLayer::new(repository))
        // right below resolve: every outcome of a resolved request lands in its statistics
        .layer(AccountLayer::new(Arc::clone(&metrics)))
        // before the cache: a malformed request is never hashed or looked up
        .layer(ValidateLayer)
        // above the cache: one cached answer serves a classification of any size
        .layer(ClassifyLayer)
        // above batching: a hit never waits in a batch queue, and identical requests in
        // flight together are computed once
        .layer(CacheLayer::new(Arc::clone(&metrics)))
        // below the cache (a hit is never tokenized; the key is the text) and above batching
        // (a batch closes on a token budget, and rows of any length share it)
        // below the cache (a hit is never decoded; the key is the encoded image) and above
        // batching (images of any size and format batch as the network's fixed-size input)
        .layer(DecodeLayer)
        .layer(TokenizeLayer::new(Arc::clone(&metrics)))
        // per model version queue; forms batches while the instances are busy
        .layer(BatchLayer::new(Arc::clone(&metrics)))
        .service(Execute::new(metrics))
}
