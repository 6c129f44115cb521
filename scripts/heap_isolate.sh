#!/usr/bin/env bash
# Which activity grows the Rust heap? A diagnostic for the soak's memory trend
# (docs/reliability.md). Starts a release server built with the heap-stats feature on
# 127.0.0.1 (iris_mlp and simple from models/repository, `simple` with a 256 KiB response cache
# and a cache-less copy `plain`, and a registry model `iris` with two versions), runs ROUNDS
# (default 4) rounds of 20 s of one activity, and prints the live Rust heap bytes
# (infergate_heap_bytes{kind="rust_live"}) at idle before the first round and after each.
#   ACTIVITY: cache (HTTP binary c4 on `simple`, DISTINCT distinct requests, default 20000),
#             binary (the same on `plain`), json (HTTP JSON c8 on `iris`), grpc (gRPC c8 on
#             iris_mlp), alias (json plus four alias moves per round), grpcreload (grpc plus
#             one reload per round)
# Build first: cargo build --release --features infergate-server/heap-stats \
#   -p infergate-server -p infergate-loadtest --bins
# Usage: scripts/heap_isolate.sh ACTIVITY [ROUNDS]
# With HEAPTRACK=FILE the server runs under heaptrack (which needs glibc's malloc: build with
# --features infergate-server/heap-stats,infergate-server/system-alloc and, for readable stacks,
# CARGO_PROFILE_RELEASE_DEBUG=line-tables-only; BIN names that build's directory) and is
# killed after the last round, so FILE holds every allocation still live then. Two runs with
# different ROUNDS, compared with `heaptrack_print --diff`, show where the heap grows.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
ACTIVITY=${1:?activity}
ROUNDS=${2:-4}
W=.bench/heap/$ACTIVITY
rm -rf "$W" && mkdir -p "$W/repo"
cp -r models/repository/iris_mlp models/repository/simple "$W/repo/"
cp -r "$W/repo/simple" "$W/repo/plain"
printf '\n[response_cache]\nmax_bytes = 262144\n' >>"$W/repo/simple/config.toml"
reg() { "$BIN/infergate" registry --registry "$W/reg" --author heap "$@" >/dev/null; }
reg import --name iris models/repository/iris_mlp/1/model.onnx
reg import --name iris models/repository/iris_mlp/2/model.onnx
reg alias iris production 1
printf '[models]\nregistry_poll_ms = 200\n' >"$W/config.toml"
${HEAPTRACK:+heaptrack -o "$HEAPTRACK"} "$BIN/infergate" serve --registry "$W/reg" --model-repository "$W/repo" --config "$W/config.toml" \
  --http-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 --insecure-admin >"$W/out" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 600); do grep -q "infergate serving:" "$W/out" && break; sleep 0.1; done
line=$(grep -m1 "infergate serving:" "$W/out")
HTTP=$(sed -E 's/.*http=([0-9.:]+).*/\1/' <<<"$line")
GRPC=$(sed -E 's/.*grpc=([0-9.:]+).*/\1/' <<<"$line")
ADMIN=$(sed -E 's/.*admin=([0-9.:]+).*/\1/' <<<"$line")
live() {
  sleep 1
  curl -s "http://$ADMIN/metrics" | awk '/kind="rust_live"/ {print $2}'
}
load() { "$BIN/infergate-loadtest" --duration 20s --warmup 0s --threads 1 --json "$@" >/dev/null 2>&1; }
[ -n "$(live)" ] || { echo "no rust_live series: build with --features infergate-server/heap-stats"; exit 1; }
echo "round live_bytes"
echo "0 $(live)"
for r in $(seq "$ROUNDS"); do
  case $ACTIVITY in
    cache) load --url "http://$HTTP" --protocol http-binary --model simple --concurrency 4 --distinct "${DISTINCT:-20000}" --seed "$r" ;;
    binary) load --url "http://$HTTP" --protocol http-binary --model plain --concurrency 4 --distinct "${DISTINCT:-20000}" --seed "$r" ;;
    json) load --url "http://$HTTP" --protocol http-json --model iris --concurrency 8 ;;
    grpc) load --url "grpc://$GRPC" --protocol grpc --model iris_mlp --concurrency 8 ;;
    alias)
      load --url "http://$HTTP" --protocol http-json --model iris --concurrency 8 &
      client=$!
      for i in 1 2 3 4; do sleep 4; reg alias iris production $(((r * 4 + i) % 2 + 1)); done
      wait "$client" ;;
    grpcreload)
      load --url "grpc://$GRPC" --protocol grpc --model iris_mlp --concurrency 8 &
      client=$!
      sleep 10
      curl -sf -XPOST "http://$ADMIN/v2/repository/models/iris_mlp/load" >/dev/null
      wait "$client" ;;
    *) echo "unknown activity $ACTIVITY"; exit 2 ;;
  esac
  echo "$r $(live)"
done
if [ -n "${HEAPTRACK:-}" ]; then
  # Kill the server itself (heaptrack's wrapper then finishes writing FILE).
  for p in $(pgrep -f -- "--config $W/config.toml"); do
    [ "$(cat "/proc/$p/comm" 2>/dev/null)" = infergate ] && kill -9 "$p"
  done
  wait "$SERVER" 2>/dev/null || true
fi
