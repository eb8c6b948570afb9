"""Run and time ONNX models in onnxruntime's CPU provider.

`measure_latency` interleaves its candidates (round-robin within each repeat,
same input) in one process, so a noisy, shared machine slows them all alike
and the medians stay comparable; numbers from separate runs are not.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "with_embedding_output",
    "ort_session",
    "plain_session",
    "normalise",
    "onnx_predict_proba",
    "onnx_accuracy",
    "measure_latency",
    "file_bytes",
]


# Ops a penultimate activation reaches the logits through: the classifier's (Q)Gemm or MatMul, and
# the bias Add, the rescaling Mul, (de)quantization and reshapes an export or int8 pass puts around it.
_CLASSIFIER_OPS = {"Gemm", "MatMul", "QGemm", "MatMulInteger", "QLinearMatMul"}
_PASS_THROUGH_OPS = {"Add", "Mul", "DequantizeLinear", "QuantizeLinear", "Identity", "Reshape", "Flatten", "Cast"}


def with_embedding_output(onnx_bytes: bytes) -> tuple[bytes, str | None]:
    """The model with its classifier's input (the penultimate-layer embedding, float) as a second
    graph output, and that output's name; the bytes unchanged and None where no classifier is found
    within a few nodes of the logits.

    >>> data, name = with_embedding_output(open("model.onnx", "rb").read())  # doctest: +SKIP
    """
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    floats = {i.name for i in graph.initializer}
    tensor = graph.output[0].name
    for _ in range(8):  # the classifier sits a few nodes above the logits, or nowhere
        node = producer.get(tensor)
        if node is None:
            return onnx_bytes, None
        if node.op_type in _CLASSIFIER_OPS:
            emb = node.input[0]
            before = producer.get(emb)
            if before is not None and before.op_type in ("QuantizeLinear", "DynamicQuantizeLinear"):
                emb = before.input[0]  # an int8 graph: the float activation before it was quantized
            if emb in floats or emb in {o.name for o in graph.output}:
                return onnx_bytes, None
            graph.output.append(onnx.helper.make_tensor_value_info(emb, onnx.TensorProto.FLOAT, None))
            return model.SerializeToString(), emb
        if node.op_type not in _PASS_THROUGH_OPS:
            return onnx_bytes, None
        tensor = node.input[0]
    return onnx_bytes, None


def ort_session(path: str | Path | bytes, threads: int = 0, device: str = "cpu") -> Any:
    """An onnxruntime session with every graph optimisation on, on the CPU or (`device` "cuda", as
    `datamoat.inference.hardware.resolve_ort_device` resolves it) CUDA.

    `threads` 0 lets onnxruntime use one intra-op thread per physical core.

    >>> sess = ort_session("model.onnx", threads=1)  # doctest: +SKIP
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # EXTENDED already fuses QDQ groups into QLinearConv / QGemm; ALL adds the
    # layout passes: NHWC for int8 (NhwcMaxPool) and NCHWc for fp32 Conv.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = int(threads)
    # One small graph per request: inter-op parallelism only adds thread handoffs.
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only; warnings about unused initialisers are noise
    src = path if isinstance(path, bytes) else str(path)
    from datamoat.inference.hardware import providers_for

    return ort.InferenceSession(src, sess_options=opts, providers=providers_for(device))


def plain_session(path: str | Path | bytes, threads: int = 1) -> Any:
    """A stock onnxruntime CPU session: default options but the thread count, as
    a user who loads the file with no datamoat code gets it.

    >>> sess = plain_session("model.onnx")  # doctest: +SKIP
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.log_severity_level = 3
    src = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])


def normalise(x: np.ndarray, preprocess: dict[str, Any]) -> np.ndarray:
    """uint8 images (N, C, H, W) -> float32 exactly as `Model.to_tensor` does.

    >>> normalise(np.full((1, 1, 1, 1), 255, np.uint8), {"scale": 1 / 255, "mean": [0.5], "std": [0.5]}).item()
    1.0
    """
    mean = np.asarray(preprocess["mean"], np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(preprocess["std"], np.float32).reshape(1, -1, 1, 1)
    t = x.astype(np.float32) * np.float32(preprocess["scale"])  # (N, C, H, W)
    return (t - mean) / std


def _session(path_or_session: Any) -> Any:
    return path_or_session if hasattr(path_or_session, "run") else ort_session(path_or_session)


def _batch_limit(sess: Any, batch_size: int) -> int:
    dim = sess.get_inputs()[0].shape[0]
    return dim if isinstance(dim, int) and dim > 0 else batch_size


def onnx_predict_proba(
    path_or_session: Any, x_uint8: np.ndarray, preprocess: dict[str, Any], batch_size: int = 256
) -> np.ndarray:
    """Softmax probabilities (N, K) of an ONNX classifier on uint8 images.

    >>> onnx_predict_proba("model.onnx", x, meta["preprocess"]).shape  # doctest: +SKIP
    (360, 10)
    """
    sess = _session(path_or_session)
    name = sess.get_inputs()[0].name
    step = _batch_limit(sess, batch_size)
    outs = [
        sess.run(None, {name: normalise(x_uint8[i : i + step], preprocess)})[0] for i in range(0, len(x_uint8), step)
    ]
    if not outs:
        return np.zeros((0, sess.get_outputs()[0].shape[1]), np.float32)
    logits = np.concatenate(outs).astype(np.float64)  # (N, K)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def onnx_accuracy(
    path_or_session: Any, x_uint8: np.ndarray, y: np.ndarray, preprocess: dict[str, Any], batch_size: int = 256
) -> float:
    """Top-1 accuracy (0..1) of an ONNX classifier on uint8 images.

    >>> onnx_accuracy("model.onnx", x_val, y_val, meta["preprocess"])  # doctest: +SKIP
    0.953
    """
    if len(y) == 0:
        return float("nan")
    pred = onnx_predict_proba(path_or_session, x_uint8, preprocess, batch_size).argmax(axis=1)
    return float((pred == np.asarray(y)).mean())


def measure_latency(
    paths: dict[str, str | Path],
    input_shape: tuple[int, ...],
    batch_sizes: tuple[int, ...] = (1, 64),
    warmup: int = 10,
    repeats: int = 50,
    threads: int = 0,
    seed: int = 0,
    plain: bool = False,
) -> dict[str, dict[str, float]]:
    """Median latency and throughput of each model per batch size, interleaved.

    `input_shape` is (C, H, W). For each batch size b the result holds
    ``latency_ms_b{b}`` (median ms per call), ``p90_ms_b{b}`` and
    ``throughput_b{b}`` (samples/s from the median). A model whose batch axis
    is fixed to another size is skipped for b. `plain` times stock sessions
    (`plain_session`) instead of datamoat's tuned ones (`ort_session`).

    >>> measure_latency({"fp32": "m.onnx", "int8": "m.int8.onnx"}, (1, 28, 28))  # doctest: +SKIP
    {'fp32': {'latency_ms_b1': 0.21, ...}, 'int8': {...}}
    """
    make = plain_session if plain else ort_session
    sessions = {name: make(p, threads) for name, p in paths.items()}
    results: dict[str, dict[str, float]] = {name: {} for name in paths}
    rng = np.random.default_rng(seed)
    for b in batch_sizes:
        x = rng.standard_normal((b, *input_shape), dtype=np.float32)  # (B, C, H, W)
        runnable = {n: s for n, s in sessions.items() if _batch_limit(s, b) == b}
        feeds = {n: {s.get_inputs()[0].name: x} for n, s in runnable.items()}
        for n, s in runnable.items():
            for _ in range(warmup):
                s.run(None, feeds[n])
        times: dict[str, list[float]] = {n: [] for n in runnable}
        order = list(runnable)
        for r in range(repeats):
            # Rotate who goes first so no candidate always runs on a cold cache.
            for n in order[r % len(order) :] + order[: r % len(order)]:
                t0 = time.perf_counter()
                runnable[n].run(None, feeds[n])
                times[n].append(time.perf_counter() - t0)
        for n, ts in times.items():
            med = float(np.median(ts))
            results[n][f"latency_ms_b{b}"] = med * 1e3
            results[n][f"p90_ms_b{b}"] = float(np.percentile(ts, 90)) * 1e3
            results[n][f"throughput_b{b}"] = b / med
    return results


def file_bytes(path: str | Path) -> int:
    """Size of a file in bytes.

    >>> file_bytes(__file__) > 0
    True
    """
    return os.path.getsize(path)
