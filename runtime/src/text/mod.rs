//! Text models: the tokenizer (Hugging Face `tokenizer.json`, no Python), limits on input
//! length, padding into `input_ids`/`attention_mask`, and pooling token vectors into one
//! sentence vector. The embedding backend ([`EmbeddingFactory`]) runs a transformer encoder
//! (ONNX Runtime or candle) behind this.

mod embed;
mod files;

use infergate_config::{Pooling, TextEmbedding};
use tokenizers::{PostProcessor as _, Tokenizer};

pub use embed::EmbeddingFactory;
pub use files::{
    POOLING_CONFIG_FILE, TOKENIZER_FILE, TRANSFORMER_CONFIG_FILE, TextModelFiles, TransformerInfo,
    read_json,
};

use crate::{RuntimeError, Tensor};

/// The served text input: BYTES `[N]`, one UTF-8 string per row.
pub const TEXT_INPUT: &str = "text";
/// The served output: FP32 `[N, dim]`, pooled (normalization is [`TextProcessor::finish`]'s).
pub const EMBEDDING_OUTPUT: &str = "embedding";
/// Token ids `[N, L]`, padded with 0 past each row's length.
pub const INPUT_IDS: &str = "input_ids";
/// 1 for a real token, 0 for padding, `[N, L]`.
pub const ATTENTION_MASK: &str = "attention_mask";
/// Segment ids (all 0 for one sentence), `[N, L]`.
pub const TOKEN_TYPE_IDS: &str = "token_type_ids";
/// The encoder's output: FP32 `[N, L, hidden]`.
pub const HIDDEN_STATE: &str = "last_hidden_state";

/// Why one input cannot be embedded (a client error; `index` is the input's position).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("input {index} is empty: an embedding needs at least one character")]
    Empty { index: usize },
    #[error("input {index} is not valid UTF-8")]
    NotUtf8 { index: usize },
    #[error(
        "input {index} has {tokens} tokens, over the model's maximum of {max} (ask for truncation to cut it)"
    )]
    TooLong {
        index: usize,
        tokens: usize,
        max: usize,
    },
    #[error("input {index} holds token id {id}, outside the vocabulary of {vocab} tokens")]
    BadToken { index: usize, id: i64, vocab: usize },
    #[error("tokenizer failed on input {index}: {message}")]
    Tokenizer { index: usize, message: String },
}

/// A text model's tokenizer and the processing around its encoder.
pub struct TextProcessor {
    tokenizer: Tokenizer,
    /// Special tokens the post-processor adds around one sequence ([CLS] … [SEP]: 2).
    added: usize,
    vocab: usize,
    pub pooling: Pooling,
    pub normalize: bool,
    pub max_tokens: usize,
    pub truncatable_dimensions: bool,
    /// Width of the embedding.
    pub dim: usize,
}

impl std::fmt::Debug for TextProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextProcessor")
            .field("pooling", &self.pooling)
            .field("max_tokens", &self.max_tokens)
            .field("dim", &self.dim)
            .finish()
    }
}

impl TextProcessor {
    /// Reads `tokenizer.json` (and `config.json` / `1_Pooling/config.json` for what `config`
    /// leaves open) from a version folder.
    pub fn load(files: &TextModelFiles, config: &TextEmbedding) -> Result<Self, RuntimeError> {
        let bytes = std::fs::read(&files.tokenizer).map_err(|e| RuntimeError::Load {
            path: files.tokenizer.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_bytes(
            &bytes,
            &files.info,
            config,
            &files.tokenizer.display().to_string(),
        )
    }

    /// The processor of a `tokenizer.json`'s content (`origin` names it in errors), with what
    /// the transformer's files say for the settings `config` leaves open. The tokenizer's own
    /// padding and truncation are switched off: rows are padded per batch, and length limits
    /// are checked here.
    pub fn from_bytes(
        tokenizer_json: &[u8],
        info: &TransformerInfo,
        config: &TextEmbedding,
        origin: &str,
    ) -> Result<Self, RuntimeError> {
        let load_error = |message: String| RuntimeError::Load {
            path: origin.to_owned(),
            message,
        };
        let mut tokenizer =
            Tokenizer::from_bytes(tokenizer_json).map_err(|e| load_error(e.to_string()))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| load_error(e.to_string()))?;
        let added = tokenizer
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        let vocab = tokenizer.get_vocab_size(true);
        let max_tokens = config
            .max_input_tokens
            .map(|m| m as usize)
            .or(info.max_position_embeddings())
            .unwrap_or(512);
        if max_tokens <= added {
            return Err(load_error(format!(
                "max_input_tokens {max_tokens} leaves no room for text"
            )));
        }
        Ok(Self {
            tokenizer,
            added,
            vocab,
            pooling: config.pooling.or(info.pooling).unwrap_or(Pooling::Mean),
            normalize: config.normalize,
            max_tokens,
            truncatable_dimensions: config.truncatable_dimensions,
            dim: info.hidden_size().unwrap_or(0),
        })
    }

    /// Token ids of one input, special tokens included. Longer than the model's maximum is an
    /// error unless `truncate`, which keeps the first tokens that fit.
    pub fn tokenize(
        &self,
        index: usize,
        text: &str,
        truncate: bool,
    ) -> Result<Vec<u32>, TextError> {
        if text.is_empty() {
            return Err(TextError::Empty { index });
        }
        let tokenizer_error = |e: tokenizers::Error| TextError::Tokenizer {
            index,
            message: e.to_string(),
        };
        let mut encoding = self
            .tokenizer
            .encode_fast(text, false)
            .map_err(tokenizer_error)?;
        let tokens = encoding.len() + self.added;
        if tokens > self.max_tokens {
            if !truncate {
                return Err(TextError::TooLong {
                    index,
                    tokens,
                    max: self.max_tokens,
                });
            }
            encoding.truncate(
                self.max_tokens - self.added,
                0,
                tokenizers::TruncationDirection::Right,
            );
        }
        let encoding = self
            .tokenizer
            .post_process(encoding, None, true)
            .map_err(tokenizer_error)?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Checks token ids a client sent instead of text (OpenAI's token-id inputs).
    pub fn check_ids(
        &self,
        index: usize,
        ids: &[i64],
        truncate: bool,
    ) -> Result<Vec<u32>, TextError> {
        if ids.is_empty() {
            return Err(TextError::Empty { index });
        }
        if let Some(&id) = ids.iter().find(|&&id| id < 0 || id as usize >= self.vocab) {
            return Err(TextError::BadToken {
                index,
                id,
                vocab: self.vocab,
            });
        }
        if ids.len() > self.max_tokens && !truncate {
            return Err(TextError::TooLong {
                index,
                tokens: ids.len(),
                max: self.max_tokens,
            });
        }
        Ok(ids
            .iter()
            .take(self.max_tokens)
            .map(|&id| id as u32)
            .collect())
    }

    /// Normalizes (when asked) and cuts each row of `embeddings` (`[rows, dim]`) to `dims`.
    pub fn finish(embeddings: &[f32], dim: usize, dims: usize, normalize: bool) -> Vec<f32> {
        let mut out = Vec::with_capacity(embeddings.len() / dim.max(1) * dims);
        for row in embeddings.chunks_exact(dim.max(1)) {
            let row = &row[..dims.min(row.len())];
            let scale = if normalize {
                let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
                if norm > 0.0 { 1.0 / norm } else { 1.0 }
            } else {
                1.0
            };
            out.extend(row.iter().map(|x| x * scale));
        }
        out
    }
}

/// Rows of token ids padded with 0 to the longest: `input_ids` and `attention_mask`,
/// both INT64 `[rows, longest]`.
pub fn pad(rows: &[&[u32]]) -> Result<(Tensor, Tensor), RuntimeError> {
    let longest = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut ids = vec![0i64; rows.len() * longest];
    let mut mask = vec![0i64; rows.len() * longest];
    for (r, row) in rows.iter().enumerate() {
        for (c, &id) in row.iter().enumerate() {
            ids[r * longest + c] = i64::from(id);
            mask[r * longest + c] = 1;
        }
    }
    let shape = vec![rows.len() as i64, longest as i64];
    Ok((
        Tensor::from_slice(shape.clone(), &ids)?,
        Tensor::from_slice(shape, &mask)?,
    ))
}

/// Pools `hidden` (`[rows, seq, width]`, row-major) under `mask` (`[rows, seq]`, 1 = real
/// token) into `[rows, width]`.
pub fn pool(
    pooling: Pooling,
    hidden: &[f32],
    mask: &[i64],
    rows: usize,
    seq: usize,
    width: usize,
) -> Vec<f32> {
    let mut out = vec![0f32; rows * width];
    for r in 0..rows {
        let dst = &mut out[r * width..(r + 1) * width];
        let token = |t: usize| &hidden[(r * seq + t) * width..(r * seq + t + 1) * width];
        let real = mask[r * seq..(r + 1) * seq]
            .iter()
            .filter(|&&m| m != 0)
            .count();
        match pooling {
            Pooling::Cls => dst.copy_from_slice(token(0)),
            Pooling::LastToken => dst.copy_from_slice(token(real.saturating_sub(1))),
            Pooling::Mean => {
                for t in (0..seq).filter(|&t| mask[r * seq + t] != 0) {
                    for (d, v) in dst.iter_mut().zip(token(t)) {
                        *d += v;
                    }
                }
                let n = real.max(1) as f32;
                dst.iter_mut().for_each(|d| *d /= n);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_pooling_ignores_padding_and_cls_and_last_pick_their_token() {
        // Two rows of three tokens, width 2; the second row has one padded token.
        let hidden = [1., 2., 3., 4., 5., 6., 10., 20., 30., 40., 99., 99.];
        let mask = [1, 1, 1, 1, 1, 0];
        assert_eq!(
            pool(Pooling::Mean, &hidden, &mask, 2, 3, 2),
            vec![3., 4., 20., 30.]
        );
        assert_eq!(
            pool(Pooling::Cls, &hidden, &mask, 2, 3, 2),
            vec![1., 2., 10., 20.]
        );
        assert_eq!(
            pool(Pooling::LastToken, &hidden, &mask, 2, 3, 2),
            vec![5., 6., 30., 40.]
        );
    }

    #[test]
    fn finish_normalizes_and_cuts_rows() {
        let out = TextProcessor::finish(&[3., 4., 0., 0., 0., 5.], 3, 2, true);
        assert_eq!(out, vec![0.6, 0.8, 0.0, 0.0]);
        let raw = TextProcessor::finish(&[3., 4., 1.], 3, 3, false);
        assert_eq!(raw, vec![3., 4., 1.]);
    }

    #[test]
    fn pad_fills_ids_and_mask_to_the_longest_row() {
        let (ids, mask) = pad(&[&[101, 7, 102], &[101, 102]]).unwrap();
        assert_eq!(ids.shape(), &[2, 3]);
        assert_eq!(ids.to_vec::<i64>().unwrap(), vec![101, 7, 102, 101, 102, 0]);
        assert_eq!(mask.to_vec::<i64>().unwrap(), vec![1, 1, 1, 1, 1, 0]);
    }
}
