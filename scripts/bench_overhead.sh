#!/usr/bin/env bash
# Observability overhead (section 6 of `make bench`, also `make bench-overhead` on its own):
# mlp_small at concurrency 32 over HTTP JSON and gRPC, with tracing at 100% (OTLP/HTTP to a
# loopback sink, scripts/otlp_sink.py) and the per-request metrics on, against both off, and a
# third server that samples OVERHEAD_SAMPLED_RATIO (0.1) of the requests. The three alternate
# OVERHEAD_ROUNDS times (default 3). The server is pinned to core 0, the
# client and the sink to core 1 (when taskset is there). Needs the release binaries and the
# fixture models in .bench/models (make bench builds both); writes .bench/results/overhead_*
# and prints the on/off ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=.bench
DURATION=${BENCH_DURATION:-5s}
WARMUP=${BENCH_WARMUP:-1s}
ROUNDS=${OVERHEAD_ROUNDS:-3}
# The third server samples this share of requests, as production would (the report's "sampled").
SAMPLED_RATIO=${OVERHEAD_SAMPLED_RATIO:-0.1}
LOADTEST=target/release/infergate-loadtest
# shellcheck source=scripts/bench_lib.sh
source scripts/bench_lib.sh
mkdir -p "$OUT/results"
rm -f "$OUT"/results/overhead_*
echo "$SAMPLED_RATIO" > "$OUT/results/overhead_sampled_ratio.txt"

echo "== observability overhead: tracing at 100% to an OTLP sink + per-request metrics, against both off"
PIN0=(); PIN1=()
if command -v taskset >/dev/null; then PIN0=(taskset -c 0); PIN1=(taskset -c 1); fi
rm -f "$OUT/sink.port"
"${PIN1[@]}" python3 scripts/otlp_sink.py "$OUT/sink.port" "$OUT/results/overhead_sink.json" &
SINK=$!
trap 'stop_server; kill $SINK 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do [ -s "$OUT/sink.port" ] && break; sleep 0.1; done
for round in $(seq 1 "$ROUNDS"); do
  for mode in off on sampled; do
    if [ "$mode" = off ]; then
      start_server "overhead_$mode" env INFERGATE_TELEMETRY__REQUEST_METRICS=false "${PIN0[@]}"
    else
      ratio=1; [ "$mode" = sampled ] && ratio=$SAMPLED_RATIO
      start_server "overhead_$mode" env INFERGATE_TELEMETRY__OTLP_ENDPOINT="http://127.0.0.1:$(cat "$OUT/sink.port")" \
        INFERGATE_TELEMETRY__OTLP_PROTOCOL=http/protobuf INFERGATE_TELEMETRY__SAMPLING_RATIO=$ratio "${PIN0[@]}"
    fi
    for protocol in http-json grpc; do
      url="http://$HTTP"; [ "$protocol" = grpc ] && url="grpc://$GRPC"
      "${PIN1[@]}" "$LOADTEST" --threads 1 --url "$url" --protocol "$protocol" --model mlp_small --concurrency 32 \
        --duration "$DURATION" --warmup "$WARMUP" --json > "$OUT/results/overhead_${mode}_${protocol}_$round.json"
    done
    sleep 1  # the batch processor exports every 500 ms
    curl -s "http://$ADMIN/metrics" | grep -E '^infergate_trace_spans_total' > "$OUT/results/overhead_spans_${mode}_$round.txt" || true
    stop_server
  done
done
kill "$SINK" 2>/dev/null || true; wait "$SINK" 2>/dev/null || true
trap - EXIT
python3 - "$OUT/results" "$ROUNDS" <<'PY'
import json, statistics, sys
results, rounds = sys.argv[1], int(sys.argv[2])
for protocol in ("http-json", "grpc"):
    rate = {m: statistics.median(json.load(open(f"{results}/overhead_{m}_{protocol}_{i}.json"))["throughput"]
                                 for i in range(1, rounds + 1)) for m in ("off", "on", "sampled")}
    print(f"{protocol}: off {rate['off']:.0f}/s, on {rate['on']:.0f}/s, on/off {rate['on'] / rate['off']:.2f}, "
          f"sampled {rate['sampled']:.0f}/s, sampled/off {rate['sampled'] / rate['off']:.2f}")
PY
