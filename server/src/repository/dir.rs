//! Loading models from a Triton-layout directory (`<dir>/<model>/<version>/model.onnx`).

use std::path::Path;
use std::sync::Arc;

use infergate_config::{ModelConfig, RuntimeConfig};
use infergate_runtime::ort::OrtRuntime;
use infergate_runtime::{Model, ModelOptions};

use super::{Budget, CONFIG_FILE, Entry, MODEL_FILE, admission_for, new_version};
use crate::error::ServeError;

pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

pub(super) fn list_model_dirs(root: &Path) -> Result<Vec<String>, ServeError> {
    let entries = std::fs::read_dir(root).map_err(|e| {
        ServeError::invalid(format!(
            "cannot read model repository {}: {e}",
            root.display()
        ))
    })?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| valid_name(n))
        .collect();
    names.sort();
    Ok(names)
}

/// Blocking: reads the model's config and loads every version its policy selects.
pub(super) fn load_model_dir(
    runtime: &OrtRuntime,
    (defaults, model_defaults, budget): (
        &RuntimeConfig,
        &infergate_config::ModelDefaults,
        &mut Budget,
    ),
    name: &str,
    dir: &Path,
) -> Entry {
    let mut entry = Entry::default();
    let config = match ModelConfig::load_with(&dir.join(CONFIG_FILE), model_defaults) {
        Ok(config) => config,
        Err(e) => {
            entry.failures.insert(None, e.to_string());
            return entry;
        }
    };
    // An embedding model on candle is a safetensors file, an image model on candle a PyTorch
    // state_dict; everything else an ONNX file.
    let model_file = match (&config.embedding, &config.image) {
        (Some(e), _) if e.backend == infergate_config::TextBackend::Candle => "model.safetensors",
        (_, Some(i)) => infergate_runtime::image::ImageFactory::model_file(i.backend),
        _ => MODEL_FILE,
    };
    let available: Vec<u64> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join(model_file).is_file())
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .collect();
    let selected = config.version_policy.select(&available);
    if selected.is_empty() {
        entry.failures.insert(
            None,
            format!("no version folder with a {model_file} matches the version policy"),
        );
        return entry;
    }
    let instances = config.instances.unwrap_or(defaults.instances);
    let threads = config.intra_op_threads.unwrap_or(defaults.intra_op_threads);
    let admission = admission_for(&config);
    for version in selected {
        let path = dir.join(version.to_string()).join(model_file);
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        if let Err(why) = budget.take(&format!("{name} version {version}"), size) {
            tracing::error!(model = %name, version, reason = %why, "model version not loaded");
            entry.failures.insert(Some(version), why);
            continue;
        }
        let digest = match infergate_registry::sha256_file(&path) {
            Ok(d) => format!("sha256:{d}"),
            Err(e) => {
                entry.failures.insert(
                    Some(version),
                    format!("cannot read {}: {e}", path.display()),
                );
                continue;
            }
        };
        let options = ModelOptions {
            name: format!("{name}:{version}"),
            instances,
            queue_capacity: defaults.queue_capacity,
            nice: config.nice,
        };
        let version_dir = dir.join(version.to_string());
        let class_names = match crate::image::read_labels(&version_dir) {
            Ok(names) => names,
            Err(e) => {
                entry.failures.insert(Some(version), e);
                continue;
            }
        };
        let (mut text, mut image) = (None, None);
        let started = match (&config.embedding, &config.image) {
            (Some(embedding), _) => {
                crate::text::TextModel::load(&version_dir, embedding, runtime, threads).and_then(
                    |(factory, model)| {
                        text = Some(model);
                        Model::start(factory, options)
                    },
                )
            }
            (None, Some(config)) => {
                crate::image::ImageModel::load(&version_dir, config, runtime, threads).and_then(
                    |(factory, model)| {
                        image = Some(model);
                        Model::start(factory, options)
                    },
                )
            }
            (None, None) => runtime
                .load(&path, threads)
                .and_then(|factory| Model::start(Arc::new(factory), options)),
        };
        match started {
            Ok(model) => {
                let mut loaded = new_version(
                    name,
                    version,
                    model,
                    config.clone(),
                    instances,
                    digest,
                    admission.clone(),
                );
                loaded.weight_bytes = size;
                loaded.text = text;
                loaded.image = image;
                loaded.class_names = class_names;
                entry.versions.insert(version, Arc::new(loaded));
            }
            Err(e) => {
                tracing::error!(model = %name, version, error = %e, "model version failed to load");
                entry.failures.insert(Some(version), e.to_string());
            }
        }
    }
    entry
}
