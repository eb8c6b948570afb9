"""Where an import's files come from, listed lazily (issue 17, 18): a folder of class subfolders (or
an unlabeled folder), or a CSV / JSON-lines manifest read a row at a time, so a listing of millions
holds one folder's names, never an object a file.

>>> import tempfile
>>> root = Path(tempfile.mkdtemp()); (root / "cat").mkdir()
>>> _ = (root / "cat" / "a.png").write_bytes(b"x")
>>> items, stray = list_folder(root)
>>> [(i.rel, i.label) for i in items], stray
([('cat/a.png', 'cat')], [])
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datamoat.errors import BadInput

__all__ = ["Item", "list_folder", "list_manifest"]


@dataclasses.dataclass(frozen=True)
class Item:
    """One file to import."""

    path: Path  # where to read it
    rel: str  # how the report and the index name it (relative to the source)
    label: str | None
    extra: dict[str, Any]


def visible_names(folder: Path) -> list[str]:
    """The names in `folder` not starting with a dot, sorted."""
    return sorted(n for n in os.listdir(folder) if not n.startswith("."))  # names: no Path a file


def list_folder(root: Path) -> tuple[Iterator[Item], list[str]]:
    """Class subfolders (labels = their names), or, with none, an unlabeled folder; and stray files.
    The items come lazily, one folder listed at a time, so a listing holds names, not an object a file."""
    names = visible_names(root)
    dirs = [n for n in names if (root / n).is_dir()]
    if not dirs:
        return (Item(root / n, n, None, {}) for n in names if (root / n).is_file()), []
    items = (
        Item(root / d / f, f"{d}/{f}", d, {}) for d in dirs for f in visible_names(root / d) if (root / d / f).is_file()
    )
    return items, [n for n in names if (root / n).is_file()]


def list_manifest(path: Path) -> Iterator[Item]:
    """Rows of a CSV (with a header) or JSON-lines manifest, read lazily (a manifest of millions is
    never held); paths are relative to the manifest."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        if path.suffix.lower() == ".csv":
            reader = csv.DictReader(f)
            rows: Iterator[tuple[int, Any]] = ((reader.line_num, r) for r in reader)
        else:
            rows = ((i, _json_line(path, i, line)) for i, line in enumerate(f, 1) if line.strip())
        for lineno, r in rows:
            if not isinstance(r, dict) or not isinstance(r.get("path"), str) or not r["path"] or None in r:
                raise BadInput(f"{path} line {lineno}: every row needs a 'path' (and no cells past the header)")
            label = r.get("label")
            extra = {k: v for k, v in r.items() if k not in ("path", "label")}
            yield Item(path.parent / r["path"], r["path"], None if label in (None, "") else str(label), extra)


def _json_line(path: Path, i: int, line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise BadInput(f"{path} line {i} is not JSON ({e.msg}): one JSON object per line") from None
