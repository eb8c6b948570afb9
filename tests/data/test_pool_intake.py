"""Unlabeled items into pools: rendered photo versions keep their unlabelled photos, a folder of
images joins a pool shaped like a dataset's or a model's input (as the server shapes an upload),
de-duplicated by pixels with its files in the lineage; diff, duplicates and provenance see the pool."""

from __future__ import annotations

import io
import json
import os
import threading

import numpy as np
import pytest
from dmtest import dm_main
from PIL import Image

from datamoat.data import intake
from datamoat.data.dataset import POOL, SPLITS, load_dataset
from datamoat.data.duplicates import near_duplicates
from datamoat.data.intake import PoolConfig, PoolTarget, pool_from_folder, pool_target, provenance, read_folder
from datamoat.data.photo_render import photo_loader, photo_refs, render_photos
from datamoat.data.photo_transforms import PhotoTransformConfig, decode, fit
from datamoat.data.photos import PhotoImportConfig, import_photos
from datamoat.data.pool import label_rows, origins, pool_rows, with_pool
from datamoat.data.versions import apply_fixes, diff, merge
from datamoat.errors import BadInput, NotFound
from datamoat.inference.inputs import parse_image


def _png(path, arr) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path.read_bytes()


def _photos(root, labelled=4, unlabelled=3):
    rng = np.random.default_rng(0)
    for i in range(labelled):
        for c in ("a", "b"):
            _png(root / c / f"{i}.png", rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8))
    for i in range(unlabelled):
        _png(root / "unlabeled" / f"{i}.png", rng.integers(0, 255, (30, 18 + i, 3), dtype=np.uint8))


def test_class_subfolders_and_an_unlabeled_one_render_to_one_version_with_a_pool(ws, tmp_path):
    _photos(tmp_path / "site")
    v = import_photos(ws, tmp_path / "site", PhotoImportConfig(val_fraction=0, test_fraction=0.25))
    assert v.classes == ["a", "b"] and v.report["unlabeled"] == 3 and v.report["imported"] == 11
    ds = render_photos(ws, v, PhotoTransformConfig(size=(16, 16)), workers=0)
    rows = pool_rows(ds)
    assert len(ds.y) == 11 and len(rows) == 3 and (ds.y[rows] == -1).all() and (ds.split[rows] == POOL).all()
    assert sum(len(ds.subset(s)[1]) for s in SPLITS) == 8 and ds.stats()["unlabeled"] == 3
    assert len(photo_refs(ds)) == 11  # every row, the pool's too, keeps its original bytes
    index = {r["sha256"]: r for r in v.index}
    for i, sha in enumerate(photo_refs(ds).ids(np.arange(11))):  # rows in index order, labels by name
        assert (ds.classes[ds.y[i]] if ds.y[i] >= 0 else None) == index[sha]["label"]
    # Without the pool the version is what rendering gave before pools existed.
    old = render_photos(ws, v, PhotoTransformConfig(size=(16, 16)), workers=0, pool=False)
    assert len(old.y) == 8 and (old.y >= 0).all() and len(photo_refs(old)) == 8
    # Labelled pool rows keep their originals, so training streams fresh crops of them.
    labelled = label_rows(ws, ds, rows[:2], np.array([0, 1]), origin="human", actor="ana")
    assert photo_refs(labelled) == photo_refs(ds)
    samples, _ = photo_loader(
        labelled, np.flatnonzero(labelled.split == SPLITS["train"]), batch_size=4, workers=0, seed=0
    )
    assert len(samples) == int((labelled.split == SPLITS["train"]).sum()) and samples[0][0].shape == (3, 16, 16)
    # Training streams the labelled rows' crops and passes the pool by.
    from datamoat.models import new_model
    from datamoat.train import TrainConfig, train

    cfg = TrainConfig(epochs=1, batch_size=4, threads=1, workers=0, patience=0)
    model = train(new_model("mlp", labelled), labelled, cfg, progress=False)
    assert model.history["curve"][0]["train_loss"] > 0
    # "" turns the convention off: the folder is then a class like any other.
    v2 = import_photos(ws, tmp_path / "site", PhotoImportConfig(test_fraction=0.25, unlabeled_folder=""))
    assert v2.classes == ["a", "b", "unlabeled"] and v2.report["unlabeled"] == 0


def test_a_version_without_unlabelled_photos_renders_as_it_did(photo_world):
    w = photo_world
    again = render_photos(w.ws, w.photos, PhotoTransformConfig(size=(32, 32)), workers=0, pool=False)
    assert again.id == w.ds.id and not pool_rows(w.ds).size


def test_a_manifest_with_empty_labels_and_classes_named_at_render(ws, tmp_path):
    rng = np.random.default_rng(1)
    lines = ["path,label"]
    for i in range(9):
        _png(tmp_path / f"{i}.png", rng.integers(0, 255, (12, 12, 3), dtype=np.uint8))
        lines.append(f"{i}.png,{['cat', 'dog', ''][i % 3]}")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    v = import_photos(ws, tmp_path / "m.csv", PhotoImportConfig(val_fraction=0, test_fraction=0.34))
    ds = render_photos(ws, v, PhotoTransformConfig(size=(8, 8)), workers=0, classes=["bird", "cat", "dog"])
    assert ds.classes == ["bird", "cat", "dog"] and len(pool_rows(ds)) == 3
    names = {r["sha256"]: r["label"] for r in v.index}
    got = [ds.classes[k] if k >= 0 else None for k in ds.y]
    assert got == [names[s] for s in photo_refs(ds).ids(np.arange(9))]
    with pytest.raises(BadInput, match="holding every class"):
        render_photos(ws, v, PhotoTransformConfig(size=(8, 8)), workers=0, classes=["cat", "bird"])


def _folder(tmp_path, digits):
    """A folder as a user has one: images of any size and mode, a repeat, one already in digits,
    a truncated PNG and a text file."""
    root = tmp_path / "site-7"
    rng = np.random.default_rng(2)
    files = {
        "big.png": _png(root / "big.png", rng.integers(0, 255, (30, 20, 3), dtype=np.uint8)),
        "small.png": _png(root / "small.png", rng.integers(0, 255, (8, 8), dtype=np.uint8)),
        "sub/photo.jpg": b"",
        "sub/again.png": b"",
        "sub/known.png": _png(root / "sub" / "known.png", digits.x[0, 0]),
    }
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(buf, "JPEG")
    (root / "sub" / "photo.jpg").write_bytes(buf.getvalue())
    files["sub/photo.jpg"] = buf.getvalue()
    (root / "sub" / "again.png").write_bytes(files["big.png"])
    files["sub/again.png"] = files["big.png"]
    (root / "broken.png").write_bytes(files["big.png"][:60])
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"never read")
    return root, files


def test_a_folder_joins_a_dataset_as_the_server_shapes_uploads_without_repeats(ws, digits, tmp_path, monkeypatch):
    root, files = _folder(tmp_path, digits)
    grown, report = pool_from_folder(ws, root, into=digits)
    assert report["added"] == 3 and report["duplicates"] == 2 and report["unlabeled"] == 3
    assert sorted(s["path"] for s in report["skipped"]) == ["broken.png", "notes.txt"]
    assert all(s["reason"] for s in report["skipped"])
    rows = pool_rows(grown)
    assert rows.tolist() == list(range(len(digits.y), len(digits.y) + 3))
    src = json.loads(json.dumps(grown.workspace.resolve("datasets", grown.id)["source"]))
    got = src["from"]
    assert got["paths"] == ["big.png", "small.png", "sub/photo.jpg"] and got["first_row"] == len(digits.y)
    assert json.loads(ws.get_bytes(got["paths_sha256"])) == got["paths"] and src["parent_id"] == digits.id
    for row, path in zip(rows, got["paths"]):  # exactly the server's pixels for the same upload
        served = parse_image(files[path], 1 << 24)((1, 8, 8), None)[0]  # (1, 8, 8) float32
        assert np.array_equal(grown.x[row], served.astype(np.uint8))
    assert np.array_equal(grown.x[: len(digits.y)], digits.x) and grown.preprocess == digits.preprocess
    with pytest.raises(BadInput, match="already in"):  # the same folder again adds nothing
        pool_from_folder(ws, root, into=grown)
    monkeypatch.setattr(intake, "MAX_INLINE", 2)  # a long list stays out of the catalog row, in its blob
    alone, _ = pool_from_folder(ws, root, like=PoolTarget.of(digits))
    src = ws.resolve("datasets", alone.id)["source"]
    assert "paths" not in src and intake.lineage_keys(ws, src, "paths") == [
        *got["paths"][:2],
        "sub/known.png",
        got["paths"][2],
    ]
    with pytest.raises(BadInput, match="broken.png"):
        pool_from_folder(ws, root, into=digits, config=PoolConfig(strict=True))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes")
def test_a_named_pipe_in_the_folder_is_skipped_not_waited_on(ws, digits, tmp_path):
    rng = np.random.default_rng(3)
    for i in range(2):
        _png(tmp_path / "in" / f"{i}.png", rng.integers(0, 255, (8, 8), dtype=np.uint8))
    os.mkfifo(tmp_path / "in" / "pipe.png")  # opened for reading, it waits for a writer
    got: list = []
    t = threading.Thread(target=lambda: got.append(pool_from_folder(ws, tmp_path / "in", into=digits)), daemon=True)
    t.start()
    t.join(timeout=60)
    assert got, "the pool intake hung on a named pipe"
    _, report = got[0]
    assert report["added"] == 2
    assert [(s["path"], "not a regular file" in s["reason"]) for s in report["skipped"]] == [("pipe.png", True)]


def test_a_pool_of_its_own_takes_a_models_or_a_photo_datasets_input(ws, digits, tmp_path, photo_world):
    from datamoat.models import new_model, save_model

    root, files = _folder(tmp_path, digits)
    model = save_model(ws, new_model("mlp", digits), name="tiny")
    target = pool_target(ws, "tiny")
    assert (target.kind, target.input_shape, target.classes) == ("model", (1, 8, 8), digits.classes)
    pool, report = pool_from_folder(ws, root, like=target, name="site-7")
    assert pool.name == "site-7" and (pool.split == POOL).all() and len(pool.y) == 4  # digits' image is new here
    assert pool.preprocess == model.preprocess and pool.classes == digits.classes
    assert pool_target(ws, digits.id).kind == "dataset"
    # A photo model's pool goes through its transform's geometry, as the server's photo path does.
    w = photo_world
    photo = PoolTarget.of(w.ds)
    x, paths, skipped = read_folder(root, photo)
    cfg = PhotoTransformConfig(**{k: v for k, v in w.ds.preprocess["photo"].items() if k not in ("type", "version")})
    assert x.shape == (5, 3, 32, 32) and len(skipped) == 2
    for xi, path in zip(x, paths):
        assert np.array_equal(xi, fit(decode(files[path], 3), cfg).numpy())


def test_bad_folders_and_targets_are_one_line_errors(ws, digits, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="holds no files"):
        pool_from_folder(ws, tmp_path / "empty", into=digits)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(BadInput, match="no image in .* decodes"):
        pool_from_folder(ws, tmp_path / "junk", into=digits)
    with pytest.raises(NotFound):
        pool_from_folder(ws, tmp_path / "nowhere", into=digits)
    with pytest.raises(NotFound, match="no dataset or model 'ghost'"):
        pool_target(ws, "ghost")
    with pytest.raises(BadInput, match="--into"):
        pool_from_folder(ws, tmp_path / "junk")


def test_the_cli_pools_a_folder_and_shows_provenance(ws, digits, tmp_path, monkeypatch, capsys):
    root, _ = _folder(tmp_path, digits)

    def run(*args):
        return dm_main(monkeypatch, capsys, ws.root, "data", *args, "--json")

    code, out, err = run("pool", str(root), "--into", "digits", "--name", "digits+site7")
    assert code == 0, err
    made = json.loads(out)
    assert made["added"] == 3 and made["name"] == "digits+site7" and len(made["skipped"]) == 2
    code, out, err = run("show", "digits+site7")
    shown = json.loads(out)
    assert shown["unlabeled"] == 3 and shown["provenance"]["splits"]["pool"] == {"unlabeled": 3}
    train = shown["provenance"]["splits"]["train"]
    assert train["origins"] == {"import": train["labelled"], "human": 0, "gate": 0, "model": 0}
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.png").write_bytes(b"\x89PNG broken")
    for args, message in [
        (("pool", str(tmp_path / "empty"), "--into", "digits"), "holds no files"),
        (("pool", str(tmp_path / "junk"), "--into", "digits"), "decodes"),
        (("pool", str(root), "--like", "ghost"), "no dataset or model 'ghost'"),
        (("pool", str(root)), "--into DATASET"),
        (("pool", str(root), "--from-log", "--into", "digits"), "give one source"),
        (("pool", str(root), "--device", "cam", "--into", "digits"), "--from-uploads"),
    ]:
        code, out, err = run(*args)
        assert code == 2 and out == "" and message in err and len(err.strip().splitlines()) == 1, (args, err)


def test_diff_and_duplicates_see_the_pool(ws, digits):
    x_test = digits.subset("test")[0]
    pooled = with_pool(ws, digits, np.concatenate([x_test[:1], digits.x[100:104]]))  # a test image's twin too
    d = diff(ws, digits, pooled)
    assert d["pool"] == {"a": 0, "b": 5, "added": 5, "removed": 0, "unchanged": 0, "labelled": 0}
    assert d["totals"]["added"] == 0 and "pool" not in diff(ws, digits, digits)
    rows = pool_rows(pooled)
    done = label_rows(ws, pooled, rows[1:4], np.array([1, 2, 3]), origin="human", actor="ana")
    d = diff(ws, pooled, done)
    assert d["pool"] == {"a": 5, "b": 2, "added": 0, "removed": 3, "unchanged": 2, "labelled": 3}
    assert d["splits"]["train"]["added"] == 3
    with pytest.raises(BadInput, match="labels pool item"):
        apply_fixes(ws, pooled, [{"index": int(rows[0]), "new_label": 1}])
    assert len(apply_fixes(ws, pooled, [{"index": int(rows[0]), "drop": True}]).y) == len(pooled.y) - 1
    pairs = near_duplicates(pooled, np.flatnonzero(pooled.split == SPLITS["train"]), 0.999, 5000)
    twins = [p for p in pairs if len(digits.y) in (p["a"], p["b"])]  # the pool's copy of a test image
    assert twins and twins[0]["exact"] and not twins[0]["conflict"] and "pool" in twins[0]["splits"]
    assert -1 in twins[0]["labels"]


def test_provenance_counts_labels_by_origin_per_split(ws, digits):
    x, y = digits.subset("val")
    merged = merge(ws, digits, x[:5], y[:5], name="m", source={}, origin=["human"] * 2 + ["gate"] * 3)
    assert origins(merged)[-5:].tolist() == [1, 1, 2, 2, 2]
    assert merged.workspace.resolve("datasets", merged.id)["source"]["added"]["origin"] == {"gate": 3, "human": 2}
    p = provenance(load_dataset(ws, merged.id))
    n = int((digits.split == SPLITS["train"]).sum())
    assert p["splits"]["train"] == {"labelled": n + 5, "origins": {"import": n, "human": 2, "gate": 3, "model": 0}}
    assert p["unlabeled"] == 0 and p["splits"]["val"]["origins"]["human"] == 0
    with pytest.raises(BadInput, match="one of them per new sample"):
        merge(ws, digits, x[:2], y[:2], name="m", source={}, origin=["human"])
    with pytest.raises(BadInput, match="origin must be one of"):
        merge(ws, digits, x[:2], y[:2], name="m", source={}, origin="oracle")
