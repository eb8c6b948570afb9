"""`feasibility`: can this model automate the work at the required accuracy?

The threshold is calibrated on the val split with `calibrate_threshold`
(Learn-then-Test, fixed-sequence Clopper-Pearson tests) and then measured on
the test split, which calibration never sees. One dict holds every number; the
Markdown and the self-contained HTML report (plots inlined as base64 PNG)
are rendered from it, and `datamoat poc --json` prints it, so they agree.

Bias rule: a group (class or slice) with at least `MIN_GROUP` test samples
gets a warning when its accuracy is more than 5 points below the overall
accuracy, when its coverage is below half the overall coverage (people get a
disproportionate share of its items), or when its automated predictions are
more than 5 points below the target (the guarantee is on average over all
items, not per group).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from datamoat.data.dataset import SPLITS, Dataset, load_dataset
from datamoat.errors import BadInput
from datamoat.evaluate.metrics import check_model_fits, stream_logits
from datamoat.evaluate.selective import calibrate_threshold, min_calibration_size, risk_coverage
from datamoat.models.model import Model, load_model
from datamoat.workspace import Workspace

__all__ = ["feasibility", "feasibility_in_workspace", "SLICE_COLUMNS"]

SLICE_COLUMNS = ("class", "predicted", "brightness")
MIN_GROUP = 20
GAP = 0.05  # five accuracy points
FEASIBLE_COVERAGE = 0.995  # "no human review": fewer than 5 in 1,000 items go to people


def _r(v: float | None) -> float | None:
    """Round once, at the source, so JSON and report show the same digits."""
    return None if v is None else round(float(v), 4)


def _slices(column: str, bright: np.ndarray, y: np.ndarray, pred: np.ndarray, classes: list[str]) -> list:
    """(group name, mask) pairs of one built-in metadata column on the test split; `bright` (N,) is
    each image's mean pixel intensity, 0..255."""
    if column in ("class", "predicted"):
        by = y if column == "class" else pred
        return [(c, by == i) for i, c in enumerate(classes)]
    edges = np.quantile(bright, [0.25, 0.5, 0.75])
    which = np.digitize(bright, edges, right=True)  # (N,) quartile 0..3
    bounds = [bright.min(), *edges, bright.max()]
    return [(f"Q{q + 1} [{bounds[q]:.1f}, {bounds[q + 1]:.1f}]", which == q) for q in range(4)]


def _groups(column: str, slices: list, correct: np.ndarray, accepted: np.ndarray, overall: dict, target: float):
    rows, warnings = [], []
    for name, m in slices:
        n, n_acc = int(m.sum()), int((m & accepted).sum())
        row: dict[str, Any] = {
            "group": str(name),
            "n": n,
            "accuracy": _r(correct[m].mean()) if n else None,
            "coverage": _r(n_acc / n) if n else None,
            "accepted_accuracy": _r(correct[m & accepted].mean()) if n_acc else None,
            "warning": "",
        }
        why = []
        if n >= MIN_GROUP and row["accuracy"] < overall["accuracy"] - GAP:
            why.append(f"accuracy {row['accuracy']} vs {overall['accuracy']} overall")
        if n >= MIN_GROUP and overall["coverage"] > 0 and row["coverage"] < overall["coverage"] / 2:
            why.append(f"coverage {row['coverage']} vs {overall['coverage']} overall")
        if n_acc >= MIN_GROUP and row["accepted_accuracy"] < target - GAP:
            why.append(f"automated accuracy {row['accepted_accuracy']} vs target {target}")
        if why:
            row["warning"] = "; ".join(why)
            warnings.append(f"{column} {name}: {row['warning']}")
        rows.append(row)
    return rows, warnings


def feasibility(
    model: Model | str,
    data: Dataset | str | None,
    target_accuracy: float,
    delta: float = 0.05,
    *,
    slice_by: str | None = None,
    out_dir: str | Path | None = None,
    ws: Workspace | None = None,
    batch_size: int | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Coverage at the target, human workload, risk-coverage, bias and a verdict.

    `model` and `data` may be catalog references (then `ws` is needed); data
    defaults to the model's own dataset. Writes report.md and report.html to
    `out_dir` when given (their paths under "report"). `batch_size` m makes
    the guarantee about the next m items rather than the population.

    >>> res = feasibility(model, ds, 0.95, slice_by="brightness", out_dir="r")  # doctest: +SKIP
    >>> res["verdict"], res["coverage"], res["workload_per_1000"]  # doctest: +SKIP
    ('feasible with people in the loop', 0.8123, 187.7)
    """
    if slice_by is not None and slice_by not in SLICE_COLUMNS:
        raise BadInput(f"unknown slice column {slice_by!r}: available columns are {', '.join(SLICE_COLUMNS)}")
    n_min = min_calibration_size(target_accuracy, delta)  # checks both levels before any work
    if isinstance(model, str) or not isinstance(data, Dataset):
        if ws is None:
            raise BadInput("pass a Workspace (ws=) to look up models and datasets by reference")
        model = load_model(ws, model) if isinstance(model, str) else model
        if not isinstance(data, Dataset):  # a model by reference may come with a Dataset object
            ref = data or model.lineage.get("dataset_id")
            if not ref:
                raise BadInput(f"model {model.name} records no dataset: give one with --data (`datamoat data list`)")
            data = load_dataset(ws, ref)
    if list(model.classes) != list(data.classes):
        raise BadInput(f"model classes {model.classes} differ from {data.name}'s {data.classes}: use its dataset")
    classes = list(model.classes)
    val_rows, test_rows = np.flatnonzero(data.split == SPLITS["val"]), np.flatnonzero(data.split == SPLITS["test"])
    y_val, y = data.y[val_rows], data.y[test_rows]  # (N_val,), (N,)
    if len(y_val) < n_min:
        raise BadInput(
            f"the val split of {data.name} has {len(y_val)} samples, but target accuracy {target_accuracy} at "
            f"delta {delta} needs at least {n_min}: add validation data, lower --target-accuracy or raise --delta"
        )
    if len(y) == 0:
        raise BadInput(f"dataset {data.name} has no test split: the report measures on test, never on val")
    check_model_fits(model, data, "poc")
    # Scored batch by batch (photos decoded from their shards), so only a batch's pixels are held, however
    # large the splits; fp32 on any device, so the report's numbers do not depend on it.
    p_val = _softmax(stream_logits(model, data, val_rows, device=device)[0])  # (N_val, K)
    policy = calibrate_threshold((p_val, y_val), None, target_accuracy, delta, classes=classes, batch_size=batch_size)
    logits, bright = stream_logits(model, data, test_rows, device=device)  # (N, K), (N,)
    probs = _softmax(logits)  # (N, K)
    accepted, pred = policy.apply(probs)
    correct = pred == y
    cov = float(accepted.mean())
    overall = {"accuracy": _r(correct.mean()), "coverage": _r(cov)}
    per_class, warnings = _groups(
        "class", _slices("class", bright, y, pred, classes), correct, accepted, overall, target_accuracy
    )
    slices = per_class if slice_by == "class" else []
    if slice_by in ("predicted", "brightness"):
        slices, more = _groups(
            slice_by, _slices(slice_by, bright, y, pred, classes), correct, accepted, overall, target_accuracy
        )
        warnings += more
    rc = risk_coverage(probs.max(1), correct)
    at = [int(np.ceil(q * len(y))) - 1 for q in np.linspace(0.1, 1.0, 10)]  # coverage 10%, 20%, ..., 100%
    verdict, text = _verdict(cov, target_accuracy, delta, policy.note)
    result = {
        "model": {"id": model.id, "name": model.name, "arch": model.config.arch},
        "dataset": {"id": data.id, "name": data.name},
        "target_accuracy": target_accuracy,
        "delta": delta,
        "n_val": int(len(y_val)),
        "n_test": int(len(y)),
        "accuracy": overall["accuracy"],
        "threshold": policy.threshold,
        "coverage": overall["coverage"],
        "accepted_accuracy": _r(correct[accepted].mean()) if accepted.any() else None,
        "workload_per_1000": round((1 - cov) * 1000, 1),
        "meets_target_on_test": bool(correct[accepted].mean() >= target_accuracy) if accepted.any() else None,
        "val_coverage": _r(policy.coverage_on_calibration),
        "val_accepted_accuracy": _r(policy.accuracy_on_calibration),
        "upper_bound_error": _r(policy.upper_bound_error),
        "verdict": verdict,
        "verdict_text": text,
        "confusion_pairs": _confusion_pairs(y, pred, accepted, classes),
        "per_class": per_class,
        "slice_by": slice_by,
        "slices": slices,
        "warnings": warnings,
        "risk_coverage": [{"coverage": _r(rc["coverage"][i]), "error": _r(rc["error"][i])} for i in at],
        "policy": policy.to_dict(),
    }
    if out_dir is not None:
        curves = {"test": rc, "val": risk_coverage(p_val.max(1), p_val.argmax(1) == y_val)}
        result["report"] = {k: str(p) for k, p in _write(result, Path(out_dir), curves).items()}
    return result


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32, as `Model.predict_proba` gives it: (N, K) -> (N, K)."""
    import torch

    return torch.softmax(torch.from_numpy(logits), dim=1).numpy()


def _verdict(cov: float, target: float, delta: float, note: str) -> tuple[str, str]:
    if cov >= FEASIBLE_COVERAGE:
        return "feasible", f"The model reaches {target} on {cov:.1%} of test items with no human review."
    if cov > 0:
        return "feasible with people in the loop", (
            f"Automating {cov:.1%} of items keeps their accuracy at {target} or above (confidence "
            f"{1 - delta:.0%}); people review about {(1 - cov) * 1000:.0f} per 1,000."
        )
    return "not feasible", f"Nothing can be automated at {target} with this model and calibration data ({note})."


def _confusion_pairs(y: np.ndarray, pred: np.ndarray, accepted: np.ndarray, classes: list[str]) -> list[dict]:
    """The 10 most frequent (true, predicted) mistakes, and how many of each the policy automates."""
    k = len(classes)
    cm = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)  # rows: true, columns: predicted
    auto = np.bincount(y[accepted] * k + pred[accepted], minlength=k * k).reshape(k, k)
    np.fill_diagonal(cm, 0)
    n_err = max(int(cm.sum()), 1)
    order = [(i, j) for i, j in zip(*np.unravel_index(np.argsort(-cm, axis=None, kind="stable"), cm.shape)) if cm[i, j]]
    return [
        {
            "true": classes[i],
            "predicted": classes[j],
            "count": int(cm[i, j]),
            "share_of_errors": _r(cm[i, j] / n_err),
            "automated": int(auto[i, j]),
        }
        for i, j in order[:10]
    ]


_CSS = """body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}img{display:block;margin:.5em 0}.note{color:#666}"""


def _s(v: Any) -> str:
    """One display string per JSON value: floats as JSON writes them, so the numbers match."""
    return "\u2014" if v is None else ("yes" if v else "no") if isinstance(v, bool) else str(v)


def _sections(res: dict[str, Any]) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """(title, note, header, rows) in report order; Markdown and HTML both render these."""
    keys = [
        ("model", f"{res['model']['name']} ({res['model']['id']})"),
        ("dataset", res["dataset"]["name"]),
        ("target accuracy", res["target_accuracy"]),
        ("delta", res["delta"]),
        ("val samples", res["n_val"]),
        ("test samples", res["n_test"]),
        ("accuracy", res["accuracy"]),
        ("threshold", res["threshold"]),
        ("coverage", res["coverage"]),
        ("accepted accuracy", res["accepted_accuracy"]),
        ("workload per 1000", res["workload_per_1000"]),
        ("meets target on test", res["meets_target_on_test"]),
        ("val coverage", res["val_coverage"]),
        ("upper bound on error", res["upper_bound_error"]),
    ]
    group_head = ["group", "n", "accuracy", "coverage", "accepted accuracy", "warning"]
    groups = ["group", "n", "accuracy", "coverage", "accepted_accuracy", "warning"]
    out = [
        (
            "Summary",
            f"Verdict: {res['verdict']}. {res['verdict_text']} Coverage is the share of test items "
            "automated; the threshold was calibrated on the val split and measured on the test split.",
            ["", "value"],
            [[k, _s(v)] for k, v in keys],
        ),
        (
            "Risk-coverage",
            "Error of the automated predictions as the threshold sweeps down (test split).",
            ["coverage", "error"],
            [[_s(p["coverage"]), _s(p["error"])] for p in res["risk_coverage"]],
        ),
        (
            "Costliest confusion pairs",
            "Most frequent mistakes on the test split; 'automated' counts those the policy would not send to review.",
            ["true", "predicted", "count", "share of errors", "automated"],
            [
                [p["true"], p["predicted"], _s(p["count"]), _s(p["share_of_errors"]), _s(p["automated"])]
                for p in res["confusion_pairs"]
            ],
        ),
        (
            "Per-class accuracy",
            "Groups are true classes.",
            group_head,
            [[_s(g[k]) for k in groups] for g in res["per_class"]],
        ),
    ]
    if res["slice_by"]:
        rows = [[_s(g[k]) for k in groups] for g in res["slices"]]
        out.append((f"Slices by {res['slice_by']}", "Per-slice accuracy on the test split.", group_head, rows))
    bias = (
        f"A group of at least {MIN_GROUP} test samples is flagged when its accuracy is more than "
        f"{GAP * 100:.0f} points below the overall, its coverage is below half the overall, or its automated "
        f"predictions are more than {GAP * 100:.0f} points below the target."
    )
    out.append(("Warnings", bias, ["warning"], [[w] for w in res["warnings"]] or [["none"]]))
    m = res["policy"].get("batch_size")
    method = (
        f"{res['policy']['method']}: with probability at least 1 - {res['delta']} over the val draw, the "
        f"automated predictions are at least {res['target_accuracy']} accurate on average over future items; the "
        "test split is one finite sample, so its numbers scatter around that."
    )
    if m:
        method = (
            f"{res['policy']['method']}, batch guarantee: with probability at least 1 - {res['delta']} over the "
            f"val draw and the batch, the automated predictions among the next {m} items are at least "
            f"{res['target_accuracy']} accurate (delta split three ways; see datamoat.evaluate.selective)."
        )
    out.append(("Method", method, [], []))
    return out


def _plots(res: dict[str, Any], curves: dict[str, Any]) -> dict[str, str]:
    """Base64 PNGs by section, drawn on an Agg canvas (no pyplot, no GUI)."""
    import base64
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def plot(draw: Any) -> str:
        fig = Figure(figsize=(6, 4), dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        draw(fig.add_subplot())
        buf = io.BytesIO()
        fig.savefig(buf, format="png", metadata={"Software": None})  # no version or URL inside
        return base64.b64encode(buf.getvalue()).decode("ascii")

    def risk(ax: Any) -> None:
        for name, style in (("test", "-"), ("val", "--")):
            ax.plot(curves[name]["coverage"], curves[name]["error"], style, label=f"{name} split")
        ax.axhline(1 - res["target_accuracy"], color="gray", linestyle=":", label="allowed error")
        if res["accepted_accuracy"] is not None:
            ax.plot([res["coverage"]], [1 - res["accepted_accuracy"]], "o", color="C3", label="chosen threshold")
        ax.set(xlabel="coverage (share automated)", ylabel="error of automated", title="Risk-coverage")
        ax.legend(fontsize=8)

    def bars(rows: list[dict], title: str) -> Any:
        def draw(ax: Any) -> None:
            pos = np.arange(len(rows))
            ax.bar(pos - 0.2, [r["accuracy"] or 0 for r in rows], 0.4, label="accuracy")
            ax.bar(pos + 0.2, [r["coverage"] or 0 for r in rows], 0.4, label="coverage")
            ax.set_xticks(pos, [r["group"] for r in rows], rotation=45, ha="right", fontsize=7)
            ax.set(ylim=(0, 1.05), title=title)
            ax.legend(fontsize=8)

        return draw

    def pairs(ax: Any) -> None:
        ps = res["confusion_pairs"][::-1]
        labels = [f"{p['true']} \u2192 {p['predicted']}" for p in ps]
        ax.barh(labels, [p["count"] for p in ps], label="all mistakes")
        ax.barh(labels, [p["automated"] for p in ps], label="automated (not reviewed)")
        ax.tick_params(axis="y", labelsize=7)
        ax.set(xlabel="test items", title="Costliest confusion pairs")
        ax.legend(fontsize=8)

    out = {"Risk-coverage": plot(risk), "Per-class accuracy": plot(bars(res["per_class"], "Per-class accuracy"))}
    out["Costliest confusion pairs"] = plot(pairs)
    if res["slice_by"]:
        out[f"Slices by {res['slice_by']}"] = plot(bars(res["slices"], f"Slices by {res['slice_by']}"))
    return out


def _write(res: dict[str, Any], out: Path, curves: dict[str, Any]) -> dict[str, Path]:
    import html

    from datamoat.workspace import atomic_write

    e, title = (
        html.escape,
        f"Proof of concept: {res['model']['name']} at {res['target_accuracy']} on {res['dataset']['name']}",
    )
    md, page, plots = [f"# {title}", ""], [], _plots(res, curves)
    page += [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f"<p><strong>Verdict: {e(res['verdict'])}.</strong> {e(res['verdict_text'])}</p>",
    ]
    for section, note, head, rows in _sections(res):
        md += [f"## {section}", "", note, ""]
        page += [f"<h2>{e(section)}</h2>", f'<p class="note">{e(note)}</p>']
        if section in plots:
            page.append(f'<img alt="{e(section)}" src="data:image/png;base64,{plots[section]}">')
        if head:
            cell = [c.replace("|", "\\|") for c in head]
            md += ["| " + " | ".join(cell) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
            md += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows] + [""]
            page.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr></thead><tbody>")
            page += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows] + ["</tbody></table>"]
    page.append("</body></html>")
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "report.md", "html": out / "report.html"}
    atomic_write(paths["md"], ("\n".join(md) + "\n").encode("utf-8"))
    atomic_write(paths["html"], ("\n".join(page) + "\n").encode("utf-8"))
    return paths


def feasibility_in_workspace(
    ws: Workspace,
    model_ref: str,
    data_ref: str | None,
    target_accuracy: float,
    delta: float = 0.05,
    slice_by: str | None = None,
    batch_size: int | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """`feasibility` on cataloged refs; report under reports/poc-<id>/, recorded in `evals`.

    >>> feasibility_in_workspace(Workspace.open(), "digits-mlp", None, 0.95)["verdict"]  # doctest: +SKIP
    'feasible with people in the loop'
    """
    poc_id = ws.new_id()
    out = ws.root / "reports" / f"poc-{poc_id}"
    result = feasibility(
        model_ref,
        data_ref,
        target_accuracy,
        delta,
        slice_by=slice_by,
        out_dir=out,
        ws=ws,
        batch_size=batch_size,
        device=device,
    )
    result["poc_id"] = poc_id
    ws.insert(
        "evals",
        {
            "id": poc_id,
            "name": f"poc:{result['model']['name']}@{result['dataset']['name']}-test",
            "model_id": result["model"]["id"] or "",
            "dataset_id": result["dataset"]["id"],
            "split": "test",
            "metrics": {k: v for k, v in result.items() if k != "report"},
            "report": {k: str(Path(p).relative_to(ws.root)) for k, p in result["report"].items()},
        },
    )
    return result
