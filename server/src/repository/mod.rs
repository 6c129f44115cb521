//! The model repository: which models and versions are loaded, their states for the index,
//! and loading/unloading from a Triton-layout directory (`<dir>/<model>/<version>/model.onnx`)
//! or from the model registry (every version, the `production` alias as the default).
//! The model table is swapped atomically, so lookups on the request path take no lock.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use infergate_config::{DriftConfig, ModelConfig, RegistryVersions, RuntimeConfig};
use infergate_registry::Registry;
use infergate_runtime::ort::OrtRuntime;
use infergate_runtime::{BackendFactory, Model, ModelOptions};

use crate::error::ServeError;
use crate::layers::batch::BatchHandle;
use crate::layers::cache::ResponseCache;
use crate::metrics::ModelLabels;
use crate::stats::Stats;

mod dir;
mod registry;
pub use registry::Defaults;

use dir::{list_model_dirs, load_model_dir, valid_name};
use registry::load_registry_model;

/// File name of an ONNX model inside a version folder.
pub const MODEL_FILE: &str = "model.onnx";
/// Per-model configuration file beside the version folders.
pub const CONFIG_FILE: &str = "config.toml";

/// One loaded, ready model version.
#[derive(Debug)]
pub struct ModelVersion {
    pub name: String,
    pub version: u64,
    pub version_label: String,
    pub config: ModelConfig,
    pub instances: usize,
    pub model: Model,
    pub stats: Stats,
    /// Metric labels of this version, built once instead of per request.
    pub labels: ModelLabels,
    /// sha256 of the model artifact (`sha256:<hex>`).
    pub digest: String,
    /// The dynamic batcher, started on first use when the model batches.
    pub batcher: OnceLock<BatchHandle>,
    /// The response cache, when the model opted in.
    pub cache: Option<ResponseCache>,
    /// Per-model admission limit shared by the model's versions.
    pub admission: Option<Arc<tokio::sync::Semaphore>>,
    /// Served in model metadata (gRPC `properties`, HTTP `parameters`): the artifact digest
    /// and, for registry versions, lineage, aliases and metrics.
    pub properties: BTreeMap<String, String>,
    /// Size of the serving artifact: what this version counts against
    /// `runtime.memory_budget_bytes`.
    pub weight_bytes: u64,
    /// Input shapes recently served under this model name, shared by the versions that
    /// succeed one another, for warming up the next.
    pub recent_shapes: Arc<ShapeLog>,
    /// The input shapes this version was warmed up with before it served.
    pub warmed_with: Vec<InputShapes>,
    /// Drift against the training baseline (registry versions that carry one).
    pub drift: Option<Arc<crate::drift::Drift>>,
    /// Where a registry version came from (trace attributes); none for repository versions.
    pub lineage: Option<infergate_registry::Lineage>,
    /// Text models: the tokenizer and pooling settings, for tokenizing before the batcher.
    pub text: Option<crate::text::TextModel>,
    /// Image models: decoding and preprocessing, before the batcher.
    pub image: Option<crate::image::ImageModel>,
    /// Class names from the version folder's `labels.txt` (Triton's classification extension).
    pub class_names: Option<Arc<[String]>>,
}

/// The shapes of one request's inputs, by input name.
pub type InputShapes = Vec<(String, Vec<i64>)>;

/// Distinct input shapes recently seen by a model: a sample of requests (one in
/// [`ShapeLog::EVERY`]) is recorded, at most [`ShapeLog::KEEP`] shapes, newest last.
#[derive(Debug, Default)]
pub struct ShapeLog {
    seen: std::sync::atomic::AtomicU64,
    shapes: std::sync::Mutex<std::collections::VecDeque<InputShapes>>,
}

impl ShapeLog {
    /// Requests per recorded one: the hot path pays for a lock only this rarely.
    pub const EVERY: u64 = 16;
    /// Distinct shapes kept.
    pub const KEEP: usize = 8;

    /// Notes the input shapes of a request that passed validation (sampled).
    pub fn record(&self, inputs: &[infergate_runtime::NamedTensor]) {
        let n = self.seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if !n.is_multiple_of(Self::EVERY) {
            return;
        }
        let shape: InputShapes = inputs
            .iter()
            .map(|i| (i.name.to_string(), i.tensor.shape().to_vec()))
            .collect();
        let mut shapes = self.shapes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = shapes.iter().position(|s| *s == shape) {
            shapes.remove(at);
        } else if shapes.len() == Self::KEEP {
            shapes.pop_front();
        }
        shapes.push_back(shape);
    }

    /// The recorded shapes, oldest first.
    pub fn shapes(&self) -> Vec<InputShapes> {
        self.shapes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// What is left of `runtime.memory_budget_bytes` for a load.
#[derive(Debug, Clone, Copy)]
struct Budget {
    /// None: no budget.
    free: Option<u64>,
    total: u64,
}

impl Budget {
    /// Reserves `bytes` for `what`, or says why they do not fit.
    fn take(&mut self, what: &str, bytes: u64) -> Result<(), String> {
        let Some(free) = self.free else {
            return Ok(());
        };
        if bytes > free {
            return Err(format!(
                "memory budget: {what} needs {bytes} bytes, and only {free} of runtime.memory_budget_bytes ({}) are free",
                self.total
            ));
        }
        self.free = Some(free - bytes);
        Ok(())
    }
}

/// A version's state for the repository index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub name: String,
    pub version: String,
    pub state: &'static str,
    pub reason: String,
}

#[derive(Debug, Default, Clone)]
struct Entry {
    versions: BTreeMap<u64, Arc<ModelVersion>>,
    /// The version served when a request names none (the registry's `production` alias);
    /// otherwise the newest.
    default_version: Option<u64>,
    /// The registry's aliases of this model, as last loaded.
    aliases: BTreeMap<String, u32>,
    /// A version an operator pinned as the default, overriding `production`.
    pinned: Option<u64>,
    /// Why a serving version was not made the default (e.g. its signature differs).
    not_default: BTreeMap<u64, String>,
    /// Versions that failed to load (or the whole model, keyed by `None`), with the reason.
    failures: BTreeMap<Option<u64>, String>,
    unloaded: bool,
}

/// All models this server knows about.
pub struct Repository {
    root: Option<PathBuf>,
    registry: Option<Arc<Registry>>,
    runtime: Option<OrtRuntime>,
    defaults: RuntimeConfig,
    /// What models' `[dynamic_batching]` and `[response_cache]` sections leave out.
    model_defaults: infergate_config::ModelDefaults,
    /// Which registry versions serve.
    registry_versions: RegistryVersions,
    /// Drift detection for registry versions with a training baseline.
    drift: DriftConfig,
    models: ArcSwap<BTreeMap<String, Entry>>,
    /// Default-version swaps made while following the registry.
    pub swaps: std::sync::atomic::AtomicU64,
    /// Serializes load/unload so two management calls cannot interleave.
    control: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("root", &self.root)
            .finish()
    }
}

impl Repository {
    /// A repository over `root` (or none), loading ONNX models with `runtime`.
    pub fn new(
        root: Option<PathBuf>,
        runtime: Option<OrtRuntime>,
        defaults: RuntimeConfig,
    ) -> Self {
        Self {
            root,
            registry: None,
            runtime,
            defaults,
            model_defaults: infergate_config::ModelDefaults::default(),
            registry_versions: RegistryVersions::All,
            drift: DriftConfig::default(),
            models: ArcSwap::from_pointee(BTreeMap::new()),
            swaps: std::sync::atomic::AtomicU64::new(0),
            control: tokio::sync::Mutex::new(()),
        }
    }

    /// The server's `[batching]` and `[cache]` defaults for models of the repository folder.
    pub fn with_model_defaults(mut self, defaults: infergate_config::ModelDefaults) -> Self {
        self.model_defaults = defaults;
        self
    }

    /// Drift detection settings (`[drift]`).
    pub fn with_drift(mut self, drift: DriftConfig) -> Self {
        self.drift = drift;
        self
    }

    /// Which registry versions serve (`models.registry_versions`).
    pub fn with_registry_versions(mut self, which: RegistryVersions) -> Self {
        self.registry_versions = which;
        self
    }

    /// Also serves the models of `registry`.
    pub fn with_registry(mut self, registry: Arc<Registry>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Loads every model folder under the root and every registry model. Failures are logged
    /// and shown in the index; the rest are served. Returns the number of versions loaded.
    pub async fn load_all(&self) -> Result<usize, ServeError> {
        let mut names = match &self.root {
            Some(root) => list_model_dirs(root)?,
            None => Vec::new(),
        };
        names.extend(self.registry_models());
        names.sort();
        names.dedup();
        for name in &names {
            if let Err(e) = self.load(name).await {
                tracing::error!(model = %name, error = %e, "model failed to load");
            }
        }
        Ok(self.models.load().values().map(|e| e.versions.len()).sum())
    }

    /// The memory budget left with every loaded version counted, except those of `replacing`.
    fn budget(&self, replacing: Option<&str>) -> Budget {
        let total = self.defaults.memory_budget_bytes;
        if total == 0 {
            return Budget { free: None, total };
        }
        let used: u64 = self
            .models
            .load()
            .iter()
            .filter(|(name, _)| Some(name.as_str()) != replacing)
            .flat_map(|(_, e)| e.versions.values())
            .map(|v| v.weight_bytes)
            .sum();
        Budget {
            free: Some(total.saturating_sub(used)),
            total,
        }
    }

    /// Names of the registry's models (none without a registry or when it cannot be read).
    fn registry_models(&self) -> Vec<String> {
        let Some(registry) = &self.registry else {
            return Vec::new();
        };
        match registry.models() {
            Ok(models) => models.into_iter().map(|m| m.name).collect(),
            Err(e) => {
                tracing::error!(error = %e, "cannot list registry models");
                Vec::new()
            }
        }
    }

    /// (Re)loads a model from the repository folder, or else from the registry, replacing its
    /// served versions atomically.
    pub async fn load(&self, name: &str) -> Result<(), ServeError> {
        let _guard = self.control.lock().await;
        if self.root.is_none() && self.registry.is_none() {
            return Err(ServeError::invalid(
                "no model repository or registry is configured",
            ));
        }
        if !valid_name(name) {
            return Err(ServeError::invalid(format!("invalid model name '{name}'")));
        }
        let runtime = self.runtime.clone();
        let defaults = self.defaults.clone();
        let model_defaults = self.model_defaults.clone();
        // The model's current versions give their share back: a reload replaces them.
        let mut budget = self.budget(Some(name));
        let owned = name.to_string();
        let entry = match self
            .root
            .as_ref()
            .map(|r| r.join(name))
            .filter(|d| d.is_dir())
        {
            Some(dir) => {
                let runtime = runtime
                    .ok_or_else(|| ServeError::internal("onnx runtime is not initialized"))?;
                tokio::task::spawn_blocking(move || {
                    load_model_dir(
                        &runtime,
                        (&defaults, &model_defaults, &mut budget),
                        &owned,
                        &dir,
                    )
                })
                .await
            }
            None if self.registry_models().iter().any(|m| m == name) => {
                let registry = Arc::clone(self.registry.as_ref().expect("listed models"));
                let which = self.registry_versions;
                let drift = self.drift.clone();
                tokio::task::spawn_blocking(move || {
                    load_registry_model(
                        (&registry, which),
                        runtime.as_ref(),
                        (&defaults, &model_defaults, &mut budget, &drift),
                        &owned,
                    )
                })
                .await
            }
            None => {
                return Err(ServeError::not_found(format!(
                    "model '{name}' is not in the model repository or registry"
                )));
            }
        }
        .map_err(|e| ServeError::internal(format!("model loader failed: {e}")))?;
        let mut entry = entry;
        // A pin survives a reload while its version still serves.
        entry.pinned = self
            .models
            .load()
            .get(name)
            .and_then(|e| e.pinned)
            .filter(|v| entry.versions.contains_key(v));
        let result = match (entry.versions.is_empty(), entry.failures.values().next()) {
            (true, Some(reason)) => Err(ServeError::invalid(format!(
                "failed to load model '{name}': {reason}"
            ))),
            _ => Ok(()),
        };
        for (version, model) in &entry.versions {
            tracing::info!(model = %name, version, platform = model.model.platform(), "model version ready");
        }
        self.models.rcu(|models| {
            let mut models = BTreeMap::clone(models);
            models.insert(name.to_string(), entry.clone());
            models
        });
        result
    }

    /// Stops serving a model; in-flight requests on it finish, then its sessions are freed.
    pub async fn unload(&self, name: &str) -> Result<(), ServeError> {
        let _guard = self.control.lock().await;
        if !self.models.load().contains_key(name) {
            return Err(ServeError::not_found(format!(
                "model '{name}' is not loaded"
            )));
        }
        self.models.rcu(|models| {
            let mut models = BTreeMap::clone(models);
            models.insert(
                name.to_string(),
                Entry {
                    unloaded: true,
                    ..Entry::default()
                },
            );
            models
        });
        tracing::info!(model = %name, "model unloaded");
        Ok(())
    }

    /// Serves an already started model (used by embedders and tests with fake backends).
    pub fn insert(&self, name: &str, version: u64, model: Model, config: ModelConfig) {
        let instances = config.instances.unwrap_or(self.defaults.instances);
        let admission = self.admission(name).or_else(|| admission_for(&config));
        let digest = format!("inserted:{name}:{version}");
        self.insert_version(new_version(
            name, version, model, config, instances, digest, admission,
        ));
    }

    /// Serves a prepared version (e.g. with a custom cache), replacing one with its number.
    pub fn insert_version(&self, loaded: ModelVersion) {
        let loaded = Arc::new(loaded);
        self.models.rcu(|models| {
            let mut models = BTreeMap::clone(models);
            let entry = models.entry(loaded.name.clone()).or_default();
            entry.unloaded = false;
            entry.versions.insert(loaded.version, Arc::clone(&loaded));
            models
        });
    }

    /// Starts `factory` as a model version and serves it.
    pub fn insert_factory(
        &self,
        name: &str,
        version: u64,
        factory: Arc<dyn BackendFactory>,
        config: ModelConfig,
    ) -> Result<(), ServeError> {
        let options = ModelOptions {
            name: format!("{name}:{version}"),
            instances: config.instances.unwrap_or(self.defaults.instances),
            queue_capacity: self.defaults.queue_capacity,
            nice: config.nice,
        };
        let model =
            Model::start(factory, options).map_err(|e| ServeError::internal(e.to_string()))?;
        self.insert(name, version, model, config);
        Ok(())
    }

    /// The model's admission limit, if it has one (looked up before a request is decoded).
    pub fn admission(&self, name: &str) -> Option<Arc<tokio::sync::Semaphore>> {
        self.models
            .load()
            .get(name)?
            .versions
            .values()
            .next()?
            .admission
            .clone()
    }

    /// The version a request names, or the newest ready one.
    pub fn resolve(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Arc<ModelVersion>, ServeError> {
        let models = self.models.load();
        let entry = models
            .get(name)
            .filter(|e| !e.versions.is_empty())
            .ok_or_else(|| match models.get(name) {
                Some(_) => ServeError::new(
                    crate::error::ErrorKind::NotReady,
                    format!("model '{name}' is not ready"),
                ),
                None => ServeError::not_found(format!("unknown model '{name}'")),
            })?;
        match version.filter(|v| !v.is_empty()) {
            None => Ok(Arc::clone(
                entry
                    .pinned
                    .or(entry.default_version)
                    .and_then(|v| entry.versions.get(&v))
                    .or_else(|| entry.versions.values().next_back())
                    .expect("non-empty"),
            )),
            Some(label) => label
                .parse::<u64>()
                .ok()
                .or_else(|| entry.aliases.get(label).map(|&v| u64::from(v)))
                .and_then(|v| entry.versions.get(&v))
                .cloned()
                .ok_or_else(|| {
                    ServeError::not_found(format!("model '{name}' has no version '{label}'"))
                }),
        }
    }

    /// Ready versions of a model, ascending.
    pub fn versions(&self, name: &str) -> Vec<Arc<ModelVersion>> {
        self.models
            .load()
            .get(name)
            .map(|e| e.versions.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Every ready model version, by name then version.
    pub fn all_versions(&self) -> Vec<Arc<ModelVersion>> {
        self.models
            .load()
            .values()
            .flat_map(|e| e.versions.values().cloned())
            .collect()
    }

    /// Versions (or whole models) that failed to load and are not unloaded on purpose: what
    /// `infergate_unavailable_model_versions` reports, without reading the folder or registry.
    pub fn failed_loads(&self) -> usize {
        self.models
            .load()
            .values()
            .filter(|e| !e.unloaded)
            .map(|e| e.failures.len())
            .sum()
    }

    /// The repository index: every model in the folder or loaded, with state and reason.
    pub fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let models = self.models.load();
        let mut names: Vec<String> = models.keys().cloned().collect();
        if let Some(root) = &self.root {
            names.extend(list_model_dirs(root).unwrap_or_default());
        }
        names.extend(self.registry_models());
        names.sort();
        names.dedup();
        let mut out = Vec::new();
        for name in names {
            let row = |version: String, state: &'static str, reason: String| IndexEntry {
                name: name.clone(),
                version,
                state,
                reason,
            };
            match models.get(&name) {
                None => out.push(row(String::new(), "UNAVAILABLE", "not loaded".into())),
                Some(e) if e.unloaded => {
                    out.push(row(String::new(), "UNAVAILABLE", "unloaded".into()))
                }
                Some(e) => {
                    out.extend(e.versions.keys().map(|v| {
                        let note = match (e.pinned == Some(*v), e.not_default.get(v)) {
                            (true, _) => "pinned as the default version".to_string(),
                            (false, Some(why)) => why.clone(),
                            (false, None) => String::new(),
                        };
                        row(v.to_string(), "READY", note)
                    }));
                    out.extend(e.failures.iter().map(|(v, reason)| {
                        row(
                            v.map(|v| v.to_string()).unwrap_or_default(),
                            "UNAVAILABLE",
                            reason.clone(),
                        )
                    }));
                }
            }
        }
        if ready_only {
            out.retain(|e| e.state == "READY");
        }
        out
    }
}

fn admission_for(config: &ModelConfig) -> Option<Arc<tokio::sync::Semaphore>> {
    config
        .max_concurrent_requests
        .map(|n| Arc::new(tokio::sync::Semaphore::new(n)))
}

impl ModelVersion {
    /// A served version around a started model. `digest` identifies the artifact (cache keys).
    pub fn new(
        name: &str,
        version: u64,
        model: Model,
        config: ModelConfig,
        instances: usize,
        digest: String,
    ) -> Self {
        let admission = admission_for(&config);
        new_version(name, version, model, config, instances, digest, admission)
    }
}

fn new_version(
    name: &str,
    version: u64,
    model: Model,
    config: ModelConfig,
    instances: usize,
    digest: String,
    admission: Option<Arc<tokio::sync::Semaphore>>,
) -> ModelVersion {
    if config.dynamic_batching.is_some() && config.max_batch_size == 0 {
        tracing::warn!(model = %name, "dynamic_batching is ignored: max_batch_size is 0");
    }
    ModelVersion {
        name: name.to_string(),
        version,
        version_label: version.to_string(),
        labels: ModelLabels {
            model: name.to_string(),
            version: version.to_string(),
        },
        stats: Stats::new(config.max_batch_size as usize),
        cache: config
            .response_cache
            .as_ref()
            .map(|c| ResponseCache::new(c, digest.clone())),
        batcher: OnceLock::new(),
        properties: BTreeMap::from([("artifact_digest".to_string(), digest.clone())]),
        weight_bytes: 0,
        recent_shapes: Arc::default(),
        warmed_with: Vec::new(),
        drift: None,
        lineage: None,
        text: None,
        image: None,
        class_names: None,
        digest,
        admission,
        config,
        instances,
        model,
    }
}

impl Entry {
    /// Records the aliases and points the default at `production` when it is serving.
    fn set_aliases(&mut self, name: &str, aliases: BTreeMap<String, u32>) {
        let previous = self
            .default_version
            .and_then(|v| self.versions.get(&v))
            .cloned();
        let candidate = aliases
            .get("production")
            .map(|&v| u64::from(v))
            .filter(|v| self.versions.contains_key(v));
        // Clients of the model name keep the interface they were built against: a new
        // production with another signature serves by number only.
        self.default_version = match (candidate, &previous) {
            (Some(v), Some(old)) if v != old.version => {
                let new = &self.versions[&v];
                if new.model.signature() == old.model.signature() {
                    Some(v)
                } else {
                    let why = format!(
                        "not made the default: its signature differs from version {} (inputs/outputs {:?} vs {:?})",
                        old.version,
                        names(new.model.signature()),
                        names(old.model.signature())
                    );
                    tracing::error!(model = %name, version = v, reason = %why, "production swap refused");
                    self.not_default.insert(v, why);
                    Some(old.version)
                }
            }
            // Production names a version that does not serve (it failed to load): the
            // default stays where it was.
            (None, Some(old)) if aliases.contains_key("production") => Some(old.version),
            (candidate, _) => candidate,
        };
        if let Some(&v) = aliases.get("production")
            && self.default_version != Some(u64::from(v))
            && !self.not_default.contains_key(&u64::from(v))
        {
            tracing::error!(model = %name, version = v, default = ?self.default_version, "the production version is not serving; the default stays (at start: the newest)");
        }
        self.aliases = aliases;
    }
}

fn names(sig: &infergate_runtime::Signature) -> (Vec<String>, Vec<String>) {
    let f = |t: &[infergate_runtime::TensorSpec]| {
        t.iter()
            .map(|t| format!("{}:{}{:?}", t.name, t.dtype, t.shape))
            .collect()
    };
    (f(&sig.inputs), f(&sig.outputs))
}

#[cfg(test)]
mod tests {
    use super::ShapeLog;
    use infergate_runtime::{DataType, NamedTensor, Tensor};

    fn request(rows: i64) -> Vec<NamedTensor> {
        let tensor = Tensor::from_raw(
            DataType::Fp32,
            vec![rows, 4],
            bytes::Bytes::from(vec![0u8; rows as usize * 16]),
        )
        .unwrap();
        vec![NamedTensor::new("input", tensor)]
    }

    #[test]
    fn the_shape_log_samples_keeps_distinct_shapes_and_forgets_the_oldest() {
        let log = ShapeLog::default();
        // One request in EVERY is recorded: the first of each run of 16 here.
        for rows in 1..=10 {
            for _ in 0..ShapeLog::EVERY {
                log.record(&request(rows));
            }
        }
        let rows: Vec<i64> = log.shapes().iter().map(|s| s[0].1[0]).collect();
        assert_eq!(rows, (3..=10).collect::<Vec<_>>(), "the newest KEEP shapes");
        // Seeing a known shape again moves it to the newest end instead of duplicating it.
        for _ in 0..ShapeLog::EVERY {
            log.record(&request(4));
        }
        let rows: Vec<i64> = log.shapes().iter().map(|s| s[0].1[0]).collect();
        assert_eq!(rows, vec![3, 5, 6, 7, 8, 9, 10, 4]);
    }
}
