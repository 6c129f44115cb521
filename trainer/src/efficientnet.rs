//! EfficientNet-Lite as ONNX, written from the candle network's folded weights: `Conv` (grouped
//! for the depthwise layers, TensorFlow "same" padding as explicit pads), `Clip` 0–6, `Add`
//! for the skips, `GlobalAveragePool`, `Gemm`.

use infergate_registry::onnx::{ValueInfoProto, dtype};
use infergate_runtime::candle::efficientnet::{Conv, EfficientNet, INPUT, OUTPUT};

use crate::export::{Graph, int, ints, values};

/// The bounds of ReLU6 (`Clip`'s min and max inputs).
const RELU6: [&str; 2] = ["relu6.min", "relu6.max"];

/// The network as an ONNX model computing the same logits.
pub fn onnx(net: &EfficientNet) -> anyhow::Result<Vec<u8>> {
    let mut g = Graph::default();
    g.init_f32(RELU6[0], &[], &[0.0]);
    g.init_f32(RELU6[1], &[], &[6.0]);
    let mut h = conv(&mut g, &net.stem, "stem", INPUT)?;
    for (i, b) in net.blocks.iter().enumerate() {
        let x = h.clone();
        let mut y = x.clone();
        if let Some(e) = &b.expand {
            y = conv(&mut g, e, &format!("blocks.{i}.expand"), &y)?;
        }
        y = conv(&mut g, &b.depthwise, &format!("blocks.{i}.depthwise"), &y)?;
        y = conv(&mut g, &b.project, &format!("blocks.{i}.project"), &y)?;
        h = if b.skip {
            g.node("Add", &[&y, &x], &format!("blocks.{i}.add"), vec![])
        } else {
            y
        };
    }
    h = conv(&mut g, &net.head, "head", &h)?;
    h = g.node("GlobalAveragePool", &[&h], "pool", vec![]);
    h = g.node("Flatten", &[&h], "features", vec![int("axis", 1)]);
    let w = g.init_f32("fc.weight", net.fc_weight.dims(), &values(&net.fc_weight)?);
    let b = g.init_f32("fc.bias", net.fc_bias.dims(), &values(&net.fc_bias)?);
    g.node("Gemm", &[&h, &w, &b], OUTPUT, vec![int("transB", 1)]);
    let s = net.size as i64;
    Ok(g.finish_with(
        ValueInfoProto::tensor(INPUT, dtype::FLOAT, &[-1, 3, s, s]),
        ValueInfoProto::tensor(OUTPUT, dtype::FLOAT, &[-1, net.classes() as i64]),
        "EfficientNet-Lite0, batch norm folded, float32",
    ))
}

/// One folded convolution and its ReLU6.
fn conv(g: &mut Graph, c: &Conv, name: &str, input: &str) -> anyhow::Result<String> {
    let (before, after) = c.same_padding(c.input_size);
    let k = c.kernel() as i64;
    let (b, a) = (before as i64, after as i64);
    let w = g.init_f32(
        &format!("{name}.weight"),
        c.weight.dims(),
        &values(&c.weight)?,
    );
    let bias = g.init_f32(&format!("{name}.bias"), c.bias.dims(), &values(&c.bias)?);
    let attrs = vec![
        ints("kernel_shape", &[k, k]),
        ints("strides", &[c.stride as i64; 2]),
        ints("pads", &[b, b, a, a]),
        int("group", c.groups as i64),
    ];
    let mut h = g.node("Conv", &[input, &w, &bias], name, attrs);
    if c.relu6 {
        h = g.node(
            "Clip",
            &[&h, RELU6[0], RELU6[1]],
            &format!("{name}.relu6"),
            vec![],
        );
    }
    Ok(h)
}
