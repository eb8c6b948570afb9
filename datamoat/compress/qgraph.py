"""ONNX graph rewrites around int8 quantization: which nodes stay fp32 (the stem, depthwise
convolutions) and how they are pinned so onnxruntime cannot re-quantize them, plus the small
clean-ups `datamoat.compress.quantize` applies before and after quantizing."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "weights",
    "stem_convs",
    "depthwise_convs",
    "pin_float",
    "pool_after_relu",
    "gemm_to_matmul",
    "float_outputs",
    "prune_initializers",
]


def weights(proto: Any) -> dict[str, Any]:
    return {t.name: t for t in proto.graph.initializer}


def stem_convs(proto: Any) -> list[str]:
    w = weights(proto)
    inputs = {i.name for i in proto.graph.input} - set(w)
    return [
        n.name
        for n in proto.graph.node
        if n.op_type == "Conv" and n.input[0] in inputs and n.input[1] in w and w[n.input[1]].dims[1] <= 4
    ]


def depthwise_convs(proto: Any) -> list[str]:
    """Convs with one input channel per group (and more than one group)."""
    w = weights(proto)
    return [
        n.name
        for n in proto.graph.node
        if n.op_type == "Conv"
        and n.input[1] in w
        and w[n.input[1]].dims[1] == 1
        and any(a.name == "group" and a.i > 1 for a in n.attribute)
    ]


def pin_float(proto: Any, names: set[str]) -> Any:
    """Feed each Conv/Gemm in `names` that reads a per-tensor DequantizeLinear
    through its own per-channel copy (the same scale repeated): the same values,
    but onnxruntime's WeightBiasQuantization, which only takes per-tensor DQ
    inputs, then leaves the node fp32 instead of quantizing its weights."""
    from onnx import helper, numpy_helper

    w = weights(proto)
    producer = {t: n for n in proto.graph.node for t in n.output}
    nodes: list[Any] = []
    for n in proto.graph.node:
        dq = producer.get(n.input[0]) if n.name in names and n.op_type in ("Conv", "Gemm") else None
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[1] in w and len(dq.input) > 2:
            scale, zero = (numpy_helper.to_array(w[t]) for t in dq.input[1:3])
            if n.op_type == "Conv":
                group = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "group"), 1)
                channels = w[n.input[1]].dims[1] * group  # (Cout, Cin / group, kH, kW)
            else:
                trans_b = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "transB"), 0)
                channels = w[n.input[1]].dims[1 if trans_b else 0]  # B is (K, N), or (N, K) transposed
            base = f"{n.input[0]}_for_{n.name}"
            proto.graph.initializer.extend(
                [
                    numpy_helper.from_array(np.full(channels, scale, scale.dtype), base + "_scale"),
                    numpy_helper.from_array(np.full(channels, zero, zero.dtype), base + "_zero_point"),
                ]
            )
            ins = [dq.input[0], base + "_scale", base + "_zero_point"]
            nodes.append(helper.make_node("DequantizeLinear", ins, [base], name=base, axis=1))
            n.input[0] = base
        nodes.append(n)
    used = {t for n in nodes for t in n.input} | {o.name for o in proto.graph.output}
    nodes = [n for n in nodes if n.op_type != "DequantizeLinear" or n.output[0] in used]  # shared DQs now unread
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return prune_initializers(proto)


def pool_after_relu(proto: Any, convs: list[str]) -> Any:
    """For each fp32 Conv -> Relu -> MaxPool, compute MaxPool -> Relu (exact,
    as ReLU is monotonic). onnxruntime's QDQ propagation moves a Q node back
    across MaxPool but not across Relu, so this keeps the int8 boundary after
    the pool instead of creating a uint8 NCHW MaxPool (~30x slower there)."""
    nodes = list(proto.graph.node)
    consumers = lambda t: [n for n in nodes if t in n.input]  # noqa: E731
    stale = set()
    for conv in (n for n in nodes if n.name in convs):
        relus = consumers(conv.output[0])
        if len(relus) != 1 or relus[0].op_type != "Relu":
            continue
        relu = relus[0]
        pools = consumers(relu.output[0])
        if len(pools) != 1 or pools[0].op_type != "MaxPool" or len(pools[0].output) > 1:
            continue
        pool = pools[0]
        mid, out = relu.output[0], pool.output[0]
        pool.input[0], pool.output[0], relu.input[0], relu.output[0] = conv.output[0], mid, mid, out
        i, j = nodes.index(relu), nodes.index(pool)
        nodes[i], nodes[j] = pool, relu
        stale.add(mid)  # its shape is now the pooled one
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    keep = [v for v in proto.graph.value_info if v.name not in stale]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(keep)
    return proto


def gemm_to_matmul(proto: Any) -> Any:
    """Gemm -> MatMul (+ Add): dynamic quantization only handles MatMul."""
    import onnx
    from onnx import helper, numpy_helper

    w = weights(proto)
    nodes = []
    for n in proto.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        simple = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
        if n.op_type != "Gemm" or not simple or n.input[1] not in w:
            nodes.append(n)
            continue
        b = numpy_helper.to_array(w[n.input[1]])
        if attrs.get("transB", 0):
            b = np.ascontiguousarray(b.T)  # (in, out)
        proto.graph.initializer.append(numpy_helper.from_array(b, n.input[1] + "_kn"))
        has_bias = len(n.input) > 2 and n.input[2]
        mm_out = n.output[0] + "_matmul" if has_bias else n.output[0]
        nodes.append(helper.make_node("MatMul", [n.input[0], n.input[1] + "_kn"], [mm_out], name=n.name))
        if has_bias:
            nodes.append(helper.make_node("Add", [mm_out, n.input[2]], [n.output[0]], name=n.name + "_bias"))
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return onnx.shape_inference.infer_shapes(prune_initializers(proto))


def float_outputs(proto: Any) -> Any:
    """Drop the Q -> DQ pair the quantizer puts on graph outputs: QGemm then
    emits float logits itself, one kernel fewer and no 8-bit rounding of the
    logits (only ~200 distinct values were left, coarsening probabilities)."""
    outputs = {o.name for o in proto.graph.output}
    producer = {t: n for n in proto.graph.node for t in n.output}
    drop = []
    for dq in (n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.output[0] in outputs):
        q = producer.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear" and q.input[0] in producer:
            src = producer[q.input[0]]
            src.output[list(src.output).index(q.input[0])] = dq.output[0]
            drop += [q, dq]
    for n in drop:
        proto.graph.node.remove(n)
    return prune_initializers(proto)


def prune_initializers(proto: Any) -> Any:
    used = {t for n in proto.graph.node for t in n.input}
    keep = [t for t in proto.graph.initializer if t.name in used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
    return proto
