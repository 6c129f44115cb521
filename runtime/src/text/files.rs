//! The files of a text model's version folder, laid out as Hugging Face and
//! sentence-transformers ship them: `tokenizer.json`, `config.json`, `1_Pooling/config.json`,
//! and the network as `model.onnx` and/or `model.safetensors`.

use std::path::{Path, PathBuf};

use infergate_config::Pooling;

use crate::RuntimeError;

/// The tokenizer file of a text model's version folder.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The transformer's hyper-parameters.
pub const TRANSFORMER_CONFIG_FILE: &str = "config.json";
/// sentence-transformers' pooling settings.
pub const POOLING_CONFIG_FILE: &str = "1_Pooling/config.json";

/// What a text model's folder holds, with the settings read from its JSON files.
#[derive(Debug, Clone)]
pub struct TextModelFiles {
    pub dir: PathBuf,
    pub tokenizer: PathBuf,
    pub onnx: PathBuf,
    pub safetensors: PathBuf,
    pub info: TransformerInfo,
}

/// What a text model's JSON files say, for the settings its `config.toml` leaves open. The
/// registry keeps it with a version (in its architecture), so it is not tied to a folder.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TransformerInfo {
    /// `config.json` (the transformer's hyper-parameters), when present.
    pub config: Option<serde_json::Value>,
    /// From `1_Pooling/config.json`.
    pub pooling: Option<Pooling>,
}

impl TransformerInfo {
    /// `max_position_embeddings` of `config.json`: the longest input the network takes.
    pub fn max_position_embeddings(&self) -> Option<usize> {
        self.number("max_position_embeddings")
    }

    /// `hidden_size` of `config.json`: the width of the token vectors.
    pub fn hidden_size(&self) -> Option<usize> {
        self.number("hidden_size")
    }

    fn number(&self, key: &str) -> Option<usize> {
        self.config
            .as_ref()
            .and_then(|c| c.get(key)?.as_u64())
            .map(|n| n as usize)
    }

    /// The pooling a sentence-transformers `1_Pooling/config.json` turns on.
    pub fn pooling_of(pooling_config: &serde_json::Value) -> Option<Pooling> {
        let on = |key: &str| pooling_config.get(key).and_then(|v| v.as_bool()) == Some(true);
        if on("pooling_mode_cls_token") {
            Some(Pooling::Cls)
        } else if on("pooling_mode_lasttoken") {
            Some(Pooling::LastToken)
        } else if on("pooling_mode_mean_tokens") {
            Some(Pooling::Mean)
        } else {
            None
        }
    }
}

/// A JSON file of the folder; none when it does not exist.
pub fn read_json(path: &Path) -> Result<Option<serde_json::Value>, RuntimeError> {
    let error = |message: String| RuntimeError::Load {
        path: path.display().to_string(),
        message,
    };
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| error(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(error(e.to_string())),
    }
}

impl TextModelFiles {
    /// Reads the folder; only `tokenizer.json` must exist (the backend needs its own file).
    pub fn read(dir: &Path) -> Result<Self, RuntimeError> {
        let tokenizer = dir.join(TOKENIZER_FILE);
        if !tokenizer.is_file() {
            return Err(RuntimeError::Load {
                path: dir.display().to_string(),
                message: format!("an embedding model's version folder needs a {TOKENIZER_FILE}"),
            });
        }
        let info = TransformerInfo {
            config: read_json(&dir.join(TRANSFORMER_CONFIG_FILE))?,
            pooling: read_json(&dir.join(POOLING_CONFIG_FILE))?
                .as_ref()
                .and_then(TransformerInfo::pooling_of),
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            tokenizer,
            onnx: dir.join("model.onnx"),
            safetensors: dir.join("model.safetensors"),
            info,
        })
    }
}
