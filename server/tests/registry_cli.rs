//! `infergate registry …` as users run it: separate processes against one registry.

use std::path::Path;
use std::process::{Command, Output};

fn infergate(registry: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_infergate"))
        .arg("registry")
        .arg("--registry")
        .arg(registry)
        .args(["--author", "tester"])
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn iris(version: u32) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!(
            "../models/repository/iris_mlp/{version}/model.onnx"
        ))
        .display()
        .to_string()
}

#[test]
fn concurrent_processes_import_without_collisions_or_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let files = [iris(1), iris(2)];
    // Four processes at a time, three rounds: twelve imports racing on one database.
    for _ in 0..3 {
        let children: Vec<_> = (0..4)
            .map(|i| {
                Command::new(env!("CARGO_BIN_EXE_infergate"))
                    .args(["registry", "--registry"])
                    .arg(dir.path())
                    .args(["import", "--name", "iris", &files[i % 2]])
                    .output_async()
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let list = stdout(&infergate(dir.path(), &["list"]));
    assert_eq!(
        list.trim(),
        "iris  versions: 1,2,3,4,5,6,7,8,9,10,11,12  aliases: -"
    );
    let verify = stdout(&infergate(dir.path(), &["verify"]));
    assert!(
        verify.contains("verified 12 artifacts, 0 failed"),
        "{verify}"
    );
    // Two distinct files, stored once each.
    let blobs = walk(&dir.path().join("artifacts/sha256"));
    assert_eq!(blobs, 2);
}

fn walk(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| if p.is_dir() { walk(&p) } else { 1 })
        .sum()
}

trait SpawnOutput {
    fn output_async(&mut self) -> std::process::Child;
}

impl SpawnOutput for Command {
    fn output_async(&mut self) -> std::process::Child {
        self.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }
}

#[test]
fn promote_refuses_with_the_reason_and_force_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    stdout(&infergate(
        dir.path(),
        &["import", "--name", "iris", &iris(1)],
    ));
    stdout(&infergate(
        dir.path(),
        &["import", "--name", "iris", &iris(2)],
    ));
    // Imported files carry no metrics: a gate on accuracy cannot pass.
    let gate = stdout(&infergate(dir.path(), &["gate", "iris", "--min", "0.9"]));
    assert!(gate.contains("\"min_value\": 0.9"), "{gate}");
    let refused = infergate(dir.path(), &["promote", "iris", "2", "--to", "production"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("promotion of iris version 2 to 'production' refused: version 2 has no recorded accuracy"), "{err}");

    let forced = stdout(&infergate(
        dir.path(),
        &["promote", "iris", "2", "--to", "production", "--force"],
    ));
    assert!(
        forced.contains("iris: production -> 2 (was unset)"),
        "{forced}"
    );
    assert!(
        forced.contains("forced past gate: version 2 has no recorded accuracy"),
        "{forced}"
    );
    let moved = stdout(&infergate(
        dir.path(),
        &["alias", "iris", "production", "1"],
    ));
    assert!(moved.contains("production -> 1 (was 2)"), "{moved}");

    let audit = stdout(&infergate(dir.path(), &["audit", "iris"]));
    let actions: Vec<&str> = audit
        .lines()
        .map(|l| l.split(' ').nth(2).unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "register",
            "register",
            "gate",
            "promote.refused",
            "promote.forced",
            "alias"
        ]
    );
    assert!(
        audit.lines().all(|l| l.split(' ').nth(1) == Some("tester")),
        "{audit}"
    );

    let show = stdout(&infergate(dir.path(), &["show", "iris"]));
    assert!(show.contains("v1 onnxruntime_onnx [production]"), "{show}");
    let one = stdout(&infergate(dir.path(), &["show", "iris", "production"]));
    let record: serde_json::Value = serde_json::from_str(&one).unwrap();
    assert_eq!(record["version"], 1);
    assert_eq!(record["signature"]["inputs"][0]["name"], "input");
}

#[test]
fn verify_fails_on_a_corrupted_artifact_and_gc_keeps_referenced_blobs() {
    let dir = tempfile::tempdir().unwrap();
    stdout(&infergate(
        dir.path(),
        &["import", "--name", "iris", &iris(1)],
    ));
    let blob_dir = dir.path().join("artifacts/sha256");
    let sub = std::fs::read_dir(&blob_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let blob = std::fs::read_dir(&sub)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let gc = stdout(&infergate(dir.path(), &["gc", "--grace-secs", "0"]));
    assert!(gc.starts_with("0 artifacts, 0 bytes freed"), "{gc}");
    std::fs::write(&blob, b"garbage").unwrap();
    let out = infergate(dir.path(), &["verify"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("FAILED iris:1 onnx") && text.contains("size is 7 bytes"),
        "{text}"
    );
}
