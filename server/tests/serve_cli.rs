//! `infergate serve` as users start it: a separate process, configured by the environment.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

/// Starts `infergate serve` on the demo repository with `env`, returns its "serving" line and
/// stops it.
fn serving_line(env: &[(&str, &str)]) -> String {
    let repository = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/repository");
    let mut child = Command::new(env!("CARGO_BIN_EXE_infergate"))
        .args(["serve", "--model-repository", repository])
        .args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
        .args(["--admin-addr", "127.0.0.1:0", "--insecure-admin"])
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let line = stdout
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("infergate serving:"));
    child.kill().unwrap();
    child.wait().unwrap();
    line.expect("the server printed its serving line")
}

fn workers(line: &str) -> usize {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("workers="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no workers= in {line:?}"))
}

#[test]
fn server_worker_threads_sizes_the_runtime() {
    let line = serving_line(&[("INFERGATE_SERVER__WORKER_THREADS", "3")]);
    assert_eq!(workers(&line), 3, "{line}");
    // 0, the default: one per CPU core the process may use.
    let line = serving_line(&[("INFERGATE_SERVER__WORKER_THREADS", "0")]);
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(workers(&line), cores, "{line}");
}
