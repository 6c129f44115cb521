//! The cost of decoding one JSON infer body in-process: the server's reader (one pass where it
//! can) against serde_json alone, for an `mlp_large` request (784 FP32 values written as
//! serde_json writes them) with `datatype` before `data` (as Triton's and KServe's clients
//! write it) and after it (serde_json's own key order).
//!
//! `cargo run --release -p infergate-server --example json_decode [ROUNDS]`

use std::time::Instant;

use bytes::Bytes;
use infergate_server::decode;

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let mut state = 0x1234_5678_9abc_def0u64;
    let values: Vec<f32> = (0..784)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
        })
        .collect();
    let data = serde_json::to_string(&values).expect("numbers serialize");
    let bodies = [
        (
            "datatype before data",
            format!(
                r#"{{"inputs":[{{"name":"input","shape":[1,784],"datatype":"FP32","data":{data}}}]}}"#
            ),
        ),
        (
            "data before datatype",
            format!(
                r#"{{"inputs":[{{"data":{data},"datatype":"FP32","name":"input","shape":[1,784]}}]}}"#
            ),
        ),
    ];
    type Decoder =
        fn(
            &[u8],
            Bytes,
        )
            -> Result<infergate_server::core::InferRequest, infergate_server::error::ServeError>;
    let decoders: [(&str, Decoder); 2] =
        [("server", decode::http), ("serde_json", decode::http_serde)];
    println!("{} bytes a body, {rounds} rounds", bodies[0].1.len());
    for (order, body) in &bodies {
        let mut us = Vec::new();
        for (name, f) in decoders {
            // A first round warms up; the best of three timed rounds is kept.
            let mut best = f64::INFINITY;
            for _ in 0..4 {
                let start = Instant::now();
                for _ in 0..rounds {
                    std::hint::black_box(f(body.as_bytes(), Bytes::new()).expect("a valid body"));
                }
                best = best.min(start.elapsed().as_secs_f64() * 1e6 / rounds as f64);
            }
            us.push(best);
            println!("{order:22} {name:10} {best:6.2} µs");
        }
        println!("{order:22} server / serde_json {:.2}", us[0] / us[1]);
    }
}
