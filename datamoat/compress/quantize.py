"""`quantize`: an fp32 ONNX classifier to int8 that stays within an accuracy budget.

Conv nets get static QDQ quantization (calibrated on a seeded sample of the
train split): onnxruntime's CPU optimiser fuses each DQ -> Conv/Gemm -> Q
group into QLinearConv / QGemm int8 kernels. Linear-only nets (the `mlp`)
get dynamic quantization of their MatMuls, which needs no calibration. We
never dynamically quantize a Conv: that yields ConvInteger, which stock
onnxruntime does not run with int8 weights ("ConvInteger is not implemented").

Accuracy-aware retry: when eval data is given and int8 loses more than
`max_accuracy_drop` points, every still-quantized Conv/Gemm/MatMul is tried
in turn as fp32 (leave-one-out) and scored by the mean squared error of the
int8 logits against the fp32 logits on the eval images. The node whose fp32
copy helps most stays fp32 and quantization runs again, up to `max_retries`
times. We score on eval rather than calibration images on purpose: MinMax
ranges never clip the data they were computed on, so the calibration sample
would hide exactly the clipping errors that cause large drops. The score
uses no labels, and one probe costs one re-quantization (calibration shared
through onnxruntime's cache where available) plus one inference pass.

Latency-aware fallback: on x86, onnxruntime's int8 depthwise conv is slower
than its fp32 one (which also fuses a following hardswish), so with
`float_depthwise` depthwise convs stay fp32; and a Mul of two activations
(hardswish's x * hardsigmoid(x), a squeeze-excitation gate) is never
quantized. bench/results/int8_photo.md holds the measurements behind both.

Every node kept fp32 is fed through its own per-channel DequantizeLinear:
stock onnxruntime (>= 1.20, its WeightBiasQuantization pass) otherwise
quantizes the float weights of a Conv/Gemm read from a per-tensor DQ and
fuses it into an int8 kernel, silently undoing the fallback with coarser
per-tensor weights.
"""

from __future__ import annotations

import dataclasses
import inspect
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from datamoat.compress.qgraph import (
    depthwise_convs,
    float_outputs,
    gemm_to_matmul,
    pin_float,
    pool_after_relu,
    stem_convs,
)
from datamoat.configs import Config, check, check_choice
from datamoat.errors import DatamoatError
from datamoat.inference.onnx import file_bytes, normalise, onnx_accuracy, ort_session
from datamoat.workspace import Workspace, atomic_write

__all__ = [
    "QuantizeConfig",
    "QuantizeResult",
    "QuantizeAccuracyError",
    "quantize",
    "quantize_in_workspace",
    "saturates_8bit",
]

METHODS = ("auto", "static", "dynamic")
CALIBRATIONS = ("minmax", "entropy", "percentile")
QUANTIZABLE = ("Conv", "Gemm", "MatMul")
# Op types static quantization leaves float. A Mul of two activations (hardswish,
# a squeeze-excitation gate) becomes QLinearMul plus a Q/DQ pair around the float
# HardSigmoid feeding it: more work than the float Mul it replaces.
FLOAT_OP_TYPES = ("Mul",)


@dataclasses.dataclass
class QuantizeConfig(Config):
    """How to quantize. `max_accuracy_drop` is in accuracy points (0.5 = 0.5%)."""

    method: str = "auto"
    calibration: str = "minmax"
    calibration_samples: int = 512
    per_channel: bool = True
    max_accuracy_drop: float = 0.5
    exclude: tuple[str, ...] = ()
    max_retries: int = 3
    # A first Conv reading <= 4 channels stays fp32: its int8 kernel is ~4x
    # slower than fp32 on x86 (K = Cin*9 is too short for int8 dot products;
    # 1.6 ms vs 0.34 ms for cnn_medium's 1->32 conv at batch 64) and it holds
    # well under 1% of the weights.
    float_stem: bool = True
    # Depthwise convs stay fp32: onnxruntime's int8 depthwise kernel is slower
    # than its fp32 one on x86 (bench/results/int8_photo.md). Turn it off where
    # int8 depthwise kernels are the faster ones.
    float_depthwise: bool = True
    # 7-bit weights avoid u8*s8 overflow on x86 CPUs without VNNI; with VNNI
    # (and on ARM) they only cost accuracy. None: 7-bit where this machine
    # lacks VNNI, the machine whose checks judge the file. 8-bit weights that
    # miss the accuracy budget are retried 7-bit first. The result's config
    # says which ran.
    reduce_range: bool | None = None
    seed: int = 0

    def validate(self) -> None:
        check_choice("quantization method", self.method, METHODS)
        check_choice("calibration method", self.calibration, CALIBRATIONS)
        check(self.calibration_samples >= 1, "calibration_samples must be at least 1")
        check(self.max_accuracy_drop >= 0, f"max_accuracy_drop must be >= 0 points, got {self.max_accuracy_drop}")
        check(self.max_retries >= 0, f"max_retries must be >= 0, got {self.max_retries}")
        for name in ("per_channel", "float_stem", "float_depthwise", "reduce_range"):
            value = getattr(self, name)
            ok = isinstance(value, bool) or (name == "reduce_range" and value is None)
            auto = " (or None: by this CPU)" if name == "reduce_range" else ""
            check(ok, f"{name} must be true or false{auto}, got {value!r}")
        self.exclude = tuple(str(e) for e in self.exclude)


def saturates_8bit() -> bool:
    """Whether this CPU's int8 kernels can overflow with 8-bit weights: x86 without VNNI (AVX2's
    u8*s8 products saturate in 16 bits). ARM and VNNI CPUs cannot; a CPU whose flags cannot be read
    counts as safe.

    >>> isinstance(saturates_8bit(), bool)
    True
    """
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "i386"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        return False
    return flags is not None and not ({"avx512_vnni", "avx_vnni"} & set(flags))


class QuantizeAccuracyError(DatamoatError):
    """int8 lost more accuracy than the budget allows, even after retries."""


@dataclasses.dataclass
class QuantizeResult:
    """What `quantize` produced. `excluded` maps node name -> why it stayed fp32."""

    path: Path
    source: Path
    method: str
    fp32_accuracy: float | None
    int8_accuracy: float | None
    excluded: dict[str, str]
    config: QuantizeConfig
    fp32_bytes: int
    int8_bytes: int
    attempts: list[dict[str, Any]]
    sha: str | None = None

    @property
    def accuracy_drop(self) -> float | None:
        """fp32 minus int8 accuracy, in points."""
        if self.fp32_accuracy is None or self.int8_accuracy is None:
            return None
        return 100.0 * (self.fp32_accuracy - self.int8_accuracy)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d.update(path=str(self.path), source=str(self.source), config=self.config.to_dict())
        return {**d, "accuracy_drop": self.accuracy_drop, "bytes_ratio": self.int8_bytes / self.fp32_bytes}


def _reader(feeds: list[dict[str, np.ndarray]]) -> Any:
    """A calibration reader over prepared input batches."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    return Reader()


def _quantize_once(
    pre: Path,
    dst: Path,
    method: str,
    cfg: QuantizeConfig,
    excluded: list[str],
    feeds: list[dict[str, np.ndarray]],
    probe_cache: Path | None = None,
) -> Path:
    """One quantization of the pre-processed graph. Sensitivity probes pass
    `probe_cache`: they share one graph, so they can share one calibration."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    if method == "dynamic":
        quantize_dynamic(
            str(pre),
            str(dst),
            op_types_to_quantize=["MatMul"],
            per_channel=cfg.per_channel,
            reduce_range=cfg.reduce_range,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
        )
        return dst
    src, kwargs = pre, {}
    if probe_cache is None:
        src = dst.with_suffix(".in.onnx")
        onnx.save(pool_after_relu(onnx.load(str(pre)), excluded), str(src))
    elif "calibration_cache_path" in inspect.signature(quantize_static).parameters:  # newer onnxruntime only
        kwargs["calibration_cache_path"] = str(probe_cache)
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    quantize_static(
        str(src),
        str(dst),
        _reader(feeds),
        quant_format=QuantFormat.QDQ,
        # uint8 activations + int8 weights: the u8s8 kernels x86 runs fastest
        # (VNNI vpdpbusd). Asymmetric activations put ReLU outputs on the full
        # 0..255 range and let ORT drop the ReLU; symmetric int8 activations
        # kept ReLU and MaxPool in float and ran 1.2-2x slower than fp32.
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=cfg.per_channel,
        reduce_range=cfg.reduce_range,
        nodes_to_exclude=excluded,
        # onnxruntime's own default (every op it can quantize) less FLOAT_OP_TYPES
        op_types_to_quantize=sorted((set(QLinearOpsRegistry) | set(QDQRegistry)) - set(FLOAT_OP_TYPES)),
        calibrate_method=methods[cfg.calibration],
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        **kwargs,
    )
    onnx.save(pin_float(float_outputs(onnx.load(str(dst))), set(excluded)), str(dst))
    return dst


def _logits(path: Path, x: np.ndarray, step: int) -> np.ndarray:
    sess = ort_session(path, threads=1)
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + step]})[0] for i in range(0, len(x), step)])


def _sample(x: np.ndarray, n: int, seed: int, step: int, preprocess: dict[str, Any]) -> np.ndarray:
    """A seeded sample of `n` images, normalised, cut to whole `step` batches."""
    idx = np.sort(np.random.default_rng(seed).choice(len(x), min(n, len(x)), replace=False))
    out = normalise(x[idx], preprocess)  # (n, C, H, W)
    return out[: len(out) // step * step or len(out)]


def quantize(
    onnx_path: str | Path,
    config: QuantizeConfig | None,
    calibration_x: np.ndarray,
    preprocess: dict[str, Any] | None,
    *,
    eval_x: np.ndarray | None = None,
    eval_y: np.ndarray | None = None,
    out_path: str | Path | None = None,
) -> QuantizeResult:
    """Quantize an fp32 ONNX classifier to int8 (``<name>.int8.onnx`` beside it
    unless `out_path`); with eval data, keep the accuracy drop within budget.
    `preprocess` None reads it from the file's metadata.

    >>> r = quantize("m.onnx", QuantizeConfig(), x_train, None, eval_x=x_val, eval_y=y_val)  # doctest: +SKIP
    >>> r.int8_bytes / r.fp32_bytes  # doctest: +SKIP
    0.26
    """
    import onnx
    from onnxruntime.quantization import quant_pre_process

    from datamoat.compress.export import onnx_metadata, set_onnx_metadata

    cfg = config or QuantizeConfig()
    if cfg.reduce_range is None:
        cfg = dataclasses.replace(cfg, reduce_range=saturates_8bit())
    src = Path(onnx_path)
    meta = onnx_metadata(src)  # also says clearly when `src` is missing or not ONNX
    proto = onnx.load(str(src))
    preprocess = preprocess or meta.get("preprocess")
    check(preprocess is not None, f"{src} carries no preprocess metadata: pass the model's preprocess dict")
    assert preprocess is not None
    x = np.asarray(calibration_x)
    check(
        x.dtype == np.uint8 and x.ndim == 4 and len(x) > 0,
        f"calibration images must be uint8 (N, C, H, W), got {x.dtype} {x.shape}",
    )
    method = (
        cfg.method
        if cfg.method != "auto"
        else ("static" if any(n.op_type == "Conv" for n in proto.graph.node) else "dynamic")
    )
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    step = dim.dim_value if dim.dim_value > 0 else 64  # a fixed batch size must be fed as is
    x_cal = _sample(x, cfg.calibration_samples, cfg.seed, step, preprocess)
    name = next(i.name for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer})
    feeds = [{name: x_cal[i : i + step]} for i in range(0, len(x_cal), step)]
    # (x, y) to hold the accuracy drop to, None without eval data
    evals = (eval_x, eval_y) if eval_x is not None and eval_y is not None and len(eval_y) > 0 else None
    fp32_acc = onnx_accuracy(src, *evals, preprocess) if evals is not None else None
    with tempfile.TemporaryDirectory(prefix="datamoat-q-") as tmp_dir:
        tmp = Path(tmp_dir)
        fp32, pre = tmp / "fp32.onnx", tmp / "pre.onnx"
        onnx.save(gemm_to_matmul(proto) if method == "dynamic" else proto, str(fp32))
        # Shape inference + ORT's basic fusions, as the quantizer expects; not for dynamic, whose fusions
        # turn the MatMuls back into Gemms that the quantizer renames, so an exclusion would miss them.
        quant_pre_process(str(fp32), str(pre), skip_optimization=method == "dynamic")
        pre_proto = onnx.load(str(pre))
        names = [n.name for n in pre_proto.graph.node if n.op_type in QUANTIZABLE]
        unknown = [e for e in cfg.exclude if e not in names]
        check(not unknown, f"no quantizable node named {', '.join(unknown)}: choose from {', '.join(names)}")
        excluded = dict.fromkeys(cfg.exclude, "user")
        if method == "static" and cfg.float_stem:
            excluded.update({n: "stem" for n in stem_convs(proto) if n not in excluded})
        if method == "static" and cfg.float_depthwise:
            excluded.update({n: "depthwise" for n in depthwise_convs(pre_proto) if n not in excluded})
        attempts: list[dict[str, Any]] = []
        while True:
            out = _quantize_once(pre, tmp / f"int8_{len(attempts)}.onnx", method, cfg, list(excluded), feeds)
            int8_acc = onnx_accuracy(out, *evals, preprocess) if evals is not None else None
            drop = 100 * (fp32_acc - int8_acc) if fp32_acc is not None and int8_acc is not None else 0.0
            attempts.append(
                {
                    "excluded": list(excluded),
                    "reduce_range": cfg.reduce_range,
                    "int8_accuracy": int8_acc,
                    "accuracy_drop": drop,
                }
            )
            if drop <= cfg.max_accuracy_drop + 1e-9:
                break
            if not cfg.reduce_range and len(attempts) <= cfg.max_retries:
                # 7-bit weights first: on x86 CPUs without VNNI, u8*s8 products saturate in 8 bits.
                cfg = dataclasses.replace(cfg, reduce_range=True)
                continue
            left = [n for n in names if n not in excluded]
            if len(attempts) > cfg.max_retries or not left:
                raise QuantizeAccuracyError(
                    f"int8 accuracy drop {drop:.2f} points > budget {cfg.max_accuracy_drop:g} after {len(attempts)} "
                    f"attempt(s) keeping [{', '.join(excluded) or 'nothing'}] fp32 ({method}, {cfg.calibration} "
                    "calibration): raise --max-accuracy-drop, try another --calibration, or ship the fp32 model"
                )
            assert evals is not None  # without eval data the drop is 0, within any budget
            x_probe = _sample(evals[0], 1024, cfg.seed, step, preprocess)
            ref, cache, errors = _logits(src, x_probe, step), tmp / f"calib_{len(attempts)}.json", {}
            for i, n in enumerate(left):  # node names may hold '/', so the file is named by index
                probe = _quantize_once(pre, tmp / f"probe_{i}.onnx", method, cfg, [*excluded, n], feeds, cache)
                errors[n] = float(np.mean((_logits(probe, x_probe, step) - ref) ** 2))
            excluded[min(errors, key=errors.__getitem__)] = "sensitivity"
            attempts[-1]["probe_mse"] = errors
        q = onnx.load(str(out))
        set_onnx_metadata(
            q,
            {
                **meta,
                "recipe": [*meta.get("recipe", []), cfg.to_dict()],
                "quantize_config": cfg.to_dict(),
                "quantize_method": method,
                "quantize_excluded": excluded,
                "fp32_accuracy": fp32_acc,
                "int8_accuracy": int8_acc,
            },
        )
        data = q.SerializeToString()
    dst = Path(out_path) if out_path else src.with_suffix(".int8.onnx")
    atomic_write(dst, data)
    return QuantizeResult(dst, src, method, fp32_acc, int8_acc, excluded, cfg, file_bytes(src), len(data), attempts)


def quantize_in_workspace(
    ws: Workspace, model_ref: Any, config: QuantizeConfig | None = None
) -> tuple[Path, QuantizeResult]:
    """Export a catalog model if needed, quantize it calibrating on its
    dataset's train split and checking on its val split, and store the int8
    file in the artifact store (its sha in `result.sha`).

    >>> path, result = quantize_in_workspace(ws, "cnn_medium-fashion")  # doctest: +SKIP
    """
    from datamoat.compress.export import export_in_workspace, onnx_metadata
    from datamoat.data.dataset import load_dataset
    from datamoat.models.model import load_model

    model = load_model(ws, model_ref) if isinstance(model_ref, str) else model_ref
    check(model.id is not None, "the model is not saved: save it to the workspace before quantizing it there")
    ds_id = model.lineage.get("dataset_id")
    check(ds_id is not None, f"model {model.name} records no dataset: quantize it with `quantize()` and your own data")
    assert ds_id is not None
    fp32 = ws.root / "onnx" / f"{model.id}.onnx"
    if not fp32.is_file() or onnx_metadata(fp32).get("model_id") != model.id:
        fp32, _ = export_in_workspace(ws, model)
    data = load_dataset(ws, ds_id)
    x_val, y_val = data.subset("val")
    result = quantize(
        fp32,
        config,
        data.subset("train")[0],
        model.preprocess,
        eval_x=x_val,
        eval_y=y_val,
        out_path=fp32.with_suffix(".int8.onnx"),
    )
    result.sha = ws.put_bytes(result.path.read_bytes())
    return result.path, result
