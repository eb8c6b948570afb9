"""Run benchmarks and write bench/results/<name>.json and <name>.md.

    python bench/run.py            # every benchmark
    python bench/run.py train      # just bench/bench_train.py
    DATAMOAT_BENCH_TAG=seed1 python bench/run.py labelnoise   # writes labelnoise-seed1.*

Each bench/bench_<name>.py defines `main() -> dict` with keys `title`,
`columns`, `rows` (list of dicts) and optionally `notes` (list of str),
`summary` (dict) and `tables` (list of {title, columns, rows}) shown after
the first. Every number is measured in this run on this machine.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ORDER = [
    "train",
    "compression",
    "serving",
    "selective",
    "labelnoise",
    "poisoning",
    "edge",
    "synth",
    "photo_import",
    "int8_photo",
    "transfer",
    "photo_pipeline",
    "photo_fit",
    "ddp",
    "drift",
    "drift_photo",
    "guarantee",
    "releases",
    "shadow_cost",
    "labels",
]


def machine() -> dict:
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
    }


def to_markdown(name: str, out: dict, env: str = "") -> str:
    cols = out["columns"]
    lines = [
        f"# {out['title']}",
        "",
        f"`{env}python bench/run.py {name}` on {out['machine']['cores']} cores, "
        f"torch {out['machine']['torch']}, {out['machine']['date']}",
        "",
    ]
    lines += _table(cols, out["rows"])
    # A benchmark that measures two things can add more tables, each with its own title and columns.
    for t in out.get("tables", []):
        lines += ["", f"## {t['title']}", "", *_table(t["columns"], t["rows"])]
    for n in out.get("notes", []):
        lines += ["", n]
    return "\n".join(lines) + "\n"


def _table(cols: list[str], rows: list[dict]) -> list[str]:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str]) -> None:
    sys.path.insert(0, str(HERE))
    names = argv or [n for n in ORDER if (HERE / f"bench_{n}.py").exists()]
    RESULTS.mkdir(exist_ok=True)
    # A tag keeps a variant run (other seeds, other settings) beside the default one instead of over it.
    tag = os.environ.get("DATAMOAT_BENCH_TAG", "")
    settings = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith(("DM_", "DATAMOAT_BENCH_")))
    for name in names:
        t0 = time.perf_counter()
        out = importlib.import_module(f"bench_{name}").main()
        out["machine"] = machine()
        out["seconds"] = round(time.perf_counter() - t0, 1)
        out["settings"] = settings
        stem = f"{name}-{tag}" if tag else name
        (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
        md = to_markdown(name, out, settings + " " if settings else "")
        (RESULTS / f"{stem}.md").write_text(md)
        print(md)


if __name__ == "__main__":
    main(sys.argv[1:])
