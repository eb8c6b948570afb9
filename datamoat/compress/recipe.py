"""`compress`: the accuracy-aware recipe that turns a teacher into an edge model.

The chain is distill -> structured prune -> unstructured prune, each step
optional and each feeding the next; every stage is exported to ONNX and, if
asked, quantized to int8. Every candidate is measured the same way in one
process: test accuracy through ONNX Runtime, bytes on disk, latency at batch
1 and throughput at batch 64 (all candidates interleaved, medians), and
parameters. The pick is the smallest candidate (then the fastest) within the
accuracy, size and latency constraints; with none, nothing is registered.
"""

from __future__ import annotations

import dataclasses
import json
import time
import zlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from datamoat.compress.distill import DistillConfig
from datamoat.compress.prune import FinetuneConfig, MagnitudeConfig, StructuredConfig
from datamoat.compress.quantize import QuantizeConfig
from datamoat.configs import Config, check, check_choice
from datamoat.data.dataset import Dataset
from datamoat.errors import BadInput
from datamoat.models.model import Model
from datamoat.models.zoo import ARCHS
from datamoat.workspace import atomic_write

__all__ = ["CompressConfig", "CompressResult", "compress", "pareto_front", "choose"]

# Below this batch-1 speed-up over its own fp32 model, the table says int8 barely pays.
INT8_PAYS = 1.25


def _distill_step() -> DistillConfig:
    # Students follow soft targets slowly: 16 epochs reach the size, speed and
    # accuracy targets on the demo teacher (bench/results/compression.md).
    return DistillConfig().replace(train__epochs=16, train__augment="crop")


def _structured_step() -> StructuredConfig:
    # 3 epochs of fine-tuning (by distillation when `kd_finetune`), with the student's shifts.
    return StructuredConfig().replace(finetune__epochs=3, finetune__augment="crop")


@dataclasses.dataclass
class CompressConfig(Config):
    """Constraints, how to pick, and each step's own config (None: the step is skipped).

    Accuracy drop is in points (1.0 = 1%). The student is a fresh `student_arch`
    (widths from the preset unless `student_channels` / `student_hidden` are
    given) initialised with the distill step's training seed; `with_seed`
    seeds every training step at once. Nested fields compose as in
    scikit-learn: ``CompressConfig().replace(distill__train__epochs=4)``.

    >>> cfg = CompressConfig(max_accuracy_drop=0.5, unstructured={"sparsity": 0.8})
    >>> cfg.distill.train.epochs, cfg.structured.finetune.epochs, cfg.unstructured.sparsity
    (16, 3, 0.8)
    """

    # Version 2: the steps' fields live in their own configs (version 1 held them flat).
    VERSION: ClassVar[int] = 2

    max_accuracy_drop: float = 1.0
    max_size_kb: float = 0.0  # 0: no size constraint
    max_latency_ms: float = 0.0  # 0: no latency constraint (batch 1)
    size_metric: str = "onnx"  # "onnx" file bytes, or "zlib" (the file compressed, as shipped)
    student_arch: str = "cnn_small"
    student_channels: tuple[int, ...] = ()
    student_hidden: tuple[int, ...] = ()
    distill: DistillConfig | None = dataclasses.field(default_factory=_distill_step)
    structured: StructuredConfig | None = dataclasses.field(default_factory=_structured_step)
    # Fine-tune a pruned student against the teacher's soft targets rather than
    # the labels alone: it recovers what pruning cost from the better signal.
    # That fine-tune is the distill step's training with the structured step's
    # fine-tune epochs, lr, batch size, augmentation and seed.
    kd_finetune: bool = True
    # Off by default: ONNX stores a magnitude-pruned model dense, so on a device it
    # is no smaller and no faster; `datamoat prune --method magnitude` keeps it sparse.
    unstructured: MagnitudeConfig | None = None
    # Its `max_accuracy_drop` is a floor: int8 may spend the recipe's whole budget.
    quantize: QuantizeConfig | None = dataclasses.field(default_factory=QuantizeConfig)
    latency_repeats: int = 50

    def validate(self) -> None:
        check(self.max_accuracy_drop >= 0, f"max_accuracy_drop must be >= 0 points, got {self.max_accuracy_drop}")
        check(self.max_size_kb >= 0 and self.max_latency_ms >= 0, "size and latency limits must be >= 0 (0: none)")
        check_choice("size metric", self.size_metric, ("onnx", "zlib"))
        check_choice("student architecture", self.student_arch, tuple(ARCHS))
        if self.structured is not None:  # StructuredConfig allows 0: here it would only repeat the student
            check(self.structured.ratio > 0, f"structured.ratio must be in (0, 1), got {self.structured.ratio}")
        check(self.latency_repeats >= 5, "latency_repeats must be at least 5")
        self.student_channels = tuple(self.student_channels)
        self.student_hidden = tuple(self.student_hidden)

    def with_seed(self, seed: int) -> CompressConfig:
        """A copy whose training steps all use `seed`: the student's initialisation,
        order and augmentation, and both prune steps' fine-tuning. The int8 step
        keeps its own seed (its calibration sample), as version 1's `seed` never
        reached it.

        >>> CompressConfig().with_seed(1).structured.finetune.seed
        1
        """
        paths = {"distill": "train__seed", "structured": "finetune__seed", "unstructured": "finetune__seed"}
        return self.replace(**{f"{step}__{p}": seed for step, p in paths.items() if getattr(self, step) is not None})

    @classmethod
    def upgrade(cls, d: dict[str, Any], version: object) -> dict[str, Any]:
        """Version 1's flat fields, each moved into the step that uses it."""
        if version != 1:
            return super().upgrade(d, version)
        flat = dict(d)
        on = {"distill": True, "structured": True, "unstructured": False, "quantize": True}  # version 1's defaults
        on.update({step: bool(flat.pop(step)) for step in list(on) if step in flat})
        steps: dict[str, Any] = {step: {} if on[step] else None for step in on}
        for key, paths in _V1_FIELDS.items():
            if key not in flat:
                continue
            value = flat.pop(key)
            for path in paths:
                step, *inner, name = path.split("__")
                node = steps[step]
                if node is None:  # a skipped step's fields were never used
                    continue
                for part in inner:
                    node = node.setdefault(part, {})
                node[name] = value
        return {**flat, **steps}


# Version 1 (flat) field -> where each of its uses lives now.
_V1_FIELDS = {
    "temperature": ("distill__temperature",),
    "alpha": ("distill__alpha",),
    "distill_epochs": ("distill__train__epochs",),
    "augment": ("distill__train__augment", "structured__finetune__augment"),
    "structured_ratio": ("structured__ratio",),
    "structured_epochs": ("structured__finetune__epochs",),
    "sparsity": ("unstructured__sparsity",),
    "unstructured_steps": ("unstructured__steps",),
    "unstructured_epochs": ("unstructured__finetune__epochs",),
    "calibration": ("quantize__calibration",),
    "seed": ("distill__train__seed", "structured__finetune__seed", "unstructured__finetune__seed"),
}


@dataclasses.dataclass
class CompressResult:
    candidates: list[dict[str, Any]]
    chosen: str
    models: dict[str, Model]  # stage name -> PyTorch model (before int8)
    config: CompressConfig
    table_md: str
    plot: Path | None
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # step -> why it could not run

    def candidate(self, name: str) -> dict[str, Any]:
        return next(c for c in self.candidates if c["name"] == name)


def pareto_front(rows: list[dict[str, Any]]) -> list[str]:
    """Names of the candidates no other beats on accuracy, bytes and latency at once.

    >>> pareto_front([{"name": "a", "accuracy": .9, "bytes": 10, "latency_ms_b1": 1.0},
    ...               {"name": "b", "accuracy": .8, "bytes": 20, "latency_ms_b1": 2.0}])
    ['a']
    """

    def dominates(p: dict, q: dict) -> bool:
        ge = p["accuracy"] >= q["accuracy"] and p["bytes"] <= q["bytes"] and p["latency_ms_b1"] <= q["latency_ms_b1"]
        gt = p["accuracy"] > q["accuracy"] or p["bytes"] < q["bytes"] or p["latency_ms_b1"] < q["latency_ms_b1"]
        return ge and gt

    return [q["name"] for q in rows if not any(dominates(p, q) for p in rows if p is not q)]


def choose(rows: list[dict[str, Any]], cfg: CompressConfig, teacher_accuracy: float) -> str:
    """Mark each row `meets` / `why_not`; return the smallest, then fastest, feasible name."""
    for r in rows:
        why = []
        drop = (teacher_accuracy - r["accuracy"]) * 100
        if drop > cfg.max_accuracy_drop + 1e-9:
            why.append(f"accuracy drop {drop:.2f} > {cfg.max_accuracy_drop:g} points")
        size = r["bytes_zlib"] if cfg.size_metric == "zlib" else r["bytes"]
        if cfg.max_size_kb and size > cfg.max_size_kb * 1024:
            why.append(f"size {size / 1024:.1f} KB > {cfg.max_size_kb:g} KB")
        if cfg.max_latency_ms and r["latency_ms_b1"] > cfg.max_latency_ms:
            why.append(f"latency {r['latency_ms_b1']:.3f} ms > {cfg.max_latency_ms:g} ms")
        r["accuracy_drop_points"] = drop
        r["meets"], r["why_not"] = not why, "; ".join(why)
    ok = [r for r in rows if r["meets"]]
    if not ok:
        best = min(rows, key=lambda r: len(r["why_not"]))
        raise BadInput(
            f"no candidate meets the constraints (closest: {best['name']}: {best['why_not']}): "
            "relax --max-accuracy-drop, --max-size-kb or --max-latency-ms"
        )
    key = "bytes_zlib" if cfg.size_metric == "zlib" else "bytes"
    return min(ok, key=lambda r: (r[key], r["latency_ms_b1"]))["name"]


def _kd_finetune(distill: DistillConfig, finetune: FinetuneConfig) -> DistillConfig:
    """The pruned student's fine-tune by distillation: the distill step's training, run for the
    structured step's fine-tune epochs with its lr, batch size, augmentation and seed."""
    return distill.replace(
        train__epochs=finetune.epochs,
        train__lr=finetune.lr,
        train__batch_size=finetune.batch_size,
        train__augment=finetune.augment,
        train__seed=finetune.seed,
    )


def _stages(
    teacher: Model, data: Dataset, cfg: CompressConfig, progress: bool, skipped: dict[str, str]
) -> dict[str, tuple[Model, list[str]]]:
    from datamoat.compress.distill import distill
    from datamoat.compress.prune import prune
    from datamoat.compress.prune.structured import unprunable_reason
    from datamoat.models.model import new_model

    stages: dict[str, tuple[Model, list[str]]] = {"teacher": (teacher, [])}
    base, steps = teacher, []
    if cfg.distill is not None:
        overrides: dict[str, Any] = {}
        if cfg.student_channels:
            overrides["channels"] = cfg.student_channels
        if cfg.student_hidden:
            overrides["hidden"] = cfg.student_hidden
        student = new_model(cfg.student_arch, data, seed=cfg.distill.train.seed, **overrides)
        base, steps = distill(student, teacher, data, cfg.distill, progress=progress), ["distill"]
        stages["student"] = (base, steps)
    why_not = unprunable_reason(base.net) if cfg.structured is not None else None
    if why_not:  # a MobileNet student still distils and quantizes; the table says what was skipped
        skipped["structured"] = why_not
    if cfg.structured is not None and not why_not:
        kd = cfg.kd_finetune and cfg.distill is not None
        ft = cfg.structured.finetune
        # With kd the pruning itself does not fine-tune: distillation below does.
        scfg = cfg.structured.replace(finetune__epochs=0) if kd else cfg.structured
        base, steps = prune(base, scfg, data, latency="none"), [*steps, "structured"]
        if kd and ft.epochs:
            assert cfg.distill is not None
            base = distill(base, teacher, data, _kd_finetune(cfg.distill, ft), progress=progress)
        stages["+".join(steps)] = (base, steps)
    if cfg.unstructured is not None:
        base, steps = prune(base, cfg.unstructured, data, latency="none"), [*steps, "unstructured"]
        stages["+".join(steps)] = (base, steps)
    return stages


def compress(
    teacher: Model, data: Dataset, config: CompressConfig | None = None, *, out_dir: str | Path, progress: bool = False
) -> CompressResult:
    """Run the recipe on `teacher`, measure every candidate, and pick one.

    Writes ``<name>.onnx`` (and ``<name>-int8.onnx``), ``candidates.json``,
    ``candidates.md`` and ``pareto.png`` under `out_dir`.

    >>> res = compress(teacher, data, CompressConfig(max_accuracy_drop=1.0), out_dir="out")  # doctest: +SKIP
    >>> res.chosen  # doctest: +SKIP
    'distill+structured-int8'
    """
    from datamoat.compress.export import export
    from datamoat.compress.quantize import quantize
    from datamoat.inference.onnx import measure_latency, onnx_accuracy

    cfg = config or CompressConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    x_test, y_test = data.subset("test")
    x_train, _ = data.subset("train")
    x_val, y_val = data.subset("val")
    skipped: dict[str, str] = {}
    stages = _stages(teacher, data, cfg, progress, skipped)
    rows: list[dict[str, Any]] = []
    paths: dict[str, Path] = {}
    for name, (model, steps) in stages.items():
        fp32 = export(model, out / f"{name}.onnx")
        variants = [(name, fp32, steps)]
        if cfg.quantize is not None:
            budget = max(cfg.max_accuracy_drop, cfg.quantize.max_accuracy_drop)
            qcfg = cfg.quantize.replace(max_accuracy_drop=budget)
            q = quantize(
                fp32, qcfg, x_train, model.preprocess, eval_x=x_val, eval_y=y_val, out_path=out / f"{name}-int8.onnx"
            )
            variants.append((f"{name}-int8", Path(q.path), [*steps, "int8"]))
        for vname, path, vsteps in variants:
            paths[vname] = path
            raw = path.read_bytes()
            row = {
                "name": vname,
                "steps": vsteps,
                "accuracy": onnx_accuracy(path, x_test, y_test, model.preprocess),
                "bytes": len(raw),
                "bytes_zlib": len(zlib.compress(raw, 9)),
                "params": model.params,
                "onnx_path": str(path),
                "model_stage": name,
            }
            if "unstructured" in vsteps:
                from datamoat.compress.prune import sparse_state_bytes

                row["bytes_sparse_state"] = len(sparse_state_bytes(model.net.state_dict()))
            rows.append(row)
    c, h, w = data.input_shape
    lat = measure_latency({r["name"]: paths[r["name"]] for r in rows}, (c, h, w), repeats=cfg.latency_repeats)
    for r in rows:
        r["latency_ms_b1"] = lat[r["name"]]["latency_ms_b1"]
        r["throughput_b64"] = lat[r["name"]]["throughput_b64"]
    teacher_acc = rows[0]["accuracy"]
    front = set(pareto_front(rows))
    by_name = {r["name"]: r for r in rows}
    for r in rows:
        r["pareto"] = r["name"] in front
        r["bytes_vs_teacher"] = rows[0]["bytes"] / r["bytes"]
        r["speedup_b1_vs_teacher"] = rows[0]["latency_ms_b1"] / r["latency_ms_b1"]
        if "int8" in r["steps"]:
            r["int8_speedup_b1"] = by_name[r["model_stage"]]["latency_ms_b1"] / r["latency_ms_b1"]
    table = _table(rows) + "".join(f"\nSkipped {step}: {why}.\n" for step, why in skipped.items())
    atomic_write(out / "candidates.md", table.encode())
    try:
        chosen = choose(rows, cfg, teacher_acc)
    finally:  # the table and plot are worth keeping even when nothing qualifies
        atomic_write(
            out / "candidates.json",
            json.dumps({"config": cfg.to_dict(), "candidates": rows, "skipped": skipped}, indent=2).encode(),
        )
        plot = _plot(rows, out / "pareto.png")
    models = {name: m for name, (m, _) in stages.items()}
    return CompressResult(rows, chosen, models, cfg, table, plot, skipped)


def _table(rows: list[dict[str, Any]]) -> str:
    head = "| candidate | steps | test acc | drop (pts) | bytes | zlib bytes | params | b1 ms | b64 samples/s | x smaller | x faster b1 | Pareto |"
    lines = [head, "|" + "---|" * 12]
    t = rows[0]
    for r in rows:
        lines.append(
            f"| {r['name']} | {'+'.join(r['steps']) or '-'} | {r['accuracy']:.4f} | {(t['accuracy'] - r['accuracy']) * 100:.2f} "
            f"| {r['bytes']:,} | {r['bytes_zlib']:,} | {r['params']:,} | {r['latency_ms_b1']:.3f} | {r['throughput_b64']:,.0f} "
            f"| {r['bytes_vs_teacher']:.1f} | {r['speedup_b1_vs_teacher']:.2f} | {'yes' if r['pareto'] else ''} |"
        )
    weak = [r for r in rows if r.get("int8_speedup_b1", 2.0) < INT8_PAYS]
    if weak:
        lines += [
            "",
            "int8 barely pays at batch 1 for "
            + ", ".join(f"{r['name']} ({r['int8_speedup_b1']:.2f}x its fp32)" for r in weak)
            + ": the model is small enough that ONNX Runtime's per-call overhead, not its arithmetic, sets the latency.",
        ]
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict[str, Any]], path: Path) -> Path:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    lat = np.array([r["latency_ms_b1"] for r in rows])
    sizes = 40 + 300 * (lat / lat.max())
    for r, s in zip(rows, sizes):
        ax.scatter(
            r["bytes"] / 1024,
            r["accuracy"] * 100,
            s=s,
            alpha=0.6,
            edgecolors="black" if r["pareto"] else "none",
            color="tab:red" if "int8" in r["steps"] else "tab:blue",
        )
        ax.annotate(
            r["name"], (r["bytes"] / 1024, r["accuracy"] * 100), fontsize=7, xytext=(4, 4), textcoords="offset points"
        )
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["bytes"])
    ax.plot(
        [r["bytes"] / 1024 for r in front], [r["accuracy"] * 100 for r in front], "k--", lw=0.8, label="Pareto front"
    )
    ax.set_xscale("log")
    ax.set_xlabel("ONNX size (KB, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy, size and latency (marker area ~ batch-1 latency; red = int8)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write(path, buf.getvalue())
    return path


def compress_in_workspace(ws, teacher_ref: str, config: CompressConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run `compress` on a catalog teacher and save every stage to the catalog.

    The chosen candidate's ONNX file and registry info come back under
    ``"candidate"``; `datamoat.registry.register.register_compressed` registers it.
    """
    from datamoat.data import load_dataset
    from datamoat.models import load_model, save_model

    teacher = load_model(ws, teacher_ref)
    data = load_dataset(ws, teacher.lineage["dataset_id"])
    run_id = ws.new_id()
    out_dir = ws.path_for("compress", run_id)
    t0 = time.perf_counter()
    res = compress(teacher, data, config, out_dir=out_dir, progress=progress)
    saved: dict[str, str] = {"teacher": teacher.id}  # type: ignore[dict-item]
    for name, m in res.models.items():
        if name == "teacher":
            continue
        saved[name] = save_model(ws, m, name=f"{teacher.name}-{name}").id  # type: ignore[assignment]
    chosen = res.candidate(res.chosen)
    stage_model = res.models[chosen["model_stage"]]
    info = {
        "model_id": saved[chosen["model_stage"]],
        "classes": stage_model.classes,
        "preprocess": stage_model.preprocess,
        "input_shape": list(data.input_shape),
        "lineage": {**stage_model.lineage, "teacher_id": teacher.id, "dataset_id": data.id},
        "recipe": config.to_dict(),
        "metrics": {k: chosen[k] for k in ("accuracy", "bytes", "latency_ms_b1", "throughput_b64")},
        "policy": {},
    }
    kind = "int8" if "int8" in chosen["steps"] else "fp32"
    return {
        "candidates": res.candidates,
        "chosen": res.chosen,
        "skipped": res.skipped,
        "candidate": {
            "onnx_path": chosen["onnx_path"],
            "name": f"{teacher.name}-{res.chosen}",
            "kind": kind,
            "info": info,
        },
        "catalog_model_id": saved[chosen["model_stage"]],
        "teacher_id": teacher.id,
        "dataset_id": data.id,
        "stage_models": saved,
        "table": str(out_dir / "candidates.md"),
        "plot": str(res.plot) if res.plot else None,
        "seconds": time.perf_counter() - t0,
    }
