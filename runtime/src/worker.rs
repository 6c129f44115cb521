//! Per-model-version worker threads: each owns its backend instance (session) and takes jobs
//! from one bounded channel, so inference never runs on the async runtime.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tokio::sync::oneshot;

use crate::{BackendFactory, NamedTensor, RuntimeError, Signature, StageTimings};

/// How a model version is run.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    /// Name used for thread names and error messages (e.g. `iris_mlp:2`).
    pub name: String,
    /// Worker threads, each with its own backend instance.
    pub instances: usize,
    /// Capacity of the request channel shared by the workers.
    pub queue_capacity: usize,
    /// Scheduling niceness of the worker threads (and of the backend's own threads, which
    /// inherit it), 0 to 19; 19 also moves them to the idle scheduling class, where they run
    /// only on CPU nothing else wants (Linux; ignored elsewhere).
    pub nice: i32,
}

/// The outputs of one execution and where its time went.
#[derive(Debug)]
pub struct InferOutput {
    pub outputs: Vec<NamedTensor>,
    pub timings: StageTimings,
}

/// When a queued job may still start.
#[derive(Debug, Clone, Default)]
pub struct StartIf {
    /// The latest time it may start.
    pub by: Option<Instant>,
    /// Raised once nobody waits for the answer: a worker skips the job if it has not started it
    /// (one already running it finishes).
    pub abandoned: Option<Arc<AtomicBool>>,
}

impl StartIf {
    fn is_abandoned(&self) -> bool {
        self.abandoned
            .as_ref()
            .is_some_and(|a| a.load(Ordering::Acquire))
    }
}

struct Job {
    inputs: Vec<NamedTensor>,
    enqueued: Instant,
    start: StartIf,
    reply: oneshot::Sender<Result<InferOutput, RuntimeError>>,
}

struct Inner {
    name: String,
    sender: Sender<Job>,
    factory: Arc<dyn BackendFactory>,
    cancelled: Arc<AtomicU64>,
}

/// A running model version. Cheap to clone; when the last clone is dropped the channel closes,
/// the workers finish the jobs already queued and exit, and their sessions are freed.
#[derive(Clone)]
pub struct Model {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.inner.name)
            .finish()
    }
}

impl Model {
    /// Starts `options.instances` worker threads, each creating its own backend instance, and
    /// returns once all are ready (or with the first creation error). Blocks: call it from a
    /// blocking context.
    pub fn start(
        factory: Arc<dyn BackendFactory>,
        options: ModelOptions,
    ) -> Result<Self, RuntimeError> {
        let (sender, receiver) = crossbeam_channel::bounded::<Job>(options.queue_capacity.max(1));
        let cancelled = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        for i in 0..options.instances.max(1) {
            let worker = Worker {
                nice: options.nice,
                name: options.name.clone(),
                factory: Arc::clone(&factory),
                receiver: receiver.clone(),
                cancelled: Arc::clone(&cancelled),
            };
            let ready = ready_tx.clone();
            std::thread::Builder::new()
                .name(format!("model-{}-{i}", options.name))
                .spawn(move || worker.run(ready))
                .map_err(|e| RuntimeError::Backend(format!("cannot spawn worker thread: {e}")))?;
        }
        drop(ready_tx);
        for _ in 0..options.instances.max(1) {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(RuntimeError::Backend(
                        "worker thread died while starting".into(),
                    ));
                }
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                name: options.name,
                sender,
                factory,
                cancelled,
            }),
        })
    }

    /// Inputs and outputs of the model.
    pub fn signature(&self) -> &Signature {
        self.inner.factory.signature()
    }

    /// The KServe platform string.
    pub fn platform(&self) -> &str {
        self.inner.factory.platform()
    }

    /// Jobs currently waiting for a worker.
    pub fn queue_len(&self) -> usize {
        self.inner.sender.len()
    }

    /// Jobs dropped because their caller went away before a worker picked them up.
    pub fn cancelled_count(&self) -> u64 {
        self.inner.cancelled.load(Ordering::Relaxed)
    }

    /// Queues one execution. Fails at once with `QueueFull` when the channel is full, so the
    /// caller can shed load; otherwise resolves when a worker has run it. Dropping the future
    /// before a worker starts the job cancels it.
    pub fn infer(
        &self,
        inputs: Vec<NamedTensor>,
    ) -> Result<
        impl Future<Output = Result<InferOutput, RuntimeError>> + Send + 'static,
        RuntimeError,
    > {
        self.infer_by(inputs, StartIf::default())
    }

    /// [`infer`](Self::infer) for a job that starts only while `start` allows: a worker that
    /// picks it up after its deadline answers `DeadlineExceeded`, and one that picks it up once it
    /// is abandoned answers `Abandoned`, without running it.
    pub fn infer_by(
        &self,
        inputs: Vec<NamedTensor>,
        start: StartIf,
    ) -> Result<
        impl Future<Output = Result<InferOutput, RuntimeError>> + Send + 'static,
        RuntimeError,
    > {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            inputs,
            enqueued: Instant::now(),
            start,
            reply,
        };
        match self.inner.sender.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(RuntimeError::QueueFull(self.inner.name.clone()));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(RuntimeError::Unavailable(self.inner.name.clone()));
            }
        }
        let name = self.inner.name.clone();
        Ok(async move {
            rx.await.unwrap_or_else(|_| {
                Err(RuntimeError::Backend(format!(
                    "worker of model '{name}' stopped"
                )))
            })
        })
    }
}

struct Worker {
    nice: i32,
    name: String,
    factory: Arc<dyn BackendFactory>,
    receiver: Receiver<Job>,
    cancelled: Arc<AtomicU64>,
}

/// Lowers the calling thread's scheduling priority to `nice` (Linux keeps it per thread).
fn set_thread_nice(nice: i32) {
    if nice == 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        // PRIO_PROCESS with who = 0 names the calling thread on Linux; raising one's own
        // niceness needs no privilege.
        #[allow(unsafe_code)]
        // SAFETY: setpriority only reads its integer arguments.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
        if rc != 0 {
            tracing::warn!(nice, error = %std::io::Error::last_os_error(), "cannot lower the worker thread's priority");
        }
        if nice >= 19 {
            // The idle class: preempted as soon as any ordinary thread wants the CPU, where
            // niceness alone still lets it finish its time slice first.
            let param = libc::sched_param { sched_priority: 0 };
            #[allow(unsafe_code)]
            // SAFETY: the parameter struct outlives the call, which only reads it.
            let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
            if rc != 0 {
                tracing::warn!(error = %std::io::Error::last_os_error(), "cannot move the worker thread to the idle scheduling class");
            }
        }
    }
}

impl Worker {
    fn run(self, ready: std::sync::mpsc::Sender<Result<(), RuntimeError>>) {
        // Before the backend starts threads of its own, so they inherit it.
        set_thread_nice(self.nice);
        let mut backend = match self.factory.create() {
            Ok(backend) => {
                let _ = ready.send(Ok(()));
                backend
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        drop(ready);
        while let Ok(job) = self.receiver.recv() {
            if job.reply.is_closed() {
                self.cancelled.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if job.start.is_abandoned() {
                self.cancelled.fetch_add(1, Ordering::Relaxed);
                let _ = job
                    .reply
                    .send(Err(RuntimeError::Abandoned(self.name.clone())));
                continue;
            }
            if job.start.by.is_some_and(|by| Instant::now() >= by) {
                let _ = job
                    .reply
                    .send(Err(RuntimeError::DeadlineExceeded(self.name.clone())));
                continue;
            }
            let mut timings = StageTimings {
                queue: job.enqueued.elapsed(),
                ..StageTimings::default()
            };
            let started = Instant::now();
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                backend.infer(&job.inputs, &mut timings)
            }));
            let result = match result {
                Ok(result) => result,
                Err(panic) => {
                    let message = panic_message(&panic);
                    tracing::error!(model = %self.name, %message, "backend panicked; replacing the instance");
                    // The instance may be in any state after a panic: build a fresh one.
                    match self.factory.create() {
                        Ok(fresh) => backend = fresh,
                        Err(e) => {
                            let _ = job
                                .reply
                                .send(Err(RuntimeError::Backend(format!("panicked: {message}"))));
                            tracing::error!(model = %self.name, error = %e, "cannot replace backend; worker exits");
                            return;
                        }
                    }
                    Err(RuntimeError::Backend(format!("panicked: {message}")))
                }
            };
            if timings.infer.is_zero() {
                timings.infer = started.elapsed();
            }
            let _ = job
                .reply
                .send(result.map(|outputs| InferOutput { outputs, timings }));
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::Tensor;
    use crate::test_util::{Behavior, FakeFactory};

    fn start(
        behavior: Behavior,
        instances: usize,
        queue_capacity: usize,
    ) -> (Model, Arc<FakeFactory>) {
        let factory = Arc::new(FakeFactory::fp32(behavior));
        let options = ModelOptions {
            name: "fake:1".into(),
            instances,
            queue_capacity,
            nice: 0,
        };
        (Model::start(factory.clone(), options).unwrap(), factory)
    }

    /// Waits until a worker has taken every queued job.
    async fn taken(model: &Model) {
        while model.queue_len() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn input(v: f32) -> Vec<NamedTensor> {
        vec![NamedTensor::new(
            "INPUT0",
            Tensor::from_slice(vec![1, 1], &[v]).unwrap(),
        )]
    }

    /// The niceness of this process's thread called `name`, read from /proc.
    #[cfg(target_os = "linux")]
    fn thread_nice(name: &str) -> Option<i64> {
        for task in std::fs::read_dir("/proc/self/task").ok()? {
            let path = task.ok()?.path();
            let comm = std::fs::read_to_string(path.join("comm")).ok()?;
            if comm.trim_end() == name {
                let stat = std::fs::read_to_string(path.join("stat")).ok()?;
                // Fields after the parenthesized name; niceness is field 19 of stat.
                let rest = &stat[stat.rfind(')')? + 2..];
                return rest.split(' ').nth(16)?.parse().ok();
            }
        }
        None
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn workers_run_at_the_niceness_they_were_given() {
        let factory = Arc::new(FakeFactory::fp32(Behavior::Echo));
        let start = |name: &str, nice| {
            Model::start(
                factory.clone(),
                ModelOptions {
                    name: name.into(),
                    instances: 1,
                    queue_capacity: 4,
                    nice,
                },
            )
            .unwrap()
        };
        let (_low, _normal) = (start("low:1", 19), start("norm:1", 0));
        assert_eq!(thread_nice("model-low:1-0"), Some(19));
        assert_eq!(thread_nice("model-norm:1-0"), Some(0));
    }

    #[tokio::test]
    async fn echo_runs_on_a_worker_thread_and_returns_outputs() {
        let (model, _) = start(Behavior::Echo, 2, 4);
        let out = model.infer(input(3.0)).unwrap().await.unwrap();
        assert_eq!(&*out.outputs[0].name, "OUTPUT0");
        assert_eq!(out.outputs[0].tensor.to_vec::<f32>(), Some(vec![3.0]));
        assert!(out.timings.infer > Duration::ZERO);
    }

    #[tokio::test]
    async fn a_full_queue_is_an_error_value() {
        let (model, _) = start(Behavior::Slow(Duration::from_millis(300)), 1, 1);
        let first = model.infer(input(1.0)).unwrap();
        // Wait until the worker has taken the first job, then fill the single slot.
        taken(&model).await;
        let second = model.infer(input(2.0)).unwrap();
        let third = model.infer(input(3.0));
        assert!(matches!(third, Err(RuntimeError::QueueFull(ref name)) if name == "fake:1"));
        assert!(first.await.is_ok());
        assert!(second.await.is_ok());
    }

    #[tokio::test]
    async fn a_panic_fails_only_that_job_and_the_worker_is_replaced() {
        let (model, factory) = start(Behavior::Panic, 1, 4);
        for _ in 0..3 {
            let err = model.infer(input(1.0)).unwrap().await.unwrap_err();
            assert_eq!(
                err.to_string(),
                "inference failed: panicked: fake backend panic"
            );
        }
        assert_eq!(factory.executions.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn jobs_whose_caller_went_away_are_skipped_and_counted() {
        let (model, factory) = start(Behavior::Slow(Duration::from_millis(200)), 1, 8);
        let running = model.infer(input(0.0)).unwrap();
        taken(&model).await;
        for i in 0..3 {
            drop(model.infer(input(i as f32)).unwrap());
        }
        running.await.unwrap();
        let last = model.infer(input(9.0)).unwrap().await.unwrap();
        assert_eq!(last.outputs[0].tensor.to_vec::<f32>(), Some(vec![9.0]));
        assert_eq!(model.cancelled_count(), 3);
        assert_eq!(factory.executions.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_job_picked_up_after_its_start_by_fails_unrun() {
        let (model, factory) = start(Behavior::Slow(Duration::from_millis(100)), 1, 8);
        let running = model.infer(input(0.0)).unwrap();
        taken(&model).await;
        let soon = Instant::now() + Duration::from_millis(10);
        let later = Instant::now() + Duration::from_secs(30);
        let by = |by| StartIf {
            by,
            abandoned: None,
        };
        let late = model.infer_by(input(1.0), by(Some(soon))).unwrap();
        let in_time = model.infer_by(input(2.0), by(Some(later))).unwrap();
        let unbounded = model.infer_by(input(3.0), by(None)).unwrap();
        running.await.unwrap();
        assert!(matches!(
            late.await,
            Err(RuntimeError::DeadlineExceeded(ref name)) if name == "fake:1"
        ));
        for (job, value) in [(in_time, 2.0), (unbounded, 3.0)] {
            let out = job.await.unwrap();
            assert_eq!(out.outputs[0].tensor.to_vec::<f32>(), Some(vec![value]));
        }
        assert_eq!(factory.executions.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_abandoned_job_is_skipped_unless_it_has_started() {
        let (model, factory) = start(Behavior::Slow(Duration::from_millis(100)), 1, 8);
        let flag = || Arc::new(AtomicBool::new(false));
        let (first, second) = (flag(), flag());
        let abandoned = |flag: &Arc<AtomicBool>| StartIf {
            by: None,
            abandoned: Some(Arc::clone(flag)),
        };
        let running = model.infer_by(input(1.0), abandoned(&first)).unwrap();
        // Started, not only taken from the queue: the flag is read between the two.
        while factory.executions.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let queued = model.infer_by(input(2.0), abandoned(&second)).unwrap();
        first.store(true, Ordering::Release);
        second.store(true, Ordering::Release);
        // The running job finishes; the queued one is skipped.
        assert!(running.await.is_ok());
        assert!(matches!(queued.await, Err(RuntimeError::Abandoned(_))));
        assert_eq!(factory.executions.load(Ordering::SeqCst), 1);
        assert_eq!(model.cancelled_count(), 1);
    }

    #[tokio::test]
    async fn dropping_the_last_handle_stops_the_workers() {
        let (model, factory) = start(Behavior::Echo, 2, 4);
        let weak = Arc::downgrade(&factory);
        drop(factory);
        model.infer(input(1.0)).unwrap().await.unwrap();
        drop(model);
        // Workers hold the factory; once they exit it is freed.
        for _ in 0..200 {
            if weak.upgrade().is_none() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("worker threads still hold the model after the last handle was dropped");
    }
}
