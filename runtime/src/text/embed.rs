//! The embedding backend: a transformer encoder (ONNX Runtime or candle) with pooling on top,
//! served as `text` BYTES `[N]` in, `embedding` FP32 `[N, dim]` out.

use std::sync::Arc;
use std::time::Instant;

use infergate_config::{TextBackend, TextEmbedding};

use super::{
    ATTENTION_MASK, EMBEDDING_OUTPUT, HIDDEN_STATE, INPUT_IDS, TEXT_INPUT, TOKEN_TYPE_IDS,
    TextModelFiles, TextProcessor,
};
use crate::ort::OrtRuntime;
use crate::{
    Backend, BackendFactory, DataType, NamedTensor, RuntimeError, Signature, StageTimings, Tensor,
    TensorData, TensorSpec,
};

/// A text-embedding model: its processor (tokenizer, pooling) and its encoder.
pub struct EmbeddingFactory {
    processor: Arc<TextProcessor>,
    encoder: Arc<dyn BackendFactory>,
    signature: Signature,
    token_types: bool,
    platform: String,
}

impl std::fmt::Debug for EmbeddingFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingFactory")
            .field("platform", &self.platform)
            .field("processor", &self.processor)
            .finish()
    }
}

impl EmbeddingFactory {
    /// Loads a version folder's tokenizer and its network for `config.backend` (ONNX needs
    /// `runtime`). `intra_op_threads` 0 lets the engine choose.
    pub fn load(
        files: &TextModelFiles,
        config: &TextEmbedding,
        runtime: Option<&OrtRuntime>,
        intra_op_threads: usize,
    ) -> Result<Self, RuntimeError> {
        let processor = TextProcessor::load(files, config)?;
        let encoder: Arc<dyn BackendFactory> = match config.backend {
            TextBackend::Onnx => {
                let runtime = runtime.ok_or_else(|| {
                    RuntimeError::OrtNotFound(
                        "an ONNX embedding model needs ONNX Runtime, which is not loaded".into(),
                    )
                })?;
                Arc::new(runtime.load(&files.onnx, intra_op_threads)?)
            }
            TextBackend::Candle => Arc::new(crate::candle::bert::BertFactory::load(files)?),
        };
        Self::new(processor, encoder)
    }

    /// An embedding model around an encoder that takes `input_ids` and `attention_mask` (and
    /// optionally `token_type_ids`) and returns `last_hidden_state`.
    pub fn new(
        mut processor: TextProcessor,
        encoder: Arc<dyn BackendFactory>,
    ) -> Result<Self, RuntimeError> {
        let sig = encoder.signature();
        for name in [INPUT_IDS, ATTENTION_MASK] {
            if sig.input(name).is_none() {
                return Err(RuntimeError::Unsupported(format!(
                    "an embedding encoder needs an input '{name}'"
                )));
            }
        }
        let hidden = sig.output(HIDDEN_STATE).ok_or_else(|| {
            RuntimeError::Unsupported(format!(
                "an embedding encoder needs an output '{HIDDEN_STATE}'"
            ))
        })?;
        if let Some(&width) = hidden.shape.last()
            && width > 0
        {
            processor.dim = width as usize;
        }
        if processor.dim == 0 {
            return Err(RuntimeError::Unsupported(
                "the embedding width is unknown: the encoder's output and config.json do not say"
                    .into(),
            ));
        }
        let signature = Signature {
            inputs: vec![TensorSpec {
                name: TEXT_INPUT.into(),
                dtype: DataType::Bytes,
                shape: vec![-1],
            }],
            outputs: vec![TensorSpec {
                name: EMBEDDING_OUTPUT.into(),
                dtype: DataType::Fp32,
                shape: vec![-1, processor.dim as i64],
            }],
        };
        Ok(Self {
            token_types: sig.input(TOKEN_TYPE_IDS).is_some(),
            platform: encoder.platform().to_owned(),
            processor: Arc::new(processor),
            encoder,
            signature,
        })
    }

    /// The tokenizer and pooling settings, shared with the server's tokenizing stage.
    pub fn processor(&self) -> &Arc<TextProcessor> {
        &self.processor
    }
}

impl BackendFactory for EmbeddingFactory {
    fn platform(&self) -> &str {
        &self.platform
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn create(&self) -> Result<Box<dyn Backend>, RuntimeError> {
        Ok(Box::new(EmbeddingBackend {
            processor: Arc::clone(&self.processor),
            encoder: self.encoder.create()?,
            token_types: self.token_types,
        }))
    }
}

struct EmbeddingBackend {
    processor: Arc<TextProcessor>,
    encoder: Box<dyn Backend>,
    token_types: bool,
}

impl EmbeddingBackend {
    /// `input_ids` and `attention_mask` from the inputs: given (tokenized before the batcher)
    /// or made here from `text`.
    fn tokens(&self, inputs: &[NamedTensor]) -> Result<(Tensor, Tensor), RuntimeError> {
        let find = |name: &str| inputs.iter().find(|i| &*i.name == name).map(|i| &i.tensor);
        if let (Some(ids), Some(mask)) = (find(INPUT_IDS), find(ATTENTION_MASK)) {
            return Ok((ids.clone(), mask.clone()));
        }
        let text = find(TEXT_INPUT)
            .ok_or_else(|| RuntimeError::InvalidInput(format!("missing input '{TEXT_INPUT}'")))?;
        let TensorData::Bytes(elements) = text.data() else {
            return Err(RuntimeError::InvalidInput(format!(
                "input '{TEXT_INPUT}' must be BYTES"
            )));
        };
        let mut rows = Vec::with_capacity(elements.len());
        for (index, e) in elements.iter().enumerate() {
            let s = std::str::from_utf8(e).map_err(|_| {
                RuntimeError::InvalidInput(super::TextError::NotUtf8 { index }.to_string())
            })?;
            rows.push(
                self.processor
                    .tokenize(index, s, false)
                    .map_err(|e| RuntimeError::InvalidInput(e.to_string()))?,
            );
        }
        let rows: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
        super::pad(&rows)
    }
}

impl Backend for EmbeddingBackend {
    fn infer(
        &mut self,
        inputs: &[NamedTensor],
        timings: &mut StageTimings,
    ) -> Result<Vec<NamedTensor>, RuntimeError> {
        let (ids, mask) = self.tokens(inputs)?;
        let (rows, seq) = match ids.shape() {
            &[rows, seq] => (rows.max(0) as usize, seq.max(0) as usize),
            other => {
                return Err(RuntimeError::InvalidInput(format!(
                    "input '{INPUT_IDS}' must be [rows, tokens], not {other:?}"
                )));
            }
        };
        let dim = self.processor.dim;
        if rows == 0 {
            let empty = Tensor::from_slice::<f32>(vec![0, dim as i64], &[])?;
            return Ok(vec![NamedTensor::new(EMBEDDING_OUTPUT, empty)]);
        }
        if seq == 0 {
            return Err(RuntimeError::InvalidInput(
                "every row needs at least one token".into(),
            ));
        }
        let mask_values = mask.to_vec::<i64>().ok_or_else(|| {
            RuntimeError::InvalidInput(format!("input '{ATTENTION_MASK}' must be INT64"))
        })?;
        let mut encoder_inputs = vec![
            NamedTensor::new(INPUT_IDS, ids),
            NamedTensor::new(ATTENTION_MASK, mask),
        ];
        if self.token_types {
            let zeros = vec![0i64; rows * seq];
            encoder_inputs.push(NamedTensor::new(
                TOKEN_TYPE_IDS,
                Tensor::from_slice(vec![rows as i64, seq as i64], &zeros)?,
            ));
        }
        let out = self.encoder.infer(&encoder_inputs, timings)?;
        let pooling_started = Instant::now();
        let hidden = out
            .iter()
            .find(|o| &*o.name == HIDDEN_STATE)
            .ok_or_else(|| RuntimeError::Backend(format!("encoder gave no '{HIDDEN_STATE}'")))?;
        if hidden.tensor.shape() != [rows as i64, seq as i64, dim as i64] {
            return Err(RuntimeError::Backend(format!(
                "encoder output '{HIDDEN_STATE}' has shape {:?}, expected [{rows}, {seq}, {dim}]",
                hidden.tensor.shape()
            )));
        }
        let values = hidden
            .tensor
            .to_vec::<f32>()
            .ok_or_else(|| RuntimeError::Backend(format!("'{HIDDEN_STATE}' is not FP32")))?;
        let pooled = super::pool(
            self.processor.pooling,
            &values,
            &mask_values,
            rows,
            seq,
            dim,
        );
        let embedding = Tensor::from_slice(vec![rows as i64, dim as i64], &pooled)?;
        timings.output += pooling_started.elapsed();
        Ok(vec![NamedTensor::new(EMBEDDING_OUTPUT, embedding)])
    }
}
