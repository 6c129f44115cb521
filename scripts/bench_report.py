#!/usr/bin/env python3
"""Renders .bench/results/*.json into BENCHMARKS.md (standard library only)."""
import json
import os
import platform
import subprocess
import sys

results, duration, warmup, sweep = sys.argv[1:5]
client_threads = os.environ.get("BENCH_CLIENT_THREADS", "1")
server_workers = os.environ.get("BENCH_SERVER_WORKERS", "1")


def load(name):
    path = os.path.join(results, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def runs(name):
    doc = load(name)
    return [] if doc is None else doc.get("results", [doc])


def at(name, concurrency):
    return next((r for r in runs(name) if r.get("concurrency") == concurrency), None)


def median(values):
    values = sorted(values)
    return values[len(values) // 2] if values else 0.0


def cpu_model():
    """The CPU's name, family/model, clock and widest vector extension: hosts that all call
    themselves "AMD EPYC" have differed by 2x in the in-process ceiling."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first CPU is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or "unknown"
    flags = set(fields.get("flags", "").split())
    widest = {"avx512f": "AVX-512", "avx2": "AVX2", "avx": "AVX", "sse4_2": "SSE4.2"}
    vector = next((label for flag, label in widest.items() if flag in flags), None)
    parts = [name]
    if "cpu family" in fields:
        parts.append(f"family {fields['cpu family']} model {fields.get('model', '?')}")
    if "cpu MHz" in fields:
        parts.append(f"{float(fields['cpu MHz']):.0f} MHz")
    if vector:
        parts.append(vector)
    return ", ".join(parts)


commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
out = []
w = out.append
w("# Benchmarks\n")
w("Written by `make bench` (`scripts/bench.sh`); rerun it to refresh this file and `bench/*.svg`. "
  "Where the time goes, from profiles of these scenarios: [bench/ANALYSIS.md](bench/ANALYSIS.md).\n")
w(f"- machine: {os.cpu_count()} cores ({cpu_model()}), shared and noisy; the load generator runs on the same two cores as the server, so every server number below is also limited by the client's CPU (its cost per request is in the tables); "
  f"the generator runs {client_threads} runtime thread(s) (`--threads {client_threads}`; one by default: on two cores shared with the server a second one cost more in wake-ups than it added)")
w(f"- commit: `{commit}`; release build; each scenario {duration} measured after a {warmup} warm-up; batch-1 requests; closed loop")
w(f"- server: `server.worker_threads = {server_workers}` (`BENCH_SERVER_WORKERS`; 0 is one per core) for the sweeps, the cache and the overload runs; the cross-check and overhead servers are pinned to one core")
w("- models: `mlp_small` (FP32 64→256→256→10, Gemm+Relu) and `mlp_large` (784→1024→1024→10), built by "
  "`models/recipes/make_models.py --bench`; every variant serves the same weights with `intra_op_threads = 1` and, except `_batch`, `instances = 2`; "
  "`max_batch_size = 128`; `_batch` serves one instance with `[dynamic_batching]`, `max_queue_delay_us = 0` (batches form while the instance is busy; on 2 cores one instance forming larger batches beat two) and `dispatch_ahead_rows = 8` (once 8 rows wait, the next batch is queued behind the running one)\n")

ceilings = {}
w("## In-process ceiling\n")
w("One ONNX Runtime session, 1 intra-op thread, called in a loop on one thread "
  "(`target/release/examples/ort_ceiling MODEL BATCH SECONDS`).\n")
w("| model | batch | calls/s | rows/s | p50 ms | p99 ms |")
w("|---|---:|---:|---:|---:|---:|")
for model in ("mlp_small", "mlp_large"):
    for batch in (1, 32):
        c = load(f"ceiling_{model}_b{batch}.json")
        if c:
            ceilings[(model, batch)] = c
            w(f"| {model} | {batch} | {c['calls_per_s']:.0f} | {c['rows_per_s']:.0f} | {c['p50_ms']:.3f} | {c['p99_ms']:.3f} |")
w("")

# The oha cross-check (the load-generator issue): medians of three alternating runs per tool.
rows = []
for c in (8, 32):
    ohas = [d for d in (load(f"oha_c{c}_{i}.json") for i in (1, 2, 3)) if d]
    lts = [d for d in (load(f"loadtest_c{c}_{i}.json") for i in (1, 2, 3)) if d]
    if ohas and lts:
        pct = [d.get("latencyPercentiles", {}) for d in ohas]
        rows.append((
            c,
            median([d["summary"]["requestsPerSec"] for d in ohas]),
            median([d["throughput"] for d in lts]),
            median([p.get("p50", 0) * 1000 for p in pct]),
            median([d["p50_ms"] for d in lts]),
            median([p.get("p99", 0) * 1000 for p in pct]),
            median([d["p99_ms"] for d in lts]),
            [round(d["summary"]["requestsPerSec"]) for d in ohas],
            [round(d["throughput"]) for d in lts],
        ))

# Targets of the gateway-stack issue, checked against this run.
w("## Targets (2 cores, load generator included)\n")
w("The throughput rows come from paired runs (`BENCH_PAIR_ROUNDS`, 3 by default): in each round the in-process "
  "ceiling is measured again and the server scenarios at concurrency 32 run right after it, on the sweep server, so "
  "that both sides of a ratio see the same neighbours on this shared machine; the verdict takes the median of the "
  "per-round ratios. The latency rows come from the sweeps below.\n")
w("| target | measured | verdict |")
w("|---|---|---|")


def verdict(ok):
    return "met" if ok else "**missed**"


def paired(model, batch, protocol):
    """Per-round (server req/s, ceiling rate, ratio) of the paired target runs (scripts/bench.sh)."""
    out = []
    for i in range(1, 10):
        c = load(f"pair_ceiling_{model}_b{batch}_{i}.json")
        r = at(f"pair_{model}_batch_{protocol}_{i}.json", 32)
        if not (c and r):
            break
        rate = c["calls_per_s"] if batch == 1 else c["rows_per_s"]
        out.append((r["throughput"], rate, r["throughput"] / rate))
    return out


for model, batch, unit, protocols in (
    ("mlp_small", 1, "batch-1 calls/s", (("http-json", 0.25), ("grpc", 0.30))),
    ("mlp_large", 32, "batch-32 rows/s", (("http-json", 0.8), ("http-binary", 0.8), ("grpc", 0.8))),
):
    for protocol, need in protocols:
        pairs = paired(model, batch, protocol)
        if pairs:
            ratio = median([p[2] for p in pairs])
            each = ", ".join(f"{p[0]:.0f}/{p[1]:.0f} = {p[2]:.2f}" for p in pairs)
            w(f"| {model}, c32, batching on, {protocol}: ≥ {need} × in-process {unit} | median {ratio:.2f} × (req/s over ceiling, round by round: {each}) | {verdict(ratio >= need)} |")
for protocol in ("grpc", "http-binary"):
    r = at(f"mlp_small_{protocol}.json", 1)
    if r:
        ok = r["p50_ms"] <= 0.12 and r["p99_ms"] <= 0.3
        w(f"| mlp_small, c1, {protocol}: p50 ≤ 0.12 ms, p99 ≤ 0.3 ms | p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms | {verdict(ok)} |")
over = runs("overload.json") + runs("overload_again.json")
before, between, after = (load(f"overload_rss_{at}.json") for at in ("before", "between", "after"))
if over and before and between and after:
    classes = set()
    for r in over:
        classes.update(r["errors_by_class"])
    only_503 = classes <= {"http 503"}
    # Flat: the second run leaves resident memory within 5% of where the first left it (the
    # first grows the server to its working set for 512 connections).
    growth = after["rss_kb_after"] / max(between["rss_kb_between"], 1) - 1
    p99s = ", ".join(f"{r['p99_ms']:.1f}" for r in over)
    mib = lambda kb: kb // 1024
    w(f"| overload, c512 vs queue bound 256: only successes or 503, memory flat (second run within 5% of the first) | errors {sorted(classes) or 'none'}; p99 of successes {p99s} ms (two runs); RSS {mib(before['rss_kb_before'])} → {mib(between['rss_kb_between'])} (after run 1) → {mib(after['rss_kb_after'])} MiB (after run 2, {100 * growth:+.0f}%) | {verdict(only_503 and growth <= 0.05)} |")


def overhead(protocol):
    """Median req/s with observability off and on, and every run's, for one protocol."""
    per = {}
    for mode in ("off", "on", "sampled"):
        docs = [load(f"overhead_{mode}_{protocol}_{i}.json") for i in (1, 2, 3)]
        per[mode] = [d["throughput"] for d in docs if d]
    return per


for protocol in ("http-json", "grpc"):
    per = overhead(protocol)
    if per["off"] and per["on"]:
        ratio = median(per["on"]) / median(per["off"])
        w(f"| tracing at 100% + metrics on vs both off, mlp_small c32 {protocol}: drop ≤ 10% | {ratio:.2f} × ({100 * (ratio - 1):+.1f}%) | {verdict(ratio >= 0.9)} |")
for c, orps, lrps, op50, lp50, op99, lp99, _, _ in rows:
    deltas = [(lrps - orps) / orps, (lp50 - op50) / op50, (lp99 - op99) / op99]
    w(f"| infergate-loadtest vs oha, mlp_large http-json c{c}: req/s, p50 and p99 within 15% | {100 * deltas[0]:+.1f}% req/s, {100 * deltas[1]:+.1f}% p50, {100 * deltas[2]:+.1f}% p99 | {verdict(all(abs(d) <= 0.15 for d in deltas))} |")
w("")


def sweep_table(models):
    w("| model | protocol | concurrency | req/s | × ceiling | p50 ms | p90 ms | p99 ms | p99.9 ms | errors | avg batch | server queue µs | server infer µs | client cpu % | client µs/req |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for model, base, per in models:
        ceiling = ceilings.get((base, per), {}).get("calls_per_s" if per == 1 else "rows_per_s")
        for protocol in ("http-json", "http-binary", "grpc"):
            for r in runs(f"{model}_{protocol}.json"):
                s = r.get("server") or {}
                ratio = f"{r['throughput'] / ceiling:.2f}" if ceiling else "-"
                w(f"| {model} | {protocol} | {r['concurrency']} | {r['throughput']:.0f} | {ratio} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | "
                  f"{r['p99_ms']:.3f} | {r['p999_ms']:.3f} | {r['errors']} | {s.get('avg_batch_size', 0):.1f} | {s.get('avg_queue_us', 0):.0f} | "
                  f"{s.get('avg_compute_infer_us', 0):.0f} | {r['client_cpu_percent']:.0f} | {r['client_cpu_us_per_request']:.1f} |")
    w("")


w("## Sweeps\n")
w(f"`infergate-loadtest --threads {client_threads} --url URL --protocol P --model M --concurrency {sweep} --duration {duration} --warmup {warmup} --json --plot bench/M_P.svg`. "
  "`× ceiling` is throughput over the in-process batch-1 call rate for `mlp_small` and over the batch-32 row rate for `mlp_large`. "
  "`avg batch`, `server queue µs` and `server infer µs` come from the server's statistics API (per request; infer is per execution).\n")
w("### mlp_small\n")
sweep_table([("mlp_small", "mlp_small", 1), ("mlp_small_batch", "mlp_small", 1)])
w("### mlp_large\n")
sweep_table([("mlp_large", "mlp_large", 32), ("mlp_large_batch", "mlp_large", 32)])
for model in ("mlp_small", "mlp_small_batch", "mlp_large", "mlp_large_batch"):
    for protocol in ("http-json", "http-binary", "grpc"):
        if os.path.exists(f"bench/{model}_{protocol}.svg"):
            w(f"![{model} {protocol}](bench/{model}_{protocol}.svg)")
w("")

w("## Cache hit path\n")
w("`mlp_small_cache` (response cache on) with `--distinct 1`: after the first request every request is a verified hit.\n")
w("| protocol | concurrency | req/s | p50 ms | p99 ms | errors |")
w("|---|---:|---:|---:|---:|---:|")
for protocol in ("grpc", "http-binary"):
    for r in runs(f"cache_{protocol}.json"):
        w(f"| {protocol} | {r['concurrency']} | {r['throughput']:.0f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['errors']} |")
w("")

w("## Overload\n")
w("`mlp_small_overload` has a batch queue bound of 256 (`max_queue_size`); 512 HTTP binary connections in closed loop, twice, "
  "server RSS read from /proc before, between and after the runs. Successes' latency is bounded by the queue, the rest are 503 + Retry-After.\n")
w("| run | req/s (successes) | errors | p50 ms | p99 ms | max ms |")
w("|---|---:|---|---:|---:|---:|")
for i, r in enumerate(over, 1):
    w(f"| {i} | {r['throughput']:.0f} | {r['errors_by_class'] or 'none'} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['max_ms']:.3f} |")
rej = os.path.join(results, "overload_rejections.txt")
if os.path.exists(rej):
    w("\nRejections counted by the server (`/metrics`):\n\n```")
    w(open(rej).read().strip())
    w("```")
if os.path.exists("bench/overload_timeline.svg"):
    w("\n![overload timeline](bench/overload_timeline.svg)")
w("")

w("## Cross-check with oha\n")
def wrk_run(path):
    """(requests/s, p50 ms) from `wrk --latency` output."""
    if not os.path.exists(path):
        return None
    rps = p50 = None
    for line in open(path):
        parts = line.split()
        if line.startswith("Requests/sec:"):
            rps = float(parts[1])
        elif parts[:1] == ["50%"]:
            value = parts[1]
            p50 = float(value[:-2]) if value.endswith("ms") else float(value[:-2]) / 1000 if value.endswith("us") else float(value[:-1]) * 1000
    return (rps, p50) if rps else None


if rows:
    w("Same server (pinned to core 0 with `taskset -c 0`), model `mlp_large`, HTTP JSON, the same request body, closed loop; "
      f"each client pinned to core 1 and run one after the other: `oha -z {duration} -c C -m POST -T application/json -D body.json --no-tui --output-format json URL` "
      f"and `infergate-loadtest --threads 1 --input-file body.json --concurrency C --duration {duration}`, alternating three times; "
      "medians below, every run's req/s in the last columns. Pinning keeps the two clients' different CPU costs "
      "from changing what the server gets (neither client uses more than about 20% of its core here). "
      "oha asks for compressed answers (`Accept-Encoding: gzip, compress, deflate, br`) and the others do not; "
      "these answers are about 350 bytes, under the server's `server.compress_min_bytes` (1 KiB), so every tool gets the same plain answer.\n")
    w("| concurrency | oha req/s | loadtest req/s | Δ req/s | oha p50 ms | loadtest p50 ms | Δ p50 | oha p99 ms | loadtest p99 ms | oha runs | loadtest runs |")
    w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for c, orps, lrps, op50, lp50, op99, lp99, oruns, lruns in rows:
        w(f"| {c} | {orps:.0f} | {lrps:.0f} | {100 * (lrps - orps) / orps:+.1f}% | {op50:.3f} | {lp50:.3f} | {100 * (lp50 - op50) / op50:+.1f}% | {op99:.3f} | {lp99:.3f} | {oruns} | {lruns} |")
    wrk_rows = []
    for c in (8, 32):
        runs_w = [r for r in (wrk_run(os.path.join(results, f"wrk_c{c}_{i}.txt")) for i in (1, 2, 3)) if r]
        lts = [d for d in (load(f"loadtest_c{c}_{i}.json") for i in (1, 2, 3)) if d]
        if runs_w and lts:
            wrk_rows.append((c, median([r[0] for r in runs_w]), median([d["throughput"] for d in lts]),
                             median([r[1] for r in runs_w]), median([d["p50_ms"] for d in lts]), [round(r[0]) for r in runs_w]))
    if wrk_rows:
        w("")
        w("A second independent tool in the same rounds: `wrk -t1 -cC -dD --latency -s post.lua URL` (Debian's wrk 4.1, same body, pinned to core 1).\n")
        w("| concurrency | wrk req/s | loadtest req/s | Δ req/s | wrk p50 ms | loadtest p50 ms | Δ p50 | wrk runs |")
        w("|---:|---:|---:|---:|---:|---:|---:|---|")
        for c, wrps, lrps, wp50, lp50, wruns in wrk_rows:
            w(f"| {c} | {wrps:.0f} | {lrps:.0f} | {100 * (lrps - wrps) / wrps:+.1f}% | {wp50:.3f} | {lp50:.3f} | {100 * (lp50 - wp50) / wp50:+.1f}% | {wruns} |")
else:
    w("oha was not installed when this was written (`make bench-tools`), so there is no cross-check.")
w("")

w("## Observability overhead\n")
spans = {}
for i in (1, 2, 3):
    path = os.path.join(results, f"overhead_spans_on_{i}.txt")
    if os.path.exists(path):
        for line in open(path):
            label, value = line.rsplit(" ", 1)
            result = label.split('result="')[1].split('"')[0]
            spans[result] = spans.get(result, 0) + int(float(value))
sink = load("overhead_sink.json")
ratio_path = os.path.join(results, "overhead_sampled_ratio.txt")
sampled_ratio = open(ratio_path).read().strip() if os.path.exists(ratio_path) else "?"
if overhead("grpc")["off"]:
    w("`mlp_small`, concurrency 32, batch-1 requests, closed loop, three rounds alternating three servers: **off** "
      "(`INFERGATE_TELEMETRY__REQUEST_METRICS=false`, no trace export) and **on** (per-request metrics plus every request "
      "traced, `INFERGATE_TELEMETRY__SAMPLING_RATIO=1`, exported over OTLP/HTTP protobuf to `scripts/otlp_sink.py` on loopback). "
      "The server is pinned to core 0; the load generator (`--threads 1`) and the sink share core 1, so the sink's work "
      "takes from the client, not the server. A request makes 5 spans (infer, decode, validate, execute, encode). "
      f"A third server, **sampled**, is the on server tracing a share of {sampled_ratio} of the requests, as production would; "
      "a request it does not sample makes no span at all.\n")
    w("| protocol | off req/s (median) | on req/s (median) | on / off | sampled req/s (median) | sampled / off | off runs | on runs | sampled runs |")
    w("|---|---:|---:|---:|---:|---:|---|---|---|")
    for protocol in ("http-json", "grpc"):
        per = overhead(protocol)
        if per["off"] and per["on"]:
            off = median(per["off"])
            on = median(per["on"])
            sampled = median(per["sampled"]) if per["sampled"] else float("nan")
            w(f"| {protocol} | {off:.0f} | {on:.0f} | {on / off:.3f} | {sampled:.0f} | {sampled / off:.3f} | {[round(x) for x in per['off']]} | {[round(x) for x in per['on']]} | {[round(x) for x in per['sampled']]} |")
    if spans:
        w(f"\nSpans over the three traced servers: {spans.get('exported', 0)} exported, {spans.get('dropped', 0)} dropped "
          f"(export queue full), {spans.get('failed', 0)} failed"
          + (f"; the sink received {sink['exports']} exports, {sink['bytes'] / 1e6:.1f} MB." if sink else "."))
else:
    w("Not measured in this run.")
w("")
print("\n".join(out))
