"""`predict`: every sample's prediction, streamed into a Parquet file.

`evaluate` sums a split up; `predict` keeps the rows: each sample's dataset index, a stable id,
split, true label (null for an unlabeled pool item, whose split is "pool": `datamoat.data.pool`),
predicted class, confidence and top-k classes, so predictions can be joined,
filtered and audited with any Parquet reader (pandas, Polars, DuckDB, Spark).

It streams, so memory follows `batch_size`, not the dataset. A dataset rendered from photos is
read from the original bytes in the workspace's shards, decoded in `workers` DataLoader processes
through the deterministic geometry the render applied (`pixel_batches`, as the render reads them): the pixels,
and so the rows, are the rendered ones. Other datasets are sliced from `data.x`. Each batch is one
Parquet row group, written to a temp file beside the output and renamed into place at the end
(`atomic_path`), so a crash never leaves half a file under the output's name.

On several processes (`predict --nproc N`, or any torchrun group `datamoat.train.distributed`
joined), global batch j is predicted by rank j mod N, so the ranks share the work to within a batch
and each decodes only its own photos. Each step, rank 0 gathers the ranks' batches and writes them
in order: the file is the one a single process writes, row for row and value for value, and no
rank needs to see another's disk, so it works across machines too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamoat.configs import Config, check, check_choice
from datamoat.data.dataset import POOL, SPLITS, Dataset, load_dataset
from datamoat.data.photo_render import photo_refs, pixel_batches
from datamoat.errors import BadInput
from datamoat.evaluate.metrics import check_model_fits
from datamoat.models.model import Model, load_model
from datamoat.workspace import Workspace, atomic_path

__all__ = [
    "PredictConfig",
    "predict",
    "iter_predictions",
    "predict_in_workspace",
    "predictions_schema",
    "rank_rows",
    "check_output",
]

_SPLIT_NAMES = np.array([*SPLITS, "pool"])  # split code -> name; the codes are 0, 1, 2 and POOL (3) in order
_SPLIT_CODES = {**SPLITS, "pool": POOL}
_DEFAULT_TOP_K = 5


@dataclasses.dataclass
class PredictConfig(Config):
    """Which samples to predict, in what batches, with how many of the likeliest classes each.

    `top_k` None keeps the 5 likeliest classes (all of them when there are fewer); `workers` are
    the photo decode processes (-1: every core but one, 0: decode in this process), unused for
    datasets that were not rendered from photos.
    """

    split: str = "all"
    batch_size: int = 256
    top_k: int | None = None
    workers: int = -1
    device: str = "auto"  # auto: CUDA, then MPS, then the CPU; always fp32

    def validate(self) -> None:
        from datamoat.train.device import DEVICES

        check_choice("split", self.split, ("all", *_SPLIT_CODES))
        check_choice("device", self.device, DEVICES)
        check(self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}")
        check(self.top_k is None or self.top_k >= 1, f"top_k must be at least 1, got {self.top_k}")
        check(self.workers >= -1, "workers must be >= -1 (-1: every core but one, 0: decode in this process)")


def predictions_schema(metadata: dict[str, str] | None = None) -> Any:
    """The Arrow schema of a predictions file; `metadata` becomes its key-value metadata.

    >>> [f.name for f in predictions_schema()]
    ['index', 'id', 'split', 'label', 'predicted', 'predicted_label', 'confidence', 'top_k']
    """
    import pyarrow as pa

    entry = pa.struct([("label", pa.string()), ("probability", pa.float32())])
    return pa.schema(
        [
            ("index", pa.int64()),  # the sample's row in its dataset
            ("id", pa.string()),  # a photo's sha256, else "<dataset id>:<index>"
            ("split", pa.string()),
            ("label", pa.int64()),  # the true class index; null where there is none
            ("predicted", pa.int64()),
            ("predicted_label", pa.string()),
            ("confidence", pa.float32()),  # the top probability
            ("top_k", pa.list_(entry)),  # most probable first
        ],
        metadata=metadata,
    )


def _plan(model: Model, data: Dataset, config: PredictConfig | None) -> tuple[PredictConfig, np.ndarray]:
    """The config with `top_k` resolved, and the dataset rows to predict; refuses what cannot run."""
    cfg = config or PredictConfig()
    check_model_fits(model, data, "predict")
    k = len(data.classes)
    top_k = min(_DEFAULT_TOP_K, k) if cfg.top_k is None else cfg.top_k
    check(top_k <= k, f"top_k {top_k} is more than the {k} classes: give a top-k in 1..{k}")
    rows = np.arange(len(data.y)) if cfg.split == "all" else np.flatnonzero(data.split == _SPLIT_CODES[cfg.split])
    if len(rows) == 0:
        raise BadInput(f"dataset {data.name} has no {cfg.split} samples: predict another split (--split)")
    return dataclasses.replace(cfg, top_k=top_k), rows


def _batches(model: Model, data: Dataset, cfg: PredictConfig, rows: np.ndarray) -> Generator[Any, None, None]:
    import pyarrow as pa

    assert cfg.top_k is not None  # resolved by _plan
    schema = predictions_schema()
    classes = np.asarray(data.classes, dtype=object)
    from datamoat.train.device import resolve_device
    from datamoat.train.distributed import local_device

    refs = photo_refs(data)  # None unless rendered from photos in a workspace
    with model.placed(local_device(resolve_device(cfg.device))) as dev:
        for x, at in pixel_batches(data, rows, batch_size=cfg.batch_size, workers=cfg.workers):
            logits = torch.from_numpy(model.logits(x, batch_size=len(x), device=dev))  # (B, K)
            probs = torch.softmax(logits.double(), dim=1).numpy()  # (B, K), float64 as `evaluate` does
            # Stable, so a tie goes to the lower class, as argmax's does: top_k[0] is the prediction.
            order = np.argsort(-probs, axis=1, kind="stable")[:, : cfg.top_k]  # (B, k)
            top_p = np.take_along_axis(probs, order, 1).astype(np.float32)  # (B, k)
            pred = order[:, 0]  # (B,)
            entries = pa.StructArray.from_arrays(
                [pa.array(classes[order.ravel()], pa.string()), pa.array(top_p.ravel())],
                names=["label", "probability"],
            )
            offsets = pa.array(np.arange(0, len(x) * cfg.top_k + 1, cfg.top_k, dtype=np.int32))  # (B + 1,)
            ids = refs.ids(at) if refs is not None else [f"{data.id}:{int(i)}" for i in at]
            columns = [
                pa.array(at.astype(np.int64)),
                pa.array(ids, pa.string()),
                pa.array(_SPLIT_NAMES[data.split[at]], pa.string()),
                pa.array(data.y[at].astype(np.int64), mask=data.y[at] < 0),  # no label yet: null
                pa.array(pred.astype(np.int64)),
                pa.array(classes[pred], pa.string()),
                pa.array(np.ascontiguousarray(top_p[:, 0])),
                pa.ListArray.from_arrays(offsets, entries),
            ]
            yield pa.RecordBatch.from_arrays(columns, schema=schema)


def rank_rows(rows: np.ndarray, batch_size: int, rank: int, world: int) -> np.ndarray:
    """The rows of the global batches rank `rank` of `world` predicts: batch j of `rows` (in
    `batch_size` pieces) goes to rank j mod `world`; in order, so they batch as they did globally.

    >>> rank_rows(np.arange(10), 3, 1, 2).tolist()  # batches [0 1 2] [3 4 5] [6 7 8] [9]
    [3, 4, 5, 9]
    """
    starts = np.arange(rank * batch_size, len(rows), world * batch_size)  # this rank's batches' first rows
    return np.concatenate([rows[i : i + batch_size] for i in starts]) if len(starts) else rows[:0]


def iter_predictions(model: Model, data: Dataset, config: PredictConfig | None = None) -> Iterator[Any]:
    """The predictions of `model` on `data` as pyarrow RecordBatches of `predictions_schema`, one per
    batch; bad input is refused here, before the first batch is asked for.

    >>> from datamoat.data import import_digits
    >>> from datamoat.models import new_model
    >>> ds = import_digits(Workspace.init("/tmp/dm-doc"))
    >>> batches = iter_predictions(new_model("mlp", ds), ds, PredictConfig(split="val", top_k=3))
    >>> sum(b.num_rows for b in batches) == int((ds.split == 1).sum())
    True
    """
    cfg, rows = _plan(model, data, config)
    return _batches(model, data, cfg, rows)


def check_output(output: Path, overwrite: bool) -> None:
    """Refuse an output `predict` cannot write: not .parquet, a folder, or a file there unless `overwrite`.

    >>> check_output(Path("/tmp/dm-doc/new.parquet"), overwrite=False)
    """
    if output.suffix.lower() != ".parquet":
        raise BadInput(f"the output {output} must end in .parquet: predictions are written as Parquet")
    if output.is_dir():
        raise BadInput(f"the output {output} is a folder: give a file path ending in .parquet")
    if output.exists() and not overwrite:
        raise BadInput(f"{output} already exists: choose another path, or overwrite it (--overwrite)")


def predict(
    model: Model, data: Dataset, output: str | Path, config: PredictConfig | None = None, *, overwrite: bool = False
) -> Path:
    """Write the predictions of `model` on `data` to the Parquet file `output` (see the module); returns it.

    The file's key-value metadata holds ``datamoat.model_id``, ``datamoat.dataset_id``,
    ``datamoat.classes`` (JSON) and ``datamoat.predict_config`` (the config, `top_k` resolved).
    An existing `output` is refused unless `overwrite`. In a torchrun group every rank predicts its
    share and rank 0 alone writes `output` (see the module).

    >>> from datamoat.data import import_digits
    >>> from datamoat.models import new_model
    >>> ds = import_digits(Workspace.init("/tmp/dm-doc"))
    >>> out = predict(new_model("mlp", ds), ds, "/tmp/dm-doc/p.parquet", overwrite=True)
    >>> import pyarrow.parquet as pq; pq.ParquetFile(out).metadata.num_rows == len(ds.y)
    True
    """
    import pyarrow.parquet as pq

    output = Path(output)
    check_output(output, overwrite)
    cfg, rows = _plan(model, data, config)
    metadata = {
        "datamoat.model_id": model.id or "",
        "datamoat.dataset_id": data.id,
        "datamoat.classes": json.dumps(list(data.classes)),
        "datamoat.predict_config": cfg.to_json(),
    }
    from datamoat.train import distributed

    rank, world = distributed.rank_world()
    batches = _batches(model, data, cfg, rank_rows(rows, cfg.batch_size, rank, world))
    steps = -(-len(rows) // (cfg.batch_size * world))  # rank 0's batches, the most any rank has
    with contextlib.ExitStack() as stack:
        stack.callback(batches.close)
        if rank == 0:
            tmp = stack.enter_context(atomic_path(output, overwrite=overwrite))
            w = stack.enter_context(pq.ParquetWriter(str(tmp), predictions_schema(metadata)))
        for _ in range(steps):
            # Alone: [this batch]. Several: global batches j .. j+N-1, in order, on rank 0.
            for batch in distributed.gather(next(batches, None)):
                if batch is not None:
                    w.write_batch(batch)  # one row group each: the writer holds no more than a batch
    return output


def predict_in_workspace(
    ws: Workspace,
    data_ref: str,
    model_ref: str,
    output: str | Path,
    config: PredictConfig | None = None,
    *,
    overwrite: bool = False,
) -> dict[str, Any]:
    """`predict` a cataloged model on a cataloged dataset (ids, id prefixes or names); returns
    {output, rows, model_id, dataset_id, seconds}.

    >>> predict_in_workspace(Workspace.open(), "digits", "digits-mlp", "preds.parquet")  # doctest: +SKIP
    """
    import pyarrow.parquet as pq

    start = time.monotonic()
    output = Path(output)
    check_output(output, overwrite)  # before loading anything
    model = load_model(ws, model_ref)
    data = load_dataset(ws, data_ref)
    predict(model, data, output, config, overwrite=overwrite)
    from datamoat.train.distributed import is_main

    return {
        "output": str(output.resolve()),
        "rows": pq.ParquetFile(output).metadata.num_rows if is_main() else None,  # rank 0 wrote it
        "model_id": model.id,
        "dataset_id": data.id,
        "seconds": round(time.monotonic() - start, 3),
    }
