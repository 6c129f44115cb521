//! Post-training static int8 quantization into ONNX's integer operators: `QLinearConv` and
//! `QLinearMatMul` with int8 weights quantized per output channel and uint8 activations whose
//! ranges are calibrated on training data, so ONNX Runtime runs them with integer kernels.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use infergate_runtime::candle::{Arch, Net};

use crate::data::Dataset;
use crate::export::{Graph, float_conv, int, ints, values};
use infergate_registry::onnx::dtype;

/// The lineage name of this scheme.
pub const SCHEME: &str = "int8-static-qoperator-per-channel";

/// Observed range of a tensor.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Range {
    pub(crate) min: f32,
    pub(crate) max: f32,
}

impl Range {
    pub(crate) fn include(&mut self, t: &Tensor) -> candle_core::Result<()> {
        let v = t.flatten_all()?;
        self.min = self.min.min(v.min_all()?.to_scalar::<f32>()?);
        self.max = self.max.max(v.max_all()?.to_scalar::<f32>()?);
        Ok(())
    }

    /// uint8 affine parameters covering the range (and zero, so ReLU zeros are exact).
    pub(crate) fn uint8(self) -> (f32, u8) {
        let (lo, hi) = (self.min.min(0.0), self.max.max(0.0));
        let scale = ((hi - lo) / 255.0).max(f32::MIN_POSITIVE);
        let zero = (-lo / scale).round().clamp(0.0, 255.0) as u8;
        (scale, zero)
    }
}

/// Per weighted layer: the input range, the output range before the bias, and the range
/// after bias and ReLU, over `calibration`.
fn calibrate(net: &Net, calibration: &Dataset) -> anyhow::Result<HashMap<String, [Range; 3]>> {
    let mut ranges: HashMap<String, [Range; 3]> = HashMap::new();
    let idx: Vec<usize> = (0..calibration.len()).collect();
    for chunk in idx.chunks(500) {
        let mut x = Vec::with_capacity(chunk.len() * calibration.features);
        for &i in chunk {
            x.extend_from_slice(calibration.row(i));
        }
        let x = Tensor::from_vec(x, (chunk.len(), calibration.features), &Device::Cpu)?;
        net.forward_observed(&x, &mut |layer, input, output| {
            let empty = Range {
                min: f32::INFINITY,
                max: f32::NEG_INFINITY,
            };
            let entry = ranges.entry(layer.to_owned()).or_insert([empty; 3]);
            entry[0].include(input)?;
            entry[1].include(output)?;
            // Outputs are [.., channels] with the bias on the last dimension.
            let bias = &net.params()[&format!("{layer}.bias")];
            entry[2].include(&output.broadcast_add(bias)?.relu()?)
        })?;
    }
    Ok(ranges)
}

/// Symmetric int8 per row of `w` (`rows` output channels): `(bytes, scales)`.
pub(crate) fn per_channel(w: &[f32], rows: usize) -> (Vec<u8>, Vec<f32>) {
    let per = w.len() / rows;
    let mut q = Vec::with_capacity(w.len());
    let mut scales = Vec::with_capacity(rows);
    for row in w.chunks(per) {
        let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let s = if max > 0.0 { max / 127.0 } else { 1.0 };
        scales.push(s);
        q.extend(
            row.iter()
                .map(|v| (v / s).round().clamp(-127.0, 127.0) as i8 as u8),
        );
    }
    (q, scales)
}

/// A quantized activation in the graph: tensor name with its scale and zero-point names.
pub(crate) struct Quantized {
    pub(crate) tensor: String,
    pub(crate) scale: String,
    pub(crate) zero: String,
}

pub(crate) fn affine(g: &mut Graph, name: &str, (scale, zero): (f32, u8)) -> (String, String) {
    (
        g.init_f32(&format!("{name}.scale"), &[], &[scale]),
        g.init_raw(&format!("{name}.zero"), dtype::UINT8, &[], vec![zero]),
    )
}

pub(crate) fn quantize_input(g: &mut Graph, layer: &str, h: &str, range: Range) -> Quantized {
    let (scale, zero) = affine(g, &format!("{layer}.x"), range.uint8());
    let tensor = g.node(
        "QuantizeLinear",
        &[h, &scale, &zero],
        &format!("{layer}.x_q"),
        vec![],
    );
    Quantized {
        tensor,
        scale,
        zero,
    }
}

/// The int8 ONNX model of `net`, calibrated on `calibration` rows.
///
/// After the first convolution (float, see below) the convolutions stay in the integer
/// domain: each `QLinearConv`
/// takes its bias as int32 and its output quantization starts at zero, so the ReLU is the
/// saturation itself and max-pooling runs on uint8. Fully connected layers use
/// `QLinearMatMul` with the bias added after dequantization.
pub fn quantize(net: &Net, calibration: &Dataset) -> anyhow::Result<Vec<u8>> {
    let ranges = calibrate(net, calibration)?;
    let arch = net.arch();
    let p = net.params();
    let mut g = Graph::default();
    let mut h = "input".to_owned();
    let mut carried: Option<Quantized> = None;
    if let Arch::Cnn {
        height,
        width,
        channels,
        ..
    } = arch
    {
        let shape = g.init_i64("image_shape", &[-1, 1, *height as i64, *width as i64]);
        h = g.node("Reshape", &[&h, &shape], "image", vec![]);
        for (i, &cout) in channels.iter().enumerate() {
            let layer = format!("conv{i}");
            let [input, _, relu] = ranges[&layer];
            if i == 0 {
                // One input channel: ONNX Runtime's integer convolution is several times
                // slower than the float one here, and the layer holds a few dozen weights.
                // It runs in float and its output enters the integer domain.
                h = float_conv(&mut g, p, i, &h)?;
                carried = Some(quantize_input(&mut g, &format!("conv{}", i + 1), &h, relu));
                continue;
            }
            let x = match carried.take() {
                Some(q) => q,
                None => quantize_input(&mut g, &layer, &h, input),
            };
            let x_scale = g.scalar(&x.scale);
            let w = &p[&format!("{layer}.weight")];
            let (w_q, w_s) = per_channel(&values(w)?, cout);
            let w_n = g.init_raw(&format!("{layer}.w_int8"), dtype::INT8, w.dims(), w_q);
            let ws_n = g.init_f32(&format!("{layer}.w_scale"), &[cout], &w_s);
            let wz_n = g.init_raw(
                &format!("{layer}.w_zero"),
                dtype::INT8,
                &[cout],
                vec![0; cout],
            );
            let bias: Vec<u8> = values(&p[&format!("{layer}.bias")])?
                .iter()
                .zip(&w_s)
                .flat_map(|(b, s)| ((b / (x_scale * s)).round() as i32).to_le_bytes())
                .collect();
            let b_n = g.init_raw(&format!("{layer}.bias_int32"), dtype::INT32, &[cout], bias);
            let (y_scale, y_zero) = affine(&mut g, &format!("{layer}.y"), relu.uint8());
            let y = g.node(
                "QLinearConv",
                &[
                    &x.tensor, &x.scale, &x.zero, &w_n, &ws_n, &wz_n, &y_scale, &y_zero, &b_n,
                ],
                &format!("{layer}.y_q"),
                vec![ints("kernel_shape", &[3, 3]), ints("pads", &[1, 1, 1, 1])],
            );
            let pooled = g.node(
                "MaxPool",
                &[&y],
                &format!("pool{i}"),
                vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
            );
            carried = Some(Quantized {
                tensor: pooled,
                scale: y_scale,
                zero: y_zero,
            });
        }
        let q = carried.take().expect("a cnn has convolutions");
        let flat = g.node("Flatten", &[&q.tensor], "flat_q", vec![int("axis", 1)]);
        carried = Some(Quantized { tensor: flat, ..q });
    }
    let layers = arch.dense_layers();
    for (i, &(fin, fout)) in layers.iter().enumerate() {
        let layer = format!("fc{i}");
        let [input, output, _] = ranges[&layer];
        let x = match carried.take() {
            Some(q) => q,
            None => quantize_input(&mut g, &layer, &h, input),
        };
        let (w_q, w_s) = per_channel(&values(&p[&format!("{layer}.weight")])?, fout);
        // QLinearMatMul takes B as [in, out] with one scale per column.
        let mut b_q = vec![0u8; w_q.len()];
        for o in 0..fout {
            for k in 0..fin {
                b_q[k * fout + o] = w_q[o * fin + k];
            }
        }
        let w_n = g.init_raw(&format!("{layer}.w_int8"), dtype::INT8, &[fin, fout], b_q);
        let ws_n = g.init_f32(&format!("{layer}.w_scale"), &[fout], &w_s);
        let wz_n = g.init_raw(
            &format!("{layer}.w_zero"),
            dtype::INT8,
            &[fout],
            vec![0; fout],
        );
        let (y_scale, y_zero) = affine(&mut g, &format!("{layer}.y"), output.uint8());
        let y = g.node(
            "QLinearMatMul",
            &[
                &x.tensor, &x.scale, &x.zero, &w_n, &ws_n, &wz_n, &y_scale, &y_zero,
            ],
            &format!("{layer}.y_q"),
            vec![],
        );
        h = g.node(
            "DequantizeLinear",
            &[&y, &y_scale, &y_zero],
            &format!("{layer}.y"),
            vec![],
        );
        let b = g.init_f32(
            &format!("{layer}.bias"),
            &[fout],
            &values(&p[&format!("{layer}.bias")])?,
        );
        let last = i + 1 == layers.len();
        let out = if last {
            "logits".to_owned()
        } else {
            format!("{layer}.biased")
        };
        h = g.node("Add", &[&h, &b], &out, vec![]);
        if !last {
            h = g.node("Relu", &[&h], &format!("{layer}.relu"), vec![]);
        }
    }
    Ok(g.finish(arch, SCHEME))
}
