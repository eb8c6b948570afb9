"""The Open Inference Protocol (KServe v2, as Triton, KServe and Seldon speak it): request and
response tensors in JSON or with the binary tensor data extension.

A request names one input tensor: raw pixels, 0..255, shaped (N, C, H, W) or any shape `/v1/predict`
takes, in any numeric datatype. Its data is a JSON list, or, with the binary extension, bytes after
the JSON header (``Inference-Header-Content-Length`` gives the header's length, each binary input
its ``parameters.binary_data_size``). The response's tensors (`OUTPUTS`) are the same answers
`/v1/predict` gives: the label, its index, the probabilities with suppressed labels at zero, and
whether the answer needs review. Anything malformed is a `BadInput` or `Unprocessable` naming it.

>>> req = {"inputs": [{"name": "input", "shape": [1, 1, 2, 2], "datatype": "UINT8", "data": [0, 1, 2, 3]}]}
>>> parse_infer_request(json.dumps(req).encode(), None)[0].shape
(1, 1, 2, 2)
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np

from datamoat.errors import BadInput, Unprocessable

__all__ = [
    "HEADER_LENGTH",
    "INPUT_NAME",
    "OUTPUTS",
    "parse_infer_request",
    "encode_infer_response",
    "model_metadata",
]

HEADER_LENGTH = "Inference-Header-Content-Length"
INPUT_NAME = "input"
# Numeric datatypes an input may have, as numpy types (little-endian, as the extension sends them).
DATATYPES = {
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}
OUTPUTS = {"label": "BYTES", "label_index": "INT64", "probabilities": "FP32", "needs_review": "BOOL"}
MAX_DIMS = 4


def _fail(what: str) -> BadInput:
    return BadInput(f"{what}: see the Open Inference Protocol's infer request (KServe v2)")


def parse_infer_request(
    body: bytes, header_length: int | None
) -> tuple[np.ndarray, str | None, list[tuple[str, bool]] | None, bool]:
    """(the input tensor, the request id, the outputs asked for as (name, binary) or None for all,
    whether binary outputs are the default) of an infer request body."""
    if header_length is not None and not 0 <= header_length <= len(body):
        raise _fail(f"{HEADER_LENGTH} {header_length} is not within the body's {len(body)} bytes")
    head, binary = (body, b"") if header_length is None else (body[:header_length], body[header_length:])
    try:
        doc = json.loads(head)
    except (ValueError, RecursionError):
        raise _fail("the request header is not valid JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or len(doc["inputs"]) != 1:
        raise _fail('the request needs "inputs": a list of exactly one tensor, the images')
    inp = doc["inputs"][0]
    if not isinstance(inp, dict):
        raise _fail("the input tensor must be an object with name, shape, datatype and data")
    shape = inp.get("shape")
    if not isinstance(shape, list) or not 1 <= len(shape) <= MAX_DIMS:
        raise _fail(f"the input's shape must be a list of 1 to {MAX_DIMS} sizes")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise _fail(f"the input's shape {shape} must hold non-negative integers")
    dtype = inp.get("datatype")
    if dtype not in DATATYPES:
        raise Unprocessable(f"input datatype {dtype!r} is not accepted: send one of {', '.join(DATATYPES)}")
    count = math.prod(shape)
    params = inp.get("parameters") or {}
    if not isinstance(params, dict):
        raise _fail("the input's parameters must be an object")
    size = params.get("binary_data_size")
    if size is not None:
        width = np.dtype(DATATYPES[dtype]).itemsize
        if not isinstance(size, int) or size != count * width or size > len(binary):
            raise _fail(
                f"binary_data_size {size} does not match shape {shape} of {dtype} ({count * width} bytes) "
                f"or the {len(binary)} bytes after the header"
            )
        arr = np.frombuffer(binary[:size], DATATYPES[dtype]).reshape(shape)
    else:
        data = inp.get("data")
        if not isinstance(data, list):
            raise _fail('the input needs "data" (a list) or parameters.binary_data_size with the binary extension')
        try:
            flat = np.asarray(data, dtype=DATATYPES[dtype]).reshape(-1)
        except (ValueError, TypeError, OverflowError, RecursionError):
            raise Unprocessable(f"the input's data are not {dtype} values") from None
        if flat.size != count:
            raise _fail(f"the input's data hold {flat.size} values, its shape {shape} needs {count}")
        arr = flat.reshape(shape)
    asked = doc.get("outputs")
    requested = None
    if asked is not None:
        if not isinstance(asked, list) or not all(isinstance(o, dict) and o.get("name") in OUTPUTS for o in asked):
            raise Unprocessable(f"outputs may be any of {', '.join(OUTPUTS)}")
        requested = [(o["name"], bool((o.get("parameters") or {}).get("binary_data", False))) for o in asked]
    top = doc.get("parameters") or {}
    binary_default = bool(top.get("binary_data_output", False)) if isinstance(top, dict) else False
    request_id = doc.get("id") if isinstance(doc.get("id"), str) else None
    return arr, request_id, requested, binary_default


def _bytes_element(values: list[str]) -> bytes:
    """BYTES tensors in the binary extension: each element a 4-byte little-endian length and its bytes."""
    return b"".join(struct.pack("<I", len(b)) + b for b in (v.encode() for v in values))


def encode_infer_response(
    model: str,
    version: str,
    request_id: str | None,
    tensors: dict[str, np.ndarray | list[str]],
    requested: list[tuple[str, bool]] | None,
    binary_default: bool,
) -> tuple[bytes, dict[str, str]]:
    """(body, extra headers) of an infer response holding the requested outputs (all if None)."""
    outs, chunks = [], []
    for name, binary in requested or [(n, binary_default) for n in OUTPUTS]:
        value = tensors[name]
        shape = [len(value)] if isinstance(value, list) else list(value.shape)
        out: dict[str, Any] = {"name": name, "datatype": OUTPUTS[name], "shape": shape}
        if binary:
            raw = _bytes_element(value) if isinstance(value, list) else np.ascontiguousarray(value).tobytes()
            out["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            out["data"] = value if isinstance(value, list) else value.reshape(-1).tolist()
        outs.append(out)
    doc: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": outs}
    if request_id is not None:
        doc["id"] = request_id
    head = json.dumps(doc).encode()
    if not chunks:
        return head, {}
    return head + b"".join(chunks), {HEADER_LENGTH: str(len(head))}


def model_metadata(name: str, version: str, input_shape: tuple[int, int, int], classes: list[str]) -> dict[str, Any]:
    """What ``GET /v2/models/{name}`` says: the input and the outputs with their shapes (-1: any).

    >>> model_metadata("production", "v1", (1, 8, 8), ["a", "b"])["outputs"][2]
    {'name': 'probabilities', 'datatype': 'FP32', 'shape': [-1, 2]}
    """
    return {
        "name": name,
        "versions": [version],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *input_shape]}],
        "outputs": [
            {"name": n, "datatype": t, "shape": [-1, len(classes)] if n == "probabilities" else [-1]}
            for n, t in OUTPUTS.items()
        ],
        "parameters": {"classes": classes},
    }
