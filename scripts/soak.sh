#!/usr/bin/env bash
# Soak (`make soak`): SOAK_DURATION seconds (default 1800) of mixed load against the release
# server, with periodic hot swaps and response-cache churn. Every SOAK_SEGMENT seconds
# (default 30) it records the server's resident memory (in all, and its anonymous and
# file-backed parts), open file descriptors and threads, and
# each client's requests, errors and p99 to .bench/soak/soak.csv; scripts/soak_report.py checks
# the pass criteria and writes docs/reliability-soak.svg and the soak section of
# docs/reliability.md.
#
# The heap columns come from infergate_heap_bytes: c_allocated and c_held always (glibc's
# malloc, which ONNX Runtime uses), rust_live only from a server built with the heap-stats
# feature (`make soak SOAK_FEATURES=heap-stats`).
#
# The load, all on 127.0.0.1, three client processes at once:
#   - HTTP JSON, concurrency 8, model `iris` from a registry whose `production` alias moves
#     between two versions every SOAK_SWAP_EVERY seconds (default 20) from another process;
#   - gRPC, concurrency 8, repository model `iris_mlp` (batched), reloaded from disk through
#     the management API once per segment (a fresh load swapped in under load);
#   - HTTP binary, concurrency 4, repository model `simple` with a 256 KiB response cache and
#     20000 distinct requests: a steady stream of misses, insertions and evictions.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release
OUT=.bench/soak
DURATION=${SOAK_DURATION:-1800}
SEGMENT=${SOAK_SEGMENT:-30}
SWAP_EVERY=${SOAK_SWAP_EVERY:-20}
rm -rf "$OUT" && mkdir -p "$OUT/repository"
REG="$OUT/registry"
reg() { "$BIN/infergate" registry --registry "$REG" --author soak "$@" >/dev/null; }
reg import --name iris models/repository/iris_mlp/1/model.onnx
reg import --name iris models/repository/iris_mlp/2/model.onnx
reg alias iris production 1
cp -r models/repository/iris_mlp models/repository/simple "$OUT/repository/"
cat >>"$OUT/repository/simple/config.toml" <<TOML

[response_cache]
max_bytes = 262144
TOML
# The management API wants a token; this run makes one.
TOKEN="script-$RANDOM-$RANDOM"
TOKEN_SHA=$(printf %s "$TOKEN" | sha256sum | cut -d" " -f1)
cat >"$OUT/config.toml" <<TOML
[models]
registry_poll_ms = 200
[[security.tokens]]
name = "script"
sha256 = "$TOKEN_SHA"
scopes = ["admin", "read"]
TOML

"$BIN/infergate" serve --registry "$REG" --model-repository "$OUT/repository" --config "$OUT/config.toml" \
  --http-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 >"$OUT/server.log" 2>&1 &
SERVER=$!
PIDS=""
trap 'kill $SERVER $PIDS 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "infergate serving:" "$OUT/server.log" && break; sleep 0.1; done
line=$(grep -m1 "infergate serving:" "$OUT/server.log")
HTTP=$(sed -E 's/.*http=([0-9.:]+).*/\1/' <<<"$line")
GRPC=$(sed -E 's/.*grpc=([0-9.:]+).*/\1/' <<<"$line")
ADMIN=$(sed -E 's/.*admin=([0-9.:]+).*/\1/' <<<"$line")

# Alias moves from another process, for the whole run.
(
  i=0
  while sleep "$SWAP_EVERY"; do
    i=$((i + 1))
    reg alias iris production $((i % 2 + 1))
  done
) &
SWAPPER=$!
PIDS="$SWAPPER"

client() { # $1: label, then loadtest arguments
  local label=$1
  shift
  "$BIN/infergate-loadtest" --duration "${SEGMENT}s" --warmup 0s --threads 1 --json "$@" \
    >"$OUT/segments/$SEG-$label.json" 2>/dev/null
}
proc() { # $1: /proc/PID field
  case $1 in
    rss) awk '/VmRSS/ {print $2}' "/proc/$SERVER/status" ;;
    anon) awk '/RssAnon/ {print $2}' "/proc/$SERVER/status" ;;
    file) awk '/RssFile/ {print $2}' "/proc/$SERVER/status" ;;
    threads) awk '/Threads/ {print $2}' "/proc/$SERVER/status" ;;
    fds) ls "/proc/$SERVER/fd" | wc -l ;;
    # Anonymous memory resident in mappings of 1 GiB or more: mimalloc's arenas (the Rust
    # heap). glibc's arenas are at most 64 MiB each; the rest of anonymous memory is glibc's
    # (ONNX Runtime) and the thread stacks.
    mimalloc) python3 - "/proc/$SERVER/smaps" <<'PY'
import sys
total, big = 0, False
for line in open(sys.argv[1]):
    head = line.split()
    if "-" in head[0] and len(head) >= 5:
        lo, hi = (int(x, 16) for x in head[0].split("-"))
        big = hi - lo >= 1 << 30 and head[4] == "0" and len(head) == 5
    elif head[0] == "Anonymous:" and big:
        total += int(head[1])
print(total)
PY
    ;;
  esac
}

mkdir -p "$OUT/segments"
echo "elapsed_s,rss_kb,fds,threads,requests,errors,p99_ms_json,p99_ms_grpc,p99_ms_binary,cache_hits,cache_misses,swaps,heap_rust_live_kb,heap_c_allocated_kb,heap_c_held_kb,rss_anon_kb,rss_file_kb,heap_trims,rss_anon_mimalloc_kb" >"$OUT/soak.csv"
START=$(date +%s)
SEG=0
while [ $(($(date +%s) - START)) -lt "$DURATION" ]; do
  SEG=$((SEG + 1))
  client json --url "http://$HTTP" --protocol http-json --model iris --concurrency 8 &
  A=$!
  client grpc --url "grpc://$GRPC" --protocol grpc --model iris_mlp --concurrency 8 &
  B=$!
  client binary --url "http://$HTTP" --protocol http-binary --model simple --concurrency 4 \
    --distinct 20000 --seed "$SEG" &
  C=$!
  PIDS="$SWAPPER $A $B $C"
  sleep $((SEGMENT / 2))
  curl -sf -H "Authorization: Bearer $TOKEN" -XPOST "http://$ADMIN/v2/repository/models/iris_mlp/load" >/dev/null
  wait $A $B $C
  python3 - "$OUT/segments" "$SEG" "$(($(date +%s) - START))" "$(proc rss)" "$(proc fds)" "$(proc threads)" \
    "$(curl -sf "http://$HTTP/v2/models/simple/stats")" "$(grep -c 'default version swapped' "$OUT/server.log" || true)" \
    "$(curl -sf -H "Authorization: Bearer $TOKEN" "http://$ADMIN/metrics" | grep '^infergate_heap_' || true)" \
    "$(proc anon)" "$(proc file)" "$(proc mimalloc)" >>"$OUT/soak.csv" <<'PY'
import json, sys
segments, seg, elapsed, rss, fds, threads, stats, swaps, heap_lines, anon, file, mimalloc = sys.argv[1:13]
heap = {}
trims = ""
for line in heap_lines.splitlines():
    label, value = line.rsplit(" ", 1)
    if label == "infergate_heap_trims_total":
        trims = str(int(float(value)))
    elif 'kind="' in label:
        heap[label.split('kind="')[1].split('"')[0]] = str(int(float(value)) // 1024)
runs = {}
for label in ("json", "grpc", "binary"):
    doc = json.load(open(f"{segments}/{seg}-{label}.json"))
    runs[label] = doc["results"][0] if "results" in doc else doc
cache = json.loads(stats)["model_stats"][0]["inference_stats"]
requests = sum(r["requests"] for r in runs.values())
errors = sum(r["errors"] for r in runs.values())
print(",".join(map(str, [elapsed, rss, fds, threads, requests, errors,
    *(f"{runs[l]['p99_ms']:.3f}" for l in ("json", "grpc", "binary")),
    cache["cache_hit"]["count"], cache["cache_miss"]["count"], swaps,
    *(heap.get(k, "") for k in ("rust_live", "c_allocated", "c_held")), anon, file, trims, mimalloc])))
PY
  tail -1 "$OUT/soak.csv"
done
kill "$SWAPPER" 2>/dev/null || true
python3 scripts/soak_report.py "$OUT/soak.csv" "$DURATION" "$SEGMENT" "$SWAP_EVERY"
