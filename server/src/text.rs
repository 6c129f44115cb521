//! Text models in the server: a version's tokenizer and the bounded pool that runs it off the
//! async runtime, before the batcher (so that batches can close on a token budget).

use std::path::Path;
use std::sync::Arc;

use crate::error::{ErrorKind, ServeError};
use crate::pool::ProcessingPool;
use infergate_config::{ModelConfig, TextBackend, TextEmbedding};
use infergate_registry::{
    ArtifactKind, Baseline, Lineage, MODEL_CONFIG_KEY, NewArtifact, NewVersion, PLATFORM_CANDLE,
    PLATFORM_ONNX, Signature, TensorSig,
};
use infergate_runtime::ort::OrtRuntime;
use infergate_runtime::text::{
    EMBEDDING_OUTPUT, EmbeddingFactory, POOLING_CONFIG_FILE, TEXT_INPUT, TOKENIZER_FILE,
    TRANSFORMER_CONFIG_FILE, TextError, TextModelFiles, TextProcessor, TransformerInfo,
};
use infergate_runtime::{BackendFactory, RuntimeError};

/// Keys of a text version's architecture, beside the model's `config.toml`
/// ([`MODEL_CONFIG_KEY`]): the transformer's `config.json` and the pooling of
/// `1_Pooling/config.json`. The tokenizer is an artifact of its own.
const TRANSFORMER_KEY: &str = "transformer";
const POOLING_KEY: &str = "pooling";

/// The request parameter that says a text model's `text` elements are token ids (each the ids
/// of one input as little-endian int64, special tokens included), not strings: OpenAI's
/// token-id inputs.
pub const TOKEN_IDS: &str = "token_ids";

/// Request parameters that change a text model's answer (part of its response-cache key).
pub const OUTPUT_PARAMETERS: [&str; 4] = ["truncate", "normalize", "dimensions", TOKEN_IDS];

/// A text model version's processing: its tokenizer and how many tokenizations may run at once.
#[derive(Debug, Clone)]
pub struct TextModel {
    pub processor: Arc<TextProcessor>,
    pool: ProcessingPool,
}

/// What a request asks of a text model (TEI's and OpenAI's options, or V2 parameters).
#[derive(Debug, Clone, Copy, Default)]
pub struct TextOptions {
    /// Cut over-long inputs instead of refusing them.
    pub truncate: bool,
    /// Overrides the model's `normalize`.
    pub normalize: Option<bool>,
    /// Fewer dimensions than the model's (Matryoshka models only).
    pub dimensions: Option<usize>,
    /// The inputs are token ids ([`TOKEN_IDS`]), not text.
    pub token_ids: bool,
}

impl TextModel {
    /// Loads a version folder: the embedding backend's factory and the processing beside it.
    pub fn load(
        dir: &Path,
        config: &TextEmbedding,
        runtime: &OrtRuntime,
        intra_op_threads: usize,
    ) -> Result<(Arc<dyn BackendFactory>, Self), RuntimeError> {
        let files = TextModelFiles::read(dir)?;
        let factory = EmbeddingFactory::load(&files, config, Some(runtime), intra_op_threads)?;
        let model = Self::new(&factory, config);
        Ok((Arc::new(factory), model))
    }

    /// The processing of a loaded embedding model.
    pub fn new(factory: &EmbeddingFactory, config: &TextEmbedding) -> Self {
        Self {
            processor: Arc::clone(factory.processor()),
            pool: ProcessingPool::new(config.tokenizer_threads, "tokenizer"),
        }
    }

    /// Token ids sent instead of text: each element the ids as little-endian int64, checked
    /// against the vocabulary and the length limit (no tokenizer runs, so not on the pool).
    pub fn token_ids(
        &self,
        elements: &[bytes::Bytes],
        truncate: bool,
    ) -> Result<Vec<Vec<u32>>, ServeError> {
        elements
            .iter()
            .enumerate()
            .map(|(index, e)| {
                if e.len() % 8 != 0 {
                    return Err(ServeError::invalid(format!(
                        "input {index}: token ids are little-endian int64, 8 bytes each, not {} bytes",
                        e.len()
                    )));
                }
                let ids: Vec<i64> = e
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect();
                self.processor
                    .check_ids(index, &ids, truncate)
                    .map_err(text_error)
            })
            .collect()
    }

    /// Tokenizes `texts` on the blocking pool, at most the model's `tokenizer_threads` at once.
    pub async fn tokenize(
        &self,
        texts: Vec<bytes::Bytes>,
        truncate: bool,
    ) -> Result<Vec<Vec<u32>>, ServeError> {
        let processor = Arc::clone(&self.processor);
        self.pool
            .run(move || {
                texts
                    .iter()
                    .enumerate()
                    .map(|(index, text)| {
                        let text =
                            std::str::from_utf8(text).map_err(|_| TextError::NotUtf8 { index })?;
                        processor.tokenize(index, text, truncate)
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?
            .map_err(text_error)
    }
}

/// The class of a text input's error: too long is 413 (as TEI answers), the rest 400.
pub fn text_error(e: TextError) -> ServeError {
    let kind = match e {
        TextError::TooLong { .. } => ErrorKind::TooLarge,
        TextError::Tokenizer { .. } => ErrorKind::Internal,
        _ => ErrorKind::InvalidInput,
    };
    ServeError::new(kind, e.to_string())
}

/// What a registry version's architecture says about its transformer (see
/// [`MODEL_CONFIG_KEY`]).
pub fn registry_transformer(architecture: &serde_json::Value) -> Result<TransformerInfo, String> {
    let pooling = architecture
        .get(POOLING_KEY)
        .map(|p| serde_json::from_value(p.clone()))
        .transpose()
        .map_err(|e| format!("architecture's {POOLING_KEY}: {e}"))?;
    Ok(TransformerInfo {
        config: architecture.get(TRANSFORMER_KEY).cloned(),
        pooling,
    })
}

/// A text model's version folder (`tokenizer.json`, `config.json`, `1_Pooling/config.json`
/// and `model.onnx` or `model.safetensors`, as the model's config picks) as the next version of
/// `model` in the registry. `model_config` is the text of the model's `config.toml`, which
/// must have an `[embedding]` section; it travels with the version, so the registry version
/// serves with the same processing, batching and cache as the folder.
pub fn registry_version(
    model: &str,
    dir: &Path,
    model_config: &str,
    baseline: Option<Baseline>,
    author: &str,
) -> anyhow::Result<NewVersion> {
    let config = ModelConfig::parse(model_config, "the model's config.toml")?;
    let Some(embedding) = &config.embedding else {
        anyhow::bail!(
            "{} is a folder but the model's config.toml has no [embedding] section: only text models are registered from a folder",
            dir.display()
        );
    };
    let files = TextModelFiles::read(dir)?;
    let hidden = files.info.hidden_size().ok_or_else(|| {
        anyhow::anyhow!(
            "{} has no {TRANSFORMER_CONFIG_FILE} with hidden_size",
            dir.display()
        )
    })?;
    let (platform, kind, network) = match embedding.backend {
        TextBackend::Onnx => (PLATFORM_ONNX, ArtifactKind::Onnx, &files.onnx),
        TextBackend::Candle => (
            PLATFORM_CANDLE,
            ArtifactKind::Safetensors,
            &files.safetensors,
        ),
    };
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))
    };
    // The tokenizer must load, as the server will load it.
    TextProcessor::load(&files, embedding)?;
    let mut architecture = serde_json::json!({ MODEL_CONFIG_KEY: model_config });
    if let Some(transformer) = &files.info.config {
        architecture[TRANSFORMER_KEY] = transformer.clone();
    }
    if let Some(pooling) = files.info.pooling {
        architecture[POOLING_KEY] = serde_json::to_value(pooling)?;
    }
    Ok(NewVersion {
        model: model.to_owned(),
        platform: platform.to_owned(),
        artifacts: vec![
            NewArtifact {
                kind,
                bytes: read(network)?,
            },
            NewArtifact {
                kind: ArtifactKind::Tokenizer,
                bytes: read(&files.tokenizer)?,
            },
        ],
        signature: Signature {
            inputs: vec![TensorSig {
                name: TEXT_INPUT.to_owned(),
                datatype: "BYTES".to_owned(),
                shape: vec![-1],
            }],
            outputs: vec![TensorSig {
                name: EMBEDDING_OUTPUT.to_owned(),
                datatype: "FP32".to_owned(),
                shape: vec![-1, hidden as i64],
            }],
        },
        lineage: Lineage {
            code_version: Some(concat!("infergate ", env!("CARGO_PKG_VERSION")).to_owned()),
            ..Lineage::default()
        },
        architecture,
        baseline,
        description: format!(
            "text model imported from {} ({TOKENIZER_FILE}, {TRANSFORMER_CONFIG_FILE}, {POOLING_CONFIG_FILE})",
            dir.display()
        ),
        author: author.to_owned(),
        ..NewVersion::default()
    })
}

/// Bins per feature of a text model's drift baseline.
const BASELINE_BINS: usize = 10;

/// The drift baseline of a text model's folder: [`crate::drift::TEXT_FEATURES`] of `texts`
/// (reference inputs, one per element; empty ones skipped) as the model computes them, so that
/// live traffic can be compared with what the model was meant for.
pub fn text_baseline(
    dir: &Path,
    model_config: &str,
    runtime: Option<&OrtRuntime>,
    texts: &[String],
) -> anyhow::Result<Baseline> {
    use infergate_runtime::text::{ATTENTION_MASK, INPUT_IDS, pad};
    use infergate_runtime::{NamedTensor, StageTimings};
    let config = ModelConfig::parse(model_config, "the model's config.toml")?;
    let embedding = config
        .embedding
        .ok_or_else(|| anyhow::anyhow!("the model's config.toml has no [embedding] section"))?;
    let files = TextModelFiles::read(dir)?;
    let factory = EmbeddingFactory::load(&files, &embedding, runtime, 0)?;
    let processor = Arc::clone(factory.processor());
    let mut backend = factory.create()?;
    let texts: Vec<&str> = texts
        .iter()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .collect();
    if texts.len() < BASELINE_BINS {
        anyhow::bail!(
            "a drift baseline needs at least {BASELINE_BINS} reference texts, not {}",
            texts.len()
        );
    }
    let mut rows = Vec::with_capacity(texts.len() * 2);
    for chunk in texts.chunks(16) {
        let ids = chunk
            .iter()
            .enumerate()
            .map(|(i, t)| processor.tokenize(i, t, true))
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        let (input_ids, mask) = pad(&refs)?;
        let inputs = [
            NamedTensor::new(INPUT_IDS, input_ids),
            NamedTensor::new(ATTENTION_MASK, mask),
        ];
        let out = backend.infer(&inputs, &mut StageTimings::default())?;
        let pooled = out
            .first()
            .and_then(|o| o.tensor.to_vec::<f32>())
            .ok_or_else(|| anyhow::anyhow!("the model gave no embedding"))?;
        for (tokens, row) in refs.iter().zip(pooled.chunks_exact(processor.dim)) {
            rows.extend(crate::drift::text_row(tokens.len(), row));
        }
    }
    Ok(Baseline::from_rows(&rows, 2, BASELINE_BINS, &[], 0))
}
