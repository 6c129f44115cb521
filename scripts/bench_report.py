#!/usr/bin/env python3
"""Renders .bench/results/*.json into BENCHMARKS.md (standard library only)."""
import glob
import json
import os
import platform
import subprocess
import sys

results, duration, warmup, sweep = sys.argv[1:5]


def load(name):
    path = os.path.join(results, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
out = []
w = out.append
w("# Benchmarks\n")
w("Written by `make bench` (`scripts/bench.sh`); rerun it to refresh this file and `bench/*.svg`.\n")
w(f"- machine: {os.cpu_count()} cores ({cpu_model()}), shared and noisy; the load generator runs on the same cores as the server")
w(f"- commit: `{commit}`; release build; each scenario {duration} measured after a {warmup} warm-up; batch-1 requests")
w("- models: `mlp_small` (FP32 64→256→256→10, Gemm+Relu) and `mlp_large` (784→1024→1024→10), built by "
  "`models/recipes/make_models.py --bench`; server config `instances = 2`, `intra_op_threads = 1`, `max_batch_size = 128`")
w("- dynamic batching is not built yet (issue 3), so every row below is \"batching off\"; the response cache (issue 3) is not built either\n")

w("## In-process ceiling\n")
w("One ONNX Runtime session, 1 intra-op thread, called in a loop on one thread "
  "(`target/release/examples/ort_ceiling MODEL BATCH SECONDS`).\n")
w("| model | batch | calls/s | rows/s | p50 ms | p99 ms |")
w("|---|---:|---:|---:|---:|---:|")
ceilings = {}
for model in ("mlp_small", "mlp_large"):
    for batch in (1, 32):
        c = load(f"ceiling_{model}_b{batch}.json")
        if c:
            ceilings[(model, batch)] = c
            w(f"| {model} | {batch} | {c['calls_per_s']:.0f} | {c['rows_per_s']:.0f} | {c['p50_ms']:.3f} | {c['p99_ms']:.3f} |")
w("")

w("## infergate, closed loop\n")
w(f"`infergate-loadtest --url URL --protocol P --model M --concurrency {sweep} --duration {duration} --warmup {warmup} --json --plot bench/M_P.svg`\n")
for model in ("mlp_small", "mlp_large"):
    w(f"### {model}\n")
    base = ceilings.get((model, 1))
    w("| protocol | concurrency | req/s | × ceiling (batch-1 calls/s) | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | client cpu % | client µs/req | server queue µs | server infer µs |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for protocol in ("http-json", "http-binary", "grpc"):
        doc = load(f"{model}_{protocol}.json")
        if not doc:
            continue
        for r in doc.get("results", [doc]):
            ratio = f"{r['throughput'] / base['calls_per_s']:.2f}" if base else "-"
            s = r.get("server") or {}
            w(f"| {protocol} | {r['concurrency']} | {r['throughput']:.0f} | {ratio} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | "
              f"{r['p99_ms']:.3f} | {r['p999_ms']:.3f} | {r['errors']} | {r['client_cpu_percent']:.0f} | {r['client_cpu_us_per_request']:.1f} | "
              f"{s.get('avg_queue_us', 0):.0f} | {s.get('avg_compute_infer_us', 0):.0f} |")
    w("")
    for protocol in ("http-json", "http-binary", "grpc"):
        if os.path.exists(f"bench/{model}_{protocol}.svg"):
            w(f"![{model} {protocol}](bench/{model}_{protocol}.svg)")
    w("")

w("## Cross-check with oha\n")
rows = []
for c in (8, 32):
    oha, lt = load(f"oha_c{c}.json"), load(f"loadtest_c{c}.json")
    if not (oha and lt):
        continue
    summary = oha["summary"]
    pct = oha.get("latencyPercentiles", {})
    oha_rps = summary["requestsPerSec"]
    oha_p50 = pct.get("p50", 0) * 1000
    oha_p99 = pct.get("p99", 0) * 1000
    rows.append((c, oha_rps, lt["throughput"], oha_p50, lt["p50_ms"], oha_p99, lt["p99_ms"]))
if rows:
    w("Same server, model `mlp_small`, HTTP JSON, the same request body, closed loop, run one after the other: "
      f"`oha -z {duration} -c C -m POST -T application/json -D body.json --no-tui --output-format json URL` against "
      f"`infergate-loadtest --input-file body.json --concurrency C --duration {duration}`.\n")
    w("| concurrency | oha req/s | loadtest req/s | Δ | oha p50 ms | loadtest p50 ms | oha p99 ms | loadtest p99 ms |")
    w("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c, orps, lrps, op50, lp50, op99, lp99 in rows:
        w(f"| {c} | {orps:.0f} | {lrps:.0f} | {100 * (lrps - orps) / orps:+.1f}% | {op50:.3f} | {lp50:.3f} | {op99:.3f} | {lp99:.3f} |")
else:
    w("oha was not installed when this was written (`make bench-tools`), so there is no cross-check.")
w("")
print("\n".join(out))
