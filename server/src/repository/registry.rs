//! Loading models from the model registry, following it (hot swap), and pinning the default.

use std::collections::BTreeMap;
use std::sync::Arc;

use infergate_config::{DriftConfig, ModelConfig, ModelDefaults, RegistryVersions, RuntimeConfig};
use infergate_registry::{ArtifactKind, Registry, VersionRecord};
use infergate_runtime::candle::bert::BertFactory;
use infergate_runtime::candle::{Arch, CandleFactory};
use infergate_runtime::ort::OrtRuntime;
use infergate_runtime::text::{EmbeddingFactory, TextProcessor};
use infergate_runtime::{BackendFactory, Model, ModelOptions};

use super::{Budget, Entry, InputShapes, ModelVersion, Repository};
use crate::error::ServeError;

/// Blocking: loads every version of a registry model, each artifact verified against its
/// digest; the `production` alias (else the newest) is the default version.
pub(super) fn load_registry_model(
    (registry, which): (&Registry, RegistryVersions),
    runtime: Option<&OrtRuntime>,
    settings: Settings<'_>,
    name: &str,
) -> Entry {
    let (defaults, model_defaults, budget, drift) = settings;
    let mut entry = Entry::default();
    let (records, aliases) = match registry_state(registry, name, which) {
        Ok(found) => found,
        Err(e) => {
            entry.failures.insert(None, e);
            return entry;
        }
    };
    for record in &records {
        let version = u64::from(record.version);
        match load_registry_version(
            registry,
            runtime,
            (defaults, model_defaults, &mut *budget, drift),
            record,
        ) {
            Ok(loaded) => {
                entry.versions.insert(version, Arc::new(loaded));
            }
            Err(e) => {
                entry.failures.insert(Some(version), e);
            }
        }
    }
    entry.set_aliases(name, aliases);
    entry
}

/// A model's versions that should serve (all, or those an alias names: with none, the newest)
/// and its aliases.
fn registry_state(
    registry: &Registry,
    name: &str,
    which: RegistryVersions,
) -> Result<(Vec<VersionRecord>, BTreeMap<String, u32>), String> {
    let (mut records, aliases) = registry
        .versions(name)
        .and_then(|v| Ok((v, registry.aliases(name)?)))
        .map_err(|e| e.to_string())?;
    if which == RegistryVersions::Aliased {
        let newest = records.iter().map(|r| r.version).max();
        records.retain(|r| {
            aliases.values().any(|&v| v == r.version)
                || (aliases.is_empty() && Some(r.version) == newest)
        });
    }
    Ok((records, aliases))
}

/// What loading a registry version takes besides the registry: the runtime defaults, the
/// batching and cache defaults, what is left of the memory budget, drift detection.
pub(super) type Settings<'a> = (
    &'a RuntimeConfig,
    &'a ModelDefaults,
    &'a mut Budget,
    &'a DriftConfig,
);

/// Blocking: starts one registry version (artifacts verified) as a served version, with the
/// model config it was registered with (text models: processing, batching, cache), else the
/// defaults.
fn load_registry_version(
    registry: &Registry,
    runtime: Option<&OrtRuntime>,
    (defaults, model_defaults, budget, drift): Settings<'_>,
    record: &VersionRecord,
) -> Result<ModelVersion, String> {
    let version = u64::from(record.version);
    let size = record.artifacts.iter().map(|a| a.size).sum();
    budget
        .take(&format!("{} version {version}", record.model), size)
        .inspect_err(|why| {
            tracing::error!(model = %record.model, version, reason = %why, "registry version not loaded");
        })?;
    let config = registry_model_config(record, model_defaults)?;
    let (model, text) = start_registry_version(registry, runtime, defaults, &config, record)
        .inspect_err(|e| {
            tracing::error!(model = %record.model, version, error = %e, "registry version failed to load");
        })?;
    let digest = record
        .serving_artifact()
        .map(|a| format!("sha256:{}", a.digest))
        .unwrap_or_default();
    let instances = config.instances.unwrap_or(defaults.instances);
    let mut loaded = ModelVersion::new(&record.model, version, model, config, instances, digest);
    loaded.properties.extend(registry_properties(record));
    loaded.lineage = Some(record.lineage.clone());
    loaded.text = text;
    if let Some((image, names)) = crate::image::registry_image(&record.architecture)? {
        loaded.image = Some(crate::image::ImageModel::new(&image));
        loaded.class_names = names;
    }
    loaded.weight_bytes = size;
    if drift.enabled
        && let Some(baseline) = record.baseline.clone()
    {
        let label = version.to_string();
        loaded.drift = if loaded.text.is_some() {
            crate::drift::Drift::for_text(&record.model, &label, baseline, drift)
        } else {
            crate::drift::Drift::new(
                &record.model,
                &label,
                baseline,
                loaded.model.signature(),
                drift,
            )
        }
        .map(Arc::new);
    }
    Ok(loaded)
}

/// The model config a version was registered with (its `config.toml`, checked and filled
/// with the server's defaults as a folder's is), else the defaults of a model without one.
fn registry_model_config(
    record: &VersionRecord,
    model_defaults: &ModelDefaults,
) -> Result<ModelConfig, String> {
    match record
        .architecture
        .get(infergate_registry::MODEL_CONFIG_KEY)
    {
        None => Ok(ModelConfig::default()),
        Some(serde_json::Value::String(text)) => ModelConfig::parse_with(
            text,
            &format!("the config.toml of {}:{}", record.model, record.version),
            model_defaults,
        )
        .map_err(|e| e.to_string()),
        Some(_) => Err(format!(
            "{}:{}: the architecture's {} is not the text of a config.toml",
            record.model,
            record.version,
            infergate_registry::MODEL_CONFIG_KEY
        )),
    }
}

/// Runs requests of zeros through a new version so its first real requests do not pay for
/// lazy initialization: one per shape `recent` recorded that fits the version's signature
/// (what clients actually send, batch sizes included), else one of batch 1. Text models run one
/// short sentence; other models with BYTES inputs are not warmed up. Returns the shapes used.
async fn warm_up(
    version: &ModelVersion,
    recent: &[InputShapes],
) -> Result<Vec<InputShapes>, String> {
    let signature = version.model.signature();
    if version.text.is_some() {
        // One short sentence through tokenizer, encoder and pooling.
        let text = infergate_runtime::Tensor::from_elements(
            vec![1],
            vec![bytes::Bytes::from_static(b"warm up")],
        )
        .map_err(|e| e.to_string())?;
        let input = infergate_runtime::NamedTensor::new(infergate_runtime::text::TEXT_INPUT, text);
        version
            .model
            .infer(vec![input])
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| format!("warm-up failed: {e}"))?;
        return Ok(Vec::new());
    }
    if signature.inputs.iter().any(|s| s.dtype.size().is_none()) {
        return Ok(Vec::new());
    }
    let fits = |shape: &[(String, Vec<i64>)]| {
        shape.len() == signature.inputs.len()
            && shape.iter().all(|(name, dims)| {
                signature.input(name).is_some_and(|spec| {
                    dims.len() == spec.shape.len()
                        && dims.iter().zip(&spec.shape).all(|(&d, &w)| w < 0 || d == w)
                })
            })
    };
    let mut shapes: Vec<InputShapes> = recent.iter().filter(|s| fits(s)).cloned().collect();
    if shapes.is_empty() {
        shapes.push(
            signature
                .inputs
                .iter()
                .map(|s| (s.name.clone(), s.shape.iter().map(|&d| d.max(1)).collect()))
                .collect(),
        );
    }
    for shape in &shapes {
        let mut inputs = Vec::new();
        for (name, dims) in shape {
            let spec = signature.input(name).expect("checked by fits");
            let count = dims.iter().product::<i64>().max(0) as usize;
            let size = spec.dtype.size().expect("fixed-size inputs only");
            let tensor = infergate_runtime::Tensor::from_raw(
                spec.dtype,
                dims.clone(),
                bytes::Bytes::from(vec![0u8; count * size]),
            )
            .map_err(|e| e.to_string())?;
            inputs.push(infergate_runtime::NamedTensor::new(name.as_str(), tensor));
        }
        version
            .model
            .infer(inputs)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| format!("warm-up failed: {e}"))?;
    }
    Ok(shapes)
}

/// Which version of a model answers by default, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Defaults {
    /// What a request naming no version gets.
    pub default: Option<u64>,
    /// A version an operator pinned (it is the default then).
    pub pinned: Option<u64>,
    /// The registry's aliases of the model, as last loaded.
    pub aliases: BTreeMap<String, u32>,
}

impl Repository {
    /// Brings registry models in line with the registry (a hot swap): versions registered
    /// since are loaded, verified and warmed up before they serve; the default version follows
    /// `production`; versions already serving are kept as they are, so no request is
    /// interrupted. A version that fails to load is reported in the index (and not retried until a
    /// management load) while everything else keeps serving. Returns the models that changed,
    /// or why the registry could not be read (nothing changes then).
    pub async fn sync_registry(&self) -> Result<Vec<String>, String> {
        let Some(registry) = self.registry.clone() else {
            return Ok(Vec::new());
        };
        let _guard = self.control.lock().await;
        let reader = Arc::clone(&registry);
        let which = self.registry_versions;
        let snapshot = tokio::task::spawn_blocking(move || {
            reader.models().map(|models| {
                models
                    .into_iter()
                    .map(|m| {
                        let state = registry_state(&reader, &m.name, which);
                        (m.name, state)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .await;
        let snapshot = match snapshot {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(format!("cannot read the registry: {e}")),
            Err(e) => return Err(format!("registry reader failed: {e}")),
        };
        let mut changed = Vec::new();
        for (name, state) in snapshot {
            let Ok((records, aliases)) = state else {
                continue;
            };
            if self.root.as_ref().is_some_and(|r| r.join(&name).is_dir()) {
                continue; // served from the repository folder
            }
            let current = self.models.load().get(&name).cloned().unwrap_or_default();
            if current.unloaded {
                continue; // unloaded on purpose: a management load brings it back
            }
            let wanted: std::collections::BTreeSet<u64> =
                records.iter().map(|r| u64::from(r.version)).collect();
            let new: Vec<VersionRecord> = records
                .into_iter()
                .filter(|r| {
                    let v = u64::from(r.version);
                    !current.versions.contains_key(&v) && !current.failures.contains_key(&Some(v))
                })
                .collect();
            if new.is_empty() && current.aliases == aliases {
                continue;
            }
            let (runtime, defaults, reader) = (
                self.runtime.clone(),
                self.defaults.clone(),
                Arc::clone(&registry),
            );
            let mut budget = self.budget(None);
            let drift = self.drift.clone();
            let model_defaults = self.model_defaults.clone();
            let started = tokio::task::spawn_blocking(move || {
                new.iter()
                    .map(|r| {
                        (
                            u64::from(r.version),
                            load_registry_version(
                                &reader,
                                runtime.as_ref(),
                                (&defaults, &model_defaults, &mut budget, &drift),
                                r,
                            ),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            let mut entry = current.clone();
            for (version, result) in started {
                let result = match result {
                    Ok(mut loaded) => {
                        // The new version inherits the model's shape log, so the next one
                        // warms up with what clients sent to this one too.
                        if let Some(log) = current
                            .default_version
                            .and_then(|v| current.versions.get(&v))
                            .map(|v| Arc::clone(&v.recent_shapes))
                        {
                            loaded.recent_shapes = log;
                        }
                        match warm_up(&loaded, &loaded.recent_shapes.shapes()).await {
                            Ok(shapes) => {
                                loaded.warmed_with = shapes;
                                Ok(loaded)
                            }
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(e),
                };
                match result {
                    Ok(loaded) => {
                        tracing::info!(model = %name, version, "registry version ready");
                        entry.versions.insert(version, Arc::new(loaded));
                    }
                    Err(e) => {
                        tracing::error!(model = %name, version, error = %e, "registry version not swapped in");
                        entry.failures.insert(Some(version), e);
                    }
                }
            }
            let before = entry.default_version;
            entry.set_aliases(&name, aliases);
            if entry.default_version != before {
                if before.is_some() {
                    self.swaps
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                tracing::info!(model = %name, from = ?before, to = ?entry.default_version, "default version swapped");
            }
            if self.registry_versions == RegistryVersions::Aliased {
                // Versions no alias names any more stop serving; requests already holding them
                // finish, and the last reference frees the sessions. The default and a pin
                // stay until something replaces them.
                let keep = |v: &u64| {
                    wanted.contains(v)
                        || entry.default_version == Some(*v)
                        || entry.pinned == Some(*v)
                };
                let dropped: Vec<u64> = entry
                    .versions
                    .keys()
                    .copied()
                    .filter(|v| !keep(v))
                    .collect();
                for v in &dropped {
                    entry.versions.remove(v);
                    entry.not_default.remove(v);
                }
                entry
                    .failures
                    .retain(|v, _| v.is_none_or(|v| wanted.contains(&v)));
                if !dropped.is_empty() {
                    tracing::info!(model = %name, versions = ?dropped, "versions no alias names were dropped");
                }
            }
            self.models.rcu(|models| {
                let mut models = BTreeMap::clone(models);
                models.insert(name.clone(), entry.clone());
                models
            });
            changed.push(name);
        }
        Ok(changed)
    }

    /// Pins `version` as the model's default (over `production`), or with `None` unpins.
    pub async fn pin(&self, name: &str, version: Option<u64>) -> Result<Option<u64>, ServeError> {
        let _guard = self.control.lock().await;
        let mut entry = self
            .models
            .load()
            .get(name)
            .filter(|e| !e.unloaded)
            .cloned()
            .ok_or_else(|| ServeError::not_found(format!("model '{name}' is not loaded")))?;
        if let Some(v) = version
            && !entry.versions.contains_key(&v)
        {
            return Err(ServeError::not_found(format!(
                "model '{name}' has no serving version '{v}'"
            )));
        }
        entry.pinned = version;
        tracing::info!(model = %name, version = ?version, "default version pinned");
        self.models.rcu(|models| {
            let mut models = BTreeMap::clone(models);
            models.insert(name.to_string(), entry.clone());
            models
        });
        Ok(entry
            .pinned
            .or(entry.default_version)
            .or_else(|| entry.versions.keys().next_back().copied()))
    }

    /// Whether a registry is configured (and worth following).
    pub fn has_registry(&self) -> bool {
        self.registry.is_some()
    }

    /// The registry this repository follows, if any.
    pub fn registry(&self) -> Option<&Arc<Registry>> {
        self.registry.as_ref()
    }

    /// A loaded model's default version (what a request naming none gets), the pinned one if
    /// an operator pinned it, and its registry aliases; `None` when it is not loaded.
    pub fn defaults_of(&self, name: &str) -> Option<Defaults> {
        let models = self.models.load();
        let e = models.get(name).filter(|e| !e.unloaded)?;
        Some(Defaults {
            default: e
                .pinned
                .or(e.default_version)
                .or_else(|| e.versions.keys().next_back().copied()),
            pinned: e.pinned,
            aliases: e.aliases.clone(),
        })
    }

    /// The registry aliases pointing at `version` of `name`.
    pub fn aliases_of(&self, name: &str, version: u64) -> Vec<String> {
        self.models
            .load()
            .get(name)
            .map(|e| {
                e.aliases
                    .iter()
                    .filter(|(_, v)| u64::from(**v) == version)
                    .map(|(a, _)| a.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn start_registry_version(
    registry: &Registry,
    runtime: Option<&OrtRuntime>,
    defaults: &RuntimeConfig,
    config: &ModelConfig,
    record: &VersionRecord,
) -> Result<(Model, Option<crate::text::TextModel>), String> {
    let read = |kind: ArtifactKind| {
        let artifact = record.artifact(kind).ok_or_else(|| {
            format!(
                "{}:{} has no {} artifact",
                record.model,
                record.version,
                kind.as_str()
            )
        })?;
        let bytes = registry
            .read_artifact(artifact)
            .map_err(|e| e.to_string())?;
        let origin = format!(
            "{}:{} {} (sha256:{})",
            record.model,
            record.version,
            kind.as_str(),
            artifact.digest
        );
        Ok::<_, String>((bytes, origin))
    };
    let candle = record.platform == infergate_registry::PLATFORM_CANDLE;
    let (bytes, origin) = read(if candle {
        ArtifactKind::Safetensors
    } else {
        ArtifactKind::Onnx
    })?;
    let threads = config.intra_op_threads.unwrap_or(defaults.intra_op_threads);
    let onnx = |bytes: Vec<u8>| -> Result<Arc<dyn BackendFactory>, String> {
        let runtime = runtime.ok_or("onnx runtime is not initialized")?;
        Ok(Arc::new(
            runtime
                .load_bytes(Arc::from(bytes), &origin, threads)
                .map_err(|e| e.to_string())?,
        ))
    };
    let mut text = None;
    let factory: Arc<dyn BackendFactory> = if let Some(embedding) = &config.embedding {
        // A text model: its tokenizer artifact, and the encoder under the pooling.
        let info = crate::text::registry_transformer(&record.architecture)?;
        let (tokenizer, tokenizer_origin) = read(ArtifactKind::Tokenizer)?;
        let processor = TextProcessor::from_bytes(&tokenizer, &info, embedding, &tokenizer_origin)
            .map_err(|e| e.to_string())?;
        let encoder: Arc<dyn BackendFactory> = if candle {
            Arc::new(BertFactory::from_bytes(&info, bytes, &origin).map_err(|e| e.to_string())?)
        } else {
            onnx(bytes)?
        };
        let factory = EmbeddingFactory::new(processor, encoder).map_err(|e| e.to_string())?;
        text = Some(crate::text::TextModel::new(&factory, embedding));
        Arc::new(factory)
    } else if candle {
        let arch: Arch = serde_json::from_value(record.architecture.clone())
            .map_err(|e| format!("architecture of {origin}: {e}"))?;
        Arc::new(CandleFactory::from_safetensors(arch, &bytes, &origin).map_err(|e| e.to_string())?)
    } else {
        onnx(bytes)?
    };
    let factory: Arc<dyn BackendFactory> = match crate::image::registry_image(&record.architecture)?
    {
        Some((image, _)) => Arc::new(
            infergate_runtime::image::ImageFactory::new(factory, &image)
                .map_err(|e| e.to_string())?,
        ),
        None => factory,
    };
    let options = ModelOptions {
        name: format!("{}:{}", record.model, record.version),
        instances: config.instances.unwrap_or(defaults.instances),
        queue_capacity: defaults.queue_capacity,
        nice: config.nice,
    };
    let model = Model::start(factory, options).map_err(|e| e.to_string())?;
    Ok((model, text))
}

/// Metadata properties of a registry version.
fn registry_properties(record: &VersionRecord) -> BTreeMap<String, String> {
    let mut props = BTreeMap::new();
    props.insert("registry_platform".to_string(), record.platform.clone());
    props.insert(
        "lineage".to_string(),
        serde_json::to_string(&record.lineage).unwrap_or_default(),
    );
    props.insert(
        "metrics".to_string(),
        serde_json::to_string(&record.metrics).unwrap_or_default(),
    );
    props.insert(
        "artifacts".to_string(),
        record
            .artifacts
            .iter()
            .map(|a| format!("{}:sha256:{}", a.kind.as_str(), a.digest))
            .collect::<Vec<_>>()
            .join(","),
    );
    props.insert("author".to_string(), record.author.clone());
    props.insert(
        "created_at".to_string(),
        infergate_registry::format_millis(record.created_at),
    );
    if !record.description.is_empty() {
        props.insert("description".to_string(), record.description.clone());
    }
    props
}
