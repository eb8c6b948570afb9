"""Drift detection and label-free accuracy on the synthetic photo benchmark, with `DriftConfig`'s defaults.

The model is the one `make demo-photos` trains (`run_photo_demo`: PHOTO_ARCH on PHOTO_SYNTH with
PHOTO_TRAIN), exported to ONNX and run through the inference core with its penultimate layer exposed,
as bench_drift.py runs the Fashion-MNIST demo's. The reference profile is its validation split. The
demo's test split is too small for hundreds of windows, so the streams come from a separate set of
synthetic photos: the demo's generator settings with another seed, drawn from Fashion-MNIST's official
test items (the demo's photos draw on its training items), imported and rendered through the model's
own photo transform, as the demo renders its photos. bench_drift.py's scenarios act on the rendered
uint8 pixels (3, 32, 32): brightness and contrast, noise and blur, a prior shift with Bag at half the
traffic, and an unseen class (scikit-learn's digits upscaled to the input size, in three channels).

The defaults were not tuned on photos: every row is one the settings were not chosen on.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_drift import BAG, CONFIG, MAX_SAMPLES, NULL_WINDOWS, STREAMS, measure, scenarios, upscaled_digits

from datamoat.compress.export import export
from datamoat.data.dataset import Dataset, load_dataset
from datamoat.data.photo_render import render_photos, transform_of
from datamoat.data.photos import import_photos
from datamoat.data.synth import make_photos
from datamoat.demo import PHOTO_ARCH, PHOTO_SYNTH, PHOTO_TRAIN, run_photo_demo
from datamoat.evaluate.drift import reference_profile
from datamoat.inference.engine import open_version
from datamoat.models import Model, load_model
from datamoat.workspace import Workspace

STREAM_SEED = 1
# 800 photos a class from Fashion-MNIST's test items: test_fraction must stay below 1, so 808 a class
# leave 8 train photos a class (drawn from training items), which are not used.
STREAM_PER_CLASS = 808
STREAM_TEST_FRACTION = 0.99


def demo_model(ws: Workspace) -> tuple[Model, Dataset, dict[str, Any]]:
    """The photo demo, run as `make demo-photos` runs it: its model, its rendered dataset, its result."""
    out = run_photo_demo(ws, progress=False)
    return load_model(ws, out["model_id"]), load_dataset(ws, out["dataset_id"]), out


def stream_pool(ws: Workspace, model: Model) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The stream photos at the model's input: pixels (N, 3, H, W) uint8, labels (N,), how they were made."""
    folder = ws.path_for("stream-photos")
    cfg = PHOTO_SYNTH.replace(n_per_class=STREAM_PER_CLASS, test_fraction=STREAM_TEST_FRACTION, seed=STREAM_SEED)
    made = make_photos(folder, cfg.replace(workers=0), overwrite=True)
    photos = import_photos(ws, folder / "test", name="stream-photos")  # every split of it feeds the streams
    rendered = render_photos(ws, photos, transform_of(model.preprocess))
    assert rendered.classes == model.classes, (rendered.classes, model.classes)
    info = {"photos": len(rendered.y), "seconds_to_make": made["seconds"], "synth": cfg.to_dict()}
    return np.asarray(rendered.x), np.asarray(rendered.y), info


def main() -> dict[str, Any]:
    t_start = time.perf_counter()
    ws = Workspace.init(tempfile.mkdtemp(prefix="dm-bench-drift-photo-"))
    model, data, demo = demo_model(ws)
    t_demo = time.perf_counter() - t_start
    x, y, info = stream_pool(ws, model)
    onnx = export(model, Path(ws.root) / "photo-demo.onnx").read_bytes()
    meta = {"version_id": "photo-demo", "name": "photo-demo", "kind": "fp32", "classes": model.classes}
    version = open_version(onnx, {**meta, "preprocess": model.preprocess}, embeddings=True)
    profile = reference_profile(version, data, config=CONFIG)
    # A diagnostic beside it: the threshold fitted on the demo's test split, which no checkpoint was chosen on.
    held_out = reference_profile(version, data, split="test", config=CONFIG)
    size = x.shape[-1]
    draws = scenarios(x, y, digits=upscaled_digits(size, 3), heavy=BAG, heavy_name="Bag")
    t_measure = time.perf_counter()
    rows, summary = measure(version, profile, draws, atc_also={"the test split": held_out})
    summary.update(demo_test_accuracy=demo["test_accuracy"], stream_photos=info["photos"])
    summary.update(seconds_demo=t_demo, seconds_measure=time.perf_counter() - t_measure)
    summary["seconds"] = time.perf_counter() - t_start
    return {
        "title": "Drift detection and label-free accuracy on synthetic photo streams (photo demo model, "
        "DriftConfig defaults)",
        "columns": ["scenario", "measured", "target", "met"],
        "rows": rows,
        "summary": summary,
        "notes": [
            f"Model: the photo demo's ({PHOTO_ARCH} at {size}x{size}, {PHOTO_TRAIN.epochs} epochs from scratch on "
            f"{PHOTO_SYNTH.n_per_class * 10:,} synthetic photos), validation accuracy {100 * profile['accuracy']:.1f}% "
            f"on {profile['n']} photos, test accuracy {100 * demo['test_accuracy']:.1f}%; the profile is its "
            f"validation split. Streams: {info['photos']:,} other synthetic photos (the demo's generator settings, "
            f"seed {STREAM_SEED}, Fashion-MNIST's test items), rendered through the model's photo transform; "
            "the corruptions act on the rendered pixels, the unseen class is scikit-learn's digits upscaled to "
            f"{size}x{size} in three channels.",
            f"DriftConfig defaults, as bench_drift.py: alpha {CONFIG.alpha}, {CONFIG.permutations} permutations, "
            f"sketch of {CONFIG.sketch_dim} dimensions from at most {CONFIG.reference_sketches} reference "
            f"embeddings (here the {profile['n']} validation photos); not tuned on photos. "
            f"{NULL_WINDOWS} null windows; delays over {STREAMS} independent streams per row, capped at "
            f"{MAX_SAMPLES} samples.",
            "The ATC interval covers only a window's sampling error; the errors above are the method's bias and "
            f"the threshold's own error: it is fitted on {profile['n']} validation photos, the split training picked "
            "its best epoch on. Beside each estimate, as a diagnostic only, the same samples with the threshold "
            f"fitted on the demo's test split ({held_out['n']} photos, accuracy {100 * held_out['accuracy']:.1f}%, "
            "no checkpoint chosen on it).",
            f"Time: the demo (synthesis, import, rendering, training, registration) {t_demo:.0f} s, the streams' "
            f"photos made in {info['seconds_to_make']:.0f} s, the measurements "
            f"{summary['seconds_measure']:.0f} s.",
        ],
    }
