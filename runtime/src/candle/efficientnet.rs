//! EfficientNet-Lite in candle, read from a PyTorch state_dict (`.pth`, by `candle_core::pickle`):
//! batch normalization folded into the convolutions, ReLU6, TensorFlow "same" padding, no
//! squeeze-excitation. Takes `input` FP32 `[N, 3, H, W]` (preprocessed, NCHW) and returns
//! `logits` FP32 `[N, classes]`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{D, DType, Device, Tensor as CTensor};

use super::candle_error;
use crate::{
    Backend, BackendFactory, DataType, NamedTensor, RuntimeError, Signature, StageTimings, Tensor,
    TensorSpec,
};

/// The served input and output names.
pub const INPUT: &str = "input";
pub const OUTPUT: &str = "logits";

/// Batch-norm epsilon of EfficientNet-Lite.
const BN_EPS: f64 = 1e-3;

/// One stage of MBConv blocks: repeats, kernel, first stride, expansion, in and out channels.
#[derive(Debug, Clone, Copy)]
struct Stage {
    repeats: usize,
    kernel: usize,
    stride: usize,
    expand: usize,
    input: usize,
    output: usize,
}

/// EfficientNet-Lite0 (width and depth 1.0; stem 32 and head 1280 unscaled).
const LITE0: [Stage; 7] = [
    stage(1, 3, 1, 1, 32, 16),
    stage(2, 3, 2, 6, 16, 24),
    stage(2, 5, 2, 6, 24, 40),
    stage(3, 3, 2, 6, 40, 80),
    stage(3, 5, 1, 6, 80, 112),
    stage(4, 5, 2, 6, 112, 192),
    stage(1, 3, 1, 6, 192, 320),
];

const fn stage(
    repeats: usize,
    kernel: usize,
    stride: usize,
    expand: usize,
    input: usize,
    output: usize,
) -> Stage {
    Stage {
        repeats,
        kernel,
        stride,
        expand,
        input,
        output,
    }
}

/// A convolution with its batch normalization folded in (weight scaled, bias added), and
/// whether ReLU6 follows.
#[derive(Debug, Clone)]
pub struct Conv {
    /// `[out, in / groups, k, k]`.
    pub weight: CTensor,
    /// `[out]`.
    pub bias: CTensor,
    pub stride: usize,
    pub groups: usize,
    pub relu6: bool,
    /// Height and width of its input in the network at its input size (for the padding of an
    /// export).
    pub input_size: usize,
}

impl Conv {
    pub fn kernel(&self) -> usize {
        self.weight.dims()[3]
    }

    /// TensorFlow "same" padding for an input of `size`: `(before, after)`, more after.
    pub fn same_padding(&self, size: usize) -> (usize, usize) {
        let k = self.kernel();
        let out = size.div_ceil(self.stride);
        let total = ((out - 1) * self.stride + k).saturating_sub(size);
        (total / 2, total - total / 2)
    }

    fn forward(&self, x: &CTensor) -> candle_core::Result<CTensor> {
        let (_, _, h, w) = x.dims4()?;
        let (top, bottom) = self.same_padding(h);
        let (left, right) = self.same_padding(w);
        let x = if top + bottom + left + right > 0 {
            x.pad_with_zeros(2, top, bottom)?
                .pad_with_zeros(3, left, right)?
        } else {
            x.clone()
        };
        let y = if self.groups > 1 {
            depthwise(&x, &self.weight, self.stride)?
        } else if self.kernel() == 1 && self.stride == 1 {
            pointwise(&x, &self.weight)?
        } else {
            x.conv2d(&self.weight, 0, self.stride, 1, 1)?
        };
        let y = y.broadcast_add(&self.bias.reshape((1, (), 1, 1))?)?;
        if self.relu6 {
            y.clamp(0f32, 6f32)
        } else {
            Ok(y)
        }
    }
}

/// A 1×1 convolution as one matrix product per image: `[Cout, Cin] × [Cin, H·W]`.
fn pointwise(x: &CTensor, w: &CTensor) -> candle_core::Result<CTensor> {
    let (n, c, h, wd) = x.dims4()?;
    let cout = w.dim(0)?;
    let w = w.reshape((1, cout, c))?.broadcast_as((n, cout, c))?;
    w.matmul(&x.reshape((n, c, h * wd))?)?
        .reshape((n, cout, h, wd))
}

/// A depthwise convolution over padded `x` as one multiply-add per kernel tap (candle's grouped
/// convolution runs one small convolution per channel, far slower on CPU).
fn depthwise(x: &CTensor, w: &CTensor, stride: usize) -> candle_core::Result<CTensor> {
    let (n, c, h, wd) = x.dims4()?;
    let k = w.dim(3)?;
    let (oh, ow) = ((h - k) / stride + 1, (wd - k) / stride + 1);
    let w = w.reshape((c, k * k))?;
    let mut acc: Option<CTensor> = None;
    for dy in 0..k {
        for dx in 0..k {
            let tap = if stride == 1 {
                x.narrow(2, dy, oh)?.narrow(3, dx, ow)?
            } else {
                // rows dy, dy+s, … as a reshape of the slice [dy, dy + s·oh)
                let rows = x.narrow(2, dy, (oh - 1) * stride + 1)?;
                let rows = rows.pad_with_zeros(2, 0, stride - 1)?;
                let rows = rows.reshape((n, c, oh, stride, wd))?.narrow(3, 0, 1)?;
                let rows = rows.reshape((n, c, oh, wd))?;
                let cols = rows.narrow(3, dx, (ow - 1) * stride + 1)?;
                let cols = cols.pad_with_zeros(3, 0, stride - 1)?;
                cols.reshape((n, c, oh, ow, stride))?
                    .narrow(4, 0, 1)?
                    .reshape((n, c, oh, ow))?
            };
            let weight = w.narrow(1, dy * k + dx, 1)?.reshape((1, c, 1, 1))?;
            let term = tap.broadcast_mul(&weight)?;
            acc = Some(match acc {
                Some(a) => (a + term)?,
                None => term,
            });
        }
    }
    acc.ok_or_else(|| candle_core::Error::Msg("empty kernel".into()))
}

/// An inverted-residual block: optional 1×1 expansion, depthwise, 1×1 projection, skip.
#[derive(Debug, Clone)]
pub struct Block {
    pub expand: Option<Conv>,
    pub depthwise: Conv,
    pub project: Conv,
    pub skip: bool,
}

/// The network, batch norms folded.
#[derive(Debug, Clone)]
pub struct EfficientNet {
    pub stem: Conv,
    pub blocks: Vec<Block>,
    pub head: Conv,
    /// `[classes, features]`.
    pub fc_weight: CTensor,
    pub fc_bias: CTensor,
    /// Input height and width.
    pub size: usize,
}

impl EfficientNet {
    /// EfficientNet-Lite0 from a state_dict file of the `efficientnet-lite-pytorch` layout.
    pub fn lite0_from_pth(path: &Path) -> Result<Self, RuntimeError> {
        let load = |e: candle_core::Error| RuntimeError::Load {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let tensors = super::pth::read(path).map_err(load)?;
        let params: HashMap<String, CTensor> = tensors
            .into_iter()
            .map(|(k, v)| Ok((k, v.to_dtype(DType::F32)?)))
            .collect::<candle_core::Result<_>>()
            .map_err(load)?;
        Self::lite0(&params).map_err(|e| RuntimeError::Load {
            path: path.display().to_string(),
            message: e,
        })
    }

    /// Builds Lite0 from state_dict tensors (names as in `efficientnet-lite-pytorch`).
    pub fn lite0(params: &HashMap<String, CTensor>) -> Result<Self, String> {
        let get = |name: &str| {
            params
                .get(name)
                .cloned()
                .ok_or_else(|| format!("the weights lack '{name}'"))
        };
        let conv =
            |conv: &str, bn: &str, stride, groups, relu6, input_size| -> Result<Conv, String> {
                let weight = get(&format!("{conv}.weight"))?;
                let (weight, bias) = fold(
                    &weight,
                    &get(&format!("{bn}.weight"))?,
                    &get(&format!("{bn}.bias"))?,
                    &get(&format!("{bn}.running_mean"))?,
                    &get(&format!("{bn}.running_var"))?,
                )
                .map_err(|e| format!("folding {bn} into {conv}: {e}"))?;
                Ok(Conv {
                    weight,
                    bias,
                    stride,
                    groups,
                    relu6,
                    input_size,
                })
            };
        let mut size = 224;
        let stem = conv("_conv_stem", "_bn0", 2, 1, true, size)?;
        size = size.div_ceil(2);
        let mut blocks = Vec::new();
        for s in LITE0 {
            for r in 0..s.repeats {
                let i = blocks.len();
                let (input, stride) = if r == 0 {
                    (s.input, s.stride)
                } else {
                    (s.output, 1)
                };
                let p = format!("_blocks.{i}");
                let hidden = input * s.expand;
                let expand = (s.expand != 1)
                    .then(|| {
                        conv(
                            &format!("{p}._expand_conv"),
                            &format!("{p}._bn0"),
                            1,
                            1,
                            true,
                            size,
                        )
                    })
                    .transpose()?;
                let depthwise = conv(
                    &format!("{p}._depthwise_conv"),
                    &format!("{p}._bn1"),
                    stride,
                    hidden,
                    true,
                    size,
                )?;
                size = size.div_ceil(stride);
                if depthwise.kernel() != s.kernel {
                    return Err(format!(
                        "block {i}: kernel {} is not {}",
                        depthwise.kernel(),
                        s.kernel
                    ));
                }
                let project = conv(
                    &format!("{p}._project_conv"),
                    &format!("{p}._bn2"),
                    1,
                    1,
                    false,
                    size,
                )?;
                blocks.push(Block {
                    expand,
                    depthwise,
                    project,
                    skip: stride == 1 && input == s.output,
                });
            }
        }
        let head = conv("_conv_head", "_bn1", 1, 1, true, size)?;
        Ok(Self {
            stem,
            blocks,
            head,
            fc_weight: get("_fc.weight")?,
            fc_bias: get("_fc.bias")?,
            size: 224,
        })
    }

    pub fn classes(&self) -> usize {
        self.fc_weight.dims()[0]
    }

    /// Every convolution in execution order (for export and quantization).
    pub fn convs(&self) -> Vec<&Conv> {
        let mut all = vec![&self.stem];
        for b in &self.blocks {
            all.extend(b.expand.iter());
            all.push(&b.depthwise);
            all.push(&b.project);
        }
        all.push(&self.head);
        all
    }

    /// Logits `[N, classes]` for `x` `[N, 3, size, size]`.
    pub fn forward(&self, x: &CTensor) -> candle_core::Result<CTensor> {
        self.forward_observed(x, &mut |_, _| Ok(()))
    }

    /// [`EfficientNet::forward`], calling `observe(name, activation)` for the input (`input`)
    /// and every tensor a convolution or a skip produces (`stem`, `blocks.{i}.expand`,
    /// `.depthwise`, `.project`, `.add`, `head`; after ReLU6 where there is one): quantization
    /// calibrates on these.
    pub fn forward_observed(
        &self,
        x: &CTensor,
        observe: &mut dyn FnMut(&str, &CTensor) -> candle_core::Result<()>,
    ) -> candle_core::Result<CTensor> {
        observe(INPUT, x)?;
        let mut h = self.stem.forward(x)?;
        observe("stem", &h)?;
        for (i, b) in self.blocks.iter().enumerate() {
            let mut y = match &b.expand {
                Some(e) => {
                    let y = e.forward(&h)?;
                    observe(&format!("blocks.{i}.expand"), &y)?;
                    y
                }
                None => h.clone(),
            };
            y = b.depthwise.forward(&y)?;
            observe(&format!("blocks.{i}.depthwise"), &y)?;
            y = b.project.forward(&y)?;
            observe(&format!("blocks.{i}.project"), &y)?;
            h = if b.skip {
                let sum = (y + h)?;
                observe(&format!("blocks.{i}.add"), &sum)?;
                sum
            } else {
                y
            };
        }
        let h = self.head.forward(&h)?;
        observe("head", &h)?;
        let h = h.mean((2, 3))?;
        h.matmul(&self.fc_weight.t()?)?.broadcast_add(&self.fc_bias)
    }

    /// The served signature.
    pub fn signature(&self) -> Signature {
        let s = self.size as i64;
        Signature {
            inputs: vec![TensorSpec {
                name: INPUT.to_owned(),
                dtype: DataType::Fp32,
                shape: vec![-1, 3, s, s],
            }],
            outputs: vec![TensorSpec {
                name: OUTPUT.to_owned(),
                dtype: DataType::Fp32,
                shape: vec![-1, self.classes() as i64],
            }],
        }
    }
}

/// `w · γ/√(σ²+ε)` per output channel and `β − μ·γ/√(σ²+ε)`.
fn fold(
    w: &CTensor,
    gamma: &CTensor,
    beta: &CTensor,
    mean: &CTensor,
    var: &CTensor,
) -> candle_core::Result<(CTensor, CTensor)> {
    let scale = gamma.broadcast_div(&(var + BN_EPS)?.sqrt()?)?;
    let w = w.broadcast_mul(&scale.reshape(((), 1, 1, 1))?)?;
    let b = (beta - mean.mul(&scale)?)?;
    Ok((w, b))
}

/// Serves an [`EfficientNet`] on candle.
#[derive(Debug)]
pub struct EfficientNetFactory {
    net: Arc<EfficientNet>,
    signature: Signature,
}

impl EfficientNetFactory {
    pub fn new(net: EfficientNet) -> Self {
        Self {
            signature: net.signature(),
            net: Arc::new(net),
        }
    }

    pub fn net(&self) -> &EfficientNet {
        &self.net
    }
}

impl BackendFactory for EfficientNetFactory {
    fn platform(&self) -> &str {
        super::PLATFORM
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn create(&self) -> Result<Box<dyn Backend>, RuntimeError> {
        Ok(Box::new(EfficientNetBackend {
            net: Arc::clone(&self.net),
        }))
    }
}

struct EfficientNetBackend {
    net: Arc<EfficientNet>,
}

impl Backend for EfficientNetBackend {
    fn infer(
        &mut self,
        inputs: &[NamedTensor],
        timings: &mut StageTimings,
    ) -> Result<Vec<NamedTensor>, RuntimeError> {
        let start = Instant::now();
        let size = self.net.size;
        let input = inputs
            .iter()
            .find(|i| &*i.name == INPUT)
            .ok_or_else(|| RuntimeError::InvalidInput(format!("missing input '{INPUT}'")))?;
        let shape = input.tensor.shape();
        let good = shape.len() == 4 && shape[1..] == [3, size as i64, size as i64];
        let values: Vec<f32> = input.tensor.to_vec().filter(|_| good).ok_or_else(|| {
            RuntimeError::InvalidInput(format!(
                "input '{INPUT}' must be FP32 [N, 3, {size}, {size}], got {:?} {shape:?}",
                input.tensor.dtype()
            ))
        })?;
        let rows = shape[0] as usize;
        let x =
            CTensor::from_vec(values, (rows, 3, size, size), &Device::Cpu).map_err(candle_error)?;
        let prepared = Instant::now();
        timings.input = prepared - start;
        let logits = self.net.forward(&x).map_err(candle_error)?;
        let out: Vec<f32> = logits
            .flatten_all()
            .and_then(|t| t.to_vec1())
            .map_err(candle_error)?;
        let ran = Instant::now();
        timings.infer = ran - prepared;
        let classes = logits.dim(D::Minus1).map_err(candle_error)?;
        let tensor = Tensor::from_slice(vec![rows as i64, classes as i64], &out)?;
        timings.output = ran.elapsed();
        Ok(vec![NamedTensor::new(OUTPUT, tensor)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(shape: &[usize], seed: u64) -> CTensor {
        let n: usize = shape.iter().product();
        let mut s = seed;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect();
        CTensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &CTensor, b: &CTensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn depthwise_and_pointwise_match_candles_convolution() {
        for (k, stride, size) in [(3, 1, 9), (3, 2, 10), (5, 2, 11), (5, 1, 8)] {
            let x = random(&[2, 6, size, size], 1);
            let w = random(&[6, 1, k, k], 2);
            let ours = depthwise(&x, &w, stride).unwrap();
            let candle = x.conv2d(&w, 0, stride, 1, 6).unwrap();
            assert!(max_diff(&ours, &candle) < 1e-5, "k={k} stride={stride}");
        }
        let x = random(&[2, 6, 5, 5], 3);
        let w = random(&[4, 6, 1, 1], 4);
        let candle = x.conv2d(&w, 0, 1, 1, 1).unwrap();
        assert!(max_diff(&pointwise(&x, &w).unwrap(), &candle) < 1e-5);
    }

    #[test]
    fn same_padding_is_tensorflows() {
        let conv = |k: usize, stride| Conv {
            weight: CTensor::zeros((1, 1, k, k), DType::F32, &Device::Cpu).unwrap(),
            bias: CTensor::zeros(1, DType::F32, &Device::Cpu).unwrap(),
            stride,
            groups: 1,
            relu6: false,
            input_size: 0,
        };
        // stride 2 pads more after than before; stride 1 keeps the size
        assert_eq!(conv(3, 2).same_padding(224), (0, 1));
        assert_eq!(conv(5, 2).same_padding(56), (1, 2));
        assert_eq!(conv(3, 1).same_padding(112), (1, 1));
        assert_eq!(conv(1, 1).same_padding(7), (0, 0));
    }
}
