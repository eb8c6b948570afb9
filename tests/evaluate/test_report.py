import base64
import dataclasses
import io
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from datamoat.cli import app
from datamoat.data import make_dataset
from datamoat.errors import BadInput, NotFound
from datamoat.evaluate.metrics import EvalConfig, evaluate, evaluate_probs, worst_confusions
from datamoat.evaluate.report import evaluate_in_workspace, write_report
from datamoat.models import new_model

DATA_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
PNG_URL = "data:image/png;base64,"
VOID = {"meta", "img", "br", "hr", "link", "input"}


class _Checker(HTMLParser):
    """Fails on mismatched or unclosed tags; collects visible text and the images' attributes."""

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.text, self.imgs = [], [], [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def _png(src):
    assert src.startswith(PNG_URL)
    im = Image.open(io.BytesIO(base64.b64decode(src.removeprefix(PNG_URL))))
    im.load()  # raises on a truncated or corrupt PNG
    assert im.format == "PNG"
    return im


def check_html(text):
    """(plots, thumbnails as (attributes, image), visible text) of a valid, self-contained page."""
    p = _Checker()
    p.feed(text)
    p.close()
    assert p.errors == [] and p.stack == [], (p.errors, p.stack)
    assert text.lstrip().lower().startswith("<!doctype html>")
    assert "http://" not in text and "https://" not in text
    assert len(DATA_URI.findall(text)) == len(p.imgs)  # every image is an inline PNG
    plots = [_png(a["src"]) for a in p.imgs if "thumb" not in a.get("class", "").split()]
    thumbs = [(a, _png(a["src"])) for a in p.imgs if "thumb" in a.get("class", "").split()]
    for im in plots:
        assert im.size[0] >= 200 and im.size[1] >= 200
    return plots, thumbs, "".join(p.text)


def test_report_with_learning_curve(saved, tmp_path):
    _, ds, model = saved
    model = dataclasses.replace(model, history={**model.history, "plateau": {"epoch": 1, "message": "plateau at 1"}})
    ev = evaluate(model, ds)
    paths = write_report(ev, model, tmp_path / "r")
    assert set(paths) == {"md", "html"} and all(p.exists() for p in paths.values())
    html_text = paths["html"].read_text()
    assert html_text.count('<img alt="Learning curve" src="data:image/png;base64,') == 1
    plots, _, visible = check_html(html_text)
    assert len(plots) == 3
    assert f"{ev.accuracy:.4f}" in visible and "plateau at 1" in visible

    md = paths["md"].read_text()
    assert f"| accuracy | {ev.accuracy:.4f} |" in md
    assert f"| macro F1 | {ev.macro_f1:.4f} |" in md
    assert "| architecture | mlp |" in md and "digits-mlp" in md
    assert "plateau at 1" in md
    assert "| epoch | train loss | val accuracy | seconds |" in md
    for pt in model.history["curve"]:  # one learning-curve row per epoch
        assert f"| {pt['epoch']} | {pt['train_loss']:.4f} | {pt['val_accuracy']:.4f} | {pt['seconds']:.1f} |" in md
    # The per-class table has one row per class with its support.
    for p in ev.per_class:
        assert f"| {p['class']} | {p['precision']:.4f} | {p['recall']:.4f} | {p['f1']:.4f} | {p['support']} |" in md


def test_report_without_curve_says_so(saved, tmp_path):
    _, ds, _ = saved
    untrained = new_model("mlp", ds)
    paths = write_report(evaluate(untrained, ds), untrained, tmp_path)
    plots, _, visible = check_html(paths["html"].read_text())
    assert len(plots) == 2
    assert "No learning curve" in visible
    assert "No learning curve" in paths["md"].read_text()


def test_report_escapes_class_names(saved, tmp_path):
    _, _, model = saved
    classes = ["<script>x</script>", "a|b&c"]
    ev = evaluate_probs(np.array([[0.8, 0.2], [0.3, 0.7]]), np.array([0, 1]), classes)
    paths = write_report(ev, model, tmp_path)
    html_text = paths["html"].read_text()
    assert "<script>" not in html_text and "&lt;script&gt;" in html_text and "a|b&amp;c" in html_text
    check_html(html_text)
    assert "a\\|b&c" in paths["md"].read_text()  # a pipe would split the Markdown cell


def _caption(w, e):
    return f"#{e['index']}, true {w['true']}, predicted {w['predicted']}, confidence {e['confidence']:.4f}"


def test_worst_confusions_show_the_most_confused_pair_with_its_images(saved, tmp_path):
    _, ds, model = saved
    ev = evaluate(model, ds)
    errors = np.array(ev.confusion)  # (K, K)
    np.fill_diagonal(errors, 0)
    assert errors.any(), "the small model makes no test errors: nothing to check"
    t, p = np.unravel_index(errors.argmax(), errors.shape)  # the first of the largest, as the report orders ties
    worst = ev.worst_confusions[0]
    assert (worst["true"], worst["predicted"], worst["count"]) == (ds.classes[t], ds.classes[p], errors[t, p])

    # The examples are the pair's real mistakes, most confident first, with the model's own confidence.
    idx = np.array([e["index"] for e in worst["examples"]])
    assert len(idx) == min(4, errors[t, p]) and (ds.y[idx] == t).all() and (ds.split[idx] == 2).all()
    probs = torch.softmax(torch.from_numpy(model.logits(ds.x[idx])).double(), 1).numpy()  # (n, K)
    assert (probs.argmax(1) == p).all()
    conf = [e["confidence"] for e in worst["examples"]]
    assert conf == pytest.approx(probs.max(1).tolist()) and conf == sorted(conf, reverse=True)

    paths = write_report(ev, model, tmp_path, x=ds.x)
    md = paths["md"].read_text()
    listed = ", ".join(f"{e['index']} ({e['confidence']:.4f})" for e in worst["examples"])
    assert f"| {ds.classes[t]} | {ds.classes[p]} | {errors[t, p]} | {listed} |" in md
    assert "data:image" not in md

    _, thumbs, visible = check_html(paths["html"].read_text())
    shown = [(w, e) for w in ev.worst_confusions for e in w["examples"]][:12]
    assert len(thumbs) == len(shown) and [a["alt"] for a, _ in thumbs] == [_caption(w, e) for w, e in shown]
    for (attrs, im), (_, e) in zip(thumbs, shown, strict=True):
        # 8x8 digits: drawn pixelated from their exact pixels (small images are never resampled).
        assert "px" in attrs["class"].split() and np.array_equal(np.asarray(im), ds.x[e["index"], 0])
        assert f"#{e['index']}" in visible and f"confidence {e['confidence']:.4f}" in visible


def test_photo_thumbnails_are_bounded_and_smooth(saved, tmp_path):
    _, _, model = saved
    rng = np.random.default_rng(0)
    n, k = 48, 4
    y = np.arange(n) % k
    pred = (y + 1 + np.arange(n) // k % 3) % k  # every sample wrong: four errors in each off-diagonal cell
    conf = rng.uniform(0.4, 0.9, n)
    probs = np.repeat(((1 - conf) / (k - 1))[:, None], k, axis=1)  # (N, K)
    probs[np.arange(n), pred] = conf
    x = rng.integers(0, 256, size=(n, 3, 200, 150), dtype=np.uint8)  # (N, C, H, W) portrait photos
    classes = ["cat", "dog", "fox", "owl"]
    ev = evaluate_probs(probs, y, classes)
    # More examples than the page shows: the gallery stops at 12.
    ev = dataclasses.replace(ev, worst_confusions=worst_confusions(probs, y, classes, np.arange(n), pairs=5))
    assert sum(len(w["examples"]) for w in ev.worst_confusions) > 12
    _, thumbs, _ = check_html(write_report(ev, model, tmp_path, x=x)["html"].read_text())
    assert len(thumbs) == 12
    for attrs, im in thumbs:
        assert im.mode == "RGB" and im.size == (72, 96)  # shrunk to 96 px, the aspect ratio kept
        assert "px" not in attrs["class"].split()


def test_no_errors_says_so(saved, tmp_path):
    _, ds, model = saved
    y = np.array([0, 1, 2, 1])
    ev = evaluate_probs(np.eye(3)[y], y, ["a", "b", "c"])
    assert ev.worst_confusions == []
    paths = write_report(ev, model, tmp_path, x=ds.x[:4])
    _, thumbs, visible = check_html(paths["html"].read_text())
    assert thumbs == [] and "No errors on the test split" in visible
    md = paths["md"].read_text()
    assert "No errors on the test split" in md and "dataset index (confidence)" not in md


def test_write_report_rejects_images_that_do_not_hold_the_examples(saved, tmp_path):
    _, ds, model = saved
    ev = evaluate(model, ds)
    assert ev.worst_confusions
    with pytest.raises(BadInput, match="evaluated"):
        write_report(ev, model, tmp_path, x=ds.x[:1])
    assert not (tmp_path / "report.md").exists()


def test_run_eval_stores_row_and_report(saved):
    ws, ds, model = saved
    ev, paths, eval_id = evaluate_in_workspace(ws, "digits-mlp", config=EvalConfig(split="val"))
    assert paths["html"] == ws.root / "reports" / eval_id / "report.html"
    assert paths["md"].exists() and paths["html"].exists()
    row = ws.resolve("evals", eval_id)
    assert (row["model_id"], row["dataset_id"], row["split"]) == (model.id, ds.id, "val")
    assert row["metrics"]["accuracy"] == ev.accuracy and row["metrics"]["confusion"] == ev.confusion
    assert (ws.root / row["report"]["html"]) == paths["html"]
    assert ev.model_id == model.id and ev.n == int((ds.split == 1).sum())


def test_run_eval_rejects_dataset_with_other_classes(saved):
    ws, ds, _ = saved
    make_dataset(ws, ds.x, ds.y, [f"c{i}" for i in range(10)], name="renamed", source={"kind": "test"})
    before = len(ws.rows("evals"))
    with pytest.raises(BadInput, match="same classes"):
        evaluate_in_workspace(ws, "digits-mlp", "renamed")
    assert len(ws.rows("evals")) == before


def test_cli_eval_json(saved):
    ws, ds, model = saved
    result = CliRunner().invoke(app, ["--home", str(ws.root), "eval", model.id, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["model_id"] == model.id and out["dataset_id"] == ds.id and out["split"] == "test"
    assert {"eval_id", "accuracy", "macro_f1", "ece", "per_class", "report", "report_md"} <= set(out)
    assert len(out["per_class"]) == 10
    assert out["report"].endswith("report.html")
    _, thumbs, _ = check_html(Path(out["report"]).read_text())
    metrics = ws.resolve("evals", out["eval_id"])["metrics"]
    assert metrics["accuracy"] == out["accuracy"]
    # The JSON carries the same worst confusions as the stored row and the page's thumbnails.
    assert out["worst_confusions"] == metrics["worst_confusions"] == evaluate(model, ds).worst_confusions
    assert [a["alt"] for a, _ in thumbs] == [_caption(w, e) for w in out["worst_confusions"] for e in w["examples"]]


def test_cli_eval_human(saved):
    ws, _, model = saved
    result = CliRunner().invoke(app, ["--home", str(ws.root), "eval", "digits-mlp", "--split", "train"])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "ECE" in result.output and "report.html" in result.output
    assert "train split" in result.output and "worst confusions: " in result.output


@pytest.mark.slow
def test_cli_unknown_model(saved):
    ws, _, _ = saved
    result = CliRunner().invoke(app, ["--home", str(ws.root), "eval", "no-such-model"])
    assert isinstance(result.exception, NotFound)
    # Through the real entry point, a user error is one line on stderr and exit code 2.
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from datamoat.cli import main; main()",
            "--home",
            str(ws.root),
            "eval",
            "no-such-model",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "no-such-model" in proc.stderr and proc.stdout == ""
