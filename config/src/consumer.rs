//! `[[consumers]]`: asynchronous inference requests taken from a message broker.

use serde::{Deserialize, Serialize};

/// A consumer of inference requests on a message broker. Each message is a V2 inference
/// request (the HTTP JSON body, the binary-extension body, or a protobuf `ModelInferRequest`)
/// for `model`; its result, or a precise error, is published to the subject in its `Reply-To`
/// header, and the message is acknowledged only once that publication is confirmed. A message
/// delivered again (the server died before acknowledging it) is answered from a window of
/// recent replies by request id, without being computed twice.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// The consumer's name: the broker's durable consumer (every replica with this name shares
    /// the work) and the `consumer` label of its metrics.
    pub name: String,
    /// The broker: `nats://host:port` (NATS with JetStream; `tls://` for NATS over TLS).
    pub url: String,
    /// The JetStream stream holding the requests; created when missing (file storage,
    /// work-queue retention: a message leaves the stream once acknowledged).
    pub stream: String,
    /// The subject requests are published on (the consumer's filter).
    pub subject: String,
    /// The model, or the route, every request goes to.
    pub model: String,
    /// The version (number or registry alias); default: the model's newest ready version.
    #[serde(default)]
    pub version: Option<String>,
    /// Messages taken from the broker and not yet acknowledged, at most (JetStream's
    /// `max_ack_pending`): a flood waits in the broker, not in the server's memory.
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
    /// Deliveries a message gets before it is dead-lettered with the last failure's reason
    /// (failures that may pass: overload, timeouts, internal errors; a request that is wrong
    /// is answered with its error at once).
    #[serde(default = "default_max_deliver")]
    pub max_deliver: u32,
    /// Wait before a failed message is delivered again, in milliseconds.
    #[serde(default = "default_retry_delay_ms")]
    pub retry_delay_ms: u64,
    /// How long the broker waits for an acknowledgement before delivering a message again,
    /// in milliseconds.
    #[serde(default = "default_ack_wait_ms")]
    pub ack_wait_ms: u64,
    /// Where dead letters go (the original message, with `Infergate-Reason` and
    /// `Infergate-Attempts` headers); a stream `<stream>_DEAD` is created for it when no
    /// stream holds the subject. Default: `infergate.dead.<name>`.
    #[serde(default)]
    pub dead_letter_subject: Option<String>,
    /// Where the results of messages without a `Reply-To` header go; none: such messages are
    /// dead-lettered.
    #[serde(default)]
    pub reply_subject: Option<String>,
    /// Replies remembered by request id for answering a redelivered request again.
    #[serde(default = "default_dedup_entries")]
    pub dedup_entries: u64,
    /// How long a reply is remembered, in milliseconds.
    #[serde(default = "default_dedup_ttl_ms")]
    pub dedup_ttl_ms: u64,
}

fn default_prefetch() -> usize {
    64
}
fn default_max_deliver() -> u32 {
    5
}
fn default_retry_delay_ms() -> u64 {
    1_000
}
fn default_ack_wait_ms() -> u64 {
    30_000
}
fn default_dedup_entries() -> u64 {
    100_000
}
fn default_dedup_ttl_ms() -> u64 {
    600_000
}

impl ConsumerConfig {
    /// The dead-letter subject, explicit or the default.
    pub fn dead_letter(&self) -> String {
        self.dead_letter_subject
            .clone()
            .unwrap_or_else(|| format!("infergate.dead.{}", self.name))
    }

    /// A consumer of `subject` on `stream` at `url` for `model`, every other setting default.
    pub fn new(name: &str, url: &str, stream: &str, subject: &str, model: &str) -> Self {
        Self {
            name: name.into(),
            url: url.into(),
            stream: stream.into(),
            subject: subject.into(),
            model: model.into(),
            version: None,
            prefetch: default_prefetch(),
            max_deliver: default_max_deliver(),
            retry_delay_ms: default_retry_delay_ms(),
            ack_wait_ms: default_ack_wait_ms(),
            dead_letter_subject: None,
            reply_subject: None,
            dedup_entries: default_dedup_entries(),
            dedup_ttl_ms: default_dedup_ttl_ms(),
        }
    }
}

/// Problems with the consumers (empty when valid).
pub(crate) fn validate(consumers: &[ConsumerConfig], errors: &mut Vec<String>) {
    let mut names = std::collections::HashSet::new();
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    for (i, c) in consumers.iter().enumerate() {
        let at = format!("consumers[{i}] ({})", c.name);
        if !token(&c.name) {
            errors.push(format!(
                "{at}: name must be letters, digits, '-' or '_' (it names the broker's durable consumer)"
            ));
        }
        if !names.insert(&c.name) {
            errors.push(format!("{at}: another consumer has this name"));
        }
        if !(c.url.starts_with("nats://") || c.url.starts_with("tls://")) {
            errors.push(format!(
                "{at}: url must be nats://host:port or tls://host:port (NATS JetStream is the broker this build speaks), not {:?}",
                c.url
            ));
        }
        if !token(&c.stream) {
            errors.push(format!(
                "{at}: stream must be letters, digits, '-' or '_' (a JetStream stream name)"
            ));
        }
        for (key, subject) in [
            ("subject", Some(c.subject.as_str())),
            ("dead_letter_subject", c.dead_letter_subject.as_deref()),
            ("reply_subject", c.reply_subject.as_deref()),
        ] {
            if let Some(s) = subject
                && (s.is_empty() || s.contains(char::is_whitespace))
            {
                errors.push(format!("{at}: {key} must be a subject without spaces"));
            }
        }
        if c.subject == c.dead_letter() {
            errors.push(format!(
                "{at}: dead_letter_subject must differ from subject"
            ));
        }
        if c.model.is_empty() {
            errors.push(format!("{at}: model must name a model or a route"));
        }
        if c.prefetch == 0 || c.max_deliver == 0 || c.ack_wait_ms == 0 {
            errors.push(format!(
                "{at}: prefetch, max_deliver and ack_wait_ms must be at least 1"
            ));
        }
    }
}
