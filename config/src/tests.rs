use std::io::Write;

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn empty_config_gives_documented_defaults() {
    let config = Config::load(None, env(&[]), &Overrides::new()).unwrap();
    assert_eq!(config.server.http_addr.port(), 8000);
    assert_eq!(config.server.grpc_addr.port(), 8001);
    assert_eq!(config.server.admin_addr.port(), 8002);
    assert_eq!(config.runtime.instances, 1);
    assert!(!config.server.grpc_repository_control);
}

#[test]
fn file_then_env_then_cli() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        file,
        "[server]\nhttp_addr = \"127.0.0.1:9000\"\ngrpc_addr = \"127.0.0.1:9001\"\nmax_body_bytes = 100\n[runtime]\ninstances = 3"
    )
    .unwrap();
    let vars = env(&[
        ("INFERGATE_SERVER__GRPC_ADDR", "127.0.0.1:7001"),
        ("INFERGATE_RUNTIME__INSTANCES", "4"),
        ("UNRELATED", "x"),
    ]);
    let mut cli = Overrides::new();
    cli.set("runtime.instances", Some(5));
    let config = Config::load(Some(file.path()), vars, &cli).unwrap();
    assert_eq!(config.server.http_addr.to_string(), "127.0.0.1:9000");
    assert_eq!(config.server.grpc_addr.to_string(), "127.0.0.1:7001");
    assert_eq!(config.server.max_body_bytes, 100);
    assert_eq!(config.runtime.instances, 5);
}

#[test]
fn unknown_keys_are_rejected_with_their_name() {
    let err = Config::load(
        None,
        env(&[("INFERGATE_SERVER__HTTP_PORT", "1")]),
        &Overrides::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("http_port"), "{err}");
}

#[test]
fn all_semantic_errors_are_reported_together() {
    let vars = env(&[
        ("INFERGATE_RUNTIME__INSTANCES", "0"),
        ("INFERGATE_RUNTIME__QUEUE_CAPACITY", "0"),
        ("INFERGATE_LOG__FORMAT", "xml"),
        ("INFERGATE_SERVER__HTTP_ADDR", "127.0.0.1:5000"),
        ("INFERGATE_SERVER__GRPC_ADDR", "127.0.0.1:5000"),
        ("INFERGATE_SERVER__BODY_TIMEOUT_MS", "0"),
        ("INFERGATE_SERVER__MAX_CONCURRENT_STREAMS", "0"),
    ]);
    let err = Config::load(None, vars, &Overrides::new())
        .unwrap_err()
        .to_string();
    for fragment in [
        "runtime.instances",
        "runtime.queue_capacity",
        "log.format",
        "server.http_addr and server.grpc_addr are both 127.0.0.1:5000",
        "server.body_timeout_ms must be greater than 0",
        "server.max_concurrent_streams must be greater than 0",
    ] {
        assert!(err.contains(fragment), "missing {fragment:?} in {err}");
    }
}

#[test]
fn config_text_parses_like_a_file() {
    let config = Config::parse("[server]\nbody_timeout_ms = 5\n", "text").unwrap();
    assert_eq!(config.server.body_timeout_ms, 5);
    let err = Config::parse("[server]\nbody_timeout = 5\n", "text")
        .unwrap_err()
        .to_string();
    assert!(err.contains("body_timeout"), "{err}");
    let err = ModelConfig::parse("instances = 0\n", "m/config.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("m/config.toml: instances must be at least 1"),
        "{err}"
    );
}

#[test]
fn version_policy_selects_versions() {
    let available = [3, 1, 2, 10];
    assert_eq!(VersionPolicy::Latest(1).select(&available), vec![10]);
    assert_eq!(VersionPolicy::Latest(2).select(&available), vec![3, 10]);
    assert_eq!(VersionPolicy::All.select(&available), vec![1, 2, 3, 10]);
    assert_eq!(
        VersionPolicy::Specific(vec![2, 7]).select(&available),
        vec![2]
    );
}

#[test]
fn model_config_parses_every_policy_form() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    assert_eq!(ModelConfig::load(&path).unwrap(), ModelConfig::default());
    for (text, policy) in [
        ("version_policy = \"all\"", VersionPolicy::All),
        ("version_policy = { latest = 2 }", VersionPolicy::Latest(2)),
        (
            "version_policy = { specific = [1, 3] }",
            VersionPolicy::Specific(vec![1, 3]),
        ),
    ] {
        std::fs::write(&path, format!("max_batch_size = 8\n{text}\n")).unwrap();
        let config = ModelConfig::load(&path).unwrap();
        assert_eq!(config.version_policy, policy);
        assert_eq!(config.max_batch_size, 8);
    }
    std::fs::write(&path, "max_batch = 8\n").unwrap();
    let err = ModelConfig::load(&path).unwrap_err().to_string();
    assert!(err.contains("max_batch"), "{err}");
}

#[test]
fn model_config_batching_cache_and_limits_are_validated_together() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        "max_batch_size = 8\nmax_concurrent_requests = 4\n[dynamic_batching]\nmax_queue_delay_us = 100\npreferred_batch_sizes = [4, 8]\npriority_levels = 2\ndefault_priority_level = 2\n[response_cache]\nttl_ms = 1000\n",
    )
    .unwrap();
    let config = ModelConfig::load(&path).unwrap();
    let batching = config.batching().unwrap();
    assert_eq!(
        (batching.max_queue_delay_us, batching.priority_levels),
        (100, 2)
    );
    assert_eq!(config.response_cache.unwrap().ttl_ms, Some(1000));
    std::fs::write(
        &path,
        "max_batch_size = 8\nmax_concurrent_requests = 0\n[dynamic_batching]\npreferred_batch_sizes = [16]\npriority_levels = 2\ndefault_priority_level = 3\nmax_queue_size = 0\ndispatch_ahead_rows = 9\n[response_cache]\nmax_bytes = 0\n",
    )
    .unwrap();
    let err = ModelConfig::load(&path).unwrap_err().to_string();
    for fragment in [
        "max_concurrent_requests must be at least 1",
        "preferred batch size 16 must be between 1 and max_batch_size (8)",
        "default_priority_level must be between 1 and priority_levels (2)",
        "max_queue_size must be at least 1",
        "dispatch_ahead_rows (9) must be at most max_batch_size (8)",
        "response_cache.max_bytes must be greater than 0",
    ] {
        assert!(err.contains(fragment), "missing {fragment:?} in {err}");
    }
    // Batching needs a batch dimension: with max_batch_size 0 it is off, not an error.
    std::fs::write(&path, "max_batch_size = 0\n[dynamic_batching]\n").unwrap();
    assert!(ModelConfig::load(&path).unwrap().batching().is_none());
}

#[test]
fn limits_are_validated() {
    let vars = env(&[
        ("INFERGATE_LIMITS__RATE_LIMIT_PER_SECOND", "5"),
        ("INFERGATE_LIMITS__RATE_LIMIT_BURST", "0"),
    ]);
    let err = Config::load(None, vars, &Overrides::new())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("limits.rate_limit_burst must be at least 1"),
        "{err}"
    );
}

/// The committed example is what `infergate config example` prints today.
#[test]
fn committed_example_is_current() {
    let committed = include_str!("../infergate.example.toml");
    assert!(
        committed == crate::example(),
        "config/infergate.example.toml is stale: run `cargo run -p infergate-server --bin infergate -- config example > config/infergate.example.toml`"
    );
}

/// Its active lines are exactly the defaults, and uncommenting every setting gives a file that
/// reads back as the sample configuration (so every commented line is a valid value).
#[test]
fn example_is_the_defaults_and_its_comments_are_valid_settings() {
    let text = crate::example();
    assert_eq!(Config::parse(&text, "example").unwrap(), Config::default());
    let setting = |line: &str| {
        line.strip_prefix("# ").is_some_and(|rest| {
            rest.starts_with('[')
                || rest.split_once(" = ").is_some_and(|(key, _)| {
                    key.bytes()
                        .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit())
                })
        })
    };
    let uncommented: String = text
        .lines()
        .map(|line| if setting(line) { &line[2..] } else { line })
        .fold(String::new(), |mut acc, line| {
            acc.push_str(line);
            acc.push('\n');
            acc
        });
    let all: Config = toml::from_str(&uncommented).unwrap();
    assert_eq!(all, crate::example::sample());
    assert!(all.security.tls.is_some() && !all.routes.is_empty());
}

#[test]
fn security_rules_are_reported_together() {
    let text = r#"
[security]
require_infer_token = true
[[security.tokens]]
name = "a"
sha256 = "not-hex"
scopes = []
[[security.tokens]]
name = "a"
sha256 = "e2186dbdb1bb4193608605e84f33208765b5693b55edd4f730a719a100eeea6f"
scopes = ["admin"]
[security.tls]
cert = "/nonexistent/server.crt"
key = "/nonexistent/server.key"
"#;
    let Err(ConfigError::Invalid(errors)) = Config::parse(text, "t") else {
        panic!("invalid security settings accepted")
    };
    let joined = errors.join("\n");
    for fragment in [
        "security.tokens[0] (a): sha256 must be 64 hex digits",
        "security.tokens[0] (a): needs at least one scope",
        "security.tokens[1] (a): another token has this name",
        "security.tls.cert: /nonexistent/server.crt is not a readable file",
        "security.tls.key: /nonexistent/server.key is not a readable file",
    ] {
        assert!(
            joined.contains(fragment),
            "{fragment:?} missing from:\n{joined}"
        );
    }
    assert_eq!(errors.len(), 5, "{joined}");
    let Err(ConfigError::Parse { message, .. }) = Config::parse(
        "[[security.tokens]]\nname = \"x\"\nsha256 = \"\"\nscopes = [\"root\"]\n",
        "t",
    ) else {
        panic!("an unknown scope accepted")
    };
    assert!(message.contains("root"), "{message}");
}

#[test]
fn redaction_hides_token_digests() {
    let config = Config {
        security: crate::example::sample().security,
        ..Config::default()
    };
    let shown = format!("{:?}", config.redacted());
    assert!(!shown.contains("e2186dbdb1bb4193"), "{shown}");
    assert!(shown.contains("<redacted>"));
}

#[test]
fn passwords_never_reach_messages() {
    assert_eq!(
        redact_url("postgres://infergate:s3cret@db:5432/registry"),
        "postgres://infergate:***@db:5432/registry"
    );
    assert_eq!(
        redact_url("postgres://infergate@db/registry"),
        "postgres://infergate@db/registry"
    );
    assert_eq!(
        redact_url("host=db user=x password=s3cret dbname=r"),
        "host=db user=x password=*** dbname=r"
    );
    let mut config = Config::default();
    config.models.registry_database_url = Some("postgres://u:s3cret@db/r".into());
    config
        .models
        .registry_store_options
        .insert("secret_access_key".into(), "s3cret".into());
    config
        .models
        .registry_store_options
        .insert("region".into(), "eu-west-1".into());
    config.models.registry_store_url = Some("s3://key:s3cret@bucket/models".into());
    config.telemetry.otlp_endpoint = Some("https://user:s3cret@collector:4318".into());
    config.telemetry.otlp_traces_endpoint = Some("https://c/v1/traces?password=s3cret".into());
    config
        .telemetry
        .otlp_headers
        .insert("authorization".into(), "Bearer s3cret".into());
    let shown = format!("{:?}", config.redacted());
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("eu-west-1"), "{shown}");
    assert!(shown.contains("https://user:***@collector:4318"), "{shown}");
}

#[test]
fn a_remote_registry_is_checked_as_a_whole() {
    let errors = |text: &str| match Config::parse(text, "t") {
        Err(ConfigError::Invalid(errors)) => errors.join("\n"),
        other => panic!("accepted: {other:?}"),
    };
    let e = errors(
        "[models]\nregistry_database_url = \"mysql://x\"\nregistry_store_url = \"gs://b\"\n",
    );
    assert!(e.contains("must be a PostgreSQL URL"), "{e}");
    assert!(e.contains("must be s3://bucket/prefix"), "{e}");
    let e = errors("[models]\nregistry_database_url = \"postgres://db/r\"\n");
    assert!(
        e.contains("needs models.registry for the other part"),
        "{e}"
    );
    let both = Config::parse(
        "[models]\nregistry_database_url = \"postgres://db/r\"\nregistry_store_url = \"s3://b/p\"\n",
        "t",
    )
    .unwrap();
    assert_eq!(both.models.registry_store_url.as_deref(), Some("s3://b/p"));
}

#[test]
fn server_batching_and_cache_defaults_fill_what_a_model_leaves_out() {
    let defaults = Config::parse(
        "[batching]\nmax_queue_delay_us = 250\nmax_queue_size = 7\n[cache]\nmax_bytes = 1000\nttl_ms = 60000\n",
        "server",
    )
    .unwrap()
    .model_defaults();
    let model = ModelConfig::parse_with(
        "max_batch_size = 8\n[dynamic_batching]\nmax_queue_delay_us = 100\n[response_cache]\n",
        "m",
        &defaults,
    )
    .unwrap();
    let batching = model.batching().unwrap();
    assert_eq!(
        batching.max_queue_delay_us, 100,
        "the model's own value wins"
    );
    assert_eq!(
        batching.max_queue_size, 7,
        "the server default fills the gap"
    );
    assert_eq!(
        batching.priority_levels, 1,
        "the built-in default otherwise"
    );
    let cache = model.response_cache.unwrap();
    assert_eq!((cache.max_bytes, cache.ttl_ms), (1000, Some(60000)));
    // Defaults do not turn anything on.
    let plain = ModelConfig::parse_with("max_batch_size = 8\n", "m", &defaults).unwrap();
    assert!(plain.dynamic_batching.is_none() && plain.response_cache.is_none());
    // Invalid defaults are reported with the rest of the server's configuration.
    let Err(ConfigError::Invalid(errors)) = Config::parse(
        "[batching]\nmax_queue_size = 0\n[cache]\nmax_bytes = 0\n[server]\nmax_body_bytes = 0\n",
        "server",
    ) else {
        panic!("invalid defaults accepted")
    };
    assert_eq!(errors.len(), 3, "{errors:?}");
}

#[test]
fn connection_strings_lose_their_passwords_and_nothing_else() {
    let cases = [
        (
            "postgres://infergate:s3cret@db:5432/registry",
            "postgres://infergate:***@db:5432/registry",
        ),
        (
            "postgres://infergate@db/registry",
            "postgres://infergate@db/registry",
        ),
        // An '@' after the authority is not the end of the user info.
        (
            "postgres://u:pw@db/reg?sslrootcert=/etc/ca@2.pem",
            "postgres://u:***@db/reg?sslrootcert=/etc/ca@2.pem",
        ),
        (
            "postgres://db/reg?sslmode=require&password=s3cret&application_name=x",
            "postgres://db/reg?sslmode=require&password=***&application_name=x",
        ),
        (
            "postgres://db/reg?mypassword=kept&password=gone",
            "postgres://db/reg?mypassword=kept&password=***",
        ),
        (
            "host=db password=s3cret user=me",
            "host=db password=*** user=me",
        ),
        // Quoted with a space and an escaped quote: all of it goes.
        (
            r"host=db password = 'a b\'c' user=me",
            "host=db password = *** user=me",
        ),
        ("password='unterminated", "password=***"),
        ("host=db user=me", "host=db user=me"),
    ];
    for (url, redacted) in cases {
        assert_eq!(redact_url(url), redacted, "{url}");
    }
}

#[test]
fn the_standard_otel_variables_fill_what_the_config_leaves_unset() {
    let apply = |config: TelemetryConfig, vars: &[(&str, &str)]| {
        let mut config = config;
        config.apply_otel_env(&env(vars));
        config
    };
    // Signal-specific before generic; headers percent-decoded, the traces ones winning.
    let c = apply(
        TelemetryConfig::default(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "Authorization=Basic%20dXNlcjpwdw%3D%3D, x-tenant = a",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-tenant=b,broken"),
            ("OTEL_SERVICE_NAME", "fraud-scorer"),
        ],
    );
    assert_eq!(c.otlp_protocol, "http/protobuf");
    assert_eq!(
        c.traces_url().as_deref(),
        Some("http://collector:4318/v1/traces")
    );
    assert_eq!(
        c.otlp_headers.into_iter().collect::<Vec<_>>(),
        [
            (
                "Authorization".to_string(),
                "Basic dXNlcjpwdw==".to_string()
            ),
            ("x-tenant".to_string(), "b".to_string()),
        ]
    );
    assert_eq!(c.service_name, "fraud-scorer");
    let c = apply(
        TelemetryConfig::default(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://vendor/api/spans",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ],
    );
    assert_eq!(c.traces_url().as_deref(), Some("https://vendor/api/spans"));
    // gRPC takes the endpoint as it is.
    let c = apply(
        TelemetryConfig::default(),
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")],
    );
    assert_eq!(c.traces_url().as_deref(), Some("http://collector:4317"));
    assert_eq!(TelemetryConfig::default().traces_url(), None);

    // The sampler and its argument.
    let ratio = |vars: &[(&str, &str)]| apply(TelemetryConfig::default(), vars).sampling_ratio;
    assert_eq!(ratio(&[("OTEL_TRACES_SAMPLER", "always_off")]), 0.0);
    assert_eq!(
        ratio(&[("OTEL_TRACES_SAMPLER", "parentbased_always_on")]),
        1.0
    );
    let arg = ("OTEL_TRACES_SAMPLER_ARG", "0.25");
    assert_eq!(ratio(&[("OTEL_TRACES_SAMPLER", "traceidratio"), arg]), 0.25);
    assert_eq!(
        ratio(&[("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")]),
        1.0
    );
    assert_eq!(ratio(&[arg]), 0.25);
    assert_eq!(ratio(&[("OTEL_TRACES_SAMPLER", "jaeger_remote"), arg]), 1.0);

    // What the config file set stays; OTEL_SDK_DISABLED turns export off regardless.
    let set = TelemetryConfig {
        otlp_endpoint: Some("http://mine:4317".into()),
        sampling_ratio: 0.5,
        ..TelemetryConfig::default()
    };
    let c = apply(
        set.clone(),
        &[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://theirs:4317"),
            ("OTEL_TRACES_SAMPLER", "always_on"),
        ],
    );
    assert_eq!(c, set);
    let c = apply(set, &[("OTEL_SDK_DISABLED", "TRUE")]);
    assert_eq!(c.traces_url(), None);
}

/// A consumer table reads with its defaults, and every mistake in one is reported.
#[test]
fn consumers_read_with_defaults_and_are_checked() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        file,
        "[[consumers]]\nname = \"a\"\nurl = \"nats://127.0.0.1:4222\"\nstream = \"INFER\"\nsubject = \"infer.a\"\nmodel = \"m\""
    )
    .unwrap();
    let config = Config::load(Some(file.path()), env(&[]), &Overrides::new()).unwrap();
    let c = &config.consumers[0];
    assert_eq!((c.prefetch, c.max_deliver, c.ack_wait_ms), (64, 5, 30_000));
    assert_eq!(c.dead_letter(), "infergate.dead.a");

    let mut bad = config.clone();
    bad.consumers.push(ConsumerConfig {
        url: "amqp://rabbit:5672".into(),
        stream: "IN.FER".into(),
        prefetch: 0,
        ..c.clone()
    });
    let ConfigError::Invalid(errors) = bad.validate().unwrap_err() else {
        panic!("not a validation error")
    };
    let text = errors.join("\n");
    for expected in [
        "consumers[1] (a): another consumer has this name",
        "url must be nats://host:port",
        "stream must be letters, digits",
        "prefetch, max_deliver and ack_wait_ms must be at least 1",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
}
