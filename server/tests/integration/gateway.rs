//! The gateway stack: dynamic batching, deadlines, priorities, queue bounds, cancellation,
//! admission control and the response cache, in-process (the stack itself) and over HTTP/gRPC.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use infergate_config::{Config, DynamicBatching, ModelConfig, ResponseCache as CacheSettings};
use infergate_runtime::test_util::{Behavior, FakeFactory};
use infergate_runtime::{Model, ModelOptions, NamedTensor, Tensor};
use infergate_server::core::{InferRequest, InferResponse, ParamValue, Protocol};
use infergate_server::error::{ErrorKind, ServeError};
use infergate_server::layers::cache::ResponseCache;
use infergate_server::repository::{ModelVersion, Repository};
use infergate_server::{Gateway, Listeners};
use serde_json::json;
use tower::ServiceExt;

use crate::common::TestServer;

fn fake(
    behavior: Behavior,
    config: ModelConfig,
    instances: usize,
) -> (Arc<Repository>, Arc<FakeFactory>) {
    let runtime = infergate_config::RuntimeConfig {
        instances,
        ..Default::default()
    };
    let repository = Arc::new(Repository::new(None, None, runtime));
    let factory = Arc::new(FakeFactory::fp32(behavior));
    let config = ModelConfig {
        instances: Some(instances),
        ..config
    };
    repository
        .insert_factory("fake", 1, factory.clone(), config)
        .unwrap();
    (repository, factory)
}

fn batching(batch: DynamicBatching, max_batch_size: u32) -> ModelConfig {
    ModelConfig {
        max_batch_size,
        dynamic_batching: Some(batch),
        ..ModelConfig::default()
    }
}

fn request(rows: usize, value: f32) -> InferRequest {
    let mut req = InferRequest::new("fake", None, Protocol::Http);
    let data = vec![value; rows * 2];
    req.inputs.push(NamedTensor::new(
        "INPUT0",
        Tensor::from_slice(vec![rows as i64, 2], &data).unwrap(),
    ));
    req
}

async fn respond(gateway: &Gateway, req: InferRequest) -> Result<InferResponse, ServeError> {
    gateway
        .stack
        .clone()
        .oneshot(req)
        .await
        .map_err(ServeError::from)
}

async fn call(gateway: &Gateway, req: InferRequest) -> Result<Vec<f32>, ServeError> {
    let resp = respond(gateway, req).await?;
    Ok(resp.outputs[0].tensor.to_vec::<f32>().unwrap())
}

/// Whether the response cache answered.
fn cache_hit(resp: &InferResponse) -> bool {
    resp.parameters
        .contains(&("cache_hit".to_string(), ParamValue::Bool(true)))
}

async fn wait_for(factory: &FakeFactory, executions: usize) {
    for _ in 0..500 {
        if factory.executions.load(Ordering::SeqCst) >= executions {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("backend never reached {executions} executions");
}

#[tokio::test]
async fn requests_batch_while_the_instance_is_busy_and_split_back_exactly() {
    let (repo, factory) = fake(
        Behavior::Slow(Duration::from_millis(100)),
        batching(DynamicBatching::default(), 16),
        1,
    );
    let gateway = Gateway::new(Config::default(), repo.clone()).unwrap();
    let first = tokio::spawn({
        let g = Arc::clone(&gateway);
        async move { call(&g, request(1, 0.5)).await }
    });
    wait_for(&factory, 1).await;
    // While the only instance is busy, these queue and then run as one batch of 1+2+3 rows.
    let mut rest = Vec::new();
    for (rows, value) in [(1, 1.0), (2, 2.0), (3, 3.0)] {
        let g = Arc::clone(&gateway);
        rest.push(tokio::spawn(async move {
            (rows, value, call(&g, request(rows, value)).await)
        }));
    }
    assert_eq!(first.await.unwrap().unwrap(), vec![0.5, 0.5]);
    for task in rest {
        let (rows, value, out) = task.await.unwrap();
        assert_eq!(
            out.unwrap(),
            vec![value; rows * 2],
            "each caller gets exactly its rows back"
        );
    }
    assert_eq!(
        factory.executions.load(Ordering::SeqCst),
        2,
        "one execution for the first, one for the batch"
    );
    let stats = &repo.resolve("fake", None).unwrap().stats;
    assert_eq!(stats.inference_count.load(Ordering::Relaxed), 7);
    assert_eq!(stats.execution_count.load(Ordering::Relaxed), 2);
    assert_eq!(stats.success.get().0, 4);
    let text = gateway.metrics.encode();
    assert!(
        text.contains(r#"infergate_batch_size_bucket{le="8.0",model="fake",version="1"} 2"#),
        "{text}"
    );
}

/// With `dispatch_ahead_rows = 2` and one busy instance, a single waiting request stays in the
/// gateway's queue, two are formed into a batch that waits in the model's queue, and a request
/// arriving after that waits for the next batch. Without the setting the three would run as
/// one batch; dispatching ahead regardless of size would run the first one alone.
#[tokio::test]
async fn a_big_enough_batch_is_dispatched_ahead_while_the_instance_is_busy() {
    let (repo, factory) = fake(
        Behavior::Slow(Duration::from_millis(100)),
        batching(
            DynamicBatching {
                dispatch_ahead_rows: 2,
                ..DynamicBatching::default()
            },
            16,
        ),
        1,
    );
    let gateway = Gateway::new(Config::default(), repo.clone()).unwrap();
    let started = tokio::time::Instant::now();
    let send = |value: f32| {
        let g = Arc::clone(&gateway);
        tokio::spawn(async move {
            let out = call(&g, request(1, value)).await.unwrap();
            (out, started.elapsed())
        })
    };
    let a = send(1.0);
    wait_for(&factory, 1).await;
    let b = send(2.0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let c = send(3.0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let d = send(4.0);
    let mut done = Vec::new();
    for (task, value) in [(a, 1.0), (b, 2.0), (c, 3.0), (d, 4.0)] {
        let (out, at) = task.await.unwrap();
        assert_eq!(out, vec![value; 2]);
        done.push(at);
    }
    assert!(
        done[1].abs_diff(done[2]) < Duration::from_millis(50),
        "the second and third ran as one batch: {done:?}"
    );
    assert!(
        done[3] > done[2] + Duration::from_millis(50),
        "the fourth ran after that batch: {done:?}"
    );
    let stats = &repo.resolve("fake", None).unwrap().stats;
    assert_eq!(stats.inference_count.load(Ordering::Relaxed), 4);
    assert_eq!(stats.execution_count.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn a_cancelled_request_is_never_executed() {
    let (repo, factory) = fake(
        Behavior::Slow(Duration::from_millis(100)),
        batching(DynamicBatching::default(), 8),
        1,
    );
    let gateway = Gateway::new(Config::default(), repo).unwrap();
    let busy = tokio::spawn({
        let g = Arc::clone(&gateway);
        async move { call(&g, request(1, 1.0)).await }
    });
    wait_for(&factory, 1).await;
    let abandoned = tokio::spawn({
        let g = Arc::clone(&gateway);
        async move { call(&g, request(1, 2.0)).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    abandoned.abort();
    busy.await.unwrap().unwrap();
    // A later request still runs; the abandoned one never did.
    assert_eq!(
        call(&gateway, request(1, 3.0)).await.unwrap(),
        vec![3.0, 3.0]
    );
    assert_eq!(factory.executions.load(Ordering::SeqCst), 2);
    assert!(
        gateway
            .metrics
            .encode()
            .contains(r#"infergate_rejected_requests_total{model="fake",cause="cancelled"} 1"#)
    );
}

#[tokio::test]
async fn a_batch_dispatched_ahead_is_dropped_when_all_its_callers_leave() {
    let (repo, factory) = fake(
        Behavior::Slow(Duration::from_millis(100)),
        batching(
            DynamicBatching {
                dispatch_ahead_rows: 1,
                ..DynamicBatching::default()
            },
            8,
        ),
        1,
    );
    let gateway = Gateway::new(Config::default(), repo).unwrap();
    let send = |value: f32| {
        let g = Arc::clone(&gateway);
        tokio::spawn(async move { call(&g, request(1, value)).await })
    };
    let busy = send(1.0);
    wait_for(&factory, 1).await;
    // Dispatched ahead at once (one row is enough): it waits in the model's queue behind the
    // running batch, where its callers leave.
    let (b, c) = (send(2.0), send(3.0));
    tokio::time::sleep(Duration::from_millis(20)).await;
    b.abort();
    c.abort();
    assert_eq!(busy.await.unwrap().unwrap(), vec![1.0, 1.0]);
    assert_eq!(
        call(&gateway, request(1, 4.0)).await.unwrap(),
        vec![4.0, 4.0]
    );
    assert_eq!(
        factory.executions.load(Ordering::SeqCst),
        2,
        "only 1 and 4 ran"
    );
    let cancelled = |n: usize| {
        gateway.metrics.encode().contains(&format!(
            r#"infergate_rejected_requests_total{{model="fake",cause="cancelled"}} {n}"#
        ))
    };
    assert!(cancelled(2));

    // A batch that one caller still waits for runs, and answers that caller.
    let busy = send(5.0);
    wait_for(&factory, 3).await;
    let (d, e) = (send(6.0), send(7.0));
    tokio::time::sleep(Duration::from_millis(20)).await;
    d.abort();
    assert_eq!(busy.await.unwrap().unwrap(), vec![5.0, 5.0]);
    assert_eq!(e.await.unwrap().unwrap(), vec![7.0, 7.0]);
    assert_eq!(factory.executions.load(Ordering::SeqCst), 4);
    assert!(cancelled(2));
}

#[tokio::test]
async fn a_batch_whose_callers_leave_while_it_runs_finishes_and_is_recorded() {
    let (repo, factory) = fake(
        Behavior::Slow(Duration::from_millis(100)),
        batching(DynamicBatching::default(), 8),
        1,
    );
    let gateway = Gateway::new(Config::default(), repo.clone()).unwrap();
    let running = tokio::spawn({
        let g = Arc::clone(&gateway);
        async move { call(&g, request(1, 1.0)).await }
    });
    wait_for(&factory, 1).await;
    running.abort();
    // It was not cancelled before it ran: the execution finishes and counts.
    let stats = &repo.resolve("fake", None).unwrap().stats;
    for _ in 0..100 {
        if stats.execution_count.load(Ordering::Relaxed) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(stats.execution_count.load(Ordering::Relaxed), 1);
    assert_eq!(stats.inference_count.load(Ordering::Relaxed), 1);
    assert!(!gateway.metrics.encode().contains(r#"cause="cancelled""#));
}

#[tokio::test]
async fn a_request_past_its_deadline_fails_without_running() {
    let (repo, factory) = fake(
        Behavior::Slow(Duration::from_millis(150)),
        batching(DynamicBatching::default(), 8),
        1,
    );
    let gateway = Gateway::new(Config::default(), repo).unwrap();
    let busy = tokio::spawn({
        let g = Arc::clone(&gateway);
        async move { call(&g, request(1, 1.0)).await }
    });
    wait_for(&factory, 1).await;
    let mut late = request(1, 2.0);
    late.parameters
        .push(("timeout".into(), ParamValue::Int64(20_000)));
    late.apply_parameters().unwrap();
    let err = call(&gateway, late).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::DeadlineExceeded);
    assert!(
        err.message.contains("timed out before it could start"),
        "{}",
        err.message
    );
    busy.await.unwrap().unwrap();
    assert_eq!(
        factory.executions.load(Ordering::SeqCst),
        1,
        "the expired request never ran"
    );
}

/// `request` with the `timeout` parameter (µs until it must have started).
fn with_timeout(mut req: InferRequest, us: i64) -> InferRequest {
    req.parameters
        .push(("timeout".into(), ParamValue::Int64(us)));
    req.apply_parameters().unwrap();
    req
}

#[tokio::test]
async fn a_deadline_passed_in_the_models_own_queue_fails_without_running() {
    // Without batching the request waits in the model's queue for the busy instance; with a
    // batch dispatched ahead, the batch waits there behind the running one.
    let ahead = DynamicBatching {
        dispatch_ahead_rows: 1,
        ..DynamicBatching::default()
    };
    for config in [ModelConfig::default(), batching(ahead, 8)] {
        let (repo, factory) = fake(Behavior::Slow(Duration::from_millis(100)), config, 1);
        let gateway = Gateway::new(Config::default(), repo).unwrap();
        let busy = tokio::spawn({
            let g = Arc::clone(&gateway);
            async move { call(&g, request(1, 1.0)).await }
        });
        wait_for(&factory, 1).await;
        let late = |value: f32| {
            let g = Arc::clone(&gateway);
            tokio::spawn(async move { call(&g, with_timeout(request(1, value), 20_000)).await })
        };
        // With batching, both form one batch, which must start by the later deadline.
        let (b, c) = (late(2.0), late(3.0));
        for task in [b, c] {
            let err = task.await.unwrap().unwrap_err();
            assert_eq!(err.kind, ErrorKind::DeadlineExceeded);
            assert!(
                err.message.contains("before it could start"),
                "{}",
                err.message
            );
        }
        busy.await.unwrap().unwrap();
        // A request with time enough still runs behind it.
        assert_eq!(
            call(&gateway, with_timeout(request(1, 4.0), 1_000_000))
                .await
                .unwrap(),
            vec![4.0, 4.0]
        );
        assert_eq!(
            factory.executions.load(Ordering::SeqCst),
            2,
            "only 1 and 4 ran"
        );
        assert!(
            gateway
                .metrics
                .encode()
                .contains(r#"infergate_rejected_requests_total{model="fake",cause="deadline"} 2"#)
        );
    }
}

#[tokio::test]
async fn a_batch_dispatched_ahead_runs_while_one_of_its_requests_can_start_in_time() {
    let ahead = DynamicBatching {
        dispatch_ahead_rows: 1,
        ..DynamicBatching::default()
    };
    let (repo, factory) = fake(
        Behavior::Slow(Duration::from_millis(100)),
        batching(ahead, 8),
        1,
    );
    let gateway = Gateway::new(Config::default(), repo).unwrap();
    let send = |req: InferRequest| {
        let g = Arc::clone(&gateway);
        tokio::spawn(async move { call(&g, req).await })
    };
    let busy = send(request(1, 1.0));
    wait_for(&factory, 1).await;
    // One batch: the first deadline passes while it waits, the second does not. As in Triton,
    // a batch that starts in time for one of its requests answers all of them.
    let (b, c) = (
        send(with_timeout(request(1, 2.0), 20_000)),
        send(with_timeout(request(1, 3.0), 1_000_000)),
    );
    busy.await.unwrap().unwrap();
    assert_eq!(b.await.unwrap().unwrap(), vec![2.0, 2.0]);
    assert_eq!(c.await.unwrap().unwrap(), vec![3.0, 3.0]);
    assert_eq!(factory.executions.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_full_queue_is_a_503_error_value() {
    let settings = DynamicBatching {
        max_queue_size: 2,
        ..DynamicBatching::default()
    };
    let (repo, factory) = fake(
        Behavior::Slow(Duration::from_millis(150)),
        batching(settings, 1),
        1,
    );
    let gateway = Gateway::new(Config::default(), repo).unwrap();
    let mut queued = Vec::new();
    let first = tokio::spawn({
        let g = Arc::clone(&gateway);
        async move { call(&g, request(1, 0.0)).await }
    });
    wait_for(&factory, 1).await;
    for v in [1.0, 2.0] {
        let g = Arc::clone(&gateway);
        queued.push(tokio::spawn(async move { call(&g, request(1, v)).await }));
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let err = call(&gateway, request(1, 3.0)).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Overloaded);
    assert!(
        err.message.contains("batch queue is full (2 requests)"),
        "{}",
        err.message
    );
    first.await.unwrap().unwrap();
    for q in queued {
        q.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn higher_priority_requests_run_first() {
    let settings = DynamicBatching {
        priority_levels: 2,
        default_priority_level: 2,
        ..DynamicBatching::default()
    };
    let (repo, factory) = fake(
        Behavior::Slow(Duration::from_millis(60)),
        batching(settings, 1),
        1,
    );
    let gateway = Gateway::new(Config::default(), repo).unwrap();
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let first = tokio::spawn({
        let g = Arc::clone(&gateway);
        async move { call(&g, request(1, 0.0)).await }
    });
    wait_for(&factory, 1).await;
    let mut tasks = Vec::new();
    for (value, priority) in [(1.0, 2), (2.0, 0), (3.0, 1)] {
        let (g, order) = (Arc::clone(&gateway), Arc::clone(&order));
        let mut req = request(1, value);
        req.priority = priority;
        tasks.push(tokio::spawn(async move {
            let out = call(&g, req).await.unwrap();
            order.lock().unwrap().push(out[0]);
        }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.await.unwrap().unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        *order.lock().unwrap(),
        vec![3.0, 1.0, 2.0],
        "priority 1 first, then the default level in arrival order"
    );
    let mut bad = request(1, 9.0);
    bad.priority = 3;
    assert_eq!(
        call(&gateway, bad).await.unwrap_err().kind,
        ErrorKind::InvalidInput
    );
}

#[tokio::test]
async fn identical_requests_in_flight_run_once_and_repeats_hit_the_cache() {
    let config = ModelConfig {
        response_cache: Some(CacheSettings::default()),
        ..ModelConfig::default()
    };
    let (repo, factory) = fake(Behavior::Slow(Duration::from_millis(50)), config, 2);
    let gateway = Gateway::new(Config::default(), repo.clone()).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let g = Arc::clone(&gateway);
        tasks.push(tokio::spawn(
            async move { respond(&g, request(1, 4.0)).await },
        ));
    }
    let mut hits = 0;
    for t in tasks {
        let resp = t.await.unwrap().unwrap();
        assert_eq!(
            resp.outputs[0].tensor.to_vec::<f32>().unwrap(),
            vec![4.0, 4.0]
        );
        hits += usize::from(cache_hit(&resp));
    }
    assert_eq!(
        factory.executions.load(Ordering::SeqCst),
        1,
        "single flight"
    );
    assert_eq!(hits, 7);
    let again = respond(&gateway, request(1, 4.0)).await.unwrap();
    assert!(cache_hit(&again));
    assert_eq!(
        call(&gateway, request(1, 5.0)).await.unwrap(),
        vec![5.0, 5.0],
        "a different request is computed"
    );
    assert_eq!(factory.executions.load(Ordering::SeqCst), 2);
    let version = repo.resolve("fake", None).unwrap();
    assert_eq!(version.stats.cache_hit.get().0, 8);
    assert_eq!(version.stats.cache_miss.get().0, 2);
    assert_eq!(
        version.cache.as_ref().unwrap().flights(),
        0,
        "no flight left"
    );
}

#[tokio::test]
async fn a_shared_computation_outlives_its_starter_and_ends_with_its_last_caller() {
    let config = ModelConfig {
        response_cache: Some(CacheSettings::default()),
        ..ModelConfig::default()
    };
    let (repo, factory) = fake(Behavior::Slow(Duration::from_millis(150)), config, 2);
    let gateway = Gateway::new(Config::default(), repo.clone()).unwrap();
    let version = repo.resolve("fake", None).unwrap();
    let cache = version.cache.as_ref().unwrap();
    let spawn = |value: f32| {
        let g = Arc::clone(&gateway);
        tokio::spawn(async move { respond(&g, request(1, value)).await })
    };

    // The caller that started the computation goes away; the one that joined it still gets
    // the answer, computed once.
    let starter = spawn(3.0);
    tokio::time::sleep(Duration::from_millis(30)).await;
    let joiner = spawn(3.0);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(cache.flights(), 1);
    starter.abort();
    let resp = joiner.await.unwrap().unwrap();
    assert_eq!(
        resp.outputs[0].tensor.to_vec::<f32>().unwrap(),
        vec![3.0, 3.0]
    );
    assert!(cache_hit(&resp), "the joiner shared the computation");
    assert_eq!(factory.executions.load(Ordering::SeqCst), 1);
    assert_eq!(cache.flights(), 0);
    assert!(
        cache_hit(&respond(&gateway, request(1, 3.0)).await.unwrap()),
        "cached"
    );

    // Every caller goes away: the flight ends with them, nothing is cached, and the next
    // identical request computes afresh.
    let lone = spawn(6.0);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(cache.flights(), 1);
    lone.abort();
    assert!(lone.await.unwrap_err().is_cancelled());
    assert_eq!(cache.flights(), 0, "the abandoned flight removed itself");
    let again = respond(&gateway, request(1, 6.0)).await.unwrap();
    assert_eq!(
        again.outputs[0].tensor.to_vec::<f32>().unwrap(),
        vec![6.0, 6.0]
    );
    assert!(!cache_hit(&again), "computed afresh");
    assert_eq!(cache.flights(), 0);
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whatever the mix of sizes, shapes and priorities, every caller of a batched real
        /// model gets what the model gives for its request alone.
        #[test]
        fn batched_outputs_equal_one_by_one(mix in proptest::collection::vec((1usize..5, 0u32..3, -3.0f32..3.0), 1..12)) {
            runtime().block_on(async {
                let (gateway, _) = iris_gateway().await;
                let mut tasks = Vec::new();
                for (i, (rows, priority, scale)) in mix.iter().copied().enumerate() {
                    let g = Arc::clone(&gateway);
                    tasks.push(tokio::spawn(async move {
                        let data: Vec<f32> = (0..rows * 4).map(|j| scale * ((i * 31 + j * 7) % 13) as f32 / 13.0).collect();
                        let mut req = InferRequest::new("iris", None, Protocol::Grpc);
                        req.priority = priority;
                        req.inputs.push(NamedTensor::new("input", Tensor::from_slice(vec![rows as i64, 4], &data).unwrap()));
                        let resp = g.stack.clone().oneshot(req).await.map_err(ServeError::from).unwrap();
                        (data, rows, resp.outputs[0].tensor.to_vec::<f32>().unwrap())
                    }));
                }
                for t in tasks {
                    let (data, rows, got) = t.await.unwrap();
                    let alone = crate::common::direct_ort_f32(&crate::common::repo_dir().join("iris_mlp/2/model.onnx"), "input", &[rows, 4], &data);
                    prop_assert_eq!(got.len(), alone.len());
                    for (a, b) in got.iter().zip(&alone) {
                        prop_assert!((a - b).abs() <= 1e-5, "batched {} vs alone {}", a, b);
                    }
                }
                Ok(())
            })?;
        }

        /// Even when every request hashes to the same key, no request is answered with
        /// another request's output.
        #[test]
        fn the_cache_never_answers_with_another_requests_output(values in proptest::collection::vec(0u8..6, 1..24)) {
            runtime().block_on(async {
                let repository = Arc::new(Repository::new(None, None, infergate_config::RuntimeConfig::default()));
                let factory = Arc::new(FakeFactory::fp32(Behavior::Echo));
                let model = Model::start(factory, ModelOptions { name: "c:1".into(), instances: 2, queue_capacity: 64, nice: 0 }).unwrap();
                let mut version = ModelVersion::new("fake", 1, model, ModelConfig::default(), 2, "sha256:test".into());
                version.cache = Some(ResponseCache::with_key_fn(&CacheSettings::default(), "sha256:test".into(), |_| 42));
                repository.insert_version(version);
                let gateway = Gateway::new(Config::default(), repository).unwrap();
                let mut tasks = Vec::new();
                for v in values {
                    let g = Arc::clone(&gateway);
                    tasks.push(tokio::spawn(async move { (v, call(&g, request(1, f32::from(v))).await.unwrap()) }));
                }
                for t in tasks {
                    let (v, out) = t.await.unwrap();
                    prop_assert_eq!(out, vec![f32::from(v); 2]);
                }
                Ok(())
            })?;
        }
    }

    async fn iris_gateway() -> (Arc<Gateway>, Arc<Repository>) {
        let runtime = crate::common::ort_runtime();
        let factory = runtime
            .load(&crate::common::repo_dir().join("iris_mlp/2/model.onnx"), 1)
            .unwrap();
        let repository = Arc::new(Repository::new(
            None,
            None,
            infergate_config::RuntimeConfig::default(),
        ));
        let config = batching(
            DynamicBatching {
                max_queue_delay_us: 2_000,
                priority_levels: 2,
                ..DynamicBatching::default()
            },
            16,
        );
        repository
            .insert_factory(
                "iris",
                1,
                Arc::new(factory),
                ModelConfig {
                    instances: Some(1),
                    ..config
                },
            )
            .unwrap();
        (
            Gateway::new(Config::default(), Arc::clone(&repository)).unwrap(),
            repository,
        )
    }
}

#[tokio::test]
async fn deadlines_map_to_504_and_deadline_exceeded_over_the_wire() {
    let (repo, factory) = fake(
        Behavior::Slow(Duration::from_millis(300)),
        batching(DynamicBatching::default(), 8),
        1,
    );
    let config = crate::common::loopback_config();
    let s = TestServer::serve(config, repo).await;
    let body = |timeout: Option<u64>| {
        let mut b = json!({"inputs": [{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]});
        if let Some(t) = timeout {
            b["parameters"] = json!({"timeout": t});
        }
        b
    };
    let busy = {
        let (client, url, b) = (s.http.clone(), s.url("/v2/models/fake/infer"), body(None));
        tokio::spawn(async move { client.post(url).json(&b).send().await.unwrap().status() })
    };
    wait_for(&factory, 1).await;
    let (status, resp) = s
        .post_json("/v2/models/fake/infer", &body(Some(20_000)))
        .await;
    assert_eq!(status, 504, "{resp}");
    assert!(
        resp["error"]
            .as_str()
            .unwrap()
            .contains("timed out before it could start")
    );
    let mut grpc = s.grpc().await;
    let grpc_request = |timeout_param: Option<i64>| {
        let mut parameters = std::collections::HashMap::new();
        if let Some(t) = timeout_param {
            parameters.insert(
                "timeout".to_string(),
                infergate_proto::inference::InferParameter {
                    parameter_choice: Some(
                        infergate_proto::inference::infer_parameter::ParameterChoice::Int64Param(t),
                    ),
                },
            );
        }
        infergate_proto::inference::ModelInferRequest {
            model_name: "fake".into(),
            parameters,
            inputs: vec![
                infergate_proto::inference::model_infer_request::InferInputTensor {
                    name: "INPUT0".into(),
                    datatype: "FP32".into(),
                    shape: vec![1, 1],
                    ..Default::default()
                },
            ],
            raw_input_contents: vec![vec![0u8; 4].into()],
            ..Default::default()
        }
    };
    let err = grpc
        .model_infer(grpc_request(Some(20_000)))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::DeadlineExceeded,
        "{}",
        err.message()
    );
    // The gRPC deadline is honoured too (the client gives up at the same moment, so look at
    // the server: the request is dropped as expired and never runs).
    let mut req = tonic::Request::new(grpc_request(None));
    req.set_timeout(Duration::from_millis(20));
    assert!(grpc.model_infer(req).await.is_err());
    assert_eq!(busy.await.unwrap(), 200);
    assert_eq!(
        factory.executions.load(Ordering::SeqCst),
        1,
        "no expired request ran"
    );
    let metrics = s.admin_get_text("/metrics").await;
    let count = |cause: &str| -> u64 {
        let prefix =
            format!(r#"infergate_rejected_requests_total{{model="fake",cause="{cause}"}} "#);
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |n| n.parse().unwrap())
    };
    assert_eq!(count("deadline"), 2, "{metrics}");
    // The gRPC caller hung up at its deadline: dropped as expired or as abandoned, never run.
    assert_eq!(count("deadline") + count("cancelled"), 3, "{metrics}");
    let (status, bad) = s
        .post_json(
            "/v2/models/fake/infer",
            &json!({"parameters": {"priority": -1}, "inputs": body(None)["inputs"]}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        bad["error"]
            .as_str()
            .unwrap()
            .contains("parameter 'priority'")
    );
    s.stop().await;
}

#[tokio::test]
async fn admission_sheds_load_and_rate_limits_before_decoding() {
    let config_model = ModelConfig {
        max_concurrent_requests: Some(1),
        ..ModelConfig::default()
    };
    let (repo, factory) = fake(Behavior::Slow(Duration::from_millis(300)), config_model, 2);
    let mut config = crate::common::loopback_config();
    config.limits.rate_limit_per_second = 1.0;
    config.limits.rate_limit_burst = 3;
    let s = TestServer::serve(config, repo).await;
    let body =
        json!({"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [1]}]});
    let busy = {
        let (client, url, b) = (s.http.clone(), s.url("/v2/models/fake/infer"), body.clone());
        tokio::spawn(async move {
            client
                .post(url)
                .header("x-api-key", "a")
                .json(&b)
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    wait_for(&factory, 1).await;
    // The model's single slot is taken: shed at once, even with a body that would not decode.
    let r = s
        .http
        .post(s.url("/v2/models/fake/infer"))
        .header("x-api-key", "b")
        .body("not json at all")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let msg: serde_json::Value = r.json().await.unwrap();
    assert!(
        msg["error"]
            .as_str()
            .unwrap()
            .contains("model 'fake' is at its concurrency limit"),
        "{msg}"
    );
    assert_eq!(busy.await.unwrap(), 200);
    // Client "c" has a burst of 3 at 1 request/s.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = s
            .http
            .post(s.url("/v2/models/fake/infer"))
            .header("x-api-key", "c")
            .json(&body)
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, vec![200, 200, 200, 429]);
    let mut grpc = s.grpc().await;
    let mut req = tonic::Request::new(infergate_proto::inference::ModelInferRequest {
        model_name: "fake".into(),
        ..Default::default()
    });
    req.metadata_mut().insert("x-api-key", "c".parse().unwrap());
    let err = grpc.model_infer(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(err.message().contains("rate limit"));
    s.stop().await;
}

#[tokio::test]
async fn global_concurrency_limit_sheds_with_503() {
    let (repo, factory) = fake(
        Behavior::Slow(Duration::from_millis(300)),
        ModelConfig::default(),
        2,
    );
    let mut config = crate::common::loopback_config();
    config.limits.max_concurrent_requests = 1;
    let listeners = Listeners::bind(&config.server).await.unwrap();
    drop(listeners);
    let s = TestServer::serve(config, repo).await;
    let body =
        json!({"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [1]}]});
    let busy = {
        let (client, url, b) = (s.http.clone(), s.url("/v2/models/fake/infer"), body.clone());
        tokio::spawn(async move { client.post(url).json(&b).send().await.unwrap().status() })
    };
    wait_for(&factory, 1).await;
    let (status, msg) = s.post_json("/v2/models/fake/infer", &body).await;
    assert_eq!(status, 503);
    assert!(
        msg["error"]
            .as_str()
            .unwrap()
            .contains("server is at its concurrency limit (1 requests in flight)")
    );
    assert_eq!(busy.await.unwrap(), 200);
    assert_eq!(
        s.post_json("/v2/models/fake/infer", &body).await.0,
        200,
        "readmitted once the slot frees"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_deadline_inside_the_batching_window_fails_on_time() {
    let settings = DynamicBatching {
        max_queue_delay_us: 200_000,
        ..DynamicBatching::default()
    };
    let (repo, factory) = fake(Behavior::Echo, batching(settings, 8), 1);
    let gateway = Gateway::new(Config::default(), repo).unwrap();
    let mut req = request(1, 1.0);
    req.parameters
        .push(("timeout".into(), ParamValue::Int64(20_000)));
    req.apply_parameters().unwrap();
    let started = std::time::Instant::now();
    let err = call(&gateway, req).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::DeadlineExceeded);
    assert!(
        started.elapsed() < Duration::from_millis(150),
        "failed after {:?}, not at its deadline",
        started.elapsed()
    );
    assert_eq!(factory.executions.load(Ordering::SeqCst), 0);
    // Without a deadline, a lone request waits for the window and then runs.
    let started = std::time::Instant::now();
    assert_eq!(
        call(&gateway, request(1, 2.0)).await.unwrap(),
        vec![2.0, 2.0]
    );
    assert!(
        started.elapsed() >= Duration::from_millis(190),
        "ran after {:?}",
        started.elapsed()
    );
}
