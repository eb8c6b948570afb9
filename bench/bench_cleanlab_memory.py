"""How much memory does `data issues`' cleanlab step take per sample, and would cleanlab's batched
variant keep it flat? Peak RSS above the inputs of `cleanlab.filter.find_label_issues` (what
`datamoat.train.cleaning.find_issues` calls, with its settings) against
`cleanlab.experimental.label_issues_batched.find_label_issues_batched` reading the probabilities
from a memory-mapped .npy, at DM_CL_SMALL samples (100,000) and ten times as many, 10 classes.

The probabilities are SYNTHETIC: softmax of Gaussian logits with the given label's raised by 3 and
10% of the labels then replaced at random, so that there are issues to find. Each variant runs in a
fresh process (`ru_maxrss` is a process's peak). The batched variant only "closely approximates"
the other (cleanlab's words); the agreement column is the Jaccard index of the two flagged sets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SMALL = int(os.environ.get("DM_CL_SMALL", "100000"))
K = 10

CHILD = r"""
import json, resource, sys
import numpy as np
from cleanlab.filter import find_label_issues
from cleanlab.experimental.label_issues_batched import find_label_issues_batched

variant, folder = sys.argv[1], sys.argv[2]
labels = np.load(folder + "/labels.npy")
probs = np.load(folder + "/probs.npy", mmap_mode="r" if variant == "batched" else None)
if variant != "batched":
    probs = np.asarray(probs)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if variant == "batched":
    found = find_label_issues_batched(labels, probs, batch_size=10000, n_jobs=1, verbose=False)
else:
    found = find_label_issues(
        labels, probs, filter_by="low_self_confidence", return_indices_ranked_by="self_confidence", n_jobs=1
    )
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
np.save(folder + "/found-" + variant + ".npy", np.asarray(found))
print(json.dumps({"base_mib": base, "peak_mib": peak, "flagged": int(len(found))}))
"""


def make(folder: Path, n: int) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    labels = rng.integers(0, K, n)  # (n,)
    logits = rng.normal(size=(n, K)).astype(np.float32)  # (n, K)
    logits[np.arange(n), labels] += 3
    probs = np.exp(logits)
    probs /= probs.sum(1, keepdims=True)
    flip = rng.random(n) < 0.1
    labels[flip] = rng.integers(0, K, int(flip.sum()))
    np.save(folder / "labels.npy", labels)
    np.save(folder / "probs.npy", probs.astype(np.float32))


def main() -> dict:
    import numpy as np

    rows = []
    for n in (SMALL, 10 * SMALL):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            make(folder, n)
            got = {}
            for variant in ("find_label_issues", "batched"):
                r = subprocess.run(
                    [sys.executable, "-c", CHILD, variant, str(folder)], check=True, capture_output=True, text=True
                )
                got[variant] = json.loads(r.stdout.strip().splitlines()[-1])
            a = set(np.load(folder / "found-find_label_issues.npy").tolist())
            b = set(np.load(folder / "found-batched.npy").tolist())
            for variant, out in got.items():
                rows.append(
                    {
                        "samples": n,
                        "variant": variant,
                        "inputs_mib": out["base_mib"],
                        "peak_mib": out["peak_mib"],
                        "above_inputs_mib": out["peak_mib"] - out["base_mib"],
                        "flagged": out["flagged"],
                        "agreement": len(a & b) / max(1, len(a | b)),
                    }
                )
    growth = {
        v: next(r for r in rows if r["samples"] == 10 * SMALL and r["variant"] == v)["above_inputs_mib"]
        - next(r for r in rows if r["samples"] == SMALL and r["variant"] == v)["above_inputs_mib"]
        for v in ("find_label_issues", "batched")
    }
    return {
        "title": f"cleanlab's label-issue step at {SMALL:,} and {10 * SMALL:,} SYNTHETIC samples, {K} classes",
        "columns": list(rows[0]),
        "rows": rows,
        "summary": {"growth_mib": growth},
        "notes": [
            f"From {SMALL:,} to {10 * SMALL:,} samples the memory above the inputs grew by "
            f"{growth['find_label_issues']:.0f} MiB with find_label_issues (what `data issues` runs) and by "
            f"{growth['batched']:.0f} MiB with find_label_issues_batched on a memory-mapped file.",
            "inputs_mib is the process's peak after loading the labels and (for find_label_issues) the probabilities.",
        ],
    }
