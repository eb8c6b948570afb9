"""Drift detection and label-free accuracy on Fashion-MNIST streams, with `DriftConfig`'s defaults.

The model is the one `make demo` trains (DEMO_ARCH with DEMO_TRAIN), exported to ONNX and run
through the inference core with its penultimate layer exposed, as a server runs it. The reference
profile is its validation split; production streams are drawn from the test split, which the
profile never saw:

- no drift: windows drawn at random from the test split, to count false alarms;
- brightness and contrast: ``0.75 * x + 25``;
- Gaussian noise, sd 20 grey levels, and a 3x3 box blur: two other corruptions;
- prior shift: one class (Bag) is half the traffic, the rest as before;
- unseen class: a quarter of the traffic is scikit-learn's digits, upscaled to 28x28.

The defaults were set before this benchmark first ran and were not tuned on it: every scenario is
one the settings were not chosen on. Detection delay is the number of post-shift samples until the
first alarming window, over independent streams. The ATC estimate is scored on 5,000 shifted test
samples per shift; its truth under the unseen class counts every digit as an error.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from datamoat.compress.export import export
from datamoat.data import SPLITS, import_default
from datamoat.demo import DEMO_ARCH, DEMO_TRAIN
from datamoat.evaluate.drift import DriftConfig, check_window, estimate_accuracy, reference_profile, summarize
from datamoat.inference.engine import open_version
from datamoat.models import new_model
from datamoat.train.loop import train
from datamoat.workspace import Workspace

CONFIG = DriftConfig()
WINDOWS = (100, 250, 500)
NULL_WINDOWS = 300
STREAMS = 20
MAX_SAMPLES = 5000
BAG = 8  # Fashion-MNIST's "Bag"


def _box_blur(x: np.ndarray) -> np.ndarray:
    p = np.pad(x.astype(np.float32), ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")  # (N, C, H+2, W+2)
    h, w = x.shape[2:]
    return sum(p[:, :, i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9  # type: ignore[return-value]


def upscaled_digits(size: int = 28, channels: int = 1) -> np.ndarray:
    """scikit-learn's digits, white on black, upscaled to size x size and repeated over `channels`."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits().images  # (1797, 8, 8) in 0..16
    up = [
        np.asarray(Image.fromarray((im * 255 / 16).astype(np.uint8)).resize((size, size), Image.BILINEAR)) for im in d
    ]
    return np.repeat(np.stack(up)[:, None], channels, axis=1)  # (1797, channels, size, size) uint8


def scenarios(
    x: np.ndarray, y: np.ndarray, *, digits: np.ndarray | None = None, heavy: int = BAG, heavy_name: str = "Bag"
) -> dict[str, Any]:
    """name -> draw(rng, n) giving (pixels (n, C, H, W) uint8, labels (n,), -1 for an unseen class).

    `x` (N, C, H, W) uint8 and `y` (N,) are the pool streams are drawn from; `digits` (M, C, H, W) the
    unseen class (scikit-learn's digits at 28x28 by default); `heavy` the class at half the traffic."""
    digits = upscaled_digits() if digits is None else digits
    clip = lambda a: np.clip(np.rint(a), 0, 255).astype(np.uint8)  # noqa: E731

    def corrupt(f: Any) -> Any:
        def draw(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
            i = rng.choice(len(x), n, replace=False)
            return f(x[i], rng), y[i]

        return draw

    def prior(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        bag, rest = np.flatnonzero(y == heavy), np.flatnonzero(y != heavy)
        i = np.concatenate([rng.choice(bag, n // 2), rng.choice(rest, n - n // 2, replace=False)])
        i = rng.permutation(i)
        return x[i], y[i]

    def unseen(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        k = n // 4
        i = rng.choice(len(x), n - k, replace=False)
        xs = np.concatenate([x[i], digits[rng.choice(len(digits), k)]])
        ys = np.concatenate([y[i], np.full(k, -1)])
        order = rng.permutation(n)
        return xs[order], ys[order]

    return {
        "no drift": corrupt(lambda a, rng: a),
        "brightness and contrast": corrupt(lambda a, rng: clip(0.75 * a.astype(np.float32) + 25)),
        "Gaussian noise (sd 20)": corrupt(lambda a, rng: clip(a + rng.normal(0, 20, a.shape))),
        "box blur 3x3": corrupt(lambda a, rng: clip(_box_blur(a))),
        f"prior shift ({heavy_name} at 50%)": prior,
        "unseen class (25% digits)": unseen,
    }


def measure(
    version: Any,
    profile: dict[str, Any],
    draws: dict[str, Any],
    *,
    null_windows: int = NULL_WINDOWS,
    atc_also: dict[str, dict[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows and summary of the three measurements on `draws` (from `scenarios`): the false-alarm rate
    over `null_windows` windows of 250 without drift, the detection delay per shift and window size,
    and the ATC estimate's error on 5,000 samples of each scenario. `atc_also` (label -> profile): other
    ATC thresholds reported beside the profile's on the same samples (a diagnostic; `met` is the profile's)."""

    def window(name: str, rng: np.random.Generator, n: int) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
        xs, ys = draws[name](rng, n)
        probs, emb = version.run(xs)
        return summarize(emb, probs, xs, CONFIG), probs, ys

    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"alpha": CONFIG.alpha, "reference_accuracy": profile["accuracy"]}
    # False alarms: windows without drift, each drawn afresh from the streams' pool (the test split).
    rng = np.random.default_rng(1)
    fired = {n: [check_window(profile, window("no drift", rng, n)[0]) for _ in range(null_windows)] for n in (250,)}
    for n, checks in fired.items():
        rate = float(np.mean([c["alarm"] for c in checks]))
        per_test = {t: float(np.mean([t in c["fired"] for c in checks])) for t in checks[0]["p_values"]}
        summary[f"false_alarm_rate_{n}"] = rate
        rows.append(
            {
                "scenario": f"no drift: false-alarm rate over {null_windows} windows of {n}",
                "measured": f"{rate:.3f} ({', '.join(f'{t} {v:.3f}' for t, v in per_test.items())})",
                "target": f"<= {CONFIG.alpha + 0.01:.2f}",
                "met": "yes" if rate <= CONFIG.alpha + 0.01 else "NO",
            }
        )
    # Detection delay: post-shift samples until the first alarm, per shift and window size.
    for name in [s for s in draws if s != "no drift"]:
        for n in WINDOWS:
            delays = []
            for s in range(STREAMS):
                rng = np.random.default_rng([2, s, n])
                seen = 0
                while seen < MAX_SAMPLES:
                    seen += n
                    if check_window(profile, window(name, rng, n)[0])["alarm"]:
                        break
                else:
                    seen = -1  # not detected within MAX_SAMPLES
                delays.append(seen)
            missed = sum(d < 0 for d in delays)
            worst = max(delays) if not missed else f"> {MAX_SAMPLES}"
            rows.append(
                {
                    "scenario": f"{name}: delay, windows of {n}",
                    "measured": f"median {int(np.median([d if d > 0 else MAX_SAMPLES for d in delays]))}, worst {worst}"
                    + (f", {missed}/{STREAMS} streams undetected" if missed else ""),
                    "target": "<= 2000 samples",
                    "met": "yes" if not missed and max(delays) <= 2000 else "NO",
                }
            )
            summary[f"delay_{name}_{n}"] = delays
    # ATC: the label-free estimate against the truth on 5,000 samples of each stream.
    for name in draws:
        rng = np.random.default_rng(3)
        win, probs, ys = window(name, rng, 5000)
        truth = float((probs.argmax(1) == ys).mean())
        est = check_window(profile, win)["estimate"]
        err = abs(est["estimate"] - truth)
        same_classes = not name.startswith("unseen")
        measured = f"{100 * est['estimate']:.1f}% vs true {100 * truth:.1f}% (error {100 * err:.1f} pts)"
        for label, other in (atc_also or {}).items():
            alt = estimate_accuracy(other, win["confidence"])["estimate"]
            measured += f"; threshold from {label}: {100 * alt:.1f}% (error {100 * abs(alt - truth):.1f} pts)"
            summary[f"atc_error_{name}_{label}"] = abs(alt - truth)
        rows.append(
            {
                "scenario": f"{name}: ATC estimate",
                "measured": measured,
                "target": "error <= 2 pts" if same_classes else "reported (expected worse)",
                "met": ("yes" if err <= 0.02 else "NO") if same_classes else "-",
            }
        )
        summary[f"atc_error_{name}"] = err
    return rows, summary


def main() -> dict[str, Any]:
    t_start = time.perf_counter()
    ws = Workspace.init(tempfile.mkdtemp(prefix="dm-bench-drift-"))
    data = import_default(ws)
    model = train(new_model(DEMO_ARCH, data, seed=DEMO_TRAIN.seed), data, DEMO_TRAIN, progress=False)
    onnx = export(model, Path(ws.root) / "demo.onnx").read_bytes()
    meta = {"version_id": "demo", "name": "demo", "kind": "fp32", "classes": model.classes}
    version = open_version(onnx, {**meta, "preprocess": model.preprocess}, embeddings=True)
    profile = reference_profile(version, data, config=CONFIG)
    test = data.split == SPLITS["test"]
    x_test, y_test = np.asarray(data.x[test]), np.asarray(data.y[test])
    rows, summary = measure(version, profile, scenarios(x_test, y_test))
    summary["seconds"] = time.perf_counter() - t_start
    return {
        "title": "Drift detection and label-free accuracy on Fashion-MNIST streams (demo model, DriftConfig defaults)",
        "columns": ["scenario", "measured", "target", "met"],
        "rows": rows,
        "summary": summary,
        "notes": [
            f"Model: {DEMO_ARCH} trained with the demo's recipe, validation accuracy "
            f"{100 * profile['accuracy']:.1f}%; the profile is its validation split, streams come from its test split.",
            f"DriftConfig defaults: alpha {CONFIG.alpha}, {CONFIG.permutations} permutations, sketch of "
            f"{CONFIG.sketch_dim} dimensions from {CONFIG.reference_sketches} reference embeddings; a window alarms "
            f"when any of MMD, KS (confidence, brightness, contrast) or chi-square (class mix) has p < alpha/5. "
            f"Delays over {STREAMS} "
            f"independent streams per row, capped at {MAX_SAMPLES} samples.",
            "The ATC interval covers only a window's sampling error; the errors above are the method's bias.",
        ],
    }
