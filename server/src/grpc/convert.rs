//! Translation between `ModelInferRequest`/`ModelInferResponse` and the core types. Raw
//! contents are shared `Bytes` slices of the received message, never copied.

use std::collections::HashMap;

use bytes::Bytes;
use infergate_proto::inference as pb;
use infergate_runtime::{DataType, NamedTensor, Tensor};
use pb::infer_parameter::ParameterChoice;

use crate::core::{InferRequest, InferResponse, ParamValue, Parameters, Protocol};
use crate::error::ServeError;

fn parameters(map: HashMap<String, pb::InferParameter>) -> Parameters {
    map.into_iter()
        .filter_map(|(k, v)| {
            let v = match v.parameter_choice? {
                ParameterChoice::BoolParam(b) => ParamValue::Bool(b),
                ParameterChoice::Int64Param(i) => ParamValue::Int64(i),
                ParameterChoice::Uint64Param(u) => ParamValue::Uint64(u),
                ParameterChoice::DoubleParam(d) => ParamValue::Double(d),
                ParameterChoice::StringParam(s) => ParamValue::String(s),
            };
            Some((k, v))
        })
        .collect()
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// Decodes a gRPC request into the core request.
pub fn request(r: pb::ModelInferRequest) -> Result<InferRequest, ServeError> {
    let mut req = InferRequest::new(r.model_name, non_empty(r.model_version), Protocol::Grpc);
    req.id = non_empty(r.id);
    req.parameters = parameters(r.parameters);
    let raw = r.raw_input_contents;
    if !raw.is_empty() && raw.len() != r.inputs.len() {
        return Err(ServeError::invalid(format!(
            "raw_input_contents has {} entries for {} inputs",
            raw.len(),
            r.inputs.len()
        )));
    }
    req.inputs.reserve(r.inputs.len());
    for (i, input) in r.inputs.into_iter().enumerate() {
        let name = input.name;
        let dtype = DataType::parse(&input.datatype).ok_or_else(|| {
            ServeError::invalid(format!(
                "input '{name}' has unknown datatype '{}'",
                input.datatype
            ))
        })?;
        let tensor = if raw.is_empty() {
            typed(&name, dtype, input.shape, input.contents)?
        } else if input.contents.is_some() {
            return Err(ServeError::invalid(format!(
                "input '{name}' sets contents while raw_input_contents is used"
            )));
        } else {
            Tensor::from_raw(dtype, input.shape, raw[i].clone())
                .map_err(|e| ServeError::invalid(format!("input '{name}': {e}")))?
        };
        req.inputs.push(NamedTensor::new(name, tensor));
    }
    for output in r.outputs {
        req.request_output(output.name, &parameters(output.parameters))?;
    }
    Ok(req)
}

fn narrow<T: TryFrom<i64> + bytemuck::Pod>(
    name: &str,
    dtype: DataType,
    values: &[i64],
) -> Result<Vec<u8>, ServeError> {
    let mut out = Vec::with_capacity(values.len() * std::mem::size_of::<T>());
    for &v in values {
        let x = T::try_from(v).map_err(|_| {
            ServeError::invalid(format!(
                "input '{name}': value {v} is out of range for {dtype}"
            ))
        })?;
        out.extend_from_slice(bytemuck::bytes_of(&x));
    }
    Ok(out)
}

/// Typed `contents` into raw little-endian bytes.
fn typed(
    name: &str,
    dtype: DataType,
    shape: Vec<i64>,
    contents: Option<pb::InferTensorContents>,
) -> Result<Tensor, ServeError> {
    let c = contents.unwrap_or_default();
    let widen = |v: &[i32]| v.iter().map(|&x| i64::from(x)).collect::<Vec<_>>();
    let widen_u = |v: &[u32]| v.iter().map(|&x| i64::from(x)).collect::<Vec<_>>();
    let raw: Vec<u8> = match dtype {
        DataType::Bool => c.bool_contents.iter().map(|&b| u8::from(b)).collect(),
        DataType::Int8 => narrow::<i8>(name, dtype, &widen(&c.int_contents))?,
        DataType::Int16 => narrow::<i16>(name, dtype, &widen(&c.int_contents))?,
        DataType::Int32 => bytemuck::cast_slice(&c.int_contents).to_vec(),
        DataType::Int64 => bytemuck::cast_slice(&c.int64_contents).to_vec(),
        DataType::Uint8 => narrow::<u8>(name, dtype, &widen_u(&c.uint_contents))?,
        DataType::Uint16 => narrow::<u16>(name, dtype, &widen_u(&c.uint_contents))?,
        DataType::Uint32 => bytemuck::cast_slice(&c.uint_contents).to_vec(),
        DataType::Uint64 => bytemuck::cast_slice(&c.uint64_contents).to_vec(),
        DataType::Fp32 => bytemuck::cast_slice(&c.fp32_contents).to_vec(),
        DataType::Fp64 => bytemuck::cast_slice(&c.fp64_contents).to_vec(),
        DataType::Fp16 | DataType::Bf16 => {
            return Err(ServeError::invalid(format!(
                "input '{name}': {dtype} data must be sent in raw_input_contents"
            )));
        }
        DataType::Bytes => {
            return Tensor::from_elements(shape, c.bytes_contents)
                .map_err(|e| ServeError::invalid(format!("input '{name}': {e}")));
        }
    };
    let size = dtype.size().unwrap_or(1);
    let count = raw.len() / size;
    let expected = infergate_runtime::element_count(&shape)
        .map_err(|e| ServeError::invalid(format!("input '{name}': {e}")))?;
    if count != expected {
        return Err(ServeError::invalid(format!(
            "input '{name}': expected {expected} elements for shape {shape:?}, got {count} in contents"
        )));
    }
    Tensor::from_raw(dtype, shape, Bytes::from(raw))
        .map_err(|e| ServeError::invalid(format!("input '{name}': {e}")))
}

fn pb_parameters(params: Parameters) -> HashMap<String, pb::InferParameter> {
    params
        .into_iter()
        .map(|(k, v)| {
            let choice = match v {
                ParamValue::Bool(b) => ParameterChoice::BoolParam(b),
                ParamValue::Int64(i) => ParameterChoice::Int64Param(i),
                ParamValue::Uint64(u) => ParameterChoice::Uint64Param(u),
                ParamValue::Double(d) => ParameterChoice::DoubleParam(d),
                ParamValue::String(s) => ParameterChoice::StringParam(s),
            };
            (
                k,
                pb::InferParameter {
                    parameter_choice: Some(choice),
                },
            )
        })
        .collect()
}

/// A string-valued parameter.
pub fn string_parameter(value: String) -> pb::InferParameter {
    pb::InferParameter {
        parameter_choice: Some(ParameterChoice::StringParam(value)),
    }
}

/// Encodes a core response; every output travels in `raw_output_contents`.
pub fn response(resp: InferResponse) -> pb::ModelInferResponse {
    let mut outputs = Vec::with_capacity(resp.outputs.len());
    let mut raw = Vec::with_capacity(resp.outputs.len());
    for o in resp.outputs {
        outputs.push(pb::model_infer_response::InferOutputTensor {
            name: o.name.to_string(),
            datatype: o.tensor.dtype().as_str().to_string(),
            shape: o.tensor.shape().to_vec(),
            parameters: HashMap::new(),
            contents: None,
        });
        raw.push(o.tensor.to_raw());
    }
    pb::ModelInferResponse {
        model_name: resp.model_name,
        model_version: resp.model_version,
        id: resp.id.unwrap_or_default(),
        parameters: pb_parameters(resp.parameters),
        outputs,
        raw_output_contents: raw,
    }
}
