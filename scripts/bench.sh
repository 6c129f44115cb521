#!/usr/bin/env bash
# `make bench`: release build, benchmark fixture models from the recipe, infergate on loopback,
# the standard suite (in-process ceiling, HTTP JSON / binary / gRPC sweeps, oha cross-check),
# then BENCHMARKS.md and bench/*.svg are rewritten. Bounded: every run has a fixed duration.
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

echo "== infergate on loopback"
target/release/infergate serve --model-repository "$OUT/models" \
  --http-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 \
  > "$OUT/server.out" 2> "$OUT/server.log" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do grep -q "infergate serving" "$OUT/server.out" 2>/dev/null && break; sleep 0.1; done
HTTP=$(sed -n 's/.*http=\([^ ]*\).*/\1/p' "$OUT/server.out")
GRPC=$(sed -n 's/.*grpc=\([^ ]*\).*/\1/p' "$OUT/server.out")
[ -n "$HTTP" ] || { echo "server did not start"; cat "$OUT/server.log"; exit 1; }

for model in mlp_small mlp_large; do
  for protocol in http-json http-binary grpc; do
    url="http://$HTTP"; [ "$protocol" = grpc ] && url="grpc://$GRPC"
    echo "== $model $protocol concurrency $SWEEP"
    "$LOADTEST" --url "$url" --protocol "$protocol" --model "$model" --concurrency "$SWEEP" \
      --duration "$DURATION" --warmup "$WARMUP" --json --plot "bench/${model}_${protocol}.svg" \
      > "$OUT/results/${model}_${protocol}.json"
  done
done

OHA=${OHA:-.tools/bin/oha}
if [ -x "$OHA" ]; then
  echo "== cross-check with oha (HTTP JSON, mlp_small, same body)"
  "$VENV_PY" -c 'import json,random; random.seed(1); print(json.dumps({"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[round(random.uniform(-1,1),4) for _ in range(64)]}]}))' > "$OUT/body.json"
  for c in 8 32; do
    "$OHA" -z "$DURATION" -c "$c" -m POST -T application/json -D "$OUT/body.json" --no-tui \
      --output-format json "http://$HTTP/v2/models/mlp_small/infer" > "$OUT/results/oha_c$c.json"
    "$LOADTEST" --url "http://$HTTP" --model mlp_small --input-file "$OUT/body.json" --concurrency "$c" \
      --duration "$DURATION" --warmup 0s --json > "$OUT/results/loadtest_c$c.json"
  done
else
  echo "== oha not installed ($OHA): skipping the cross-check (make bench-tools installs it)"
fi

kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; trap - EXIT
python3 scripts/bench_report.py "$OUT/results" "$DURATION" "$WARMUP" "$SWEEP" > BENCHMARKS.md
echo "== BENCHMARKS.md written"
