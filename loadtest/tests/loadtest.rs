//! The load generator against small in-process KServe V2 servers whose latency, stalls and
//! failures are controlled by the test: percentiles, open-loop intended-time accounting,
//! error breakdown, JSON fields and plots.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use clap::Parser;
use infergate_loadtest::{Args, output, run};
use infergate_proto::inference as pb;
use tokio::sync::Mutex;

/// What the fake server does with request number `n` (0-based, infer calls only).
#[derive(Clone, Copy)]
enum Behavior {
    /// Every twentieth request takes `slow`, the others `fast`.
    Bimodal { fast: Duration, slow: Duration },
    /// From request `at` on, everything waits until `pause` after that request arrived.
    StallOnce { at: u64, pause: Duration },
    /// n % 5 == 0 -> 503, n % 5 == 1 -> 400, else 200.
    Failing,
}

struct Fake {
    behavior: Behavior,
    count: AtomicU64,
    stall_until: Mutex<Option<Instant>>,
}

impl Fake {
    async fn handle(&self) -> StatusCode {
        let n = self.count.fetch_add(1, Ordering::SeqCst);
        match self.behavior {
            Behavior::Bimodal { fast, slow } => {
                tokio::time::sleep(if n % 20 == 19 { slow } else { fast }).await;
                StatusCode::OK
            }
            Behavior::StallOnce { at, pause } => {
                let until = {
                    let mut stall = self.stall_until.lock().await;
                    if n == at {
                        *stall = Some(Instant::now() + pause);
                    }
                    *stall
                };
                if let Some(until) = until {
                    tokio::time::sleep_until(until.into()).await;
                }
                StatusCode::OK
            }
            Behavior::Failing => match n % 5 {
                0 => StatusCode::SERVICE_UNAVAILABLE,
                1 => StatusCode::BAD_REQUEST,
                _ => StatusCode::OK,
            },
        }
    }
}

async fn http_server(behavior: Behavior) -> String {
    let fake = Arc::new(Fake {
        behavior,
        count: AtomicU64::new(0),
        stall_until: Mutex::new(None),
    });
    let app = Router::new()
        .route(
            "/v2/models/m",
            get(|| async { r#"{"name":"m","versions":["1"],"platform":"x","inputs":[{"name":"x","datatype":"FP32","shape":[-1,4]}],"outputs":[]}"# }),
        )
        .route(
            "/v2/models/m/infer",
            post(|State(f): State<Arc<Fake>>, body: axum::body::Bytes| async move {
                assert!(!body.is_empty());
                (f.handle().await, "{}")
            }),
        )
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn args(url: &str, extra: &[&str]) -> Args {
    let mut argv = vec![
        "infergate-loadtest",
        "--url",
        url,
        "--model",
        "m",
        "--threads",
        "2",
    ];
    argv.extend_from_slice(extra);
    Args::parse_from(argv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percentiles_reflect_the_latency_distribution() {
    let url = http_server(Behavior::Bimodal {
        fast: Duration::from_millis(5),
        slow: Duration::from_millis(60),
    })
    .await;
    let report = run(&args(
        &url,
        &["--requests", "100", "--warmup", "0s", "--concurrency", "1"],
    ))
    .await
    .unwrap();
    let r = &report.results[0];
    assert_eq!((r.requests, r.successes, r.errors), (100, 100, 0));
    // The sleeps are real, so a busy machine can only add to them; the upper bounds leave
    // room for that (a CI run once saw a 60 ms sleep take 143 ms) while still telling the
    // modes apart: the median is a fast request, p99 and the maximum are slow ones.
    assert!((5.0..30.0).contains(&r.p50_ms), "p50 {}", r.p50_ms);
    assert!((60.0..300.0).contains(&r.p99_ms), "p99 {}", r.p99_ms);
    assert!((60.0..300.0).contains(&r.max_ms), "max {}", r.max_ms);
    assert!(r.p99_ms <= r.max_ms, "p99 {} max {}", r.p99_ms, r.max_ms);
    // 95 fast + 5 slow requests, one at a time: at least 95*5 + 5*60 = 775 ms in all, so
    // at most 129 requests/s.
    assert!(
        (30.0..130.0).contains(&r.throughput),
        "throughput {}",
        r.throughput
    );
    // 95% are fast, so p90 is too, even if a few fast ones are delayed on a busy machine.
    assert!(
        r.p90_ms < 40.0,
        "p90 {}: 95% of requests are fast",
        r.p90_ms
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_counts_a_stall_from_the_intended_send_time() {
    let pause = Duration::from_millis(500);
    let url = http_server(Behavior::StallOnce { at: 100, pause }).await;
    let open = run(&args(
        &url,
        &[
            "--rate",
            "200",
            "--arrivals",
            "uniform",
            "--duration",
            "1500ms",
            "--warmup",
            "0s",
        ],
    ))
    .await
    .unwrap();
    let r = &open.results[0];
    assert_eq!(r.errors, 0);
    // About 100 of 300 requests were due during the 500 ms stall: their latency counts the wait.
    assert!(
        r.p99_ms >= 400.0,
        "open-loop p99 {} must show the stall",
        r.p99_ms
    );
    assert!(
        r.p90_ms >= 100.0,
        "open-loop p90 {} must show the stall",
        r.p90_ms
    );
    assert_eq!(r.rate, Some(200.0));

    // The same stall in closed loop hits one request only: coordinated omission hides it.
    let url = http_server(Behavior::StallOnce { at: 100, pause }).await;
    let closed = run(&args(
        &url,
        &[
            "--concurrency",
            "1",
            "--duration",
            "1500ms",
            "--warmup",
            "0s",
        ],
    ))
    .await
    .unwrap();
    let c = &closed.results[0];
    assert!(
        c.max_ms >= 450.0,
        "the stalled request itself: {}",
        c.max_ms
    );
    assert!(
        c.p90_ms < 50.0,
        "closed-loop p90 {} hides the stall",
        c.p90_ms
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_broken_down_by_status() {
    let url = http_server(Behavior::Failing).await;
    let report = run(&args(
        &url,
        &[
            "--requests",
            "100",
            "--warmup",
            "0s",
            "--concurrency",
            "1",
            "--protocol",
            "http-binary",
        ],
    ))
    .await
    .unwrap();
    let r = &report.results[0];
    assert_eq!(r.requests, 100);
    assert_eq!(r.successes, 60);
    assert_eq!(r.errors, 40);
    assert_eq!(r.errors_by_class.get("http 503"), Some(&20));
    assert_eq!(r.errors_by_class.get("http 400"), Some(&20));
}

struct GrpcFake {
    count: AtomicU64,
}

#[tonic::async_trait]
impl pb::grpc_inference_service_server::GrpcInferenceService for GrpcFake {
    async fn model_metadata(
        &self,
        _: tonic::Request<pb::ModelMetadataRequest>,
    ) -> Result<tonic::Response<pb::ModelMetadataResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::ModelMetadataResponse {
            name: "m".into(),
            inputs: vec![pb::model_metadata_response::TensorMetadata {
                name: "x".into(),
                datatype: "INT32".into(),
                shape: vec![-1, 16],
            }],
            ..Default::default()
        }))
    }

    async fn model_infer(
        &self,
        r: tonic::Request<pb::ModelInferRequest>,
    ) -> Result<tonic::Response<pb::ModelInferResponse>, tonic::Status> {
        let r = r.into_inner();
        assert_eq!(
            r.raw_input_contents[0].len(),
            3 * 16 * 4,
            "batch 3 of 16 INT32"
        );
        if self.count.fetch_add(1, Ordering::SeqCst).is_multiple_of(4) {
            return Err(tonic::Status::unavailable("busy"));
        }
        assert_eq!(
            (r.model_name.as_str(), r.inputs[0].shape.as_slice()),
            ("m", &[3, 16][..])
        );
        Ok(tonic::Response::new(pb::ModelInferResponse {
            model_name: r.model_name,
            outputs: vec![pb::model_infer_response::InferOutputTensor {
                name: "y".into(),
                datatype: "INT32".into(),
                shape: vec![3, 1],
                ..Default::default()
            }],
            raw_output_contents: vec![vec![0; 12].into()],
            ..Default::default()
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_with_raw_contents_and_its_error_codes() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = pb::grpc_inference_service_server::GrpcInferenceServiceServer::new(GrpcFake {
        count: AtomicU64::new(0),
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream_listener(listener)),
    );
    let url = format!("grpc://{addr}");
    let report = run(&args(
        &url,
        &[
            "--protocol",
            "grpc",
            "--batch",
            "3",
            "--requests",
            "40",
            "--warmup",
            "0s",
            "--concurrency",
            "2",
        ],
    ))
    .await
    .unwrap();
    let r = &report.results[0];
    assert_eq!(r.requests, 40);
    assert_eq!(r.errors_by_class.get("grpc Unavailable"), Some(&10));
    assert_eq!(r.successes, 30);
    assert_eq!(r.protocol, "grpc");
}

fn tokio_stream_listener(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |l| async move {
        let conn = l.accept().await.map(|(s, _)| s);
        Some((conn, l))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_json_fields_table_and_plots() {
    let url = http_server(Behavior::Bimodal {
        fast: Duration::from_millis(2),
        slow: Duration::from_millis(2),
    })
    .await;
    let a = args(
        &url,
        &[
            "--concurrency",
            "1,4",
            "--duration",
            "300ms",
            "--warmup",
            "100ms",
            "--json",
        ],
    );
    let report = run(&a).await.unwrap();
    assert_eq!(report.results.len(), 2);
    let doc = serde_json::to_value(&report).unwrap();
    for (i, c) in [1, 4].iter().enumerate() {
        let r = &doc["results"][i];
        assert_eq!(r["concurrency"], *c);
        for field in [
            "throughput",
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "p999_ms",
            "max_ms",
            "errors",
        ] {
            assert!(r[field].is_number(), "{field} missing in {r}");
        }
        assert!(!r["timeline"].as_array().unwrap().is_empty());
    }
    assert!(
        report.results[1].throughput > report.results[0].throughput * 1.5,
        "more concurrency, more throughput"
    );
    let table = output::table(&report);
    assert!(
        table.contains("http-json") && table.contains("c4"),
        "{table}"
    );
    let sweep = output::sweep_svg(&report.results);
    assert_eq!(sweep.matches("<polyline").count(), 3);
    assert!(sweep.starts_with("<svg"));
    let timeline = output::timeline_svg(&report.results[0]);
    assert_eq!(timeline.matches("<polyline").count(), 2);
}
