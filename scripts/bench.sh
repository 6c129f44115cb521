#!/usr/bin/env bash
# `make bench`: release build, benchmark fixture models from the recipe, infergate on loopback,
# the standard suite, then BENCHMARKS.md and bench/*.svg are rewritten. Every run is bounded.
#   1. in-process ceiling: one ONNX Runtime session, 1 intra-op thread, batch 1 and 32
#   2. HTTP JSON / HTTP binary / gRPC sweeps, batching off (MODEL) and on (MODEL_batch)
#   3. the cache hit path (mlp_small_cache, one distinct request)
#   4. overload: concurrency 512 against a batch queue bound of 256 (mlp_small_overload)
#   5. cross-check with oha (and wrk, when installed): server pinned to core 0, each client to core 1
#   6. observability overhead: tracing at 100% (OTLP/HTTP to a loopback sink) and per-request
#      metrics on, against both off
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=.bench
DURATION=${BENCH_DURATION:-5s}
WARMUP=${BENCH_WARMUP:-1s}
CEILING_SECONDS=${BENCH_CEILING_SECONDS:-5}
SWEEP=${BENCH_SWEEP:-1,8,32,128}
VENV_PY=${VENV_PY:-.venv/bin/python}
LOADTEST=target/release/infergate-loadtest
rm -rf "$OUT/results" && mkdir -p "$OUT/results" bench

echo "== build (release)"
cargo build --release --locked -p infergate-server -p infergate-loadtest --bins
cargo build --release --locked -p infergate-runtime --example ort_ceiling
echo "== fixture models"
"$VENV_PY" models/recipes/make_models.py --bench "$OUT/models"

echo "== in-process ceiling (one ort session, 1 intra-op thread)"
for model in mlp_small mlp_large; do
  for batch in 1 32; do
    target/release/examples/ort_ceiling "$OUT/models/$model/1/model.onnx" "$batch" "$CEILING_SECONDS" \
      | tee "$OUT/results/ceiling_${model}_b${batch}.json"
  done
done

# shellcheck source=scripts/bench_lib.sh
source scripts/bench_lib.sh
trap stop_server EXIT

echo "== infergate on loopback"
start_server server
for model in mlp_small mlp_small_batch mlp_large mlp_large_batch; do
  for protocol in http-json http-binary grpc; do
    url="http://$HTTP"; [ "$protocol" = grpc ] && url="grpc://$GRPC"
    echo "== $model $protocol concurrency $SWEEP"
    "$LOADTEST" --url "$url" --protocol "$protocol" --model "$model" --concurrency "$SWEEP" \
      --duration "$DURATION" --warmup "$WARMUP" --json --plot "bench/${model}_${protocol}.svg" \
      > "$OUT/results/${model}_${protocol}.json"
  done
done

echo "== cache hit path (mlp_small_cache, one distinct request)"
"$LOADTEST" --url "grpc://$GRPC" --protocol grpc --model mlp_small_cache --distinct 1 --concurrency 1,32 \
  --duration "$DURATION" --warmup "$WARMUP" --json > "$OUT/results/cache_grpc.json"
"$LOADTEST" --url "http://$HTTP" --protocol http-binary --model mlp_small_cache --distinct 1 --concurrency 1,32 \
  --duration "$DURATION" --warmup "$WARMUP" --json > "$OUT/results/cache_http-binary.json"

echo "== overload: concurrency 512 against a queue bound of 256"
rss() { awk '/VmRSS/ {print $2}' "/proc/$SERVER/status"; }
echo "{\"rss_kb_before\": $(rss)}" > "$OUT/results/overload_rss_before.json"
"$LOADTEST" --url "http://$HTTP" --protocol http-binary --model mlp_small_overload --concurrency 512 \
  --duration "$DURATION" --warmup "$WARMUP" --json --plot bench/overload_timeline.svg > "$OUT/results/overload.json"
# Between the runs: the first one grows the server to its working set for 512 connections; the
# second must not grow it further.
echo "{\"rss_kb_between\": $(rss)}" > "$OUT/results/overload_rss_between.json"
"$LOADTEST" --url "http://$HTTP" --protocol http-binary --model mlp_small_overload --concurrency 512 \
  --duration "$DURATION" --warmup "$WARMUP" --json > "$OUT/results/overload_again.json"
echo "{\"rss_kb_after\": $(rss)}" > "$OUT/results/overload_rss_after.json"
curl -s "http://$ADMIN/metrics" | grep -E '^infergate_rejected_requests_total' > "$OUT/results/overload_rejections.txt" || true
stop_server

OHA=${OHA:-.tools/bin/oha}
if [ -x "$OHA" ] && command -v taskset >/dev/null; then
  echo "== cross-check with oha (HTTP JSON, same body; server on core 0, client on core 1)"
  "$VENV_PY" -c 'import json,random; random.seed(1); print(json.dumps({"inputs":[{"name":"input","shape":[1,784],"datatype":"FP32","data":[round(random.uniform(-1,1),4) for _ in range(784)]}]}))' > "$OUT/body.json"
  "$VENV_PY" -c 'import sys; body = open(sys.argv[1]).read().strip(); print("wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = [[" + body + "]]")' \
    "$OUT/body.json" > "$OUT/post.lua"
  start_server pinned taskset -c 0
  # Alternate the tools three times each: single runs on a shared machine vary by 10-20%.
  for c in 8 32; do
    for i in 1 2 3; do
      taskset -c 1 "$OHA" -z "$DURATION" -c "$c" -m POST -T application/json -D "$OUT/body.json" --no-tui \
        --output-format json "http://$HTTP/v2/models/mlp_large/infer" > "$OUT/results/oha_c${c}_$i.json"
      taskset -c 1 "$LOADTEST" --threads 1 --url "http://$HTTP" --model mlp_large --input-file "$OUT/body.json" \
        --concurrency "$c" --duration "$DURATION" --warmup 0s --json > "$OUT/results/loadtest_c${c}_$i.json"
      if command -v wrk >/dev/null; then
        taskset -c 1 wrk -t1 -c"$c" -d"$DURATION" --latency -s "$OUT/post.lua" "http://$HTTP/v2/models/mlp_large/infer" \
          > "$OUT/results/wrk_c${c}_$i.txt"
      fi
    done
  done
  stop_server
else
  echo "== oha or taskset missing: skipping the cross-check (make bench-tools installs oha)"
fi
scripts/bench_overhead.sh

trap - EXIT
python3 scripts/bench_report.py "$OUT/results" "$DURATION" "$WARMUP" "$SWEEP" > BENCHMARKS.md
echo "== BENCHMARKS.md written"
