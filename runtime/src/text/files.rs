//! The files of a text model's version folder, laid out as Hugging Face and
//! sentence-transformers ship them: `tokenizer.json`, `config.json`, `1_Pooling/config.json`,
//! and the network as `model.onnx` and/or `model.safetensors`.

use std::path::{Path, PathBuf};

use infergate_config::Pooling;

use crate::RuntimeError;

/// What a text model's folder holds, with the settings read from its JSON files.
#[derive(Debug, Clone)]
pub struct TextModelFiles {
    pub dir: PathBuf,
    pub tokenizer: PathBuf,
    pub onnx: PathBuf,
    pub safetensors: PathBuf,
    /// `config.json` (the transformer's hyper-parameters), when present.
    pub config: Option<PathBuf>,
    /// From `1_Pooling/config.json`.
    pub pooling: Option<Pooling>,
    /// From `config.json`.
    pub max_position_embeddings: Option<usize>,
    pub hidden_size: Option<usize>,
}

impl TextModelFiles {
    /// Reads the folder; only `tokenizer.json` must exist (the backend needs its own file).
    pub fn read(dir: &Path) -> Result<Self, RuntimeError> {
        let tokenizer = dir.join("tokenizer.json");
        if !tokenizer.is_file() {
            return Err(RuntimeError::Load {
                path: dir.display().to_string(),
                message: "an embedding model's version folder needs a tokenizer.json".into(),
            });
        }
        let json = |path: &Path| -> Result<Option<serde_json::Value>, RuntimeError> {
            match std::fs::read(path) {
                Ok(bytes) => {
                    serde_json::from_slice(&bytes)
                        .map(Some)
                        .map_err(|e| RuntimeError::Load {
                            path: path.display().to_string(),
                            message: e.to_string(),
                        })
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(RuntimeError::Load {
                    path: path.display().to_string(),
                    message: e.to_string(),
                }),
            }
        };
        let config_path = dir.join("config.json");
        let config = json(&config_path)?;
        let number = |key: &str| {
            config
                .as_ref()
                .and_then(|c| c.get(key)?.as_u64())
                .map(|n| n as usize)
        };
        let pooling = json(&dir.join("1_Pooling").join("config.json"))?.and_then(|p| {
            let on = |key: &str| p.get(key).and_then(|v| v.as_bool()) == Some(true);
            if on("pooling_mode_cls_token") {
                Some(Pooling::Cls)
            } else if on("pooling_mode_lasttoken") {
                Some(Pooling::LastToken)
            } else if on("pooling_mode_mean_tokens") {
                Some(Pooling::Mean)
            } else {
                None
            }
        });
        Ok(Self {
            dir: dir.to_path_buf(),
            tokenizer,
            onnx: dir.join("model.onnx"),
            safetensors: dir.join("model.safetensors"),
            max_position_embeddings: number("max_position_embeddings"),
            hidden_size: number("hidden_size"),
            config: config.is_some().then_some(config_path),
            pooling,
        })
    }
}
