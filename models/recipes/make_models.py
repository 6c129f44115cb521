#!/usr/bin/env python3
"""Build the committed demo/test ONNX models in the Triton repository layout, and (with
--bench DIR) the benchmark fixtures mlp_small and mlp_large, which are too big to commit, or
(with --shadow DIR) mlp_small and its slow twin for `make shadow-check`.

Deterministic: the same onnx version and seeds give byte-identical files.
Usage: make models   (or: python models/recipes/make_models.py models/repository)
       python models/recipes/make_models.py --bench .bench/models
       python models/recipes/make_models.py --shadow .bench/shadow/models
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8


def save(model, repo, name, version):
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path = os.path.join(repo, name, str(version))
    os.makedirs(path, exist_ok=True)
    onnx.save_model(model, os.path.join(path, "model.onnx"))


def iris_mlp(seed, hidden):
    """A 4 -> hidden -> 3 MLP with softmax: input [-1, 4] FP32, output [-1, 3] FP32."""
    rng = np.random.RandomState(seed)
    w1 = rng.normal(0, 0.5, (4, hidden)).astype(np.float32)
    b1 = rng.normal(0, 0.1, (hidden,)).astype(np.float32)
    w2 = rng.normal(0, 0.5, (hidden, 3)).astype(np.float32)
    b2 = rng.normal(0, 0.1, (3,)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["l0"]),
        helper.make_node("Add", ["l0", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "iris_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])],
        initializer=[
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(b1, "b1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(b2, "b2"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def simple():
    """Triton's classic example: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 (INT32 [-1, 16])."""
    io = lambda n: helper.make_tensor_value_info(n, TensorProto.INT32, ["batch", 16])
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
            helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
        ],
        "simple",
        [io("INPUT0"), io("INPUT1")],
        [io("OUTPUT0"), io("OUTPUT1")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


DTYPES = [
    ("bool", TensorProto.BOOL),
    ("uint8", TensorProto.UINT8),
    ("uint16", TensorProto.UINT16),
    ("uint32", TensorProto.UINT32),
    ("uint64", TensorProto.UINT64),
    ("int8", TensorProto.INT8),
    ("int16", TensorProto.INT16),
    ("int32", TensorProto.INT32),
    ("int64", TensorProto.INT64),
    ("fp16", TensorProto.FLOAT16),
    ("bf16", TensorProto.BFLOAT16),
    ("fp32", TensorProto.FLOAT),
    ("fp64", TensorProto.DOUBLE),
    ("bytes", TensorProto.STRING),
]


def identity_all():
    """One Identity per V2 datatype: in_<t> [-1, -1] -> out_<t>."""
    nodes, inputs, outputs = [], [], []
    for name, ty in DTYPES:
        nodes.append(helper.make_node("Identity", [f"in_{name}"], [f"out_{name}"]))
        inputs.append(helper.make_tensor_value_info(f"in_{name}", ty, ["rows", "cols"]))
        outputs.append(helper.make_tensor_value_info(f"out_{name}", ty, ["rows", "cols"]))
    graph = helper.make_graph(nodes, "identity_all", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def mlp(name, sizes, seed):
    """Gemm+Relu layers: input [batch, sizes[0]] FP32 -> logits [batch, sizes[-1]]."""
    rng = np.random.RandomState(seed)
    nodes, inits, prev = [], [], "input"
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        b = (rng.standard_normal(n_out) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(sizes) - 2
        out = "logits" if last else f"g{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out]))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
            out = f"r{i}"
        prev = out
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", sizes[-1]])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


BENCH_BASE = "max_batch_size = 128\ninstances = 2\nintra_op_threads = 1\n"
BENCH_VARIANTS = {
    # name suffix: extra config
    "": "",
    # One instance: on 2 cores, larger batches beat two instances racing for the same cores.
    # While it runs a batch, the next one (once 8 rows wait) is queued for it.
    "_batch": "instances = 1\n[dynamic_batching]\nmax_queue_delay_us = 0\nmax_queue_size = 4096\ndispatch_ahead_rows = 8\n",
    "_cache": "\n[response_cache]\nmax_bytes = 67108864\n",
    "_overload": "\n[dynamic_batching]\nmax_queue_delay_us = 0\nmax_queue_size = 256\n",
}


def bench(repo):
    """mlp_small / mlp_large, each as served plain, with dynamic batching, with a response
    cache, and with a small batch queue (the overload scenario); same weights in all."""
    models = {
        "mlp_small": mlp("mlp_small", [64, 256, 256, 10], seed=11),
        "mlp_large": mlp("mlp_large", [784, 1024, 1024, 10], seed=12),
    }
    for base, model in models.items():
        for suffix, extra in BENCH_VARIANTS.items():
            save(model, repo, base + suffix, 1)
            base_config = BENCH_BASE.replace("instances = 2\n", "") if "instances" in extra else BENCH_BASE
            with open(os.path.join(repo, base + suffix, "config.toml"), "w") as f:
                f.write(base_config + extra)
    print(f"benchmark models written to {repo}")


def shadow(repo):
    """mlp_small and a slow twin with the same input and output (about fifty times the
    arithmetic), one instance and one intra-op thread each: the shadow-traffic check. The twin
    runs at nice 19 (the idle scheduling class), as a shadow should, on spare CPU only, and batches
    what it is sent."""
    lean = "max_batch_size = 128\ninstances = 1\nintra_op_threads = 1\n"
    for name, sizes, seed, extra in [
        ("mlp_small", [64, 256, 256, 10], 11, ""),
        # Batched: the weights stream through the cache once per batch, not once per request.
        ("mlp_small_slow", [64, 1536, 1536, 1536, 10], 13,
         "nice = 19\n[dynamic_batching]\nmax_queue_delay_us = 20000\n"),
    ]:
        save(mlp(name, sizes, seed), repo, name, 1)
        with open(os.path.join(repo, name, "config.toml"), "w") as f:
            f.write(lean + extra)
    print(f"shadow-check models written to {repo}")


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--bench":
        bench(sys.argv[2])
        return
    if len(sys.argv) == 3 and sys.argv[1] == "--shadow":
        shadow(sys.argv[2])
        return
    repo = sys.argv[1] if len(sys.argv) > 1 else "models/repository"
    save(iris_mlp(seed=1, hidden=8), repo, "iris_mlp", 1)
    save(iris_mlp(seed=2, hidden=16), repo, "iris_mlp", 2)
    save(simple(), repo, "simple", 1)
    save(identity_all(), repo, "identity_all", 1)
    print(f"models written to {repo}")


if __name__ == "__main__":
    main()
