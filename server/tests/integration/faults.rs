//! Fault injection over the wire: backends that panic, hang or crawl, clients that vanish, a
//! registry whose database is locked, and shutdown at concurrency 64. In each, the fault stays
//! with the requests it touched and the rest of the server keeps serving.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use infergate_config::{Config, DynamicBatching, ModelConfig};
use infergate_proto::inference as pb;
use infergate_registry::Registry;
use infergate_runtime::test_util::{Behavior, FakeFactory};
use infergate_server::repository::Repository;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::common::{TestServer, loopback_config, ort_runtime};

fn body(value: f32) -> Value {
    json!({"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [value, 1.0]}]})
}

struct Fakes {
    server: TestServer,
    factories: Vec<Arc<FakeFactory>>,
    repository: Arc<Repository>,
}

/// Serves fake models: `(name, behavior, model config)`; one instance each.
async fn serve_fakes(
    models: Vec<(&str, Behavior, ModelConfig)>,
    configure: impl FnOnce(&mut Config),
) -> Fakes {
    let mut config = loopback_config();
    configure(&mut config);
    let repository = Arc::new(Repository::new(None, None, config.runtime.clone()));
    let mut factories = Vec::new();
    for (name, behavior, model_config) in models {
        let factory = Arc::new(FakeFactory::fp32(behavior));
        let model_config = ModelConfig {
            instances: Some(1),
            ..model_config
        };
        repository
            .insert_factory(name, 1, factory.clone(), model_config)
            .unwrap();
        factories.push(factory);
    }
    Fakes {
        server: TestServer::serve(config, Arc::clone(&repository)).await,
        factories,
        repository,
    }
}

fn batched(max_batch_size: u32, settings: DynamicBatching) -> ModelConfig {
    ModelConfig {
        max_batch_size,
        dynamic_batching: Some(settings),
        ..ModelConfig::default()
    }
}

async fn infer(s: &TestServer, model: &str, body: Value) -> (u16, Value) {
    s.post_json(&format!("/v2/models/{model}/infer"), &body)
        .await
}

#[tokio::test]
async fn a_panicking_backend_fails_only_its_batch_and_is_replaced() {
    let window = DynamicBatching {
        max_queue_delay_us: 100_000,
        ..DynamicBatching::default()
    };
    let Fakes {
        server: s,
        factories,
        ..
    } = serve_fakes(
        vec![
            ("boom", Behavior::PanicOnNegative, batched(8, window)),
            ("calm", Behavior::Echo, ModelConfig::default()),
        ],
        |_| {},
    )
    .await;
    let boom = &factories[0];
    assert_eq!(infer(&s, "boom", body(1.0)).await.0, 200);

    // A poison request and two good ones arrive inside one batching window: the batch they
    // share fails, and only it.
    let (poison, good_a, good_b, calm) = tokio::join!(
        infer(&s, "boom", body(-1.0)),
        infer(&s, "boom", body(2.0)),
        infer(&s, "boom", body(3.0)),
        infer(&s, "calm", body(4.0)),
    );
    for (status, body) in [&poison, &good_a, &good_b] {
        assert_eq!(*status, 500, "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("panicked: fake backend panic on a negative input"),
            "{body}"
        );
    }
    assert_eq!(calm.0, 200, "another model is unaffected: {}", calm.1);
    assert_eq!(
        boom.executions.load(Ordering::SeqCst),
        2,
        "one batch of three"
    );
    assert_eq!(
        boom.created.load(Ordering::SeqCst),
        2,
        "the instance was replaced"
    );

    // The replacement serves the next batch.
    let (status, out) = infer(&s, "boom", body(5.0)).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["outputs"][0]["data"], json!([5.0, 1.0]));
    let (_, stats) = s.get_json("/v2/models/boom/versions/1/stats").await;
    let stats = &stats["model_stats"][0]["inference_stats"];
    assert_eq!(
        (
            stats["success"]["count"].as_u64(),
            stats["fail"]["count"].as_u64()
        ),
        (Some(2), Some(3)),
        "{stats}"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_hanging_backend_times_out_its_waiters_and_keeps_its_queue_bound() {
    let queue = DynamicBatching {
        max_queue_size: 3,
        ..DynamicBatching::default()
    };
    let Fakes {
        server: s,
        factories,
        ..
    } = serve_fakes(
        vec![
            (
                "stuck",
                Behavior::Slow(Duration::from_millis(1500)),
                batched(1, queue),
            ),
            ("calm", Behavior::Echo, ModelConfig::default()),
        ],
        |_| {},
    )
    .await;
    let stuck = &factories[0];
    let s = Arc::new(s);
    let hung = tokio::spawn({
        let s = Arc::clone(&s);
        async move { infer(&s, "stuck", body(0.0)).await }
    });
    while stuck.executions.load(Ordering::SeqCst) < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut waiting = body(1.0);
    waiting["parameters"] = json!({"timeout": 200_000});
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let (s, waiting) = (Arc::clone(&s), waiting.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                (infer(&s, "stuck", waiting).await, started.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;

    // The queue holds three: the fourth is shed at once.
    let started = Instant::now();
    let (status, full) = infer(&s, "stuck", body(2.0)).await;
    assert_eq!(status, 503, "{full}");
    assert!(started.elapsed() < Duration::from_millis(150));
    // Other models answer while this one hangs.
    let started = Instant::now();
    assert_eq!(infer(&s, "calm", body(3.0)).await.0, 200);
    assert!(started.elapsed() < Duration::from_millis(150));

    for waiter in waiters {
        let ((status, body), took) = waiter.await.unwrap();
        assert_eq!(status, 504, "{body}");
        assert!(
            took >= Duration::from_millis(190) && took < Duration::from_millis(1000),
            "timed out after {took:?}"
        );
    }
    let (status, _) = hung.await.unwrap();
    assert_eq!(status, 200, "the hung request itself still completes");
    assert_eq!(
        stuck.executions.load(Ordering::SeqCst),
        1,
        "timed-out requests never ran"
    );
    Arc::into_inner(s).unwrap().stop().await;
}

#[tokio::test]
async fn a_client_that_disconnects_while_queued_is_never_executed() {
    let Fakes {
        server: s,
        factories,
        ..
    } = serve_fakes(
        vec![(
            "slow",
            Behavior::Slow(Duration::from_millis(400)),
            batched(1, DynamicBatching::default()),
        )],
        |_| {},
    )
    .await;
    let slow = &factories[0];
    let s = Arc::new(s);
    let first = tokio::spawn({
        let s = Arc::clone(&s);
        async move { infer(&s, "slow", body(0.0)).await }
    });
    while slow.executions.load(Ordering::SeqCst) < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A raw HTTP request that queues behind the first, then the client goes away.
    let payload = serde_json::to_vec(&body(1.0)).unwrap();
    let mut tcp = tokio::net::TcpStream::connect(s.addrs.http).await.unwrap();
    let head = format!(
        "POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        payload.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&payload).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(tcp);
    assert_eq!(first.await.unwrap().0, 200);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        slow.executions.load(Ordering::SeqCst),
        1,
        "the abandoned request ran"
    );
    // The server keeps serving the model.
    assert_eq!(infer(&s, "slow", body(2.0)).await.0, 200);
    Arc::into_inner(s).unwrap().stop().await;
}

#[tokio::test]
async fn a_locked_registry_database_does_not_disturb_serving() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(dir.path()).unwrap();
    let repo = crate::common::repo_dir();
    registry
        .import("iris", &repo.join("iris_mlp/1/model.onnx"), "test")
        .unwrap();
    registry
        .import("iris", &repo.join("iris_mlp/2/model.onnx"), "test")
        .unwrap();
    registry.set_alias("iris", "production", 1, "test").unwrap();
    let mut config = loopback_config();
    config.models.registry = Some(dir.path().to_path_buf());
    config.models.registry_poll_ms = 50;
    let repository = Repository::new(None, Some(ort_runtime()), config.runtime.clone())
        .with_registry(Arc::new(Registry::open(dir.path()).unwrap()));
    let repository = Arc::new(repository);
    repository.load_all().await.unwrap();
    let s = TestServer::serve(config, repository).await;
    let iris = json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]});

    let serve_for = |how_long: Duration| {
        let (s, iris) = (&s, &iris);
        async move {
            let until = Instant::now() + how_long;
            let mut served = 0;
            while Instant::now() < until {
                let (status, out) = s.post_json("/v2/models/iris/infer", iris).await;
                assert_eq!(status, 200, "{out}");
                assert_eq!(out["model_version"], "1");
                served += 1;
            }
            served
        }
    };

    // Another process holds the write lock: the server's polls (readers) go on, and so does
    // serving.
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (locked, is_locked) = std::sync::mpsc::channel();
    let db = dir.path().join("registry.db");
    let holder = std::thread::spawn({
        let db = db.clone();
        move || {
            let conn = rusqlite::Connection::open(db).unwrap();
            conn.busy_timeout(Duration::from_secs(10)).unwrap();
            conn.execute_batch("BEGIN EXCLUSIVE; UPDATE aliases SET version = version;")
                .unwrap();
            locked.send(()).unwrap();
            let _ = released.recv();
            conn.execute_batch("ROLLBACK").unwrap();
        }
    });
    is_locked.recv().unwrap();
    assert!(serve_for(Duration::from_millis(500)).await > 10);
    drop(release);
    holder.join().unwrap();

    // The database becomes unreadable (its header overwritten, as a failing disk would):
    // polls fail and are logged, the loaded version keeps serving. A poll that reads between
    // the checkpoint and the overwrite leaves the server's connection with the good pages
    // cached, and it does not read the header again until the database changes; so the
    // overwrite is tried again, after a write that changes it, until polls fail.
    let poll_errors = || async {
        let metrics = s.admin_get_text("/metrics").await;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("infergate_registry_poll_errors_total "))
            .expect("poll error counter")
            .parse::<u64>()
            .unwrap()
    };
    let mut failed = Vec::new();
    for _ in 0..5 {
        let before = poll_errors().await;
        rusqlite::Connection::open(&db)
            .unwrap()
            .execute_batch(
                "BEGIN; UPDATE aliases SET version = version; COMMIT; \
                 PRAGMA wal_checkpoint(TRUNCATE);",
            )
            .unwrap();
        let original = std::fs::read(&db).unwrap();
        let mut broken = original.clone();
        broken[..100].fill(0xAB);
        std::fs::write(&db, &broken).unwrap();
        assert!(serve_for(Duration::from_millis(500)).await > 10);
        std::fs::write(&db, &original).unwrap();
        failed.push(poll_errors().await - before);
        if failed.last() >= Some(&3) {
            break;
        }
    }
    assert!(
        failed.last() >= Some(&3),
        "failed polls in 500 ms, attempt by attempt: {failed:?}"
    );

    // Once the database is back the server follows the registry again.
    registry.set_alias("iris", "production", 2, "test").unwrap();
    let deadline = Instant::now() + Duration::from_secs(35);
    loop {
        let (status, out) = s.post_json("/v2/models/iris/infer", &iris).await;
        assert_eq!(status, 200, "{out}");
        if out["model_version"] == "2" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server never followed the alias"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.stop().await;
}

#[tokio::test]
async fn shutdown_at_concurrency_64_answers_every_accepted_request() {
    let drain = Duration::from_secs(5);
    let Fakes {
        server: s,
        factories,
        repository,
    } = serve_fakes(
        vec![(
            "work",
            Behavior::Slow(Duration::from_millis(5)),
            batched(8, DynamicBatching::default()),
        )],
        |c| c.server.drain_timeout_ms = drain.as_millis() as u64,
    )
    .await;
    let work = &factories[0];
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // 32 HTTP clients (one connection each) and 32 gRPC clients (over 4 connections), each
    // sending requests back to back until its first failure.
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..32 {
        let url = s.url("/v2/models/work/infer");
        let http = reqwest::Client::new();
        clients.spawn(async move {
            let (mut ok, mut refused, mut lost) = (0u64, 0u64, Vec::new());
            loop {
                match http.post(&url).json(&body(i as f32)).send().await {
                    Ok(r) if r.status() == 200 => match r.json::<Value>().await {
                        Ok(out) if out["outputs"][0]["data"] == json!([i as f32, 1.0]) => ok += 1,
                        other => lost.push(format!("{other:?}")),
                    },
                    Ok(r) => lost.push(format!("status {}", r.status())),
                    // Not accepted: the listener was closed before the connection was made, or
                    // the server closed an idle keep-alive connection while this request was on
                    // its way (HTTP/1's inherent race; the server never read it). The server's
                    // own count below proves no request it did read went unanswered.
                    Err(e) if e.is_connect() || never_read(&e) => {
                        refused += 1;
                        break;
                    }
                    Err(e) => {
                        lost.push(format!("{e:?}"));
                        break;
                    }
                }
            }
            (ok, refused, lost)
        });
    }
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(s.grpc().await);
    }
    for i in 0..32 {
        let mut client = channels[i % 4].clone();
        let stop = Arc::clone(&stop);
        clients.spawn(async move {
            let (mut ok, mut refused, mut lost) = (0u64, 0u64, Vec::new());
            while !stop.load(Ordering::SeqCst) || ok == 0 {
                let req = pb::ModelInferRequest {
                    model_name: "work".into(),
                    inputs: vec![pb::model_infer_request::InferInputTensor {
                        name: "INPUT0".into(),
                        datatype: "FP32".into(),
                        shape: vec![1, 1],
                        ..Default::default()
                    }],
                    raw_input_contents: vec![(i as f32).to_le_bytes().to_vec().into()],
                    ..Default::default()
                };
                match client.model_infer(req).await {
                    Ok(r) => {
                        let raw = &r.into_inner().raw_output_contents[0];
                        if raw[..] == (i as f32).to_le_bytes() {
                            ok += 1;
                        } else {
                            lost.push("wrong answer".into());
                        }
                    }
                    // The connection went away (GOAWAY, then refused): not accepted.
                    Err(status) if status.code() == tonic::Code::Unavailable => {
                        refused += 1;
                        break;
                    }
                    Err(status) => {
                        lost.push(format!("{status:?}"));
                        break;
                    }
                }
            }
            (ok, refused, lost)
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let executed_before = work.executions.load(Ordering::SeqCst);
    let started = Instant::now();
    s.shutdown.cancel();
    tokio::time::timeout(drain + Duration::from_secs(1), s.handle)
        .await
        .expect("the server did not exit within the drain timeout")
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    assert!(took < drain, "drained in {took:?}");

    let (mut ok, mut refused, mut lost) = (0, 0, Vec::new());
    while let Some(result) = clients.join_next().await {
        let (o, r, l) = result.unwrap();
        ok += o;
        refused += r;
        lost.extend(l);
    }
    assert!(lost.is_empty(), "accepted requests lost: {lost:?}");
    assert!(executed_before > 0 && ok > 64, "ok {ok}");
    assert!(refused >= 1, "no client saw the listener close");
    // Everything the server answered reached its client: the server's count of successes
    // equals the clients' count of answers, and nothing failed.
    let version = &repository.all_versions()[0];
    assert_eq!(version.stats.success.get().0, ok);
    assert_eq!(version.stats.fail.get().0, 0);
}

/// A request written to a keep-alive connection that the server closed without reading it.
fn never_read(e: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            return h.is_incomplete_message();
        }
        source = err.source();
    }
    false
}
