//! Writing a trained network: safetensors with infergate's metadata (for the candle backend)
//! and an ONNX model (opset 13) written directly from the weights.

use std::collections::HashMap;

use candle_core::Tensor;
use infergate_registry::inspect::{META_ARCHITECTURE, META_SIGNATURE};
use infergate_registry::onnx::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    ValueInfoProto, attr_type, dtype,
};
use infergate_registry::{Signature, TensorSig};
use infergate_runtime::candle::{Arch, Net};
use prost::Message;

/// The opset the exports declare.
pub const OPSET: i64 = 13;

/// The registry form of the served signature of `arch`.
pub fn signature(arch: &Arch) -> Signature {
    let convert = |s: &infergate_runtime::TensorSpec| TensorSig {
        name: s.name.clone(),
        datatype: s.dtype.to_string(),
        shape: s.shape.clone(),
    };
    let sig = arch.signature();
    Signature {
        inputs: sig.inputs.iter().map(convert).collect(),
        outputs: sig.outputs.iter().map(convert).collect(),
    }
}

/// The weights as safetensors, with the signature and architecture as metadata.
pub fn safetensors(net: &Net) -> anyhow::Result<Vec<u8>> {
    let mut tensors: Vec<(&String, &Tensor)> = net.params().iter().collect();
    tensors.sort_by_key(|(name, _)| name.as_str());
    let metadata = HashMap::from([
        (
            META_SIGNATURE.to_owned(),
            serde_json::to_string(&signature(net.arch()))?,
        ),
        (
            META_ARCHITECTURE.to_owned(),
            serde_json::to_string(net.arch())?,
        ),
    ]);
    Ok(safetensors::serialize(tensors, Some(metadata))?)
}

/// An ONNX graph under construction.
#[derive(Default)]
pub(crate) struct Graph {
    pub nodes: Vec<NodeProto>,
    pub initializers: Vec<TensorProto>,
}

impl Graph {
    pub fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        output: &str,
        attributes: Vec<AttributeProto>,
    ) -> String {
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: vec![output.to_owned()],
            name: format!("{op}_{}", self.nodes.len()),
            op_type: op.to_owned(),
            domain: String::new(),
            attribute: attributes,
        });
        output.to_owned()
    }

    pub fn init_raw(&mut self, name: &str, data_type: i32, dims: &[usize], raw: Vec<u8>) -> String {
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type,
            name: name.to_owned(),
            raw_data: raw,
            ..TensorProto::default()
        });
        name.to_owned()
    }

    pub fn init_f32(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.init_raw(name, dtype::FLOAT, dims, raw)
    }

    pub fn init_i64(&mut self, name: &str, values: &[i64]) -> String {
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.init_raw(name, dtype::INT64, &[values.len()], raw)
    }

    /// The value of a scalar float initializer added earlier.
    pub fn scalar(&self, name: &str) -> f32 {
        let t = self
            .initializers
            .iter()
            .find(|t| t.name == name)
            .expect("initializer added before use");
        f32::from_le_bytes(t.raw_data[..4].try_into().expect("a float"))
    }

    pub fn finish(self, arch: &Arch, doc: &str) -> Vec<u8> {
        let f = arch.features() as i64;
        let c = arch.classes() as i64;
        self.finish_with(
            ValueInfoProto::tensor("input", dtype::FLOAT, &[-1, f]),
            ValueInfoProto::tensor("logits", dtype::FLOAT, &[-1, c]),
            doc,
        )
    }

    /// The encoded model with one input and one output.
    pub fn finish_with(self, input: ValueInfoProto, output: ValueInfoProto, doc: &str) -> Vec<u8> {
        ModelProto {
            ir_version: 7,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: "infergate-train".to_owned(),
            producer_version: env!("CARGO_PKG_VERSION").to_owned(),
            doc_string: doc.to_owned(),
            graph: Some(GraphProto {
                node: self.nodes,
                name: "infergate".to_owned(),
                initializer: self.initializers,
                input: vec![input],
                output: vec![output],
            }),
            metadata_props: Vec::new(),
        }
        .encode_to_vec()
    }
}

pub(crate) fn ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.to_owned(),
        r#type: attr_type::INTS,
        ints: values.to_vec(),
        ..AttributeProto::default()
    }
}

pub(crate) fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.to_owned(),
        r#type: attr_type::INT,
        i: value,
        ..AttributeProto::default()
    }
}

pub(crate) fn values(t: &Tensor) -> anyhow::Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

/// Convolution `i` of a CNN in float, then 2×2 max-pooling and ReLU (pooling first gives the
/// same values, ReLU being monotonic, on a quarter of the elements; the candle network does
/// the same). Returns the output's name.
pub(crate) fn float_conv(
    g: &mut Graph,
    p: &HashMap<String, Tensor>,
    i: usize,
    h: &str,
) -> anyhow::Result<String> {
    let layer = format!("conv{i}");
    let w = &p[&format!("{layer}.weight")];
    let b = &p[&format!("{layer}.bias")];
    let wn = g.init_f32(&format!("{layer}.weight"), w.dims(), &values(w)?);
    let bn = g.init_f32(&format!("{layer}.bias"), b.dims(), &values(b)?);
    let attrs = vec![ints("kernel_shape", &[3, 3]), ints("pads", &[1, 1, 1, 1])];
    let h = g.node("Conv", &[h, &wn, &bn], &layer, attrs);
    let h = g.node(
        "MaxPool",
        &[&h],
        &format!("pool{i}"),
        vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
    );
    Ok(g.node("Relu", &[&h], &format!("{layer}.relu"), vec![]))
}

/// The network as an ONNX model computing the same logits.
pub fn onnx(net: &Net) -> anyhow::Result<Vec<u8>> {
    let arch = net.arch();
    let p = net.params();
    let mut g = Graph::default();
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
        for i in 0..channels.len() {
            h = float_conv(&mut g, p, i, &h)?;
        }
        h = g.node("Flatten", &[&h], "flat", vec![int("axis", 1)]);
    }
    let layers = arch.dense_layers();
    for (i, (fin, fout)) in layers.iter().enumerate() {
        let wn = g.init_f32(
            &format!("fc{i}.weight"),
            &[*fout, *fin],
            &values(&p[&format!("fc{i}.weight")])?,
        );
        let bn = g.init_f32(
            &format!("fc{i}.bias"),
            &[*fout],
            &values(&p[&format!("fc{i}.bias")])?,
        );
        let last = i + 1 == layers.len();
        let out = if last {
            "logits".to_owned()
        } else {
            format!("fc{i}")
        };
        h = g.node("Gemm", &[&h, &wn, &bn], &out, vec![int("transB", 1)]);
        if !last {
            h = g.node("Relu", &[&h], &format!("fc{i}_relu"), vec![]);
        }
    }
    Ok(g.finish(arch, "float32 export"))
}
