#!/usr/bin/env bash
# Hot swap under load, measured from the outside (`make swap-check`):
#   1. steady state: loadtest at concurrency 32 (16 HTTP JSON + 16 gRPC) against a registry
#      model, no swaps;
#   2. the same load while `production` moves back and forth between two versions 100 times,
#      from another process (`infergate registry alias`), the server following every 100 ms;
#   3. mid-load, a new version whose stored artifact is corrupt is promoted: it must be
#      refused with the reason in the index while the old version keeps serving;
#   4. 200 management unload/load cycles of the model, resident memory after 10 and 200.
# Everything binds 127.0.0.1 and stops by itself. Results go to docs/hot-swap.md.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release
OUT=.bench/swap
SWAPS=${SWAPS:-100}
CYCLES=${CYCLES:-200}
rm -rf "$OUT" && mkdir -p "$OUT"
REG="$OUT/registry"
reg() { "$BIN/infergate" registry --registry "$REG" --author swap-check "$@" >/dev/null; }
reg import --name iris models/repository/iris_mlp/1/model.onnx
reg import --name iris models/repository/iris_mlp/2/model.onnx
reg alias iris production 1
# The management API wants a token; this run makes one.
TOKEN="script-$RANDOM-$RANDOM"
TOKEN_SHA=$(printf %s "$TOKEN" | sha256sum | cut -d" " -f1)
cat > "$OUT/config.toml" <<TOML
[models]
registry_poll_ms = 100
[[security.tokens]]
name = "script"
sha256 = "$TOKEN_SHA"
scopes = ["admin", "read"]
TOML

"$BIN/infergate" serve --registry "$REG" --config "$OUT/config.toml" \
  --http-addr 127.0.0.1:0 --grpc-addr 127.0.0.1:0 --admin-addr 127.0.0.1:0 >"$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "infergate serving:" "$OUT/server.log" && break; sleep 0.1; done
line=$(grep -m1 "infergate serving:" "$OUT/server.log")
HTTP=$(sed -E 's/.*http=([0-9.:]+).*/\1/' <<<"$line")
GRPC=$(sed -E 's/.*grpc=([0-9.:]+).*/\1/' <<<"$line")
ADMIN=$(sed -E 's/.*admin=([0-9.:]+).*/\1/' <<<"$line")

load() { # $1: label, $2: duration; leaves the two client pids in $CLIENTS
  "$BIN/infergate-loadtest" --url "http://$HTTP" --protocol http-json --model iris \
    --concurrency 16 --duration "$2" --warmup 1s --threads 1 --json >"$OUT/$1-http.json" &
  CLIENTS="$!"
  "$BIN/infergate-loadtest" --url "grpc://$GRPC" --protocol grpc --model iris \
    --concurrency 16 --duration "$2" --warmup 1s --threads 1 --json >"$OUT/$1-grpc.json" &
  CLIENTS="$CLIENTS $!"
}

load steady 20s
wait $CLIENTS

load swaps 70s
sleep 3
for i in $(seq "$SWAPS"); do
  reg alias iris production $(( i % 2 == 1 ? 2 : 1 ))
  sleep 0.5
done
wait $CLIENTS

# A valid ONNX file not yet in the store (version 1 plus a metadata entry); its blob is put in
# place corrupt before it is registered, so the server can only ever see it corrupt.
python3 - "$REG" "$OUT/iris-v3.onnx" <<'PY'
import hashlib, os, sys
data = open("models/repository/iris_mlp/1/model.onnx", "rb").read() + b"\x72\x0b\x0a\x09corrupted"
digest = hashlib.sha256(data).hexdigest()
os.makedirs(f"{sys.argv[1]}/artifacts/sha256/{digest[:2]}", exist_ok=True)
open(f"{sys.argv[1]}/artifacts/sha256/{digest[:2]}/{digest}", "wb").write(b"not the model")
open(sys.argv[2], "wb").write(data)
PY
load corrupt 8s
sleep 2
reg import --name iris "$OUT/iris-v3.onnx"
reg alias iris production 3
wait $CLIENTS
INDEX=$(curl -sf -XPOST "http://$HTTP/v2/repository/index" -d '{}')
SWAPPED=$(grep -c "default version swapped" "$OUT/server.log" || true)

rss() { awk '/VmRSS/ {print $2}' "/proc/$SERVER/status"; }
for i in $(seq "$CYCLES"); do
  curl -sf -H "Authorization: Bearer $TOKEN" -XPOST "http://$ADMIN/v2/repository/models/iris/unload" >/dev/null
  curl -sf -H "Authorization: Bearer $TOKEN" -XPOST "http://$ADMIN/v2/repository/models/iris/load" >/dev/null
  [ "$i" = 10 ] && RSS10=$(rss)
done
RSS_END=$(rss)

python3 - "$OUT" "$SWAPS" "$SWAPPED" "$CYCLES" "$RSS10" "$RSS_END" "$INDEX" <<'PY'
import json, sys
out, swaps, swapped, cycles, rss10, rss_end = sys.argv[1], *map(int, sys.argv[2:7])
v3 = next(r for r in json.loads(sys.argv[7]) if r["version"] == "3")
def run(label):
    r = [json.load(open(f"{out}/{label}-{p}.json")) for p in ("http", "grpc")]
    r = [x["results"][0] if "results" in x else x for x in r]
    return {
        "requests/s": sum(x["throughput"] for x in r),
        "errors": sum(sum(x["errors"].values()) if isinstance(x["errors"], dict) else x["errors"] for x in r),
        "p99_ms": max(x["p99_ms"] for x in r),
    }
steady, swap, corrupt = run("steady"), run("swaps"), run("corrupt")
ratio = swap["p99_ms"] / steady["p99_ms"]
growth = (rss_end - rss10) / rss10 * 100
lines = [
    "# Hot swap under load",
    "",
    "Produced by `make swap-check` (`scripts/swap_check.sh`) on a 2-core shared machine: the",
    "release server follows a registry every 100 ms; two loadtest processes (16 HTTP JSON +",
    "16 gRPC connections, concurrency 32 in all) drive model `iris` while another process moves",
    f"`production` between versions 1 and 2 {swaps} times, every 0.5 s; then, under the same load,",
    f"a version 3 whose stored artifact is corrupt is promoted. Then {cycles} management",
    "unload/load cycles of the model.",
    "",
    "| run | requests/s | errors | worst p99 (ms) |",
    "|---|---|---|---|",
    f"| steady (no swaps) | {steady['requests/s']:.0f} | {steady['errors']} | {steady['p99_ms']:.3f} |",
    f"| {swaps} alias moves | {swap['requests/s']:.0f} | {swap['errors']} | {swap['p99_ms']:.3f} |",
    f"| corrupt version promoted | {corrupt['requests/s']:.0f} | {corrupt['errors']} | {corrupt['p99_ms']:.3f} |",
    "",
    f"- the corrupt version 3 in the index: {v3['state']}, \"{v3['reason']}\"",
    f"- swaps applied by the server: {swapped} (log lines `default version swapped`)",
    f"- p99 during swaps / steady p99: {ratio:.2f} (target ≤ 2)",
    f"- failed requests during swaps: {swap['errors']} (target 0)",
    f"- resident memory after 10 unload/load cycles: {rss10} kB; after {cycles}: {rss_end} kB ({growth:+.1f}%, target within 10%)",
]
open("docs/hot-swap.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
