//! The candle backend: networks described by an [`Arch`] (stored with the registry version)
//! built from safetensors weights, so models run without ONNX Runtime. The trainer trains the
//! same [`Net`], so what is served is exactly what was trained.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

pub mod bert;
pub mod efficientnet;
pub mod pth;

use candle_core::{D, Device, Tensor as CTensor};
use serde::{Deserialize, Serialize};

use crate::{
    Backend, BackendFactory, DataType, NamedTensor, RuntimeError, Signature, StageTimings, Tensor,
    TensorSpec,
};

/// The KServe platform string of the candle backend.
pub const PLATFORM: &str = "candle_safetensors";

/// A network's shape. Every architecture takes `input` FP32 `[N, features]` and returns
/// `logits` FP32 `[N, classes]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Arch {
    /// Fully connected layers with ReLU between them.
    Mlp {
        inputs: usize,
        hidden: Vec<usize>,
        classes: usize,
    },
    /// `[N, height*width]` viewed as one-channel images; per entry of `channels` a 3×3 conv
    /// (padding 1), ReLU and 2×2 max-pool; then a hidden fully connected layer and the output.
    Cnn {
        height: usize,
        width: usize,
        channels: Vec<usize>,
        hidden: usize,
        classes: usize,
    },
}

/// One parameter of an architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    /// Inputs feeding one output unit (for initialization).
    pub fan_in: usize,
}

impl Arch {
    pub fn features(&self) -> usize {
        match self {
            Self::Mlp { inputs, .. } => *inputs,
            Self::Cnn { height, width, .. } => height * width,
        }
    }

    pub fn classes(&self) -> usize {
        match self {
            Self::Mlp { classes, .. } | Self::Cnn { classes, .. } => *classes,
        }
    }

    /// The fully connected layers as `(inputs, outputs)`.
    pub fn dense_layers(&self) -> Vec<(usize, usize)> {
        let widths: Vec<usize> = match self {
            Self::Mlp {
                inputs,
                hidden,
                classes,
            } => std::iter::once(*inputs)
                .chain(hidden.iter().copied())
                .chain(std::iter::once(*classes))
                .collect(),
            Self::Cnn {
                height,
                width,
                channels,
                hidden,
                classes,
            } => {
                let pooled = (height >> channels.len()) * (width >> channels.len());
                vec![
                    channels.last().copied().unwrap_or(1) * pooled,
                    *hidden,
                    *classes,
                ]
            }
        };
        widths.windows(2).map(|w| (w[0], w[1])).collect()
    }

    /// Every parameter, in a fixed order.
    pub fn params(&self) -> Vec<ParamSpec> {
        let mut out = Vec::new();
        if let Self::Cnn { channels, .. } = self {
            let mut cin = 1;
            for (i, &cout) in channels.iter().enumerate() {
                out.push(ParamSpec {
                    name: format!("conv{i}.weight"),
                    shape: vec![cout, cin, 3, 3],
                    fan_in: cin * 9,
                });
                out.push(ParamSpec {
                    name: format!("conv{i}.bias"),
                    shape: vec![cout],
                    fan_in: cin * 9,
                });
                cin = cout;
            }
        }
        for (i, (fin, fout)) in self.dense_layers().into_iter().enumerate() {
            out.push(ParamSpec {
                name: format!("fc{i}.weight"),
                shape: vec![fout, fin],
                fan_in: fin,
            });
            out.push(ParamSpec {
                name: format!("fc{i}.bias"),
                shape: vec![fout],
                fan_in: fin,
            });
        }
        out
    }

    /// Total number of parameters.
    pub fn param_count(&self) -> usize {
        self.params()
            .iter()
            .map(|p| p.shape.iter().product::<usize>())
            .sum()
    }

    /// The served signature.
    pub fn signature(&self) -> Signature {
        Signature {
            inputs: vec![TensorSpec {
                name: "input".to_owned(),
                dtype: DataType::Fp32,
                shape: vec![-1, self.features() as i64],
            }],
            outputs: vec![TensorSpec {
                name: "logits".to_owned(),
                dtype: DataType::Fp32,
                shape: vec![-1, self.classes() as i64],
            }],
        }
    }

    fn check(&self) -> Result<(), String> {
        if let Self::Cnn {
            height,
            width,
            channels,
            ..
        } = self
        {
            let k = channels.len();
            if k == 0 || k > 4 || height % (1 << k) != 0 || width % (1 << k) != 0 {
                return Err(format!(
                    "cnn of {k} conv layers needs height and width divisible by {}",
                    1usize << k.min(4)
                ));
            }
        }
        if self.features() == 0 || self.classes() == 0 {
            return Err("inputs and classes must be positive".to_owned());
        }
        Ok(())
    }
}

/// A network: an architecture with its parameter tensors.
#[derive(Debug, Clone)]
pub struct Net {
    arch: Arch,
    params: HashMap<String, CTensor>,
}

impl Net {
    /// Checks that `params` holds exactly the architecture's parameters with their shapes.
    pub fn new(arch: Arch, params: HashMap<String, CTensor>) -> Result<Self, RuntimeError> {
        arch.check().map_err(RuntimeError::Unsupported)?;
        for spec in arch.params() {
            let t = params.get(&spec.name).ok_or_else(|| {
                RuntimeError::Unsupported(format!("weights lack parameter '{}'", spec.name))
            })?;
            if t.dims() != spec.shape.as_slice() {
                return Err(RuntimeError::Unsupported(format!(
                    "parameter '{}' has shape {:?}, the architecture needs {:?}",
                    spec.name,
                    t.dims(),
                    spec.shape
                )));
            }
        }
        Ok(Self { arch, params })
    }

    pub fn arch(&self) -> &Arch {
        &self.arch
    }

    pub fn params(&self) -> &HashMap<String, CTensor> {
        &self.params
    }

    fn p(&self, name: &str) -> &CTensor {
        &self.params[name]
    }

    /// Logits `[N, classes]` for `x` `[N, features]`.
    pub fn forward(&self, x: &CTensor) -> candle_core::Result<CTensor> {
        self.forward_observed(x, &mut |_, _, _| Ok(()))
    }

    /// [`Net::forward`], calling `observe(layer, input, output before bias)` for every
    /// weighted layer (`conv0`…, `fc0`…); quantization calibrates on these.
    pub fn forward_observed(
        &self,
        x: &CTensor,
        observe: &mut dyn FnMut(&str, &CTensor, &CTensor) -> candle_core::Result<()>,
    ) -> candle_core::Result<CTensor> {
        let mut h = x.clone();
        if let Arch::Cnn {
            height,
            width,
            channels,
            ..
        } = &self.arch
        {
            // Channels-last inside: every convolution is one matrix product and pooling a
            // reshape; the result is put back in NCHW order before flattening, as ONNX does.
            h = h.reshape((h.dim(0)?, *height, *width, 1))?;
            for i in 0..channels.len() {
                let name = format!("conv{i}");
                let w = self.p(&format!("{name}.weight"));
                let b = self.p(&format!("{name}.bias"));
                let y = conv3x3_nhwc(&h, w)?;
                observe(&name, &h, &y)?;
                // relu(pool(x)) = pool(relu(x)), on a quarter of the elements.
                h = max_pool2_nhwc(&y.broadcast_add(b)?)?.relu()?;
            }
            h = h.permute((0, 3, 1, 2))?.flatten_from(1)?;
        }
        let layers = self.arch.dense_layers().len();
        for i in 0..layers {
            let name = format!("fc{i}");
            let w = self.p(&format!("{name}.weight"));
            let b = self.p(&format!("{name}.bias"));
            let y = h.matmul(&w.t()?)?;
            observe(&name, &h, &y)?;
            h = y.broadcast_add(b)?;
            if i + 1 < layers {
                h = h.relu()?;
            }
        }
        Ok(h)
    }

    /// Predicted class per row.
    pub fn predict(&self, x: &CTensor) -> candle_core::Result<Vec<u32>> {
        self.forward(x)?.argmax(D::Minus1)?.to_vec1()
    }
}

/// A 3×3 convolution with padding 1 over channels-last `x` `[N, H, W, C]` as im2col and one
/// matrix product with the `[Cout, C, 3, 3]` kernel; returns `[N, H, W, Cout]`. Its gradient
/// is a matrix product too, which trains several times faster on CPU than a direct
/// convolution.
fn conv3x3_nhwc(x: &CTensor, w: &CTensor) -> candle_core::Result<CTensor> {
    let (n, h, wd, c) = x.dims4()?;
    let cout = w.dim(0)?;
    let padded = x.pad_with_zeros(1, 1, 1)?.pad_with_zeros(2, 1, 1)?;
    let mut taps = Vec::with_capacity(9);
    for dy in 0..3 {
        for dx in 0..3 {
            taps.push(padded.narrow(1, dy, h)?.narrow(2, dx, wd)?);
        }
    }
    // [N, H, W, 9, C] rows against the kernel as [Cout, 3, 3, C] (tap = 3·dy + dx).
    let cols = CTensor::stack(&taps, 3)?.reshape((n * h * wd, 9 * c))?;
    let kernel = w.permute((0, 2, 3, 1))?.reshape((cout, 9 * c))?;
    cols.matmul(&kernel.t()?)?.reshape((n, h, wd, cout))
}

/// 2×2 max-pooling with stride 2 over channels-last `[N, H, W, C]`.
fn max_pool2_nhwc(x: &CTensor) -> candle_core::Result<CTensor> {
    let (n, h, w, c) = x.dims4()?;
    x.reshape((n, h / 2, 2, w / 2, 2, c))?.max(4)?.max(2)
}

fn candle_error(e: candle_core::Error) -> RuntimeError {
    RuntimeError::Backend(e.to_string())
}

/// Serves a [`Net`] loaded from safetensors.
#[derive(Debug)]
pub struct CandleFactory {
    net: Arc<Net>,
    signature: Signature,
}

impl CandleFactory {
    /// Builds the network of `arch` from safetensors bytes; `origin` names them in errors.
    pub fn from_safetensors(arch: Arch, bytes: &[u8], origin: &str) -> Result<Self, RuntimeError> {
        Ok(Self::new(Self::net_from_safetensors(arch, bytes, origin)?))
    }

    /// The network of `arch` with its weights read from safetensors bytes.
    pub fn net_from_safetensors(
        arch: Arch,
        bytes: &[u8],
        origin: &str,
    ) -> Result<Net, RuntimeError> {
        let params = candle_core::safetensors::load_buffer(bytes, &Device::Cpu).map_err(|e| {
            RuntimeError::Load {
                path: origin.to_owned(),
                message: e.to_string(),
            }
        })?;
        let params = params
            .into_iter()
            .map(|(k, v)| Ok((k, v.to_dtype(candle_core::DType::F32)?)))
            .collect::<candle_core::Result<_>>()
            .map_err(candle_error)?;
        Net::new(arch, params)
    }

    pub fn new(net: Net) -> Self {
        Self {
            signature: net.arch.signature(),
            net: Arc::new(net),
        }
    }
}

impl BackendFactory for CandleFactory {
    fn platform(&self) -> &str {
        PLATFORM
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn create(&self) -> Result<Box<dyn Backend>, RuntimeError> {
        Ok(Box::new(CandleBackend {
            net: Arc::clone(&self.net),
            output: Arc::from(self.signature.outputs[0].name.as_str()),
        }))
    }
}

/// One instance of a candle network (tensors shared between instances).
pub struct CandleBackend {
    net: Arc<Net>,
    output: Arc<str>,
}

impl Backend for CandleBackend {
    fn infer(
        &mut self,
        inputs: &[NamedTensor],
        timings: &mut StageTimings,
    ) -> Result<Vec<NamedTensor>, RuntimeError> {
        let start = Instant::now();
        let input = inputs
            .iter()
            .find(|i| &*i.name == "input")
            .ok_or_else(|| RuntimeError::InvalidInput("missing input 'input'".to_owned()))?;
        let shape = input.tensor.shape();
        let features = self.net.arch.features();
        let values: Vec<f32> = input
            .tensor
            .to_vec()
            .filter(|_| shape.len() == 2 && shape[1] as usize == features)
            .ok_or_else(|| {
                RuntimeError::InvalidInput(format!(
                    "input 'input' must be FP32 [N, {features}], got {:?} {shape:?}",
                    input.tensor.dtype()
                ))
            })?;
        let rows = shape[0] as usize;
        let x = CTensor::from_vec(values, (rows, features), &Device::Cpu).map_err(candle_error)?;
        let prepared = Instant::now();
        timings.input = prepared - start;
        let logits = self.net.forward(&x).map_err(candle_error)?;
        let out: Vec<f32> = logits
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(candle_error)?;
        let ran = Instant::now();
        timings.infer = ran - prepared;
        let tensor = Tensor::from_slice(vec![rows as i64, self.net.arch.classes() as i64], &out)?;
        timings.output = ran.elapsed();
        Ok(vec![NamedTensor::new(Arc::clone(&self.output), tensor)])
    }
}
