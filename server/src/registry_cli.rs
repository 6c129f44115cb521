//! `infergate registry …`: the registry's command line (import, list, show, alias, promote,
//! gate, verify, gc, audit).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Subcommand};
use infergate_registry::{GateRules, Registry, VersionRecord, format_millis};
use infergate_runtime::ort::{OrtRuntime, discover};

/// Where the registry lives when neither `--registry` nor `models.registry` says.
pub const DEFAULT_DIR: &str = "models/registry";

/// `infergate registry` flags.
#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// Registry directory [default: models.registry from the config, else ./models/registry].
    /// A registry in PostgreSQL and object storage is named by the config or the environment
    /// (`INFERGATE_MODELS__REGISTRY_DATABASE_URL`, `INFERGATE_MODELS__REGISTRY_STORE_URL`).
    #[arg(long, value_name = "DIR", global = true)]
    pub registry: Option<PathBuf>,
    /// TOML configuration file (for models.registry).
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Recorded as the actor in the audit log [default: $USER].
    #[arg(long, global = true)]
    pub author: Option<String>,
    #[command(subcommand)]
    pub verb: Verb,
}

#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Register an ONNX or safetensors file as the model's next version, or a text model's
    /// version folder (`tokenizer.json`, `config.json`, `1_Pooling/config.json` and the
    /// network its config picks) with the model's config.toml.
    Import {
        #[arg(long)]
        name: String,
        file: PathBuf,
        /// The model's config.toml for a folder (with an `[embedding]` section); it is
        /// registered with the version [default: config.toml beside the folder].
        #[arg(long, value_name = "FILE")]
        model_config: Option<PathBuf>,
        /// For a text model: reference texts, one per line, whose token counts and vector
        /// norms become the version's drift baseline (none: no drift detection).
        #[arg(long, value_name = "FILE")]
        baseline_texts: Option<PathBuf>,
    },
    /// Models with their versions and aliases.
    List,
    /// A model's versions as a lineage tree, or one version in full.
    Show {
        model: String,
        version: Option<String>,
    },
    /// Point an alias at a version (or remove it).
    Alias {
        model: String,
        alias: String,
        version: Option<u32>,
        #[arg(long, conflicts_with = "version")]
        remove: bool,
    },
    /// Move an alias to a version if the model's promotion gates allow it.
    Promote {
        model: String,
        version: u32,
        #[arg(long, default_value = "production")]
        to: String,
        /// Move it even if the gates refuse (audited with the overridden reasons).
        #[arg(long)]
        force: bool,
    },
    /// Show or set a model's promotion gates.
    Gate {
        model: String,
        /// Metric the gates compare (higher is better).
        #[arg(long)]
        metric: Option<String>,
        /// Largest allowed drop below the alias's current version (0.01 = one point).
        #[arg(long)]
        max_drop: Option<f64>,
        /// Smallest allowed value of the metric.
        #[arg(long)]
        min: Option<f64>,
        #[arg(long)]
        max_size_bytes: Option<u64>,
        #[arg(long)]
        max_latency_ms: Option<f64>,
    },
    /// Re-hash every artifact; exits 1 if any fails.
    Verify,
    /// Delete artifacts no version references.
    Gc {
        /// Keep unreferenced artifacts younger than this (a registration may be in progress).
        #[arg(long, default_value_t = 3600)]
        grace_secs: u64,
        #[arg(long)]
        dry_run: bool,
    },
    /// The audit log.
    Audit { model: Option<String> },
}

/// Runs one registry command, printing its result on stdout.
pub fn run(args: RegistryArgs, env: Vec<(String, String)>) -> anyhow::Result<()> {
    let mut config = infergate_config::Config::load(
        args.config.as_deref(),
        env.clone(),
        &infergate_config::Overrides::new(),
    )?;
    if let Some(dir) = args.registry {
        config.models.registry = Some(dir);
    }
    let location = crate::cli::registry_location(&config, &env).unwrap_or_else(|| {
        infergate_registry::RegistryLocation {
            dir: Some(PathBuf::from(DEFAULT_DIR)),
            ..Default::default()
        }
    });
    let author = args
        .author
        .or_else(|| {
            env.iter()
                .find(|(k, _)| k == "USER")
                .map(|(_, v)| v.clone())
        })
        .unwrap_or_else(|| "unknown".to_string());
    let reg = Registry::connect(&location)?;
    // ONNX Runtime, found as `infergate serve` finds it, for the commands that run a model.
    let ort = || -> anyhow::Result<OrtRuntime> {
        let ort_env = env
            .iter()
            .find(|(k, _)| k == "ORT_DYLIB_PATH")
            .map(|(_, v)| PathBuf::from(v));
        let library = discover(config.runtime.ort_dylib_path.as_deref(), ort_env.as_deref())?;
        Ok(OrtRuntime::init(&library)?)
    };
    let out = execute(&reg, args.verb, &author, &ort)?;
    print!("{out}");
    Ok(())
}

fn execute(
    reg: &Registry,
    verb: Verb,
    author: &str,
    ort: &dyn Fn() -> anyhow::Result<OrtRuntime>,
) -> anyhow::Result<String> {
    let mut out = String::new();
    match verb {
        Verb::Import {
            name,
            file,
            model_config,
            baseline_texts,
        } => {
            let v = if file.is_dir() {
                let read = |path: &std::path::Path| {
                    std::fs::read_to_string(path)
                        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))
                };
                let path = model_config.unwrap_or_else(|| {
                    file.parent()
                        .unwrap_or(std::path::Path::new("."))
                        .join(crate::repository::CONFIG_FILE)
                });
                let text = read(&path)?;
                let baseline = match baseline_texts {
                    Some(path) => {
                        let texts: Vec<String> = read(&path)?.lines().map(str::to_owned).collect();
                        let runtime = ort()?;
                        Some(crate::text::text_baseline(
                            &file,
                            &text,
                            Some(&runtime),
                            &texts,
                        )?)
                    }
                    None => None,
                };
                reg.register(crate::text::registry_version(
                    &name, &file, &text, baseline, author,
                )?)?
            } else if model_config.is_some() || baseline_texts.is_some() {
                bail!(
                    "--model-config and --baseline-texts go with a text model's folder, not a file"
                );
            } else {
                reg.import(&name, &file, author)?
            };
            writeln!(
                out,
                "registered {name} version {} ({}, {})",
                v.version,
                v.platform,
                artifacts(&v)
            )?;
        }
        Verb::List => {
            for m in reg.models()? {
                let aliases: Vec<String> =
                    m.aliases.iter().map(|(a, v)| format!("{a}={v}")).collect();
                let versions: Vec<String> = m.versions.iter().map(u32::to_string).collect();
                writeln!(
                    out,
                    "{}  versions: {}  aliases: {}",
                    m.name,
                    versions.join(","),
                    if aliases.is_empty() {
                        "-".into()
                    } else {
                        aliases.join(",")
                    }
                )?;
            }
        }
        Verb::Show {
            model,
            version: Some(spec),
        } => {
            let v = reg.resolve(&model, &spec)?;
            out = serde_json::to_string_pretty(&v)? + "\n";
        }
        Verb::Show {
            model,
            version: None,
        } => {
            out = lineage_tree(&model, &reg.versions(&model)?, &reg.aliases(&model)?);
        }
        Verb::Alias {
            model,
            alias,
            remove: true,
            ..
        } => match reg.remove_alias(&model, &alias, author)? {
            Some(v) => writeln!(out, "{model}: removed alias {alias} (was version {v})")?,
            None => bail!("{model} has no alias '{alias}'"),
        },
        Verb::Alias {
            model,
            alias,
            version: Some(version),
            ..
        } => {
            let previous = reg.set_alias(&model, &alias, version, author)?;
            writeln!(
                out,
                "{model}: {alias} -> {version} (was {})",
                previous.map_or("unset".into(), |v| v.to_string())
            )?;
        }
        Verb::Alias { version: None, .. } => bail!("give a version, or --remove"),
        Verb::Promote {
            model,
            version,
            to,
            force,
        } => {
            let p = reg.promote(&model, version, &to, force, author)?;
            writeln!(
                out,
                "{model}: {to} -> {version} (was {})",
                p.previous.map_or("unset".into(), |v| v.to_string())
            )?;
            for reason in p.overridden {
                writeln!(out, "forced past gate: {reason}")?;
            }
        }
        Verb::Gate {
            model,
            metric,
            max_drop,
            min,
            max_size_bytes,
            max_latency_ms,
        } => {
            let mut rules = reg.gate(&model)?;
            let changing = metric.is_some()
                || max_drop.is_some()
                || min.is_some()
                || max_size_bytes.is_some()
                || max_latency_ms.is_some();
            if changing {
                rules = GateRules {
                    metric: metric.unwrap_or(rules.metric),
                    max_drop: max_drop.or(rules.max_drop),
                    min_value: min.or(rules.min_value),
                    max_size_bytes: max_size_bytes.or(rules.max_size_bytes),
                    max_latency_ms: max_latency_ms.or(rules.max_latency_ms),
                };
                reg.set_gate(&model, &rules, author)?;
            }
            out = serde_json::to_string_pretty(&rules)? + "\n";
        }
        Verb::Verify => {
            let report = reg.verify()?;
            for (what, error) in &report.failures {
                writeln!(out, "FAILED {what}: {error}")?;
            }
            writeln!(
                out,
                "verified {} artifacts, {} failed",
                report.checked,
                report.failures.len()
            )?;
            if !report.failures.is_empty() {
                print!("{out}");
                bail!("{} artifacts failed verification", report.failures.len());
            }
        }
        Verb::Gc {
            grace_secs,
            dry_run,
        } => {
            let r = reg.gc(grace_secs, dry_run)?;
            for d in &r.removed {
                writeln!(
                    out,
                    "{} sha256:{d}",
                    if dry_run { "would remove" } else { "removed" }
                )?;
            }
            writeln!(
                out,
                "{} artifacts, {} bytes{}; {} unreferenced kept (younger than {grace_secs}s)",
                r.removed.len(),
                r.bytes,
                if dry_run { " (dry run)" } else { " freed" },
                r.kept_young
            )?;
        }
        Verb::Audit { model } => {
            for e in reg.audit(model.as_deref())? {
                writeln!(
                    out,
                    "{} {} {} {} {}",
                    format_millis(e.at),
                    e.actor,
                    e.action,
                    e.model,
                    e.detail
                )?;
            }
        }
    }
    Ok(out)
}

fn artifacts(v: &VersionRecord) -> String {
    v.artifacts
        .iter()
        .map(|a| {
            format!(
                "{} sha256:{} {} bytes",
                a.kind.as_str(),
                &a.digest[..12],
                a.size
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Versions as a tree: children are versions quantized from (parent) or distilled from
/// (teacher) another version of the model.
fn lineage_tree(
    model: &str,
    versions: &[VersionRecord],
    aliases: &BTreeMap<String, u32>,
) -> String {
    let origin = |v: &VersionRecord| -> Option<u32> {
        v.lineage.parent.or_else(|| {
            v.lineage
                .distillation_teacher
                .as_deref()
                .and_then(|t| t.strip_prefix(&format!("{model}:")))
                .and_then(|n| n.parse().ok())
        })
    };
    let mut out = format!("{model}\n");
    fn walk(
        out: &mut String,
        all: &[VersionRecord],
        aliases: &BTreeMap<String, u32>,
        origin: &dyn Fn(&VersionRecord) -> Option<u32>,
        parent: Option<u32>,
        prefix: &str,
    ) {
        let kids: Vec<&VersionRecord> = all
            .iter()
            .filter(|v| {
                origin(v) == parent
                    && (parent.is_some() || all.iter().all(|p| Some(p.version) != origin(v)))
            })
            .collect();
        for (i, v) in kids.iter().enumerate() {
            let last = i + 1 == kids.len();
            let names: Vec<&str> = aliases
                .iter()
                .filter(|(_, n)| **n == v.version)
                .map(|(a, _)| a.as_str())
                .collect();
            let how = if let Some(q) = &v.lineage.quantization {
                format!(" quantized {q}")
            } else if let Some(t) = &v.lineage.distillation_teacher {
                format!(" distilled from {t}")
            } else {
                String::new()
            };
            let acc = v
                .metrics
                .get("accuracy")
                .map_or(String::new(), |a| format!(" accuracy={a:.4}"));
            let _ = writeln!(
                out,
                "{prefix}{} v{} {}{}{acc}{how}  {}  by {} at {}",
                if last { "└─" } else { "├─" },
                v.version,
                v.platform,
                if names.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", names.join(","))
                },
                artifacts(v),
                v.author,
                format_millis(v.created_at)
            );
            walk(
                out,
                all,
                aliases,
                origin,
                Some(v.version),
                &format!("{prefix}{}", if last { "   " } else { "│  " }),
            );
        }
    }
    walk(&mut out, versions, aliases, &origin, None, "");
    out
}
