//! Post-training static int8 quantization into ONNX's integer operators: `QLinearConv` and
//! `QLinearMatMul` with int8 weights quantized per output channel and uint8 activations whose
//! ranges are calibrated on training data, so ONNX Runtime runs them with integer kernels.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use infergate_runtime::candle::{Arch, Net};

use crate::data::Dataset;
use crate::export::{Graph, int, ints, values};
use infergate_registry::onnx::dtype;

/// The lineage name of this scheme.
pub const SCHEME: &str = "int8-static-qoperator-per-channel";

/// Observed range of a tensor.
#[derive(Debug, Clone, Copy)]
struct Range {
    min: f32,
    max: f32,
}

impl Range {
    fn include(&mut self, t: &Tensor) -> candle_core::Result<()> {
        let v = t.flatten_all()?;
        self.min = self.min.min(v.min_all()?.to_scalar::<f32>()?);
        self.max = self.max.max(v.max_all()?.to_scalar::<f32>()?);
        Ok(())
    }

    /// uint8 affine parameters covering the range (and zero, so ReLU zeros are exact).
    fn uint8(self) -> (f32, u8) {
        let (lo, hi) = (self.min.min(0.0), self.max.max(0.0));
        let scale = ((hi - lo) / 255.0).max(f32::MIN_POSITIVE);
        let zero = (-lo / scale).round().clamp(0.0, 255.0) as u8;
        (scale, zero)
    }
}

/// Input and pre-bias output ranges of every weighted layer over `calibration`.
fn calibrate(net: &Net, calibration: &Dataset) -> anyhow::Result<HashMap<String, (Range, Range)>> {
    let mut ranges: HashMap<String, (Range, Range)> = HashMap::new();
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
            let entry = ranges.entry(layer.to_owned()).or_insert((empty, empty));
            entry.0.include(input)?;
            entry.1.include(output)
        })?;
    }
    Ok(ranges)
}

/// Symmetric int8 per row of `w` (`rows` output channels): `(bytes, scales)`.
fn per_channel(w: &[f32], rows: usize) -> (Vec<u8>, Vec<f32>) {
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

/// The int8 ONNX model of `net`, calibrated on `calibration` rows.
pub fn quantize(net: &Net, calibration: &Dataset) -> anyhow::Result<Vec<u8>> {
    let ranges = calibrate(net, calibration)?;
    let arch = net.arch();
    let p = net.params();
    let mut g = Graph::default();
    // Quantizes float `h` with the layer's input range, runs the integer op, dequantizes.
    let qlinear = |g: &mut Graph,
                   op: &str,
                   layer: &str,
                   h: &str,
                   w_q: Vec<u8>,
                   w_dims: &[usize],
                   w_scales: Vec<f32>,
                   attrs|
     -> String {
        let (input, output) = ranges[layer];
        let (xs, xz) = input.uint8();
        let (ys, yz) = output.uint8();
        let xs_n = g.init_f32(&format!("{layer}.x_scale"), &[], &[xs]);
        let xz_n = g.init_raw(&format!("{layer}.x_zero"), dtype::UINT8, &[], vec![xz]);
        let channels = w_scales.len();
        let ws_n = g.init_f32(&format!("{layer}.w_scale"), &[channels], &w_scales);
        let wz_n = g.init_raw(
            &format!("{layer}.w_zero"),
            dtype::INT8,
            &[channels],
            vec![0; channels],
        );
        let w_n = g.init_raw(&format!("{layer}.w_int8"), dtype::INT8, w_dims, w_q);
        let ys_n = g.init_f32(&format!("{layer}.y_scale"), &[], &[ys]);
        let yz_n = g.init_raw(&format!("{layer}.y_zero"), dtype::UINT8, &[], vec![yz]);
        let xq = g.node(
            "QuantizeLinear",
            &[h, &xs_n, &xz_n],
            &format!("{layer}.x_q"),
            vec![],
        );
        let yq = g.node(
            op,
            &[&xq, &xs_n, &xz_n, &w_n, &ws_n, &wz_n, &ys_n, &yz_n],
            &format!("{layer}.y_q"),
            attrs,
        );
        g.node(
            "DequantizeLinear",
            &[&yq, &ys_n, &yz_n],
            &format!("{layer}.y"),
            vec![],
        )
    };
    let mut h = "input".to_owned();
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
            let w = &p[&format!("{layer}.weight")];
            let (w_q, w_s) = per_channel(&values(w)?, cout);
            let attrs = vec![ints("kernel_shape", &[3, 3]), ints("pads", &[1, 1, 1, 1])];
            h = qlinear(&mut g, "QLinearConv", &layer, &h, w_q, w.dims(), w_s, attrs);
            let b = g.init_f32(
                &format!("{layer}.bias"),
                &[1, cout, 1, 1],
                &values(&p[&format!("{layer}.bias")])?,
            );
            h = g.node("Add", &[&h, &b], &format!("{layer}.biased"), vec![]);
            h = g.node("Relu", &[&h], &format!("{layer}.relu"), vec![]);
            h = g.node(
                "MaxPool",
                &[&h],
                &format!("pool{i}"),
                vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
            );
        }
        h = g.node("Flatten", &[&h], "flat", vec![int("axis", 1)]);
    }
    let layers = arch.dense_layers();
    for (i, &(fin, fout)) in layers.iter().enumerate() {
        let layer = format!("fc{i}");
        let (w_q, w_s) = per_channel(&values(&p[&format!("{layer}.weight")])?, fout);
        // QLinearMatMul takes B as [in, out] with one scale per column.
        let mut b_q = vec![0u8; w_q.len()];
        for o in 0..fout {
            for k in 0..fin {
                b_q[k * fout + o] = w_q[o * fin + k];
            }
        }
        h = qlinear(
            &mut g,
            "QLinearMatMul",
            &layer,
            &h,
            b_q,
            &[fin, fout],
            w_s,
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
