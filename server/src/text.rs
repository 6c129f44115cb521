//! Text models in the server: a version's tokenizer and the bounded pool that runs it off the
//! async runtime, before the batcher (so that batches can close on a token budget).

use std::path::Path;
use std::sync::Arc;

use crate::error::{ErrorKind, ServeError};
use crate::pool::ProcessingPool;
use infergate_config::TextEmbedding;
use infergate_runtime::ort::OrtRuntime;
use infergate_runtime::text::{EmbeddingFactory, TextError, TextModelFiles, TextProcessor};
use infergate_runtime::{BackendFactory, RuntimeError};

/// Request parameters that change a text model's answer (part of its response-cache key).
pub const OUTPUT_PARAMETERS: [&str; 3] = ["truncate", "normalize", "dimensions"];

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
        let model = Self {
            processor: Arc::clone(factory.processor()),
            pool: ProcessingPool::new(config.tokenizer_threads, "tokenizer"),
        };
        Ok((Arc::new(factory), model))
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
