//! The server's own view from the KServe statistics extension, as deltas over a run.

use infergate_proto::inference as pb;
use serde_json::Value;

use crate::record::ServerSplit;
use crate::target::Target;
use crate::{Args, Protocol};

/// Cumulative counters summed over the model's versions: `(count, ns)` pairs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    inference_count: u64,
    execution_count: u64,
    queue: (u64, u64),
    input: (u64, u64),
    infer: (u64, u64),
    output: (u64, u64),
}

/// Reads the statistics, or `None` when disabled or unsupported.
pub async fn fetch(target: &Target, args: &Args) -> Option<Snapshot> {
    if args.no_server_stats || args.input_file.is_some() {
        return None;
    }
    let mut conn = target.connect().await.ok()?;
    if target.protocol == Protocol::Grpc {
        let stats = conn
            .grpc()?
            .model_statistics(pb::ModelStatisticsRequest {
                name: args.model.clone(),
                version: args.version.clone().unwrap_or_default(),
            })
            .await
            .ok()?
            .into_inner();
        let d = |d: Option<pb::StatisticDuration>| d.map_or((0, 0), |d| (d.count, d.ns));
        let mut s = Snapshot::default();
        for m in stats.model_stats {
            let i = m.inference_stats.unwrap_or_default();
            add(
                &mut s,
                m.inference_count,
                m.execution_count,
                [
                    d(i.queue),
                    d(i.compute_input),
                    d(i.compute_infer),
                    d(i.compute_output),
                ],
            );
        }
        return Some(s);
    }
    let path = match &args.version {
        Some(v) => format!("/v2/models/{}/versions/{v}/stats", args.model),
        None => format!("/v2/models/{}/stats", args.model),
    };
    let (status, body) = conn.get(&path).await.ok()?;
    if status != 200 {
        return None;
    }
    let json: Value = serde_json::from_slice(&body).ok()?;
    let d = |v: &Value| {
        (
            v["count"].as_u64().unwrap_or(0),
            v["ns"].as_u64().unwrap_or(0),
        )
    };
    let mut s = Snapshot::default();
    for m in json["model_stats"].as_array()? {
        let i = &m["inference_stats"];
        add(
            &mut s,
            m["inference_count"].as_u64().unwrap_or(0),
            m["execution_count"].as_u64().unwrap_or(0),
            [
                d(&i["queue"]),
                d(&i["compute_input"]),
                d(&i["compute_infer"]),
                d(&i["compute_output"]),
            ],
        );
    }
    Some(s)
}

fn add(s: &mut Snapshot, inferences: u64, executions: u64, stages: [(u64, u64); 4]) {
    s.inference_count += inferences;
    s.execution_count += executions;
    for (acc, (count, ns)) in [&mut s.queue, &mut s.input, &mut s.infer, &mut s.output]
        .into_iter()
        .zip(stages)
    {
        acc.0 += count;
        acc.1 += ns;
    }
}

/// What happened on the server between two snapshots.
pub fn split(before: &Snapshot, after: &Snapshot) -> ServerSplit {
    let avg = |b: (u64, u64), a: (u64, u64)| {
        let count = a.0.saturating_sub(b.0);
        if count == 0 {
            0.0
        } else {
            a.1.saturating_sub(b.1) as f64 / count as f64 / 1000.0
        }
    };
    let inference_count = after.inference_count.saturating_sub(before.inference_count);
    let execution_count = after.execution_count.saturating_sub(before.execution_count);
    ServerSplit {
        inference_count,
        execution_count,
        avg_batch_size: if execution_count == 0 {
            0.0
        } else {
            inference_count as f64 / execution_count as f64
        },
        avg_queue_us: avg(before.queue, after.queue),
        avg_compute_input_us: avg(before.input, after.input),
        avg_compute_infer_us: avg(before.infer, after.infer),
        avg_compute_output_us: avg(before.output, after.output),
    }
}
