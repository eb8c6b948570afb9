"""Unlabeled images into a pool (`datamoat.data.pool`): from a folder, or from pixels kept elsewhere.

A pool must look like the data of the model it will feed. `pool_target` reads that from a dataset
version or a model in the catalog: classes, input shape and preprocessing. `read_folder` turns a
folder of images into that input the way the server turns an upload into it
(`datamoat.inference.inputs.parse_image`): for a photo model, its transform's deterministic geometry
(`photo_transforms.fit`, EXIF orientation applied); for any other, the image converted to its
channels and resized to its height and width. Each file is first checked as `import_photos` checks
one (size cap, format, pixel count from the header, a full decode); a bad one is skipped with a
reason, or, with `strict`, refused. The pixels are held in memory (`max_pool_bytes` bounds them): a
large photo folder is better imported with `import_photos` and rendered, which streams and keeps the
original bytes for training.

`new_images` keeps what the pool has not seen (by the sha256 of the pixels, among the images and
against every row of the dataset they join), `store_pool` stores them as a pool of its own
(`make_pool`) or appended to a dataset (`with_pool`), and `lineage` records in the version's source
where each came from (a file, a prediction id), in pool order. The prediction log's and the edge
uploads' pools are built the same way (`datamoat.feedback.intake`, `datamoat.edge.uploads`).

`provenance` is what `datamoat data show` reports: per split, its labels by origin, and the pool.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from datamoat.configs import Config, check
from datamoat.data.dataset import POOL, SPLITS, Dataset
from datamoat.data.pool import ORIGINS, make_pool, origins, with_pool
from datamoat.errors import BadInput, NotFound
from datamoat.files import read_capped
from datamoat.workspace import Workspace

__all__ = [
    "PoolConfig",
    "PoolTarget",
    "pool_target",
    "read_folder",
    "new_images",
    "store_pool",
    "lineage",
    "lineage_keys",
    "pool_from_folder",
    "pool_report",
    "provenance",
]

MAX_INLINE = 100  # a list this short is in the source itself too; every list is kept as a blob


@dataclasses.dataclass
class PoolConfig(Config):
    """How a folder of images is read into a pool.

    >>> PoolConfig(max_file_bytes=0)
    Traceback (most recent call last):
    datamoat.errors.BadInput: max_file_bytes must be positive, got 0
    """

    strict: bool = False  # True: the first bad file is refused instead of skipped
    max_pixels: int = 50_000_000  # decompression-bomb guard, read from the header before decoding
    max_file_bytes: int = 64 << 20
    max_pool_bytes: int = 2 << 30  # pixels held at once (N x C x H x W)

    def validate(self) -> None:
        for name in ("max_pixels", "max_file_bytes", "max_pool_bytes"):
            check(getattr(self, name) >= 1, f"{name} must be positive, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class PoolTarget:
    """What a pool's images must look like: a dataset's or a model's classes, input and preprocessing."""

    kind: str  # "dataset" or "model"
    id: str
    name: str
    classes: list[str]
    input_shape: tuple[int, int, int]  # (C, H, W)
    preprocess: dict[str, Any]

    @classmethod
    def of(cls, ds: Dataset) -> PoolTarget:
        """The target a dataset version sets for the images that join it."""
        return cls("dataset", ds.id, ds.name, list(ds.classes), ds.input_shape, dict(ds.preprocess))

    def ref(self) -> dict[str, str]:
        return {"kind": self.kind, "id": self.id, "name": self.name}


def pool_target(ws: Workspace, ref: str) -> PoolTarget:
    """The dataset version, or else the model, that `ref` names (id, id prefix or name), as a target.

    >>> pool_target(ws, "digits").input_shape  # doctest: +SKIP
    (1, 8, 8)
    """
    try:
        row = ws.resolve("datasets", ref)
        m = row["manifest"]
        return PoolTarget("dataset", row["id"], row["name"], list(m["classes"]), tuple(m["shape"][1:]), m["preprocess"])
    except NotFound:
        pass
    try:
        row = ws.resolve("models", ref)
    except NotFound:
        raise NotFound(
            f"no dataset or model {ref!r}: `datamoat data list` and `datamoat models list` show what exists"
        ) from None
    meta, cfg = row["meta"], row["meta"]["config"]
    shape = (int(cfg["in_channels"]), int(cfg["image_size"][0]), int(cfg["image_size"][1]))
    return PoolTarget("model", row["id"], row["name"], [str(c) for c in meta["classes"]], shape, meta["preprocess"])


def _files(root: Path) -> list[str]:
    """Every visible file under `root`, relative to it, in a fixed order (sorted, folder by folder)."""
    out: list[str] = []
    for top, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [os.path.relpath(os.path.join(top, n), root) for n in sorted(names) if not n.startswith(".")]
    return out


def _read(path: Path, cap: int) -> bytes:
    try:
        return read_capped(path, cap)  # TooLarge and BadInput (a pipe, a device) say why themselves
    except OSError as e:
        raise BadInput(f"unreadable: {e.strerror or e}") from None


def _shaped(data: bytes, shape: tuple[int, int, int], transform: Any) -> np.ndarray:
    """One checked image as uint8 (C, H, W) of `shape`, as the server prepares an upload of it."""
    from PIL import Image

    c, h, w = shape
    try:
        if transform is not None:
            from datamoat.data.photo_transforms import decode, fit

            return fit(decode(data, c), transform).numpy()  # (C, H, W) uint8
        with Image.open(io.BytesIO(data)) as opened:
            im = opened.convert("L" if c == 1 else "RGB")
            if im.size != (w, h):
                im = im.resize((w, h), Image.Resampling.BILINEAR)
            a = np.asarray(im, dtype=np.uint8)  # (H, W) or (H, W, 3)
    except (OSError, ValueError) as e:
        raise BadInput(f"does not convert to {c} channel(s) ({e})") from None
    return a[None] if c == 1 else a.transpose(2, 0, 1)  # (C, H, W)


def read_folder(
    folder: str | Path, target: PoolTarget, config: PoolConfig | None = None
) -> tuple[np.ndarray, list[str], list[dict[str, str]]]:
    """The images under `folder` (every visible file, sub-folders too) as `target`'s input: uint8
    (N, C, H, W), their paths relative to `folder`, and each file skipped with its reason.

    >>> x, paths, skipped = read_folder("uploads/", pool_target(ws, "digits"))  # doctest: +SKIP
    """
    from datamoat.data.photo_render import transform_of
    from datamoat.data.photos import PhotoImportConfig, probe_photo

    cfg = config or PoolConfig()
    root = Path(folder)
    if not root.is_dir():
        raise NotFound(f"image folder {root} does not exist: give a folder of images")
    files = _files(root)
    if not files:
        raise BadInput(f"{root} holds no files: give a folder of JPEG, PNG or WebP images")
    c, h, w = target.input_shape
    if c not in (1, 3):
        raise BadInput(f"{target.kind} {target.name} takes {c}-channel inputs, which an image cannot give")
    if len(files) * c * h * w > cfg.max_pool_bytes:
        raise BadInput(
            f"{len(files)} files at {c}x{h}x{w} are over max_pool_bytes {cfg.max_pool_bytes}: import them with "
            "`datamoat data import-photos` (an 'unlabeled' subfolder) and `data render`, which stream"
        )
    checks = PhotoImportConfig(max_pixels=cfg.max_pixels, max_file_bytes=cfg.max_file_bytes)
    transform = transform_of(target.preprocess)
    xs, paths, skipped = [], [], []
    for rel in files:
        try:
            data = _read(root / rel, cfg.max_file_bytes)
            probe_photo(data, checks)  # format, header pixel count and a full decode, before any resize
            xs.append(_shaped(data, target.input_shape, transform))
        except BadInput as e:  # TooLarge too
            if cfg.strict:
                raise type(e)(
                    f"{rel}: {e} (strict: fix or remove the file, or leave out --strict to skip it)"
                ) from None
            skipped.append({"path": rel, "reason": str(e)})
            continue
        paths.append(rel)
    if not xs:
        first = skipped[0]
        raise BadInput(f"no image in {root} decodes ({len(skipped)} skipped; {first['path']}: {first['reason']})")
    return np.stack(xs), paths, skipped  # (N, C, H, W) uint8


def new_images(x: np.ndarray, into: Dataset | None = None) -> np.ndarray:
    """(N,) bool: the images of `x` that are neither an earlier image of `x` nor a row of `into`,
    compared by the sha256 of their pixels.

    >>> x = np.array([[[[1]]], [[[2]]], [[[1]]]], dtype=np.uint8)
    >>> new_images(x).tolist()
    [True, True, False]
    """
    from datamoat.data.duplicates import pixel_digests

    seen = set(pixel_digests(into.x).tolist()) if into is not None and into.x.shape[1:] == x.shape[1:] else set()
    keep = np.zeros(len(x), dtype=bool)  # (N,)
    for i, d in enumerate(pixel_digests(x).tolist()):
        if d not in seen:
            keep[i] = True
            seen.add(d)
    return keep


def lineage(ws: Workspace, what: str, keys: list[str], first_row: int) -> dict[str, Any]:
    """The source entries naming where each new pool row came from: `keys[i]` is row `first_row + i`.
    The list is kept as a blob (``<what>_sha256``, JSON) and, up to `MAX_INLINE` keys, in the source
    too, so a long list does not swell the catalog; `lineage_keys` reads it back either way."""
    blob = ws.put_bytes(json.dumps(keys).encode())
    out = {"items": len(keys), "first_row": first_row, f"{what}_sha256": blob}
    return {**out, what: keys} if len(keys) <= MAX_INLINE else out


def lineage_keys(ws: Workspace, source: dict[str, Any], what: str) -> list[str]:
    """The keys (`lineage`'s `what`: "paths", "prediction_ids") an intake's source records, in row order.

    >>> ws = Workspace.init(__import__("tempfile").mkdtemp())
    >>> lineage_keys(ws, lineage(ws, "paths", ["a.png", "b.png"], 0), "paths")
    ['a.png', 'b.png']
    """
    src = source.get("from", source) if f"{what}_sha256" not in source else source  # with_pool nests it
    if what in src:
        return list(src[what])
    return list(json.loads(ws.get_bytes(src[f"{what}_sha256"])))


def store_pool(
    ws: Workspace,
    x: np.ndarray,
    *,
    like: PoolTarget | None = None,
    into: Dataset | None = None,
    name: str | None = None,
    source: dict[str, Any],
) -> Dataset:
    """`x` as a pool of its own shaped like `like` (its classes and preprocessing), or appended to the
    pool of the dataset `into`: exactly one of them.

    >>> grown = store_pool(ws, x, into=load_dataset(ws, "digits"), source={"kind": "folder"})  # doctest: +SKIP
    """
    if (like is None) == (into is None):
        raise BadInput("give a dataset to add the images to (--into) or one to shape a pool of its own like (--like)")
    if into is not None:
        return with_pool(ws, into, x, name=name, source=source)
    assert like is not None
    return make_pool(ws, x, like.classes, name=name or f"{like.name}-pool", source=source, preprocess=like.preprocess)


def pool_report(ds: Dataset, added: int, duplicates: int) -> dict[str, Any]:
    """What an intake says: the version, the images added and left out as already seen, the pool's size."""
    return {
        "dataset_id": ds.id,
        "name": ds.name,
        "added": added,
        "duplicates": duplicates,
        "unlabeled": int((ds.split == POOL).sum()),
        "samples": int(len(ds.y)),
    }


def pool_from_folder(
    ws: Workspace,
    folder: str | Path,
    *,
    like: PoolTarget | None = None,
    into: Dataset | None = None,
    config: PoolConfig | None = None,
    name: str | None = None,
) -> tuple[Dataset, dict[str, Any]]:
    """The images of `folder` as unlabeled items (see the module): a pool of their own, shaped like
    `like`, or the dataset `into` plus them. Returns the version and a report.

    >>> ds, report = pool_from_folder(ws, "site-7/", into=load_dataset(ws, "digits"))  # doctest: +SKIP
    """
    cfg = config or PoolConfig()
    if (like is None) == (into is None):
        raise BadInput("give a dataset to add the images to (--into) or one to shape a pool of its own like (--like)")
    target = like or PoolTarget.of(into)  # type: ignore[arg-type]
    x, paths, skipped = read_folder(folder, target, cfg)
    keep = new_images(x, into)
    where = f"{into.name} ({into.id})" if into is not None else "the folder"
    if not keep.any():
        raise BadInput(f"every image in {folder} is already in {where}: there is nothing new to add")
    first = len(into.y) if into is not None else 0
    source = {
        "kind": "folder",
        "path": str(folder),
        "target": target.ref(),
        "skipped": len(skipped),
        "duplicates": int((~keep).sum()),
        "config": cfg.to_dict(),
        **lineage(ws, "paths", [p for p, k in zip(paths, keep) if k], first),
    }
    ds = store_pool(ws, x[keep], like=like, into=into, name=name, source=source)
    report = pool_report(ds, int(keep.sum()), int((~keep).sum()))
    return ds, {**report, "skipped": skipped, "target": target.ref()}


def provenance(ds: Dataset) -> dict[str, Any]:
    """Per split, the labelled rows and their labels by origin (`datamoat.data.pool.ORIGINS`), and
    the unlabeled pool's size.

    >>> provenance(load_dataset(ws, "digits"))["splits"]["train"]["origins"]["human"]  # doctest: +SKIP
    0
    """
    codes = origins(ds)  # (N,)
    out: dict[str, Any] = {"splits": {}, "unlabeled": int((ds.split == POOL).sum())}
    for split, code in SPLITS.items():
        at = ds.split == code
        counts = np.bincount(codes[at], minlength=len(ORIGINS))
        out["splits"][split] = {"labelled": int(at.sum()), "origins": dict(zip(ORIGINS, counts.tolist()))}
    out["splits"]["pool"] = {"unlabeled": out["unlabeled"]}
    return out
