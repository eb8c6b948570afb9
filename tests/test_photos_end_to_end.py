"""Every stage on a photo model: import, render, train from the shards, eval, export, quantize, the
data verbs, the proof of concept, tuning, compress (a ResNet distilled into MobileNetV3-Small),
improve, the server with a JPEG upload of any size, a signed bundle and a device, and the review
queue showing the photo (issue 17)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from dmtest import dm_main
from PIL import Image

pytestmark = pytest.mark.slow


@pytest.fixture
def run(monkeypatch, capsys, tmp_path):
    home = tmp_path / "ws"

    def run(*args, code=0) -> dict:
        got, out, err = dm_main(monkeypatch, capsys, home, *args)
        assert got == code, err
        return json.loads(out) if code == 0 else {"stderr": err}

    run("init", home, "--json")
    return run


def test_a_photo_project_from_the_folder_to_a_device(photo_world, run, tmp_path):
    folder = shutil.copytree(photo_world.folder, tmp_path / "photos")
    imp = run("data", "import-photos", folder, "--json")
    assert imp["imported"] == len(photo_world.photos.index) and imp["skipped_reasons"] == {"corrupt": 1}
    ds = run("data", "render", imp["id"], "--size", "32", "--workers", "0", "--json")
    assert ds["input_shape"] == [3, 32, 32] and ds["photo_version"] == imp["id"]
    assert run("data", "list", "--json")["photos"][0]["id"] == imp["id"]
    t = run(
        "train", "--data", ds["dataset_id"], "--arch", "mobilenet_v3_small", "--epochs", "2", "--workers", "1", "--json"
    )
    model = t["model_id"]
    ev = run("eval", model, "--json")
    assert ev["n"] == imp["splits"]["test"] and 0 <= ev["accuracy"] <= 1

    ex = run("export", model, "--json")
    import onnx

    graph = onnx.load(ex["path"])
    assert [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim][1:] == [3, 32, 32]
    from datamoat.compress.export import onnx_metadata

    assert onnx_metadata(ex["path"])["preprocess"]["photo"]["size"] == [32, 32]
    q = run("quantize", model, "--max-accuracy-drop", "100", "--no-bench", "--json")
    assert q["int8_accuracy"] is not None

    issues = run(
        "data",
        "issues",
        ds["dataset_id"],
        "--folds",
        "2",
        "--epochs",
        "1",
        "--arch",
        "cnn_small",
        "-o",
        tmp_path / "issues.json",
        "--json",
    )
    assert issues["dataset_id"] == ds["dataset_id"]
    fix = tmp_path / "fix.json"
    fix.write_text(json.dumps({"fixes": [{"index": 0, "drop": True}]}))
    fixed = run("data", "fix", ds["dataset_id"], "--from", fix, "--json")
    d = run("data", "diff", ds["dataset_id"], fixed["dataset_id"], "--json")
    assert d["totals"]["removed"] == 1 and d["totals"]["added"] == 0
    poc = run("poc", model, "--target-accuracy", "0.5", "--json")
    assert "verdict" in poc
    tune = run(
        "tune", "--data", ds["dataset_id"], "--trials", "2", "--archs", "cnn_small", "--epochs-max", "1", "--json"
    )
    assert len(tune["trials"]) == 2

    # compress: a ResNet teacher distilled into MobileNetV3-Small, each candidate measured on the photos
    teacher = run(
        "train", "--data", ds["dataset_id"], "--arch", "resnet18", "--epochs", "1", "--workers", "0", "--json"
    )
    comp = run(
        "compress",
        teacher["model_id"],
        "--student",
        "mobilenet_v3_small",
        "--distill-epochs",
        "1",
        "--max-accuracy-drop",
        "100",
        "--json",
    )
    names = {c["name"] for c in comp["candidates"]}
    assert {"teacher", "student", "student-int8"} <= names and "MobileNetV3" in comp["skipped"]["structured"]
    student = next(c for c in comp["candidates"] if c["name"] == "student")
    teacher_row = next(c for c in comp["candidates"] if c["name"] == "teacher")
    assert student["params"] < teacher_row["params"] / 5 and comp["chosen"] in names
    imp = run("improve", "--data", ds["dataset_id"], "--budget-minutes", "0.1", "--epochs", "2", "--json")
    assert set(imp["levers"]) == {"model", "data", "label"} and imp["curve"][-1]["fraction"] == 1.0


def _jpeg(pixels: np.ndarray, size: tuple[int, int]) -> bytes:
    """A phone-sized JPEG made from an (H, W, 3) photo: any size, not the model's."""
    buf = io.BytesIO()
    Image.fromarray(pixels).resize(size).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_a_jpeg_of_any_size_is_served_by_the_cloud_and_a_device_as_training_saw_it(photo_world, tmp_path):
    from serve.serve_util import Live, auth

    from datamoat.data.photo_transforms import decode, fit
    from datamoat.edge.bundle import build_bundle
    from datamoat.edge.config import EdgeConfig
    from datamoat.edge.keys import generate_keys, load_private_key
    from datamoat.edge.runtime import EdgeRuntime
    from datamoat.inference.engine import open_version
    from datamoat.inference.inputs import parse_image
    from datamoat.models import new_model, save_model
    from datamoat.registry.core import Registry
    from datamoat.registry.register import register_model
    from datamoat.serve.app import create_app
    from datamoat.serve.config import ServeConfig
    from datamoat.train.loop import TrainConfig, train

    w = photo_world
    m = train(new_model("cnn_small", w.ds), w.ds, TrainConfig(epochs=1, workers=0), progress=False)
    m = save_model(w.ws, m, name="photo-cnn")
    reg = Registry(f"sqlite:///{tmp_path / 'reg.db'}")
    vid = register_model(w.ws, reg, m.id, actor="test")
    reg.promote(vid, "production", actor="test")
    reg.set_policy(vid, {"per_class": dict.fromkeys(m.classes)}, actor="test")  # every answer to review
    row = reg.version(vid)
    photo = decode(w.photos.read(w.photos.index[0]["sha256"])).permute(1, 2, 0).numpy()  # (H, W, 3)
    uploads = [_jpeg(photo, (1600, 1200)), _jpeg(photo, (300, 700))]  # landscape 4:3 and a tall portrait
    version = open_version(reg.artifact(row["onnx_sha"]), {**row["info"], **row, "version_id": vid})
    pre = row["info"]["preprocess"]
    expected = []
    for data in uploads:  # what training's evaluation path gives the model for these exact bytes
        x = fit(decode(data), transform_of_model(pre))[None].numpy().astype(np.float32)  # (1, 3, 32, 32)
        expected.append(version.probabilities(x)[0])

    tokens = {r: reg.create_token(r, f"{r}-bot", actor="test") for r in ("predict", "review")}
    app = create_app(reg, ServeConfig(poll_interval_s=0.02, ort_threads=1))
    with Live(app) as srv:
        for data, p in zip(uploads, expected, strict=True):
            r = srv.post("/v1/predict", content=data, headers={**auth(tokens["predict"]), "content-type": "image/jpeg"})
            assert r.status_code == 200, r.text
            top = r.json()["predictions"][0]["top_k"][0]
            assert top["label"] == m.classes[int(p.argmax())] and abs(top["probability"] - float(p.max())) < 1e-5
        srv.run(srv.ctx.plog.flush)
        item = srv.get("/v1/review/next", headers=auth(tokens["review"])).json()["item"]
        assert item["shape"] == [3, 32, 32]  # the reviewer sees the photo as the model did, in colour
        assert Image.open(io.BytesIO(__import__("base64").b64decode(item["image"].split(",")[1]))).mode == "RGB"

    keys = generate_keys(tmp_path / "k" / "release.pem")
    bundle = build_bundle(reg, vid, load_private_key(keys["private"]), 1)
    rt = EdgeRuntime(EdgeConfig(device_id="cam", state_dir=str(tmp_path / "dev"), trust=(keys["public"],)))
    assert rt.install_bytes(bundle, source="usb")["status"] == "installed"
    for data, p in zip(uploads, expected, strict=True):
        answers, _ = rt.predict(parse_image(data, 24_000_000))
        top = answers["predictions"][0]["top_k"][0]
        assert top["label"] == m.classes[int(p.argmax())] and abs(top["probability"] - float(p.max())) < 1e-5
    rt.close()


def transform_of_model(preprocess):
    from datamoat.data.photo_render import transform_of

    return transform_of(preprocess)


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="Fashion-MNIST not installed")
def test_the_photo_demo_goes_from_synthetic_jpegs_to_a_served_model_and_a_signed_bundle(run):
    assert "at least 4" in run("demo", "--photos", "--per-class", "2", code=2)["stderr"]
    out = run("demo", "--photos", "--per-class", "6", "--epochs", "1", "--json")
    assert out["photos"] == 60 and out["input_shape"] == [3, 32, 32] and out["arch"] == "resnet"
    assert out["served"]["status"] == 200 and out["served"]["label"] in out["classes"]
    assert out["bundle"]["sequence"] >= 1 and len(out["bundle"]["sha"]) == 64
    assert Path(out["report"]).is_file()
