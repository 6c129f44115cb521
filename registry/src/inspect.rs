//! Reading a model file's signature (and, for safetensors, infergate's metadata) at import.

use std::collections::BTreeMap;

use prost::Message;

use crate::onnx::{self, ModelProto, tensor_shape_proto::dimension::Value as Dim, type_proto};
use crate::{ArtifactKind, RegistryError, Result, Signature, TensorSig};

/// Safetensors metadata key holding the JSON [`Signature`].
pub const META_SIGNATURE: &str = "infergate.signature";
/// Safetensors metadata key holding the JSON architecture the candle backend builds.
pub const META_ARCHITECTURE: &str = "infergate.architecture";

/// What kind of model file `bytes` is: ONNX protobuf or safetensors.
pub fn detect(bytes: &[u8]) -> Result<ArtifactKind> {
    if safetensors_header(bytes).is_ok() {
        return Ok(ArtifactKind::Safetensors);
    }
    match ModelProto::decode(bytes) {
        Ok(m) if m.graph.is_some() => Ok(ArtifactKind::Onnx),
        _ => Err(RegistryError::invalid(
            "model file",
            "neither an ONNX model nor a safetensors file",
        )),
    }
}

/// The inputs (initializers excluded) and outputs of an ONNX model.
pub fn onnx_signature(bytes: &[u8]) -> Result<Signature> {
    let model = ModelProto::decode(bytes)
        .map_err(|e| RegistryError::invalid("onnx model", e.to_string()))?;
    let graph = model
        .graph
        .ok_or_else(|| RegistryError::invalid("onnx model", "it has no graph"))?;
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let convert = |v: &onnx::ValueInfoProto| -> Result<TensorSig> {
        let Some(type_proto::Value::TensorType(t)) =
            v.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            return Err(RegistryError::invalid(
                "onnx model",
                format!("'{}' is not a tensor", v.name),
            ));
        };
        let datatype = onnx::dtype::to_v2(t.elem_type).ok_or_else(|| {
            RegistryError::invalid(
                "onnx model",
                format!("'{}' has unsupported element type {}", v.name, t.elem_type),
            )
        })?;
        let shape = t
            .shape
            .as_ref()
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(Dim::DimValue(v)) if v >= 0 => v,
                        _ => -1,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(TensorSig {
            name: v.name.clone(),
            datatype: datatype.to_owned(),
            shape,
        })
    };
    Ok(Signature {
        inputs: graph
            .input
            .iter()
            .filter(|v| !initializers.contains(v.name.as_str()))
            .map(convert)
            .collect::<Result<_>>()?,
        outputs: graph.output.iter().map(convert).collect::<Result<_>>()?,
    })
}

/// The JSON header of a safetensors file.
fn safetensors_header(bytes: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>> {
    let bad = |reason: &str| RegistryError::invalid("safetensors file", reason);
    let len = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .ok_or_else(|| bad("shorter than its 8-byte header length"))?;
    let end = usize::try_from(len)
        .ok()
        .and_then(|l| l.checked_add(8))
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| bad("header length runs past the end of the file"))?;
    let header = &bytes[8..end];
    if header.first() != Some(&b'{') {
        return Err(bad("header is not a JSON object"));
    }
    serde_json::from_slice(header).map_err(|e| bad(&e.to_string()))
}

/// The `__metadata__` strings of a safetensors file.
pub fn safetensors_metadata(bytes: &[u8]) -> Result<BTreeMap<String, String>> {
    let header = safetensors_header(bytes)?;
    let Some(meta) = header.get("__metadata__") else {
        return Ok(BTreeMap::new());
    };
    serde_json::from_value(meta.clone())
        .map_err(|e| RegistryError::invalid("safetensors metadata", e.to_string()))
}

/// The signature and architecture infergate's exporter wrote into a safetensors file.
pub fn safetensors_signature(bytes: &[u8]) -> Result<(Signature, serde_json::Value)> {
    let meta = safetensors_metadata(bytes)?;
    let missing = |key: &str| {
        RegistryError::invalid(
            "safetensors file",
            format!("no '{key}' metadata: export it with infergate-train, or import the ONNX file"),
        )
    };
    let signature = serde_json::from_str(
        meta.get(META_SIGNATURE)
            .ok_or_else(|| missing(META_SIGNATURE))?,
    )?;
    let architecture = serde_json::from_str(
        meta.get(META_ARCHITECTURE)
            .ok_or_else(|| missing(META_ARCHITECTURE))?,
    )?;
    Ok((signature, architecture))
}
