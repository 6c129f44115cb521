//! Artifacts in S3-compatible object storage (`object_store`), under
//! `<prefix>/sha256/<first two hex digits>/<digest>` like the filesystem store. Many servers
//! and registry clients share one bucket; a PUT is atomic, so readers see a whole blob or none.

use std::sync::Arc;

use futures::TryStreamExt as _;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};

use crate::store::{ArtifactStore, check_digest, sha256_hex};
use crate::{RegistryError, Result};

/// Where the artifacts of an object-storage registry live, and how to reach them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObjectStoreConfig {
    /// `s3://bucket/prefix`.
    pub url: String,
    /// Settings of `object_store`'s S3 client by name: `endpoint`, `region`, `allow_http`,
    /// `access_key_id`, `secret_access_key`, … (the `aws_` names of its `AmazonS3ConfigKey`).
    pub options: Vec<(String, String)>,
}

/// See the module documentation.
pub struct ObjectStoreArtifacts {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    url: String,
    /// Always present; taken on drop.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for ObjectStoreArtifacts {
    /// Without waiting: a runtime may not block while being dropped inside another one.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl std::fmt::Debug for ObjectStoreArtifacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ObjectStoreArtifacts({})", self.url)
    }
}

fn object_error(url: &str, e: impl std::fmt::Display) -> RegistryError {
    RegistryError::ObjectStore(format!("{url}: {e}"))
}

impl ObjectStoreConfig {
    /// `options` (names with or without the `aws_` prefix), completed by the `AWS_…` variables
    /// of `env` that the S3 client knows, as `object_store`'s `from_env` would.
    pub fn new(
        url: &str,
        options: &std::collections::BTreeMap<String, String>,
        env: &[(String, String)],
    ) -> Self {
        let name = |key: &str| {
            let key = key.to_ascii_lowercase();
            if key.starts_with("aws_") {
                key
            } else {
                format!("aws_{key}")
            }
        };
        let mut merged: std::collections::BTreeMap<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with("AWS_"))
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .filter(|(k, _)| k.parse::<object_store::aws::AmazonS3ConfigKey>().is_ok())
            .collect();
        merged.extend(options.iter().map(|(k, v)| (name(k), v.clone())));
        Self {
            url: url.to_owned(),
            options: merged.into_iter().collect(),
        }
    }
}

impl ObjectStoreArtifacts {
    pub fn new(config: &ObjectStoreConfig) -> Result<Self> {
        // TLS for https endpoints: rustls with ring, as everywhere in infergate.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = config.url.clone();
        let (bucket, prefix) = url
            .strip_prefix("s3://")
            .map(|rest| rest.split_once('/').unwrap_or((rest, "")))
            .filter(|(bucket, _)| !bucket.is_empty())
            .ok_or_else(|| {
                RegistryError::invalid(
                    "artifact store",
                    format!("'{url}' is not s3://bucket/prefix"),
                )
            })?;
        let mut builder = object_store::aws::AmazonS3Builder::new().with_bucket_name(bucket);
        for (key, value) in &config.options {
            let key = key.to_ascii_lowercase();
            let name = if key.starts_with("aws_") {
                key
            } else {
                format!("aws_{key}")
            };
            let parsed = name.parse().map_err(|e| {
                RegistryError::invalid("artifact store option", format!("{name}: {e}"))
            })?;
            builder = builder.with_config(parsed, value);
        }
        let store = builder.build().map_err(|e| object_error(&url, e))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| RegistryError::io("object store runtime", e))?;
        Ok(Self {
            store: Arc::new(store),
            prefix: ObjectPath::from(prefix.trim_matches('/')),
            url,
            runtime: Some(runtime),
        })
    }

    fn key(&self, digest: &str) -> Result<ObjectPath> {
        check_digest(digest)?;
        Ok(self.root().join(&digest[..2]).join(digest))
    }

    fn root(&self) -> ObjectPath {
        self.prefix.clone().join("sha256")
    }

    fn block<T: Send>(&self, f: impl Future<Output = Result<T>> + Send) -> Result<T> {
        let runtime = self.runtime.as_ref().expect("present until drop");
        crate::sync::off_runtime(|| runtime.block_on(f))
    }
}

impl ArtifactStore for ObjectStoreArtifacts {
    fn put(&self, bytes: &[u8]) -> Result<String> {
        let digest = sha256_hex(bytes);
        let key = self.key(&digest)?;
        if self.contains(&digest)? {
            return Ok(digest);
        }
        let payload = PutPayload::from(bytes.to_vec());
        self.block(async {
            self.store
                .put(&key, payload)
                .await
                .map_err(|e| object_error(&self.url, e))
        })?;
        Ok(digest)
    }

    fn get_unverified(&self, digest: &str) -> Result<Vec<u8>> {
        let key = self.key(digest)?;
        self.block(async {
            match self.store.get(&key).await {
                Ok(found) => Ok(found
                    .bytes()
                    .await
                    .map_err(|e| object_error(&self.url, e))?
                    .to_vec()),
                Err(object_store::Error::NotFound { .. }) => {
                    Err(RegistryError::MissingArtifact(digest.to_owned()))
                }
                Err(e) => Err(object_error(&self.url, e)),
            }
        })
    }

    fn contains(&self, digest: &str) -> Result<bool> {
        let key = self.key(digest)?;
        self.block(async {
            match self.store.head(&key).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(object_error(&self.url, e)),
            }
        })
    }

    fn list(&self) -> Result<Vec<(String, u64)>> {
        let root = self.root();
        let metas: Vec<object_store::ObjectMeta> = self.block(async {
            self.store
                .list(Some(&root))
                .try_collect()
                .await
                .map_err(|e| object_error(&self.url, e))
        })?;
        let now = std::time::SystemTime::now();
        let mut out: Vec<(String, u64)> = metas
            .into_iter()
            .filter_map(|meta| {
                let name = meta.location.filename()?.to_owned();
                check_digest(&name).ok()?;
                let modified = std::time::SystemTime::from(meta.last_modified);
                let age = now.duration_since(modified).map_or(0, |d| d.as_secs());
                Some((name, age))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    fn delete(&self, digest: &str) -> Result<()> {
        let key = self.key(digest)?;
        self.block(async {
            self.store
                .delete(&key)
                .await
                .map_err(|e| object_error(&self.url, e))
        })
    }
}
