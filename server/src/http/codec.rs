//! HTTP infer bodies: JSON tensors (flat or nested) decoded straight into little-endian bytes
//! (numbers through the fast path of `numbers`, the rest through serde),
//! Triton's binary tensor extension in both directions, and JSON output rendering.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use half::{bf16, f16};
use infergate_runtime::{DataType, NamedTensor, Tensor, TensorData, element_count};
use serde::de::{DeserializeSeed, Error as _, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

use super::{numbers, onepass};
use crate::core::{InferRequest, InferResponse, ParamValue, Parameters, Protocol};
use crate::error::ServeError;
use crate::repository::ModelVersion;

/// An infer request's JSON as read, by `onepass` or by serde_json.
#[derive(Deserialize)]
pub(super) struct JsonRequest<'a> {
    #[serde(default)]
    pub(super) id: Option<String>,
    #[serde(default)]
    pub(super) parameters: Option<HashMap<String, Value>>,
    #[serde(borrow)]
    pub(super) inputs: Vec<JsonInput<'a>>,
    #[serde(default)]
    pub(super) outputs: Option<Vec<JsonOutput>>,
}

#[derive(Deserialize)]
pub(super) struct JsonInput<'a> {
    pub(super) name: String,
    pub(super) shape: Vec<i64>,
    pub(super) datatype: String,
    #[serde(default)]
    pub(super) parameters: Option<HashMap<String, Value>>,
    #[serde(borrow, default, deserialize_with = "data_text")]
    pub(super) data: Option<Data<'a>>,
}

/// An input's `data`: its JSON text, or (read by `onepass`) its numbers already decoded into
/// little-endian values of the input's datatype.
pub(super) enum Data<'a> {
    Text(&'a str),
    Decoded(BytesMut),
}

/// serde_json delimits `data` (checking its syntax) and leaves it to `json_tensor`.
fn data_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Data<'de>>, D::Error> {
    Ok(Option::<&'de RawValue>::deserialize(d)?.map(|raw| Data::Text(raw.get())))
}

#[derive(Deserialize)]
pub(super) struct JsonOutput {
    pub(super) name: String,
    #[serde(default)]
    pub(super) parameters: Option<HashMap<String, Value>>,
}

/// How each output is to be returned: binary or JSON.
#[derive(Debug, Default)]
pub struct OutputPrefs {
    default_binary: bool,
    explicit: Vec<(String, bool)>,
}

impl OutputPrefs {
    fn all_binary() -> Self {
        Self {
            default_binary: true,
            explicit: Vec::new(),
        }
    }

    fn binary(&self, name: &str) -> bool {
        self.explicit
            .iter()
            .find(|(n, _)| n == name)
            .map_or(self.default_binary, |(_, b)| *b)
    }
}

fn parameters(map: Option<HashMap<String, Value>>, whose: &str) -> Result<Parameters, ServeError> {
    let mut out = Vec::new();
    for (key, value) in map.unwrap_or_default() {
        let v = match value {
            Value::Bool(b) => ParamValue::Bool(b),
            Value::String(s) => ParamValue::String(s),
            Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => ParamValue::Int64(i),
                (None, Some(u), _) => ParamValue::Uint64(u),
                (_, _, Some(f)) => ParamValue::Double(f),
                _ => {
                    return Err(ServeError::invalid(format!(
                        "{whose} parameter '{key}' is not a valid number"
                    )));
                }
            },
            _ => {
                return Err(ServeError::invalid(format!(
                    "{whose} parameter '{key}' must be a bool, number or string"
                )));
            }
        };
        out.push((key, v));
    }
    Ok(out)
}

fn param_bool(params: &Parameters, key: &str) -> Option<bool> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, v)| match v {
            ParamValue::Bool(b) => Some(*b),
            _ => None,
        })
}

/// Decodes a JSON header (and the binary tail that follows it, possibly empty): in one pass
/// where `onepass` reads it, through serde_json otherwise.
pub fn decode(
    model: String,
    version: Option<String>,
    json: &[u8],
    binary: Bytes,
) -> Result<(InferRequest, OutputPrefs), ServeError> {
    let parsed = match onepass::read(json) {
        Some(parsed) => parsed,
        None => serde_read(json)?,
    };
    decode_parsed(model, version, parsed, binary)
}

/// [`decode`] through serde_json alone, the reference that `onepass` must agree with (for its
/// tests and the `http_json` fuzz target).
pub fn decode_serde(
    model: String,
    version: Option<String>,
    json: &[u8],
    binary: Bytes,
) -> Result<(InferRequest, OutputPrefs), ServeError> {
    decode_parsed(model, version, serde_read(json)?, binary)
}

fn serde_read(json: &[u8]) -> Result<JsonRequest<'_>, ServeError> {
    serde_json::from_slice(json)
        .map_err(|e| ServeError::invalid(format!("malformed request JSON: {e}")))
}

fn decode_parsed(
    model: String,
    version: Option<String>,
    parsed: JsonRequest<'_>,
    mut binary: Bytes,
) -> Result<(InferRequest, OutputPrefs), ServeError> {
    let mut req = InferRequest::new(model, version, Protocol::Http);
    req.id = parsed.id;
    req.parameters = parameters(parsed.parameters, "request")?;
    let mut prefs = OutputPrefs {
        default_binary: param_bool(&req.parameters, "binary_data_output").unwrap_or(false),
        explicit: Vec::new(),
    };
    req.inputs.reserve(parsed.inputs.len());
    for input in parsed.inputs {
        let name = input.name;
        let dtype = DataType::parse(&input.datatype).ok_or_else(|| {
            ServeError::invalid(format!(
                "input '{name}' has unknown datatype '{}'",
                input.datatype
            ))
        })?;
        let params = parameters(input.parameters, &format!("input '{name}'"))?;
        let binary_size = params
            .iter()
            .find(|(k, _)| k == "binary_data_size")
            .map(|(_, v)| v);
        let tensor = match (binary_size, input.data) {
            (Some(_), Some(_)) => {
                return Err(ServeError::invalid(format!(
                    "input '{name}' has both 'data' and a 'binary_data_size' parameter"
                )));
            }
            (Some(size), None) => {
                let size = match size {
                    ParamValue::Int64(n) if *n >= 0 => *n as u64,
                    ParamValue::Uint64(n) => *n,
                    _ => {
                        return Err(ServeError::invalid(format!(
                            "input '{name}': binary_data_size must be a non-negative integer"
                        )));
                    }
                };
                if size > binary.len() as u64 {
                    return Err(ServeError::invalid(format!(
                        "input '{name}': binary_data_size {size} exceeds the {} bytes of binary data left in the body",
                        binary.len()
                    )));
                }
                let data = binary.split_to(size as usize);
                Tensor::from_raw(dtype, input.shape, data)
                    .map_err(|e| ServeError::invalid(format!("input '{name}': {e}")))?
            }
            (None, Some(data)) => {
                let tensor = json_tensor(&name, dtype, input.shape, data)?;
                if params
                    .iter()
                    .any(|(k, v)| k == "content_type" && *v == ParamValue::String("base64".into()))
                {
                    unbase64(&name, tensor)?
                } else {
                    tensor
                }
            }
            (None, None) => {
                return Err(ServeError::invalid(format!(
                    "input '{name}' has neither 'data' nor a 'binary_data_size' parameter"
                )));
            }
        };
        req.inputs.push(NamedTensor::new(name, tensor));
    }
    if !binary.is_empty() {
        return Err(ServeError::invalid(format!(
            "the body has {} bytes of binary data not claimed by any input's binary_data_size",
            binary.len()
        )));
    }
    for output in parsed.outputs.unwrap_or_default() {
        let params = parameters(output.parameters, &format!("output '{}'", output.name))?;
        if let Some(b) = param_bool(&params, "binary_data") {
            prefs.explicit.push((output.name.clone(), b));
        }
        req.request_output(output.name, &params)?;
    }
    Ok((req, prefs))
}

/// A BYTES input sent as base64 strings (input parameter `content_type: "base64"`, as the Open
/// Inference Protocol's codecs write binary data such as images in JSON), decoded.
fn unbase64(name: &str, tensor: Tensor) -> Result<Tensor, ServeError> {
    use base64::Engine as _;
    let TensorData::Bytes(elements) = tensor.data() else {
        return Err(ServeError::invalid(format!(
            "input '{name}': content_type 'base64' applies to BYTES inputs only"
        )));
    };
    let decoded = elements
        .iter()
        .enumerate()
        .map(|(i, e)| {
            base64::engine::general_purpose::STANDARD
                .decode(e)
                .map(Bytes::from)
                .map_err(|err| {
                    ServeError::invalid(format!("input '{name}' element {i} is not base64: {err}"))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Tensor::from_elements(tensor.shape().to_vec(), decoded)
        .map_err(|e| ServeError::invalid(format!("input '{name}': {e}")))
}

/// A raw binary request (`Inference-Header-Content-Length: 0`): the whole body is the single
/// input of a single-input model, batch 1; every output comes back binary.
pub fn decode_raw(
    model: String,
    version: Option<String>,
    target: &ModelVersion,
    body: Bytes,
) -> Result<(InferRequest, OutputPrefs), ServeError> {
    let signature = target.model.signature();
    let [spec] = signature.inputs.as_slice() else {
        return Err(ServeError::invalid(format!(
            "a raw binary request needs a single-input model; '{}' has {} inputs",
            target.name,
            signature.inputs.len()
        )));
    };
    let mut shape = spec.shape.clone();
    if let Some(first) = shape
        .first_mut()
        .filter(|_| target.config.max_batch_size > 0)
    {
        *first = 1;
    }
    let dynamic: Vec<usize> = (0..shape.len()).filter(|&i| shape[i] < 0).collect();
    match (spec.dtype.size(), dynamic.as_slice()) {
        (_, []) => {}
        (Some(size), [i]) => {
            let known = element_count(
                &shape
                    .iter()
                    .map(|&d| if d < 0 { 1 } else { d })
                    .collect::<Vec<_>>(),
            )
            .map_err(|e| ServeError::invalid(e.to_string()))?
            .saturating_mul(size);
            if known == 0 || !body.len().is_multiple_of(known) {
                return Err(ServeError::invalid(format!(
                    "raw binary body of {} bytes does not fit input '{}' of shape {:?}",
                    body.len(),
                    spec.name,
                    spec.shape
                )));
            }
            shape[*i] = (body.len() / known) as i64;
        }
        (None, _) => shape.iter_mut().filter(|d| **d < 0).for_each(|d| *d = 1),
        _ => {
            return Err(ServeError::invalid(format!(
                "input '{}' has shape {:?}: a raw binary request cannot tell its dynamic dimensions",
                spec.name, spec.shape
            )));
        }
    }
    // An image model's raw body is the encoded image itself, not length-prefixed BYTES.
    let tensor = if target.image.is_some() {
        Tensor::from_elements(shape, vec![body])
    } else {
        Tensor::from_raw(spec.dtype, shape, body)
    }
    .map_err(|e| ServeError::invalid(format!("input '{}': {e}", spec.name)))?;
    let mut req = InferRequest::new(model, version, Protocol::Http);
    req.inputs
        .push(NamedTensor::new(Arc::from(spec.name.as_str()), tensor));
    Ok((req, OutputPrefs::all_binary()))
}

/// Where parsed JSON elements go.
enum Sink {
    Fixed(BytesMut),
    Bytes(Vec<Bytes>),
}

fn json_tensor(
    name: &str,
    dtype: DataType,
    shape: Vec<i64>,
    data: Data<'_>,
) -> Result<Tensor, ServeError> {
    let count =
        element_count(&shape).map_err(|e| ServeError::invalid(format!("input '{name}': {e}")))?;
    let sink = match data {
        Data::Decoded(bytes) => Sink::Fixed(bytes),
        Data::Text(text) => text_tensor(name, dtype, count, text)?,
    };
    let got = match &sink {
        Sink::Fixed(bytes) => bytes.len() / dtype.size().unwrap_or(1),
        Sink::Bytes(elements) => elements.len(),
    };
    if got != count {
        return Err(ServeError::invalid(format!(
            "input '{name}': expected {count} elements for shape {shape:?}, got {got}"
        )));
    }
    let tensor = match sink {
        Sink::Fixed(bytes) => Tensor::from_raw(dtype, shape, bytes.freeze()),
        Sink::Bytes(elements) => Tensor::from_elements(shape, elements),
    };
    tensor.map_err(|e| ServeError::invalid(format!("input '{name}': {e}")))
}

/// The elements of `data`'s JSON text: through `numbers` where it can, through serde otherwise.
fn text_tensor(name: &str, dtype: DataType, count: usize, text: &str) -> Result<Sink, ServeError> {
    // Never trust the shape for allocation: the JSON text bounds the element count.
    let hint = count.min(text.len() / 2 + 1);
    let mut sink = match dtype.size() {
        Some(size) => Sink::Fixed(BytesMut::with_capacity(hint.saturating_mul(size))),
        None => Sink::Bytes(Vec::with_capacity(hint)),
    };
    let fast = match &mut sink {
        Sink::Fixed(out) if numbers::handles(dtype) => {
            let decoded = numbers::decode(text, dtype, out).is_some();
            if !decoded {
                out.clear();
            }
            decoded
        }
        _ => false,
    };
    if !fast {
        let mut de = serde_json::Deserializer::from_str(text);
        Flat {
            dtype,
            sink: &mut sink,
        }
        .deserialize(&mut de)
        .map_err(|e| ServeError::invalid(format!("input '{name}': {e}")))?;
    }
    Ok(sink)
}

/// Visits nested arrays depth-first, appending each scalar in row-major order.
struct Flat<'s> {
    dtype: DataType,
    sink: &'s mut Sink,
}

impl<'de> DeserializeSeed<'de> for Flat<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Flat<'_> {
    fn push_fixed<E: serde::de::Error>(&mut self, bytes: &[u8]) -> Result<(), E> {
        match self.sink {
            Sink::Fixed(out) => {
                out.extend_from_slice(bytes);
                Ok(())
            }
            Sink::Bytes(_) => Err(E::custom("expected a string for BYTES data")),
        }
    }

    fn int<E: serde::de::Error>(&mut self, v: i128) -> Result<(), E> {
        match self.dtype {
            DataType::Fp16 | DataType::Bf16 | DataType::Fp32 | DataType::Fp64 => {
                self.float(v as f64)
            }
            DataType::Bool => Err(E::custom(format!(
                "expected true or false for BOOL data, got {v}"
            ))),
            DataType::Bytes => Err(E::custom(format!(
                "expected a string for BYTES data, got {v}"
            ))),
            // The integer types, whose sink is always fixed-width.
            dtype => match self.sink {
                Sink::Fixed(out) => numbers::push_int(dtype, v, out)
                    .ok_or_else(|| E::custom(format!("value {v} is out of range for {dtype}"))),
                Sink::Bytes(_) => Err(E::custom("expected a string for BYTES data")),
            },
        }
    }

    fn float<E: serde::de::Error>(&mut self, v: f64) -> Result<(), E> {
        // JSON numbers are finite; one that only fits by becoming infinity is refused.
        let finite = |narrowed: f64| {
            if narrowed.is_finite() {
                Ok(())
            } else {
                Err(E::custom(format!(
                    "value {v} is out of range for {}",
                    self.dtype
                )))
            }
        };
        match self.dtype {
            DataType::Fp16 => {
                let x = f16::from_f64(v);
                finite(x.to_f64())?;
                self.push_fixed(&x.to_le_bytes())
            }
            DataType::Bf16 => {
                let x = bf16::from_f64(v);
                finite(x.to_f64())?;
                self.push_fixed(&x.to_le_bytes())
            }
            DataType::Fp32 => {
                finite(f64::from(v as f32))?;
                self.push_fixed(&(v as f32).to_le_bytes())
            }
            DataType::Fp64 => self.push_fixed(&v.to_le_bytes()),
            _ if v.fract() == 0.0 && v.abs() < 1.8e19 => self.int(v as i128),
            _ => Err(E::custom(format!(
                "expected an integer for {} data, got {v}",
                self.dtype
            ))),
        }
    }
}

impl<'de> Visitor<'de> for Flat<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} data: a flat or nested array of values", self.dtype)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let (dtype, sink) = (self.dtype, self.sink);
        while seq
            .next_element_seed(Flat {
                dtype,
                sink: &mut *sink,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_bool<E: serde::de::Error>(mut self, v: bool) -> Result<(), E> {
        if self.dtype == DataType::Bool {
            self.push_fixed(&[u8::from(v)])
        } else {
            Err(E::custom(format!(
                "expected {} data, got a boolean",
                self.dtype
            )))
        }
    }

    fn visit_i64<E: serde::de::Error>(mut self, v: i64) -> Result<(), E> {
        self.int(v as i128)
    }

    fn visit_u64<E: serde::de::Error>(mut self, v: u64) -> Result<(), E> {
        self.int(v as i128)
    }

    fn visit_f64<E: serde::de::Error>(mut self, v: f64) -> Result<(), E> {
        self.float(v)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        match self.sink {
            Sink::Bytes(out) => {
                out.push(Bytes::copy_from_slice(v.as_bytes()));
                Ok(())
            }
            Sink::Fixed(_) => Err(E::custom(format!(
                "expected {} data, got a string",
                self.dtype
            ))),
        }
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Err(E::custom(format!("expected {} data, got null", self.dtype)))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(A::Error::custom(format!(
            "expected {} data, got an object",
            self.dtype
        )))
    }
}

/// The JSON part of a response, plus the binary tail (empty when nothing is binary).
pub fn encode(resp: &InferResponse, prefs: &OutputPrefs) -> (Vec<u8>, Vec<Bytes>) {
    let outputs: Vec<JsonOutputTensor<'_>> = resp
        .outputs
        .iter()
        .map(|o| JsonOutputTensor {
            tensor: &o.tensor,
            name: &o.name,
            binary: prefs.binary(&o.name),
        })
        .collect();
    let body = JsonResponse {
        resp,
        outputs: &outputs,
    };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    let binary = outputs
        .iter()
        .filter(|o| o.binary)
        .map(|o| o.tensor.to_raw())
        .collect();
    (json, binary)
}

struct JsonResponse<'a> {
    resp: &'a InferResponse,
    outputs: &'a [JsonOutputTensor<'a>],
}

impl Serialize for JsonResponse<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("InferResponse", 5)?;
        st.serialize_field("model_name", &self.resp.model_name)?;
        st.serialize_field("model_version", &self.resp.model_version)?;
        if let Some(id) = &self.resp.id {
            st.serialize_field("id", id)?;
        }
        if !self.resp.parameters.is_empty() {
            st.serialize_field("parameters", &ParamsView(&self.resp.parameters))?;
        }
        st.serialize_field("outputs", self.outputs)?;
        st.end()
    }
}

struct ParamsView<'a>(&'a Parameters);

impl Serialize for ParamsView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            match v {
                ParamValue::Bool(b) => map.serialize_entry(k, b)?,
                ParamValue::Int64(i) => map.serialize_entry(k, i)?,
                ParamValue::Uint64(u) => map.serialize_entry(k, u)?,
                ParamValue::Double(d) => map.serialize_entry(k, d)?,
                ParamValue::String(x) => map.serialize_entry(k, x)?,
            }
        }
        map.end()
    }
}

struct JsonOutputTensor<'a> {
    name: &'a str,
    tensor: &'a Tensor,
    binary: bool,
}

impl Serialize for JsonOutputTensor<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Output", 4)?;
        st.serialize_field("name", self.name)?;
        st.serialize_field("datatype", self.tensor.dtype().as_str())?;
        st.serialize_field("shape", self.tensor.shape())?;
        if self.binary {
            let mut params = serde_json::Map::new();
            params.insert("binary_data_size".into(), self.tensor.raw_len().into());
            st.serialize_field("parameters", &params)?;
        } else {
            st.serialize_field("data", &DataView(self.tensor))?;
        }
        st.end()
    }
}

/// A tensor's elements as a flat JSON array.
struct DataView<'a>(&'a Tensor);

impl Serialize for DataView<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let raw = match self.0.data() {
            TensorData::Bytes(elements) => {
                return s.collect_seq(elements.iter().map(|e| String::from_utf8_lossy(e)));
            }
            TensorData::Fixed(raw) => raw,
        };
        macro_rules! seq {
            ($t:ty, $n:expr) => {
                s.collect_seq(
                    raw.chunks_exact($n)
                        .map(|c| <$t>::from_le_bytes(c.try_into().unwrap_or([0; $n]))),
                )
            };
        }
        match self.0.dtype() {
            DataType::Bool => s.collect_seq(raw.iter().map(|&b| b != 0)),
            DataType::Uint8 => s.collect_seq(raw.iter()),
            DataType::Int8 => s.collect_seq(raw.iter().map(|&b| b as i8)),
            DataType::Uint16 => seq!(u16, 2),
            DataType::Int16 => seq!(i16, 2),
            DataType::Uint32 => seq!(u32, 4),
            DataType::Int32 => seq!(i32, 4),
            DataType::Uint64 => seq!(u64, 8),
            DataType::Int64 => seq!(i64, 8),
            DataType::Fp32 => seq!(f32, 4),
            DataType::Fp64 => seq!(f64, 8),
            DataType::Fp16 => s.collect_seq(
                raw.chunks_exact(2)
                    .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()),
            ),
            DataType::Bf16 => s.collect_seq(
                raw.chunks_exact(2)
                    .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
            ),
            DataType::Bytes => s.collect_seq(std::iter::empty::<u8>()),
        }
    }
}
