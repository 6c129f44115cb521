#!/usr/bin/env bash
# The load generator against independent tools (section 5 of `make bench`, also
# `make bench-crosscheck` on its own): the server pinned to core 0 serves mlp_large; oha,
# infergate-loadtest and (when installed) wrk, each pinned to core 1, drive HTTP JSON at
# concurrency 8 and 32 with the same body, one after the other, three rounds. Needs the
# release binaries and the fixture models in .bench/models (make bench builds both); writes
# .bench/results/{oha,loadtest,wrk}_* and prints the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=.bench
DURATION=${BENCH_DURATION:-5s}
VENV_PY=${VENV_PY:-.venv/bin/python}
LOADTEST=target/release/infergate-loadtest
# shellcheck source=scripts/bench_lib.sh
source scripts/bench_lib.sh
mkdir -p "$OUT/results"
rm -f "$OUT"/results/oha_* "$OUT"/results/loadtest_* "$OUT"/results/wrk_*
OHA=${OHA:-.tools/bin/oha}
if [ -x "$OHA" ] && command -v taskset >/dev/null; then
  echo "== cross-check with oha (HTTP JSON, same body; server on core 0, client on core 1)"
  "$VENV_PY" -c 'import json,random; random.seed(1); print(json.dumps({"inputs":[{"name":"input","shape":[1,784],"datatype":"FP32","data":[round(random.uniform(-1,1),4) for _ in range(784)]}]}))' > "$OUT/body.json"
  "$VENV_PY" -c 'import sys; body = open(sys.argv[1]).read().strip(); print("wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = [[" + body + "]]")' \
    "$OUT/body.json" > "$OUT/post.lua"
  trap stop_server EXIT
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
  trap - EXIT
else
  echo "== oha or taskset missing: skipping the cross-check (make bench-tools installs oha)"
fi
python3 - "$OUT/results" <<'PY'
import glob, json, statistics, sys
results = sys.argv[1]
for c in (8, 32):
    oha = [json.load(open(p)) for p in sorted(glob.glob(f"{results}/oha_c{c}_*.json"))]
    lt = [json.load(open(p)) for p in sorted(glob.glob(f"{results}/loadtest_c{c}_*.json"))]
    if oha and lt:
        o, l = statistics.median(d["summary"]["requestsPerSec"] for d in oha), statistics.median(d["throughput"] for d in lt)
        op50, lp50 = statistics.median(d["latencyPercentiles"]["p50"] * 1000 for d in oha), statistics.median(d["p50_ms"] for d in lt)
        print(f"c{c}: oha {o:.0f}/s p50 {op50:.3f} ms, loadtest {l:.0f}/s p50 {lp50:.3f} ms: {100 * (l - o) / o:+.1f}% req/s, {100 * (lp50 - op50) / op50:+.1f}% p50")
PY
