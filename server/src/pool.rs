//! The bounded pool that a model's input processing (tokenizing text, decoding images) runs on:
//! tokio's blocking threads, at most `permits` jobs of one model at once, so that processing
//! never stalls the async runtime and one model's burst cannot take every blocking thread.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::error::ServeError;

#[derive(Debug, Clone)]
pub struct ProcessingPool {
    permits: Arc<Semaphore>,
    what: &'static str,
}

impl ProcessingPool {
    /// `threads` none: the number of CPUs. `what` names the work in errors ("tokenizer").
    pub fn new(threads: Option<usize>, what: &'static str) -> Self {
        let threads = threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
        });
        Self {
            permits: Arc::new(Semaphore::new(threads)),
            what,
        }
    }

    /// Runs `job` on a blocking thread once a permit is free.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ServeError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| ServeError::internal(format!("{} pool closed", self.what)))?;
        tokio::task::spawn_blocking(job)
            .await
            .map_err(|e| ServeError::internal(format!("{} task failed: {e}", self.what)))
    }
}
