//! Where `libonnxruntime` comes from, in order: the config key, `ORT_DYLIB_PATH`, the repo's
//! `.ort/` folder (filled by `make ort`), an installed Python `onnxruntime` package.

use std::path::{Path, PathBuf};

use crate::RuntimeError;

/// File name of the supported ONNX Runtime library.
pub const LIBRARY_FILE: &str = "libonnxruntime.so.1.31.1";
/// The git-ignored folder `make ort` installs the library into.
pub const INSTALL_DIR: &str = ".ort";

/// Finds the library. `configured` is the config key, `env` the value of `ORT_DYLIB_PATH`
/// (domain crates never read the environment themselves).
pub fn discover(configured: Option<&Path>, env: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    let mut tried = Vec::new();
    for (origin, path) in [
        ("runtime.ort_dylib_path", configured),
        ("ORT_DYLIB_PATH", env),
    ] {
        if let Some(path) = path {
            if path.is_file() {
                return Ok(path.to_path_buf());
            }
            return Err(RuntimeError::OrtNotFound(format!(
                "{origin} is set to {}, which is not a file",
                path.display()
            )));
        }
    }
    for dir in install_dir_candidates() {
        let candidate = dir.join(LIBRARY_FILE);
        if candidate.is_file() {
            return Ok(candidate);
        }
        tried.push(candidate.display().to_string());
    }
    if let Some(found) = python_onnxruntime() {
        return Ok(found);
    }
    tried.push("python3 -c 'import onnxruntime'".into());
    Err(RuntimeError::OrtNotFound(format!(
        "ONNX Runtime shared library not found (looked in: {}). Install it with `make ort` \
         (unpacks {LIBRARY_FILE} from the PyPI wheel onnxruntime==1.31.1 into .ort/), or \
         `pip install onnxruntime==1.31.1`, or point ORT_DYLIB_PATH or runtime.ort_dylib_path \
         at a libonnxruntime.so of version 1.31 or newer",
        tried.join(", ")
    )))
}

/// `.ort/` in the working directory and its ancestors, beside the executable and its
/// ancestors (a `target/release` binary finds the repo's folder), and the source checkout.
fn install_dir_candidates() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        dirs.extend(cwd.ancestors().map(|d| d.join(INSTALL_DIR)));
    }
    if let Ok(exe) = std::env::current_exe() {
        dirs.extend(exe.ancestors().skip(1).map(|d| d.join(INSTALL_DIR)));
    }
    dirs.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(INSTALL_DIR),
    );
    dirs.dedup();
    dirs
}

fn python_onnxruntime() -> Option<PathBuf> {
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            "import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let capi = PathBuf::from(String::from_utf8(output.stdout).ok()?.trim()).join("capi");
    std::fs::read_dir(&capi)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so"))
        })
        .max()
}
