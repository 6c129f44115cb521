//! Asynchronous inference over NATS JetStream as users run it: a real `nats-server` (Debian's
//! package, installed by `make services`) on loopback, `infergate serve` as a separate process
//! with a `[[consumers]]` entry, and async-nats as the producer reading replies from a stream.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt as _;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;

#[path = "integration/otlp.rs"]
mod otlp;

use otlp::{Collector, hex};

/// The producer's trace and span, as its `traceparent` header carries them.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn nats_binary() -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file());
    found.expect("nats-server is missing: run `make services` (Debian package nats-server)")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A JetStream server on loopback keeping its streams in `store`.
struct Nats {
    child: Child,
    port: u16,
    store: PathBuf,
}

impl Nats {
    fn start(store: &Path, port: u16) -> Self {
        let child = Command::new(nats_binary())
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            port,
            store: store.to_path_buf(),
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops it with `signal` and starts it again on the same port and store.
    fn restart(&mut self, signal: &str) {
        signal_child(&mut self.child, signal);
        *self = Self::start(&self.store.clone(), self.port);
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal_child(child: &mut Child, signal: &str) {
    Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
}

/// `infergate serve` on the demo repository with `consumer` as its `[[consumers]]` table.
struct Server {
    child: Child,
    admin: String,
}

impl Server {
    fn start(dir: &Path, consumer: &str, extra: &str) -> Self {
        let config = dir.join("infergate.toml");
        let repository = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/repository");
        std::fs::write(
            &config,
            format!(
                "[server]\nhttp_addr = \"127.0.0.1:0\"\ngrpc_addr = \"127.0.0.1:0\"\nadmin_addr = \"127.0.0.1:0\"\n\
                 [models]\nrepository = \"{repository}\"\n{extra}\n[[consumers]]\n{consumer}\n"
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_infergate"))
            .args(["serve", "--insecure-admin", "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines
            .by_ref()
            .map_while(Result::ok)
            .find(|l| l.starts_with("infergate serving:"))
            .expect("the server printed its serving line");
        std::thread::spawn(move || lines.for_each(drop));
        let admin = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("admin="))
            .unwrap()
            .to_string();
        Self { child, admin }
    }

    async fn metric(&self, result: &str) -> u64 {
        let text = reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let needle = format!("result=\"{result}\"");
        text.lines()
            .filter(|l| l.starts_with("infergate_consumer_messages_total{") && l.contains(&needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const CONSUMER: &str =
    "name = \"simple-async\"\nstream = \"INFER\"\nsubject = \"infer.simple\"\nmodel = \"simple\"\n";

/// Request `i` for the demo `simple` model (OUTPUT0 = INPUT0 + INPUT1, INT32 [1, 16]).
fn request(i: u32) -> Vec<u8> {
    let input0: Vec<u32> = (0..16).map(|k| i + k).collect();
    serde_json::to_vec(&serde_json::json!({
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": input0},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": vec![1; 16]},
        ],
        "outputs": [{"name": "OUTPUT0"}],
    }))
    .unwrap()
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.insert(*k, *v);
    }
    map
}

async fn publish_requests(js: &jetstream::Context, ids: std::ops::Range<u32>) {
    let mut acks = Vec::new();
    for i in ids {
        let id = i.to_string();
        let map = headers(&[
            ("Infergate-Request-Id", &id),
            ("Nats-Msg-Id", &id),
            ("Reply-To", "replies.simple"),
        ]);
        acks.push(
            js.publish_with_headers("infer.simple", map, request(i).into())
                .await
                .unwrap(),
        );
        if acks.len() == 500 {
            for ack in acks.drain(..) {
                ack.await.unwrap();
            }
        }
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

async fn stream_messages(js: &jetstream::Context, name: &str) -> u64 {
    let mut stream = js.get_stream(name).await.unwrap();
    stream.info().await.unwrap().state.messages
}

/// Waits until the reply stream holds `n` messages.
async fn wait_replies(js: &jetstream::Context, n: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let have = match js.get_stream("REPLIES").await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        };
        if have >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {have} of {n} replies after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every reply in the stream: (request id, status, body).
async fn read_replies(js: &jetstream::Context) -> Vec<(String, String, bytes::Bytes)> {
    let stream = js.get_stream("REPLIES").await.unwrap();
    let total = stream.get_info().await.unwrap().state.messages;
    let reader = stream
        .create_consumer(consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = reader.messages().await.unwrap();
    let mut out = Vec::new();
    while (out.len() as u64) < total {
        let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("replies readable")
            .unwrap()
            .unwrap();
        let h = m.headers.clone().unwrap_or_default();
        let get = |k: &str| h.get(k).map(|v| v.to_string()).unwrap_or_default();
        out.push((
            get("Infergate-Request-Id"),
            get("Infergate-Status"),
            m.payload.clone(),
        ));
    }
    out
}

async fn connect(url: &str) -> (async_nats::Client, jetstream::Context) {
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(url)
        .await
        .unwrap();
    let js = jetstream::new(client.clone());
    js.get_or_create_stream(stream::Config {
        name: "REPLIES".into(),
        subjects: vec!["replies.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap();
    (client, js)
}

/// 10,000 requests queued; the server SIGKILLed twice mid-stream and started again, the broker
/// kept: every request answered, once, with the right result; then 5,000 more with the broker
/// restarted under them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_twice_and_with_the_broker_restarted_every_request_is_answered_once() {
    let dir = tempfile_dir("broker-fault");
    let mut nats = Nats::start(&dir.join("nats"), free_port());
    let (_client, js) = connect(&nats.url()).await;
    js.get_or_create_stream(stream::Config {
        name: "INFER".into(),
        subjects: vec!["infer.simple".into()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap();
    publish_requests(&js, 0..10_000).await;
    assert_eq!(stream_messages(&js, "INFER").await, 10_000);

    let consumer = format!(
        "{CONSUMER}url = \"{}\"\nprefetch = 64\nack_wait_ms = 2000\n",
        nats.url()
    );
    let started = Instant::now();
    let mut server = Server::start(&dir, &consumer, "");
    for kill_at in [2_000, 5_000] {
        wait_replies(&js, kill_at, Duration::from_secs(120)).await;
        server.child.kill().unwrap(); // SIGKILL
        server.child.wait().unwrap();
        server = Server::start(&dir, &consumer, "");
    }
    wait_replies(&js, 10_000, Duration::from_secs(180)).await;
    let seconds = started.elapsed().as_secs_f64();
    check_replies(&read_replies(&js).await, 10_000);
    let deadline = Instant::now() + Duration::from_secs(30);
    while stream_messages(&js, "INFER").await > 0 {
        assert!(Instant::now() < deadline, "requests left unacknowledged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("10000 requests through two SIGKILLs in {seconds:.1} s");

    // The broker restarted (SIGTERM: a rolling restart) while 5,000 more are being answered.
    publish_requests(&js, 10_000..15_000).await;
    wait_replies(&js, 11_000, Duration::from_secs(120)).await;
    nats.restart("TERM");
    let (_client, js) = connect(&nats.url()).await;
    wait_replies(&js, 15_000, Duration::from_secs(180)).await;
    check_replies(&read_replies(&js).await, 15_000);
    let deadline = Instant::now() + Duration::from_secs(30);
    while stream_messages(&js, "INFER").await > 0 {
        assert!(Instant::now() < deadline, "requests left unacknowledged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.metric("dead_lettered").await, 0);
    drop(server);
    drop(nats);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every id below `n` answered exactly once (the reply stream drops a republished reply by its
/// message id, the request id), with OUTPUT0 = INPUT0 + INPUT1.
fn check_replies(replies: &[(String, String, bytes::Bytes)], n: u32) {
    let mut seen = vec![0u32; n as usize];
    for (id, status, body) in replies {
        let i: u32 = id.parse().unwrap_or_else(|_| panic!("reply id {id:?}"));
        assert_eq!(
            status,
            "200",
            "reply {i}: {}",
            String::from_utf8_lossy(body)
        );
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["id"], serde_json::Value::Null);
        let data: Vec<u32> = serde_json::from_value(v["outputs"][0]["data"].clone()).unwrap();
        let expected: Vec<u32> = (0..16).map(|k| i + k + 1).collect();
        assert_eq!(data, expected, "reply {i}");
        seen[i as usize] += 1;
    }
    let missing = seen.iter().filter(|&&c| c == 0).count();
    let twice = seen.iter().filter(|&&c| c > 1).count();
    assert_eq!(
        (missing, twice),
        (0, 0),
        "requests unanswered, answered twice"
    );
    assert_eq!(replies.len(), n as usize);
}

fn tempfile_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("infergate-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Replies to a client's own inbox (a core subscription, no stream keeps the subject) are
/// published and the request acknowledged at once: a core subscriber never acknowledges, so
/// waiting for a JetStream confirmation would hold every prefetch slot until it timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_to_a_core_inbox_are_not_held_for_a_confirmation() {
    let dir = tempfile_dir("broker-inbox");
    let nats = Nats::start(&dir.join("nats"), free_port());
    let (client, js) = connect(&nats.url()).await;
    let consumer = format!("{CONSUMER}url = \"{}\"\n", nats.url());
    let server = Server::start(&dir, &consumer, "");
    let deadline = Instant::now() + Duration::from_secs(20);
    while js.get_stream("INFER").await.is_err() {
        assert!(Instant::now() < deadline, "the consumer did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut inbox = client.subscribe("inbox.client-1").await.unwrap();
    client.flush().await.unwrap();
    const N: u32 = 500;
    for i in 0..N {
        let id = i.to_string();
        let map = headers(&[
            ("Infergate-Request-Id", &id),
            ("Reply-To", "inbox.client-1"),
        ]);
        js.publish_with_headers("infer.simple", map, request(i).into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(20);
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < N as usize {
        let msg = tokio::time::timeout_at(deadline.into(), inbox.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {N} replies within 20 s", seen.len()))
            .unwrap();
        let h = msg.headers.as_ref().unwrap();
        assert_eq!(h.get("Infergate-Status").unwrap().as_str(), "200");
        seen.insert(h.get("Infergate-Request-Id").unwrap().as_str().to_string());
    }
    println!("{N} replies to a core inbox in {:?}", started.elapsed());
    // Every request acknowledged once: none delivered again, none answered from the window.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.metric("answered").await < u64::from(N) {
        assert!(
            Instant::now() < deadline,
            "answered {}",
            server.metric("answered").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.metric("redelivered").await, 0);
    assert_eq!(server.metric("duplicate").await, 0);
    assert_eq!(
        stream_messages(&js, "INFER").await,
        0,
        "every request acknowledged"
    );
}

/// Errors a producer can act on: a malformed body and an unknown content type answered at
/// once with the status HTTP would give; a request whose deadline always passes retried
/// `max_deliver` times and dead-lettered with the reason; a message with nowhere to reply
/// dead-lettered; protobuf in, protobuf out; the counts on /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_answered_or_dead_lettered_with_the_reason() {
    let dir = tempfile_dir("broker-errors");
    let nats = Nats::start(&dir.join("nats"), free_port());
    let (client, js) = connect(&nats.url()).await;
    let consumer = format!(
        "{CONSUMER}url = \"{}\"\nmax_deliver = 3\nretry_delay_ms = 50\nack_wait_ms = 2000\n",
        nats.url()
    );
    // A real OTLP/gRPC receiver: the traced request's span must join the producer's trace.
    let spans = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(Arc::clone(&spans))))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let telemetry = format!("[telemetry]\notlp_endpoint = \"http://{collector}\"\n");
    let server = Server::start(&dir, &consumer, &telemetry);
    // The server made the request stream and the dead-letter one.
    let deadline = Instant::now() + Duration::from_secs(20);
    while js.get_stream("INFER_DEAD").await.is_err() {
        assert!(Instant::now() < deadline, "the consumer did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let send = |id: &'static str, extra: &[(&'static str, &'static str)], body: Vec<u8>| {
        let mut pairs = vec![("Infergate-Request-Id", id), ("Reply-To", "replies.errors")];
        pairs.extend_from_slice(extra);
        let map = headers(&pairs);
        let js = js.clone();
        async move {
            js.publish_with_headers("infer.simple", map, body.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    send("malformed", &[], b"{\"inputs\": [".to_vec()).await;
    send("xml", &[("Content-Type", "text/xml")], b"<x/>".to_vec()).await;
    let mut late: serde_json::Value = serde_json::from_slice(&request(7)).unwrap();
    late["parameters"] = serde_json::json!({"timeout": 1});
    send("late", &[], serde_json::to_vec(&late).unwrap()).await;
    let proto = infergate_proto::inference::ModelInferRequest {
        model_name: "simple".into(),
        inputs: ["INPUT0", "INPUT1"]
            .into_iter()
            .map(
                |name| infergate_proto::inference::model_infer_request::InferInputTensor {
                    name: name.into(),
                    datatype: "INT32".into(),
                    shape: vec![1, 16],
                    contents: Some(infergate_proto::inference::InferTensorContents {
                        int_contents: (0..16).collect(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
            .collect(),
        ..Default::default()
    };
    send(
        "proto",
        &[
            ("Content-Type", "application/x-protobuf"),
            ("traceparent", TRACEPARENT),
        ],
        proto.encode_to_vec(),
    )
    .await;
    client
        .publish_with_headers(
            "infer.simple",
            headers(&[("Infergate-Request-Id", "nowhere")]),
            request(1).into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();

    wait_replies(&js, 4, Duration::from_secs(60)).await;
    let replies = read_replies(&js).await;
    let reply = |id: &str| {
        replies
            .iter()
            .find(|r| r.0 == id)
            .unwrap_or_else(|| panic!("no reply to {id}: {replies:?}"))
    };
    let error = |id: &str| -> (String, String) {
        let r = reply(id);
        let v: serde_json::Value = serde_json::from_slice(&r.2).unwrap();
        (
            r.1.clone(),
            v["error"].as_str().unwrap_or_default().to_string(),
        )
    };
    let (status, message) = error("malformed");
    assert_eq!(status, "400");
    assert!(
        message.contains("json") || message.contains("JSON") || message.contains("EOF"),
        "{message}"
    );
    let (status, message) = error("xml");
    assert_eq!(status, "400");
    assert!(
        message.contains("unsupported Content-Type 'text/xml'"),
        "{message}"
    );
    let (status, message) = error("late");
    assert_eq!(status, "504");
    assert!(
        message.contains("timed out before it could start"),
        "{message}"
    );
    let r = reply("proto");
    assert_eq!(r.1, "200");
    let out = infergate_proto::inference::ModelInferResponse::decode(r.2.clone()).unwrap();
    assert_eq!(out.model_name, "simple");
    let sums = out
        .outputs
        .iter()
        .find(|o| o.name == "OUTPUT0")
        .and_then(|o| o.contents.as_ref())
        .map(|c| c.int_contents.clone())
        .or_else(|| {
            out.raw_output_contents.first().map(|raw| {
                raw.chunks_exact(4)
                    .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
                    .collect()
            })
        })
        .unwrap();
    assert_eq!(sums, (0..16).map(|k| 2 * k).collect::<Vec<i32>>());

    // The request span joined the producer's trace as a child of its span, with the stack's
    // stages under it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let joined = loop {
        let found = spans
            .lock()
            .unwrap()
            .iter()
            .find(|s| hex(&s.trace_id) == TRACE && hex(&s.parent_span_id) == PARENT)
            .cloned();
        if let Some(span) = found {
            break span;
        }
        assert!(
            Instant::now() < deadline,
            "no span of trace {TRACE} under {PARENT}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let protocol = joined
        .attributes
        .iter()
        .find(|a| a.key == "protocol")
        .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) => Some(s.clone()),
            _ => None,
        });
    assert_eq!(protocol.as_deref(), Some("nats"), "{joined:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stages: Vec<String> = spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.parent_span_id == joined.span_id)
            .map(|s| s.name.clone())
            .collect();
        if stages.iter().any(|n| n == "validate") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no stage spans under the request: {stages:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Dead letters: the late request after 3 deliveries, the one with nowhere to reply.
    let deadline = Instant::now() + Duration::from_secs(20);
    while stream_messages(&js, "INFER_DEAD").await < 2 {
        assert!(Instant::now() < deadline, "dead letters missing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dead = js.get_stream("INFER_DEAD").await.unwrap();
    let mut letters = Vec::new();
    for seq in 1..=2 {
        let m = dead.get_raw_message(seq).await.unwrap();
        let get = |k: &str| m.headers.get(k).map(|v| v.to_string()).unwrap_or_default();
        letters.push((
            get("Infergate-Request-Id"),
            get("Infergate-Reason"),
            get("Infergate-Attempts"),
        ));
    }
    letters.sort();
    assert_eq!(letters[0].0, "late");
    assert!(
        letters[0]
            .1
            .contains("timed out before it could start (3 deliveries)"),
        "{letters:?}"
    );
    assert_eq!(letters[0].2, "3");
    assert_eq!(letters[1].0, "nowhere");
    assert!(letters[1].1.contains("no Reply-To header"), "{letters:?}");
    assert_eq!(letters[1].2, "1");

    assert_eq!(server.metric("dead_lettered").await, 2);
    assert_eq!(server.metric("retried").await, 2);
    assert_eq!(server.metric("failed").await, 2);
    assert_eq!(server.metric("answered").await, 1);
    assert_eq!(server.metric("consumed").await, 7);
    assert_eq!(server.metric("redelivered").await, 2);
    drop(server);
    drop(nats);
    let _ = std::fs::remove_dir_all(&dir);
}
