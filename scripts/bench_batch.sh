#!/usr/bin/env bash
# `make bench-batch` (and part of `make bench`): `infergate batch` rows/s on Parquet input for
# mlp_large and the Fashion-MNIST CNN, against the in-process batched ceiling (one ONNX Runtime
# session called in a loop at the same batch size, `ort_ceiling`) measured in the same run,
# before and after the job; the ratio uses the higher ceiling. Writes .bench/results/batch.md.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=.bench/batch
RESULTS=.bench/results
ROWS=${BENCH_BATCH_ROWS:-60000}
BATCH=${BENCH_BATCH_SIZE:-128}
CEILING_SECONDS=${BENCH_CEILING_SECONDS:-5}
VENV_PY=${VENV_PY:-.venv/bin/python}
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$PWD/.ort/libonnxruntime.so.1.31.1}
rm -rf "$OUT/models" "$OUT/out" && mkdir -p "$OUT/models" "$RESULTS"

cargo build --release --locked -p infergate-server --bin infergate --example batch_input
cargo build --release --locked -p infergate-runtime --example ort_ceiling
cargo build --release --locked -p infergate-trainer --bin infergate-train

# mlp_large from the benchmark fixtures; the CNN trained briefly (throughput does not depend on
# its accuracy) into a registry of its own, its ONNX artifact served from a folder.
"$VENV_PY" models/recipes/make_models.py --bench .bench/models > /dev/null
if [ ! -d "$OUT/registry" ]; then
  target/release/infergate-train --registry "$OUT/registry" --report "$OUT/report" \
    --train-rows 3000 --epochs 1 --student-epochs 1 > "$OUT/train.log"
fi
digest=$(target/release/infergate registry --registry "$OUT/registry" show fashion 1 | python3 -c \
  'import json, sys; print(next(a["digest"] for a in json.load(sys.stdin)["artifacts"] if a["kind"] == "onnx"))')
cnn=$(find "$OUT/registry/artifacts" -type f -name "$digest" | head -1)
[ -n "$cnn" ] || { echo "no ONNX artifact for fashion 1 ($digest)"; exit 1; }
for spec in "mlp_large .bench/models/mlp_large/1/model.onnx input" "fashion_cnn $cnn input"; do
  set -- $spec
  mkdir -p "$OUT/models/$1/1"
  cp "$2" "$OUT/models/$1/1/model.onnx"
  printf 'max_batch_size = %s\ninstances = 1\nintra_op_threads = 1\n[dynamic_batching]\nmax_queue_delay_us = 0\n' \
    "$BATCH" > "$OUT/models/$1/config.toml"
done
input_name() {
  "$VENV_PY" -c "import onnx,sys; print(onnx.load(sys.argv[1]).graph.input[0].name)" "$1"
}

ceiling() { target/release/examples/ort_ceiling "$1" "$BATCH" "$CEILING_SECONDS"; }
{
  echo "## Offline batch scoring (\`infergate batch\`)"
  echo
  echo "2 cores, shared and noisy. Input: one Parquet file of $ROWS rows (an id and a list of 784 FP32"
  echo "values, row groups of 10000), output Parquet, chunks of 4096 rows (a part file and a manifest"
  echo "commit each). Model: one instance, one intra-op thread, requests of $BATCH rows. Ceiling: the"
  echo "same ONNX file in one ONNX Runtime session called in a loop at batch $BATCH (\`ort_ceiling\`),"
  echo "before and after the job in the same run; the ratio uses the higher."
  echo
  echo "| model | ceiling rows/s before / after | batch rows/s | x ceiling | model busy | model rows/s while busy |"
  echo "|---|---|---|---|---|---|"
} > "$RESULTS/batch.md"
for model in mlp_large fashion_cnn; do
  onnx="$OUT/models/$model/1/model.onnx"
  target/release/examples/batch_input "$OUT/$model.parquet" "$ROWS" "$(input_name "$onnx")" 784 10000
  before=$(ceiling "$onnx")
  echo "== $model: ceiling $before"
  line=$(target/release/infergate batch --model "$model" --model-repository "$OUT/models" \
    --input "$OUT/$model.parquet" --output "$OUT/out/$model" --id-column id --progress none 2>&1)
  echo "== $model: $line"
  after=$(ceiling "$onnx")
  python3 - "$model" "$BATCH" "$before" "$after" "$ROWS" "$line" >> "$RESULTS/batch.md" <<'PY'
import json, re, sys
model, batch, before, after, rows, line = sys.argv[1:]
b, a = (json.loads(x)["calls_per_s"] * int(batch) for x in (before, after))
rate = float(re.search(r"\((\d+) rows/s this run\)", line).group(1))
busy_s, busy = re.search(r"([\d.]+) s in all \((\d+)% of the run\)", line).groups()
print(f"| {model} | {b:.0f} / {a:.0f} | {rate:.0f} | {rate / max(a, b):.2f} | {busy}% "
      f"| {int(rows) / float(busy_s):.0f} |")
PY
done
{
  echo
  echo "Command: \`make bench-batch\` (also run by \`make bench\`)."
} >> "$RESULTS/batch.md"
cat "$RESULTS/batch.md"
