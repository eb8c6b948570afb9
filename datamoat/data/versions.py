"""New dataset versions from old ones: merge, fix, flip (noise), and diff.

Every verb here takes a `Dataset` and returns a new immutable version whose
catalog row points at its parent (`parent_id`) and whose `source` records
what changed and why, so the lineage of any version can be read back. The
parent is never touched: versions are content-addressed and write-once.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from datamoat.data.dataset import POOL, SPLITS, Dataset, chunk_rows, load_dataset, make_dataset, read_rows
from datamoat.data.photo_index import PhotoRefs, store_rows
from datamoat.data.pool import ORIGINS, origins
from datamoat.errors import BadInput
from datamoat.workspace import Workspace

__all__ = ["merge", "diff", "flip_labels", "apply_fixes", "pixel_hashes"]

_SPLIT_NAMES = {code: name for name, code in SPLITS.items()}


def _derive(
    ws: Workspace,
    base: Dataset,
    x: np.ndarray,
    y: np.ndarray,
    split: np.ndarray,
    *,
    name: str,
    source: dict[str, Any],
    kept: np.ndarray | None = None,
    origin: np.ndarray | None = None,
    x_blob: str | None = None,
) -> Dataset:
    """Store a child version of `base` (same classes, explicit splits, the labels' `origin` codes:
    by default `base`'s, for the rows `kept`). `x_blob`: `x`'s sha256, already in the store.

    A photo dataset's child keeps its preprocessing (the transform), and, when `kept` lists the base
    samples it holds (all of them, in order), where their original bytes lie, so it trains on fresh
    crops too; a merge adds samples that have no original bytes and trains on pixels.
    """
    photo = "photo" in base.preprocess
    photos = None
    if photo and kept is not None and base.manifest.get("photos"):
        refs = PhotoRefs.load(ws, base.manifest["photos"]).take(kept)  # columns, stored chunk by chunk
        photos = {**base.manifest["photos"], **refs.store(ws)}
    return make_dataset(
        ws,
        x,
        y,
        base.classes,
        name=name,
        source={**source, "parent_id": base.id},
        split=np.asarray(split, dtype=np.uint8),
        parent_id=base.id,
        preprocess=dict(base.preprocess) if photo else None,
        photos=photos,
        x_blob=x_blob,
        origin=origin if origin is not None else origins(base)[np.arange(len(y)) if kept is None else kept],
    )


def merge(
    ws: Workspace,
    base: Dataset,
    x_new: np.ndarray,
    y_new: np.ndarray,
    *,
    name: str,
    source: dict[str, Any],
    split: str = "train",
    origin: str | Sequence[str] = "import",
) -> Dataset:
    """`base` plus new samples appended to one split, as a new version.

    `source` says where the samples came from (e.g. accepted feedback ids);
    it is recorded under `source["from"]` with the counts per class, and
    `origin` (one of `datamoat.data.pool.ORIGINS`, or one per new row) per new row.

    >>> v2 = merge(ws, base, x, y, name="digits+fb", source={"feedback_ids": ids})  # doctest: +SKIP
    """
    if split not in SPLITS:
        raise BadInput(f"unknown split {split!r}: choose train, val or test")
    x_new = np.asarray(x_new)
    y_new = np.asarray(y_new, dtype=np.int64).reshape(-1)
    names = [origin] * len(y_new) if isinstance(origin, str) else list(origin)
    if set(names) - set(ORIGINS) or len(names) != len(y_new):
        got = repr(origin) if isinstance(origin, str) else f"{len(names)} origins {sorted(set(map(str, names)))}"
        raise BadInput(f"origin must be one of {', '.join(ORIGINS)}, or one of them per new sample; got {got}")
    if len(y_new) == 0:
        raise BadInput("nothing to merge: give at least one new sample")
    if x_new.dtype != np.uint8 or x_new.shape[1:] != base.x.shape[1:]:
        raise BadInput(
            f"new images are {x_new.dtype} {x_new.shape[1:]} but {base.name} holds uint8 {base.x.shape[1:]}: "
            "convert them to the dataset's shape first"
        )
    if len(x_new) != len(y_new):
        raise BadInput(f"{len(x_new)} new images but {len(y_new)} labels: they must match one to one")
    if y_new.min() < 0 or y_new.max() >= base.num_classes:
        raise BadInput(f"new labels must be in 0..{base.num_classes - 1} (the classes of {base.name})")
    x, x_sha = store_rows(ws, [(base.x, np.arange(len(base.y))), (x_new, np.arange(len(y_new)))])
    y = np.concatenate([base.y, y_new])
    codes = np.concatenate([base.split, np.full(len(y_new), SPLITS[split], np.uint8)])
    added = {
        "samples": int(len(y_new)),
        "split": split,
        "per_class": np.bincount(y_new, minlength=base.num_classes).tolist(),
        "x_sha256": ws.put_array(x_new),
        "y_sha256": ws.put_array(y_new),
        "origin": origin if isinstance(origin, str) else dict(sorted(Counter(names).items())),
    }
    org = np.concatenate([origins(base), np.array([ORIGINS.index(o) for o in names], np.uint8)])
    src = {"kind": "merge", "added": added, "from": source}
    return _derive(ws, base, x, y, codes, name=name, source=src, origin=org, x_blob=x_sha)


def flip_labels(
    ws: Workspace,
    base: Dataset,
    fraction: float,
    seed: int = 0,
    *,
    name: str | None = None,
    pairs: Sequence[tuple[int, int]] | None = None,
) -> tuple[Dataset, np.ndarray]:
    """A noisy copy of `base`: exactly round(fraction * n_train) TRAIN labels
    flipped, each uniformly to one of the other classes. Returns the new
    version and the sorted global indices that were flipped.

    With `pairs` the noise is class-conditional instead, the way real label
    errors concentrate on classes people confuse (Northcutt et al. 2021): in
    every class named in a pair, exactly round(fraction * n) of its n train
    labels flip, each to one of its partners (uniformly, when a class is in
    several pairs); other classes keep their labels.

    >>> noisy, flipped = flip_labels(ws, digits, 0.1, seed=0)  # doctest: +SKIP
    >>> noisy, flipped = flip_labels(ws, fmnist, 0.2, pairs=[(0, 6), (2, 4)])  # doctest: +SKIP
    """
    if not 0 < fraction < 1:
        raise BadInput(f"fraction must be in (0, 1), got {fraction}")
    train_idx = np.flatnonzero(base.split == SPLITS["train"])
    rng = np.random.default_rng(seed)
    y = base.y.copy()
    if pairs is None:
        n_flip = int(round(fraction * len(train_idx)))
        flipped = np.sort(rng.choice(train_idx, size=n_flip, replace=False)) if n_flip else train_idx[:0]
        # Adding 1..K-1 modulo K lands uniformly on every class but the original.
        y[flipped] = (y[flipped] + rng.integers(1, base.num_classes, size=n_flip)) % base.num_classes
        source: dict[str, Any] = {"kind": "flip_labels", "fraction": fraction, "seed": seed}
    else:
        partners = _partners(pairs, base.num_classes)
        chosen = []
        for c in sorted(partners):  # sorted: the same draw whatever order the pairs came in
            idx = train_idx[base.y[train_idx] == c]
            pick = rng.choice(idx, size=int(round(fraction * len(idx))), replace=False)
            y[pick] = np.asarray(partners[c])[rng.integers(0, len(partners[c]), size=len(pick))]
            chosen.append(pick)
        flipped = np.sort(np.concatenate(chosen))
        n_flip = len(flipped)
        pair_list = sorted({tuple(sorted((int(a), int(b)))) for a, b in pairs})
        source = {"kind": "flip_labels", "fraction": fraction, "seed": seed, "pairs": [list(p) for p in pair_list]}
    if n_flip == 0:
        raise BadInput(f"a fraction of {fraction} of {len(train_idx)} train samples flips none: raise the fraction")
    source.update(flipped=n_flip, flipped_sha256=ws.put_array(flipped))
    tag = "pairnoisy" if pairs is not None else "noisy"
    name = name or f"{base.name}-{tag}{round(fraction * 100)}"
    all_kept = np.arange(len(y))
    x_sha = base.manifest["blobs"]["x"]  # the same images: the child names the parent's blob, nothing is copied
    child = _derive(ws, base, base.x, y, base.split, name=name, source=source, kept=all_kept, x_blob=x_sha)
    return child, flipped


def _partners(pairs: Sequence[tuple[int, int]], num_classes: int) -> dict[int, list[int]]:
    """Each class named in `pairs` -> the sorted classes it is paired with."""
    out: dict[int, set[int]] = defaultdict(set)
    for pair in pairs:
        if len(pair) != 2:
            raise BadInput(f"a pair names two classes, got {pair!r}")
        a, b = int(pair[0]), int(pair[1])
        if a == b or not (0 <= a < num_classes and 0 <= b < num_classes):
            raise BadInput(f"pair ({a}, {b}) must name two different classes in 0..{num_classes - 1}")
        out[a].add(b)
        out[b].add(a)
    if not out:
        raise BadInput("pairs is empty: name at least one pair of classes, or pass pairs=None for uniform noise")
    return {c: sorted(p) for c, p in out.items()}


def apply_fixes(
    ws: Workspace,
    base: Dataset,
    fixes: list[dict[str, Any]],
    *,
    name: str | None = None,
    source: dict[str, Any] | None = None,
) -> Dataset:
    """Apply `fixes` (``{"index": i, "new_label": k}`` or ``{"index": i,
    "drop": true}``, global indices) as a new version; `base` stays as it was.

    >>> fixed = apply_fixes(ws, noisy, [{"index": 3, "new_label": 1}, {"index": 9, "drop": True}])  # doctest: +SKIP
    """
    if not fixes:
        raise BadInput("no fixes to apply: the issues file is empty or --min-confidence filtered out everything")
    n, k = len(base.y), base.num_classes
    y = base.y.copy()
    keep = np.ones(n, dtype=bool)
    seen: set[int] = set()
    relabelled = 0
    for i, fix in enumerate(fixes):
        idx = fix.get("index")
        if not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx < n:
            raise BadInput(
                f"fix #{i} names index {idx!r} but {base.name} ({base.id}) has samples 0..{n - 1}: "
                "use indices from `datamoat data issues` on this version"
            )
        if idx in seen:
            raise BadInput(f"fix #{i} names index {idx} a second time: give one fix per sample")
        seen.add(idx)
        if fix.get("drop"):
            keep[idx] = False
            continue
        label = fix.get("new_label")
        if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < k:
            raise BadInput(f"fix #{i} has new_label {label!r}: give a class index in 0..{k - 1} or drop=true")
        if base.split[idx] == POOL:  # a first label is not a fix: it moves the item out of the pool
            raise BadInput(f"fix #{i} labels pool item {idx}, which has no label to fix: label it with label_rows")
        relabelled += int(label != y[idx])
        y[idx] = label
    dropped = int((~keep).sum())
    if dropped == 0 and relabelled == 0:
        raise BadInput("the fixes change nothing: every new_label equals the current label")
    fixes_sha = ws.put_bytes(json.dumps(fixes, sort_keys=True).encode())
    src = {"kind": "fix", "relabelled": relabelled, "dropped": dropped, "fixes_sha256": fixes_sha, "from": source or {}}
    kept = np.flatnonzero(keep)
    x, x_sha = store_rows(ws, [(base.x, kept)])
    return _derive(
        ws, base, x, y[keep], base.split[keep], name=name or f"{base.name}-fixed", source=src, kept=kept, x_blob=x_sha
    )


def pixel_hashes(x: np.ndarray, rows: np.ndarray | None = None) -> list[str]:
    """sha256 hex digest of each image's pixels (shape and bytes), of `x` or of its `rows`, read in
    chunks (`read_rows`) so a large version is never all in memory.

    >>> x = np.arange(12, dtype=np.uint8).reshape(3, 1, 2, 2)
    >>> every = pixel_hashes(x)
    >>> pixel_hashes(x, np.array([2, 0])) == [every[2], every[0]] and every[0] != every[2]
    True
    """
    at = np.arange(len(x)) if rows is None else rows
    step = chunk_rows(x)
    return [
        hashlib.sha256(img.tobytes()).hexdigest()
        for i in range(0, len(at), step)
        for img in read_rows(x, at[i : i + step])
    ]


def diff(ws: Workspace, a: Dataset | str, b: Dataset | str) -> dict[str, Any]:
    """What changed from version `a` to `b`, per split and per class.

    Samples are matched by the sha256 of their pixels within a split; an image
    that appears several times is matched as a multiset, so duplicates count
    once each. Among unmatched copies of one image, a label present in `a` and
    a different one in `b` is a relabel; what is left is removed (only in `a`)
    or added (only in `b`). A sample that moved split shows as removed from
    one and added to the other. Labels are compared by index; class-name
    changes are listed separately. Where either holds an unlabeled pool
    (`datamoat.data.pool`), ``pool`` counts its items the same way, and
    ``labelled`` those that left `a`'s pool and are labelled in `b`; the
    totals count labelled samples only.

    >>> diff(ws, "digits", "digits-fixed")["totals"]  # doctest: +SKIP
    {'added': 0, 'removed': 0, 'relabelled': 12, 'unchanged': 1785}
    """
    a = load_dataset(ws, a) if isinstance(a, str) else a
    b = load_dataset(ws, b) if isinstance(b, str) else b
    if a.x.shape[1:] != b.x.shape[1:]:
        raise BadInput(f"{a.id} has images {a.x.shape[1:]} and {b.id} has {b.x.shape[1:]}: nothing to match")
    ka, kb = a.num_classes, b.num_classes
    out: dict[str, Any] = {"a": a.id, "b": b.id, "splits": {}, "relabels": []}
    totals = dict.fromkeys(("added", "removed", "relabelled", "unchanged"), 0)
    labelled: list[Counter[str]] = [Counter(), Counter()]  # each side's labelled images, by pixel hash
    for split, code in SPLITS.items():
        groups: dict[str, list[list[int]]] = defaultdict(lambda: [[], []])
        for side, ds in enumerate((a, b)):
            mask = ds.split == code
            for h, label in zip(pixel_hashes(ds.x, np.flatnonzero(mask)), ds.y[mask].tolist()):
                groups[h][side].append(label)
                labelled[side][h] += 1
        row = {"added": [0] * kb, "removed": [0] * ka, "relabelled_from": [0] * ka, "relabelled_to": [0] * kb}
        moves: dict[tuple[int, int], int] = defaultdict(int)
        unchanged = 0
        for la, lb in groups.values():
            rest_b = list(lb)
            rest_a = []
            for label in la:  # multiset difference, one copy at a time
                if label in rest_b:
                    rest_b.remove(label)
                    unchanged += 1
                else:
                    rest_a.append(label)
            rest_a.sort()
            rest_b.sort()
            pairs = min(len(rest_a), len(rest_b))
            for old, new in zip(rest_a[:pairs], rest_b[:pairs]):
                row["relabelled_from"][old] += 1
                row["relabelled_to"][new] += 1
                moves[(old, new)] += 1
            for old in rest_a[pairs:]:
                row["removed"][old] += 1
            for new in rest_b[pairs:]:
                row["added"][new] += 1
        counts = {
            "added": sum(row["added"]),
            "removed": sum(row["removed"]),
            "relabelled": sum(row["relabelled_from"]),
            "unchanged": unchanged,
        }
        for key, val in counts.items():
            totals[key] += val
        out["splits"][split] = {**counts, "per_class": row}
        out["relabels"] += [
            {"split": split, "from": int(o), "to": int(n), "count": c} for (o, n), c in sorted(moves.items())
        ]
    out["totals"] = totals
    if (a.split == POOL).any() or (b.split == POOL).any():
        pa, pb = (Counter(pixel_hashes(ds.x, np.flatnonzero(ds.split == POOL))) for ds in (a, b))
        left = pa - pb  # unlabeled in a, not in b's pool
        out["pool"] = {
            "a": pa.total(),
            "b": pb.total(),
            "added": (pb - pa).total(),
            "removed": left.total(),
            "unchanged": (pa & pb).total(),
            "labelled": (left & (labelled[1] - labelled[0])).total(),
        }
    changes = []
    for i in range(max(ka, kb)):
        name_a = a.classes[i] if i < ka else None
        name_b = b.classes[i] if i < kb else None
        if name_a != name_b:
            changes.append({"index": i, "a": name_a, "b": name_b})
    out["classes"] = {"a": a.classes, "b": b.classes, "changes": changes}
    return out
