"""From a photo version to model inputs: a rendered view for every stage, and a stream for training.

A photo version (`datamoat.data.photos`) keeps each photo's original encoded bytes. A model sees
them through a `PhotoTransformConfig`, so the version is turned into model inputs in two ways:

- `render_photos` decodes every photo once in DataLoader worker processes (an unlabelled one joins
  the version's unlabeled pool, `datamoat.data.pool`), applies the
  deterministic geometry (`photo_transforms.fit`: the shorter side resized plus a centre crop, or
  letterboxing) and stores the uint8 ``(N, C, H, W)`` result as an ordinary dataset version. Its
  manifest names the photo version, the transform and where each sample's bytes lie in the shards,
  and its preprocessing is the transform's mean and std. Evaluation, export, quantization, cleaning,
  diff, tuning and the proof of concept then work on it unchanged. It is a derived view: the same
  photo version and transform always render to the same id.
- `photo_loader` streams a rendered dataset's train split from the original bytes, decoding and
  augmenting (random resized crop, flip, colour jitter) in worker processes, so training sees new
  crops of the full-resolution photo every epoch and never holds the photos in memory.

Both read records by offset in the content-addressed shards, one seek and one read each, and check
each record's sha256 against the index before decoding it.

>>> import tempfile
>>> from pathlib import Path
>>> from PIL import Image
>>> from datamoat.data.photos import PhotoImportConfig, import_photos
>>> root = Path(tempfile.mkdtemp())
>>> for i in range(12):
...     (root / "ab"[i % 2]).mkdir(exist_ok=True)
...     Image.new("RGB", (40 + i, 30), (20 * i, 100 * (i % 2), 0)).save(root / "ab"[i % 2] / f"{i}.png")
>>> ws = Workspace.init(tempfile.mkdtemp())
>>> photos = import_photos(ws, root, PhotoImportConfig(val_fraction=0.2, test_fraction=0.2))
>>> ds = render_photos(ws, photos, PhotoTransformConfig(size=(16, 16)), workers=0)
>>> ds.x.shape, ds.preprocess["photo"]["size"]
((12, 3, 16, 16), [16, 16])
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from datamoat.configs import config_from_dict
from datamoat.data.dataset import POOL, UNLABELED, Dataset, make_dataset, read_rows
from datamoat.data.photo_index import PhotoRefs, Ref, put_array_chunks
from datamoat.data.photo_transforms import PhotoTransformConfig, decode, fit, train_min_side, train_transform
from datamoat.data.photos import PhotoVersion
from datamoat.data.shards import available_memory, read_record, warm_page_cache
from datamoat.errors import BadInput
from datamoat.workspace import Workspace

__all__ = [
    "PhotoSamples",
    "fit_batches",
    "render_photos",
    "transform_of",
    "photo_refs",
    "photo_loader",
    "pixel_batches",
    "default_workers",
    "warm_shards",
]


# A random read costs about as long as reading this many bytes in sequence, on a disk (milliseconds
# against about 100 MB/s) as on an SSD (a tenth of a millisecond against GB/s).
RANDOM_READ_BYTES = 512 << 10


def warm_shards(objects: str, refs: PhotoRefs) -> int:
    """Before a pass reads the photos at `refs` in random order, read each shard it reads from
    enough (once per `RANDOM_READ_BYTES` of the shard) front to back into the page cache, as long as
    they fit in half the memory the kernel has available: a cold shard read photo by photo can take a
    disk access per photo, where the kernel's read-ahead does not catch on. A store at a URL is read
    by range requests, and left alone. Returns the bytes read.

    >>> warm_shards("s3://bucket/objects", PhotoRefs.of([]))
    0
    """
    if "://" in objects or len(refs) == 0:
        return 0
    counts = np.zeros(len(refs.shards), np.int64)  # (S,): photos to read from each shard
    for part in refs.parts():
        counts += np.bincount(part["shard"], minlength=len(refs.shards))
    paths = [f"{objects}/{sh[:2]}/{sh[2:]}" for sh in refs.shards]
    worth = [p for p, c in zip(paths, counts.tolist(), strict=True) if c and c * RANDOM_READ_BYTES >= _size(p)]
    return warm_page_cache(worth, available_memory() // 2)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def default_workers(spare: int = 1) -> int:
    """Decode workers when none are asked for: every core this process may run on (its CPU affinity,
    which a container's cpuset narrows) but `spare` for the main process's own math, at least one
    and at most 8. Rendering leaves none spare: its main process only hashes and writes.

    >>> default_workers(spare=0) >= default_workers() >= 1
    True
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cores - spare))


class PhotoSamples(torch.utils.data.Dataset):
    """Photos read by offset from a workspace's shards: item i -> (uint8 or float32 (C, H, W), index).

    ``mode="fit"`` gives the deterministic uint8 geometry (rendering); ``mode="train"`` the augmented,
    normalised float32 crop, seeded by (seed, epoch, index) so a run is reproducible whichever worker
    decodes which photo.
    """

    def __init__(
        self, objects: str, refs: PhotoRefs | list[Ref], cfg: PhotoTransformConfig, channels: int, mode: str
    ) -> None:
        import multiprocessing

        # Columns (mapped where local), not a tuple a photo: forked workers share them untouched.
        refs = refs if isinstance(refs, PhotoRefs) else PhotoRefs.of(refs)
        self.objects, self.refs, self.cfg, self.channels, self.mode = objects, refs, cfg, channels, mode
        warm_shards(objects, refs)
        self.seed = 0
        # Training crops are random anyway, so a JPEG is decoded no larger than its smallest crop needs.
        self.min_side = train_min_side(cfg) if mode == "train" else 0
        # Shared with the (persistent) worker processes, so they learn the epoch without a re-fork.
        self._epoch = multiprocessing.Value("q", 0, lock=False)

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    @epoch.setter
    def epoch(self, value: int) -> None:
        self._epoch.value = value

    def __len__(self) -> int:
        return len(self.refs)

    def raw(self, i: int) -> bytes:
        shard, offset, size, sha = self.refs[i]
        # `objects` is the workspace's store: a folder, or a URL every process and machine reads from
        data = read_record(f"{self.objects}/{shard[:2]}/{shard[2:]}", offset, size)
        if hashlib.sha256(data).hexdigest() != sha:
            raise BadInput(f"photo {sha[:12]} is corrupt in shard {shard[:12]}: restore the workspace's objects")
        return data

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = decode(self.raw(i), self.channels, min_side=self.min_side)  # (C, h, w) uint8, any size
        if self.mode == "fit":
            return fit(img, self.cfg), i  # (C, H, W) uint8
        g = torch.Generator().manual_seed(hash((self.seed, self.epoch, i)) & 0x7FFF_FFFF)
        return train_transform(img, self.cfg, g), i  # (C, H, W) float32, normalised


def _loader(
    ds: PhotoSamples, batch_size: int, workers: int, shuffle: bool, seed: int, batch_sampler: Any = None
) -> Any:
    order: dict[str, Any] = (
        {"batch_sampler": batch_sampler}
        if batch_sampler is not None
        else {"batch_size": batch_size, "shuffle": shuffle, "generator": torch.Generator().manual_seed(seed)}
    )
    return torch.utils.data.DataLoader(
        ds,
        **order,
        num_workers=workers,
        # Pinned pages only help a copy to a GPU; on a CPU-only machine they cost a copy.
        pin_memory=torch.cuda.is_available(),
        # Forked once per run (a fork per epoch cost a fifth of a second before the first batch);
        # they read the epoch that seeds the crops from shared memory.
        persistent_workers=workers > 0,
    )


def fit_batches(
    objects: str,
    refs: PhotoRefs | list[Ref],
    cfg: PhotoTransformConfig,
    channels: int,
    *,
    batch_size: int,
    workers: int,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The photos at `refs` through `fit`, in order: (uint8 (B, C, H, W), their positions in `refs`
    (B,)), decoded in `workers` processes (-1: `default_workers()`), never more than there are batches.

    Rendering and `predict` read photos this way, so both give exactly the rendered pixels.
    """
    n = default_workers() if workers < 0 else workers
    samples = PhotoSamples(objects, refs, cfg, channels, "fit")
    for xb, pos in _loader(samples, batch_size, min(n, -(-len(refs) // batch_size)), False, 0):
        yield xb.numpy(), pos.numpy()  # (B, C, H, W) uint8, (B,)


def render_photos(
    ws: Workspace,
    photos: PhotoVersion,
    transform: PhotoTransformConfig | None = None,
    *,
    channels: int = 3,
    name: str | None = None,
    workers: int = -1,
    progress: bool = False,
    pool: bool = True,
    classes: list[str] | None = None,
) -> Dataset:
    """The photos of `photos` at the transform's size, as a dataset version (see the module).

    Unlabelled photos become the version's unlabeled pool (split `POOL`, label -1, see
    `datamoat.data.pool`): class subfolders beside an ``unlabeled`` folder, or a manifest with some
    empty labels, give one version holding both, and labels arrive later as new versions. With
    `pool` False they are left out, as before pools existed (their count is recorded). A version
    without unlabelled photos renders exactly as it did, to the same id. `classes` names the classes
    of the labels to come (a version imported from an unlabeled folder has none); it must hold
    every class the photo version has, whose labels are mapped onto it by name.
    """
    cfg = transform or PhotoTransformConfig()
    check_channels = channels in (1, 3) and len(cfg.mean) == channels
    if not check_channels:
        raise BadInput(f"channels must be 1 or 3 and match the transform's {len(cfg.mean)} mean values")
    table = photos.table  # columns, read a chunk at a time: memory does not follow the photo count
    rows = table.all_rows if pool else table.labelled
    y = np.concatenate([np.zeros(0, np.int64), *(p["label"].astype(np.int64) for p in rows())])  # (N,) -1: none
    labelled = int((y >= 0).sum())
    if not labelled and not pool:
        raise BadInput(f"photo version {photos.id} has no labelled photos: label them before training on them")
    split = np.concatenate([np.zeros(0, np.uint8), *(p["split"].astype(np.uint8) for p in rows())])  # (N,)
    split[y < 0] = POOL  # the import split every photo; an unlabelled one waits in the pool instead
    out_classes = _classes(photos, classes)
    if out_classes != photos.classes:  # labels by name onto the given classes
        lut = np.array([out_classes.index(c) for c in photos.classes] + [UNLABELED], np.int64)  # (K + 1,)
        y = lut[y]  # -1 indexes the last entry: it stays unlabeled
    stored = table.store_refs(ws, unlabelled=pool)
    refs = PhotoRefs.load(ws, stored)
    x_sha = _render_to_store(ws, refs, cfg, channels, workers, progress)
    x = ws.get_array(x_sha, mmap=True)  # (N, C, H, W) uint8, mapped from the store where it is local
    preprocess = {"scale": 1 / 255, "mean": list(cfg.mean), "std": list(cfg.std), "photo": json.loads(cfg.to_json())}
    source = {"kind": "photos", "photo_version": photos.id, "unlabelled": len(table) - labelled}
    source["pool"] = len(y) - labelled
    return make_dataset(
        ws,
        x,
        y,
        out_classes,
        name=name or f"{photos.name}-{cfg.size[0]}x{cfg.size[1]}",
        source=source,
        split=split,
        preprocess=preprocess,
        photos={"version": photos.id, **stored},
        x_blob=x_sha,
    )


def _classes(photos: PhotoVersion, classes: list[str] | None) -> list[str]:
    """The rendered version's classes: the photo version's, or `classes` where given (a superset)."""
    if classes is None:
        if len(photos.classes) < 2:
            raise BadInput(
                f"photo version {photos.id} has {len(photos.classes)} class(es): name the classes its labels "
                "will come from (--classes a,b,...)"
            )
        return photos.classes
    classes = [str(c) for c in classes]
    missing = [c for c in photos.classes if c not in classes]
    if missing or len(set(classes)) != len(classes) or len(classes) < 2:
        raise BadInput(
            f"classes {classes} must be two or more distinct names holding every class of photo version "
            f"{photos.id} ({', '.join(photos.classes) or 'none'})"
        )
    return classes


def _render_to_store(
    ws: Workspace, refs: PhotoRefs, cfg: PhotoTransformConfig, channels: int, workers: int, progress: bool
) -> str:
    """Decode and fit every photo at `refs` into one .npy blob, written batch by batch to a file and
    hashed on the way (`put_array_chunks`), so memory holds a batch, not the rendered set (224 px
    photos take 150 kB each). The bytes are exactly `np.save`'s, so the blob, and the dataset id, are
    those `put_array` gives the same pixels. Returns the blob's sha256."""

    def batches() -> Iterator[np.ndarray]:
        done = 0
        with _bar(progress, len(refs), "rendering photos") as advance:
            n = default_workers(spare=0) if workers < 0 else workers
            for xb, idx in fit_batches(ws.object_root, refs, cfg, channels, batch_size=64, workers=n):
                assert idx[0] == done and len(idx) == idx[-1] - done + 1  # in order: written as it comes
                done += len(idx)
                advance(len(idx))
                yield xb  # (B, C, H, W) uint8

    return put_array_chunks(ws, np.dtype(np.uint8), (len(refs), channels, *cfg.size), batches())


def transform_of(preprocess: dict[str, Any]) -> PhotoTransformConfig | None:
    """The photo transform a model or dataset records in its preprocessing; None for array data.

    >>> transform_of({"scale": 1 / 255, "mean": [0.5], "std": [0.5]}) is None
    True
    """
    d = preprocess.get("photo")
    if d is None:
        return None
    cfg = config_from_dict(d)
    if not isinstance(cfg, PhotoTransformConfig):
        raise BadInput(f"preprocessing names a {d.get('type')!r} where a PhotoTransformConfig belongs")
    return cfg


def photo_refs(data: Dataset) -> PhotoRefs | None:
    """Where each sample of a rendered dataset lies in the shards, in dataset order (columns, mapped
    from the store where it is local; item i is a (shard, offset, size, sha256) tuple); None if not
    rendered from photos."""
    info = data.manifest.get("photos")
    ws = data.workspace
    if not info or ws is None:
        return None
    return PhotoRefs.load(ws, info)


def photo_loader(
    data: Dataset,
    indices: np.ndarray,
    *,
    batch_size: int,
    workers: int,
    seed: int,
    batch_sampler: Any = None,
) -> tuple[PhotoSamples, Any] | None:
    """A shuffled DataLoader of augmented crops of `data`'s samples at `indices` (global indices), or
    None when `data` was not rendered from photos. Items are (float32 (C, H, W), position in `indices`).
    Before each epoch set ``samples.epoch`` and reseed ``loader.generator`` for fresh, reproducible
    crops and order (the run then resumes exactly from any epoch). A `batch_sampler` (of positions in
    `indices`) replaces the shuffle: `train` passes one that gives each DDP rank its share."""
    refs = photo_refs(data)
    if refs is None or data.workspace is None:
        return None
    cfg = transform_of(data.preprocess)
    assert cfg is not None  # rendered datasets record their transform
    samples = PhotoSamples(data.workspace.object_root, refs.take(indices), cfg, data.input_shape[0], "train")
    samples.seed = seed
    n_workers = default_workers() if workers < 0 else workers
    return samples, _loader(samples, batch_size, n_workers, True, seed, batch_sampler)


def pixel_batches(
    data: Dataset, rows: np.ndarray, *, batch_size: int, workers: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """`data`'s images at `rows`, batch by batch in that order: (uint8 (B, C, H, W), their rows (B,)).

    A version rendered from photos is decoded from the original bytes in the shards by `workers`
    processes (`fit_batches`: the rendered pixels, bit for bit) without touching the rendered array;
    any other is sliced from its images. Either way only a batch is held, however large the version,
    so `eval` and `predict` take memory by the batch, not by the dataset.
    """
    refs = photo_refs(data)
    if refs is None or data.workspace is None:
        for i in range(0, len(rows), batch_size):
            at = rows[i : i + batch_size]  # (B,)
            yield read_rows(data.x, at), at  # a copy of this batch only
        return
    transform = transform_of(data.preprocess)
    assert transform is not None  # rendered datasets record their transform
    mine = refs.take(rows)  # (B,) positions into the mapped refs, no copy of them
    channels = data.input_shape[0]
    for xb, pos in fit_batches(
        data.workspace.object_root, mine, transform, channels, batch_size=batch_size, workers=workers
    ):
        yield xb, rows[pos]  # (B, C, H, W) uint8, (B,) dataset rows


def _bar(enabled: bool, total: int, what: str) -> Any:

    @contextlib.contextmanager
    def cm() -> Iterator[Any]:
        if not enabled:
            yield lambda n: None
            return
        from rich.console import Console
        from rich.progress import Progress

        with Progress(console=Console(stderr=True)) as bar:
            task = bar.add_task(what, total=total)
            yield lambda n: bar.update(task, advance=n)

    return cm()
