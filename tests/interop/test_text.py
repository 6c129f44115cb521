"""all-MiniLM-L6-v2 served by infergate, driven by the clients its users already have: the
official `openai` client on /v1/embeddings, plain HTTP on TEI's /embed and /info, and
tritonclient (HTTP and gRPC) on KServe V2. Outputs are held to second implementations: Python
onnxruntime + tokenizers on the same int8 ONNX file, and a numpy BERT on the same fp32
safetensors. Needs `make text-model` (the Makefile's `test` target runs it)."""
import base64
import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import onnxruntime as ort
import openai
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tokenizers import Tokenizer
from tritonclient.utils import InferenceServerException

from conftest import BINARY, ROOT, start, stop

sys.path.insert(0, os.path.join(ROOT, "tests", "text"))
from bert_numpy import Bert  # noqa: E402
from sentences import SENTENCES  # noqa: E402

TEXT = os.path.join(ROOT, "models", "text")
ORT_MODEL, CANDLE_MODEL, BUDGET_MODEL = "all-MiniLM-L6-v2", "all-MiniLM-L6-v2-fp32", "minilm-budget"
BUDGET = 256


@pytest.fixture(scope="module")
def text_server(tmp_path_factory):
    """The two text models, plus one with a small token budget and a batching window."""
    repo = tmp_path_factory.mktemp("text-repo")
    for name in (ORT_MODEL, CANDLE_MODEL):
        os.symlink(os.path.join(TEXT, name), repo / name)
    budget = repo / BUDGET_MODEL
    budget.mkdir()
    os.symlink(os.path.join(TEXT, ORT_MODEL, "1"), budget / "1")
    (budget / "config.toml").write_text(
        "max_batch_size = 64\ninstances = 1\n[embedding]\n"
        f"[dynamic_batching]\nmax_batch_tokens = {BUDGET}\nmax_queue_delay_us = 200000\n"
    )
    server = start(str(repo), "--insecure-admin")
    yield server
    stop(server)


@pytest.fixture(scope="module")
def tokenizer():
    t = Tokenizer.from_file(os.path.join(TEXT, ORT_MODEL, "1", "tokenizer.json"))
    t.no_padding()
    t.no_truncation()
    return t


def unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def cosines(a, b):
    return (unit(np.asarray(a)) * unit(np.asarray(b))).sum(axis=1)


@pytest.fixture(scope="module")
def ort_reference(tokenizer):
    """Mean-pooled, normalized embeddings from Python onnxruntime, one sentence at a time."""
    session = ort.InferenceSession(os.path.join(TEXT, ORT_MODEL, "1", "model.onnx"))
    out = []
    for s in SENTENCES:
        ids = np.array([tokenizer.encode(s).ids], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                 "token_type_ids": np.zeros_like(ids)}
        out.append(unit(session.run(None, feeds)[0][0].mean(axis=0)))
    return np.array(out)


@pytest.fixture(scope="module")
def fp32_reference(tokenizer):
    """The same from a numpy BERT on the fp32 safetensors the candle backend serves."""
    d = os.path.join(TEXT, CANDLE_MODEL, "1")
    bert = Bert(os.path.join(d, "model.safetensors"), os.path.join(d, "config.json"))
    return np.array([unit(bert.hidden(tokenizer.encode(s).ids).mean(axis=0)) for s in SENTENCES])


def post(server, path, body):
    req = urllib.request.Request(f"http://{server.http}{path}", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def client(server):
    return openai.OpenAI(base_url=f"http://{server.http}/v1", api_key="unused", max_retries=0)


def test_openai_client_matches_onnxruntime_reference(text_server, ort_reference, tokenizer):
    c = client(text_server)
    # The client asks for base64 unless told otherwise, and decodes it.
    got = c.embeddings.create(model=ORT_MODEL, input=SENTENCES)
    assert got.model == ORT_MODEL and len(got.data) == len(SENTENCES)
    assert [d.index for d in got.data] == list(range(len(SENTENCES)))
    vectors = np.array([d.embedding for d in got.data])
    assert vectors.shape == (len(SENTENCES), 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert cosines(vectors, ort_reference).min() >= 0.9995
    tokens = sum(len(tokenizer.encode(s).ids) for s in SENTENCES)
    assert got.usage.prompt_tokens == tokens and got.usage.total_tokens == tokens
    # float encoding, one string: the same vector.
    one = c.embeddings.create(model=ORT_MODEL, input=SENTENCES[3], encoding_format="float")
    assert cosines([one.data[0].embedding], ort_reference[3:4])[0] >= 0.9995


def test_base64_is_little_endian_float32(text_server):
    status, body = post(text_server, "/v1/embeddings",
                        {"model": ORT_MODEL, "input": "hi", "encoding_format": "base64"})
    assert status == 200
    raw = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    status, floats = post(text_server, "/v1/embeddings", {"model": ORT_MODEL, "input": "hi"})
    assert np.array_equal(raw, np.array(floats["data"][0]["embedding"], dtype=np.float32))


def test_candle_matches_numpy_bert_and_ort(text_server, fp32_reference, ort_reference):
    status, vectors = post(text_server, "/embed", {"inputs": SENTENCES, "model": CANDLE_MODEL})
    assert status == 200
    assert cosines(vectors, fp32_reference).min() >= 0.9999
    # ort serves the int8 file, candle the fp32 one: what separates them is the quantization
    # (measured: median 0.9995, lowest 0.9964, the same against the numpy fp32 reference).
    across = cosines(vectors, ort_reference)
    assert np.median(across) >= 0.999 and across.min() >= 0.995


def test_tei_embed_normalize_and_info(text_server, ort_reference):
    status, vectors = post(text_server, "/embed", {"inputs": SENTENCES[:4]})
    assert status == 200 and cosines(vectors, ort_reference[:4]).min() >= 0.9995
    status, raw = post(text_server, "/embed", {"inputs": SENTENCES[0], "normalize": False})
    assert status == 200 and len(raw) == 1
    norm = np.linalg.norm(raw[0])
    assert abs(norm - 1.0) > 0.01 and np.allclose(np.array(raw[0]) / norm, vectors[0], atol=1e-5)
    with urllib.request.urlopen(f"http://{text_server.http}/info") as r:
        info = json.load(r)
    assert info["model_id"] == ORT_MODEL and info["max_input_length"] == 512
    assert info["dimensions"] == 384 and info["model_type"] == {"embedding": {"pooling": "mean"}}


def test_tritonclient_http_and_grpc(text_server, ort_reference):
    texts = np.array([s.encode() for s in SENTENCES[:5]], dtype=np.object_)
    for module, url in ((httpclient, text_server.http), (grpcclient, text_server.grpc)):
        c = module.InferenceServerClient(url=url)
        meta = c.get_model_metadata(ORT_MODEL)
        inputs = meta["inputs"] if isinstance(meta, dict) else [
            {"name": i.name, "datatype": i.datatype} for i in meta.inputs]
        assert [(i["name"], i["datatype"]) for i in inputs] == [("text", "BYTES")]
        inp = module.InferInput("text", [len(texts)], "BYTES")
        inp.set_data_from_numpy(texts)
        out = c.infer(ORT_MODEL, [inp]).as_numpy("embedding")
        assert out.shape == (5, 384) and out.dtype == np.float32
        assert cosines(out, ort_reference[:5]).min() >= 0.9995


def test_errors_are_one_class_on_every_api(text_server):
    empty = "input 0 is empty: an embedding needs at least one character"
    status, body = post(text_server, "/v1/embeddings", {"model": ORT_MODEL, "input": ["ok", ""]})
    assert status == 400 and body["error"]["message"] == empty.replace("input 0", "input 1")
    status, body = post(text_server, "/embed", {"inputs": [""]})
    assert (status, body) == (400, {"error": empty, "error_type": "Validation"})
    inp = httpclient.InferInput("text", [1], "BYTES")
    inp.set_data_from_numpy(np.array([b""], dtype=np.object_))
    with pytest.raises(InferenceServerException, match=empty):
        httpclient.InferenceServerClient(url=text_server.http).infer(ORT_MODEL, [inp])
    # Over the model's 512 tokens: 413 naming the input and its count, unless truncated.
    long = " ".join(["word"] * 600)
    status, body = post(text_server, "/embed", {"inputs": ["fine", long]})
    assert status == 413
    assert body["error"] == ("input 1 has 602 tokens, over the model's maximum of 512 "
                             "(ask for truncation to cut it)")
    status, vectors = post(text_server, "/embed", {"inputs": [long], "truncate": True})
    assert status == 200 and len(vectors[0]) == 384
    with pytest.raises(openai.APIStatusError) as e:
        client(text_server).embeddings.create(model=ORT_MODEL, input=long)
    assert e.value.status_code == 413 and "602 tokens" in e.value.message
    for body, status, message in [
        ({"model": ORT_MODEL, "input": "x", "dimensions": 128}, 400, "cannot be shortened"),
        ({"model": ORT_MODEL, "input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
        ({"model": ORT_MODEL, "input": [101, 30522, 102]}, 400,
         "input 0 holds token id 30522, outside the vocabulary of 30522 tokens"),
        ({"model": ORT_MODEL, "input": [[101, 102], []]}, 400, "input 1 is empty"),
        ({"model": ORT_MODEL, "input": [101] * 513}, 413,
         "input 0 has 513 tokens, over the model's maximum of 512"),
        ({"model": ORT_MODEL, "input": []}, 400, "input is empty"),
        ({"model": "nope", "input": "x"}, 404, "nope"),
        ({"input": "x"}, 400, "model"),
    ]:
        got, answer = post(text_server, "/v1/embeddings", body)
        assert got == status and message in answer["error"]["message"], (body, answer)


def test_token_id_inputs_embed_as_their_text(text_server, tokenizer):
    """OpenAI's token-id inputs (and TEI's): the tokenizer's ids, special tokens included,
    answer what the text does."""
    texts = SENTENCES[:3]
    ids = [tokenizer.encode(t).ids for t in texts]
    by_text = client(text_server).embeddings.create(model=ORT_MODEL, input=texts)
    by_ids = client(text_server).embeddings.create(model=ORT_MODEL, input=ids)
    assert by_ids.usage.prompt_tokens == sum(len(i) for i in ids) == by_text.usage.prompt_tokens
    a = [d.embedding for d in by_text.data]
    assert cosines([d.embedding for d in by_ids.data], a).min() >= 0.99999
    one = client(text_server).embeddings.create(model=ORT_MODEL, input=ids[1])
    assert len(one.data) == 1 and cosines([one.data[0].embedding], a[1:2])[0] >= 0.99999
    status, vectors = post(text_server, "/embed", {"inputs": [ids[2]]})
    assert status == 200 and cosines(vectors, a[2:3])[0] >= 0.99999
    # the response cache tells ids from a text of the same bytes (ids 101, 102 as int64)
    twin = "e" + "\0" * 7 + "f" + "\0" * 7
    status, as_text = post(text_server, "/embed", {"inputs": [twin]})
    assert status == 200
    status, as_ids = post(text_server, "/embed", {"inputs": [[101, 102]]})
    assert status == 200 and cosines(as_text, as_ids)[0] < 0.99


def test_response_cache_keys_on_text_and_options(text_server):
    first = post(text_server, "/embed", {"inputs": ["cache me"]})
    again = post(text_server, "/embed", {"inputs": ["cache me"]})
    raw = post(text_server, "/embed", {"inputs": ["cache me"], "normalize": False})
    assert first == again and raw[1] != first[1]
    with urllib.request.urlopen(f"http://{text_server.http}/v2/models/{ORT_MODEL}/stats") as r:
        stats = json.load(r)["model_stats"][0]["inference_stats"]
    assert stats["cache_hit"]["count"] >= 1


def test_batches_close_on_the_token_budget(text_server, tokenizer):
    """Short and long inputs sent together: batches form up to the budget of padded tokens."""
    short = [f"short sentence number {i}" for i in range(24)]
    long = [" ".join(["a longer input that takes many tokens"] * 6) + f" {i}" for i in range(6)]
    mix = [x for pair in zip(short[:6], long) for x in pair] + short[6:]
    lengths = {t: len(tokenizer.encode(t).ids) for t in mix}
    assert max(lengths.values()) <= BUDGET
    with concurrent.futures.ThreadPoolExecutor(len(mix)) as pool:
        answers = list(pool.map(lambda t: post(text_server, "/embed",
                                               {"inputs": [t], "model": BUDGET_MODEL}), mix))
    assert all(status == 200 for status, _ in answers)
    with urllib.request.urlopen(f"http://{text_server.http}/v2/models/{BUDGET_MODEL}/stats") as r:
        tokens = json.load(r)["model_stats"][0]["token_stats"]
    executions = tokens["executions"]
    assert sum(rows for rows, _, _ in executions) == len(mix)
    assert tokens["real_tokens"] == sum(lengths.values())
    # Every batch of more than one row stays within the budget; some batch has several rows.
    assert all(padded <= BUDGET for rows, _, padded in executions if rows > 1)
    assert max(rows for rows, _, _ in executions) > 1
    # Length grouping keeps the padding low: short rows are not padded to the long ones.
    assert tokens["padded_tokens"] < 1.5 * tokens["real_tokens"]


def admin(server, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{server.admin}{path}", data=data, method=method,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status, json.load(r)


def test_shadow_compares_embeddings_by_cosine(text_server):
    """A route on the int8 model mirrors every request to the fp32 one; the live comparison
    reports the cosine of each pair of vectors."""
    route = {"name": "minilm-live",
             "variants": [{"name": "int8", "model": ORT_MODEL, "weight": 100}],
             "shadow": {"model": CANDLE_MODEL, "fraction": 1.0, "queue": 256}}
    status, _ = admin(text_server, "PUT", "/admin/routes", [route])
    assert status == 200
    try:
        texts = SENTENCES[:20]
        for i in range(0, len(texts), 4):
            out = client(text_server).embeddings.create(model="minilm-live", input=texts[i:i + 4])
            assert len(out.data) == len(texts[i:i + 4])
        report = {}
        for _ in range(100):
            report = admin(text_server, "GET", "/admin/routes/minilm-live/shadow")[1]["shadow"]
            if report["rows"] >= len(texts):
                break
            time.sleep(0.1)
        assert report["sent"] == 5 and report["dropped"] == 0, report
        assert report["both_ok"] == 5 and report["rows"] == len(texts), report
        # int8 against fp32: the same agreement the cross-backend test measures
        assert report["mean_cosine"] >= 0.999 and report["min_cosine"] >= 0.995, report
    finally:
        admin(text_server, "PUT", "/admin/routes", [])


def test_registry_text_versions_hot_swap_without_failed_requests(
        tmp_path, ort_reference, fp32_reference):
    """A text model registered from its folder (network, tokenizer, pooling and config.toml as
    one version) serves from the registry; moving `production` to an fp32 candle version under
    load swaps it with no failed request."""
    registry = tmp_path / "registry"

    def cli(*args, check=True):
        r = subprocess.run([BINARY, "registry", "--registry", str(registry), *args],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 or not check, r.stderr
        return r

    assert "registered minilm version 1" in cli(
        "import", "--name", "minilm", os.path.join(TEXT, ORT_MODEL, "1")).stdout
    cli("alias", "minilm", "production", "1")
    v1 = json.loads(cli("show", "minilm", "1").stdout)
    assert [a["kind"] for a in v1["artifacts"]] == ["onnx", "tokenizer"]
    assert "max_batch_tokens = 128" in v1["architecture"]["model_config"]
    assert v1["architecture"]["pooling"] == "mean"
    assert v1["signature"]["outputs"] == [
        {"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]
    # a folder registers only with a model config that says it is a text model
    plain = tmp_path / "plain.toml"
    plain.write_text("max_batch_size = 8\n")
    refused = cli("import", "--name", "minilm", "--model-config", str(plain),
                  os.path.join(TEXT, ORT_MODEL, "1"), check=False)
    assert refused.returncode != 0 and "no [embedding] section" in refused.stderr, refused.stderr

    empty = tmp_path / "empty-repo"
    empty.mkdir()
    server = start(str(empty), "--registry", str(registry))
    try:
        out = client(server).embeddings.create(model="minilm", input=SENTENCES[:8])
        assert cosines([d.embedding for d in out.data], ort_reference[:8]).min() >= 0.9995
        config = httpclient.InferenceServerClient(server.http).get_model_config("minilm")
        assert int(config["max_batch_size"]) == 64, config  # the registered config.toml

        texts = np.array([s.encode() for s in SENTENCES[:4]], dtype=np.object_)
        seen, failures, stop_load = {}, [], threading.Event()

        def load():
            c = httpclient.InferenceServerClient(server.http)
            while not stop_load.is_set():
                inp = httpclient.InferInput("text", [len(texts)], "BYTES")
                inp.set_data_from_numpy(texts)
                try:
                    r = c.infer("minilm", [inp])
                    seen.setdefault(r.get_response()["model_version"], r.as_numpy("embedding"))
                except Exception as e:  # noqa: BLE001 - every failure is counted
                    failures.append(repr(e))

        workers = [threading.Thread(target=load) for _ in range(4)]
        for w in workers:
            w.start()
        try:
            time.sleep(1)
            assert "registered minilm version 2" in cli(
                "import", "--name", "minilm", os.path.join(TEXT, CANDLE_MODEL, "1")).stdout
            cli("alias", "minilm", "production", "2")
            deadline = time.time() + 120
            while "2" not in seen and time.time() < deadline:
                time.sleep(0.2)
            time.sleep(1)
        finally:
            stop_load.set()
            for w in workers:
                w.join()
        assert failures == [], failures[:3]
        assert set(seen) == {"1", "2"}, seen.keys()
        assert cosines(seen["1"], ort_reference[:4]).min() >= 0.9995
        assert cosines(seen["2"], fp32_reference[:4]).min() >= 0.9999
        v2 = json.loads(cli("show", "minilm", "2").stdout)
        assert [a["kind"] for a in v2["artifacts"]] == ["safetensors", "tokenizer"]
    finally:
        stop(server)


def test_registry_text_version_reports_drift_on_token_counts(tmp_path):
    """A text version registered with reference texts carries a baseline of token counts and
    vector norms; live traffic like it does not drift, much longer inputs do."""
    registry, refs = tmp_path / "registry", tmp_path / "reference.txt"
    refs.write_text("\n".join(SENTENCES) + "\n")
    r = subprocess.run([BINARY, "registry", "--registry", str(registry), "import", "--name",
                        "minilm", "--baseline-texts", str(refs),
                        os.path.join(TEXT, ORT_MODEL, "1")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    config = tmp_path / "drift.toml"
    config.write_text(f"[drift]\nsample_every = 1\nwindow_rows = {len(SENTENCES)}\n")
    empty = tmp_path / "empty-repo"
    empty.mkdir()
    server = start(str(empty), "--registry", str(registry), "--config", str(config),
                   "--insecure-admin")

    def window(after):
        for _ in range(100):
            report = admin(server, "GET", "/admin/models/minilm/drift")[1]["versions"][0]
            if report["last_window"] and report["last_window"] != after:
                return report["last_window"]
            time.sleep(0.1)
        raise AssertionError(f"no window closed: {report}")

    try:
        for s in SENTENCES:
            client(server).embeddings.create(model="minilm", input=s)
        like = window(None)
        assert like["features"] == ["tokens", "embedding_norm"], like
        assert like["rows"] == len(SENTENCES) and not like["drifted"], like
        for i in range(len(SENTENCES)):
            long = " ".join(SENTENCES[i:] + SENTENCES[:i])[:1500]
            status, _ = post(server, "/embed", {"model": "minilm", "inputs": [long],
                                                "truncate": True})
            assert status == 200
        shifted = window(like)
        assert shifted["drifted"] and shifted["feature_psi"][0] > 1.0, shifted
    finally:
        stop(server)
