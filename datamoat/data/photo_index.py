"""A photo version's index and a rendered dataset's shard references, held as columns (issue 18).

A photo version can hold millions of photos, so its index is never a Python object per photo: it is
one numpy structured array (`ROW_DTYPE`, 84 bytes a photo: the 32-byte sha256, label, split and
shard as small integers, offset, size, displayed width and height) plus two variable-length byte
columns (each photo's relative path, and its manifest's extra columns as JSON), each stored as a
``.npy`` blob in the workspace's object store. A stage maps the blobs and reads them by row range
(`chunks`), so the pages it read leave its resident memory again (`read_rows`), and looks one photo
up by binary search on the sorted hashes (`PhotoIndex.find`). A rendered dataset's references are
the same idea in 52 bytes a sample (`REF_DTYPE`), shards named by their number in a short list.

>>> rows = [{"sha256": "ab" * 32, "label": "cat", "split": "test", "shard": "cd" * 32, "offset": 512,
...          "size": 9, "width": 3, "height": 2, "format": "PNG", "mode": "L", "orientation": 1,
...          "path": "cat/a.png", "extra": {}}]
>>> index = PhotoIndex.from_rows(rows, ["cat"], ["cd" * 32])
>>> index.row(0) == rows[0], index.find("ab" * 32), index.find("00" * 32)
(True, 0, None)
>>> refs = PhotoRefs.of([("cd" * 32, 512, 9, "ab" * 32)])
>>> refs[0] == ("cd" * 32, 512, 9, "ab" * 32), refs.ids(np.array([0])) == ["ab" * 32]
(True, True)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from datamoat.data.dataset import chunk_rows, read_rows
from datamoat.errors import BadInput
from datamoat.files import TEMP_SUFFIX, make_dirs
from datamoat.workspace import Workspace

__all__ = [
    "FORMATS",
    "PhotoIndex",
    "PhotoRefs",
    "REF_DTYPE",
    "ROW_DTYPE",
    "SPLIT_NAMES",
    "Ref",
    "assign_splits",
    "chunks",
    "put_array_chunks",
    "store_rows",
]

SPLIT_NAMES = ("train", "val", "test")  # split code = position, as the dataset versions' SPLITS
FORMATS = ("JPEG", "PNG", "WEBP")  # format code = position
Ref = tuple[str, int, int, str]  # (shard sha256, offset, size, photo sha256)
ROW_DTYPE = np.dtype(
    [("sha256", "u1", (32,)), ("label", "<i4"), ("split", "i1"), ("format", "i1"), ("orientation", "i1")]
    + [("mode", "i1"), ("shard", "<i4"), ("width", "<i4"), ("height", "<i4"), ("offset", "<i8"), ("size", "<i8")]
    + [("path_end", "<i8"), ("extra_end", "<i8")]  # ends of each row's bytes in the path and extra columns
)  # label -1: unlabelled
REF_DTYPE = np.dtype([("sha256", "u1", (32,)), ("shard", "<i4"), ("offset", "<i8"), ("size", "<i8")])
CHUNK = 1 << 16  # rows read at a time from a mapped column


def chunks(table: np.ndarray, size: int = CHUNK) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, a copy of the next `size` rows) of a (maybe mapped) array, front to back; the pages
    read are handed back after each (`read_rows`), so a pass holds one chunk, not the table.

    >>> [(i, c.tolist()) for i, c in chunks(np.arange(5), 2)]
    [(0, [0, 1]), (2, [2, 3]), (4, [4])]
    """
    for i in range(0, len(table), size):
        yield i, read_rows(table, slice(i, i + size))


def put_array_chunks(ws: Workspace, dtype: np.dtype, shape: tuple[int, ...], parts: Iterable[np.ndarray]) -> str:
    """Store an array given as consecutive parts along its first axis, never holding all of it: the
    bytes are `np.save`'s, so the blob (and every id that names it) is what `put_array` gives the
    whole array. Returns its sha256.

    >>> ws = Workspace.init(tempfile.mkdtemp())
    >>> put_array_chunks(ws, np.dtype("<i8"), (3,), [np.arange(2), np.arange(2, 3)]) == ws.put_array(np.arange(3))
    True
    """
    folder = ws.objects if ws.objects_url is None else ws.root  # beside the store: a rename, not a copy
    make_dirs(folder)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".array.", suffix=TEMP_SUFFIX)
    h, done = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as f:
            head = io.BytesIO()
            header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
            np.lib.format.write_array_header_1_0(head, header)
            # a generator, not a tuple: one part at a time is ever in memory
            flat = (memoryview(np.ascontiguousarray(p, dtype)).cast("B") for p in parts)  # type: ignore[arg-type]
            for b in itertools.chain([memoryview(head.getvalue())], flat):
                h.update(b)
                f.write(b)
                done += len(b)
            f.flush()
            os.fsync(f.fileno())
        expected = len(head.getvalue()) + int(np.prod(shape)) * dtype.itemsize
        assert done == expected, f"{done} bytes written for {shape} {dtype}"
        sha = h.hexdigest()
        ws.put_local_file(sha, Path(tmp))
        return sha
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def store_rows(ws: Workspace, pieces: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, str]:
    """The rows `rows` of each (images, rows) piece, one piece after the other, stored as one array
    a chunk at a time, so a new version's images are never all in memory: (the stored array, mapped
    where the store is local, and its sha256, which `put_array` gives the same rows).

    >>> ws = Workspace.init(tempfile.mkdtemp())
    >>> x, sha = store_rows(ws, [(np.arange(4), np.array([3, 1])), (np.arange(9), np.array([8]))])
    >>> x.tolist(), sha == ws.put_array(np.array([3, 1, 8]))
    ([3, 1, 8], True)
    """
    x0 = pieces[0][0]
    n = sum(len(rows) for _, rows in pieces)
    step = chunk_rows(x0)
    parts = (read_rows(x, rows[i : i + step]) for x, rows in pieces for i in range(0, len(rows), step))
    sha = put_array_chunks(ws, x0.dtype, (n, *x0.shape[1:]), parts)
    return ws.get_array(sha, mmap=True), sha


def _hex_of(sha: str) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(sha), np.uint8) if len(sha) == 64 else np.zeros(0, np.uint8)


class PhotoIndex:
    """A photo version's index: `table` (N,) `ROW_DTYPE` in content-hash order (maybe mapped), the
    path and extra byte columns (uint8, maybe mapped), and the small lists the codes point into."""

    def __init__(
        self, table: np.ndarray, paths: np.ndarray, extras: np.ndarray, classes: list[str], modes: list[str]
    ) -> None:
        self.table, self.paths, self.extras, self.classes, self.modes = table, paths, extras, classes, modes
        self.shards: list[str] = []  # set by the owner: shard number -> sha256

    def __len__(self) -> int:
        return len(self.table)

    def row(self, i: int) -> dict[str, Any]:
        """Row `i` as the dict the JSON index of format 1 held (one Python object: for a few rows)."""
        r = self.table[i]
        start = int(self.table[i - 1]["path_end"]) if i else 0
        x0 = int(self.table[i - 1]["extra_end"]) if i else 0
        extra = bytes(self.extras[x0 : int(r["extra_end"])])
        return {
            "sha256": bytes(r["sha256"]).hex(),
            "label": self.classes[int(r["label"])] if r["label"] >= 0 else None,
            "split": SPLIT_NAMES[int(r["split"])],
            "shard": self.shards[int(r["shard"])] if r["shard"] < len(self.shards) else "",  # "": not yet written
            "offset": int(r["offset"]),
            "size": int(r["size"]),
            "width": int(r["width"]),
            "height": int(r["height"]),
            "format": FORMATS[int(r["format"])],
            "mode": self.modes[int(r["mode"])],
            "orientation": int(r["orientation"]),
            "path": bytes(self.paths[start : int(r["path_end"])]).decode(),
            "extra": json.loads(extra) if extra else {},
        }

    def find(self, sha256: str) -> int | None:
        """The row of the photo with this hex sha256, by binary search on the sorted hashes; or None.
        Each step reads one row of the (mapped) table."""
        want = _hex_of(sha256).tobytes()
        lo, hi = 0, len(self.table)
        while lo < hi:
            mid = (lo + hi) // 2
            if bytes(self.table[mid]["sha256"]) < want:
                lo = mid + 1
            else:
                hi = mid
        return lo if lo < len(self.table) and bytes(self.table[lo]["sha256"]) == want else None

    def iter_rows(self) -> Iterator[dict[str, Any]]:
        """Every row as `row` gives it, front to back, the (maybe mapped) columns read a chunk at a
        time and their pages handed back, so a pass over millions holds one chunk."""
        for i, part in chunks(self.table):
            p0 = int(self.table[i - 1]["path_end"]) if i else 0
            x0 = int(self.table[i - 1]["extra_end"]) if i else 0
            paths = read_rows(self.paths, slice(p0, int(part["path_end"][-1])))
            extras = read_rows(self.extras, slice(x0, int(part["extra_end"][-1])))
            sub = PhotoIndex(part.copy(), paths, extras, self.classes, self.modes)
            sub.shards = self.shards
            sub.table["path_end"] -= p0
            sub.table["extra_end"] -= x0
            yield from (sub.row(j) for j in range(len(part)))

    def labelled(self) -> Iterator[np.ndarray]:
        """The labelled rows of the table, a chunk at a time (copies), in order."""
        for _, part in chunks(self.table):
            yield part[part["label"] >= 0]

    def all_rows(self) -> Iterator[np.ndarray]:
        """Every row of the table, a chunk at a time (copies), in order."""
        for _, part in chunks(self.table):
            yield part

    def store_refs(self, ws: Workspace, unlabelled: bool = False) -> dict[str, Any]:
        """Where the labelled photos (with `unlabelled`, all of them) lie, stored as a rendered dataset
        keeps them (`PhotoRefs.load`)."""
        rows = self.all_rows if unlabelled else self.labelled
        n = sum(len(p) for p in rows())
        parts = (_as_refs(p) for p in rows())
        return {"refs": put_array_chunks(ws, REF_DTYPE, (n,), parts), "shards": list(self.shards)}

    def store(self, ws: Workspace) -> dict[str, Any]:
        """Put the columns into the store; the manifest's description of them (names hashes)."""
        return {
            "rows": put_array_chunks(ws, ROW_DTYPE, (len(self.table),), (p for _, p in chunks(self.table))),
            "paths": put_array_chunks(
                ws, np.dtype(np.uint8), self.paths.shape, (p for _, p in chunks(self.paths, 1 << 22))
            ),
            "extras": put_array_chunks(
                ws, np.dtype(np.uint8), self.extras.shape, (p for _, p in chunks(self.extras, 1 << 22))
            ),
            "modes": self.modes,
        }

    @classmethod
    def load(cls, ws: Workspace, manifest: dict[str, Any]) -> PhotoIndex:
        """A stored version's index, mapped (read whole when the store is at a URL). Format 1 (one JSON
        line a photo) is read and converted, so versions imported before this format still load."""
        desc, shards = manifest["index"], [s["sha256"] for s in manifest["shards"]]
        if isinstance(desc, str):  # format 1
            rows = [json.loads(line) for line in ws.get_bytes(desc).decode().splitlines()]
            return cls.from_rows(rows, manifest["classes"], shards)
        rows, paths, extras = (ws.get_array(desc[k], mmap=True) for k in ("rows", "paths", "extras"))
        out = cls(rows, paths, extras, list(manifest["classes"]), list(desc["modes"]))
        out.shards = shards
        return out

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]], classes: list[str], shards: list[str]) -> PhotoIndex:
        """An index from row dicts (format 1's JSON lines), in the order given."""
        modes = sorted({r["mode"] for r in rows})
        table = np.zeros(len(rows), ROW_DTYPE)
        paths = [r["path"].encode() for r in rows]
        extras = [json.dumps(r["extra"], sort_keys=True).encode() if r["extra"] else b"" for r in rows]
        shard_no = {s: i for i, s in enumerate(shards)}
        for i, r in enumerate(rows):
            table[i] = (
                _hex_of(r["sha256"]),
                classes.index(r["label"]) if r["label"] is not None else -1,
                SPLIT_NAMES.index(r["split"]),
                FORMATS.index(r["format"]),
                r["orientation"],
                modes.index(r["mode"]),
                shard_no[r["shard"]],
                r["width"],
                r["height"],
                r["offset"],
                r["size"],
                0,
                0,
            )
        table["path_end"] = np.cumsum([len(p) for p in paths])
        table["extra_end"] = np.cumsum([len(x) for x in extras])
        out = cls(table, _bytes(b"".join(paths)), _bytes(b"".join(extras)), list(classes), modes)
        out.shards = list(shards)
        return out


def _as_refs(rows: np.ndarray) -> np.ndarray:
    out = np.empty(len(rows), REF_DTYPE)  # (B,)
    for name in REF_DTYPE.names or ():
        out[name] = rows[name]
    return out


def _bytes(b: bytes) -> np.ndarray:
    return np.frombuffer(b, np.uint8).copy()  # (M,) uint8


class PhotoRefs:
    """Where each sample of a rendered dataset lies: `table` (N,) `REF_DTYPE` (maybe mapped), its
    shard numbers pointing into `shards`; `pick` (M,) selects rows without copying them. Item i is a
    `Ref` tuple, so the refs read like the list they were before."""

    def __init__(self, shards: list[str], table: np.ndarray, pick: np.ndarray | None = None) -> None:
        self.shards, self.table, self.pick = shards, table, pick

    def __len__(self) -> int:
        return len(self.table) if self.pick is None else len(self.pick)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, (int, np.integer)):
            r = self.table[int(self.pick[i]) if self.pick is not None else int(i)]
            return self.shards[int(r["shard"])], int(r["offset"]), int(r["size"]), bytes(r["sha256"]).hex()
        return self.take(np.arange(len(self))[i])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PhotoRefs):
            return NotImplemented
        return len(self) == len(other) and all(self[i] == other[i] for i in range(len(self)))

    __hash__ = None  # type: ignore[assignment]

    def take(self, rows: np.ndarray) -> PhotoRefs:
        """The refs at `rows` (positions in these refs, (M,)), without copying the table."""
        rows = np.asarray(rows, np.int64)
        return PhotoRefs(self.shards, self.table, rows if self.pick is None else self.pick[rows])

    def ids(self, rows: np.ndarray) -> list[str]:
        """The hex sha256 of the photos at `rows` (positions, (B,)): one batch's ids."""
        at = np.asarray(rows, np.int64) if self.pick is None else self.pick[np.asarray(rows, np.int64)]
        return [bytes(s).hex() for s in read_rows(self.table, at)["sha256"]]

    def parts(self) -> Iterator[np.ndarray]:
        """The selected rows of the table, a chunk at a time, in order."""
        if self.pick is None:
            yield from (p for _, p in chunks(self.table))
        else:
            for i in range(0, len(self.pick), CHUNK):
                yield read_rows(self.table, self.pick[i : i + CHUNK])

    def store(self, ws: Workspace) -> dict[str, Any]:
        """Put the selected refs into the store: the dataset manifest's ``photos`` entries."""
        return {"refs": put_array_chunks(ws, REF_DTYPE, (len(self),), self.parts()), "shards": self.shards}

    @classmethod
    def of(cls, refs: list[Ref]) -> PhotoRefs:
        """Refs from `Ref` tuples (the JSON list of earlier rendered datasets)."""
        shards = sorted({r[0] for r in refs})
        no = {s: i for i, s in enumerate(shards)}
        table = np.zeros(len(refs), REF_DTYPE)  # (N,)
        for i, (shard, offset, size, sha) in enumerate(refs):
            table[i] = (_hex_of(sha), no[shard], offset, size)
        return cls(shards, table)

    @classmethod
    def load(cls, ws: Workspace, info: dict[str, Any]) -> PhotoRefs:
        """A rendered dataset's refs from its manifest's ``photos`` entry (mapped where local)."""
        if "shards" not in info:  # a JSON list of Ref, as datasets rendered before this format keep
            return cls.of([tuple(r) for r in json.loads(ws.get_bytes(info["refs"]))])  # type: ignore[misc]
        return cls(list(info["shards"]), ws.get_array(info["refs"], mmap=True))


def assign_splits(labels: np.ndarray, classes: list[str], val: float, test: float, seed: int) -> np.ndarray:
    """Seeded, stratified split codes for rows in content-hash order: within each label (unlabelled
    first, then the classes in order), the rows are shuffled by one generator, so the same content and
    seed give the same splits whatever order the files were found in. `labels` (N,) codes, -1 none.

    >>> assign_splits(np.array([0, 0, 0, 0, 1, 1, 1, 1]), ["a", "b"], 0.25, 0.25, 0).tolist()
    [1, 0, 2, 0, 0, 0, 1, 2]
    """
    rng = np.random.default_rng(seed)
    split = np.zeros(len(labels), np.int8)  # (N,)
    for code in [c for c in (-1, *range(len(classes))) if (labels == c).any()]:
        idx = np.flatnonzero(labels == code)
        idx = idx[rng.permutation(len(idx))]
        n_test, n_val = round(len(idx) * test), round(len(idx) * val)
        if len(idx) - n_test - n_val < 1:
            label = classes[code] if code >= 0 else None
            raise BadInput(
                f"class {label!r} has {len(idx)} image(s), too few to split: add images or lower the fractions"
            )
        split[idx[:n_test]] = SPLIT_NAMES.index("test")
        split[idx[n_test : n_test + n_val]] = SPLIT_NAMES.index("val")
    return split
