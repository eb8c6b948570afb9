"""An import's index built in memory that does not grow with the photos (issue 18).

`IndexBuilder` collects an import's rows a run at a time (`RUN_ROWS` rows, then the run is sorted by
content hash and spilled to a folder on disk), and `finish` merges the sorted runs a block at a time:
an external merge sort, as databases sort what does not fit. The merged index is written to files in
the same folder and mapped, so an import of millions holds a few blocks of rows, not the index.
Duplicate contents (the same sha256 twice) are found as they merge; a content under two labels is
left out. Rows with the same hash keep the order in which the files were listed, so the result is
the one an in-memory stable sort gives.

>>> import hashlib
>>> meta = {"format": "PNG", "width": 2, "height": 1, "mode": "L", "orientation": 1}
>>> with IndexBuilder(run_rows=2) as b:  # two rows a run: "b" twice lands in two runs
...     for name, label in [("b", "dog"), ("a", "cat"), ("b", "dog")]:
...         b.add(hashlib.sha256(name.encode()).digest(), label, meta, f"{label}/{name}.png", {})
...     index, dups, conflicts = b.finish()
...     [index.row(i)["path"] for i in range(len(index))], [paths for _, paths in dups], conflicts  # hash order
(['dog/b.png', 'cat/a.png'], [['dog/b.png', 'dog/b.png']], [])
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from datamoat.data.dataset import drop_pages
from datamoat.data.photo_index import CHUNK, FORMATS, ROW_DTYPE, PhotoIndex, chunks
from datamoat.files import scratch_dir

__all__ = ["IndexBuilder", "MERGE_ROWS", "RUN_ROWS", "fill_column", "tally"]

RUN_ROWS = 1 << 16  # rows sorted in memory at a time (84 bytes each, plus their paths)
MERGE_ROWS = 1 << 16  # rows buffered over all runs while merging


def _keys(rows: np.ndarray) -> np.ndarray:
    """(B,) S32: the hashes as byte strings, which numpy compares and sorts bytewise."""
    return np.ascontiguousarray(rows["sha256"]).view("S32").ravel()


class _Run:
    """One spilled run: rows sorted by hash (``.rows``), its paths' and extras' bytes in that order,
    read front to back; `buf` holds the rows read and not yet merged."""

    def __init__(self, folder: Path, k: int, n: int) -> None:
        self.files = {c: folder / f"run-{k}.{c}" for c in ("rows", "paths", "extras")}
        self.n, self.pos = n, 0  # rows in the run; the next row not yet read into buf
        self.buf = np.zeros(0, ROW_DTYPE)
        self.done = {"paths": 0, "extras": 0}  # bytes of the rows already merged

    def _read(self, a: int, b: int) -> np.ndarray:
        return np.fromfile(self.files["rows"], ROW_DTYPE, count=b - a, offset=a * ROW_DTYPE.itemsize)

    def fill(self, block: int) -> None:
        """Read the next `block` rows, and on while the rows after them share the last one's hash, so
        every row with a hash in `buf` is in `buf` (a group never splits between two merge steps)."""
        if len(self.buf) or self.pos >= self.n:
            return
        self.buf = self._read(self.pos, min(self.n, self.pos + block))
        self.pos += len(self.buf)
        last = _keys(self.buf[-1:])[0]
        while self.pos < self.n:
            peek = self._read(self.pos, min(self.n, self.pos + block))
            same = int(np.searchsorted(_keys(peek), last, side="right"))  # peek is sorted, all >= last
            self.buf = np.concatenate([self.buf, peek[:same]])
            self.pos += same
            if same < len(peek):
                break

    def take(self, bound: bytes | None) -> tuple[np.ndarray, bytes, bytes]:
        """The buffered rows with a hash at most `bound` (all with None), and their bytes."""
        m = len(self.buf) if bound is None else int(np.searchsorted(_keys(self.buf), bound, side="right"))
        rows, self.buf = self.buf[:m], self.buf[m:]
        out = []
        for c, col in (("paths", "path_end"), ("extras", "extra_end")):
            end = int(rows[col][-1]) if m else self.done[c]
            with open(self.files[c], "rb") as f:
                f.seek(self.done[c])
                out.append(f.read(end - self.done[c]))
            self.done[c] = end
        return rows, out[0], out[1]


class IndexBuilder:
    """An import's rows, sorted and de-duplicated by content hash in bounded memory (see the module).
    A context manager: its folder (a `scratch_dir` under `folder`, the system's temp folder by
    default) goes on exit, so use the index `finish` returns, which is mapped from it, inside the
    ``with``. The folder of an import that was killed is removed by the workspace's next open."""

    def __init__(
        self, folder: str | Path | None = None, run_rows: int = RUN_ROWS, merge_rows: int = MERGE_ROWS
    ) -> None:
        self._stack = contextlib.ExitStack()
        self.dir = self._stack.enter_context(scratch_dir(None if folder is None else Path(folder), "index"))
        self.run_rows, self.merge_rows, self.runs = run_rows, merge_rows, list[_Run]()
        self.cur, self.n = np.zeros(run_rows, ROW_DTYPE), 0
        self.paths, self.extras = bytearray(), bytearray()
        self.labels: dict[str, int] = {}  # first-seen codes, sorted into class codes by `finish`
        self.modes: dict[str, int] = {}

    def __enter__(self) -> IndexBuilder:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def add(self, sha256: bytes, label: str | None, meta: dict[str, Any], path: str, extra: dict[str, Any]) -> None:
        """One accepted file: its raw 32-byte sha256, label, `probe_photo` metadata, path and extras."""
        self.paths += path.encode()
        self.extras += json.dumps(extra, sort_keys=True).encode() if extra else b""
        code = -1 if label is None else self.labels.setdefault(label, len(self.labels))
        mode = self.modes.setdefault(meta["mode"], len(self.modes))
        self.cur[self.n] = (
            np.frombuffer(sha256, np.uint8), code, 0, FORMATS.index(meta["format"]), meta["orientation"],
            mode, 0, meta["width"], meta["height"], 0, 0, len(self.paths), len(self.extras),
        )  # fmt: skip
        self.n += 1
        if self.n == self.run_rows:
            self._spill()

    def _spill(self) -> None:
        table = self.cur[: self.n]  # (n,) in listing order; ends relative to this run
        order = np.argsort(_keys(table), kind="stable")  # (n,) equal hashes keep their listing order
        out = table[order]
        paths = _gather(self.paths, table["path_end"], order, out, "path_end")
        extras = _gather(self.extras, table["extra_end"], order, out, "extra_end")
        run = _Run(self.dir, len(self.runs), self.n)
        out.tofile(run.files["rows"])
        paths.tofile(run.files["paths"])
        extras.tofile(run.files["extras"])
        self.runs.append(run)
        self.n, self.paths, self.extras = 0, bytearray(), bytearray()

    def finish(self) -> tuple[PhotoIndex, list[tuple[str, list[str]]], list[tuple[list[str], list[str]]]]:
        """The index of the distinct contents in hash order (each the first file listed with it), the
        hex sha256 and paths of each duplicated content, and (paths, labels) of each content found
        under two labels, which is left out. Shard, offset, size and split are left for the caller."""
        if self.n or not self.runs:
            self._spill()
        self.cur = np.zeros(0, ROW_DTYPE)
        names = {c: s for s, c in self.labels.items()}
        dups: list[tuple[str, list[str]]] = []
        conflicts: list[tuple[list[str], list[str]]] = []
        files = {c: self.dir / f"index.{c}" for c in ("rows", "paths", "extras")}
        kept, ends, used = 0, {"paths": 0, "extras": 0}, set[int]()
        with open(files["rows"], "wb") as fr, open(files["paths"], "wb") as fp, open(files["extras"], "wb") as fx:
            for table, paths, extras in self._merged():
                keep, d, c = _dedup(table, paths, names)
                dups += d
                conflicts += c
                out = table[keep]
                for col, data, f in (("path_end", paths, fp), ("extra_end", extras, fx)):
                    sel = _gather(data, table[col], keep, out, col)
                    key = "paths" if col == "path_end" else "extras"
                    out[col] += ends[key]
                    ends[key] += len(sel)
                    f.write(sel.tobytes())
                used.update(int(x) for x in np.unique(out["label"]))
                fr.write(out.tobytes())
                kept += len(out)
        classes = sorted(names[c] for c in used if c >= 0)
        lut = np.full(len(names) + 1, -1, np.int32)  # code + 1 -> class code (-1 stays unlabelled)
        lut[[self.labels[c] + 1 for c in classes]] = np.arange(len(classes))
        modes = sorted(self.modes)
        mode_lut = np.asarray([modes.index(m) for m in self.modes], np.int8)
        table = _mapped(files["rows"], ROW_DTYPE, kept, "r+")
        for i, part in chunks(table):
            part["label"] = lut[part["label"] + 1]
            part["mode"] = mode_lut[part["mode"]]
            table[i : i + len(part)] = part
            drop_pages(table)
        paths_col = _mapped(files["paths"], np.dtype(np.uint8), ends["paths"], "r")
        extras_col = _mapped(files["extras"], np.dtype(np.uint8), ends["extras"], "r")
        return PhotoIndex(table, paths_col, extras_col, classes, modes), dups, conflicts

    def _merged(self) -> Iterator[tuple[np.ndarray, bytes, bytes]]:
        """Blocks of rows from all runs in hash order, equal hashes in listing order, with their path
        and extra bytes (ends relative to the block). A group of equal hashes is never split."""
        block = max(1, self.merge_rows // len(self.runs))  # rows read from a run at a time
        while True:
            for r in self.runs:
                r.fill(block)
            live = [r for r in self.runs if len(r.buf)]
            if not live:
                return
            # Every row at most the smallest last-buffered hash of a run with rows left is in a buffer.
            unread = [_keys(r.buf[-1:])[0] for r in live if r.pos < r.n]
            bound = min(unread) if unread else None
            yield _concat([r.take(bound) for r in live])


def _concat(parts: list[tuple[np.ndarray, bytes, bytes]]) -> tuple[np.ndarray, bytes, bytes]:
    """The runs' rows in hash order (stable, so run order, which is listing order, breaks ties), with
    ends rebased onto the concatenated bytes."""
    rows, pb, xb = [], [], []
    off = {"path_end": 0, "extra_end": 0}
    for r, p, x in parts:
        if not len(r):
            continue
        r = r.copy()
        for col, data in (("path_end", p), ("extra_end", x)):
            r[col] += off[col] - (int(r[col][-1]) - len(data))  # run ends -> ends in the concatenation
            off[col] += len(data)
        rows.append(r)
        pb.append(p)
        xb.append(x)
    table = np.concatenate(rows)  # (B,) each run's rows sorted, the runs one after another
    order = np.argsort(_keys(table), kind="stable")
    out = table[order]
    paths = _gather(bytearray(b"".join(pb)), table["path_end"], order, out, "path_end")
    extras = _gather(bytearray(b"".join(xb)), table["extra_end"], order, out, "extra_end")
    return out, paths.tobytes(), extras.tobytes()


def _dedup(
    table: np.ndarray, paths: bytes, names: dict[int, str]
) -> tuple[np.ndarray, list[tuple[str, list[str]]], list[tuple[list[str], list[str]]]]:
    """Rows of a hash-sorted block to keep (the first of each content not under two labels), the
    duplicated contents with their paths, and the contents under two labels with theirs."""
    first = np.ones(len(table), bool)  # (B,) the first row of each content
    first[1:] = (table["sha256"][1:] != table["sha256"][:-1]).any(axis=1)
    starts = np.flatnonzero(first)  # (G,)
    sizes = np.diff(np.append(starts, len(table)))  # (G,)
    lab = table["label"]
    conflict = np.minimum.reduceat(lab, starts) != np.maximum.reduceat(lab, starts)  # (G,)
    ends = table["path_end"]

    def paths_of(g: int) -> list[str]:
        at = range(int(starts[g]), int(starts[g] + sizes[g]))
        return [paths[(int(ends[r - 1]) if r else 0) : int(ends[r])].decode() for r in at]

    dups = [
        (bytes(table["sha256"][starts[g]]).hex(), paths_of(int(g))) for g in np.flatnonzero((sizes > 1) & ~conflict)
    ]
    conflicts = [
        (paths_of(int(g)), sorted({str(names.get(int(c))) for c in lab[starts[g] : starts[g] + sizes[g]]}))
        for g in np.flatnonzero(conflict)
    ]
    return starts[~conflict], dups, conflicts


def _gather(data: bytearray | bytes, ends: np.ndarray, src: np.ndarray, table: np.ndarray, field: str) -> np.ndarray:
    """The byte column in a new row order: rows `src` of (data, ends), chunk by chunk; sets the new
    ends in `table[field]`. Returns (M,) uint8."""
    buf = np.frombuffer(data, np.uint8)  # (M,) a view of the collected bytes
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)  # (N,)
    lens = (ends - starts)[src]  # (K,)
    table[field] = np.cumsum(lens)
    out = np.empty(int(table[field][-1]) if len(table) else 0, np.uint8)
    for i in range(0, len(src), CHUNK):
        ln, st = lens[i : i + CHUNK], starts[src[i : i + CHUNK]]  # (B,)
        at = np.cumsum(ln) - ln  # (B,) each row's start in this chunk's output
        idx = np.arange(int(ln.sum())) - np.repeat(at, ln) + np.repeat(st, ln)  # (bytes,)
        o = int(table[field][i] - ln[0])  # where this chunk's first row starts in `out`
        out[o : o + len(idx)] = buf[idx]
    return out


def _mapped(path: Path, dtype: np.dtype, n: int, mode: Any) -> np.ndarray:
    """The file as an (n,) array mapped from disk (numpy cannot map an empty file)."""
    return np.memmap(path, dtype, mode, shape=(n,)) if n else np.zeros(0, dtype)


def fill_column(table: np.ndarray, name: str, values: np.ndarray) -> None:
    """``table[name] = values`` a chunk at a time on a mapped table, each chunk's pages handed back
    after it is written (they stay in the file), so the writing process does not hold the table."""
    for i in range(0, len(table), CHUNK):
        table[name][i : i + CHUNK] = values[i : i + CHUNK]
        drop_pages(table)


def tally(table: np.ndarray, n_classes: int) -> tuple[np.ndarray, int, int]:
    """One pass over a (maybe mapped) index table: the (split, label + 1) counts (3, C + 1), the sum
    of the sizes and the number of unlabelled rows.

    >>> t = np.zeros(3, ROW_DTYPE); t["label"] = [0, -1, 0]; t["split"] = [0, 0, 2]; t["size"] = 5
    >>> per, size, unlabelled = tally(t, 1)
    >>> per.tolist(), size, unlabelled
    ([[1, 1], [0, 0], [0, 1]], 15, 1)
    """
    per = np.zeros((3, n_classes + 1), np.int64)  # (split, label + 1)
    size = unlabelled = 0
    for _, part in chunks(table):
        np.add.at(per, (part["split"], part["label"] + 1), 1)
        size += int(part["size"].sum())
        unlabelled += int((part["label"] < 0).sum())
    return per, size, unlabelled
