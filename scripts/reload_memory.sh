#!/usr/bin/env bash
# Memory across model reloads under load (a diagnostic for the soak's memory trend): a release
# server on 127.0.0.1 serves iris_mlp to a gRPC client at concurrency 8 while iris_mlp is
# reloaded through the management API every RELOAD_EVERY seconds (default 0.25) for
# RELOAD_SECONDS (default 180). Prints "seconds reloads rss_kb" every 40 reloads, then the end.
# Needs `make build` (or `make bench`) first: target/release/infergate and infergate-loadtest.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release
SECS=${RELOAD_SECONDS:-180}
EVERY=${RELOAD_EVERY:-0.25}
OUT=.bench/reload
rm -rf "$OUT" && mkdir -p "$OUT/repo"
cp -r models/repository/iris_mlp "$OUT/repo/"
"$BIN/infergate" serve --model-repository "$OUT/repo" --http-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 \
  --admin-addr 127.0.0.1:0 --insecure-admin >"$OUT/out" 2>"$OUT/log" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "infergate serving" "$OUT/out" && break; sleep 0.1; done
GRPC=$(sed -n 's/.*grpc=\([^ ]*\).*/\1/p' "$OUT/out")
ADMIN=$(sed -n 's/.*admin=\([^ ]*\).*/\1/p' "$OUT/out")
"$BIN/infergate-loadtest" --url "grpc://$GRPC" --protocol grpc --model iris_mlp --concurrency 8 \
  --duration "${SECS}s" --warmup 0s --threads 1 --json >"$OUT/load.json" 2>/dev/null &
CLIENT=$!
rss() { awk '/VmRSS/ {print $2}' "/proc/$SERVER/status"; }
start=$(date +%s)
n=0
echo "seconds reloads rss_kb"
while [ $(($(date +%s) - start)) -lt "$SECS" ]; do
  curl -sf -XPOST "http://$ADMIN/v2/repository/models/iris_mlp/load" >/dev/null && n=$((n + 1))
  if [ $((n % 40)) -eq 0 ]; then echo "$(($(date +%s) - start)) $n $(rss)"; fi
  sleep "$EVERY"
done
wait "$CLIENT"
echo "end $n $(rss)"
python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print(f\"client: {d['requests']} requests, {d['errors']} errors\")" "$OUT/load.json"
