//! The per-model `config.toml` that sits beside the version folders of a model repository.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// Settings for one model (all versions). Absent keys fall back to the server's runtime defaults.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Largest batch (first dimension) a request may carry; 0 means the model has no batch dimension.
    pub max_batch_size: u32,
    /// Worker threads (sessions) per version; overrides `runtime.instances`.
    pub instances: Option<usize>,
    /// Intra-op threads per session; overrides `runtime.intra_op_threads`.
    pub intra_op_threads: Option<usize>,
    /// Which versions of the repository folder are served.
    pub version_policy: VersionPolicy,
    /// Requests of this model in flight at once before 503 (admission control); none = no limit.
    pub max_concurrent_requests: Option<usize>,
    /// Present: requests are batched dynamically (needs `max_batch_size > 0`).
    pub dynamic_batching: Option<DynamicBatching>,
    /// Present: identical requests are answered from a response cache.
    pub response_cache: Option<ResponseCache>,
    /// Refuse requests whose floating-point inputs hold NaN or ±infinity (400) instead of
    /// passing them to the model.
    pub reject_non_finite: bool,
    /// Scheduling niceness of this model's worker threads, 0 to 19; 19 puts them in Linux's
    /// idle scheduling class, where they run only on CPU nothing else wants (for shadow
    /// models: see docs/shadow-check.md).
    pub nice: i32,
    /// Present: a text-embedding model (a transformer with its tokenizer and pooling); the
    /// version folder holds `tokenizer.json` beside the network.
    pub embedding: Option<TextEmbedding>,
    /// Present: an image model: encoded images (JPEG, PNG, WebP) in, decoded and preprocessed
    /// in the server before the batcher.
    pub image: Option<ImageInput>,
}

/// Which engine runs an image model.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ImageBackend {
    /// ONNX Runtime on `model.onnx` (input FP32 `[N, 3, H, W]`).
    #[default]
    Onnx,
    /// candle's EfficientNet-Lite0 on the PyTorch state_dict `model.pth`.
    CandleEfficientnetLite0,
}

/// An image model's input processing: decode, resize, crop, scale; and its limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ImageInput {
    pub backend: ImageBackend,
    /// Height and width the network takes (square).
    pub size: u32,
    /// The short side is resized to this, then the centre is cropped to `size`.
    pub resize_short_side: u32,
    /// Per channel (R, G, B): `(pixel - mean) / std` on 0–255 values.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Encoded images larger than this are refused (413) before decoding.
    pub max_bytes: usize,
    /// Images wider or taller than this are refused (400) from their header, before any pixel
    /// is decoded (decompression bombs).
    pub max_dimension: u32,
    /// Decodes running at once for this model (the rest wait, off the async runtime); none:
    /// the number of CPUs.
    pub decode_threads: Option<usize>,
}

impl Default for ImageInput {
    fn default() -> Self {
        Self {
            backend: ImageBackend::Onnx,
            size: 224,
            resize_short_side: 224,
            mean: [127.5; 3],
            std: [127.5; 3],
            max_bytes: 16 << 20,
            max_dimension: 8192,
            decode_threads: None,
        }
    }
}

/// Which engine runs an embedding model's transformer.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum TextBackend {
    /// ONNX Runtime on `model.onnx` (inputs `input_ids`, `attention_mask`, `token_type_ids`;
    /// output `last_hidden_state`).
    #[default]
    Onnx,
    /// candle's BERT on `model.safetensors` with its `config.json`.
    Candle,
}

/// How token vectors become one sentence vector.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The mean of the real (unpadded) tokens.
    Mean,
    /// The first token (`[CLS]`).
    Cls,
    /// The last real token.
    LastToken,
}

/// A text-embedding model's processing: tokenization, limits, pooling, normalization.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TextEmbedding {
    pub backend: TextBackend,
    /// None: read from `1_Pooling/config.json` in the version folder, else mean.
    pub pooling: Option<Pooling>,
    /// L2-normalize the pooled vector (a request may ask otherwise with `normalize`).
    pub normalize: bool,
    /// Longest input in tokens, special tokens included; none: `max_position_embeddings` of
    /// the version's `config.json`, else 512. Longer inputs are refused unless the request
    /// asks for truncation.
    pub max_input_tokens: Option<u32>,
    /// The model was trained so that a prefix of its vector is itself an embedding
    /// (Matryoshka): clients may ask for fewer dimensions.
    pub truncatable_dimensions: bool,
    /// Tokenizations running at once for this model (the rest wait, off the async runtime);
    /// none: the number of CPUs.
    pub tokenizer_threads: Option<usize>,
}

impl Default for TextEmbedding {
    fn default() -> Self {
        Self {
            backend: TextBackend::Onnx,
            pooling: None,
            normalize: true,
            max_input_tokens: None,
            truncatable_dimensions: false,
            tokenizer_threads: None,
        }
    }
}

/// Triton-style dynamic batching settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DynamicBatching {
    /// How long the oldest request may wait for a fuller batch; 0 = never wait (a batch forms
    /// whenever an instance is free and grows while all are busy).
    pub max_queue_delay_us: u64,
    /// Batch sizes worth waiting for (within `max_queue_delay_us`).
    pub preferred_batch_sizes: Vec<u32>,
    /// Requests that may wait; more are refused with 503 + Retry-After.
    pub max_queue_size: usize,
    /// Priority levels; requests pick one with the `priority` parameter (1 = highest).
    pub priority_levels: u32,
    /// Level of requests that do not say (or say 0).
    pub default_priority_level: u32,
    /// Timeout of requests that set none (0 = none); an expired request fails with 504 unrun.
    pub default_timeout_us: u64,
    /// While every instance is busy, a batch of at least this many rows is formed anyway and
    /// queued for the next free instance (at most one per instance), which starts it the
    /// moment it finishes instead of waiting for the gateway to form the next one; its
    /// requests can then no longer be cancelled or time out unrun. 0 = off.
    pub dispatch_ahead_rows: u32,
    /// For models that take token sequences (embedding models): a batch closes once its padded
    /// tokens (rows × longest row) would exceed this. 0 = only `max_batch_size` counts.
    pub max_batch_tokens: u64,
    /// For token sequences: a batch takes the waiting requests closest in length to its oldest
    /// one first, so that little of it is padding; off = strictly in arrival order.
    pub group_by_length: bool,
}

impl Default for DynamicBatching {
    fn default() -> Self {
        Self {
            max_queue_delay_us: 0,
            preferred_batch_sizes: Vec::new(),
            max_queue_size: 1024,
            priority_levels: 1,
            default_priority_level: 1,
            default_timeout_us: 0,
            dispatch_ahead_rows: 0,
            max_batch_tokens: 0,
            group_by_length: true,
        }
    }
}

/// Response cache settings (per model version).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ResponseCache {
    /// Bound on cached requests and responses, in bytes.
    pub max_bytes: u64,
    /// Entries expire this long after insertion (none = only evicted for size).
    pub ttl_ms: Option<u64>,
}

impl Default for ResponseCache {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024 * 1024,
            ttl_ms: None,
        }
    }
}

/// Triton's version policy: the newest N versions, all of them, or a fixed list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum VersionPolicy {
    /// The `n` highest version numbers.
    Latest(u32),
    /// Every version folder.
    All,
    /// Exactly these versions.
    Specific(Vec<u64>),
}

impl Default for VersionPolicy {
    fn default() -> Self {
        Self::Latest(1)
    }
}

impl VersionPolicy {
    /// Picks the served versions from those present (any order in, ascending out).
    pub fn select(&self, available: &[u64]) -> Vec<u64> {
        let mut sorted = available.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        match self {
            Self::All => sorted,
            Self::Latest(n) => {
                let skip = sorted.len().saturating_sub(*n as usize);
                sorted.split_off(skip)
            }
            Self::Specific(wanted) => sorted.into_iter().filter(|v| wanted.contains(v)).collect(),
        }
    }
}

/// The server's defaults for the keys a model's `[dynamic_batching]` and `[response_cache]`
/// leave out (the `[batching]` and `[cache]` sections of the server configuration).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelDefaults {
    pub batching: DynamicBatching,
    pub cache: ResponseCache,
}

impl ModelDefaults {
    /// Problems with the defaults themselves, as a model with batching and a cache would have.
    pub(crate) fn check(&self) -> Vec<String> {
        ModelConfig {
            dynamic_batching: Some(self.batching.clone()),
            response_cache: Some(self.cache.clone()),
            ..ModelConfig::default()
        }
        .check_sections("batching/cache defaults")
    }

    /// Fills the sections of a model's table with the defaults' missing keys.
    fn fill(&self, table: &mut toml::Table) {
        let defaults = [
            ("dynamic_batching", toml::Table::try_from(&self.batching)),
            ("response_cache", toml::Table::try_from(&self.cache)),
        ];
        for (section, defaults) in defaults {
            let (Some(toml::Value::Table(section)), Ok(defaults)) =
                (table.get_mut(section), defaults)
            else {
                continue;
            };
            for (key, value) in defaults {
                section.entry(key).or_insert(value);
            }
        }
    }
}

impl ModelConfig {
    /// Problems in the admission, batching and cache settings, each prefixed with `origin`.
    fn check_sections(&self, origin: &str) -> Vec<String> {
        let mut errors = Vec::new();
        if self.max_concurrent_requests == Some(0) {
            errors.push(format!(
                "{origin}: max_concurrent_requests must be at least 1"
            ));
        }
        if let Some(b) = &self.dynamic_batching {
            if b.priority_levels == 0 {
                errors.push(format!(
                    "{origin}: dynamic_batching.priority_levels must be at least 1"
                ));
            }
            if b.default_priority_level == 0 || b.default_priority_level > b.priority_levels {
                errors.push(format!(
                    "{origin}: dynamic_batching.default_priority_level must be between 1 and priority_levels ({})",
                    b.priority_levels
                ));
            }
            if b.max_queue_size == 0 {
                errors.push(format!(
                    "{origin}: dynamic_batching.max_queue_size must be at least 1"
                ));
            }
            if self.max_batch_size > 0
                && let Some(size) = b
                    .preferred_batch_sizes
                    .iter()
                    .find(|&&s| s == 0 || s > self.max_batch_size)
            {
                errors.push(format!(
                    "{origin}: preferred batch size {size} must be between 1 and max_batch_size ({})",
                    self.max_batch_size
                ));
            }
            if self.max_batch_size > 0 && b.dispatch_ahead_rows > self.max_batch_size {
                errors.push(format!(
                    "{origin}: dynamic_batching.dispatch_ahead_rows ({}) must be at most max_batch_size ({})",
                    b.dispatch_ahead_rows, self.max_batch_size
                ));
            }
        }
        if let Some(e) = &self.embedding {
            if e.max_input_tokens == Some(0) {
                errors.push(format!(
                    "{origin}: embedding.max_input_tokens must be at least 1"
                ));
            }
            if e.tokenizer_threads == Some(0) {
                errors.push(format!(
                    "{origin}: embedding.tokenizer_threads must be at least 1"
                ));
            }
        }
        if let Some(i) = &self.image {
            if i.size == 0 || i.resize_short_side < i.size {
                errors.push(format!(
                    "{origin}: image.size must be at least 1 and at most image.resize_short_side"
                ));
            }
            if i.std.iter().any(|s| *s == 0.0 || !s.is_finite()) {
                errors.push(format!("{origin}: image.std must be finite and non-zero"));
            }
            if i.decode_threads == Some(0) || i.max_dimension == 0 || i.max_bytes == 0 {
                errors.push(format!(
                    "{origin}: image.decode_threads, max_dimension and max_bytes must be at least 1"
                ));
            }
            if self.embedding.is_some() {
                errors.push(format!(
                    "{origin}: a model is either [image] or [embedding]"
                ));
            }
        }
        if self
            .response_cache
            .as_ref()
            .is_some_and(|c| c.max_bytes == 0)
        {
            errors.push(format!(
                "{origin}: response_cache.max_bytes must be greater than 0"
            ));
        }
        errors
    }

    /// The batching settings in force: none when the model has no batch dimension.
    pub fn batching(&self) -> Option<&DynamicBatching> {
        self.dynamic_batching
            .as_ref()
            .filter(|_| self.max_batch_size > 0)
    }

    /// Reads `path`, or the defaults when it does not exist.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with(path, &ModelDefaults::default())
    }

    /// [`Self::load`] with the server's batching and cache defaults.
    pub fn load_with(path: &Path, defaults: &ModelDefaults) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Self::parse_with(&text, &path.display().to_string(), defaults)
    }

    /// Parses and checks the text of a `config.toml`; `origin` names it in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        Self::parse_with(text, origin, &ModelDefaults::default())
    }

    /// [`Self::parse`] with the server's batching and cache defaults.
    pub fn parse_with(
        text: &str,
        origin: &str,
        defaults: &ModelDefaults,
    ) -> Result<Self, ConfigError> {
        let parse_error = |message: String| ConfigError::Parse {
            origin: origin.to_string(),
            message,
        };
        let mut table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| parse_error(e.message().to_string()))?;
        defaults.fill(&mut table);
        let config = Self::deserialize(toml::Value::Table(table))
            .map_err(|e| parse_error(e.message().to_string()))?;
        let mut errors = Vec::new();
        if !(0..=19).contains(&config.nice) {
            errors.push(format!("{origin}: nice must be between 0 and 19"));
        }
        if config.instances == Some(0) {
            errors.push(format!("{origin}: instances must be at least 1"));
        }
        if config.version_policy == VersionPolicy::Latest(0) {
            errors.push(format!(
                "{origin}: version_policy latest must be at least 1"
            ));
        }
        errors.extend(config.check_sections(origin));
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }
}
