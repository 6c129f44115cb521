#!/usr/bin/env bash
# `make bench-broker` (and part of `make bench`): asynchronous inference over NATS JetStream
# against the HTTP path of the same server, in pairs. One release server serves the demo
# `simple` model over HTTP and from a `[[consumers]]` entry (prefetch 64); each round queues
# BENCH_BROKER_REQUESTS requests on the stream and reads every reply (`nats_producer`), then
# runs infergate-loadtest on HTTP JSON at concurrency 64 (the prefetch) for a few seconds.
# Writes .bench/results/broker.md.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=.bench/broker
RESULTS=.bench/results
N=${BENCH_BROKER_REQUESTS:-20000}
ROUNDS=${BENCH_BROKER_ROUNDS:-3}
HTTP_SECONDS=${BENCH_BROKER_HTTP_SECONDS:-5}
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$PWD/.ort/libonnxruntime.so.1.31.1}
NATS=$(PATH="$PATH:/usr/sbin" command -v nats-server) || { echo "nats-server missing: make services"; exit 1; }
rm -rf "$OUT" && mkdir -p "$OUT/nats" "$RESULTS"

cargo build --release --locked -p infergate-server --bin infergate --example nats_producer \
  -p infergate-loadtest --bin infergate-loadtest

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$NATS" -a 127.0.0.1 -p "$port" -js -sd "$OUT/nats" > "$OUT/nats.log" 2>&1 &
NATS_PID=$!
trap 'kill $SERVER $NATS_PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

cat > "$OUT/infergate.toml" <<EOF
[server]
http_addr = "127.0.0.1:0"
grpc_addr = "127.0.0.1:0"
admin_addr = "127.0.0.1:0"
[models]
repository = "$PWD/models/repository"
[[consumers]]
name = "bench"
url = "nats://127.0.0.1:$port"
stream = "INFER"
subject = "infer.simple"
model = "simple"
prefetch = 64
EOF
target/release/infergate serve --insecure-admin --config "$OUT/infergate.toml" > "$OUT/server.out" 2> "$OUT/server.log" &
SERVER=$!
for _ in $(seq 300); do grep -q "infergate serving" "$OUT/server.out" 2>/dev/null && break; sleep 0.1; done
HTTP=$(sed -n 's/.*http=\([^ ]*\).*/\1/p' "$OUT/server.out")
[ -n "$HTTP" ] || { echo "server did not start"; cat "$OUT/server.log"; exit 1; }
# The consumer makes its stream once it is connected.
for _ in $(seq 100); do grep -q "consumer" "$OUT/server.log" && break; sleep 0.1; done
sleep 1

for round in $(seq "$ROUNDS"); do
  target/release/examples/nats_producer "nats://127.0.0.1:$port" infer.simple "$N" > "$OUT/broker_$round.json"
  echo "== round $round broker: $(cat "$OUT/broker_$round.json")"
  target/release/infergate-loadtest --url "http://$HTTP" --protocol http-json --model simple \
    --concurrency 64 --duration "${HTTP_SECONDS}s" --warmup 1s --json > "$OUT/http_$round.json"
  echo "== round $round http: $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["throughput"])' "$OUT/http_$round.json")"
done

python3 - "$OUT" "$ROUNDS" "$N" "$HTTP_SECONDS" > "$RESULTS/broker.md" <<'PY'
import json, statistics, sys
out, rounds, n, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def http_rps(path):
    d = json.load(open(path))
    return float((d["results"][0] if "results" in d else d)["throughput"])
rows, ratios = [], []
for r in range(1, rounds + 1):
    b = json.load(open(f"{out}/broker_{r}.json"))
    h = http_rps(f"{out}/http_{r}.json")
    ratio = b["steady_replies_per_s"] / h
    ratios.append(ratio)
    rows.append(f"| {r} | {b['steady_replies_per_s']:.0f} | {b['overall_replies_per_s']:.0f} | {b['answered']} / {b['requests']} | {b['wrong']} | {h:.0f} | {ratio:.2f} |")
print("## Asynchronous inference (NATS JetStream)")
print()
print("2 cores, shared and noisy; nats-server, the server and the load generator on the same machine.")
print(f"Model: the demo `simple` (INT32 [1, 16] sums). Each round: {n} requests queued on a JetStream")
print("stream and every reply read (`server/examples/nats_producer.rs`; replies/s over the middle 80%")
print("of the replies, and overall from the first publication), then HTTP JSON on the same server")
print(f"at concurrency 64 (the consumer's prefetch) for {seconds} s (`infergate-loadtest`).")
print()
print("| round | broker replies/s (steady) | broker replies/s (overall) | answered | wrong | HTTP JSON req/s (c=64) | broker / HTTP |")
print("|---|---|---|---|---|---|---|")
print("\n".join(rows))
print()
print(f"Median broker / HTTP: **{statistics.median(ratios):.2f}**.")
print()
print("Command: `make bench-broker` (also run by `make bench`).")
PY
cat "$RESULTS/broker.md"
