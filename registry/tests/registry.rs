//! One behavioural suite, run against both kinds of registry: SQLite and a filesystem store in a
//! temporary directory (`sqlite_fs::…`), and PostgreSQL with S3-compatible object storage, real
//! servers on loopback (`postgres_s3::…`, run by `make test` through
//! `scripts/with_services.sh`).

use std::collections::BTreeMap;
use std::path::Path;

use infergate_registry::{
    ArtifactKind, GateRules, Lineage, NewArtifact, NewVersion, PLATFORM_ONNX, Registry,
    RegistryError, RegistryLocation, sha256_hex, testing,
};

/// Where a test's registry lives: every handle opened from it is the same registry, as
/// separate processes (servers, CLI, trainer) are.
trait Backend {
    fn open(&self) -> Registry;
    /// Replaces the stored bytes of a blob behind the registry's back.
    fn overwrite_blob(&self, digest: &str, bytes: &[u8]);
}

/// SQLite and the filesystem store in a temporary directory.
struct Local(tempfile::TempDir);

impl Local {
    fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }
}

impl Backend for Local {
    fn open(&self) -> Registry {
        Registry::open(self.0.path()).unwrap()
    }

    fn overwrite_blob(&self, digest: &str, bytes: &[u8]) {
        let path = self
            .0
            .path()
            .join("artifacts/sha256")
            .join(&digest[..2])
            .join(digest);
        std::fs::write(path, bytes).unwrap();
    }
}

/// A fresh PostgreSQL database and a fresh prefix of the S3 bucket, per test.
struct Remote {
    location: RegistryLocation,
    prefix: String,
}

impl Remote {
    fn new() -> Self {
        let (location, prefix) = testing::remote_location();
        Self { location, prefix }
    }
}

impl Backend for Remote {
    fn open(&self) -> Registry {
        Registry::connect(&self.location).unwrap()
    }

    /// Through the S3 API itself, as another (faulty) writer would.
    fn overwrite_blob(&self, digest: &str, bytes: &[u8]) {
        use object_store::ObjectStoreExt as _;
        let mut builder = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(testing::env("REGISTRY_TEST_S3_BUCKET"));
        for (k, v) in testing::s3_options() {
            builder = builder.with_config(k.parse().unwrap(), v);
        }
        let store = builder.build().unwrap();
        let key = object_store::path::Path::from(format!(
            "{}/sha256/{}/{digest}",
            self.prefix,
            &digest[..2]
        ));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime
            .block_on(store.put(&key, bytes.to_vec().into()))
            .unwrap();
    }
}

/// Every behaviour below, once per backend.
macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        mod sqlite_fs {
            $(#[test]
            fn $test() {
                super::$test(&super::Local::new());
            })*
        }

        mod postgres_s3 {
            $(#[test]
            #[ignore = "needs PostgreSQL and S3 servers: make test runs it through scripts/with_services.sh"]
            fn $test() {
                super::$test(&super::Remote::new());
            })*
        }
    };
}

suite!(
    versions_are_numbered_in_registration_order_and_resolved_by_alias,
    import_reads_the_signature_from_the_onnx_file,
    corrupted_and_truncated_artifacts_are_refused_and_reported_by_verify,
    concurrent_writers_never_share_a_version_number,
    alias_moves_are_atomic_and_audited,
    promotion_gates_refuse_allow_and_force,
    lineage_parent_must_exist_and_gc_removes_only_unreferenced_blobs,
);

fn version(model: &str, weights: &[u8], accuracy: Option<f64>) -> NewVersion {
    NewVersion {
        model: model.to_owned(),
        platform: PLATFORM_ONNX.to_owned(),
        artifacts: vec![NewArtifact {
            kind: ArtifactKind::Onnx,
            bytes: weights.to_vec(),
        }],
        metrics: accuracy
            .map(|a| BTreeMap::from([("accuracy".to_owned(), a)]))
            .unwrap_or_default(),
        author: "test".to_owned(),
        ..NewVersion::default()
    }
}

fn repo_model(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/repository")
        .join(path)
}

fn versions_are_numbered_in_registration_order_and_resolved_by_alias(b: &dyn Backend) {
    let reg = b.open();
    let v1 = reg.register(version("m", b"one", Some(0.9))).unwrap();
    let v2 = reg.register(version("m", b"two", Some(0.91))).unwrap();
    let other = reg.register(version("n", b"one", None)).unwrap();
    assert_eq!((v1.version, v2.version, other.version), (1, 2, 1));
    assert_eq!(v1.artifacts[0].digest, sha256_hex(b"one"));
    assert_eq!(v1.metrics["size_bytes"], 3.0);
    // The same content is stored once.
    assert_eq!(other.artifacts[0].digest, v1.artifacts[0].digest);

    assert_eq!(reg.resolve("m", "2").unwrap(), v2);
    let err = reg.resolve("m", "production").unwrap_err();
    assert!(matches!(err, RegistryError::UnknownVersion { .. }), "{err}");
    reg.set_alias("m", "production", 1, "alice").unwrap();
    assert_eq!(reg.resolve("m", "production").unwrap().version, 1);
    assert!(matches!(
        reg.resolve("zz", "1"),
        Err(RegistryError::UnknownModel(_))
    ));

    // Records survive reopening.
    drop(reg);
    let reg = b.open();
    assert_eq!(reg.resolve("m", "1").unwrap(), v1);
    let models = reg.models().unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(models[0].versions, vec![1, 2]);
    assert_eq!(models[0].aliases["production"], 1);
}

fn import_reads_the_signature_from_the_onnx_file(b: &dyn Backend) {
    let reg = b.open();
    let v = reg
        .import("iris", &repo_model("iris_mlp/1/model.onnx"), "bob")
        .unwrap();
    assert_eq!(v.version, 1);
    assert_eq!(v.platform, PLATFORM_ONNX);
    let input = &v.signature.inputs[0];
    assert_eq!(
        (input.name.as_str(), input.datatype.as_str()),
        ("input", "FP32")
    );
    assert_eq!(input.shape, vec![-1, 4]);
    let output = &v.signature.outputs[0];
    assert_eq!(
        (output.name.as_str(), output.shape.as_slice()),
        ("probabilities", &[-1, 3][..])
    );
    let bytes = std::fs::read(repo_model("iris_mlp/1/model.onnx")).unwrap();
    assert_eq!(v.artifacts[0].digest, sha256_hex(&bytes));
    assert_eq!(reg.read_artifact(&v.artifacts[0]).unwrap(), bytes);

    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, b"\x08\x01 not a model").unwrap();
    let err = reg.import("iris", &junk, "bob").unwrap_err().to_string();
    assert!(
        err.contains("neither an ONNX model nor a safetensors file"),
        "{err}"
    );
}

fn corrupted_and_truncated_artifacts_are_refused_and_reported_by_verify(b: &dyn Backend) {
    let reg = b.open();
    let v = reg.register(version("m", b"0123456789", None)).unwrap();
    let ok = reg.register(version("m", b"intact", None)).unwrap();
    assert_eq!(reg.verify().unwrap().failures, vec![]);

    let a = &v.artifacts[0];
    b.overwrite_blob(&a.digest, b"01234");
    let err = reg.read_artifact(a).unwrap_err().to_string();
    assert!(err.contains("size is 5 bytes, recorded 10"), "{err}");
    b.overwrite_blob(&a.digest, b"0123456780");
    let err = reg.read_artifact(a).unwrap_err().to_string();
    assert!(err.contains("failed verification"), "{err}");

    let report = reg.verify().unwrap();
    assert_eq!(report.checked, 2);
    assert_eq!(report.failures.len(), 1);
    assert_eq!(report.failures[0].0, "m:1 onnx");
    assert!(reg.read_artifact(&ok.artifacts[0]).is_ok());
}

fn concurrent_writers_never_share_a_version_number(b: &dyn Backend) {
    // One handle (one database connection) per writer, as separate processes have.
    let handles: Vec<Registry> = (0..4).map(|_| b.open()).collect();
    let mut all: Vec<u32> = std::thread::scope(|s| {
        let threads: Vec<_> = handles
            .iter()
            .enumerate()
            .map(|(t, reg)| {
                s.spawn(move || {
                    (0..10)
                        .map(|i| {
                            reg.register(version("m", format!("{t}-{i}").as_bytes(), None))
                                .unwrap()
                                .version
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    });
    all.sort_unstable();
    assert_eq!(all, (1..=40).collect::<Vec<_>>());
    let reg = b.open();
    assert_eq!(reg.verify().unwrap().checked, 40);
    assert_eq!(reg.audit(Some("m")).unwrap().len(), 40);
}

fn alias_moves_are_atomic_and_audited(b: &dyn Backend) {
    let reg = b.open();
    for w in [b"a", b"b", b"c"] {
        reg.register(version("m", w, None)).unwrap();
    }
    assert_eq!(reg.set_alias("m", "staging", 1, "alice").unwrap(), None);
    assert_eq!(reg.set_alias("m", "staging", 3, "bob").unwrap(), Some(1));
    assert!(reg.set_alias("m", "staging", 9, "bob").is_err());
    assert!(reg.set_alias("m", "42", 1, "bob").is_err());
    assert!(reg.set_alias("m", "bad name", 1, "bob").is_err());
    assert_eq!(reg.aliases("m").unwrap()["staging"], 3);
    assert_eq!(reg.remove_alias("m", "staging", "carol").unwrap(), Some(3));
    assert!(reg.aliases("m").unwrap().is_empty());

    let log: Vec<_> = reg
        .audit(Some("m"))
        .unwrap()
        .into_iter()
        .filter(|e| e.action.starts_with("alias"))
        .map(|e| {
            (
                e.actor,
                e.action,
                e.detail["from"].clone(),
                e.detail["to"].clone(),
            )
        })
        .collect();
    assert_eq!(
        log,
        vec![
            (
                "alice".into(),
                "alias".into(),
                serde_json::Value::Null,
                1.into()
            ),
            ("bob".into(), "alias".into(), 1.into(), 3.into()),
            (
                "carol".into(),
                "alias.remove".into(),
                3.into(),
                serde_json::Value::Null
            ),
        ]
    );
}

fn promotion_gates_refuse_allow_and_force(b: &dyn Backend) {
    let reg = b.open();
    reg.register(version("m", b"v1", Some(0.90))).unwrap();
    reg.register(version("m", b"v2", Some(0.88))).unwrap();
    reg.register(version("m", b"v3", Some(0.897))).unwrap();
    reg.register(version("m", b"v4", None)).unwrap();

    // Nothing holds the alias yet: the default rules (at most half a point worse) pass.
    assert_eq!(
        reg.promote("m", 1, "production", false, "ci")
            .unwrap()
            .previous,
        None
    );
    let err = reg.promote("m", 2, "production", false, "ci").unwrap_err();
    let RegistryError::GateRefused { reasons, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(
        reasons,
        &["accuracy 0.8800 is more than 0.0050 below version 1 (0.9000)"]
    );
    let err = reg
        .promote("m", 4, "production", false, "ci")
        .unwrap_err()
        .to_string();
    assert!(err.contains("version 4 has no recorded accuracy"), "{err}");
    assert_eq!(reg.resolve("m", "production").unwrap().version, 1);

    // Within the margin.
    assert_eq!(
        reg.promote("m", 3, "production", false, "ci")
            .unwrap()
            .previous,
        Some(1)
    );

    // Tighter rules from the model's owner.
    let rules = GateRules {
        max_drop: None,
        min_value: Some(0.95),
        max_size_bytes: Some(1),
        ..GateRules::default()
    };
    reg.set_gate("m", &rules, "owner").unwrap();
    assert_eq!(reg.gate("m").unwrap(), rules);
    let err = reg
        .promote("m", 1, "production", false, "ci")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("accuracy 0.9000 is below the minimum 0.9500"),
        "{err}"
    );
    assert!(
        err.contains("serving artifact is 2 bytes, over the bound of 1"),
        "{err}"
    );

    // --force moves it and records what was overridden.
    let p = reg.promote("m", 1, "production", true, "oncall").unwrap();
    assert_eq!(p.previous, Some(3));
    assert_eq!(p.overridden.len(), 2);
    let log = reg.audit(Some("m")).unwrap();
    let actions: Vec<_> = log
        .iter()
        .filter(|e| e.action.starts_with("promote"))
        .map(|e| e.action.as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "promote",
            "promote.refused",
            "promote.refused",
            "promote",
            "promote.refused",
            "promote.forced"
        ]
    );
    let forced = log.last().unwrap();
    assert_eq!(forced.actor, "oncall");
    assert_eq!(forced.detail["overridden"].as_array().unwrap().len(), 2);
}

fn lineage_parent_must_exist_and_gc_removes_only_unreferenced_blobs(b: &dyn Backend) {
    let reg = b.open();
    let mut child = version("m", b"child", None);
    child.lineage = Lineage {
        parent: Some(1),
        ..Lineage::default()
    };
    let err = reg.register(child.clone()).unwrap_err().to_string();
    assert!(
        err.contains("parent version 1 of 'm' does not exist"),
        "{err}"
    );
    // The failed registration left its blob behind; gc finds it once the grace period passes.
    let report = reg.gc(3600, false).unwrap();
    assert_eq!((report.removed.len(), report.kept_young), (0, 1));
    reg.register(version("m", b"parent", None)).unwrap();
    let report = reg.gc(0, true).unwrap();
    assert_eq!(report.removed, vec![sha256_hex(b"child")]);
    let report = reg.gc(0, false).unwrap();
    assert_eq!((report.removed.len(), report.bytes), (1, 5));
    assert_eq!(reg.gc(0, false).unwrap().removed.len(), 0);
    assert_eq!(reg.verify().unwrap().failures, vec![]);
    let v = reg.register(child).unwrap();
    assert_eq!(v.lineage.parent, Some(1));
}
