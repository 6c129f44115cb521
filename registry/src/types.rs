//! What the registry records about a model version.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Baseline;

/// One input or output: name, KServe V2 datatype (`FP32`, `INT64`, …) and shape (-1 dynamic).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSig {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

/// Inputs and outputs of a version, in the model's order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    pub inputs: Vec<TensorSig>,
    pub outputs: Vec<TensorSig>,
}

/// The artifact formats a version can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactKind {
    Onnx,
    Safetensors,
    /// A Hugging Face `tokenizer.json`, beside the network of a text model.
    Tokenizer,
}

impl ArtifactKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Onnx => "onnx",
            Self::Safetensors => "safetensors",
            Self::Tokenizer => "tokenizer",
        }
    }
}

/// A stored artifact of a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub kind: ArtifactKind,
    /// Lowercase hex sha256 of the content.
    pub digest: String,
    pub size: u64,
}

/// Where a version came from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Lineage {
    /// The version this one was derived from (quantized or fine-tuned from), same model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<u32>,
    /// sha256 of the training data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    /// The trainer's configuration, as it ran.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub training_config: serde_json::Value,
    /// The code that produced it (crate version and git revision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_version: Option<String>,
    /// e.g. `int8-qdq-per-channel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<String>,
    /// The teacher a student was distilled from, as `model:version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distillation_teacher: Option<String>,
}

/// Everything recorded about one version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub model: String,
    /// 1, 2, 3… in registration order.
    pub version: u32,
    /// The backend that serves it: [`crate::PLATFORM_ONNX`] or [`crate::PLATFORM_CANDLE`].
    pub platform: String,
    pub artifacts: Vec<Artifact>,
    pub signature: Signature,
    /// Accuracy and friends, latency (`latency_ms_*`), size (`size_bytes`).
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    #[serde(default)]
    pub lineage: Lineage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Baseline>,
    /// The network's architecture, for backends that build it from weights (candle).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub architecture: serde_json::Value,
    #[serde(default)]
    pub description: String,
    /// Unix milliseconds.
    pub created_at: i64,
    pub author: String,
}

impl VersionRecord {
    /// The artifact of `kind`, if the version has one.
    pub fn artifact(&self, kind: ArtifactKind) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.kind == kind)
    }

    /// The artifact the version's platform serves from.
    pub fn serving_artifact(&self) -> Option<&Artifact> {
        if self.platform == crate::PLATFORM_CANDLE {
            self.artifact(ArtifactKind::Safetensors)
        } else {
            self.artifact(ArtifactKind::Onnx)
        }
    }
}

/// A model with its versions and aliases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSummary {
    pub name: String,
    pub versions: Vec<u32>,
    pub aliases: BTreeMap<String, u32>,
}

/// One recorded management action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    /// Unix milliseconds.
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub model: String,
    pub detail: serde_json::Value,
}
