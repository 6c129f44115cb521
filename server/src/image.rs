//! Image models in the server: a version's preprocessing and class labels, and the bounded
//! pool that decodes images off the async runtime, before the batcher (so that images of any
//! size batch together as the network's fixed-size input).

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use infergate_config::ImageInput;
use infergate_runtime::image::{ImageError, ImageFactory, ImageProcessor};
use infergate_runtime::ort::OrtRuntime;
use infergate_runtime::{BackendFactory, RuntimeError, Tensor};

use crate::error::{ErrorKind, ServeError};
use crate::pool::ProcessingPool;

/// A model's class names, by class index.
pub type ClassNames = Arc<[String]>;

/// An image model version's processing.
#[derive(Debug, Clone)]
pub struct ImageModel {
    pub processor: Arc<ImageProcessor>,
    pool: ProcessingPool,
}

impl ImageModel {
    /// Loads a version folder: the network behind an encoded-image signature, and the
    /// processing in front of it.
    pub fn load(
        dir: &Path,
        config: &ImageInput,
        runtime: &OrtRuntime,
        intra_op_threads: usize,
    ) -> Result<(Arc<dyn BackendFactory>, Self), RuntimeError> {
        let factory = ImageFactory::load(dir, config, Some(runtime), intra_op_threads)?;
        Ok((Arc::new(factory), Self::new(config)))
    }

    /// The processing of `config`, for a network loaded elsewhere (a registry version).
    pub fn new(config: &ImageInput) -> Self {
        Self {
            processor: Arc::new(ImageProcessor::new(config.clone())),
            pool: ProcessingPool::new(config.decode_threads, "image decoder"),
        }
    }

    /// Decodes and preprocesses `images` into the network's FP32 `[N, 3, size, size]`.
    pub async fn preprocess(&self, images: Vec<Bytes>) -> Result<Tensor, ServeError> {
        let processor = Arc::clone(&self.processor);
        let n = images.len();
        let values = self
            .pool
            .run(move || {
                let mut values = Vec::with_capacity(n * processor.values_per_image());
                for (index, image) in images.iter().enumerate() {
                    processor.preprocess(index, image, &mut values)?;
                }
                Ok::<_, ImageError>(values)
            })
            .await?
            .map_err(image_error)?;
        let s = i64::from(self.processor.config().size);
        Tensor::from_slice(vec![n as i64, 3, s, s], &values)
            .map_err(|e| ServeError::internal(e.to_string()))
    }
}

/// The class of an image's error: too many bytes is 413, the rest 400.
pub fn image_error(e: ImageError) -> ServeError {
    let kind = match e {
        ImageError::TooManyBytes { .. } => ErrorKind::TooLarge,
        _ => ErrorKind::InvalidInput,
    };
    ServeError::new(kind, e.to_string())
}

/// The class names of a version folder's `labels.txt` (one a line, Triton's label file), if any.
pub fn read_labels(dir: &Path) -> Result<Option<ClassNames>, String> {
    let path = dir.join(LABELS_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.lines().map(|l| l.trim().to_owned()).collect())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// A model version's class names file.
pub const LABELS_FILE: &str = "labels.txt";

/// A registry version's image processing and class names: its `architecture` record holds
/// `image` (an [`ImageInput`]) and `labels` (a list of names) when it is an image model.
pub fn registry_image(
    architecture: &serde_json::Value,
) -> Result<Option<(ImageInput, Option<ClassNames>)>, String> {
    let Some(image) = architecture.get("image") else {
        return Ok(None);
    };
    let config: ImageInput =
        serde_json::from_value(image.clone()).map_err(|e| format!("architecture.image: {e}"))?;
    let labels = match architecture.get("labels") {
        Some(l) => Some(
            serde_json::from_value::<Vec<String>>(l.clone())
                .map_err(|e| format!("architecture.labels: {e}"))?
                .into(),
        ),
        None => None,
    };
    Ok(Some((config, labels)))
}
