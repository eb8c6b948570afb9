"""The photo backbones against torchvision's own source (tests/models/torchvision_shapes.json, written by
scripts/torchvision_fixture.py), their ONNX export, and `load_weights`' checks."""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from datamoat.compress.export import ExportConfig, export_bytes
from datamoat.errors import BadInput, NotFound
from datamoat.models.backbones import BACKBONES, build_backbone, head_name, load_weights, replace_head
from datamoat.models.backbones_mobile import StochasticDepth

HERE = Path(__file__).resolve().parent
FIXTURE = json.loads((HERE / "torchvision_shapes.json").read_text())
_spec = importlib.util.spec_from_file_location(
    "torchvision_fixture", HERE.parents[1] / "scripts" / "torchvision_fixture.py"
)
assert _spec is not None and _spec.loader is not None
tvfix = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tvfix)  # describe() and probe(): the very code that wrote the fixture

# torchvision's documented parameter counts (the weights enums' "num_params")
DOCUMENTED = {
    "resnet18": 11_689_512,
    "resnet50": 25_557_032,
    "mobilenet_v3_small": 2_542_856,
    "mobilenet_v3_large": 5_483_032,
    "efficientnet_b0": 5_288_548,
}
NAMES = sorted(DOCUMENTED)


@functools.cache
def built(name: str) -> nn.Module:
    torch.manual_seed(0)
    return build_backbone(name)


def spec_of(net: nn.Module) -> list[list]:
    return [[k, list(v.shape)] for k, v in net.state_dict().items()]


def test_the_fixture_holds_the_five_backbones_from_a_named_torchvision_commit():
    assert set(FIXTURE["models"]) == set(BACKBONES) == set(DOCUMENTED)
    assert len(FIXTURE["source"]["commit"]) == 40 and FIXTURE["source"]["version"].startswith("0.")
    for name, ref in FIXTURE["models"].items():
        assert ref["params"] == DOCUMENTED[name]  # the fixture agrees with torchvision's docs
        assert len(ref["state"]) > 100 and len(ref["modules"]) > 50 and len(ref["probe"]) == 2


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_and_layers_equal_torchvisions(name):
    ref, got = FIXTURE["models"][name], tvfix.describe(built(name))
    assert got["state"] == ref["state"]  # names, order and shapes: strict load_state_dict needs all three
    assert got["modules"] == ref["modules"]  # strides, padding, groups, BN eps/momentum, dropout/drop-path rates
    assert got["params"] == ref["params"] == DOCUMENTED[name]


@pytest.mark.parametrize("name", NAMES)
def test_forward_equals_torchvisions_on_the_probe(name):
    ref = FIXTURE["models"][name]
    got = torch.tensor(tvfix.probe(build_backbone(name), ref["state"]))  # (2, 40)
    want = torch.tensor(ref["probe"])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def test_the_comparisons_can_fail():
    ref = FIXTURE["models"]["mobilenet_v3_small"]
    assert tvfix.describe(build_backbone("mobilenet_v3_small", num_classes=10))["state"] != ref["state"]
    assert tvfix.describe(build_backbone("mobilenet_v3_small", in_channels=1))["state"] != ref["state"]
    net = build_backbone("mobilenet_v3_small")
    net.features[4].block[1][0].stride = (1, 1)  # same weights, another stride: only the leaf list sees it
    assert tvfix.describe(net)["state"] == ref["state"] and tvfix.describe(net)["modules"] != ref["modules"]
    net = build_backbone("mobilenet_v3_small")
    net.features[5].use_res_connect = False  # same layers, another forward: only the probe sees it
    assert tvfix.describe(net)["modules"] == ref["modules"]
    assert tvfix.probe(net, ref["state"]) != ref["probe"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("in_channels", [3, 1])
def test_forward_shapes_at_64px(name, in_channels):
    net = build_backbone(name, num_classes=7, in_channels=in_channels).eval()
    x = torch.randn(2, in_channels, 64, 64, generator=torch.Generator().manual_seed(0))  # (B, C, H, W)
    with torch.no_grad():
        out = net(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    first = next(v for k, v in net.state_dict().items() if k.endswith("weight") and v.ndim == 4)
    assert first.shape[1] == in_channels


def test_stochastic_depth_drops_rows_in_training_and_is_identity_at_eval():
    net = build_backbone("efficientnet_b0")
    rates = [m.p for m in net.modules() if isinstance(m, StochasticDepth)]
    assert len(rates) == 16 and rates[0] == 0.0 and rates == sorted(rates) and rates[-1] < 0.2
    sd = StochasticDepth(0.5, "row")
    x = torch.ones(4000, 2, 1, 1)  # (B, C, H, W)
    assert torch.equal(sd.eval()(x), x)
    torch.manual_seed(0)
    y = sd.train()(x)
    assert set(y.unique().tolist()) == {0.0, 2.0} and torch.equal(y[:, 0], y[:, 1])  # whole rows, rescaled
    assert abs(float(y.mean()) - 1.0) < 0.05
    with pytest.raises(ValueError, match="stochastic depth"):
        StochasticDepth(1.5)


def _wrapped(net: nn.Module, name: str) -> SimpleNamespace:
    """The attributes of a `datamoat.models.Model` that export_bytes reads, around a bare backbone."""

    def example_inputs(batch: int = 1, seed: int = 0) -> torch.Tensor:
        return torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(seed))  # (B, C, H, W)

    config = SimpleNamespace(arch=name, in_channels=3, image_size=(64, 64))
    classes = [str(i) for i in range(10)]
    return SimpleNamespace(
        net=net,
        config=config,
        classes=classes,
        preprocess={},
        id=None,
        name=name,
        lineage={},
        example_inputs=example_inputs,
    )


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_onnx_export_runs_in_onnxruntime_like_pytorch(name):
    import onnxruntime as ort

    net = build_backbone(name, num_classes=10)
    net.load_state_dict(tvfix.synthetic_state(spec_of(net)))  # non-trivial BatchNorm stats to fold
    net.eval()
    data, diff = export_bytes(_wrapped(net, name), ExportConfig(opset=18, parity_batch=4, atol=1e-3))
    assert diff <= 1e-3
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((3, 3, 64, 64)).astype(np.float32)  # another batch size
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()  # (3, 10)
    out = sess.run(None, {"input": x})[0]
    scale = float(np.abs(ref).max())
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5 * scale)


@pytest.fixture
def saved(tmp_path):
    """mobilenet_v3_small with synthetic weights, and its state_dict saved as a .pth."""
    net = build_backbone("mobilenet_v3_small")
    net.load_state_dict(tvfix.synthetic_state(spec_of(net)))
    path = tmp_path / "mnv3s.pth"
    torch.save(net.state_dict(), path)
    return net.eval(), path


def test_load_weights_round_trip(saved):
    net, path = saved
    fresh = build_backbone("mobilenet_v3_small")
    assert load_weights(fresh, path) == {"loaded": len(net.state_dict()), "skipped_head": []}
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), net(x))


@pytest.mark.parametrize("wrap", ["state_dict", "model", "module.", "model+module."])
def test_load_weights_unwraps_envelopes_and_the_dataparallel_prefix(saved, tmp_path, wrap):
    net, _ = saved
    state = net.state_dict()
    if "module." in wrap:
        state = {"module." + k: v for k, v in state.items()}
    if wrap.startswith(("state_dict", "model")):
        state = {wrap.split("+")[0]: state, "epoch": 3}
    torch.save(state, tmp_path / "wrapped.pt")
    fresh = build_backbone("mobilenet_v3_small")
    assert load_weights(fresh, tmp_path / "wrapped.pt")["loaded"] == len(net.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), net.state_dict().values()))


def test_load_weights_keeps_the_prefix_for_a_dataparallel_network(saved):
    net, path = saved
    wrapped = nn.DataParallel(build_backbone("mobilenet_v3_small"))  # keys "module.features..."
    torch.save(wrapped.state_dict(), path.with_name("dp.pth"))
    assert load_weights(wrapped, path.with_name("dp.pth"))["loaded"] == len(net.state_dict())
    assert load_weights(wrapped.module, path.with_name("dp.pth"))["loaded"] == len(net.state_dict())


def _refusal(net: nn.Module, state: dict, tmp_path: Path, **kw) -> str:
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(BadInput) as e:
        load_weights(net, path, **kw)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # nothing half-loaded
    return msg


def test_load_weights_names_a_missing_key_an_unexpected_key_and_a_shape_mismatch(saved, tmp_path):
    net, _ = saved
    state = dict(net.state_dict())
    del state["features.1.block.0.1.running_mean"]
    state["features.99.weight"] = torch.zeros(3)
    state["features.2.block.0.0.weight"] = torch.zeros(72, 8, 1, 1)
    msg = _refusal(build_backbone("mobilenet_v3_small"), state, tmp_path)
    assert "1 missing keys: features.1.block.0.1.running_mean" in msg
    assert "1 unexpected keys: features.99.weight" in msg
    assert "features.2.block.0.0.weight (72, 8, 1, 1) vs (72, 16, 1, 1)" in msg
    assert "build the backbone the checkpoint was saved from" in msg


@pytest.mark.parametrize("problem", ["missing", "unexpected", "shape"])
def test_load_weights_refuses_each_problem_alone(saved, tmp_path, problem):
    net, _ = saved
    state = dict(net.state_dict())
    key = "features.3.block.1.0.weight"
    if problem == "missing":
        del state[key]
    elif problem == "unexpected":
        state["features.3.extra"] = torch.zeros(1)
    else:
        state[key] = state[key][:, :, :1]
    msg = _refusal(build_backbone("mobilenet_v3_small"), state, tmp_path)
    assert {"missing": f"missing keys: {key}", "unexpected": "unexpected keys: features.3.extra"}.get(
        problem, f"{key} (88, 1, 1, 3) vs (88, 1, 3, 3)"
    ) in msg


def test_load_weights_truncates_long_lists_and_points_at_the_head(saved, tmp_path):
    net, _ = saved
    state = {k: v for k, v in net.state_dict().items() if k.startswith("features.0.")}
    msg = _refusal(build_backbone("mobilenet_v3_small"), state, tmp_path)
    n = len(net.state_dict()) - len(state)
    assert f"{n} missing keys: " in msg and f"... and {n - 5} more" in msg
    msg = _refusal(build_backbone("mobilenet_v3_small", num_classes=10), net.state_dict(), tmp_path)
    assert "classifier.3.weight (1000, 1024) vs (10, 1024)" in msg and "pass head='classifier.3'" in msg


class _Payload:
    ran: list[str] = []

    def __reduce__(self):
        return (_Payload.ran.append, ("unpickled code ran",))


def test_load_weights_never_unpickles_code(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(2, 2), "payload": _Payload()}, path)
    with pytest.raises(BadInput, match=r"pickled objects .*weights_only.*torch\.save\(model\.state_dict\(\), path\)"):
        load_weights(build_backbone("resnet18"), path)
    assert _Payload.ran == []


def test_load_weights_reads_safetensors(saved, tmp_path):
    from safetensors.torch import save_file

    net, _ = saved
    save_file(net.state_dict(), tmp_path / "mnv3s.safetensors")
    fresh = build_backbone("mobilenet_v3_small")
    assert load_weights(fresh, tmp_path / "mnv3s.safetensors") == {"loaded": len(net.state_dict()), "skipped_head": []}
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), net(x))


def test_load_weights_bad_files(tmp_path):
    with pytest.raises(NotFound, match="no checkpoint at"):
        load_weights(build_backbone("resnet18"), tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(BadInput, match="is not a PyTorch checkpoint"):
        load_weights(build_backbone("resnet18"), tmp_path / "junk.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(BadInput, match="holds no state_dict"):
        load_weights(build_backbone("resnet18"), tmp_path / "list.pth")
    (tmp_path / "w.safetensors").write_bytes(b"{}")
    with pytest.raises(BadInput, match="is not a readable safetensors file"):
        load_weights(build_backbone("resnet18"), tmp_path / "w.safetensors")


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_b0"])
def test_replace_head_then_load_with_head_skips_and_reports_it(tmp_path, name):
    source = build_backbone(name)
    torch.save(source.state_dict(), tmp_path / "imagenet.pth")
    net = replace_head(build_backbone(name), name, 5)
    head = head_name(name)
    layer = net.get_submodule(head)
    assert isinstance(layer, nn.Linear) and layer.out_features == 5
    kept = layer.weight.detach().clone()
    info = load_weights(net, tmp_path / "imagenet.pth", head=head)
    assert info == {"loaded": len(source.state_dict()) - 2, "skipped_head": [f"{head}.bias", f"{head}.weight"]}
    got, want = net.state_dict(), source.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in got if not k.startswith(head + "."))
    assert torch.equal(got[f"{head}.weight"], kept)  # the new head keeps its fresh init
    assert net.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 5)


def test_head_skipping_covers_only_the_head(tmp_path):
    state = dict(build_backbone("resnet18").state_dict())
    state["layer1.0.conv1.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "r.pth")
    with pytest.raises(BadInput, match=r"1 shape mismatches .*layer1\.0\.conv1\.weight"):
        load_weights(replace_head(build_backbone("resnet18"), "resnet18", 3), tmp_path / "r.pth", head="fc")


def test_bad_names_and_sizes():
    with pytest.raises(BadInput, match="unknown backbone 'resnet19': choose one of resnet18"):
        build_backbone("resnet19")
    with pytest.raises(BadInput, match="num_classes must be at least 1"):
        build_backbone("resnet18", num_classes=0)
    with pytest.raises(BadInput, match="in_channels must be at least 1"):
        build_backbone("resnet18", in_channels=0)
    with pytest.raises(BadInput, match="unknown backbone"):
        head_name("vit_b_16")
    with pytest.raises(BadInput, match="no 'classifier.3' layer"):
        replace_head(build_backbone("resnet18"), "mobilenet_v3_small", 3)


def test_a_head_that_fits_is_still_fresh_unless_kept(tmp_path):
    """A 5-class checkpoint fine-tuned to 5 other classes: the old classifier is wrong for them."""
    torch.manual_seed(0)
    src = replace_head(build_backbone("mobilenet_v3_small"), "mobilenet_v3_small", 5)
    torch.save(src.state_dict(), tmp_path / "five.pth")
    head = head_name("mobilenet_v3_small")
    fresh = replace_head(build_backbone("mobilenet_v3_small"), "mobilenet_v3_small", 5)
    before = {k: v.clone() for k, v in fresh.state_dict().items() if k.startswith(head)}
    done = load_weights(fresh, tmp_path / "five.pth", head=head, keep_head=False)
    assert done["skipped_head"] == sorted(before) and done["loaded"] == len(src.state_dict()) - len(before)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in before.items())  # untouched
    kept = load_weights(fresh, tmp_path / "five.pth", head=head, keep_head=True)
    assert kept["skipped_head"] == [] and torch.equal(
        fresh.state_dict()[f"{head}.weight"], src.state_dict()[f"{head}.weight"]
    )


def test_the_zoo_trains_mobilenets_with_a_momentum_that_keeps_up_and_loads_the_same_weights():
    from datamoat.models.zoo import build, preset

    net = build(preset("mobilenet_v3_small", in_channels=3, image_size=(32, 32), num_classes=1000))
    assert {m.momentum for m in net.modules() if isinstance(m, nn.BatchNorm2d)} == {0.1}
    assert {m.momentum for m in built("mobilenet_v3_small").modules() if isinstance(m, nn.BatchNorm2d)} == {0.01}
    net.load_state_dict(built("mobilenet_v3_small").state_dict())  # strict: momentum is no weight
