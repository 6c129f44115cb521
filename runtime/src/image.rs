//! Image models' input processing: an encoded image (JPEG, PNG, WebP) becomes the network's
//! FP32 `[3, size, size]` input: header checked against the limits before any pixel is decoded,
//! decoded to RGB, the centre square resized (the short side to `resize_short_side`, then the
//! centre `size` × `size`, in one resampling), scaled per channel, laid out NCHW.

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer, images::Image};
use image::{ImageFormat, ImageReader, Limits};
use infergate_config::{ImageBackend, ImageInput};

use crate::candle::efficientnet::{EfficientNet, EfficientNetFactory};
use crate::ort::OrtRuntime;
use crate::{Backend, BackendFactory, DataType, RuntimeError, Signature, TensorSpec};

/// The input an image model is served with: encoded images, one per element.
pub const IMAGE_INPUT: &str = "image";
/// The network's input the images become: FP32 `[N, 3, size, size]`.
pub const PIXELS_INPUT: &str = "input";

/// An image model: the network (ONNX Runtime or candle) behind a signature that takes encoded
/// images; the server turns them into [`PIXELS_INPUT`] before the batcher.
pub struct ImageFactory {
    network: Arc<dyn BackendFactory>,
    signature: Signature,
}

impl std::fmt::Debug for ImageFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageFactory")
            .field("platform", &self.network.platform())
            .field("signature", &self.signature)
            .finish()
    }
}

impl ImageFactory {
    /// The file of a version folder that holds the network for `backend`.
    pub fn model_file(backend: ImageBackend) -> &'static str {
        match backend {
            ImageBackend::Onnx => "model.onnx",
            ImageBackend::CandleEfficientnetLite0 => "model.pth",
        }
    }

    /// Loads the network of a version folder (ONNX needs `runtime`).
    pub fn load(
        dir: &Path,
        config: &ImageInput,
        runtime: Option<&OrtRuntime>,
        intra_op_threads: usize,
    ) -> Result<Self, RuntimeError> {
        let path = dir.join(Self::model_file(config.backend));
        let network: Arc<dyn BackendFactory> = match config.backend {
            ImageBackend::Onnx => {
                let runtime = runtime.ok_or_else(|| {
                    RuntimeError::OrtNotFound(
                        "an ONNX image model needs ONNX Runtime, which is not loaded".into(),
                    )
                })?;
                Arc::new(runtime.load(&path, intra_op_threads)?)
            }
            ImageBackend::CandleEfficientnetLite0 => Arc::new(EfficientNetFactory::new(
                EfficientNet::lite0_from_pth(&path)?,
            )),
        };
        Self::new(network, config)
    }

    /// Checks that `network` takes FP32 `[N, 3, size, size]` as [`PIXELS_INPUT`].
    pub fn new(
        network: Arc<dyn BackendFactory>,
        config: &ImageInput,
    ) -> Result<Self, RuntimeError> {
        let sig = network.signature();
        let s = i64::from(config.size);
        let input = sig.input(PIXELS_INPUT).filter(|i| {
            i.dtype == DataType::Fp32
                && i.shape.len() == 4
                && i.shape[1] == 3
                && [s, -1].contains(&i.shape[2])
                && [s, -1].contains(&i.shape[3])
        });
        if input.is_none() || sig.inputs.len() != 1 {
            return Err(RuntimeError::Unsupported(format!(
                "an image model takes one input '{PIXELS_INPUT}' FP32 [N, 3, {s}, {s}] (image.size = {s})"
            )));
        }
        let signature = Signature {
            inputs: vec![TensorSpec {
                name: IMAGE_INPUT.to_owned(),
                dtype: DataType::Bytes,
                shape: vec![-1],
            }],
            outputs: sig.outputs.clone(),
        };
        Ok(Self { network, signature })
    }
}

impl BackendFactory for ImageFactory {
    fn platform(&self) -> &str {
        self.network.platform()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn create(&self) -> Result<Box<dyn Backend>, RuntimeError> {
        self.network.create()
    }
}

/// Why an image cannot be used (`index`: its position in the request).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("image {index} is empty")]
    Empty { index: usize },
    #[error("image {index} is {bytes} bytes, over the model's limit of {max}")]
    TooManyBytes {
        index: usize,
        bytes: usize,
        max: usize,
    },
    #[error("image {index} is not a JPEG, PNG or WebP image")]
    UnknownFormat { index: usize },
    #[error("image {index} is {width}x{height}, over the model's limit of {max} pixels a side")]
    TooLarge {
        index: usize,
        width: u32,
        height: u32,
        max: u32,
    },
    #[error("image {index} cannot be decoded: {reason}")]
    Corrupt { index: usize, reason: String },
}

/// How a model's images are prepared.
#[derive(Debug, Clone)]
pub struct ImageProcessor {
    config: ImageInput,
}

impl ImageProcessor {
    pub fn new(config: ImageInput) -> Self {
        Self { config }
    }

    pub fn config(&self) -> &ImageInput {
        &self.config
    }

    /// Values per preprocessed image: `3 × size × size`.
    pub fn values_per_image(&self) -> usize {
        let s = self.config.size as usize;
        3 * s * s
    }

    /// Appends the NCHW values of image `index` (encoded `bytes`) to `out`.
    pub fn preprocess(
        &self,
        index: usize,
        bytes: &[u8],
        out: &mut Vec<f32>,
    ) -> Result<(), ImageError> {
        let rgb = self.decode(index, bytes)?;
        let s = self.config.size;
        let (w, h) = (rgb.width(), rgb.height());
        // The centre crop of the resized image, in source pixels.
        let scale = f64::from(self.config.resize_short_side) / f64::from(w.min(h));
        let crop = f64::from(s) / scale;
        let (left, top) = ((f64::from(w) - crop) / 2.0, (f64::from(h) - crop) / 2.0);
        let mut dst = Image::new(s, s, fast_image_resize::PixelType::U8x3);
        let options = ResizeOptions::new()
            .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
            .crop(left, top, crop, crop);
        Resizer::new()
            .resize(&rgb, &mut dst, &options)
            .map_err(|e| ImageError::Corrupt {
                index,
                reason: e.to_string(),
            })?;
        let pixels = dst.buffer();
        let plane = (s * s) as usize;
        let start = out.len();
        out.resize(start + 3 * plane, 0.0);
        let planes = &mut out[start..];
        for c in 0..3 {
            let (mean, std) = (self.config.mean[c], self.config.std[c]);
            let dst = &mut planes[c * plane..(c + 1) * plane];
            for (v, px) in dst.iter_mut().zip(pixels.chunks_exact(3)) {
                *v = (f32::from(px[c]) - mean) / std;
            }
        }
        Ok(())
    }

    /// Checks the header against the limits, then decodes to RGB8.
    fn decode(&self, index: usize, bytes: &[u8]) -> Result<image::RgbImage, ImageError> {
        if bytes.is_empty() {
            return Err(ImageError::Empty { index });
        }
        if bytes.len() > self.config.max_bytes {
            return Err(ImageError::TooManyBytes {
                index,
                bytes: bytes.len(),
                max: self.config.max_bytes,
            });
        }
        let corrupt = |e: image::ImageError| ImageError::Corrupt {
            index,
            reason: e.to_string(),
        };
        let reader = || -> Result<ImageReader<Cursor<&[u8]>>, ImageError> {
            let reader = ImageReader::new(Cursor::new(bytes))
                .with_guessed_format()
                .map_err(|e| ImageError::Corrupt {
                    index,
                    reason: e.to_string(),
                })?;
            match reader.format() {
                Some(ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP) => Ok(reader),
                _ => Err(ImageError::UnknownFormat { index }),
            }
        };
        let format = reader()?.format();
        if format == Some(ImageFormat::Jpeg) && !jpeg_complete(bytes) {
            // The JPEG decoder fills a cut-off scan with grey rather than failing.
            return Err(ImageError::Corrupt {
                index,
                reason: "the JPEG data is truncated (no end-of-image marker after its last scan)"
                    .into(),
            });
        }
        let (width, height) = reader()?.into_dimensions().map_err(corrupt)?;
        let max = self.config.max_dimension;
        if width > max || height > max {
            return Err(ImageError::TooLarge {
                index,
                width,
                height,
                max,
            });
        }
        if width == 0 || height == 0 {
            return Err(ImageError::Corrupt {
                index,
                reason: format!("it is {width}x{height}"),
            });
        }
        let mut reader = reader()?;
        let mut limits = Limits::default();
        limits.max_image_width = Some(max);
        limits.max_image_height = Some(max);
        // RGBA at 16 bits a channel is the largest a decoder allocates for the frame.
        limits.max_alloc = Some(u64::from(width) * u64::from(height) * 8 + (1 << 20));
        reader.limits(limits);
        Ok(reader.decode().map_err(corrupt)?.into_rgb8())
    }
}

/// Whether a JPEG's last scan (start-of-scan marker `FF DA`) is followed by the end-of-image
/// marker `FF D9` (an embedded thumbnail's markers come before the main image's scans).
fn jpeg_complete(bytes: &[u8]) -> bool {
    let last = |marker: u8| bytes.windows(2).rposition(|w| w == [0xFF, marker]);
    matches!((last(0xDA), last(0xD9)), (Some(sos), Some(eoi)) if eoi > sos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(img: &image::RgbImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    fn processor(size: u32, short: u32) -> ImageProcessor {
        ImageProcessor::new(ImageInput {
            size,
            resize_short_side: short,
            ..ImageInput::default()
        })
    }

    #[test]
    fn centre_crop_scales_and_lays_out_channels_first() {
        // Red, green, blue bands along the long side (36): the centre crop (12, resampled to
        // 2, reading up to 6 pixels around it) is all green, whichever side is long.
        let third = |i: u32| match i {
            0..8 => image::Rgb([255, 0, 0]),
            8..28 => image::Rgb([0, 255, 0]),
            _ => image::Rgb([0, 0, 255]),
        };
        let wide = image::RgbImage::from_fn(36, 12, |x, _| third(x));
        let tall = image::RgbImage::from_fn(12, 36, |_, y| third(y));
        for img in [wide, tall] {
            let bytes = encode(&img, ImageFormat::Png);
            let mut out = vec![7.0];
            processor(2, 2).preprocess(0, &bytes, &mut out).unwrap();
            assert_eq!(out[0], 7.0, "appends");
            assert_eq!(out.len(), 13);
            let (r, g, b) = (&out[1..5], &out[5..9], &out[9..13]);
            assert_eq!(r, [-1.0; 4]);
            assert_eq!(g, [1.0; 4]);
            assert_eq!(b, [-1.0; 4]);
        }
    }

    #[test]
    fn refuses_bad_images_before_decoding() {
        let p = processor(2, 2);
        let mut out = Vec::new();
        assert_eq!(
            p.preprocess(3, b"", &mut out),
            Err(ImageError::Empty { index: 3 })
        );
        assert_eq!(
            p.preprocess(0, b"not an image at all", &mut out),
            Err(ImageError::UnknownFormat { index: 0 })
        );
        let img = image::RgbImage::from_pixel(16, 16, image::Rgb([9, 9, 9]));
        let png = encode(&img, ImageFormat::Png);
        let truncated = &png[..png.len() / 2];
        assert!(matches!(
            p.preprocess(1, truncated, &mut out),
            Err(ImageError::Corrupt { index: 1, .. })
        ));
        let jpeg = encode(&img, ImageFormat::Jpeg);
        assert!(p.preprocess(0, &jpeg, &mut Vec::new()).is_ok());
        assert!(matches!(
            p.preprocess(1, &jpeg[..jpeg.len() - 10], &mut out),
            Err(ImageError::Corrupt { index: 1, reason }) if reason.contains("truncated")
        ));
        let small = ImageProcessor::new(ImageInput {
            size: 2,
            resize_short_side: 2,
            max_dimension: 8,
            ..ImageInput::default()
        });
        assert_eq!(
            small.preprocess(2, &png, &mut out),
            Err(ImageError::TooLarge {
                index: 2,
                width: 16,
                height: 16,
                max: 8
            })
        );
        assert!(out.is_empty());
    }
}
