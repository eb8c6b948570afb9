import json
from pathlib import Path

import numpy as np
import pytest
from dmtest import dm

from datamoat.compress.distill import DistillConfig
from datamoat.compress.prune import MagnitudeConfig, StructuredConfig
from datamoat.compress.recipe import CompressConfig, choose, compress, pareto_front
from datamoat.configs import config_from_dict
from datamoat.errors import BadInput
from datamoat.models import new_model, save_model
from datamoat.train.loop import TrainConfig, train

ROWS = [
    {"name": "teacher", "accuracy": 0.92, "bytes": 4000, "bytes_zlib": 3600, "latency_ms_b1": 1.0},
    {"name": "student", "accuracy": 0.915, "bytes": 1000, "bytes_zlib": 900, "latency_ms_b1": 0.4},
    {"name": "student-int8", "accuracy": 0.905, "bytes": 300, "bytes_zlib": 250, "latency_ms_b1": 0.3},
    {"name": "slow-small", "accuracy": 0.90, "bytes": 280, "bytes_zlib": 240, "latency_ms_b1": 2.0},
]


def rows():
    return [dict(r) for r in ROWS]


def test_pareto_front_drops_dominated():
    extra = [*rows(), {"name": "worse", "accuracy": 0.90, "bytes": 1200, "bytes_zlib": 1, "latency_ms_b1": 0.5}]
    assert set(pareto_front(extra)) == {"teacher", "student", "student-int8", "slow-small"}


def test_choose_honours_each_constraint():
    assert choose(rows(), CompressConfig(max_accuracy_drop=2.5), 0.92) == "slow-small"
    assert choose(rows(), CompressConfig(max_accuracy_drop=2.5, max_latency_ms=1.0), 0.92) == "student-int8"
    assert choose(rows(), CompressConfig(max_accuracy_drop=1.0), 0.92) == "student"
    assert choose(rows(), CompressConfig(max_accuracy_drop=0.1, max_size_kb=4), 0.92) == "teacher"
    r = rows()
    choose(r, CompressConfig(max_accuracy_drop=1.5, max_size_kb=0.3), 0.92)
    assert [x["meets"] for x in r] == [False, False, True, False]
    assert "size 3.9 KB > 0.3 KB" in r[0]["why_not"] and "accuracy drop 2.00 > 1.5" in r[3]["why_not"]


def test_choose_says_when_nothing_fits():
    with pytest.raises(BadInput, match="no candidate meets the constraints"):
        choose(rows(), CompressConfig(max_accuracy_drop=0.1, max_size_kb=0.1), 0.92)


def test_bad_config():
    with pytest.raises(BadInput, match=r"^quantize: unknown calibration method"):
        CompressConfig(quantize={"calibration": "kl"})
    with pytest.raises(BadInput, match=r"^unstructured: sparsity must be in \[0, 1\)"):
        CompressConfig(unstructured={"sparsity": 1.0})
    with pytest.raises(BadInput, match=r"^structured.ratio must be in \(0, 1\), got 0"):
        CompressConfig(structured={"ratio": 0.0})
    with pytest.raises(BadInput, match=r"^distill\.train: epochs must be at least 1, got 0$"):
        CompressConfig().replace(distill__train__epochs=0)
    with pytest.raises(BadInput, match=r"^structured\.finetune: unknown augmentation 'rotate'"):
        config_from_dict({**CompressConfig().to_dict(), "structured": {"finetune": {"augment": "rotate"}}})
    with pytest.raises(BadInput, match="unknown student architecture 'vit'"):
        CompressConfig(student_arch="vit")


# The recipe the compression benchmark chose and measured (bench/results/compression.md),
# field by field: each step config holds the recipe's value, not necessarily its own default.
BENCHMARKED = {
    "max_accuracy_drop": 1.0,
    "max_size_kb": 0.0,
    "max_latency_ms": 0.0,
    "size_metric": "onnx",
    "student_arch": "cnn_small",
    "student_channels": (),
    "student_hidden": (),
    "distill__temperature": 4.0,
    "distill__alpha": 0.3,
    "distill__train__epochs": 16,
    "distill__train__patience": 0,
    "distill__train__augment": "crop",
    "distill__train__seed": 0,
    "structured__ratio": 0.5,
    "structured__finetune__epochs": 3,
    "structured__finetune__lr": 1e-3,
    "structured__finetune__augment": "crop",
    "structured__finetune__seed": 0,
    "kd_finetune": True,
    "unstructured": None,
    "quantize__calibration": "minmax",
    "quantize__max_accuracy_drop": 0.5,
    "latency_repeats": 50,
}


def test_defaults_are_the_benchmarked_recipe():
    params = CompressConfig().get_params()
    assert {k: params[k] for k in BENCHMARKED} == BENCHMARKED
    # Where the recipe differs from a step config's own defaults, it says so itself.
    assert DistillConfig().train.epochs == 10 and StructuredConfig().finetune.epochs == 1
    # Turned on, the magnitude step is what the flat recipe ran: 90% over 3 rounds of 1 epoch.
    on = CompressConfig(unstructured={})
    assert (on.unstructured.sparsity, on.unstructured.steps, on.unstructured.finetune.epochs) == (0.9, 3, 1)


def test_nested_recipe_round_trips():
    cfg = CompressConfig(max_size_kb=50, unstructured={"sparsity": 0.8}, quantize=None).with_seed(3)
    d = json.loads(cfg.to_json())
    assert d["version"] == 2 and d["distill"]["train"]["type"] == "TrainConfig" and d["quantize"] is None
    assert config_from_dict(d) == cfg


def test_with_seed_seeds_every_training_step_but_not_calibration():
    cfg = CompressConfig(unstructured={}).with_seed(7)
    assert cfg.distill.train.seed == cfg.structured.finetune.seed == cfg.unstructured.finetune.seed == 7
    assert cfg.quantize.seed == 0  # version 1's seed never reached the int8 step's calibration sample
    assert CompressConfig(distill=None, structured=None).with_seed(7).distill is None


def test_version_1_flat_recipes_still_load():
    # What `datamoat compress` recorded before the steps had configs of their own: the benchmark's run.
    stored = json.loads((Path(__file__).parents[2] / "bench/results/compression.json").read_text())
    old = stored["summary"]["recipe_config"]
    assert old["version"] == 1 and old["distill_epochs"] == 16
    assert config_from_dict(old) == CompressConfig()
    flat = {
        **old,
        "distill": False,
        "augment": "none",
        "structured_ratio": 0.25,
        "structured_epochs": 1,
        "unstructured": True,
        "sparsity": 0.8,
        "unstructured_steps": 2,
        "unstructured_epochs": 0,
        "calibration": "entropy",
        "seed": 4,
    }
    assert config_from_dict(flat) == CompressConfig(
        distill=None,
        structured={"ratio": 0.25, "finetune": {"epochs": 1, "augment": "none"}},
        unstructured={"sparsity": 0.8, "steps": 2, "finetune": {"epochs": 0}},
        quantize={"calibration": "entropy"},
    ).with_seed(4)
    assert config_from_dict({**old, "quantize": False}).quantize is None


FAST = dict(
    distill={"train": {"epochs": 2, "augment": "none"}},
    structured={"finetune": {"epochs": 1, "augment": "none"}},
    unstructured=MagnitudeConfig(steps=1, finetune={"epochs": 1}),
    latency_repeats=5,
    student_arch="cnn_small",
    student_channels=(8, 16),
    student_hidden=(32,),
)


@pytest.fixture(scope="module")
def teacher_ws(tmp_path_factory):
    from datamoat.data import import_digits
    from datamoat.workspace import Workspace

    ws = Workspace.init(tmp_path_factory.mktemp("cws"))
    data = import_digits(ws)
    teacher = train(new_model("cnn_medium", data), data, TrainConfig(epochs=4, threads=1), progress=False)
    return ws, data, save_model(ws, teacher, name="teacher")


def test_recipe_end_to_end(teacher_ws, tmp_path):
    import onnxruntime as ort

    ws, data, teacher = teacher_ws
    res = compress(teacher, data, CompressConfig(max_accuracy_drop=5.0, **FAST), out_dir=tmp_path)
    names = [c["name"] for c in res.candidates]
    assert names == [
        "teacher",
        "teacher-int8",
        "student",
        "student-int8",
        "distill+structured",
        "distill+structured-int8",
        "distill+structured+unstructured",
        "distill+structured+unstructured-int8",
    ]
    x, y = data.subset("test")
    for c in res.candidates:
        sess = ort.InferenceSession(c["onnx_path"], providers=["CPUExecutionProvider"])
        assert sess.run(None, {"input": np.zeros((2, 1, 8, 8), np.float32)})[0].shape == (2, 10)
        assert c["latency_ms_b1"] > 0 and c["throughput_b64"] > 0 and c["bytes"] == Path(c["onnx_path"]).stat().st_size
    int8 = res.candidate("teacher-int8")
    assert int8["bytes"] < 0.5 * res.candidate("teacher")["bytes"]
    pruned = res.candidate("distill+structured")
    assert pruned["params"] < res.candidate("student")["params"] < res.candidate("teacher")["params"]
    # The pruned student is fine-tuned against the teacher, not the labels alone.
    steps = [r["type"] for r in res.models["distill+structured"].lineage["recipe"]]
    assert steps[-2:] == ["StructuredConfig", "DistillConfig"], steps
    # Where int8 is not clearly faster than its own fp32 model, the table says so, by name.
    weak = [c["name"] for c in res.candidates if "int8" in c["steps"] and c["int8_speedup_b1"] < 1.25]
    assert ("int8 barely pays" in res.table_md) == bool(weak)
    assert all(f"{n} (" in res.table_md.split("barely pays")[-1] for n in weak)
    sparse = res.candidate("distill+structured+unstructured")
    assert sparse["bytes_zlib"] < pruned["bytes_zlib"]
    chosen = res.candidate(res.chosen)
    assert chosen["meets"] and chosen["accuracy_drop_points"] <= 5.0
    assert all(chosen["bytes"] <= c["bytes"] for c in res.candidates if c["meets"])
    saved = json.loads((tmp_path / "candidates.json").read_text())
    assert [c["name"] for c in saved["candidates"]] == names
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_cli_registers_the_choice_or_nothing(teacher_ws):
    from datamoat.registry.core import Registry, registry_url

    ws, _, teacher = teacher_ws
    fast = ["--distill-epochs", "1", "--no-unstructured", "--student", "mlp"]
    refused = dm(ws.root, "compress", teacher.id, "--max-size-kb", "0.01", *fast)
    assert refused.returncode == 2 and "no candidate meets the constraints" in refused.stderr
    assert Registry(registry_url(ws)).versions() == []
    ok = dm(ws.root, "compress", teacher.id, "--max-accuracy-drop", "10", "--json", *fast)
    assert ok.returncode == 0, ok.stderr
    out = json.loads(ok.stdout)
    assert {"candidates", "chosen", "model_id"} <= set(out)
    for c in out["candidates"]:
        assert {"name", "steps", "accuracy", "bytes", "latency_ms_b1", "throughput_b64", "onnx_path"} <= set(c)
    version = Registry(registry_url(ws)).version(out["model_id"])
    assert version["info"]["lineage"]["teacher_id"] == teacher.id
    recipe = version["info"]["recipe"]
    assert recipe["type"] == "CompressConfig" and recipe["distill"]["train"]["epochs"] == 1
    assert recipe["unstructured"] is None and recipe["distill"]["type"] == "DistillConfig"
    assert config_from_dict(recipe).student_arch == "mlp"


def test_a_student_structured_pruning_cannot_narrow_is_distilled_and_the_skip_recorded(teacher_ws, tmp_path):
    ws, data, teacher = teacher_ws
    cfg = CompressConfig(max_accuracy_drop=100.0, student_arch="mobilenet_v3_small", quantize=None).replace(
        distill__train__epochs=1
    )
    res = compress(teacher, data, cfg, out_dir=tmp_path)
    assert [c["name"] for c in res.candidates] == ["teacher", "student"]
    assert "MobileNetV3" in res.skipped["structured"] and "Skipped structured" in res.table_md
    assert json.loads((tmp_path / "candidates.json").read_text())["skipped"] == res.skipped
