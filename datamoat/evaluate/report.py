"""Evaluation reports: Markdown for diffs and terminals, one HTML page for people.

The HTML page is self-contained (plots are inlined as base64 PNG, no
external URL at all), so it can be mailed, attached to a ticket or opened
offline. Both files come from the same tables, so they never disagree.
The HTML page also shows the worst confusions' examples as thumbnails, at
most `_MAX_THUMBS` of at most `_THUMB` px a side, so a photo dataset's page
stays as small as a digits one.
`evaluate_in_workspace` is the workspace entry point: evaluate, write the report under
``reports/<eval id>/`` and catalog the result in the ``evals`` table.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from datamoat.data.dataset import load_dataset
from datamoat.errors import BadInput
from datamoat.evaluate.metrics import EvalConfig, Evaluation, evaluate
from datamoat.models.model import Model, load_model
from datamoat.workspace import Workspace, atomic_write

__all__ = ["write_report", "evaluate_in_workspace"]

Table = tuple[list[str], list[list[str]]]  # (header, rows) of display strings

_CSS = """body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}img{display:block;margin:.5em 0}.note{color:#666}
figure{display:inline-block;vertical-align:top;width:96px;margin:0 .6em .6em 0;font-size:.75em}
figure img{width:96px;height:96px;object-fit:contain;margin:0 0 .2em;background:#eee}img.px{image-rendering:pixelated}"""

_THUMB = 96  # px a side at most: larger images are shrunk, smaller ones drawn at this size
_MAX_THUMBS = 12  # the whole gallery, whatever the evaluation carries
_PIXELATED_BELOW = 64  # px: smaller images are drawn with sharp pixels, larger ones (photos) smoothly


def _f(v: float) -> str:
    return f"{v:.4f}"


def _summary(ev: Evaluation, model: Model) -> Table:
    rows = [
        ["model", f"{model.name} ({model.id})" if model.id else f"{model.name or 'unsaved model'}"],
        ["architecture", model.config.arch],
        ["parameters", f"{model.params:,}"],
        ["dataset", str(ev.dataset_id)],
        ["split", f"{ev.split} ({ev.n} samples)"],
        ["accuracy", _f(ev.accuracy)],
        ["macro F1", _f(ev.macro_f1)],
        ["ECE", f"{_f(ev.ece)} ({len(ev.reliability)} bins)"],
    ]
    return ["", "value"], rows


def _tables(ev: Evaluation, model: Model) -> dict[str, Table | None]:
    per_class = (
        ["class", "precision", "recall", "F1", "support"],
        [[p["class"], _f(p["precision"]), _f(p["recall"]), _f(p["f1"]), str(p["support"])] for p in ev.per_class],
    )
    confusion = (
        ["true \u2193 / predicted \u2192", *ev.classes],
        [[c, *map(str, row)] for c, row in zip(ev.classes, ev.confusion, strict=True)],
    )
    calibration = (
        ["confidence bin", "mean confidence", "accuracy", "count"],
        [
            [f"{b['lower']:.3f}\u2013{b['upper']:.3f}", _f(b["confidence"]), _f(b["accuracy"]), str(b["count"])]
            for b in ev.reliability
            if b["count"]
        ],
    )
    curve = model.history.get("curve") or []
    learning = (
        ["epoch", "train loss", "val accuracy", "seconds"],
        [[str(p["epoch"]), _f(p["train_loss"]), _f(p["val_accuracy"]), f"{p['seconds']:.1f}"] for p in curve],
    )
    worst = (
        ["true", "predicted", "errors", "examples: dataset index (confidence)"],
        [
            [
                w["true"],
                w["predicted"],
                str(w["count"]),
                ", ".join(f"{e['index']} ({_f(e['confidence'])})" for e in w["examples"]),
            ]
            for w in ev.worst_confusions
        ],
    )
    return {
        "Summary": _summary(ev, model),
        "Per class": per_class,
        "Confusion matrix": confusion,
        "Worst confusions": worst if ev.worst_confusions else None,
        "Calibration": calibration,
        "Learning curve": learning if curve else None,
    }


def _notes(ev: Evaluation, model: Model) -> dict[str, str]:
    plateau = (model.history.get("plateau") or {}).get("message")
    return {
        "Confusion matrix": "Rows are the true class, columns the predicted class.",
        "Worst confusions": (
            f"The (true, predicted) pairs with the most errors on the {ev.split} split, each with its most "
            f"confident mistakes first; an example's index is its row in "
            f"{f'dataset {ev.dataset_id}' if ev.dataset_id else 'the evaluated data'}."
            if ev.worst_confusions
            else f"No errors on the {ev.split} split: every sample was classified correctly."
        ),
        "Calibration": (
            f"Expected calibration error {_f(ev.ece)}: the sample-weighted mean gap between confidence "
            "and accuracy over equal-width confidence bins (0 is perfectly calibrated)."
        ),
        "Learning curve": (
            (f"Plateau: {plateau}." if plateau else "")
            if model.history.get("curve")
            else "No learning curve: this model has no training history."
        ),
    }


def _title(ev: Evaluation, model: Model) -> str:
    return f"Evaluation of {model.name or model.id or 'model'} on {ev.dataset_id} ({ev.split})"


def _markdown(ev: Evaluation, model: Model) -> str:
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    out = [f"# {_title(ev, model)}", ""]
    notes = _notes(ev, model)
    for section, table in _tables(ev, model).items():
        out += [f"## {section}", ""]
        if section in notes and notes[section]:
            out += [notes[section], ""]
        if table is None:
            continue
        header, rows = table
        out.append("| " + " | ".join(map(cell, header)) + " |")
        out.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        out += ["| " + " | ".join(map(cell, r)) + " |" for r in rows]
        out.append("")
    return "\n".join(out)


def _thumbnail(pixels: np.ndarray) -> tuple[str, bool]:
    """A uint8 (C, H, W) image as a base64 PNG of at most `_THUMB` px a side
    (grey for C != 3: the first channel), and whether to draw it pixelated."""
    from PIL import Image

    img = Image.fromarray(pixels.transpose(1, 2, 0) if pixels.shape[0] == 3 else pixels[0])  # (H, W[, 3])
    pixelated = max(img.size) < _PIXELATED_BELOW
    img.thumbnail((_THUMB, _THUMB), Image.Resampling.LANCZOS)  # only ever shrinks, keeps the aspect ratio
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii"), pixelated


def _gallery(ev: Evaluation, x: np.ndarray) -> list[str]:
    """HTML figures of the worst confusions' examples, `_MAX_THUMBS` at most."""
    e = html.escape
    out, left = [], _MAX_THUMBS
    for w in ev.worst_confusions:
        examples = w["examples"][:left]
        if not examples:
            break
        left -= len(examples)
        out.append(f"<p>{e(w['true'])} \u2192 {e(w['predicted'])}: {w['count']} errors</p><div>")
        for ex in examples:
            data, pixelated = _thumbnail(x[ex["index"]])
            caption = [
                f"#{ex['index']}",
                f"true {w['true']}",
                f"predicted {w['predicted']}",
                f"confidence {_f(ex['confidence'])}",
            ]
            out.append(
                f'<figure><img class="thumb{" px" if pixelated else ""}" alt="{e(", ".join(caption))}" '
                f'src="data:image/png;base64,{data}"><figcaption>{"<br>".join(map(e, caption))}</figcaption></figure>'
            )
        out.append("</div>")
    return out


def _html(ev: Evaluation, model: Model, x: np.ndarray | None) -> str:
    e = html.escape
    plots = _plots(ev, model)
    notes = _notes(ev, model)
    title = e(_title(ev, model))
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{title}</title><style>{_CSS}</style></head><body>",
        f"<h1>{title}</h1>",
    ]
    for section, table in _tables(ev, model).items():
        out.append(f"<h2>{e(section)}</h2>")
        if notes.get(section):
            out.append(f'<p class="note">{e(notes[section])}</p>')
        if section in plots:
            out.append(f'<img alt="{e(section)}" src="data:image/png;base64,{plots[section]}">')
        if table is None:
            continue
        header, rows = table
        out.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead><tbody>")
        out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows]
        out.append("</tbody></table>")
        if section == "Worst confusions" and x is not None:
            out += _gallery(ev, x)
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _plots(ev: Evaluation, model: Model) -> dict[str, str]:
    """Base64 PNGs by section. Figures are built on an Agg canvas directly
    (no pyplot), so no global figure registry fills up and no GUI is needed."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    def new_fig() -> Any:
        fig = Figure(figsize=(5, 4), dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        return fig

    def png(fig: Any) -> str:
        buf = io.BytesIO()
        # No "Software" tag: it carries a URL and a version that would vary.
        fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
        fig.clear()
        return base64.b64encode(buf.getvalue()).decode("ascii")

    out: dict[str, str] = {}
    k = len(ev.classes)
    cm = np.asarray(ev.confusion)  # (K, K)
    fig = new_fig()
    ax = fig.add_subplot()
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, shrink=0.8)
    if k <= 20:  # beyond that the counts would be unreadable
        for i in range(k):
            for j in range(k):
                color = "white" if cm[i, j] > cm.max() / 2 else "black"
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7, color=color)
    if k <= 30:
        ax.set_xticks(range(k), ev.classes, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(k), ev.classes, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
    out["Confusion matrix"] = png(fig)

    fig = new_fig()
    ax = fig.add_subplot()
    full = [b for b in ev.reliability if b["count"]]
    width = 1.0 / len(ev.reliability)
    centers = [(b["lower"] + b["upper"]) / 2 for b in full]
    acc = [b["accuracy"] for b in full]
    conf = [b["confidence"] for b in full]
    ax.bar(centers, acc, width=width, edgecolor="black", color="C0", alpha=0.8, label="accuracy")
    # The red part is each bin's |confidence - accuracy|; ECE is its weighted mean.
    ax.bar(
        centers,
        [abs(c - a) for c, a in zip(conf, acc, strict=True)],
        width=width,
        bottom=[min(c, a) for c, a in zip(conf, acc, strict=True)],
        color="C3",
        alpha=0.35,
        hatch="//",
        edgecolor="C3",
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="confidence", ylabel="accuracy", title=f"Reliability (ECE {ev.ece:.4f})")
    ax.legend(loc="best", fontsize=8)
    out["Calibration"] = png(fig)

    curve = model.history.get("curve") or []
    if curve:
        fig = new_fig()
        ax = fig.add_subplot()
        epochs = [p["epoch"] for p in curve]
        ax.plot(epochs, [p["train_loss"] for p in curve], "o-", color="C0", label="train loss")
        ax.set(xlabel="epoch", ylabel="train loss", title="Learning curve")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax2 = ax.twinx()
        ax2.plot(epochs, [p["val_accuracy"] for p in curve], "s-", color="C1", label="val accuracy")
        ax2.set_ylabel("val accuracy")
        plateau = (model.history.get("plateau") or {}).get("epoch")
        if plateau:
            ax.axvline(plateau, color="gray", linestyle=":", label=f"plateau (epoch {plateau})")
        lines = ax.get_legend_handles_labels()
        lines2 = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="center right", fontsize=8)
        out["Learning curve"] = png(fig)
    return out


def write_report(
    evaluation: Evaluation, model: Model, out_dir: str | Path, x: np.ndarray | None = None
) -> dict[str, Path]:
    """Write ``report.md`` and a self-contained ``report.html`` into `out_dir`.

    `x` is the evaluated dataset's images (N, C, H, W) uint8, indexed by the
    worst confusions' dataset indices; the HTML page shows those examples
    from it. Without it the page lists them as the Markdown does, without images.

    >>> paths = write_report(ev, model, "reports/x", x=data.x)  # doctest: +SKIP
    >>> sorted(paths)  # doctest: +SKIP
    ['html', 'md']
    """
    if x is not None:
        wanted = [e["index"] for w in evaluation.worst_confusions for e in w["examples"]]
        if x.ndim != 4 or x.dtype != np.uint8 or any(not 0 <= i < len(x) for i in wanted):
            raise BadInput(
                f"images of shape {x.shape} ({x.dtype}) do not hold the evaluated samples {wanted}: "
                f"pass the uint8 (N, C, H, W) images of dataset {evaluation.dataset_id}, the one evaluated"
            )
    out = Path(out_dir)
    paths = {"md": out / "report.md", "html": out / "report.html"}
    atomic_write(paths["md"], _markdown(evaluation, model).encode("utf-8"))
    atomic_write(paths["html"], _html(evaluation, model, x).encode("utf-8"))
    return paths


def evaluate_in_workspace(
    ws: Workspace, model_ref: str, data_ref: str | None = None, config: EvalConfig | None = None
) -> tuple[Evaluation, dict[str, Path], str]:
    """Evaluate a cataloged model, write its report and record an ``evals`` row.

    The dataset defaults to the one the model was trained on. The row's
    ``report`` column holds the report paths relative to the workspace root.
    Returns (evaluation, {"md": path, "html": path}, eval id).

    >>> ev, paths, eval_id = evaluate_in_workspace(Workspace.open(), "cnn_small-digits")  # doctest: +SKIP
    """
    cfg = config or EvalConfig()
    model = load_model(ws, model_ref)
    data_ref = data_ref or model.lineage.get("dataset_id")
    if not data_ref:
        raise BadInput(f"model {model.name} records no dataset: give one with --data (`datamoat data list`)")
    data = load_dataset(ws, data_ref)
    ev = evaluate(model, data, cfg)
    eval_id = ws.new_id()
    paths = write_report(ev, model, ws.path_for("reports", eval_id), x=data.x)
    ws.insert(
        "evals",
        {
            "id": eval_id,
            "name": f"{model.name}@{data.name}-{cfg.split}",
            "model_id": model.id,
            "dataset_id": data.id,
            "split": cfg.split,
            "metrics": {**ev.to_dict(), "config": cfg.to_dict()},
            "report": {k: str(p.relative_to(ws.root)) for k, p in paths.items()},
        },
    )
    return ev, paths, eval_id
