//! A registry written by an older build opens in this one: every record reads back as written,
//! and the registry takes new versions, gates and audit entries where the old one left off.

use std::collections::BTreeMap;

use infergate_registry::{
    ArtifactKind, NewArtifact, NewVersion, PLATFORM_ONNX, Registry, RegistryError, sha256_hex,
};

/// The fixture's two artifacts, in version order.
const BLOBS: [&[u8]; 2] = [b"iris weights one", b"iris weights two (int8)"];

/// A directory holding the fixture's database and the blobs it names.
fn old_registry() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let dump = include_str!("fixtures/registry_schema1.sql");
    rusqlite::Connection::open(dir.path().join("registry.db"))
        .unwrap()
        .execute_batch(dump)
        .unwrap();
    for bytes in BLOBS {
        let digest = sha256_hex(bytes);
        let folder = dir.path().join("artifacts/sha256").join(&digest[..2]);
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join(&digest), bytes).unwrap();
    }
    dir
}

#[test]
fn a_schema_1_registry_reads_back_as_written() {
    let dir = old_registry();
    let reg = Registry::open(dir.path()).unwrap();

    let versions = reg.versions("iris").unwrap();
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        [1, 2]
    );
    let (one, two) = (&versions[0], &versions[1]);
    assert_eq!(one.artifacts[0].digest, sha256_hex(BLOBS[0]));
    assert_eq!(one.artifacts[0].size, 16);
    assert_eq!(one.metrics["accuracy"], 0.93);
    assert_eq!(one.lineage.dataset.as_deref(), Some("iris.csv"));
    assert_eq!(one.lineage.code_version.as_deref(), Some("abc123"));
    assert_eq!(one.signature.inputs[0].shape, [-1, 4]);
    assert_eq!(two.lineage.parent, Some(1));
    assert_eq!(two.lineage.quantization.as_deref(), Some("int8-dynamic"));
    assert_eq!(two.created_at, 1_795_363_447_353);
    assert_eq!(
        reg.read_artifact(two.serving_artifact().unwrap()).unwrap(),
        BLOBS[1]
    );

    assert_eq!(
        reg.aliases("iris").unwrap(),
        BTreeMap::from([("production".into(), 2), ("staging".into(), 2)])
    );
    assert_eq!(reg.resolve("iris", "production").unwrap().version, 2);
    assert_eq!(reg.gate("iris").unwrap().max_drop, Some(0.02));
    let audit = reg.audit(Some("iris")).unwrap();
    let actions: Vec<_> = audit.iter().map(|a| (a.id, a.action.as_str())).collect();
    assert_eq!(
        actions,
        [
            (1, "register"),
            (2, "register"),
            (3, "gate"),
            (4, "promote"),
            (5, "alias"),
            (6, "promote")
        ]
    );
    assert_eq!(audit[5].detail["from"], 1);

    let report = reg.verify().unwrap();
    assert_eq!((report.checked, report.failures.len()), (2, 0));
}

#[test]
fn a_schema_1_registry_goes_on_where_it_left_off() {
    let dir = old_registry();
    let reg = Registry::open(dir.path()).unwrap();
    let new = |bytes: &[u8], accuracy: f64| NewVersion {
        model: "iris".into(),
        platform: PLATFORM_ONNX.into(),
        artifacts: vec![NewArtifact {
            kind: ArtifactKind::Onnx,
            bytes: bytes.to_vec(),
        }],
        metrics: BTreeMap::from([("accuracy".into(), accuracy)]),
        author: "trainer".into(),
        ..NewVersion::default()
    };

    let three = reg.register(new(b"iris weights three", 0.95)).unwrap();
    assert_eq!(three.version, 3);
    // The old gate still rules: more than 0.02 below production (0.92) is refused.
    let four = reg.register(new(b"iris weights four", 0.80)).unwrap();
    match reg.promote("iris", 4, "production", false, "ops") {
        Err(RegistryError::GateRefused { version: 4, .. }) => {}
        other => panic!("the old gate let version 4 through: {other:?}"),
    }
    let promoted = reg.promote("iris", 3, "production", false, "ops").unwrap();
    assert_eq!(promoted.previous, Some(2));
    assert_eq!(reg.resolve("iris", "production").unwrap().version, 3);
    assert_eq!(four.version, 4);

    // The audit numbering goes on from the old build's last entry.
    let ids: Vec<_> = reg
        .audit(Some("iris"))
        .unwrap()
        .iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(ids, (1..=10).collect::<Vec<_>>());
    // Reopened, it reads back whole.
    drop(reg);
    let reg = Registry::open(dir.path()).unwrap();
    assert_eq!(reg.versions("iris").unwrap().len(), 4);
    assert_eq!(reg.verify().unwrap().failures, vec![]);
}
