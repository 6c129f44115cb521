//! The producer of `make bench-broker`: queues N inference requests for the demo `simple`
//! model on a JetStream stream (each publication acknowledged by the broker, a window of them
//! in flight), reads the replies from a core subscription, and prints one JSON line: replies
//! per second over the steady middle of the run (10% to 90% of the replies), overall, and the
//! count of wrong or missing answers.
//!
//! `nats_producer NATS_URL SUBJECT N`

use std::future::IntoFuture as _;
use std::time::{Duration, Instant};

use futures::StreamExt as _;

fn request(i: u32) -> Vec<u8> {
    let input0: Vec<u32> = (0..16).map(|k| i + k).collect();
    serde_json::to_vec(&serde_json::json!({
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": input0},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": vec![1; 16]},
        ],
        "outputs": [{"name": "OUTPUT0"}],
    }))
    .expect("a JSON body")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, subject, n] = args.as_slice() else {
        anyhow::bail!("usage: nats_producer NATS_URL SUBJECT N");
    };
    let n: u32 = n.parse()?;
    let client = async_nats::connect(url.as_str()).await?;
    let js = async_nats::jetstream::new(client.clone());
    let reply_subject = format!("bench.replies.{}", std::process::id());
    let mut replies = client.subscribe(reply_subject.clone()).await?;
    client.flush().await?;

    let reader = tokio::spawn(async move {
        let mut at = Vec::with_capacity(n as usize);
        let mut wrong = 0u32;
        while (at.len() as u32) < n {
            let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(60), replies.next()).await
            else {
                break;
            };
            at.push(Instant::now());
            let id: u32 = msg
                .headers
                .as_ref()
                .and_then(|h| h.get("Infergate-Request-Id"))
                .and_then(|v| v.as_str().parse().ok())
                .unwrap_or(u32::MAX);
            let ok = serde_json::from_slice::<serde_json::Value>(&msg.payload)
                .ok()
                .and_then(|v| {
                    let out = v["outputs"][0]["data"].as_array()?.clone();
                    Some(out.len() == 16 && out[0].as_u64()? == u64::from(id) + 1)
                })
                .unwrap_or(false);
            wrong += u32::from(!ok);
        }
        (at, wrong)
    });

    let started = Instant::now();
    let mut acks = futures::stream::FuturesUnordered::new();
    for i in 0..n {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Infergate-Request-Id", i.to_string().as_str());
        headers.insert("Reply-To", reply_subject.as_str());
        acks.push(
            js.publish_with_headers(subject.clone(), headers, request(i).into())
                .await?
                .into_future(),
        );
        while acks.len() >= 256 {
            acks.next().await.transpose()?;
        }
    }
    while let Some(ack) = acks.next().await {
        ack?;
    }
    let published = started.elapsed();
    let (at, wrong) = reader.await?;
    let answered = at.len();
    let steady = if answered >= 10 {
        let (a, b) = (answered / 10, answered * 9 / 10);
        (b - a) as f64 / (at[b - 1] - at[a]).as_secs_f64().max(1e-9)
    } else {
        0.0
    };
    let overall = answered as f64 / at.last().map_or(1e-9, |t| (*t - started).as_secs_f64());
    println!(
        "{}",
        serde_json::json!({
            "requests": n,
            "answered": answered,
            "wrong": wrong,
            "missing": n as usize - answered,
            "published_s": published.as_secs_f64(),
            "steady_replies_per_s": steady,
            "overall_replies_per_s": overall,
        })
    );
    Ok(())
}
