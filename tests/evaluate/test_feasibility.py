import base64
import dataclasses
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from dmtest import dm
from PIL import Image

from datamoat.errors import BadInput
from datamoat.evaluate.feasibility import GAP, MIN_GROUP, feasibility, feasibility_in_workspace

PNG = re.compile(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


class _Tags(HTMLParser):
    """Fails on mismatched tags; collects visible text."""

    void = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag not in self.void:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def check_html(text: str) -> tuple[dict[str, Image.Image], str]:
    p = _Tags()
    p.feed(text)
    p.close()
    assert p.errors == [] and p.stack == []
    assert "http://" not in text and "https://" not in text  # self-contained
    images = {alt: Image.open(io.BytesIO(base64.b64decode(b))) for alt, b in PNG.findall(text)}
    for im in images.values():
        im.load()
        assert im.format == "PNG" and im.size[0] >= 300 and im.size[1] >= 200
    return images, "".join(p.text)


def test_report_renders_with_plots_and_verdict(saved, tmp_path):
    _, ds, model = saved
    res = feasibility(model, ds, 0.9, 0.05, slice_by="brightness", out_dir=tmp_path / "r")
    html_text = Path(res["report"]["html"]).read_text()
    images, visible = check_html(html_text)
    assert set(images) == {"Risk-coverage", "Costliest confusion pairs", "Per-class accuracy", "Slices by brightness"}
    assert f"Verdict: {res['verdict']}." in visible and res["verdict_text"] in visible
    md = Path(res["report"]["md"]).read_text()
    assert f"Verdict: {res['verdict']}." in md and "## Slices by brightness" in md
    # Brightness quartiles partition the test split.
    assert len(res["slices"]) == 4 and sum(g["n"] for g in res["slices"]) == res["n_test"]


def test_numbers_are_measured_on_test_with_a_val_threshold(saved):
    _, ds, model = saved
    res = feasibility(model, ds, 0.9, 0.05)
    x, y = ds.subset("test")
    probs = model.predict_proba(x)
    accepted = probs.max(1) >= res["threshold"]
    right = probs.argmax(1) == y
    assert res["n_test"] == len(y) and res["n_val"] == int((ds.split == 1).sum())
    assert res["accuracy"] == round(float(right.mean()), 4)
    assert res["coverage"] == round(float(accepted.mean()), 4)
    assert res["accepted_accuracy"] == round(float(right[accepted].mean()), 4)
    assert res["workload_per_1000"] == round((1 - accepted.mean()) * 1000, 1)
    assert res["policy"]["n_calibration"] == res["n_val"]
    # The costliest pair is the largest off-diagonal count of the confusion matrix.
    cm = np.zeros((10, 10), int)
    np.add.at(cm, (y, probs.argmax(1)), 1)
    np.fill_diagonal(cm, 0)
    top = res["confusion_pairs"][0]
    assert top["count"] == cm.max() and cm[int(top["true"]), int(top["predicted"])] == cm.max()
    assert [p["count"] for p in res["confusion_pairs"]] == sorted(
        (p["count"] for p in res["confusion_pairs"]), reverse=True
    )


def test_bias_warnings_follow_the_documented_rule(saved):
    _, ds, model = saved
    res = feasibility(model, ds, 0.9, 0.05, slice_by="predicted")
    for column, groups in (("class", res["per_class"]), ("predicted", res["slices"])):
        for g in groups:
            expect = (
                g["n"] >= MIN_GROUP
                and (g["accuracy"] < res["accuracy"] - GAP or g["coverage"] < res["coverage"] / 2)
                or (
                    g["accepted_accuracy"] is not None
                    and g["n"] * g["coverage"] >= MIN_GROUP
                    and g["accepted_accuracy"] < 0.9 - GAP
                )
            )
            assert bool(g["warning"]) == expect, g
            assert (f"{column} {g['group']}: {g['warning']}" in res["warnings"]) == expect
    assert res["warnings"]  # this under-trained model has classes far below the rest


def test_verdicts(saved):
    _, ds, model = saved
    assert feasibility(model, ds, 0.6, 0.05)["verdict"] == "feasible"
    people = feasibility(model, ds, 0.9, 0.05)
    assert people["verdict"] == "feasible with people in the loop" and 0 < people["coverage"] < 0.995
    assert f"about {people['workload_per_1000']:.0f} per 1,000" in people["verdict_text"]
    nothing = feasibility(model, ds, 0.97, 0.05)  # 99 val samples needed; accuracy is far lower
    assert nothing["verdict"] == "not feasible" and nothing["coverage"] == 0.0
    assert nothing["threshold"] is None and nothing["workload_per_1000"] == 1000.0


def test_bad_input(saved):
    ws, ds, model = saved
    with pytest.raises(BadInput, match="available columns are class, predicted, brightness"):
        feasibility(model, ds, 0.9, slice_by="colour")
    with pytest.raises(BadInput, match="needs at least 299"):
        feasibility(model, ds, 0.99)
    with pytest.raises(BadInput, match=r"target accuracy must be in \(0, 1\)"):
        feasibility(model, ds, 1.0)
    with pytest.raises(BadInput, match="Workspace"):
        feasibility("digits-mlp", None, 0.9)


def test_a_model_by_reference_with_a_dataset_object(saved):
    ws, ds, model = saved
    res = feasibility("digits-mlp", ds, 0.9, 0.05, ws=ws)  # the dataset object is used, not looked up
    assert res["accuracy"] == feasibility(model, ds, 0.9, 0.05)["accuracy"]


@pytest.mark.slow
def test_cli_json_matches_the_report(saved):
    ws, _, _ = saved
    proc = dm(ws.root, "poc", "digits-mlp", "--target-accuracy", "0.9", "--slice-by", "predicted", "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    md = Path(res["report"]["md"]).read_text()
    html_text = Path(res["report"]["html"]).read_text()
    _, visible = check_html(html_text)

    def shown(v):
        return "\u2014" if v is None else ("yes" if v else "no") if isinstance(v, bool) else str(v)

    summary = {
        "accuracy": "accuracy",
        "threshold": "threshold",
        "coverage": "coverage",
        "accepted accuracy": "accepted_accuracy",
        "workload per 1000": "workload_per_1000",
        "val coverage": "val_coverage",
        "upper bound on error": "upper_bound_error",
        "meets target on test": "meets_target_on_test",
        "test samples": "n_test",
        "val samples": "n_val",
    }
    for label, key in summary.items():
        assert f"| {label} | {shown(res[key])} |" in md
        assert f"<tr><td>{label}</td><td>{shown(res[key])}</td></tr>" in html_text
    for g in res["per_class"] + res["slices"]:
        cells = [g["group"], g["n"], g["accuracy"], g["coverage"], g["accepted_accuracy"], g["warning"]]
        assert "| " + " | ".join(shown(c) for c in cells) + " |" in md
    for p in res["confusion_pairs"]:
        cells = [p["true"], p["predicted"], p["count"], p["share_of_errors"], p["automated"]]
        assert "<tr>" + "".join(f"<td>{shown(c)}</td>" for c in cells) + "</tr>" in html_text
    assert f"Verdict: {res['verdict']}." in visible
    # Recorded in the catalog with the same numbers.
    row = ws.resolve("evals", res["poc_id"])
    assert row["metrics"]["coverage"] == res["coverage"] and row["report"]["html"].startswith("reports/poc-")


@pytest.mark.slow
def test_cli_errors_exit_2(saved):
    ws, _, _ = saved
    proc = dm(ws.root, "poc", "digits-mlp", "--target-accuracy", "0.9", "--slice-by", "colour")
    assert proc.returncode == 2
    assert "unknown slice column 'colour'" in proc.stderr and "class, predicted, brightness" in proc.stderr
    proc = dm(ws.root, "poc", "digits-mlp", "--target-accuracy", "0.99")  # 179 val samples, 299 needed
    assert proc.returncode == 2 and "needs at least 299" in proc.stderr and proc.stderr.count("\n") == 1


@pytest.mark.slow
def test_run_poc_human_output(saved):
    ws, _, _ = saved
    res = feasibility_in_workspace(ws, "digits-mlp", None, 0.9)
    assert Path(res["report"]["html"]).parent == ws.root / "reports" / f"poc-{res['poc_id']}"
    proc = dm(ws.root, "poc", "digits-mlp", "--target-accuracy", "0.9")
    assert proc.returncode == 0 and f"verdict:   {res['verdict']}" in proc.stdout


def test_batch_guarantee_is_recorded_and_automates_no_more(saved):
    _, ds, model = saved
    pop = feasibility(model, ds, 0.9, 0.1)
    batch = feasibility(model, ds, 0.9, 0.1, batch_size=len(ds.subset("test")[1]))
    assert batch["policy"]["batch_size"] == len(ds.subset("test")[1]) and pop["policy"]["batch_size"] is None
    # A statement about a finite batch needs a margin: it never automates more.
    assert batch["coverage"] <= pop["coverage"]


def test_photos_are_scored_from_their_shards_not_from_a_copy_of_the_split(photo_world, photo_model):
    ds = photo_world.ds
    in_memory = feasibility(photo_model, dataclasses.replace(ds, workspace=None), 0.3, 0.5, slice_by="brightness")
    # No rendered pixels at all: brightness and scores can only come from the photos in the shards.
    blank = np.broadcast_to(np.zeros((1, *ds.input_shape), np.uint8), ds.x.shape)
    streamed = feasibility(photo_model, dataclasses.replace(ds, x=blank), 0.3, 0.5, slice_by="brightness")
    assert streamed == in_memory
    assert len({g["group"] for g in streamed["slices"]}) == 4 and streamed["n_test"] > 4  # real quartiles
