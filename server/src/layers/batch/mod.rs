//! Batch: dynamic batching per model version, built like tower's buffer. A cheap handle per
//! version sends each request, with a oneshot for its answer, to a worker task that forms
//! batches whenever an instance is free (so batches grow while all are busy), concatenates
//! inputs along the first dimension, runs the batch through the inner service once, and
//! splits the outputs back. Expired requests fail unrun; abandoned ones are dropped and counted.

mod queue;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures::future::{BoxFuture, Either, Ready, ready};
use infergate_config::DynamicBatching;
use infergate_runtime::{NamedTensor, Tensor, TensorData};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

pub use queue::{BatchQueue, Decision, Pending, Pruned, ShapeKey};

use crate::core::{InferRequest, InferResponse};
use crate::error::{BoxError, ErrorKind, ServeError};
use crate::layers::execute::deadline_exceeded;
use crate::metrics::Metrics;

/// Adds [`Batch`].
#[derive(Clone)]
pub struct BatchLayer {
    metrics: Arc<Metrics>,
}

impl BatchLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for BatchLayer {
    type Service = Batch<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Batch {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

/// Sends requests of batching models to their version's batcher; others pass straight on.
#[derive(Clone)]
pub struct Batch<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

type Reply = Result<InferResponse, BoxError>;

impl<S> Service<InferRequest> for Batch<S>
where
    S: Service<InferRequest, Response = InferResponse, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = InferResponse;
    type Error = BoxError;
    type Future = Either<S::Future, Either<Ready<Reply>, BoxFuture<'static, Reply>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: InferRequest) -> Self::Future {
        let Some(target) = req.target.clone() else {
            return Either::Left(self.inner.call(req));
        };
        let Some(settings) = target.config.batching() else {
            return Either::Left(self.inner.call(req));
        };
        let handle = target.batcher.get_or_init(|| {
            BatchHandle::spawn(
                self.inner.clone(),
                settings.clone(),
                target.config.max_batch_size as usize,
                target.instances,
                target.name.clone(),
                Arc::clone(&self.metrics),
            )
        });
        Either::Right(handle.submit(req))
    }
}

/// The per-version sender side of a batcher. Dropping it (with its model version) ends the
/// worker once the queue is empty.
pub struct BatchHandle {
    tx: mpsc::UnboundedSender<Pending>,
    queued: Arc<AtomicUsize>,
    max_queue: usize,
    levels: u32,
    name: String,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for BatchHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchHandle")
            .field("queued", &self.queued)
            .finish()
    }
}

impl BatchHandle {
    fn spawn<S>(
        inner: S,
        settings: DynamicBatching,
        max_batch: usize,
        instances: usize,
        name: String,
        metrics: Arc<Metrics>,
    ) -> Self
    where
        S: Service<InferRequest, Response = InferResponse, Error = BoxError>
            + Clone
            + Send
            + 'static,
        S::Future: Send,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        // One batch per instance, and with `dispatch_ahead_rows` one more queued behind it.
        let instances = instances.max(1);
        let ahead_rows = settings.dispatch_ahead_rows as usize;
        let permits = if settings.dispatch_ahead_rows > 0 {
            2 * instances
        } else {
            instances
        };
        let handle = Self {
            tx,
            queued: Arc::clone(&queued),
            max_queue: settings.max_queue_size,
            levels: settings.priority_levels,
            name: name.clone(),
            metrics: Arc::clone(&metrics),
        };
        let worker = Worker {
            inner,
            queue: BatchQueue::new(settings, max_batch),
            permits: Arc::new(Semaphore::new(permits)),
            instances,
            ahead_rows,
            done: Arc::new(Notify::new()),
            queued,
            name: name.into(),
            metrics,
        };
        tokio::spawn(worker.run(rx));
        handle
    }

    /// Requests waiting in this batcher.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    fn submit(&self, mut req: InferRequest) -> Either<Ready<Reply>, BoxFuture<'static, Reply>> {
        if req.priority > self.levels {
            return Either::Left(ready(Err(ServeError::invalid(format!(
                "priority {} is out of range: model '{}' has {} priority levels (1 is the highest, 0 the default)",
                req.priority, self.name, self.levels
            ))
            .into())));
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.max_queue {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.metrics.reject(&self.name, "queue_full");
            return Either::Left(ready(Err(ServeError::new(
                ErrorKind::Overloaded,
                format!(
                    "model '{}' is overloaded: batch queue is full ({} requests)",
                    self.name, self.max_queue
                ),
            )
            .into())));
        }
        if let Some(target) = &req.target
            && req.deadline.is_none()
            && let Some(timeout) = target
                .config
                .batching()
                .map(|b| b.default_timeout_us)
                .filter(|&t| t > 0)
        {
            req.tighten_deadline(std::time::Duration::from_micros(timeout));
        }
        let (reply, rx) = oneshot::channel();
        let pending = Pending {
            rows: req.rows(),
            seq: req.tokens.map_or(0, |t| t.seq),
            key: ShapeKey::of(&req),
            enqueued: Instant::now(),
            waiting: crate::telemetry::stage_span!("queue_wait"),
            req,
            reply,
        };
        if self.tx.send(pending).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Either::Left(ready(Err(ServeError::new(
                ErrorKind::NotReady,
                "batcher stopped",
            )
            .into())));
        }
        Either::Right(Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                Err(ServeError::internal("batch worker dropped the request").into())
            })
        }))
    }
}

struct Worker<S> {
    inner: S,
    queue: BatchQueue,
    permits: Arc<Semaphore>,
    instances: usize,
    /// `dispatch_ahead_rows`: the rows a batch needs to be formed while every instance is busy
    /// (0: it waits for a free instance). Then there are two permits per instance.
    ahead_rows: usize,
    /// Signalled whenever a batch finishes.
    done: Arc<Notify>,
    queued: Arc<AtomicUsize>,
    name: Arc<str>,
    metrics: Arc<Metrics>,
}

impl<S> Worker<S>
where
    S: Service<InferRequest, Response = InferResponse, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Pending>) {
        let mut open = true;
        loop {
            while let Ok(p) = rx.try_recv() {
                self.queue.push(p);
            }
            if self.queue.is_empty() {
                if !open {
                    return;
                }
                match rx.recv().await {
                    Some(p) => self.queue.push(p),
                    None => open = false,
                }
                continue;
            }
            // Wait for a free instance; requests arriving meanwhile join the queue, so the next
            // batch grows while every instance is busy.
            let expiry = self.queue.earliest_deadline();
            let permit = tokio::select! {
                biased;
                permit = Arc::clone(&self.permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
                // A request must fail at its deadline, not when an instance frees up.
                _ = tokio::time::sleep_until(expiry.unwrap_or_else(Instant::now)), if expiry.is_some() => {
                    self.prune();
                    continue;
                }
                msg = rx.recv(), if open => {
                    match msg {
                        Some(p) => self.queue.push(p),
                        None => open = false,
                    }
                    continue;
                }
            };
            self.prune();
            // With fewer permits left than instances, this one is beyond one per instance: its
            // batch waits in the model's queue until an instance finishes, so it is formed only
            // once it is big enough.
            if self.ahead_rows > 0
                && self.permits.available_permits() < self.instances
                && self.queue.rows() < self.ahead_rows
            {
                drop(permit);
                let expiry = self.queue.earliest_deadline();
                tokio::select! {
                    biased;
                    _ = self.done.notified() => {}
                    _ = tokio::time::sleep_until(expiry.unwrap_or_else(Instant::now)), if expiry.is_some() => {
                        self.prune();
                    }
                    msg = rx.recv(), if open => match msg {
                        Some(p) => self.queue.push(p),
                        None => open = false,
                    },
                }
                continue;
            }
            match self.queue.next(Instant::now()) {
                Decision::Empty => drop(permit),
                Decision::WaitUntil(until) => {
                    drop(permit);
                    // Wake for the window or for the first deadline, whichever comes first.
                    let until = self
                        .queue
                        .earliest_deadline()
                        .map_or(until, |d| d.min(until));
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {}
                        msg = rx.recv(), if open => match msg {
                            Some(p) => self.queue.push(p),
                            None => open = false,
                        },
                    }
                }
                Decision::Run(batch) => {
                    self.queued.fetch_sub(batch.len(), Ordering::AcqRel);
                    let inner = self.inner.clone();
                    let done = Arc::clone(&self.done);
                    let (metrics, name) = (Arc::clone(&self.metrics), Arc::clone(&self.name));
                    tokio::spawn(async move {
                        execute(inner, batch, &metrics, &name).await;
                        drop(permit);
                        done.notify_one();
                    });
                }
            }
        }
    }

    fn prune(&mut self) {
        let Pruned { expired, cancelled } = self.queue.prune(Instant::now());
        self.queued
            .fetch_sub(expired.len() + cancelled, Ordering::AcqRel);
        self.metrics.reject_many(&self.name, "cancelled", cancelled);
        for p in expired {
            self.metrics.reject(&self.name, "deadline");
            let _ = p.reply.send(Err(deadline_exceeded(&self.name).into()));
        }
    }
}

/// Runs one batch through the inner service and answers every request in it. A batch whose
/// callers have all gone away before it starts is skipped and counted as cancelled: a batch
/// dispatched ahead waits in the model's queue, where the model's worker skips an abandoned job.
async fn execute<S>(inner: S, mut batch: Vec<Pending>, metrics: &Metrics, name: &str)
where
    S: Service<InferRequest, Response = InferResponse, Error = BoxError>,
{
    use tracing::Instrument as _;
    let started = Instant::now();
    // One span for the execution, linked to every request span it served (none when no
    // request in the batch is sampled).
    let span = if batch.iter().any(|p| !p.req.span.is_none()) {
        tracing::info_span!("batch_execute", batch_size = batch.len())
    } else {
        tracing::Span::none()
    };
    for p in &mut batch {
        span.follows_from(&p.req.span);
        // The wait is over.
        p.waiting = tracing::Span::none();
    }
    let abandoned = Arc::new(AtomicBool::new(false));
    if batch.len() == 1 {
        let mut p = batch.pop().expect("one request");
        let queued = started - p.enqueued;
        p.req.abandoned = Some(Arc::clone(&abandoned));
        let run = inner.oneshot(p.req).instrument(span);
        let result = watch_callers(run, &mut [&mut p.reply], &abandoned).await;
        if result.as_ref().is_err_and(is_abandoned) {
            return metrics.reject(name, "cancelled");
        }
        let _ = p.reply.send(result.map(|mut resp| {
            resp.timings.queue += queued;
            resp
        }));
        return;
    }
    let mut combined = match concat(&mut batch) {
        Ok(req) => req,
        Err(e) => return fail_all(batch, &e),
    };
    combined.abandoned = Some(Arc::clone(&abandoned));
    let run = inner.oneshot(combined).instrument(span);
    let mut replies: Vec<_> = batch.iter_mut().map(|p| &mut p.reply).collect();
    let result = watch_callers(run, &mut replies, &abandoned).await;
    match result {
        Ok(resp) => split(batch, resp, started),
        Err(e) if is_abandoned(&e) => metrics.reject_many(name, "cancelled", batch.len()),
        // Execute counted a deadline once per request (`InferRequest::requests`).
        Err(e) => fail_all(batch, &ServeError::classify(e.as_ref())),
    }
}

/// Awaits `run`, raising `abandoned` once every reply's receiver is dropped: the model's worker
/// then skips the job if it has not started it, and a running one finishes (and is recorded).
async fn watch_callers<T>(
    run: impl Future<Output = T>,
    replies: &mut [&mut oneshot::Sender<Reply>],
    abandoned: &AtomicBool,
) -> T {
    tokio::pin!(run);
    let gone = async {
        for reply in replies.iter_mut() {
            reply.closed().await;
        }
    };
    tokio::select! {
        biased;
        out = &mut run => return out,
        () = gone => abandoned.store(true, Ordering::Release),
    }
    run.await
}

/// Whether the model's worker skipped the job because nobody waited for it.
fn is_abandoned(e: &BoxError) -> bool {
    matches!(
        e.downcast_ref::<infergate_runtime::RuntimeError>(),
        Some(infergate_runtime::RuntimeError::Abandoned(_))
    )
}

fn fail_all(batch: Vec<Pending>, e: &ServeError) {
    for p in batch {
        let _ = p.reply.send(Err(e.clone().into()));
    }
}

/// One request whose inputs are the batch's inputs concatenated along the first dimension;
/// it asks for every output (each request keeps its own selection when split).
fn concat(batch: &mut [Pending]) -> Result<InferRequest, ServeError> {
    let first = &batch[0].req;
    let mut combined =
        InferRequest::new(first.model.clone(), first.version.clone(), first.protocol);
    combined.target = first.target.clone();
    combined.requests = batch.len();
    // The batch must start by the latest of its requests' deadlines (none if one has none):
    // until then, some request in it can still start in time.
    combined.deadline = batch
        .iter()
        .map(|p| p.req.deadline)
        .collect::<Option<Vec<_>>>()
        .and_then(|deadlines| deadlines.into_iter().max());
    let total: usize = batch.iter().map(|p| p.rows).sum();
    // Token sequences are padded (with 0: the pad id, and a masked-out position) to the
    // longest row of the batch.
    let seq = batch.iter().map(|p| p.seq).max().unwrap_or(0);
    if first.tokens.is_some() {
        combined.tokens = Some(crate::core::Tokens {
            seq,
            real: batch
                .iter()
                .filter_map(|p| p.req.tokens)
                .map(|t| t.real)
                .sum(),
        });
    }
    for input in &first.inputs {
        let parts: Vec<&Tensor> = batch
            .iter()
            .map(|p| {
                p.req
                    .inputs
                    .iter()
                    .find(|i| i.name == input.name)
                    .map(|i| &i.tensor)
            })
            .collect::<Option<_>>()
            .ok_or_else(|| {
                ServeError::internal(format!("batched request lacks input '{}'", input.name))
            })?;
        let mut shape = input.tensor.shape().to_vec();
        shape[0] = total as i64;
        let tensor = match input.tensor.data() {
            TensorData::Fixed(_) if combined.tokens.is_some() => {
                shape[1] = seq as i64;
                pad_rows(&parts, seq, shape)
            }
            TensorData::Fixed(_) => {
                let mut data = BytesMut::with_capacity(parts.iter().map(|t| t.raw_len()).sum());
                for t in &parts {
                    if let TensorData::Fixed(b) = t.data() {
                        data.extend_from_slice(b);
                    }
                }
                Tensor::from_raw(input.tensor.dtype(), shape, data.freeze())
            }
            TensorData::Bytes(_) => {
                let mut elements = Vec::new();
                for t in &parts {
                    if let TensorData::Bytes(e) = t.data() {
                        elements.extend(e.iter().cloned());
                    }
                }
                Tensor::from_elements(shape, elements)
            }
        }
        .map_err(|e| ServeError::internal(format!("cannot batch input '{}': {e}", input.name)))?;
        combined
            .inputs
            .push(NamedTensor::new(Arc::clone(&input.name), tensor));
    }
    Ok(combined)
}

/// Fixed-size `[rows, len]` tensors stacked into `shape` (`[total, seq]`), each row padded with
/// zero bytes to `seq` elements.
fn pad_rows(
    parts: &[&Tensor],
    seq: usize,
    shape: Vec<i64>,
) -> Result<Tensor, infergate_runtime::TensorError> {
    let dtype = parts[0].dtype();
    let size = dtype.size().unwrap_or(1);
    let total = usize::try_from(shape[0]).unwrap_or(0);
    let mut data = BytesMut::zeroed(total * seq * size);
    let mut row = 0;
    for t in parts {
        let (rows, len) = match t.shape() {
            &[rows, len] => (rows.max(0) as usize, len.max(0) as usize),
            _ => (0, 0),
        };
        if let TensorData::Fixed(b) = t.data() {
            for r in 0..rows {
                let src = &b[r * len * size..(r + 1) * len * size];
                let at = (row + r) * seq * size;
                data[at..at + src.len()].copy_from_slice(src);
            }
        }
        row += rows;
    }
    Tensor::from_raw(dtype, shape, data.freeze())
}

/// Rows `[start, start + rows)` of a tensor whose first dimension is the batch.
fn slice_rows(t: &Tensor, start: usize, rows: usize, total: usize) -> Result<Tensor, ServeError> {
    let mut shape = t.shape().to_vec();
    shape[0] = rows as i64;
    let per_row = t.len() / total.max(1);
    let result = match t.data() {
        TensorData::Fixed(b) => {
            let size = t.dtype().size().unwrap_or(1) * per_row;
            Tensor::from_raw(
                t.dtype(),
                shape,
                b.slice(start * size..(start + rows) * size),
            )
        }
        TensorData::Bytes(e) => {
            Tensor::from_elements(shape, e[start * per_row..(start + rows) * per_row].to_vec())
        }
    };
    result.map_err(|e| ServeError::internal(format!("cannot split batch output: {e}")))
}

fn split(batch: Vec<Pending>, resp: InferResponse, started: Instant) {
    let total: usize = batch.iter().map(|p| p.rows).sum();
    if let Some(bad) = resp
        .outputs
        .iter()
        .find(|o| o.tensor.shape().first() != Some(&(total as i64)))
    {
        let e = ServeError::internal(format!(
            "output '{}' has shape {:?}, which does not split into a batch of {total} rows",
            bad.name,
            bad.tensor.shape()
        ));
        return fail_all(batch, &e);
    }
    let mut start = 0;
    for p in batch {
        let wanted =
            |name: &str| p.req.outputs.is_empty() || p.req.outputs.iter().any(|o| o == name);
        let mut outputs = Vec::with_capacity(resp.outputs.len());
        let mut failed = None;
        for o in resp.outputs.iter().filter(|o| wanted(&o.name)) {
            match slice_rows(&o.tensor, start, p.rows, total) {
                Ok(t) => outputs.push(NamedTensor::new(Arc::clone(&o.name), t)),
                Err(e) => failed = Some(e),
            }
        }
        if !p.req.outputs.is_empty() {
            outputs.sort_by_key(|o| p.req.outputs.iter().position(|n| *n == *o.name));
        }
        start += p.rows;
        let mut timings = resp.timings;
        timings.queue += started - p.enqueued;
        let answer = match failed {
            Some(e) => Err(e.into()),
            None => Ok(InferResponse {
                model_name: resp.model_name.clone(),
                model_version: resp.model_version.clone(),
                id: p.req.id,
                parameters: Vec::new(),
                outputs,
                timings,
            }),
        };
        let _ = p.reply.send(answer);
    }
}
