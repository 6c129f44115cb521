//! Requests built once before the run: from the model's metadata (random data within each
//! datatype, shapes from `--batch`/`--shape`) or from a file of request bodies.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use infergate_proto::inference as pb;
use serde_json::{Value, json};

use crate::target::{Request, Target};
use crate::{Args, Protocol};

/// What a run sends, round-robin.
#[derive(Debug)]
pub struct Prepared {
    pub requests: Vec<Request>,
}

/// A JSON infer body with its members in the order Triton's and KServe's clients write them
/// (name, shape, datatype, data), not sorted as a `serde_json::Value` would have them.
#[derive(serde::Serialize)]
struct JsonBody<'a> {
    inputs: Vec<JsonInput<'a>>,
}

#[derive(serde::Serialize)]
struct JsonInput<'a> {
    name: &'a str,
    shape: &'a [i64],
    datatype: &'a str,
    data: &'a Value,
}

struct InputSpec {
    name: String,
    datatype: String,
    shape: Vec<i64>,
}

/// A small, fast, seeded generator (xorshift64*): the data only has to be varied.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub async fn prepare(target: &Target, args: &Args) -> anyhow::Result<Prepared> {
    let path: Arc<str> = match &args.version {
        Some(v) => format!("/v2/models/{}/versions/{v}/infer", args.model).into(),
        None => format!("/v2/models/{}/infer", args.model).into(),
    };
    if matches!(target.protocol, Protocol::Openai | Protocol::Tei) {
        return text_requests(target.protocol, args);
    }
    if !args.image_file.is_empty() {
        return image_requests(target.protocol, args, &path);
    }
    if let Some(file) = &args.input_file {
        if target.protocol != Protocol::HttpJson {
            bail!("--input-file holds HTTP JSON bodies: use it with --protocol http-json");
        }
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let requests: Vec<Request> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| Request::Http {
                path: Arc::clone(&path),
                body: Bytes::copy_from_slice(l.as_bytes()),
                header_len: None,
            })
            .collect();
        if requests.is_empty() {
            bail!("{} holds no request bodies", file.display());
        }
        return Ok(Prepared { requests });
    }
    let specs = concrete_inputs(metadata(target, args).await?, args)?;
    let mut rng = Rng::new(args.seed);
    let requests = (0..args.distinct.max(1))
        .map(|_| build(target.protocol, args, &path, &specs, &mut rng))
        .collect::<anyhow::Result<_>>()?;
    Ok(Prepared { requests })
}

/// Embedding requests: `--batch` texts of `--text-file` each, in turn, until every text has
/// been used once.
fn text_requests(protocol: Protocol, args: &Args) -> anyhow::Result<Prepared> {
    let file = args
        .text_file
        .as_ref()
        .context("--protocol openai|tei needs --text-file (one text per line)")?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let texts: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if texts.is_empty() {
        bail!("{} holds no texts", file.display());
    }
    let path: Arc<str> = match protocol {
        Protocol::Openai => "/v1/embeddings".into(),
        _ => "/embed".into(),
    };
    let batch = args.batch.max(1);
    let requests = texts
        .chunks(batch)
        .map(|chunk| {
            let body = match protocol {
                Protocol::Openai => {
                    serde_json::json!({"model": args.model, "input": chunk, "encoding_format": "float"})
                }
                _ => serde_json::json!({"model": args.model, "inputs": chunk}),
            };
            Request::Http {
                path: Arc::clone(&path),
                body: Bytes::from(body.to_string()),
                header_len: None,
            }
        })
        .collect();
    Ok(Prepared { requests })
}

/// Image requests: `--batch` of the `--image-file`s each, in turn, as the BYTES input `image`
/// (Triton's binary extension over HTTP, raw contents over gRPC), one request per starting image.
fn image_requests(protocol: Protocol, args: &Args, path: &Arc<str>) -> anyhow::Result<Prepared> {
    let images = args
        .image_file
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("cannot read {}", p.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let batch = args.batch.max(1);
    let requests = (0..images.len())
        .map(|first| {
            // BYTES elements: a little-endian u32 length, then the bytes.
            let mut raw = Vec::new();
            for i in 0..batch {
                let image = &images[(first + i) % images.len()];
                raw.extend_from_slice(&(image.len() as u32).to_le_bytes());
                raw.extend_from_slice(image);
            }
            let shape = [batch as i64];
            Ok(match protocol {
                Protocol::HttpBinary => {
                    let mut body = serde_json::to_vec(&json!({
                        "inputs": [{"name": "image", "shape": shape, "datatype": "BYTES",
                                    "parameters": {"binary_data_size": raw.len()}}],
                        "parameters": {"binary_data_output": true},
                    }))?;
                    let header_len = body.len();
                    body.extend_from_slice(&raw);
                    Request::Http {
                        path: Arc::clone(path),
                        body: Bytes::from(body),
                        header_len: Some(header_len),
                    }
                }
                Protocol::Grpc => Request::Grpc(crate::target::grpc_frame(
                    &prost::Message::encode_to_vec(&pb::ModelInferRequest {
                        model_name: args.model.clone(),
                        model_version: args.version.clone().unwrap_or_default(),
                        inputs: vec![pb::model_infer_request::InferInputTensor {
                            name: "image".into(),
                            datatype: "BYTES".into(),
                            shape: shape.to_vec(),
                            ..Default::default()
                        }],
                        raw_input_contents: vec![Bytes::from(raw)],
                        ..Default::default()
                    }),
                )),
                _ => bail!("--image-file needs --protocol http-binary or grpc"),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Prepared { requests })
}

async fn metadata(target: &Target, args: &Args) -> anyhow::Result<Vec<InputSpec>> {
    let mut conn = target.connect().await?;
    if let Some(client) = conn.grpc() {
        let meta = client
            .model_metadata(pb::ModelMetadataRequest {
                name: args.model.clone(),
                version: args.version.clone().unwrap_or_default(),
            })
            .await
            .with_context(|| format!("cannot read metadata of model '{}'", args.model))?
            .into_inner();
        return Ok(meta
            .inputs
            .into_iter()
            .map(|t| InputSpec {
                name: t.name,
                datatype: t.datatype,
                shape: t.shape,
            })
            .collect());
    }
    let path = match &args.version {
        Some(v) => format!("/v2/models/{}/versions/{v}", args.model),
        None => format!("/v2/models/{}", args.model),
    };
    let (status, body) = conn.get(&path).await?;
    if status != 200 {
        bail!(
            "GET {path} answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let meta: Value = serde_json::from_slice(&body).context("model metadata is not JSON")?;
    meta["inputs"]
        .as_array()
        .context("model metadata has no inputs")?
        .iter()
        .map(|t| {
            Ok(InputSpec {
                name: t["name"]
                    .as_str()
                    .context("input without a name")?
                    .to_string(),
                datatype: t["datatype"]
                    .as_str()
                    .context("input without a datatype")?
                    .to_string(),
                shape: t["shape"]
                    .as_array()
                    .context("input without a shape")?
                    .iter()
                    .map(|d| d.as_i64().context("shape dimension is not an integer"))
                    .collect::<anyhow::Result<_>>()?,
            })
        })
        .collect()
}

/// Replaces dynamic dimensions: `--shape NAME:DIMS` wins, else a leading -1 becomes `--batch`.
fn concrete_inputs(mut specs: Vec<InputSpec>, args: &Args) -> anyhow::Result<Vec<InputSpec>> {
    let mut overrides = HashMap::new();
    for s in &args.shape {
        let (name, dims) = s
            .split_once(':')
            .with_context(|| format!("--shape {s}: expected NAME:D1,D2,..."))?;
        let dims: Vec<i64> = dims
            .split(',')
            .map(|d| d.trim().parse::<i64>().ok().filter(|d| *d >= 0))
            .collect::<Option<_>>()
            .with_context(|| format!("--shape {s}: dimensions must be non-negative integers"))?;
        overrides.insert(name.to_string(), dims);
    }
    for spec in &mut specs {
        if let Some(dims) = overrides.remove(&spec.name) {
            spec.shape = dims;
            continue;
        }
        if spec.shape.first() == Some(&-1) {
            spec.shape[0] = args.batch as i64;
        }
        if spec.shape.iter().any(|&d| d < 0) {
            bail!(
                "input '{}' has dynamic dimensions {:?}: pass --shape {}:D1,D2,...",
                spec.name,
                spec.shape,
                spec.name
            );
        }
    }
    if let Some(name) = overrides.keys().next() {
        bail!("--shape names '{name}', which is not an input of the model");
    }
    Ok(specs)
}

/// Random raw little-endian data and the same values as JSON.
fn random_tensor(datatype: &str, count: usize, rng: &mut Rng) -> anyhow::Result<(Vec<u8>, Value)> {
    let mut raw = Vec::new();
    let mut values = Vec::with_capacity(count);
    for _ in 0..count {
        let r = rng.next_u64();
        let f = rng.unit() * 2.0 - 1.0;
        match datatype {
            "BOOL" => {
                raw.push((r & 1) as u8);
                values.push(json!(r & 1 == 1));
            }
            "UINT8" | "INT8" | "UINT16" | "INT16" | "UINT32" | "INT32" | "UINT64" | "INT64" => {
                let v = (r % 100) as i64;
                let size = match datatype {
                    "UINT8" | "INT8" => 1,
                    "UINT16" | "INT16" => 2,
                    "UINT32" | "INT32" => 4,
                    _ => 8,
                };
                raw.extend_from_slice(&v.to_le_bytes()[..size]);
                values.push(json!(v));
            }
            "FP32" => {
                let v = f as f32;
                raw.extend_from_slice(&v.to_le_bytes());
                values.push(json!(v));
            }
            "FP64" => {
                raw.extend_from_slice(&f.to_le_bytes());
                values.push(json!(f));
            }
            "BF16" => {
                let v = f32::from_bits((f as f32).to_bits() & 0xffff_0000);
                raw.extend_from_slice(&((v.to_bits() >> 16) as u16).to_le_bytes());
                values.push(json!(v));
            }
            "FP16" => {
                // A normal half in [-1, -0.5) or [0.5, 1): sign, exponent 14, random mantissa.
                let bits = ((r & 1) as u16) << 15 | 14 << 10 | ((r >> 1) as u16 & 0x3ff);
                raw.extend_from_slice(&bits.to_le_bytes());
                let magnitude = (1.0 + f64::from(bits & 0x3ff) / 1024.0) / 2.0;
                values.push(json!(if bits >> 15 == 1 {
                    -magnitude
                } else {
                    magnitude
                }));
            }
            "BYTES" => {
                let s = format!("{:016x}", r);
                raw.extend_from_slice(&(s.len() as u32).to_le_bytes());
                raw.extend_from_slice(s.as_bytes());
                values.push(json!(s));
            }
            other => bail!("unsupported datatype {other}"),
        }
    }
    Ok((raw, Value::Array(values)))
}

fn build(
    protocol: Protocol,
    args: &Args,
    path: &Arc<str>,
    specs: &[InputSpec],
    rng: &mut Rng,
) -> anyhow::Result<Request> {
    let mut tensors = Vec::with_capacity(specs.len());
    for spec in specs {
        let count: usize = spec.shape.iter().map(|&d| d as usize).product();
        tensors.push(random_tensor(&spec.datatype, count, rng)?);
    }
    Ok(match protocol {
        Protocol::HttpJson => {
            let inputs: Vec<JsonInput<'_>> = specs
                .iter()
                .zip(&tensors)
                .map(|(s, (_, data))| JsonInput {
                    name: &s.name,
                    shape: &s.shape,
                    datatype: &s.datatype,
                    data,
                })
                .collect();
            Request::Http {
                path: Arc::clone(path),
                body: Bytes::from(serde_json::to_vec(&JsonBody { inputs })?),
                header_len: None,
            }
        }
        Protocol::HttpBinary => {
            let inputs: Vec<Value> = specs
                .iter()
                .zip(&tensors)
                .map(|(s, (raw, _))| {
                    json!({"name": s.name, "shape": s.shape, "datatype": s.datatype, "parameters": {"binary_data_size": raw.len()}})
                })
                .collect();
            let mut body = serde_json::to_vec(
                &json!({"inputs": inputs, "parameters": {"binary_data_output": true}}),
            )?;
            let header_len = body.len();
            for (raw, _) in &tensors {
                body.extend_from_slice(raw);
            }
            Request::Http {
                path: Arc::clone(path),
                body: Bytes::from(body),
                header_len: Some(header_len),
            }
        }
        Protocol::Openai | Protocol::Tei => bail!("text requests come from --text-file"),
        Protocol::Grpc => Request::Grpc(crate::target::grpc_frame(&prost::Message::encode_to_vec(
            &pb::ModelInferRequest {
                model_name: args.model.clone(),
                model_version: args.version.clone().unwrap_or_default(),
                inputs: specs
                    .iter()
                    .map(|s| pb::model_infer_request::InferInputTensor {
                        name: s.name.clone(),
                        datatype: s.datatype.clone(),
                        shape: s.shape.clone(),
                        ..Default::default()
                    })
                    .collect(),
                raw_input_contents: tensors
                    .into_iter()
                    .map(|(raw, _)| Bytes::from(raw))
                    .collect(),
                ..Default::default()
            },
        ))),
    })
}
