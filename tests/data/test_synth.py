"""The synthetic photo benchmark: layout, file validity, balance, reproducibility and that the object is drawn.

Small on purpose (a few dozen images of scikit-learn's 8x8 digits, one core)."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from datamoat.data.synth import SynthConfig, load_fashion_mnist, make_photos, render_photo
from datamoat.errors import BadInput, NotFound

# 3 classes x 8 images (6 train, 2 test), smaller than the defaults so the suite stays fast.
CFG = SynthConfig(n_per_class=8, test_fraction=0.25, classes=(1, 3, 5), min_side=64, max_side=160, seed=7)


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    x = np.round(d.images * (255 / 16)).astype(np.uint8)  # (1797, 8, 8)
    return x, d.target, [str(c) for c in d.target_names]


@pytest.fixture(scope="module")
def made(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("synth") / "photos"
    summary = make_photos(out, CFG, source=digits)
    return out, summary


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def tree(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_layout_and_manifest_match_the_files(made):
    out, summary = made
    rows = manifest(out)
    images = {p for p in tree(out) if p.endswith(".jpg")}
    assert {r["path"] for r in rows} == images and len(rows) == summary["images"] == 24
    assert [r["index"] for r in rows] == list(range(24))
    for r in rows:
        assert r["path"] == f"{r['split']}/{r['label']}_{r['class_name']}/{r['index']:06d}.jpg"
        assert r["seed"] == 7 and r["source"] == "arrays" and r["class_name"] == str(r["label"])
    assert sorted(p.name for p in out.iterdir()) == ["README.txt", "manifest.jsonl", "test", "train"]
    readme = (out / "README.txt").read_text()
    assert "SYNTHETIC" in readme and '"seed": 7' in readme and "1_1, 3_3, 5_5" in readme
    assert summary["bytes"] == sum(len(b) for p, b in tree(out).items() if p.endswith(".jpg"))


def test_every_file_is_an_rgb_jpeg_within_the_size_and_aspect_bounds(made):
    out, _ = made
    ratios = []
    for r in manifest(out):
        with Image.open(out / r["path"]) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            im.load()  # decodes the whole file: a truncated one raises
            w, h = im.size
        assert (w, h) == (r["width"], r["height"])
        assert CFG.min_side <= max(w, h) <= CFG.max_side
        assert CFG.min_aspect <= w / h <= CFG.max_aspect
        assert CFG.min_quality <= r["quality"] <= CFG.max_quality
        ratios.append(w / h)
    assert min(ratios) < 1 < max(ratios)  # both orientations occur


def test_labels_are_balanced_as_configured_and_splits_share_no_source_item(made):
    out, summary = made
    rows = manifest(out)
    for split, n in (("train", 6), ("test", 2)):
        assert summary["counts"][split] == {"1": n, "3": n, "5": n}
        labels = [r["label"] for r in rows if r["split"] == split]
        assert {c: labels.count(c) for c in (1, 3, 5)} == {1: n, 3: n, 5: n}
        for c in ("1_1", "3_3", "5_5"):
            assert len(list((out / split / c).glob("*.jpg"))) == n
    train = {r["source_index"] for r in rows if r["split"] == "train"}
    test = {r["source_index"] for r in rows if r["split"] == "test"}
    assert not train & test


def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(made, digits, tmp_path):
    out, _ = made
    make_photos(tmp_path / "again", CFG, source=digits)
    assert tree(tmp_path / "again") == tree(out)
    make_photos(tmp_path / "other", CFG.replace(seed=8), source=digits)
    other = tree(tmp_path / "other")
    jpgs = [p for p in other if p.endswith(".jpg")]
    assert sum(other[p] != tree(out).get(p) for p in jpgs) == len(jpgs)  # every image differs


def test_the_worker_count_does_not_change_the_output(made, digits, tmp_path):
    out, _ = made
    summary = make_photos(tmp_path / "two", CFG.replace(workers=2), source=digits)
    assert summary["workers"] == 2
    assert tree(tmp_path / "two") == tree(out)


def test_the_object_is_drawn_in_the_saved_files(made, digits):
    out, _ = made
    x = digits[0]
    for r in manifest(out):
        with Image.open(out / r["path"]) as im:
            saved = np.asarray(im, np.int16)  # (H, W, 3) as written, JPEG artefacts included
        item = x[r["source_index"]]
        drawn, info = render_photo(item, r["index"], CFG)
        bare, _ = render_photo(item, r["index"], CFG, draw_object=False)
        x0, y0, x1, y1 = info["bbox"]
        changed = np.zeros(saved.shape[:2], bool)  # (H, W): where the object (or its shadow) changed a pixel a lot
        changed[y0:y1, x0:x1] = np.abs(drawn.astype(np.int16) - bare)[y0:y1, x0:x1].max(axis=2) > 30
        assert changed.mean() > 0.02, r["path"]  # the object covers a visible part of the image
        # There, the file is far from the bare background and close to the drawn image: a file without
        # the object would be the other way round.
        off_bare = np.abs(saved - bare)[changed].mean()
        off_drawn = np.abs(saved - drawn)[changed].mean()
        assert off_bare > 20 and off_drawn < off_bare / 2, (r["path"], off_bare, off_drawn)
        assert np.abs(saved - drawn).mean() < 8  # the file is the rendered image, JPEG aside
    # Dark pixels are transparent: an all-black item leaves the background untouched.
    blank, _ = render_photo(np.zeros((8, 8), np.uint8), 0, CFG)
    assert np.array_equal(blank, render_photo(np.zeros((8, 8), np.uint8), 0, CFG, draw_object=False)[0])


@pytest.mark.parametrize(
    "field, value",
    [
        ("n_per_class", 0),
        ("test_fraction", 1.0),
        ("classes", (1, 1)),
        ("classes", (-1,)),
        ("min_side", 8),
        ("max_side", 50),
        ("min_aspect", 0.1),
        ("max_aspect", 0.5),
        ("min_quality", 0),
        ("max_quality", 101),
        ("min_scale", 0),
        ("max_scale", 1.5),
        ("max_rotation", 200),
        ("photo_fraction", -0.1),
        ("seed", -1),
        ("workers", -1),
    ],
)
def test_invalid_configs_raise_bad_input_naming_the_field(field, value):
    with pytest.raises(BadInput, match=field):
        SynthConfig(**{field: value})


def test_bad_sources_and_classes_are_refused(digits, tmp_path):
    x, y, names = digits
    with pytest.raises(BadInput, match="classes"):
        make_photos(tmp_path / "a", SynthConfig(n_per_class=1, classes=(10,)), source=digits)
    with pytest.raises(BadInput, match="uint8"):
        make_photos(tmp_path / "b", SynthConfig(n_per_class=1), source=(x.astype(float), y, names))
    with pytest.raises(BadInput, match="labels"):
        make_photos(tmp_path / "c", SynthConfig(n_per_class=1), source=(x, y[:-1], names))
    with pytest.raises(BadInput, match="too few"):  # one item cannot feed both splits
        make_photos(tmp_path / "d", SynthConfig(n_per_class=2, test_fraction=0.5), source=(x[:1], y[:1] * 0, ["a"]))
    assert not (tmp_path / "a").exists()  # refused before anything was written
    # (N, 1, h, w) is read like (N, h, w).
    cfg = SynthConfig(n_per_class=2, classes=(0,), max_side=128)
    make_photos(tmp_path / "flat", cfg, source=digits)
    make_photos(tmp_path / "chw", cfg, source=(x[:, None], y, names))
    assert tree(tmp_path / "flat") == tree(tmp_path / "chw")


def test_a_non_empty_folder_is_refused_and_overwrite_replaces_only_a_set(made, digits, tmp_path):
    out, _ = made
    cfg = SynthConfig(n_per_class=1, classes=(2,), max_side=128)
    stray = tmp_path / "mine"
    stray.mkdir()
    (stray / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(BadInput, match="not empty|more than a synthetic"):
            make_photos(stray, cfg, source=digits, overwrite=overwrite)
    assert (stray / "notes.txt").read_text() == "keep me"
    target = tmp_path / "set"
    make_photos(target, CFG, source=digits)
    with pytest.raises(BadInput, match="overwrite=True"):
        make_photos(target, cfg, source=digits)
    make_photos(target, cfg, source=digits, overwrite=True)
    assert [r["label"] for r in manifest(target)] == [2]
    assert {p for p in tree(target) if p.endswith(".jpg")} == {manifest(target)[0]["path"]}  # old images gone


def test_missing_fashion_mnist_is_not_found_with_the_fix(tmp_path):
    with pytest.raises(NotFound, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "absent")
    with pytest.raises(NotFound, match="train-images-idx3-ubyte"):
        load_fashion_mnist(tmp_path)


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="Fashion-MNIST not installed")
def test_fashion_mnist_test_images_come_from_its_test_set(tmp_path):
    src = load_fashion_mnist()
    summary = make_photos(tmp_path / "fm", SynthConfig(n_per_class=2, test_fraction=0.5, classes=(0, 9)), source=src)
    rows = manifest(tmp_path / "fm")
    assert summary["source"] == "fashion-mnist" and summary["counts"]["test"] == {"T-shirt/top": 1, "Ankle boot": 1}
    assert {r["path"].split("/")[1] for r in rows} == {"0_T-shirt_top", "9_Ankle_boot"}
    assert all((r["source_index"] >= 60_000) == (r["split"] == "test") for r in rows)


def test_the_folder_imports_with_classes_in_label_order(made, ws):
    from datamoat.data import import_folder

    out, _ = made
    ds = import_folder(ws, out / "train", size=(32, 32), val=0.0, test=0.0)
    assert ds.classes == ["1_1", "3_3", "5_5"] and ds.x.shape == (18, 3, 32, 32)
    assert np.bincount(ds.y).tolist() == [6, 6, 6]
