//! Content-addressed artifact storage: blobs named by their sha256, written atomically and
//! verified on every read.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{RegistryError, Result};

/// The lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The lowercase hex sha256 of a file, read in a stream (model files can be large).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    std::io::copy(&mut fs::File::open(path)?, &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Where artifacts live. The filesystem store is the default; object storage implements the
/// same five operations.
pub trait ArtifactStore: Send + Sync + std::fmt::Debug {
    /// Stores `bytes` under their digest (a no-op when already present) and returns the digest.
    fn put(&self, bytes: &[u8]) -> Result<String>;
    /// Reads the blob stored under `digest` without checking it.
    fn get_unverified(&self, digest: &str) -> Result<Vec<u8>>;
    /// Whether a blob is stored under `digest`.
    fn contains(&self, digest: &str) -> Result<bool>;
    /// Every stored digest with its age in seconds.
    fn list(&self) -> Result<Vec<(String, u64)>>;
    /// Removes the blob stored under `digest`.
    fn delete(&self, digest: &str) -> Result<()>;

    /// Reads the blob stored under `digest` and checks its size and hash, so a corrupted or
    /// truncated artifact is refused.
    fn get(&self, digest: &str, size: u64) -> Result<Vec<u8>> {
        let bytes = self.get_unverified(digest)?;
        if bytes.len() as u64 != size {
            return Err(RegistryError::Corrupt {
                digest: digest.to_owned(),
                reason: format!("size is {} bytes, recorded {size}", bytes.len()),
            });
        }
        let actual = sha256_hex(&bytes);
        if actual != digest {
            return Err(RegistryError::Corrupt {
                digest: digest.to_owned(),
                reason: format!("content hashes to sha256:{actual}"),
            });
        }
        Ok(bytes)
    }
}

/// Blobs under `<root>/sha256/<first two hex digits>/<digest>`.
#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
}

impl FsStore {
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        fs::create_dir_all(root.join("tmp")).map_err(|e| RegistryError::io(&root, e))?;
        Ok(Self { root })
    }

    /// The file holding `digest`.
    pub fn path(&self, digest: &str) -> Result<PathBuf> {
        check_digest(digest)?;
        Ok(self.root.join("sha256").join(&digest[..2]).join(digest))
    }
}

pub(crate) fn check_digest(digest: &str) -> Result<()> {
    if digest.len() == 64
        && digest
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        Ok(())
    } else {
        Err(RegistryError::invalid(
            "digest",
            format!("'{digest}' is not 64 lowercase hex digits"),
        ))
    }
}

impl ArtifactStore for FsStore {
    fn put(&self, bytes: &[u8]) -> Result<String> {
        let digest = sha256_hex(bytes);
        let path = self.path(&digest)?;
        if path.exists() {
            return Ok(digest);
        }
        let dir = path.parent().expect("blob paths have a parent");
        fs::create_dir_all(dir).map_err(|e| RegistryError::io(dir, e))?;
        // Write beside the target and rename: readers see the whole blob or none, and two
        // writers of the same content both succeed.
        let tmp = self.root.join("tmp");
        let mut file =
            tempfile::NamedTempFile::new_in(&tmp).map_err(|e| RegistryError::io(&tmp, e))?;
        file.write_all(bytes)
            .and_then(|()| file.as_file().sync_all())
            .map_err(|e| RegistryError::io(file.path(), e))?;
        file.persist(&path)
            .map_err(|e| RegistryError::io(&path, e.error))?;
        Ok(digest)
    }

    fn get_unverified(&self, digest: &str) -> Result<Vec<u8>> {
        let path = self.path(digest)?;
        fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => RegistryError::MissingArtifact(digest.to_owned()),
            _ => RegistryError::io(&path, e),
        })
    }

    fn contains(&self, digest: &str) -> Result<bool> {
        Ok(self.path(digest)?.exists())
    }

    fn list(&self) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        let top = self.root.join("sha256");
        let Ok(dirs) = fs::read_dir(&top) else {
            return Ok(out);
        };
        for dir in dirs {
            let dir = dir.map_err(|e| RegistryError::io(&top, e))?;
            for entry in fs::read_dir(dir.path()).map_err(|e| RegistryError::io(dir.path(), e))? {
                let entry = entry.map_err(|e| RegistryError::io(dir.path(), e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if check_digest(&name).is_err() {
                    continue;
                }
                let age = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .map_or(0, |d| d.as_secs());
                out.push((name, age));
            }
        }
        out.sort();
        Ok(out)
    }

    fn delete(&self, digest: &str) -> Result<()> {
        let path = self.path(digest)?;
        fs::remove_file(&path).map_err(|e| RegistryError::io(&path, e))
    }
}

/// Reads a file, for imports.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| RegistryError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_known_input() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn corrupted_and_truncated_blobs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path()).unwrap();
        let digest = store.put(b"model weights").unwrap();
        assert_eq!(store.get(&digest, 13).unwrap(), b"model weights");

        let path = store.path(&digest).unwrap();
        fs::write(&path, b"model weighTs").unwrap();
        let err = store.get(&digest, 13).unwrap_err().to_string();
        assert!(
            err.contains("failed verification") && err.contains("hashes to"),
            "{err}"
        );

        fs::write(&path, b"model").unwrap();
        let err = store.get(&digest, 13).unwrap_err().to_string();
        assert!(err.contains("size is 5 bytes, recorded 13"), "{err}");

        fs::remove_file(&path).unwrap();
        let err = store.get(&digest, 13).unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
        assert!(store.get("../../etc/passwd", 1).is_err());
    }
}
