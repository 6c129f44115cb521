//! Model metadata, configuration, statistics and the repository index, built once as the
//! protocol's messages; gRPC returns them as they are and HTTP renders them as JSON.

use infergate_config::VersionPolicy;
use infergate_proto::inference as pb;
use infergate_runtime::{DataType, TensorSpec};

use crate::error::ServeError;
use crate::repository::{ModelVersion, Repository};
use crate::stats::Duration2;

/// The server's name in metadata responses.
pub const SERVER_NAME: &str = "infergate";
/// Protocol extensions infergate implements.
pub const EXTENSIONS: [&str; 6] = [
    "binary_tensor_data",
    "model_repository",
    "model_repository(unload_dependents)",
    "statistics",
    "model_configuration",
    "parameters",
];

fn tensor_meta(spec: &TensorSpec) -> pb::model_metadata_response::TensorMetadata {
    pb::model_metadata_response::TensorMetadata {
        name: spec.name.clone(),
        datatype: spec.dtype.as_str().to_string(),
        shape: spec.shape.clone(),
    }
}

/// Model metadata; for a named version `versions` lists that one only.
/// Metadata of a model, or of a route (its first variant's interface, under the route's name,
/// with no versions: the route chooses them).
pub fn metadata_or_route(
    repo: &Repository,
    routes: &crate::layers::route::Routes,
    name: &str,
    version: Option<&str>,
) -> Result<pb::ModelMetadataResponse, ServeError> {
    match routes.interface(name) {
        Some((model, model_version)) if version.is_none() => {
            let mut m = metadata(repo, &model, model_version.as_deref())?;
            m.name = name.to_string();
            m.versions = Vec::new();
            Ok(m)
        }
        _ => metadata(repo, name, version),
    }
}

pub fn metadata(
    repo: &Repository,
    name: &str,
    version: Option<&str>,
) -> Result<pb::ModelMetadataResponse, ServeError> {
    let target = repo.resolve(name, version)?;
    let versions = match version.filter(|v| !v.is_empty()) {
        Some(_) => vec![target.version_label.clone()],
        None => repo
            .versions(name)
            .iter()
            .map(|v| v.version_label.clone())
            .collect(),
    };
    let signature = target.model.signature();
    Ok(pb::ModelMetadataResponse {
        name: name.to_string(),
        versions,
        platform: target.model.platform().to_string(),
        inputs: signature.inputs.iter().map(tensor_meta).collect(),
        outputs: signature.outputs.iter().map(tensor_meta).collect(),
        properties: {
            let mut props: std::collections::HashMap<String, String> = target
                .properties
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if props.contains_key("registry_platform") {
                props.insert(
                    "aliases".to_string(),
                    repo.aliases_of(name, target.version).join(","),
                );
            }
            props
        },
    })
}

fn config_dtype(dtype: DataType) -> pb::DataType {
    match dtype {
        DataType::Bool => pb::DataType::TypeBool,
        DataType::Uint8 => pb::DataType::TypeUint8,
        DataType::Uint16 => pb::DataType::TypeUint16,
        DataType::Uint32 => pb::DataType::TypeUint32,
        DataType::Uint64 => pb::DataType::TypeUint64,
        DataType::Int8 => pb::DataType::TypeInt8,
        DataType::Int16 => pb::DataType::TypeInt16,
        DataType::Int32 => pb::DataType::TypeInt32,
        DataType::Int64 => pb::DataType::TypeInt64,
        DataType::Fp16 => pb::DataType::TypeFp16,
        DataType::Bf16 => pb::DataType::TypeBf16,
        DataType::Fp32 => pb::DataType::TypeFp32,
        DataType::Fp64 => pb::DataType::TypeFp64,
        DataType::Bytes => pb::DataType::TypeString,
    }
}

/// Triton-style model configuration: with `max_batch_size > 0` the batch dimension is
/// implied and left out of `dims`, as perf_analyzer expects.
pub fn model_config(target: &ModelVersion) -> pb::ModelConfig {
    let batching = target.config.max_batch_size > 0;
    let dims = |spec: &TensorSpec| -> Vec<i64> {
        if batching {
            spec.shape.iter().skip(1).copied().collect()
        } else {
            spec.shape.clone()
        }
    };
    let signature = target.model.signature();
    let policy = match &target.config.version_policy {
        VersionPolicy::Latest(n) => {
            pb::model_version_policy::PolicyChoice::Latest(pb::model_version_policy::Latest {
                num_versions: *n,
            })
        }
        VersionPolicy::All => {
            pb::model_version_policy::PolicyChoice::All(pb::model_version_policy::All {})
        }
        VersionPolicy::Specific(v) => {
            pb::model_version_policy::PolicyChoice::Specific(pb::model_version_policy::Specific {
                versions: v.iter().map(|&v| v as i64).collect(),
            })
        }
    };
    pb::ModelConfig {
        name: target.name.clone(),
        platform: target.model.platform().to_string(),
        backend: if target.model.platform() == infergate_runtime::ort::PLATFORM {
            "onnxruntime".into()
        } else {
            target.model.platform().to_string()
        },
        version_policy: Some(pb::ModelVersionPolicy {
            policy_choice: Some(policy),
        }),
        max_batch_size: target.config.max_batch_size as i32,
        input: signature
            .inputs
            .iter()
            .map(|s| pb::ModelInput {
                name: s.name.clone(),
                data_type: config_dtype(s.dtype) as i32,
                dims: dims(s),
            })
            .collect(),
        output: signature
            .outputs
            .iter()
            .map(|s| pb::ModelOutput {
                name: s.name.clone(),
                data_type: config_dtype(s.dtype) as i32,
                dims: dims(s),
            })
            .collect(),
        instance_group: vec![pb::ModelInstanceGroup {
            name: target.name.clone(),
            count: target.instances as i32,
            kind: pb::model_instance_group::Kind::Cpu as i32,
        }],
        dynamic_batching: target.config.batching().map(|b| pb::ModelDynamicBatching {
            preferred_batch_size: b.preferred_batch_sizes.iter().map(|&n| n as i32).collect(),
            max_queue_delay_microseconds: b.max_queue_delay_us,
        }),
    }
}

fn duration(d: &Duration2) -> Option<pb::StatisticDuration> {
    let (count, ns) = d.get();
    Some(pb::StatisticDuration { count, ns })
}

/// Statistics of the named model (all ready versions, or one), or of every model.
pub fn statistics(
    repo: &Repository,
    name: Option<&str>,
    version: Option<&str>,
) -> Result<pb::ModelStatisticsResponse, ServeError> {
    let targets = match (
        name.filter(|n| !n.is_empty()),
        version.filter(|v| !v.is_empty()),
    ) {
        (None, _) => repo.all_versions(),
        (Some(name), Some(version)) => vec![repo.resolve(name, Some(version))?],
        (Some(name), None) => {
            repo.resolve(name, None)?;
            repo.versions(name)
        }
    };
    let model_stats = targets
        .iter()
        .map(|t| {
            let s = &t.stats;
            pb::ModelStatistics {
                name: t.name.clone(),
                version: t.version_label.clone(),
                last_inference: s
                    .last_inference_ms
                    .load(std::sync::atomic::Ordering::Relaxed),
                inference_count: s.inference_count.load(std::sync::atomic::Ordering::Relaxed),
                execution_count: s.execution_count.load(std::sync::atomic::Ordering::Relaxed),
                inference_stats: Some(pb::InferStatistics {
                    success: duration(&s.success),
                    fail: duration(&s.fail),
                    queue: duration(&s.queue),
                    compute_input: duration(&s.compute_input),
                    compute_infer: duration(&s.compute_infer),
                    compute_output: duration(&s.compute_output),
                    cache_hit: duration(&s.cache_hit),
                    cache_miss: duration(&s.cache_miss),
                }),
                batch_stats: s
                    .batch_stats()
                    .map(|(size, b)| pb::InferBatchStatistics {
                        batch_size: size as u64,
                        compute_input: duration(&b.compute_input),
                        compute_infer: duration(&b.compute_infer),
                        compute_output: duration(&b.compute_output),
                    })
                    .collect(),
            }
        })
        .collect();
    Ok(pb::ModelStatisticsResponse { model_stats })
}

/// The repository index.
pub fn index(repo: &Repository, ready_only: bool) -> pb::RepositoryIndexResponse {
    pb::RepositoryIndexResponse {
        models: repo
            .index(ready_only)
            .into_iter()
            .map(|e| pb::repository_index_response::ModelIndex {
                name: e.name,
                version: e.version,
                state: e.state.to_string(),
                reason: e.reason,
            })
            .collect(),
    }
}
