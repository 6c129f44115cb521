//! The NATS JetStream adapter: a durable pull consumer whose unacknowledged messages are
//! bounded by `prefetch`, replies published with a JetStream acknowledgement where a stream
//! keeps the reply subject (else to its core subscribers, a client's inbox, which do not
//! acknowledge), and the request acknowledged (and the acknowledgement confirmed) only after
//! that.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures::StreamExt as _;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{Decision, Delivery, Handler, Reply, headers};
use crate::metrics::ConsumerName;

/// Consumes until shutdown, reconnecting (with backoff) whenever the broker goes away.
pub async fn run(handler: Arc<Handler>, shutdown: CancellationToken) {
    let name = handler.config.name.clone();
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let started = std::time::Instant::now();
        match session(&handler, &shutdown).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(consumer = %name, error = format!("{e:#}"), "broker consumer interrupted; reconnecting");
            }
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    tracing::info!(consumer = %name, "broker consumer stopped");
}

/// One connection's life: set up the streams and the consumer, take messages while permits
/// allow, and wait for the ones taken before returning (on shutdown: Ok).
async fn session(handler: &Arc<Handler>, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let config = &handler.config;
    let client = async_nats::ConnectOptions::new()
        .name(format!("infergate consumer {}", config.name))
        .connection_timeout(Duration::from_secs(5))
        .connect(config.url.as_str())
        .await
        .with_context(|| format!("cannot connect to {}", config.url))?;
    let js = jetstream::new(client.clone());
    let requests = js
        .get_or_create_stream(stream::Config {
            name: config.stream.clone(),
            subjects: vec![config.subject.clone()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .with_context(|| format!("cannot open stream {}", config.stream))?;
    let dead = config.dead_letter();
    if js.stream_by_subject(dead.as_str()).await.is_err() {
        js.get_or_create_stream(stream::Config {
            name: format!("{}_DEAD", config.stream),
            subjects: vec![dead.clone()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .with_context(|| format!("cannot create a stream for dead letters ({dead})"))?;
    }
    let consumer: consumer::PullConsumer = requests
        .get_or_create_consumer(
            &config.name,
            consumer::pull::Config {
                durable_name: Some(config.name.clone()),
                filter_subject: config.subject.clone(),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_millis(config.ack_wait_ms),
                // The handler dead-letters; the broker never gives up on a message by itself.
                max_deliver: -1,
                max_ack_pending: config.prefetch as i64,
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("cannot open consumer {}", config.name))?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(config.prefetch)
        .heartbeat(Duration::from_secs(2))
        .expires(Duration::from_secs(10))
        .messages()
        .await
        .context("cannot pull messages")?;
    tracing::info!(consumer = %config.name, url = %config.url, stream = %config.stream, subject = %config.subject, model = %config.model, "broker consumer started");
    let lag = tokio::spawn(watch_lag(Arc::clone(handler), consumer));

    let broker = Arc::new(Broker::new(js.clone()));
    let permits = Arc::new(Semaphore::new(config.prefetch));
    let mut tasks = tokio::task::JoinSet::new();
    let mut errors = 0;
    let ended = loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            permit = Arc::clone(&permits).acquire_owned() => permit.expect("never closed"),
        };
        let next = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            next = messages.next() => next,
        };
        while tasks.try_join_next().is_some() {}
        match next {
            None => break Err(anyhow::anyhow!("the broker ended the message stream")),
            Some(Err(e)) => {
                errors += 1;
                if errors >= 3 {
                    break Err(anyhow::Error::new(e).context("pulling messages failed"));
                }
                tracing::warn!(consumer = %config.name, error = %e, "pulling messages");
            }
            Some(Ok(message)) => {
                errors = 0;
                let (handler, broker) = (Arc::clone(handler), Arc::clone(&broker));
                tasks.spawn(async move {
                    process(&handler, &broker, message).await;
                    drop(permit);
                });
            }
        }
    };
    lag.abort();
    // What was taken is finished: answered and acknowledged, or left for redelivery.
    while tasks.join_next().await.is_some() {}
    let _ = client.flush().await;
    ended
}

/// Keeps `infergate_consumer_lag` at the messages the broker has not delivered yet.
async fn watch_lag(handler: Arc<Handler>, mut consumer: consumer::PullConsumer) {
    let gauge = handler
        .gateway
        .metrics
        .consumer_lag
        .get_or_create(&ConsumerName {
            consumer: handler.config.name.clone(),
        })
        .clone();
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        every.tick().await;
        if let Ok(info) = consumer.info().await {
            gauge.set(info.num_pending as i64);
        }
    }
}

/// Handles one message and carries out the decision; the message is acknowledged only after
/// what it asked for is published and confirmed.
async fn process(handler: &Handler, js: &Broker, message: jetstream::Message) {
    let name = &handler.config.name;
    let (attempt, broker_id) = match message.info() {
        Ok(info) => (
            info.delivered.max(1) as u64,
            format!("{}:{}", info.stream, info.stream_sequence),
        ),
        Err(_) => (1, String::new()),
    };
    let delivery = Delivery {
        headers: message
            .headers
            .iter()
            .flat_map(HeaderMap::iter)
            .filter_map(|(k, v)| Some((k.to_string(), v.last()?.to_string())))
            .collect(),
        body: message.payload.clone(),
        attempt,
        broker_id,
    };
    let outcome = match handler.handle(&delivery).await {
        Decision::Answer(reply) => match publish_reply(js, &reply).await {
            Ok(()) => {
                handler.count(if reply.status == 200 {
                    "answered"
                } else {
                    "failed"
                });
                Ok(AckKind::Ack)
            }
            Err(e) => Err(e.context("cannot publish the reply")),
        },
        Decision::Retry { reason, delay } => {
            tracing::debug!(consumer = %name, attempt, reason = %reason, "delivering again later");
            handler.count("retried");
            Ok(AckKind::Nak(Some(delay)))
        }
        Decision::DeadLetter { reason, reply } => {
            let dead = async {
                publish_dead_letter(js, handler, &delivery, &reason).await?;
                if let Some(reply) = &reply {
                    publish_reply(js, reply).await?;
                }
                anyhow::Ok(())
            };
            match dead.await {
                Ok(()) => {
                    tracing::warn!(consumer = %name, attempt, reason = %reason, "dead-lettered a message");
                    handler.count("dead_lettered");
                    Ok(AckKind::Ack)
                }
                Err(e) => Err(e.context("cannot dead-letter the message")),
            }
        }
    };
    let kind = match outcome {
        Ok(kind) => kind,
        Err(e) => {
            // Not acknowledged: the broker delivers it again, and the reply window answers it.
            tracing::warn!(consumer = %name, error = format!("{e:#}"), "message left for redelivery");
            AckKind::Nak(Some(Duration::from_millis(handler.config.retry_delay_ms)))
        }
    };
    let acked = match kind {
        AckKind::Ack => message.double_ack().await,
        other => message.ack_with(other).await,
    };
    if let Err(e) = acked {
        tracing::warn!(consumer = %name, error = %e, "acknowledgement not confirmed; the message may come again");
    }
}

/// Publishes a reply and waits for the stream that keeps its subject to confirm it (with the
/// request id as the stream's deduplication id). Where no stream keeps the subject the core
/// publication has reached the subscribers there are, which is all there is to wait for.
async fn publish_reply(js: &Broker, reply: &Reply) -> anyhow::Result<()> {
    let mut map = HeaderMap::new();
    map.insert(headers::REQUEST_ID, reply.id.as_str());
    map.insert("Nats-Msg-Id", reply.id.as_str());
    map.insert(headers::STATUS, reply.status.to_string());
    map.insert(headers::CONTENT_TYPE, reply.content_type);
    if let Some(n) = reply.header_length {
        map.insert(headers::HEADER_LENGTH, n.to_string());
    }
    if let Some(trace) = &reply.trace_id {
        map.insert(headers::TRACE_ID, trace.as_str());
    }
    publish(js, reply.subject.clone(), map, reply.body.clone()).await
}

/// The original message on the dead-letter subject, with why and after how many deliveries.
async fn publish_dead_letter(
    js: &Broker,
    handler: &Handler,
    delivery: &Delivery,
    reason: &str,
) -> anyhow::Result<()> {
    let mut map = HeaderMap::new();
    for (k, v) in &delivery.headers {
        if !k.eq_ignore_ascii_case("Nats-Msg-Id") {
            map.insert(k.as_str(), v.as_str());
        }
    }
    map.insert("Nats-Msg-Id", delivery.broker_id.as_str());
    // Header values are one line.
    map.insert(headers::REASON, reason.replace(['\r', '\n'], " "));
    map.insert(headers::ATTEMPTS, delivery.attempt.to_string());
    map.insert(headers::CONSUMER, handler.config.name.as_str());
    publish(js, handler.config.dead_letter(), map, delivery.body.clone()).await
}

async fn publish(
    broker: &Broker,
    subject: String,
    map: HeaderMap,
    body: bytes::Bytes,
) -> anyhow::Result<()> {
    if !broker.kept(&subject).await? {
        // Core subscribers (a client's inbox) do not acknowledge: the publication is done
        // when the broker has it (the flush's round trip).
        let client = broker.js.client();
        client
            .publish_with_headers(subject.clone(), map, body)
            .await
            .with_context(|| format!("cannot publish to {subject}"))?;
        return client
            .flush()
            .await
            .with_context(|| format!("cannot publish to {subject}"));
    }
    let confirmed = broker
        .js
        .publish_with_headers(subject.clone(), map, body)
        .await
        .with_context(|| format!("cannot publish to {subject}"))?
        .await;
    match confirmed {
        Ok(_) => Ok(()),
        // The stream went away since it was looked up: published to whoever listens.
        Err(e) if e.kind() == jetstream::context::PublishErrorKind::StreamNotFound => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("{subject} did not confirm"))),
    }
}

/// The JetStream context and which subjects a stream keeps (looked up again every few
/// seconds, so a stream made later is found).
struct Broker {
    js: jetstream::Context,
    kept: moka::future::Cache<String, bool>,
}

impl Broker {
    fn new(js: jetstream::Context) -> Self {
        Self {
            js,
            kept: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(5))
                .build(),
        }
    }

    /// Whether a stream keeps `subject` (then a publication is confirmed by it).
    async fn kept(&self, subject: &str) -> anyhow::Result<bool> {
        if let Some(kept) = self.kept.get(subject).await {
            return Ok(kept);
        }
        let kept = match self.js.stream_by_subject(subject).await {
            Ok(_) => true,
            Err(e) if e.kind() == jetstream::context::GetStreamByNameErrorKind::NotFound => false,
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("cannot tell whether a stream keeps {subject}")));
            }
        };
        self.kept.insert(subject.to_string(), kept).await;
        Ok(kept)
    }
}
