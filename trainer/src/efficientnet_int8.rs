//! EfficientNet-Lite in int8, in ONNX's integer operators (the trainer's scheme,
//! [`crate::quantize::SCHEME`]): every convolution a `QLinearConv` with int8 weights per output
//! channel, an int32 bias and uint8 activations whose ranges are calibrated on images. ReLU6 is
//! the output quantization itself (zero point 0, at most 6); a skip is added on the dequantized
//! values and quantized again; the head's output is dequantized for the float pooling and
//! classifier.

use std::collections::HashMap;

use candle_core::Tensor;
use infergate_registry::onnx::{ValueInfoProto, dtype};
use infergate_runtime::candle::efficientnet::{Conv, EfficientNet, INPUT, OUTPUT};

use crate::export::{Graph, int, ints, values};
use crate::quantize::{Quantized, Range, SCHEME, affine, per_channel, quantize_input};

/// The ranges of every activation `forward_observed` names, over `calibration` (`[N, 3, H, W]`,
/// run a few images at a time).
fn calibrate(net: &EfficientNet, calibration: &Tensor) -> anyhow::Result<HashMap<String, Range>> {
    let mut ranges: HashMap<String, Range> = HashMap::new();
    let n = calibration.dim(0)?;
    for start in (0..n).step_by(4) {
        let x = calibration.narrow(0, start, 4.min(n - start))?;
        net.forward_observed(&x, &mut |name, t| {
            let empty = Range {
                min: f32::INFINITY,
                max: f32::NEG_INFINITY,
            };
            ranges.entry(name.to_owned()).or_insert(empty).include(t)
        })?;
    }
    Ok(ranges)
}

/// The int8 ONNX model of `net`, calibrated on `calibration`.
pub fn quantize(net: &EfficientNet, calibration: &Tensor) -> anyhow::Result<Vec<u8>> {
    let ranges = calibrate(net, calibration)?;
    let range = |name: &str| {
        ranges
            .get(name)
            .copied()
            .ok_or_else(|| anyhow::anyhow!("calibration did not observe '{name}'"))
    };
    let mut g = Graph::default();
    let mut h = quantize_input(&mut g, INPUT, INPUT, range(INPUT)?);
    h = conv(&mut g, &net.stem, "stem", h, range("stem")?)?;
    for (i, b) in net.blocks.iter().enumerate() {
        let skip = b.skip.then(|| Quantized {
            tensor: h.tensor.clone(),
            scale: h.scale.clone(),
            zero: h.zero.clone(),
        });
        let mut y = h;
        if let Some(e) = &b.expand {
            let name = format!("blocks.{i}.expand");
            y = conv(&mut g, e, &name, y, range(&name)?)?;
        }
        let name = format!("blocks.{i}.depthwise");
        y = conv(&mut g, &b.depthwise, &name, y, range(&name)?)?;
        let name = format!("blocks.{i}.project");
        y = conv(&mut g, &b.project, &name, y, range(&name)?)?;
        h = match skip {
            Some(x) => {
                let name = format!("blocks.{i}.add");
                let a = dequantize(&mut g, &y, &format!("{name}.a"));
                let b = dequantize(&mut g, &x, &format!("{name}.b"));
                let sum = g.node("Add", &[&a, &b], &name, vec![]);
                quantize_input(&mut g, &name, &sum, range(&name)?)
            }
            None => y,
        };
    }
    h = conv(&mut g, &net.head, "head", h, range("head")?)?;
    let head = dequantize(&mut g, &h, "head");
    let pooled = g.node("GlobalAveragePool", &[&head], "pool", vec![]);
    let features = g.node("Flatten", &[&pooled], "features", vec![int("axis", 1)]);
    let w = g.init_f32("fc.weight", net.fc_weight.dims(), &values(&net.fc_weight)?);
    let b = g.init_f32("fc.bias", net.fc_bias.dims(), &values(&net.fc_bias)?);
    g.node("Gemm", &[&features, &w, &b], OUTPUT, vec![int("transB", 1)]);
    let s = net.size as i64;
    Ok(g.finish_with(
        ValueInfoProto::tensor(INPUT, dtype::FLOAT, &[-1, 3, s, s]),
        ValueInfoProto::tensor(OUTPUT, dtype::FLOAT, &[-1, net.classes() as i64]),
        SCHEME,
    ))
}

fn dequantize(g: &mut Graph, q: &Quantized, name: &str) -> String {
    g.node(
        "DequantizeLinear",
        &[&q.tensor, &q.scale, &q.zero],
        &format!("{name}.dq"),
        vec![],
    )
}

/// One folded convolution as `QLinearConv` from `x` into the range `out` (after ReLU6 where
/// the layer has one: the range then starts at 0 and ends at most at 6).
fn conv(
    g: &mut Graph,
    c: &Conv,
    name: &str,
    x: Quantized,
    out: Range,
) -> anyhow::Result<Quantized> {
    let cout = c.weight.dims()[0];
    let x_scale = g.scalar(&x.scale);
    let (w_q, w_s) = per_channel(&values(&c.weight)?, cout);
    let w = g.init_raw(&format!("{name}.w_int8"), dtype::INT8, c.weight.dims(), w_q);
    let ws = g.init_f32(&format!("{name}.w_scale"), &[cout], &w_s);
    let wz = g.init_raw(
        &format!("{name}.w_zero"),
        dtype::INT8,
        &[cout],
        vec![0; cout],
    );
    let bias: Vec<u8> = values(&c.bias)?
        .iter()
        .zip(&w_s)
        .flat_map(|(b, s)| ((b / (x_scale * s)).round() as i32).to_le_bytes())
        .collect();
    let b = g.init_raw(&format!("{name}.bias_int32"), dtype::INT32, &[cout], bias);
    let out = if c.relu6 {
        Range {
            min: 0.0,
            max: out.max.min(6.0),
        }
    } else {
        out
    };
    let (scale, zero) = affine(g, &format!("{name}.y"), out.uint8());
    let (before, after) = c.same_padding(c.input_size);
    let k = c.kernel() as i64;
    let (pb, pa) = (before as i64, after as i64);
    let tensor = g.node(
        "QLinearConv",
        &[
            &x.tensor, &x.scale, &x.zero, &w, &ws, &wz, &scale, &zero, &b,
        ],
        &format!("{name}.y_q"),
        vec![
            ints("kernel_shape", &[k, k]),
            ints("strides", &[c.stride as i64; 2]),
            ints("pads", &[pb, pb, pa, pa]),
            int("group", c.groups as i64),
        ],
    );
    Ok(Quantized {
        tensor,
        scale,
        zero,
    })
}
