"""Python's tritonclient (HTTP, HTTP aio, gRPC) against infergate, unchanged; outputs are
checked against Python onnxruntime running the same model files."""
import asyncio
import os
import queue

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from tritonclient.utils import InferenceServerException

from conftest import REPO

ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3]], dtype=np.float32)

DTYPES = [
    ("bool", "BOOL", np.bool_), ("uint8", "UINT8", np.uint8), ("uint16", "UINT16", np.uint16),
    ("uint32", "UINT32", np.uint32), ("uint64", "UINT64", np.uint64), ("int8", "INT8", np.int8),
    ("int16", "INT16", np.int16), ("int32", "INT32", np.int32), ("int64", "INT64", np.int64),
    ("fp16", "FP16", np.float16), ("fp32", "FP32", np.float32), ("fp64", "FP64", np.float64),
    ("bytes", "BYTES", np.object_),
]


def reference(model, version, feeds):
    session = ort.InferenceSession(os.path.join(REPO, model, str(version), "model.onnx"))
    return session.run(None, feeds)


def sample(np_type, shape=(2, 3)):
    n = int(np.prod(shape))
    if np_type is np.object_:
        return np.array([f"élément {i}".encode() for i in range(n)], dtype=np.object_).reshape(shape)
    if np_type is np.bool_:
        return (np.arange(n) % 2 == 0).reshape(shape)
    return (np.arange(n) * 3 + 1).astype(np_type).reshape(shape)


@pytest.mark.parametrize("binary", [True, False])
def test_http_iris_matches_onnxruntime(server, binary):
    client = httpclient.InferenceServerClient(server.http)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("iris_mlp", "1")
    meta = client.get_model_metadata("iris_mlp")
    assert meta["versions"] == ["1", "2"]
    inp = httpclient.InferInput("input", list(ROWS.shape), "FP32")
    inp.set_data_from_numpy(ROWS, binary_data=binary)
    out = httpclient.InferRequestedOutput("probabilities", binary_data=binary)
    for version in ("1", "2"):
        result = client.infer("iris_mlp", [inp], model_version=version, outputs=[out], request_id="r1")
        expected = reference("iris_mlp", version, {"input": ROWS})[0]
        np.testing.assert_array_equal(result.as_numpy("probabilities"), expected)
        assert result.get_response()["model_version"] == version


def test_http_simple_with_default_outputs_and_statistics(server):
    client = httpclient.InferenceServerClient(server.http)
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 5, dtype=np.int32)
    inputs = [httpclient.InferInput("INPUT0", [2, 16], "INT32"), httpclient.InferInput("INPUT1", [2, 16], "INT32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b, binary_data=False)
    before = client.get_inference_statistics("simple")["model_stats"][0]["inference_count"]
    result = client.infer("simple", inputs)  # no outputs listed: tritonclient asks for binary outputs
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    stats = client.get_inference_statistics("simple")["model_stats"][0]
    assert stats["inference_count"] == before + 2
    config = client.get_model_config("simple")
    assert config["max_batch_size"] == 32 and config["input"][0]["dims"] == [16]
    index = client.get_model_repository_index()
    assert {"name": "simple", "version": "1", "state": "READY"} in index


@pytest.mark.parametrize("binary", [True, False])
def test_http_every_datatype(server, binary):
    client = httpclient.InferenceServerClient(server.http)
    inputs, outputs, data = [], [], {}
    for name, dtype, np_type in DTYPES + [("bf16", "BF16", np.float32)]:
        value = sample(np_type)
        if dtype == "BF16":
            value = np.array([[0.5, -1.0, 2.0], [0.0, 1.5, -0.25]], dtype=np.float32)
        inp = httpclient.InferInput(f"in_{name}", [2, 3], dtype)
        inp.set_data_from_numpy(value, binary_data=binary or dtype in ("FP16", "BF16"))
        inputs.append(inp)
        outputs.append(httpclient.InferRequestedOutput(f"out_{name}", binary_data=binary or dtype in ("FP16", "BF16")))
        data[name] = value
    result = client.infer("identity_all", inputs, outputs=outputs)
    for name, dtype, _ in DTYPES + [("bf16", "BF16", None)]:
        got = result.as_numpy(f"out_{name}")
        if dtype == "BYTES" and not binary:
            got = np.array([x.encode() if isinstance(x, str) else x for x in got.flatten()], dtype=np.object_).reshape(2, 3)
        np.testing.assert_array_equal(got, data[name], err_msg=dtype)


def test_http_errors_are_inference_server_exceptions(server):
    client = httpclient.InferenceServerClient(server.http)
    inp = httpclient.InferInput("input", [1, 3], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
    with pytest.raises(InferenceServerException, match=r"input 'input' has shape \[1, 3\], model 'iris_mlp' expects \[-1, 4\]"):
        client.infer("iris_mlp", [inp])
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.infer("nope", [inp])


def test_http_aio_sends_json_as_text_plain(server):
    async def run():
        client = httpaio.InferenceServerClient(server.http)
        try:
            assert await client.is_server_ready()
            inp = httpaio.InferInput("input", list(ROWS.shape), "FP32")
            inp.set_data_from_numpy(ROWS, binary_data=False)
            out = httpaio.InferRequestedOutput("probabilities", binary_data=False)
            result = await client.infer("iris_mlp", [inp], outputs=[out])
            return result.as_numpy("probabilities")
        finally:
            await client.close()

    expected = reference("iris_mlp", 2, {"input": ROWS})[0]
    np.testing.assert_array_equal(asyncio.run(run()), expected)


def test_grpc_infer_metadata_config_and_stats(server):
    client = grpcclient.InferenceServerClient(server.grpc)
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata().name == "infergate"
    meta = client.get_model_metadata("iris_mlp", as_json=True)
    assert meta["inputs"][0]["shape"] == ["-1", "4"]
    config = client.get_model_config("simple", as_json=True)["config"]
    assert config["max_batch_size"] == 32 and config["input"][0]["data_type"] == "TYPE_INT32"
    inp = grpcclient.InferInput("input", list(ROWS.shape), "FP32")
    inp.set_data_from_numpy(ROWS)
    result = client.infer("iris_mlp", [inp], model_version="1", request_id="g1")
    np.testing.assert_array_equal(result.as_numpy("probabilities"), reference("iris_mlp", 1, {"input": ROWS})[0])
    stats = client.get_inference_statistics("iris_mlp", "1", as_json=True)["model_stats"][0]
    assert int(stats["execution_count"]) >= 1
    with pytest.raises(InferenceServerException) as err:
        client.unload_model("simple")
    assert "StatusCode.PERMISSION_DENIED" in str(err.value.status())


def test_grpc_every_datatype(server):
    client = grpcclient.InferenceServerClient(server.grpc)
    inputs, data = [], {}
    for name, dtype, np_type in DTYPES:
        value = sample(np_type)
        inp = grpcclient.InferInput(f"in_{name}", [2, 3], dtype)
        inp.set_data_from_numpy(value)
        inputs.append(inp)
        data[name] = value
    bf16 = grpcclient.InferInput("in_bf16", [2, 3], "BF16")
    bf16.set_data_from_numpy(np.array([[0.5, -1.0, 2.0], [0.0, 1.5, -0.25]], dtype=np.float32))
    inputs.append(bf16)
    result = client.infer("identity_all", inputs)
    for name, dtype, _ in DTYPES:
        np.testing.assert_array_equal(result.as_numpy(f"out_{name}"), data[name], err_msg=dtype)
    np.testing.assert_array_equal(result.as_numpy("out_bf16"), np.array([[0.5, -1.0, 2.0], [0.0, 1.5, -0.25]], dtype=np.float32))


def test_grpc_stream_infer(server):
    client = grpcclient.InferenceServerClient(server.grpc)
    results = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for i in range(10):
            rows = ROWS + i
            inp = grpcclient.InferInput("input", list(rows.shape), "FP32")
            inp.set_data_from_numpy(rows)
            client.async_stream_infer("iris_mlp", [inp], request_id=str(i))
        seen = {}
        for _ in range(10):
            result, error = results.get(timeout=10)
            assert error is None, error
            seen[result.get_response().id] = result.as_numpy("probabilities")
    finally:
        client.stop_stream()
    for i in range(10):
        np.testing.assert_array_equal(seen[str(i)], reference("iris_mlp", 2, {"input": ROWS + i})[0])


def test_grpc_aio(server):
    async def run():
        client = grpcaio.InferenceServerClient(server.grpc)
        try:
            a = np.ones((1, 16), dtype=np.int32)
            inputs = [grpcaio.InferInput("INPUT0", [1, 16], "INT32"), grpcaio.InferInput("INPUT1", [1, 16], "INT32")]
            inputs[0].set_data_from_numpy(a)
            inputs[1].set_data_from_numpy(a * 4)
            result = await client.infer("simple", inputs)
            return result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")
        finally:
            await client.close()

    total, diff = asyncio.run(run())
    np.testing.assert_array_equal(total, np.full((1, 16), 5))
    np.testing.assert_array_equal(diff, np.full((1, 16), -3))
