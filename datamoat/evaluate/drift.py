"""Is production still what a model was validated on? A reference profile, window tests against it
with a stated false-alarm rate, and an accuracy estimate that needs no labels.

- `reference_profile` records, from a version's validation split run through the inference core
  (ONNX Runtime, as servers and devices run it): per-channel means and brightness and contrast
  histograms of the inputs; a random-projection sketch of the penultimate-layer embeddings; the
  class mix, the confidence histogram and the calibration curve of the outputs; and the ATC
  threshold for label-free accuracy.
- `summarize` turns one window of production traffic into what a server keeps, or a device sends
  in a heartbeat: per-input sketches and scalars, never an image.
- `check_window` compares a window with the profile by three tests:
  MMD on the embedding sketches (RBF kernel, bandwidth from the reference's median distance,
  p-value from a permutation test), Kolmogorov-Smirnov on the confidences, and chi-square on the
  predicted class mix, and Kolmogorov-Smirnov on the inputs' brightness and contrast. The window
  alarms when any of the five p-values is below alpha / 5 (Bonferroni), so under no drift a window
  alarms with probability at most alpha, whatever the tests' dependence.
- `estimate_accuracy`: ATC (average thresholded confidence, Garg et al. 2022): the share of
  answers whose confidence is above the threshold at which the share on the validation split equals
  its accuracy. The interval is the window's sampling error only (Wilson, 95%); the method's own
  bias under a shift is measured in bench/results/drift.md, not covered by it.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> cfg = DriftConfig(permutations=100)
>>> ref = summarize(rng.normal(size=(400, 8)), _probs(rng, 400), _pixels(rng, 400), cfg)
>>> prof = profile_from(ref, labels=ref["predicted"], config=cfg)
>>> same = summarize(rng.normal(size=(200, 8)), _probs(rng, 200), _pixels(rng, 200), cfg)
>>> check_window(prof, same)["alarm"]
False
>>> moved = summarize(rng.normal(size=(200, 8)) + 1.0, _probs(rng, 200), _pixels(rng, 200), cfg)
>>> check_window(prof, moved)["alarm"], check_window(prof, moved)["fired"]
(True, ['embedding MMD'])
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from datamoat.configs import Config, check, config_from_dict
from datamoat.errors import BadInput

__all__ = [
    "DriftConfig",
    "pixel_stats",
    "summarize",
    "sketch_window",
    "profile_from",
    "profile_config",
    "merge",
    "reference_profile",
    "check_window",
    "estimate_accuracy",
    "WindowBuffer",
    "check_parts",
    "RESULT_KEYS",
]

# What a window's result keeps when it is stored or sent (a device's heartbeat, the registry).
RESULT_KEYS: tuple[str, ...] = ("n", "alarm", "fired", "p_values", "level", "mmd2", "brightness_shift")
RESULT_KEYS += ("contrast_shift", "class_mix", "estimate")

TESTS = ("embedding MMD", "confidence KS", "class mix chi-square", "brightness KS", "contrast KS")
_Z95 = 1.959963984540054


@dataclasses.dataclass
class DriftConfig(Config):
    """How a profile is recorded and a window tested.

    >>> DriftConfig(alpha=0.5)
    Traceback (most recent call last):
    datamoat.errors.BadInput: alpha must be in (0, 0.2], got 0.5
    """

    alpha: float = 0.05  # the chance that a window with no drift alarms
    permutations: int = 300  # of the MMD test; its smallest p-value is 1 / (permutations + 1)
    sketch_dim: int = 32  # the embeddings' random projection
    reference_sketches: int = 500  # reference embeddings kept for MMD
    reference_scalars: int = 2000  # reference confidences, brightnesses and contrasts kept for KS
    bins: int = 16  # of the brightness, contrast and confidence histograms
    seed: int = 0  # of the projection, the kept samples and the permutations

    def validate(self) -> None:
        check(0 < self.alpha <= 0.2, f"alpha must be in (0, 0.2], got {self.alpha}")
        need = math.ceil(len(TESTS) / self.alpha)
        check(self.permutations >= need, f"permutations must be at least {need} so the MMD test can reach its level")
        for name in ("sketch_dim", "reference_sketches", "reference_scalars", "bins"):
            check(getattr(self, name) >= 2, f"{name} must be at least 2, got {getattr(self, name)}")


def _projection(dim_in: int, cfg: DriftConfig) -> np.ndarray:
    """(D, d) Gaussian random projection: distances are kept up to a small factor (Johnson-Lindenstrauss),
    so the sketches are two-sample tested in d dimensions instead of D. Rebuilt from the seed, never stored."""
    rng = np.random.default_rng([cfg.seed, dim_in])
    return (rng.normal(size=(dim_in, cfg.sketch_dim)) / math.sqrt(cfg.sketch_dim)).astype(np.float32)


def pixel_stats(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Per input its brightness and contrast (mean and std of its pixels, 0..255), and the per-channel
    sums of the inputs' means: what a window keeps of the pixels. `pixels` (N, C, H, W). A photo is
    read on a grid of at most 64x64 pixels: the statistics barely move, and a server's inference
    thread spends microseconds on them instead of milliseconds."""
    step = max(1, -(-max(pixels.shape[2:]) // 64))
    x = np.asarray(pixels[:, :, ::step, ::step], np.float32)  # (N, C, <=64, <=64)
    x = x.reshape(len(x), x.shape[1], -1)  # (N, C, HW)
    return {
        "brightness": x.mean((1, 2)).astype(np.float64),  # (N,)
        "contrast": x.std((1, 2)).astype(np.float64),  # (N,)
        "channel_sum": x.mean(2).sum(0).astype(np.float64),  # (C,)
    }


def summarize(embeddings: np.ndarray, probs: np.ndarray, pixels: np.ndarray, config: DriftConfig) -> dict[str, Any]:
    """One window's compact summary: per input its embedding sketch, confidence, predicted class,
    brightness and contrast, and the window's per-channel pixel sums. No pixels are kept.

    `embeddings` (N, D) penultimate activations, `probs` (N, K), `pixels` (N, C, H, W) in 0..255.
    """
    return sketch_window(embeddings, probs, pixel_stats(pixels), config)


def sketch_window(
    embeddings: np.ndarray, probs: np.ndarray, stats: dict[str, np.ndarray], config: DriftConfig
) -> dict[str, Any]:
    """`summarize` from `pixel_stats` taken earlier (a server keeps those, not the pixels)."""
    emb = np.asarray(embeddings, np.float32).reshape(len(embeddings), -1)  # (N, D)
    return {
        "sketch": emb @ _projection(emb.shape[1], config),  # (N, d)
        "confidence": probs.max(1).astype(np.float64),  # (N,)
        "predicted": probs.argmax(1).astype(np.int64),  # (N,)
        **stats,
        "classes": probs.shape[1],
    }


def _median_bandwidth(z: np.ndarray) -> float:
    d2 = ((z[:, None, :] - z[None, :, :]) ** 2).sum(-1)  # (M, M)
    return float(math.sqrt(max(np.median(d2[np.triu_indices(len(z), 1)]), 1e-12) / 2))


def profile_from(
    ref: dict[str, Any], *, labels: np.ndarray, config: DriftConfig | None = None, meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The reference profile (JSON-ready) from a validation split's `summarize` and its true labels."""
    cfg = config or DriftConfig()
    rng = np.random.default_rng(cfg.seed)
    n = len(ref["confidence"])
    correct = ref["predicted"] == np.asarray(labels)  # (N,)
    accuracy = float(correct.mean())
    keep = np.sort(rng.choice(n, size=min(n, cfg.reference_sketches), replace=False))
    sketches = ref["sketch"][keep]  # (M, d)
    conf = ref["confidence"]
    kept = np.sort(rng.choice(n, size=min(n, cfg.reference_scalars), replace=False))
    edges = np.linspace(0, 1, 11)
    which = np.clip(np.digitize(conf, edges) - 1, 0, 9)
    calibration = [
        {"low": float(edges[b]), "high": float(edges[b + 1]), "count": int((which == b).sum())}
        | (
            {"confidence": float(conf[which == b].mean()), "accuracy": float(correct[which == b].mean())}
            if (which == b).any()
            else {}
        )
        for b in range(10)
    ]
    return {
        "format": 1,
        "config": cfg.to_dict(),
        "n": n,
        "accuracy": accuracy,
        "channel_mean": (ref["channel_sum"] / n).tolist(),
        "brightness_hist": np.histogram(ref["brightness"], cfg.bins, (0, 256))[0].tolist(),
        "contrast_hist": np.histogram(ref["contrast"], cfg.bins, (0, 128))[0].tolist(),
        "brightness_mean": float(ref["brightness"].mean()),
        "contrast_mean": float(ref["contrast"].mean()),
        "sketches": sketches.round(5).tolist(),
        "bandwidth": _median_bandwidth(sketches),
        # Kept at full precision: KS compares them with a window's unrounded values, and rounding
        # would pile the many confidences near 1 onto 1.0 and tell the two apart on that alone.
        "confidences": conf[kept].tolist(),
        "brightnesses": ref["brightness"][kept].tolist(),
        "contrasts": ref["contrast"][kept].tolist(),
        "confidence_hist": np.histogram(conf, cfg.bins, (0, 1))[0].tolist(),
        "class_counts": np.bincount(ref["predicted"], minlength=ref["classes"]).tolist(),
        "calibration": calibration,
        # ATC: the threshold above which the validation split's share of answers equals its accuracy.
        "atc_threshold": float(np.quantile(conf, 1 - accuracy)),
        **(meta or {}),
    }


def reference_profile(
    version: Any, data: Any, *, split: str = "val", config: DriftConfig | None = None, batch_size: int = 512
) -> dict[str, Any]:
    """Profile `version` (a `LoadedVersion` opened with ``embeddings=True``) on `data`'s `split`,
    batch by batch through the inference core.

    >>> prof = reference_profile(open_version(onnx, meta, embeddings=True), ds)  # doctest: +SKIP
    """
    from datamoat.data.dataset import SPLITS, read_rows

    cfg = config or DriftConfig()
    if version.embedding is None:
        raise BadInput("open the version with embeddings=True: the profile sketches its embeddings")
    rows = np.flatnonzero(data.split == SPLITS[split])
    parts = []
    for i in range(0, len(rows), batch_size):
        x = read_rows(data.x, rows[i : i + batch_size])  # (B, C, H, W) uint8
        probs, emb = version.run(x)
        parts.append(summarize(emb, probs, x, cfg))
    ref = merge(parts)
    meta = {"version_id": version.version_id, "dataset_id": data.id, "split": split, "classes": version.classes}
    return profile_from(ref, labels=data.y[rows], config=cfg, meta=meta)


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Several batches' `summarize` (or `pixel_stats`) as one: per-input arrays joined, channel sums
    added, the class count kept.

    >>> merge([{"contrast": np.ones(2), "channel_sum": np.ones(1)}] * 2)["channel_sum"].tolist()
    [2.0]
    """
    out: dict[str, Any] = {}
    for key, first in parts[0].items():
        if key == "channel_sum":
            out[key] = np.sum([p[key] for p in parts], axis=0)
        elif key == "classes":
            out[key] = first
        else:
            out[key] = np.concatenate([p[key] for p in parts])
    return out


def profile_config(profile: dict[str, Any]) -> DriftConfig:
    """The `DriftConfig` a profile was recorded with (its windows are tested with the same)."""
    cfg = config_from_dict(profile["config"])
    assert isinstance(cfg, DriftConfig)
    return cfg


def _mmd_pvalue(
    ref: np.ndarray, win: np.ndarray, bandwidth: float, permutations: int, seed: int
) -> tuple[float, float]:
    """(biased MMD^2, permutation p-value) of two samples of sketches, RBF kernel."""
    z = np.concatenate([ref, win]).astype(np.float64)  # (N, d), N = M + W
    sq = (z * z).sum(1)
    k = np.exp(-np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0) / (2 * bandwidth**2))  # (N, N)
    m, n = len(ref), len(win)
    sign = np.concatenate([np.full(m, 1 / m), np.full(n, -1 / n)])  # (N,)
    rng = np.random.default_rng(seed)
    perms = np.stack([sign[rng.permutation(m + n)] for _ in range(permutations)], 1)  # (N, P)
    observed = float(sign @ k @ sign)
    null = ((k @ perms) * perms).sum(0)  # (P,)
    return observed, float((1 + (null >= observed).sum()) / (1 + permutations))


def check_window(profile: dict[str, Any], window: dict[str, Any]) -> dict[str, Any]:
    """Test one window's `summarize` against a profile; ``alarm`` is True when any test's p-value is
    below alpha / 5, so a window without drift alarms with probability at most alpha."""
    from scipy.stats import chi2_contingency, ks_2samp

    cfg = profile_config(profile)
    n = len(window["confidence"])
    if n < 10:
        raise BadInput(f"a window needs at least 10 answers, got {n}")
    sketches = np.asarray(profile["sketches"], np.float64)
    mmd, p_mmd = _mmd_pvalue(sketches, window["sketch"], profile["bandwidth"], cfg.permutations, cfg.seed)
    p_ks = float(ks_2samp(np.asarray(profile["confidences"]), window["confidence"]).pvalue)
    table = np.stack(
        [profile["class_counts"], np.bincount(window["predicted"], minlength=len(profile["class_counts"]))]
    )
    table = table[:, table.sum(0) > 0]  # (2, K') classes seen in either
    p_chi = float(chi2_contingency(table).pvalue) if table.shape[1] > 1 else 1.0
    p_bright = float(ks_2samp(np.asarray(profile["brightnesses"]), window["brightness"]).pvalue)
    p_contrast = float(ks_2samp(np.asarray(profile["contrasts"]), window["contrast"]).pvalue)
    p = dict(zip(TESTS, (p_mmd, p_ks, p_chi, p_bright, p_contrast)))
    level = cfg.alpha / len(TESTS)
    return {
        "n": n,
        "alarm": min(p.values()) < level,
        "fired": [t for t, v in p.items() if v < level],
        "p_values": p,
        "level": level,
        "mmd2": mmd,
        "brightness_shift": float(window["brightness"].mean() - profile["brightness_mean"]),
        "contrast_shift": float(window["contrast"].mean() - profile["contrast_mean"]),
        "class_mix": (np.bincount(window["predicted"], minlength=len(profile["class_counts"])) / n).tolist(),
        "estimate": estimate_accuracy(profile, window["confidence"]),
    }


def estimate_accuracy(profile: dict[str, Any], confidences: np.ndarray) -> dict[str, Any]:
    """ATC's label-free accuracy of answers with these confidences, with the window's 95% sampling
    interval (Wilson). The method's bias under a shift is not in the interval.

    >>> estimate_accuracy({"atc_threshold": 0.5}, np.array([0.9, 0.8, 0.4, 0.95]))["estimate"]
    0.75
    """
    n = len(confidences)
    k = float((np.asarray(confidences) > profile["atc_threshold"]).sum())
    est = k / n
    centre = (est + _Z95**2 / (2 * n)) / (1 + _Z95**2 / n)
    half = _Z95 * math.sqrt(est * (1 - est) / n + _Z95**2 / (4 * n * n)) / (1 + _Z95**2 / n)
    return {"estimate": est, "low": max(0.0, centre - half), "high": min(1.0, centre + half), "method": "ATC"}


class WindowBuffer:
    """Batches of answers gathered into windows of `size` answers per key (a server's alias and
    version, a device's version), holding embeddings and pixel statistics, never pixels. Thread-safe.

    >>> buf = WindowBuffer(4)
    >>> rng = np.random.default_rng(0)
    >>> buf.add("v1", _probs(rng, 3), rng.normal(size=(3, 8)), _pixels(rng, 3)) is None
    True
    >>> len(buf.add("v1", _probs(rng, 3), rng.normal(size=(3, 8)), _pixels(rng, 3)))  # 6 >= 4: a window
    2
    """

    def __init__(self, size: int) -> None:
        import threading

        self.size = size
        self._lock = threading.Lock()
        self._parts: dict[Any, list[tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]]] = {}
        self._counts: dict[Any, int] = {}

    def add(self, key: Any, probs: np.ndarray, emb: np.ndarray, pixels: np.ndarray) -> list[Any] | None:
        """Add one batch: probs (B, K), emb (B, D), pixels (B, C, H, W). Returns a full window's
        parts (and starts the next window) or None."""
        part = (probs, emb, pixel_stats(pixels))
        with self._lock:
            self._parts.setdefault(key, []).append(part)
            self._counts[key] = self._counts.get(key, 0) + len(probs)
            if self._counts[key] < self.size:
                return None
            parts, self._parts[key], self._counts[key] = self._parts[key], [], 0
            return parts


def check_parts(profile: dict[str, Any], parts: list[Any]) -> dict[str, Any]:
    """`check_window` on a `WindowBuffer` window, sketched with the profile's own config."""
    probs = np.concatenate([p[0] for p in parts])  # (W, K)
    emb = np.concatenate([p[1] for p in parts])  # (W, D)
    return check_window(profile, sketch_window(emb, probs, merge([p[2] for p in parts]), profile_config(profile)))


def _probs(rng: np.random.Generator, n: int) -> np.ndarray:
    """Doctest helper: n confident-ish 3-class probability rows."""
    logits = rng.normal(size=(n, 3)) * 2  # (n, 3)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _pixels(rng: np.random.Generator, n: int) -> np.ndarray:
    """Doctest helper: n random 1x4x4 images."""
    return rng.integers(0, 256, (n, 1, 4, 4), dtype=np.uint8)
