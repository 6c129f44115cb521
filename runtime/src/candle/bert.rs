//! BERT-family encoders on candle (`candle-transformers`' BERT), from a Hugging Face
//! `model.safetensors` and its `config.json`: the encoder half of an embedding model.

use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor as CTensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config, DTYPE};

use super::{PLATFORM, candle_error};
use crate::text::{
    ATTENTION_MASK, HIDDEN_STATE, INPUT_IDS, TOKEN_TYPE_IDS, TextModelFiles, TransformerInfo,
};
use crate::{
    Backend, BackendFactory, DataType, NamedTensor, RuntimeError, Signature, StageTimings, Tensor,
    TensorSpec,
};

/// A loaded BERT encoder, shared by its worker threads (the weights are read-only).
pub struct BertFactory {
    model: Arc<BertModel>,
    signature: Signature,
}

impl std::fmt::Debug for BertFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertFactory").finish_non_exhaustive()
    }
}

impl BertFactory {
    /// Reads `config.json` and `model.safetensors` of a version folder (keys with or without
    /// the `bert.` prefix).
    pub fn load(files: &TextModelFiles) -> Result<Self, RuntimeError> {
        let weights = std::fs::read(&files.safetensors).map_err(|e| RuntimeError::Load {
            path: files.safetensors.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_bytes(
            &files.info,
            weights,
            &files.safetensors.display().to_string(),
        )
    }

    /// The encoder of safetensors `weights` (`origin` names them in errors) shaped by the
    /// transformer's `config.json`.
    pub fn from_bytes(
        info: &TransformerInfo,
        weights: Vec<u8>,
        origin: &str,
    ) -> Result<Self, RuntimeError> {
        let load_error = |message: String| RuntimeError::Load {
            path: origin.to_owned(),
            message,
        };
        let config: Config = info
            .config
            .clone()
            .ok_or_else(|| {
                load_error("a candle embedding model needs the transformer's config.json".into())
            })
            .and_then(|c| serde_json::from_value(c).map_err(|e| load_error(e.to_string())))?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DTYPE, &Device::Cpu)
            .map_err(|e| load_error(e.to_string()))?;
        let model = BertModel::load(vb, &config).map_err(|e| load_error(e.to_string()))?;
        let spec = |name: &str, dtype, shape: Vec<i64>| TensorSpec {
            name: name.into(),
            dtype,
            shape,
        };
        let tokens = |name| spec(name, DataType::Int64, vec![-1, -1]);
        Ok(Self {
            model: Arc::new(model),
            signature: Signature {
                inputs: vec![
                    tokens(INPUT_IDS),
                    tokens(ATTENTION_MASK),
                    tokens(TOKEN_TYPE_IDS),
                ],
                outputs: vec![spec(
                    HIDDEN_STATE,
                    DataType::Fp32,
                    vec![-1, -1, config.hidden_size as i64],
                )],
            },
        })
    }
}

impl BackendFactory for BertFactory {
    fn platform(&self) -> &str {
        PLATFORM
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn create(&self) -> Result<Box<dyn Backend>, RuntimeError> {
        Ok(Box::new(BertBackend {
            model: Arc::clone(&self.model),
        }))
    }
}

struct BertBackend {
    model: Arc<BertModel>,
}

impl Backend for BertBackend {
    fn infer(
        &mut self,
        inputs: &[NamedTensor],
        timings: &mut StageTimings,
    ) -> Result<Vec<NamedTensor>, RuntimeError> {
        let start = Instant::now();
        let tensor = |name: &str| -> Result<CTensor, RuntimeError> {
            let t = inputs
                .iter()
                .find(|i| &*i.name == name)
                .ok_or_else(|| RuntimeError::InvalidInput(format!("missing input '{name}'")))?;
            let values = t.tensor.to_vec::<i64>().ok_or_else(|| {
                RuntimeError::InvalidInput(format!("input '{name}' must be INT64"))
            })?;
            let dims: Vec<usize> = t
                .tensor
                .shape()
                .iter()
                .map(|&d| d.max(0) as usize)
                .collect();
            CTensor::from_vec(values, dims, &Device::Cpu).map_err(candle_error)
        };
        let ids = tensor(INPUT_IDS)?;
        let mask = tensor(ATTENTION_MASK)?;
        let types = match tensor(TOKEN_TYPE_IDS) {
            Ok(t) => t,
            Err(_) => ids.zeros_like().map_err(candle_error)?,
        };
        let prepared = Instant::now();
        timings.input = prepared - start;
        let hidden = self
            .model
            .forward(&ids, &types, Some(&mask))
            .map_err(candle_error)?;
        let ran = Instant::now();
        timings.infer = ran - prepared;
        let shape: Vec<i64> = hidden.dims().iter().map(|&d| d as i64).collect();
        let values: Vec<f32> = hidden
            .flatten_all()
            .and_then(|h| h.to_vec1())
            .map_err(candle_error)?;
        let out = Tensor::from_slice(shape, &values)?;
        timings.output = ran.elapsed();
        Ok(vec![NamedTensor::new(HIDDEN_STATE, out)])
    }
}
