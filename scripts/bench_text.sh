#!/usr/bin/env bash
# `make bench-text` (and part of `make bench`): all-MiniLM-L6-v2 embeddings per second at
# concurrency 1, 8 and 32 over OpenAI's /v1/embeddings, for the ort int8 model and candle fp32,
# each against its in-process ceiling (the same tokenizer and backend called in a loop in one
# process, at its best batch size) measured in the same run; and the padding waste of
# token-budget batches with and without length grouping. The corpus is Debian's fortunes
# (real text), cut to sayings of 5 to 60 words. Writes .bench/results/text.md.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=.bench/text
RESULTS=.bench/results
DURATION=${BENCH_DURATION:-5s}
WARMUP=${BENCH_WARMUP:-1s}
CEILING_SECONDS=${BENCH_CEILING_SECONDS:-5}
ORT_LIB=${ORT_DYLIB_PATH:-.ort/libonnxruntime.so.1.31.1}
LOADTEST=target/release/infergate-loadtest
# The token budget of the bench models. On 2 CPU cores the model is fastest one row at a time
# (the ceiling's batch sweep shows it): a small budget keeps batches to a few similar rows.
BATCH_TOKENS=${BENCH_TEXT_BATCH_TOKENS:-128}
source scripts/bench_lib.sh
rm -rf "$OUT" && mkdir -p "$OUT/models" "$RESULTS"

[ -d /usr/share/games/fortunes ] || { apt-get update -q && apt-get install -y -q fortunes; }
python3 - > "$OUT/corpus.txt" <<'PY'
import glob, re
seen = set()
for path in sorted(glob.glob("/usr/share/games/fortunes/*")):
    if "." in path.rsplit("/", 1)[-1]:
        continue  # the .dat index files
    for saying in open(path, encoding="utf-8", errors="replace").read().split("\n%\n"):
        text = re.sub(r"\s+", " ", saying).strip()
        if 5 <= len(text.split()) <= 60 and text not in seen:
            seen.add(text)
            print(text)
PY
echo "== corpus: $(wc -l < "$OUT/corpus.txt") sayings"

cargo build --release --locked -p infergate-server -p infergate-loadtest --bins
cargo build --release --locked -p infergate-runtime --example embed_ceiling

# Bench models: no response cache (every request is computed), one instance.
for spec in "minilm_int8 all-MiniLM-L6-v2 onnx true" "minilm_fp32 all-MiniLM-L6-v2-fp32 candle true" \
            "minilm_int8_fifo all-MiniLM-L6-v2 onnx false"; do
  set -- $spec
  mkdir -p "$OUT/models/$1"
  ln -s "$PWD/models/text/$2/1" "$OUT/models/$1/1"
  cat > "$OUT/models/$1/config.toml" <<TOML
max_batch_size = 64
instances = 1
[embedding]
backend = "$3"
[dynamic_batching]
max_batch_tokens = $BATCH_TOKENS
group_by_length = $4
TOML
done

echo "== in-process ceilings"
target/release/examples/embed_ceiling "$ORT_LIB" models/text/all-MiniLM-L6-v2/1 onnx "$OUT/corpus.txt" \
  "$CEILING_SECONDS" 1 8 32 64 > "$OUT/ceiling_minilm_int8.jsonl"
target/release/examples/embed_ceiling "$ORT_LIB" models/text/all-MiniLM-L6-v2-fp32/1 candle "$OUT/corpus.txt" \
  "$CEILING_SECONDS" 1 8 32 64 > "$OUT/ceiling_minilm_fp32.jsonl"

OUT_SAVED=$OUT; OUT="$OUT_SAVED"   # start_server reads $OUT/models
trap stop_server EXIT
start_server text
for model in minilm_int8 minilm_fp32; do
  echo "== $model over openai, concurrency 1,8,32"
  "$LOADTEST" --threads 1 --url "http://$HTTP" --protocol openai --model "$model" \
    --text-file "$OUT/corpus.txt" --concurrency 1,8,32 --duration "$DURATION" --warmup "$WARMUP" \
    --no-server-stats --json > "$OUT/server_$model.json"
done
echo "== padding waste at concurrency 32, length grouping on and off"
for model in minilm_int8 minilm_int8_fifo; do
  before=$(curl -s "http://$HTTP/v2/models/$model/stats")
  "$LOADTEST" --threads 1 --url "http://$HTTP" --protocol openai --model "$model" \
    --text-file "$OUT/corpus.txt" --concurrency 32 --duration "$DURATION" --warmup 0s \
    --no-server-stats --json > /dev/null
  echo "{\"before\": $before, \"after\": $(curl -s "http://$HTTP/v2/models/$model/stats")}" > "$OUT/padding_$model.json"
done
stop_server
trap - EXIT

python3 - "$OUT" "$DURATION" "$BATCH_TOKENS" > "$RESULTS/text.md" <<'PY'
import json, sys
out, duration, tokens = sys.argv[1:]
def ceiling(m):
    return [json.loads(l) for l in open(f"{out}/ceiling_{m}.jsonl")]
def server(m):
    doc = json.load(open(f"{out}/server_{m}.json"))
    return doc["results"] if "results" in doc else [doc]
print("## Text embeddings (all-MiniLM-L6-v2)\n")
print("2 cores, shared and noisy; load generator (1 thread) on the same machine. Corpus: Debian's")
print(f"fortunes, sayings of 5-60 words, one per request, {duration} per point, OpenAI /v1/embeddings.")
print("Ceiling: the same tokenizer + backend called in a loop in one process (`embed_ceiling`), same run;")
print("its batch sweep is below. Server batches close on max_batch_tokens = " + tokens + ".\n")
print("| model | backend | ceiling emb/s (best batch) | ceiling 1-call p50 ms | c | server emb/s | x ceiling | p50 ms | p50 / 1-call |")
print("|---|---|---|---|---|---|---|---|---|")
for m, backend in (("minilm_int8", "ort int8"), ("minilm_fp32", "candle fp32")):
    c = ceiling(m)
    best = max(c, key=lambda r: r["embeddings_per_s"])
    one = next(r for r in c if r["batch"] == 1)
    for run in server(m):
        print(f"| {m} | {backend} | {best['embeddings_per_s']:.0f} (b={best['batch']}) | {one['call_p50_ms']:.2f} "
              f"| {run['concurrency']} | {run['throughput']:.0f} | {run['throughput'] / best['embeddings_per_s']:.2f} "
              f"| {run['p50_ms']:.2f} | {run['p50_ms'] / one['call_p50_ms']:.2f} |")
print("\nIn-process ceiling by batch size (rows padded to the longest of each batch):\n")
print("| model | batch | emb/s | call p50 ms |")
print("|---|---|---|---|")
for m in ("minilm_int8", "minilm_fp32"):
    for r in ceiling(m):
        print(f"| {m} | {r['batch']} | {r['embeddings_per_s']:.0f} | {r['call_p50_ms']:.2f} |")
print("\nPadding waste at c=32 (padded tokens / real tokens executed, from the statistics API):\n")
print("| length grouping | real tokens | padded tokens | waste |")
print("|---|---|---|---|")
for m, label in (("minilm_int8", "on"), ("minilm_int8_fifo", "off (arrival order)")):
    d = json.load(open(f"{out}/padding_{m}.json"))
    t = lambda s: s["model_stats"][0]["token_stats"]
    real = t(d["after"])["real_tokens"] - t(d["before"])["real_tokens"]
    padded = t(d["after"])["padded_tokens"] - t(d["before"])["padded_tokens"]
    print(f"| {label} | {real} | {padded} | {padded / max(real, 1):.2f} |")
print("\nCommand: `make bench-text` (also run by `make bench`).")
PY
cat "$RESULTS/text.md"
