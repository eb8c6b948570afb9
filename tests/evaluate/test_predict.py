"""`predict`: rows that agree with `evaluate` and `Model.logits`, streamed from the photos' shards,
written in row groups, atomically, never over an existing file unless asked."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq  # noqa: E402
import pytest
import torch
from dmtest import dm_main, dm_ok

from datamoat.configs import config_from_dict
from datamoat.data.dataset import SPLITS
from datamoat.data.photo_render import photo_refs
from datamoat.errors import BadInput
from datamoat.evaluate.metrics import EvalConfig, evaluate
from datamoat.evaluate.predict import PredictConfig, iter_predictions, predict, rank_rows
from datamoat.models import save_model
from datamoat.workspace import Workspace


def read(path) -> dict:
    return pq.read_table(path).to_pydict()


@pytest.mark.parametrize("split", ["val", "test"])
def test_predicted_and_label_give_the_accuracy_evaluate_reports(saved, tmp_path, split):
    _, ds, model = saved
    t = read(predict(model, ds, tmp_path / "p.parquet", PredictConfig(split=split)))
    assert t["index"] == np.flatnonzero(ds.split == SPLITS[split]).tolist()
    assert set(t["split"]) == {split}
    accuracy = float(np.mean(np.asarray(t["predicted"]) == np.asarray(t["label"])))
    assert accuracy == evaluate(model, ds, EvalConfig(split=split)).accuracy


def test_every_row_is_the_argmax_of_the_models_logits(saved, tmp_path):
    _, ds, model = saved
    t = read(predict(model, ds, tmp_path / "p.parquet", PredictConfig(batch_size=100)))
    pred = model.logits(ds.x).argmax(1)  # (N,)
    assert t["index"] == list(range(len(ds.y)))
    assert t["predicted"] == pred.tolist()
    assert t["label"] == ds.y.tolist()
    assert t["predicted_label"] == [ds.classes[p] for p in pred]
    assert t["id"] == [f"{ds.id}:{i}" for i in range(len(ds.y))]
    assert t["split"] == [list(SPLITS)[c] for c in ds.split]


def test_top_k_is_sorted_and_its_probabilities_sum_to_at_most_one(saved, tmp_path):
    _, ds, model = saved
    for k in (3, ds.num_classes):
        t = read(predict(model, ds, tmp_path / f"p{k}.parquet", PredictConfig(split="test", top_k=k)))
        for row, conf, label in zip(t["top_k"], t["confidence"], t["predicted_label"], strict=True):
            p = [e["probability"] for e in row]
            assert len(p) == k and p == sorted(p, reverse=True)
            assert sum(p) <= 1 + 1e-6  # float32 rounding of probabilities that sum to 1 in float64
            assert row[0] == {"label": label, "probability": conf}
        if k == ds.num_classes:
            assert np.allclose([sum(e["probability"] for e in row) for row in t["top_k"]], 1, atol=1e-5)


def test_small_batches_stream_into_several_row_groups_and_the_metadata_says_what_made_them(saved, tmp_path):
    _, ds, model = saved
    out = predict(model, ds, tmp_path / "p.parquet", PredictConfig(split="val", batch_size=64))
    f = pq.ParquetFile(out)
    n = int((ds.split == SPLITS["val"]).sum())
    assert f.metadata.num_rows == n and f.metadata.num_row_groups == -(-n // 64) > 1
    meta = {k.decode(): v.decode() for k, v in f.schema_arrow.metadata.items()}
    assert meta["datamoat.model_id"] == model.id and meta["datamoat.dataset_id"] == ds.id
    assert json.loads(meta["datamoat.classes"]) == ds.classes
    cfg = config_from_dict(json.loads(meta["datamoat.predict_config"]))
    assert cfg == PredictConfig(split="val", batch_size=64, top_k=5)  # the default top-k, resolved
    # The batches the file was written from are what iter_predictions gives a caller.
    batches = list(iter_predictions(model, ds, PredictConfig(split="val", batch_size=64)))
    assert [b.num_rows for b in batches] == [f.metadata.row_group(i).num_rows for i in range(f.num_row_groups)]


@pytest.mark.parametrize("workers", [0, 1])
def test_photos_stream_from_their_shards_to_the_rows_of_the_rendered_pixels(
    photo_world, photo_model, tmp_path, workers
):
    ds = photo_world.ds
    cfg = PredictConfig(batch_size=8, workers=workers)
    in_memory = read(predict(photo_model, dataclasses.replace(ds, workspace=None), tmp_path / "mem.parquet", cfg))
    # No rendered pixels at all: the stream can only have read the photos.
    blank = np.broadcast_to(np.zeros((1, *ds.input_shape), np.uint8), ds.x.shape)
    out = predict(photo_model, dataclasses.replace(ds, x=blank), tmp_path / "stream.parquet", cfg)
    streamed = read(out)
    assert streamed.pop("id") == [ref[3] for ref in photo_refs(ds)]  # each photo's sha256
    assert in_memory.pop("id") == [f"{ds.id}:{i}" for i in range(len(ds.y))]
    assert streamed == in_memory
    assert pq.ParquetFile(out).metadata.num_row_groups == -(-len(ds.y) // 8) > 1


def test_an_existing_output_is_refused_and_a_crash_leaves_no_half_file(saved, tmp_path, monkeypatch):
    _, ds, model = saved
    out = tmp_path / "p.parquet"
    predict(model, ds, out, PredictConfig(split="test"))
    before = out.read_bytes()
    with pytest.raises(BadInput, match="already exists.*--overwrite"):
        predict(model, ds, out, PredictConfig(split="val"))
    assert out.read_bytes() == before

    calls = []

    def dies_on_the_second_batch(x, batch_size=1024, device=None):
        calls.append(len(x))
        if len(calls) == 2:
            raise RuntimeError("killed")
        return type(model).logits(model, x, batch_size, device)

    monkeypatch.setattr(model, "logits", dies_on_the_second_batch)
    with pytest.raises(RuntimeError, match="killed"):
        predict(model, ds, out, PredictConfig(batch_size=50), overwrite=True)
    assert out.read_bytes() == before  # the old file, whole
    calls.clear()
    with pytest.raises(RuntimeError, match="killed"):
        predict(model, ds, tmp_path / "new.parquet", PredictConfig(batch_size=50))
    assert os.listdir(tmp_path) == ["p.parquet"]  # no half file, no temp file
    monkeypatch.undo()
    predict(model, ds, out, PredictConfig(split="val"), overwrite=True)
    assert pq.ParquetFile(out).metadata.num_rows == int((ds.split == SPLITS["val"]).sum())
    assert oct(out.stat().st_mode & 0o777) == "0o600"


def test_bad_input_is_refused_before_anything_is_written(saved, photo_model, tmp_path):
    _, ds, model = saved
    out = tmp_path / "p.parquet"
    bad = [
        (lambda: predict(model, ds, tmp_path / "p.csv"), "must end in .parquet"),
        (lambda: predict(model, ds, tmp_path), "must end in .parquet"),
        (lambda: predict(model, ds, out, PredictConfig(top_k=11)), "top_k 11 is more than the 10 classes"),
        (lambda: PredictConfig(top_k=0), "top_k must be at least 1"),
        (lambda: PredictConfig(split="holdout"), "unknown split 'holdout'"),
        (lambda: PredictConfig(batch_size=0), "batch_size must be at least 1"),
        (lambda: predict(photo_model, ds, out), "predicts classes .* predict on a dataset version"),
        (
            lambda: predict(model, dataclasses.replace(ds, x=np.zeros((len(ds.y), 1, 4, 4), np.uint8)), out),
            r"model expects inputs \(1, 8, 8\)",
        ),
    ]
    for call, message in bad:
        with pytest.raises(BadInput, match=message):
            call()
    assert os.listdir(tmp_path) == []


def test_cli_predict_json_and_its_one_line_errors(saved, tmp_path, monkeypatch, capsys):
    ws, ds, model = saved
    out = tmp_path / "preds.parquet"

    def run(*extra, data="digits", model_ref="digits-mlp", output=out):
        args = ("predict", data, "--model", model_ref, "--output", output, "--split", "test", "--top-k", "3")
        return dm_main(monkeypatch, capsys, ws.root, *args, *extra, "--json")

    code, stdout, err = run()
    assert code == 0, err
    obj = json.loads(stdout)
    assert set(obj) == {"output", "rows", "model_id", "dataset_id", "seconds"}
    n = int((ds.split == SPLITS["test"]).sum())
    assert (obj["output"], obj["rows"], obj["model_id"], obj["dataset_id"]) == (str(out), n, model.id, ds.id)
    assert pq.ParquetFile(out).metadata.num_rows == n

    for code, stdout, err, message in [
        (*run(), "already exists: choose another path, or overwrite it (--overwrite)"),
        (*run("--overwrite", "--split", "holdout"), "unknown split 'holdout'"),
        (*run("--overwrite", "--top-k", "0"), "top_k must be at least 1"),
        (*run("--overwrite", "--top-k", "11"), "top_k 11 is more than the 10 classes"),
        (*run("--overwrite", model_ref="no-such-model"), "no-such-model"),
        (*run("--overwrite", data="no-such-data"), "no-such-data"),
        (*run(output=tmp_path / "preds.csv"), "must end in .parquet"),
        (*run("--overwrite", "--device", "tpu"), "unknown device 'tpu'"),
        *([(*run("--overwrite", "--device", "cuda"), "no CUDA GPU")] if not torch.cuda.is_available() else []),
    ]:
        assert code == 2 and stdout == "", (message, stdout, err)
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert pq.ParquetFile(out).metadata.num_rows == n  # untouched by the refused runs
    code, stdout, err = run("--split", "val", "--overwrite")
    assert code == 0, err
    assert json.loads(stdout)["rows"] == int((ds.split == SPLITS["val"]).sum())


def test_the_device_changes_where_the_model_runs_not_what_it_predicts(saved, tmp_path):
    _, ds, model = saved
    runs = {d: read(predict(model, ds, tmp_path / f"{d}.parquet", PredictConfig(device=d))) for d in ("cpu", "auto")}
    evals = {d: evaluate(model, ds, EvalConfig(split="val", device=d)).to_dict() for d in ("cpu", "auto")}
    assert next(model.net.parameters()).device.type == "cpu"  # the weights end where they started
    if torch.cuda.is_available():  # auto ran on the GPU: fp32 there, so the same classes nearly always
        agree = np.mean(np.asarray(runs["cpu"]["predicted"]) == np.asarray(runs["auto"]["predicted"]))
        assert agree > 0.99 and abs(evals["cpu"]["accuracy"] - evals["auto"]["accuracy"]) < 0.01
    else:  # auto is the CPU here: the very same numbers
        assert runs["cpu"] == runs["auto"] and evals["cpu"] == evals["auto"]
    with pytest.raises(BadInput, match="device"):
        EvalConfig(device="tpu")


def test_pool_rows_are_predicted_with_no_label(saved, tmp_path):
    from datamoat.data.pool import pool_rows, with_pool

    ws, ds, model = saved
    pooled = with_pool(ws, ds, 255 - ds.x[:7])
    t = read(predict(model, pooled, tmp_path / "all.parquet"))
    rows = pool_rows(pooled).tolist()
    assert [t["split"][i] for i in rows] == ["pool"] * 7 and [t["label"][i] for i in rows] == [None] * 7
    assert t["label"][: len(ds.y)] == ds.y.tolist()  # the labelled rows as before
    only = read(predict(model, pooled, tmp_path / "pool.parquet", PredictConfig(split="pool")))
    assert only["index"] == rows and only["predicted"] == [t["predicted"][i] for i in rows]
    assert evaluate(model, pooled, EvalConfig(split="val")).n == int((ds.split == SPLITS["val"]).sum())


@pytest.mark.parametrize(("n", "batch", "world"), [(10, 3, 2), (59, 8, 3), (5, 8, 2), (16, 4, 4)])
def test_ranks_take_every_worlds_batch_and_together_take_each_row_once_in_batches_as_one_process_does(n, batch, world):
    rows = np.arange(100, 100 + n)
    shares = [rank_rows(rows, batch, r, world) for r in range(world)]
    assert sorted(np.concatenate(shares).tolist()) == rows.tolist()
    counts = [-(-len(s) // batch) for s in shares]
    assert max(counts) - min(counts) <= 1 and counts[0] == max(counts)  # rank 0 has the most batches
    one = [rows[i : i + batch].tolist() for i in range(0, n, batch)]  # one process's batches
    for r, share in enumerate(shares):
        assert [share[i : i + batch].tolist() for i in range(0, len(share), batch)] == one[r::world]


def test_three_ranks_write_the_file_one_process_writes(photo_world, photo_model, tmp_path):
    """Uneven shares (8 batches on 3 ranks), photos decoded from the shards by each rank; only rank 0
    writes, and its file holds the very rows and values that one process writes."""
    shutil.copytree(photo_world.ws.root, tmp_path / "ws")
    ws = Workspace.open(tmp_path / "ws")
    save_model(ws, photo_model, name="photo-cnn")
    args = ["predict", photo_world.ds.id, "--model", "photo-cnn", "--batch-size", "8", "--workers", "0", "--json"]
    one = json.loads(dm_ok(ws.root, *args, "--output", tmp_path / "one.parquet").stdout)
    r = dm_ok(ws.root, *args, "--output", tmp_path / "three.parquet", "--nproc", "3")
    three = json.loads(r.stdout)  # exactly one JSON object: only rank 0 speaks
    n = len(photo_world.ds.y)
    assert one["rows"] == three["rows"] == n and -(-n // 8) == 8
    assert pq.read_table(tmp_path / "three.parquet").equals(pq.read_table(tmp_path / "one.parquet"))
    assert pq.ParquetFile(tmp_path / "three.parquet").metadata.num_row_groups == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.parquet", "three.parquet", "ws"]  # no parts left
