//! Faults under the registry: an artifact store whose writes fail, and a database that another
//! process keeps locked. Neither may leave a half-recorded version behind.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use infergate_registry::{
    ArtifactKind, ArtifactStore, FsStore, NewArtifact, NewVersion, PLATFORM_ONNX, Registry,
    RegistryError,
};

fn version(artifacts: &[&[u8]]) -> NewVersion {
    NewVersion {
        model: "m".to_owned(),
        platform: PLATFORM_ONNX.to_owned(),
        artifacts: artifacts
            .iter()
            .zip([ArtifactKind::Onnx, ArtifactKind::Safetensors])
            .map(|(bytes, kind)| NewArtifact {
                kind,
                bytes: bytes.to_vec(),
            })
            .collect(),
        author: "test".to_owned(),
        ..NewVersion::default()
    }
}

/// The filesystem store, except that the `fail_at`-th write (1-based) and every one after it
/// fail as a full disk would.
#[derive(Debug)]
struct FailingStore {
    inner: FsStore,
    writes: AtomicUsize,
    fail_at: usize,
}

impl ArtifactStore for FailingStore {
    fn put(&self, bytes: &[u8]) -> infergate_registry::Result<String> {
        if self.writes.fetch_add(1, Ordering::SeqCst) + 1 >= self.fail_at {
            return Err(RegistryError::Io {
                path: "artifacts".into(),
                source: std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left"),
            });
        }
        self.inner.put(bytes)
    }
    fn get_unverified(&self, digest: &str) -> infergate_registry::Result<Vec<u8>> {
        self.inner.get_unverified(digest)
    }
    fn contains(&self, digest: &str) -> infergate_registry::Result<bool> {
        self.inner.contains(digest)
    }
    fn list(&self) -> infergate_registry::Result<Vec<(String, u64)>> {
        self.inner.list()
    }
    fn delete(&self, digest: &str) -> infergate_registry::Result<()> {
        self.inner.delete(digest)
    }
}

#[test]
fn a_store_that_fails_writes_records_no_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = |fail_at| FailingStore {
        inner: FsStore::new(dir.path().join("artifacts")).unwrap(),
        writes: AtomicUsize::new(0),
        fail_at,
    };
    // An ONNX graph with a safetensors companion: the first write succeeds, the second fails.
    let reg = Registry::with_store(dir.path(), Box::new(store(2))).unwrap();
    let err = reg.register(version(&[b"graph", b"weights"])).unwrap_err();
    assert!(err.to_string().contains("no space left"), "{err}");
    assert!(matches!(
        reg.resolve("m", "1"),
        Err(RegistryError::UnknownModel(_))
    ));
    assert!(reg.audit(None).unwrap().is_empty());
    drop(reg);

    // With a healthy store the same version registers as number 1: nothing was half-recorded.
    let reg = Registry::with_store(dir.path(), Box::new(store(usize::MAX))).unwrap();
    let v = reg.register(version(&[b"graph", b"weights"])).unwrap();
    assert_eq!(v.version, 1);
    assert_eq!(reg.verify().unwrap().failures.len(), 0);
}

/// Holds an exclusive write lock on the registry database from another connection, as a
/// stuck writer in another process would, until the returned sender is dropped.
fn lock_database(dir: &std::path::Path) -> std::sync::mpsc::Sender<()> {
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (locked, is_locked) = std::sync::mpsc::channel();
    let path = dir.join("registry.db");
    std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.execute_batch("BEGIN EXCLUSIVE; INSERT INTO audit (at, actor, action, model, detail) VALUES (0, 'x', 'x', 'x', 'x');")
            .unwrap();
        locked.send(()).unwrap();
        let _ = released.recv();
        conn.execute_batch("ROLLBACK").unwrap();
    });
    is_locked.recv().unwrap();
    release
}

#[test]
fn a_locked_database_makes_writers_wait_then_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(dir.path()).unwrap();
    reg.register(version(&[b"one"])).unwrap();
    reg.set_busy_timeout(Duration::from_millis(300)).unwrap();

    // Locked for longer than the busy timeout: the write fails after waiting, with the cause.
    let release = lock_database(dir.path());
    let started = Instant::now();
    let err = reg.register(version(&[b"two"])).unwrap_err();
    let waited = started.elapsed();
    assert!(err.to_string().contains("database is locked"), "{err}");
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    // Reads still work (WAL readers do not wait for the writer).
    assert_eq!(reg.resolve("m", "1").unwrap().version, 1);

    // Locked for less than the busy timeout: the writer waits and succeeds.
    reg.set_busy_timeout(Duration::from_secs(10)).unwrap();
    let unlock_later = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop(release);
    });
    let v = reg.register(version(&[b"two"])).unwrap();
    unlock_later.join().unwrap();
    assert_eq!(
        v.version, 2,
        "the failed attempt must not have used a number"
    );
    assert_eq!(reg.versions("m").unwrap().len(), 2);
}
