"""int8 on a photo backbone: MobileNetV3's depthwise convs, hardswish and squeeze-excitation."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from datamoat.compress.export import export, onnx_metadata
from datamoat.compress.quantize import QuantizeConfig, quantize
from datamoat.configs import config_from_dict
from datamoat.errors import BadInput
from datamoat.models.model import Model
from datamoat.models.zoo import build, preset

SIZE = 32
PREPROCESS = {"scale": 1 / 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory):
    """A random-weight mobilenet_v3_small at 32x32, its BatchNorm statistics taken
    from the images (as one epoch would), exported to ONNX; and 24 images."""
    rng = np.random.default_rng(0)
    # Smooth random images (a coarse grid, upsampled), so activations vary as they do on photos.
    x = np.kron(rng.integers(0, 256, (24, 3, 8, 8)), np.ones((1, 1, 4, 4))).astype(np.uint8)  # (24, 3, 32, 32)
    cfg = preset("mobilenet_v3_small", in_channels=3, image_size=(SIZE, SIZE), num_classes=5)
    torch.manual_seed(0)
    model = Model(build(cfg), cfg, [str(i) for i in range(5)], PREPROCESS)
    for m in model.net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a cumulative average over the batches below
    model.net.train()
    with torch.no_grad():
        model.net(model.to_tensor(x))
    model.net.eval()
    return export(model, tmp_path_factory.mktemp("mnv3") / "mnv3.onnx"), x


def group(node):
    return next((a.i for a in node.attribute if a.name == "group"), 1)


def conv_kinds(path):
    """Node name -> "depthwise" or "conv" for every Conv of an ONNX file."""
    nodes = onnx.load(str(path)).graph.node
    return {n.name: "depthwise" if group(n) > 1 else "conv" for n in nodes if n.op_type == "Conv"}


def optimized(path, tmp_path):
    """The nodes onnxruntime really runs (EXTENDED: QDQ fusions, no NCHWc layout)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return list(onnx.load(str(tmp_path / "opt.onnx")).graph.node)


def close(path, int8_path, x, tol):
    """Whether the int8 logits are within `tol` relative L2 error of the fp32 ones and keep the top
    class of 3 images in 4. A random deep net amplifies small changes (and int8 rounding is one),
    so `tol` is loose; an int8 graph that broke the hardswish or the SE blocks would be far off."""
    f, q = logits(path, x), logits(int8_path, x)
    return np.linalg.norm(q - f) / np.linalg.norm(f) <= tol and (q.argmax(1) == f.argmax(1)).mean() >= 0.75


def logits(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    mean, std = (np.asarray(PREPROCESS[k], np.float32).reshape(1, 3, 1, 1) for k in ("mean", "std"))
    return sess.run(None, {"input": (x.astype(np.float32) / 255 - mean) / std})[0]


def test_depthwise_hardswish_and_squeeze_excite_survive_int8(mobilenet, tmp_path):
    path, x = mobilenet
    r = quantize(path, QuantizeConfig(), x, PREPROCESS, out_path=tmp_path / "int8.onnx")
    kinds = conv_kinds(path)
    depthwise = {n for n, k in kinds.items() if k == "depthwise"}
    assert len(depthwise) == 11  # one per inverted-residual block
    # Every depthwise conv stays fp32, with the reason recorded, and so does the 3-channel stem.
    assert {n for n, why in r.excluded.items() if why == "depthwise"} == depthwise
    assert sorted(r.excluded.values()) == ["depthwise"] * 11 + ["stem"]
    ran = optimized(r.path, tmp_path)
    fp32_convs = [n for n in ran if n.op_type in ("Conv", "FusedConv")]  # FusedConv: with its activation
    # They really run fp32 (stock onnxruntime did not quantize their weights itself); the rest, SE included, int8.
    assert len(fp32_convs) == 12 and sum(group(n) > 1 for n in fp32_convs) == 11
    assert [n.op_type for n in ran].count("QLinearConv") == len(kinds) - 12
    # Hardswish (inlined by onnxruntime as x * HardSigmoid(x)) and the SE gates multiply in float.
    ops = [n.op_type for n in ran]
    assert ops.count("Mul") == 19 + 9 and "QLinearMul" not in ops and "HardSigmoid" in ops and "QGemm" in ops
    assert close(path, r.path, x, 0.35) and r.int8_bytes < 0.35 * r.fp32_bytes
    assert onnx_metadata(r.path)["quantize_excluded"] == r.excluded


def test_float_depthwise_off_quantizes_every_conv_but_the_stem(mobilenet, tmp_path):
    path, x = mobilenet
    r = quantize(path, QuantizeConfig(float_depthwise=False), x, PREPROCESS, out_path=tmp_path / "int8.onnx")
    assert list(r.excluded.values()) == ["stem"]
    ran = optimized(r.path, tmp_path)
    dw_int8 = [n for n in ran if n.op_type == "QLinearConv" and group(n) > 1]
    assert sum(n.op_type in ("Conv", "FusedConv") for n in ran) == 1 and len(dw_int8) == 11
    # Looser than the test above: on x86 without VNNI the default is 7-bit weights, and with the
    # depthwise convs int8 too their rounding adds up; saturating 8-bit weights stay far past it.
    assert close(path, r.path, x, 0.4)


def test_float_depthwise_must_be_a_bool():
    with pytest.raises(BadInput, match="float_depthwise must be true or false, got 'no'"):
        QuantizeConfig(float_depthwise="no")
    assert config_from_dict(QuantizeConfig(float_depthwise=False).to_dict()).float_depthwise is False
