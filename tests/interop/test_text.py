"""all-MiniLM-L6-v2 served by infergate, driven by the clients its users already have: the
official `openai` client on /v1/embeddings, plain HTTP on TEI's /embed and /info, and
tritonclient (HTTP and gRPC) on KServe V2. Outputs are held to second implementations: Python
onnxruntime + tokenizers on the same int8 ONNX file, and a numpy BERT on the same fp32
safetensors. Needs `make text-model` (the Makefile's `test` target runs it)."""
import base64
import concurrent.futures
import json
import os
import sys
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

from conftest import ROOT, start, stop

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
    server = start(str(repo))
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
        ({"model": ORT_MODEL, "input": [101, 2023]}, 400, "token-id inputs are not supported"),
        ({"model": ORT_MODEL, "input": []}, 400, "input is empty"),
        ({"model": "nope", "input": "x"}, 404, "nope"),
        ({"input": "x"}, 400, "model"),
    ]:
        got, answer = post(text_server, "/v1/embeddings", body)
        assert got == status and message in answer["error"]["message"], (body, answer)


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
