//! Running blocking clients from anywhere.

/// Runs `f` here, or on a short-lived thread when this thread is inside a tokio runtime: the
/// blocking PostgreSQL and object-store clients drive runtimes of their own, which tokio
/// refuses to start inside another. (Registry calls are rare: a thread per call is cheap.)
pub(crate) fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}
