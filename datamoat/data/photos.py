"""Photo datasets kept as their original encoded files (issue 17).

`import_photos` reads a folder of class subfolders (and an ``unlabeled`` one), an unlabeled folder,
or a CSV / JSON-lines manifest (``path,label[,extra columns]``), checks every file (size cap, format, pixel count from the
header before any decode, then a full decode), skips the bad ones with a reason each, stores each
distinct content once in deterministic tar shards (`datamoat.data.shards`) in the workspace's object
store, and writes a columnar index (`datamoat.data.photo_index`: numpy columns, never a Python
object a photo) of each image's metadata and where its bytes lie.

The version id hashes the index (content hashes, labels, splits, shard offsets), the class names and
the split recipe (format 2, issue 18; format 1's JSON-lines index gave other ids and still loads), so the same files imported twice give the same id and byte-identical shards. The
encoded bytes are kept as they were (EXIF orientation included): the index records the displayed
width and height and the orientation tag, and decoding applies the orientation later.

>>> import tempfile
>>> from datamoat.workspace import Workspace
>>> root = Path(tempfile.mkdtemp())
>>> for i, cls in enumerate(["cat", "cat", "cat", "dog", "dog", "dog"]):
...     (root / cls).mkdir(exist_ok=True)
...     Image.new("RGB", (8, 6), (40 * i, 0, 0)).save(root / cls / f"{i}.png")
>>> v = import_photos(Workspace.init(tempfile.mkdtemp()), root, PhotoImportConfig(val_fraction=0, test_fraction=0.34))
>>> v.classes, v.counts
(['cat', 'dog'], {'train': 4, 'val': 0, 'test': 2})
>>> row = v.rows("test")[0]
>>> (row["width"], row["height"], row["format"]), v.read(row["sha256"])[:4]
((8, 6, 'PNG'), b'\\x89PNG')
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from datamoat.configs import Config, check
from datamoat.data.dataset import drop_pages
from datamoat.data.index_builder import IndexBuilder, fill_column, tally
from datamoat.data.photo_index import SPLIT_NAMES, PhotoIndex, assign_splits, chunks
from datamoat.data.photo_listing import list_folder, list_manifest, read_ahead
from datamoat.data.shards import DEFAULT_MAX_SHARD_BYTES, ShardInfo, iter_shard, read_record, write_shards
from datamoat.errors import BadInput, NotFound, TooLarge
from datamoat.files import read_capped
from datamoat.workspace import Workspace, atomic_write, safe_name, short_hash

__all__ = [
    "PhotoImportConfig",
    "PhotoVersion",
    "SPLIT_NAMES",
    "import_photos",
    "list_photos",
    "load_photos",
    "probe_photo",
]

EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}  # formats we can shard, with their member extension
ORIENTATION_TAG = 0x0112
_TRANSPOSED = {5, 6, 7, 8}  # EXIF orientations that turn the image a quarter: displayed W x H is stored H x W
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
_REF_DIR = "photos"  # workspace folder of version records (<id>.json): see `load_photos`
_INDEX_BLOBS = ("rows", "paths", "extras")  # the index's blobs in the manifest (`PhotoIndex.store`)


@dataclasses.dataclass
class PhotoImportConfig(Config):
    """How photos are checked, split and sharded.

    >>> PhotoImportConfig(max_pixels=10).max_pixels
    10
    >>> PhotoImportConfig(formats=("GIF",))
    Traceback (most recent call last):
    datamoat.errors.BadInput: unsupported format(s) GIF: formats may be JPEG, PNG, WEBP
    """

    max_pixels: int = 50_000_000  # decompression-bomb guard, read from the header before decoding
    max_file_bytes: int = 64 << 20
    strict: bool = False  # True: the first bad file raises instead of being skipped
    formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP")
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.15
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
    unlabeled_folder: str = "unlabeled"  # beside class subfolders (or a manifest's label): no label yet
    # Files the OS is asked for ahead of the reader (`read_ahead`), so that a cold disk or network
    # filesystem serves many reads at once (bench/results/read_ahead.md); 0: none.
    read_ahead: int = 256

    def validate(self) -> None:
        check(self.max_pixels >= 1, f"max_pixels must be positive, got {self.max_pixels}")
        check(self.max_file_bytes >= 1, f"max_file_bytes must be positive, got {self.max_file_bytes}")
        bad = [f for f in self.formats if f not in EXTENSIONS]
        check(not bad, f"unsupported format(s) {', '.join(bad)}: formats may be {', '.join(EXTENSIONS)}")
        check(bool(self.formats), "formats must name at least one of " + ", ".join(EXTENSIONS))
        for name in ("val_fraction", "test_fraction"):
            check(0 <= getattr(self, name) < 1, f"{name} must be in [0, 1), got {getattr(self, name)}")
        check(self.val_fraction + self.test_fraction < 1, "val_fraction + test_fraction must leave some train")
        check(self.max_shard_bytes >= 1 << 16, f"max_shard_bytes must be at least 65536, got {self.max_shard_bytes}")
        check(0 <= self.read_ahead <= 1 << 16, f"read_ahead must be in [0, 65536] files, got {self.read_ahead}")


class _Skip(Exception):
    """One file refused: `kind` groups the reasons in the report, `detail` says what exactly."""

    def __init__(self, kind: str, detail: str, too_large: bool = False):
        super().__init__(f"{kind}: {detail}")
        self.kind, self.detail, self.too_large = kind, detail, too_large


def _check_image(data: bytes, cfg: PhotoImportConfig) -> dict[str, Any]:
    with warnings.catch_warnings():
        # Pillow's own bomb warning is replaced by the max_pixels check below; its hard limit
        # (twice its warning threshold) still raises, and that is reported as over the limit too.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            # Only the accepted formats' parsers ever see the bytes.
            im = Image.open(io.BytesIO(data), formats=list(cfg.formats))
        except Image.DecompressionBombError as e:
            raise _Skip("over max_pixels", f"{e} (decompression-bomb guard)", True) from None
        except UnidentifiedImageError:
            raise _unaccepted(data, cfg) from None
        except _DECODE_ERRORS as e:
            raise _Skip("corrupt", f"unreadable header ({e})") from None
        with im:
            w, h = im.size
            if w * h > cfg.max_pixels:
                raise _Skip("over max_pixels", f"{w}x{h} = {w * h} pixels, over max_pixels {cfg.max_pixels}", True)
            try:
                im.load()  # the full decode: truncated and corrupt files fail here
            except _DECODE_ERRORS as e:
                raise _Skip("corrupt", f"does not decode ({e}): truncated or corrupt") from None
            orientation = im.getexif().get(ORIENTATION_TAG, 1)
            orientation = orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1
            if orientation in _TRANSPOSED:  # what exif_transpose would show
                w, h = h, w
            return {"format": im.format, "width": w, "height": h, "mode": im.mode, "orientation": orientation}


def _unaccepted(data: bytes, cfg: PhotoImportConfig) -> _Skip:
    """Why Pillow refused: an image in a format not accepted, or not an image at all."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:  # header only, to name the format in the reason
                fmt = im.format
    except (*_DECODE_ERRORS, UnidentifiedImageError):
        return _Skip("not an image", f"not a readable {', '.join(cfg.formats)} image")
    return _Skip("format not accepted", f"{fmt} is not one of {', '.join(cfg.formats)}")


def probe_photo(data: bytes, config: PhotoImportConfig | None = None) -> dict[str, Any]:
    """Check one encoded image as the importer does; its format, displayed width and height, mode and
    EXIF orientation, or `BadInput` (`TooLarge` over a limit) saying why it would be skipped.

    >>> buf = io.BytesIO(); Image.new("L", (3, 2)).save(buf, "PNG")
    >>> probe_photo(buf.getvalue())
    {'format': 'PNG', 'width': 3, 'height': 2, 'mode': 'L', 'orientation': 1}
    >>> probe_photo(b"hello")
    Traceback (most recent call last):
    datamoat.errors.BadInput: not an image: not a readable JPEG, PNG, WEBP image
    """
    cfg = config or PhotoImportConfig()
    try:
        if not data:
            raise _Skip("empty", "the file is empty")
        if len(data) > cfg.max_file_bytes:
            raise _Skip("over max_file_bytes", f"{len(data)} bytes, over max_file_bytes {cfg.max_file_bytes}", True)
        return _check_image(data, cfg)
    except _Skip as e:
        raise (TooLarge if e.too_large else BadInput)(str(e)) from None


def _read(path: Path, cfg: PhotoImportConfig) -> bytes:
    try:
        data = read_capped(path, cfg.max_file_bytes)
    except TooLarge as e:
        raise _Skip("over max_file_bytes", str(e), True) from None
    except BadInput as e:
        raise _Skip("unreadable", str(e)) from None
    except OSError as e:
        raise _Skip("unreadable", f"{e.strerror or e}") from None
    if not data:
        raise _Skip("empty", "the file is empty")
    return data


@dataclasses.dataclass
class PhotoVersion:
    """One imported photo dataset version: its columnar index (`PhotoIndex`, mapped from the store),
    and reads of its bytes through the shards."""

    ws: Workspace
    id: str
    name: str
    manifest: dict[str, Any]
    table: PhotoIndex
    skipped: list[dict[str, str]] = dataclasses.field(default_factory=list)
    duplicates: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    report: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.manifest["counts"])

    @property
    def index(self) -> list[dict[str, Any]]:
        """Every index row as a dict, in content-hash order: a Python object a photo, so for small
        versions and a look at the data; the stages read `table`'s columns instead."""
        return self.rows()

    def rows(self, split: str | None = None) -> list[dict[str, Any]]:
        """Index rows (dicts), all or of one split, in content-hash order."""
        if split is not None and split not in SPLIT_NAMES:
            raise BadInput(f"unknown split {split!r}: choose train, val or test")
        code = SPLIT_NAMES.index(split) if split is not None else -1
        at = [s + np.flatnonzero((p["split"] == code) | (code < 0)) for s, p in chunks(self.table.table)]
        return [self.table.row(int(i)) for i in np.concatenate([np.zeros(0, np.int64), *at])]

    def read(self, sha256: str) -> bytes:
        """One image's original encoded bytes: a binary search of the index and one read in its shard."""
        i = self.table.find(sha256)
        if i is None:
            raise NotFound(f"photo {sha256[:12]} is not in version {self.id}")
        row = self.table.row(i)
        data = read_record(self.ws.object_location(row["shard"]), row["offset"], row["size"])
        return _verified(data, row, self.id)

    def iter_bytes(self, split: str | None = None) -> Iterator[tuple[dict[str, Any], bytes]]:
        """(row, bytes) of every image of `split` (all if None), each shard streamed front to back."""
        for shard in self.manifest["shards"]:
            for name, data in iter_shard(self.ws.object_location(shard["sha256"])):
                i = self.table.find(name.partition(".")[0])
                row = self.table.row(i) if i is not None else None
                if row is not None and (split is None or row["split"] == split):
                    yield row, _verified(data, row, self.id)


def _verified(data: bytes, row: dict[str, Any], vid: str) -> bytes:
    # The key is the content hash, so integrity costs one hash (far below the decode that follows).
    if hashlib.sha256(data).hexdigest() != row["sha256"]:
        raise BadInput(f"photo {row['sha256'][:12]} of version {vid} is corrupt in shard {row['shard'][:12]}")
    return data


def import_photos(
    ws: Workspace, source: str | Path, config: PhotoImportConfig | None = None, *, name: str | None = None
) -> PhotoVersion:
    """Import a folder (class subfolders, or unlabeled) or a .csv / .jsonl manifest as a photo version.

    Bad files are skipped with a reason (or, with ``strict``, the first raises `BadInput` naming it);
    duplicate bytes are stored once; the same bytes under two labels are skipped as a conflict.
    See `PhotoVersion.report` for the numbers.
    """
    cfg = config or PhotoImportConfig()
    t0 = time.perf_counter()
    src = Path(source)
    if not src.exists():
        raise NotFound(f"photo source {src} does not exist: pass a folder or a .csv / .jsonl manifest")
    items, stray = list_folder(src) if src.is_dir() else (list_manifest(src), [])
    skipped: list[dict[str, str]] = []

    def skip(rel: str, e: _Skip) -> None:
        if cfg.strict:
            err = TooLarge if e.too_large else BadInput
            raise err(f"{rel}: {e} (strict import: fix or remove the file, or import without strict to skip it)")
        skipped.append({"path": rel, "kind": e.kind, "reason": str(e)})

    for rel in stray:
        skip(rel, _Skip("outside the class folders", "a file next to class subfolders has no label"))
    # Columns, not a dict a photo, sorted on disk: memory holds a run of rows, whatever the count.
    with IndexBuilder(ws.root) as builder:
        listed = 0
        for it in read_ahead(items, lambda it: it.path, cfg.read_ahead):
            listed += 1
            try:
                data = _read(it.path, cfg)
                meta = _check_image(data, cfg)
            except _Skip as e:
                skip(it.rel, e)
                continue
            label = None if it.label == cfg.unlabeled_folder else it.label  # unlabeled: the render's pool
            builder.add(hashlib.sha256(data).digest(), label, meta, it.rel, it.extra)
        index, dup_paths, conflicts = builder.finish()
        for rels, labels in conflicts:  # the same bytes cannot be two classes: keep neither, say so
            why = f"the same bytes as {', '.join(rels)} carry different labels ({', '.join(labels)})"
            for rel in rels:
                skip(rel, _Skip("label conflict", why))
        if not len(index):
            reasons = collections.Counter(s["kind"] for s in skipped)
            raise BadInput(f"no importable images in {src}: {len(skipped)} skipped ({dict(reasons)})")
        manifest, shards, (per, src_bytes, unlabelled) = _store(ws, src, index, cfg)
    vid = short_hash(json.dumps(manifest, sort_keys=True).encode())  # content only: not the name or the path
    index = PhotoIndex.load(ws, manifest)  # from the store: the builder's files are gone
    dups = [{"sha256": sha, "paths": paths} for sha, paths in dup_paths]
    name = name or safe_name(src.stem if src.is_file() else src.name)
    ref_path = ws.path_for(_REF_DIR) / f"{vid}.json"
    if not ref_path.exists():  # write-once, like a catalog row: a re-import keeps the first name
        record = {"id": vid, "name": name, "source": str(src), "manifest": manifest}
        atomic_write(ref_path, json.dumps({**record, "skipped": skipped, "duplicates": dups}, sort_keys=True).encode())
    name = json.loads(ref_path.read_bytes())["name"]
    classes, counts = manifest["classes"], manifest["counts"]
    index_blobs = manifest["index"]
    stored = sum(s.size for s in shards) + sum(ws.object_size(index_blobs[k]) for k in _INDEX_BLOBS)
    secs = time.perf_counter() - t0
    report = {
        "id": vid,
        "name": name,
        "source": str(src),
        "imported": len(index),
        "unlabeled": unlabelled,
        "classes": classes,
        "splits": counts,
        "per_class": {s: {c: int(per[i, j + 1]) for j, c in enumerate(classes)} for i, s in enumerate(SPLIT_NAMES)},
        "skipped": len(skipped),
        "skipped_reasons": dict(sorted(collections.Counter(s["kind"] for s in skipped).items())),
        "duplicates": sum(len(d["paths"]) - 1 for d in dups),
        "shards": len(shards),
        "source_bytes": src_bytes,
        "stored_bytes": stored,
        "stored_vs_source": round(stored / src_bytes, 4),
        "seconds": round(secs, 3),
        "images_per_s": round(listed / secs, 1) if secs > 0 else None,
    }
    return PhotoVersion(ws, vid, name, manifest, index, skipped, dups, report)


def _store(
    ws: Workspace, src: Path, index: PhotoIndex, cfg: PhotoImportConfig
) -> tuple[dict[str, Any], list[Any], tuple[np.ndarray, int, int]]:
    """Split the (mapped) index, write the shards in its order, store it; the manifest, the shards
    and the index's `tally`."""
    rows = index.table  # (N,) in content-hash order: independent of file names and listing
    # Filled a chunk at a time: a list of the chunks' label views would keep every chunk (a copy of
    # its rows) alive, and so, for a moment, a copy of the whole table.
    labels = np.empty(len(rows), rows.dtype["label"])  # (N,) 4 bytes a photo
    for i, part in chunks(rows):
        labels[i : i + len(part)] = part["label"]
    fill_column(rows, "split", assign_splits(labels, index.classes, cfg.val_fraction, cfg.test_fraction, cfg.seed))
    base = src if src.is_dir() else src.parent  # every listed path is relative to it

    def records() -> Iterator[tuple[str, str, bytes]]:
        # A second read, so no more than one file is ever in memory; its hash must not have changed.
        # Content-hash order is a random walk over the source's files: reading ahead keeps the disk busy.
        for r in read_ahead(index.iter_rows(), lambda r: base / r["path"], cfg.read_ahead):
            try:
                data = _read(base / r["path"], cfg)
            except _Skip as e:
                raise BadInput(f"{r['path']} changed during the import ({e}): import again") from None
            if hashlib.sha256(data).hexdigest() != r["sha256"]:
                raise BadInput(f"{r['path']} changed during the import: import again")
            yield r["sha256"], EXTENSIONS[r["format"]], data

    done: list[int] = [0]

    def placed(info: ShardInfo) -> None:  # records go out in row order: shard k holds the next rows
        at = slice(done[0], done[0] + info.count)
        assert info.first_key == bytes(rows[at.start]["sha256"]).hex()
        rows["shard"][at] = len(index.shards)
        rows["offset"][at] = np.frombuffer(info.offsets, np.int64)  # (count,) a view, no copy
        rows["size"][at] = np.frombuffer(info.sizes, np.int64)
        drop_pages(rows)
        index.shards.append(info.sha256)
        done[0] = at.stop

    shards = write_shards(records(), ws, max_shard_bytes=cfg.max_shard_bytes, on_shard=placed)
    counted = tally(rows, len(index.classes))
    per = counted[0]
    manifest = {
        "format": 2,  # 1: the index was one JSON line a photo (`PhotoIndex.load` still reads it)
        "kind": "photos",
        "classes": index.classes,
        "index": index.store(ws),
        "shards": [{"sha256": s.sha256, "size": s.size, "count": s.count} for s in shards],
        "split_recipe": {"val": cfg.val_fraction, "test": cfg.test_fraction, "seed": cfg.seed, "order": "sha256"},
        "counts": {s: int(per[i].sum()) for i, s in enumerate(SPLIT_NAMES)},
    }
    return manifest, shards, counted


def list_photos(ws: Workspace) -> list[dict[str, Any]]:
    """Every photo version of the workspace, oldest first: id, name, source, counts, classes, shards."""
    folder = ws.root / _REF_DIR
    recs = [json.loads(p.read_bytes()) for p in sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime)]
    return [
        {"id": r["id"], "name": r["name"], "source": r["source"], "samples": sum(r["manifest"]["counts"].values())}
        | {"classes": len(r["manifest"]["classes"]), "shards": len(r["manifest"]["shards"])}
        | {"skipped": len(r["skipped"])}
        for r in recs
    ]


def load_photos(ws: Workspace, ref: str) -> PhotoVersion:
    """A photo version by id, unique id prefix (4+ characters) or name (the newest import wins)."""
    folder = ws.root / _REF_DIR
    found = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    exact = [p for p in found if p.stem == ref]
    pref = [p for p in found if len(ref) >= 4 and p.stem.startswith(ref)]
    if len(pref) > 1 and not exact:
        raise BadInput(f"photo version prefix {ref!r} is ambiguous ({len(pref)} matches): give more characters")
    named = [p for p in found if json.loads(p.read_bytes())["name"] == ref] if ref else []
    hits = exact or pref or named[-1:]
    if not hits:
        raise NotFound(f"unknown photo version {ref!r}: import one with import_photos")
    rec = json.loads(hits[0].read_bytes())
    index = PhotoIndex.load(ws, rec["manifest"])
    return PhotoVersion(ws, rec["id"], rec["name"], rec["manifest"], index, rec["skipped"], rec["duplicates"])
