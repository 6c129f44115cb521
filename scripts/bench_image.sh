#!/usr/bin/env bash
# `make bench-image` (and part of `make bench`): EfficientNet-Lite0 images per second at
# concurrency 1, 8 and 32 with real JPEG photos (the two of make image-model) over KServe V2
# (HTTP binary extension and gRPC), for ONNX Runtime and candle, each against its in-process
# ceiling (the same decoder, preprocessing and backend called in a loop in one process, at its
# best batch size, decoding on every core) measured in the same run; with the split between
# decode/preprocess and inference. Writes .bench/results/image.md.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=.bench/image
RESULTS=.bench/results
DURATION=${BENCH_DURATION:-5s}
WARMUP=${BENCH_WARMUP:-1s}
CEILING_SECONDS=${BENCH_CEILING_SECONDS:-5}
ORT_LIB=${ORT_DYLIB_PATH:-.ort/libonnxruntime.so.1.31.1}
LOADTEST=target/release/infergate-loadtest
PHOTOS=(.models/efficientnet-lite0/china.jpg .models/efficientnet-lite0/flower.jpg)
source scripts/bench_lib.sh
rm -rf "$OUT" && mkdir -p "$OUT/models" "$RESULTS"

cargo build --release --locked -p infergate-server -p infergate-loadtest --bins
cargo build --release --locked -p infergate-runtime --example image_ceiling

# Bench models: no response cache (every request is computed: there are only two photos).
# Batch sizes as the ceiling's sweep found best on 2 cores: candle is slower per image beyond 2.
for spec in "lite0_onnx efficientnet-lite0 onnx 8" "lite0_candle efficientnet-lite0-candle candle_efficientnet_lite0 2"; do
  set -- $spec
  mkdir -p "$OUT/models/$1"
  ln -s "$PWD/models/image/$2/1" "$OUT/models/$1/1"
  cat > "$OUT/models/$1/config.toml" <<TOML
max_batch_size = $4
instances = 1
[image]
backend = "$3"
[dynamic_batching]
TOML
done

# The ceiling is measured before and after the server runs, and the ratios use the higher of
# the two, so that a slow spell of this shared host during one of them does not flatter the server.
ceilings() {
  target/release/examples/image_ceiling "$ORT_LIB" models/image/efficientnet-lite0/1 onnx \
    "$CEILING_SECONDS" 1,2,4,8 "${PHOTOS[@]}" > "$OUT/ceiling_lite0_onnx_$1.jsonl"
  target/release/examples/image_ceiling "$ORT_LIB" models/image/efficientnet-lite0-candle/1 candle \
    "$CEILING_SECONDS" 1,2,4,8 "${PHOTOS[@]}" > "$OUT/ceiling_lite0_candle_$1.jsonl"
}
echo "== in-process ceilings, before"
ceilings before

trap stop_server EXIT
start_server image
images=()
for p in "${PHOTOS[@]}"; do images+=(--image-file "$p"); done
for model in lite0_onnx lite0_candle; do
  for protocol in http-binary grpc; do
    url="http://$HTTP"; [ "$protocol" = grpc ] && url="grpc://$GRPC"
    echo "== $model over $protocol, concurrency 1,8,32"
    "$LOADTEST" --threads 1 --url "$url" --protocol "$protocol" --model "$model" "${images[@]}" \
      --concurrency 1,8,32 --duration "$DURATION" --warmup "$WARMUP" --no-server-stats --json \
      > "$OUT/server_${model}_$protocol.json"
  done
done
stop_server
trap - EXIT
echo "== in-process ceilings, after"
ceilings after

python3 - "$OUT" "$DURATION" > "$RESULTS/image.md" <<'PY'
import json, sys
out, duration = sys.argv[1:]
def ceiling(m, when):
    return [json.loads(l) for l in open(f"{out}/ceiling_{m}_{when}.jsonl")]
def best(m, when):
    return max(ceiling(m, when), key=lambda r: r["images_per_s"])
def server(m, p):
    doc = json.load(open(f"{out}/server_{m}_{p}.json"))
    return doc["results"] if "results" in doc else [doc]
print("## Image classification (EfficientNet-Lite0)\n")
print("2 cores, shared and noisy; load generator (1 thread) on the same machine. Inputs: the two JPEG")
print(f"photos of `make image-model` (640x427, 143-197 KB), one per request, {duration} per point, no")
print("response cache. Ceiling: the same decoder + preprocessing + backend called in a loop in one")
print("process (`image_ceiling`: a batch's images decoded on both cores, then the batch run), same run,")
print("before and after the server; ratios use the higher of the two.")
print("Server batches: at most 8 images on ONNX Runtime, 2 on candle (slower per image beyond, below).\n")
print("| model | protocol | ceiling img/s before / after (best batch) | c | server img/s | x ceiling | p50 ms | p99 ms |")
print("|---|---|---|---|---|---|---|---|")
for m in ("lite0_onnx", "lite0_candle"):
    b, a = best(m, "before"), best(m, "after")
    top = max(b["images_per_s"], a["images_per_s"])
    for p in ("http-binary", "grpc"):
        for run in server(m, p):
            print(f"| {m} | {p} | {b['images_per_s']:.1f} / {a['images_per_s']:.1f} (b={b['batch']}/{a['batch']}) "
                  f"| {run['concurrency']} | {run['throughput']:.1f} | {run['throughput'] / top:.2f} "
                  f"| {run['p50_ms']:.1f} | {run['p99_ms']:.1f} |")
print("\nIn-process ceiling by batch size (the run before the server), and where a call's time goes (decode + resize + scale")
print("on both cores, then the network):\n")
print("| model | batch | img/s | call p50 ms | decode+preprocess ms/img | inference ms/img | decode share |")
print("|---|---|---|---|---|---|---|")
for m in ("lite0_onnx", "lite0_candle"):
    for r in ceiling(m, "before"):
        share = r["decode_ms_per_image"] / (r["decode_ms_per_image"] + r["infer_ms_per_image"])
        print(f"| {m} | {r['batch']} | {r['images_per_s']:.1f} | {r['call_p50_ms']:.1f} "
              f"| {r['decode_ms_per_image']:.2f} | {r['infer_ms_per_image']:.2f} | {share:.0%} |")
print("\nCommand: `make bench-image` (also run by `make bench`).")
PY
cat "$RESULTS/image.md"
