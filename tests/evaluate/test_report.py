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
from PIL import Image
from typer.testing import CliRunner

from datamoat.cli import app
from datamoat.data import make_dataset
from datamoat.errors import BadInput, NotFound
from datamoat.evaluate.metrics import EvalConfig, evaluate, evaluate_probs
from datamoat.evaluate.report import evaluate_in_workspace, write_report
from datamoat.models import new_model

DATA_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
VOID = {"meta", "img", "br", "hr", "link", "input"}


class _Checker(HTMLParser):
    """Fails on mismatched or unclosed tags; collects visible text."""

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def check_html(text):
    p = _Checker()
    p.feed(text)
    p.close()
    assert p.errors == [] and p.stack == [], (p.errors, p.stack)
    assert text.lstrip().lower().startswith("<!doctype html>")
    assert "http://" not in text and "https://" not in text
    images = [Image.open(io.BytesIO(base64.b64decode(b))) for b in DATA_URI.findall(text)]
    for im in images:
        im.load()  # raises on a truncated or corrupt PNG
        assert im.format == "PNG" and im.size[0] >= 200 and im.size[1] >= 200
    return images, "".join(p.text)


def test_report_with_learning_curve(saved, tmp_path):
    _, ds, model = saved
    model = dataclasses.replace(model, history={**model.history, "plateau": {"epoch": 1, "message": "plateau at 1"}})
    ev = evaluate(model, ds)
    paths = write_report(ev, model, tmp_path / "r")
    assert set(paths) == {"md", "html"} and all(p.exists() for p in paths.values())
    html_text = paths["html"].read_text()
    assert html_text.count('<img alt="') == 3
    assert html_text.count('<img alt="Learning curve" src="data:image/png;base64,') == 1
    assert html_text.count('src="data:image/png;base64,') == 3
    images, visible = check_html(html_text)
    assert len(images) == 3
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
    images, visible = check_html(paths["html"].read_text())
    assert len(images) == 2
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
    check_html(Path(out["report"]).read_text())
    assert ws.resolve("evals", out["eval_id"])["metrics"]["accuracy"] == out["accuracy"]


def test_cli_eval_human(saved):
    ws, _, model = saved
    result = CliRunner().invoke(app, ["--home", str(ws.root), "eval", "digits-mlp", "--split", "train"])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "ECE" in result.output and "report.html" in result.output
    assert "train split" in result.output


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
