import gzip

import numpy as np
import pytest
from dmtest import write_idx
from PIL import Image

from datamoat.data import (
    FASHION_MNIST_DIR,
    import_digits,
    import_fashion_mnist,
    import_folder,
    import_idx,
    load_dataset,
    read_idx,
)
from datamoat.errors import BadInput, NotFound


def test_read_idx_plain_and_gzip(tmp_path, idx_pair):
    imgs, _, x, _ = idx_pair
    assert np.array_equal(read_idx(imgs), x)
    gz = tmp_path / "imgs.gz"
    gz.write_bytes(gzip.compress(imgs.read_bytes()))
    assert np.array_equal(read_idx(gz), x)


@pytest.mark.parametrize("cut", [3, 10, 100])
def test_truncated_idx_is_refused(tmp_path, idx_pair, cut):
    imgs = idx_pair[0]
    bad = tmp_path / "bad"
    bad.write_bytes(imgs.read_bytes()[:-cut] if cut != 3 else imgs.read_bytes()[:cut])
    with pytest.raises(BadInput, match="IDX"):
        read_idx(bad)


def test_corrupt_gzip_is_refused(tmp_path, idx_pair):
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(idx_pair[0].read_bytes())[:200])
    with pytest.raises(BadInput, match="truncated or corrupt gzip"):
        read_idx(bad)


def test_import_idx_is_content_addressed(ws, idx_pair):
    imgs, labels, x, y = idx_pair
    a = import_idx(ws, imgs, labels, classes=["dark", "mid", "bright"], name="a")
    b = import_idx(ws, imgs, labels, classes=["dark", "mid", "bright"], name="b")
    assert a.id == b.id and len(ws.rows("datasets")) == 1
    assert a.x.shape == (60, 1, 6, 6) and a.classes == ["dark", "mid", "bright"]
    loaded = load_dataset(ws, a.id)
    assert np.array_equal(loaded.x, a.x) and np.array_equal(loaded.split, a.split)
    # A different split seed is different content, so a different version.
    assert import_idx(ws, imgs, labels, classes=["dark", "mid", "bright"], seed=1).id != a.id
    with pytest.raises(ValueError):
        loaded.x[0, 0, 0, 0] = 1  # versions are immutable


def test_splits_are_stratified_and_seeded(ws):
    d = import_digits(ws)
    st = d.stats()["splits"]
    assert st["train"]["samples"] + st["val"]["samples"] + st["test"]["samples"] == 1797
    test_share = np.array(st["test"]["per_class"]) / np.bincount(d.y)
    assert np.allclose(test_share, 0.15, atol=0.01)
    assert import_digits(ws, seed=0).id == d.id


@pytest.mark.skipif(
    not FASHION_MNIST_DIR.is_dir(), reason="Fashion-MNIST import: apt-get install dataset-fashion-mnist"
)
def test_fashion_mnist_keeps_official_test_split(ws):
    d = import_fashion_mnist(ws)
    st = d.stats()
    assert st["samples"] == 70000 and st["input_shape"] == [1, 28, 28]
    assert st["splits"]["test"]["samples"] == 10000 and st["splits"]["val"]["samples"] == 6000
    assert d.classes[0] == "T-shirt/top"


def _image_folder(root, n=8, size=(10, 12)):
    rng = np.random.default_rng(0)
    for cls, level in (("cats", 30), ("dogs", 200)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            arr = np.clip(rng.normal(level, 10, size), 0, 255).astype(np.uint8)
            ext = "png" if i % 2 else "jpg"
            Image.fromarray(arr).save(root / cls / f"{i}.{ext}")
    return root


def test_import_folder_png_and_jpeg(ws, tmp_path):
    d = import_folder(ws, _image_folder(tmp_path / "imgs"))
    assert d.classes == ["cats", "dogs"] and d.x.shape == (16, 1, 10, 12)
    assert d.x[d.y == 0].mean() < 100 < d.x[d.y == 1].mean()


def test_corrupt_image_is_refused_and_catalog_untouched(ws, tmp_path):
    root = _image_folder(tmp_path / "imgs")
    (root / "dogs" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(BadInput, match="3.png is truncated or corrupt"):
        import_folder(ws, root)
    assert ws.rows("datasets") == []


def test_bad_inputs(ws, tmp_path, idx_pair):
    imgs, labels, x, y = idx_pair
    with pytest.raises(NotFound, match="does not exist"):
        import_idx(ws, tmp_path / "missing", labels)
    with pytest.raises(NotFound, match="does not exist"):
        import_folder(ws, tmp_path / "missing")
    one = write_idx(tmp_path / "one-class", np.zeros(60, np.uint8))
    with pytest.raises(BadInput, match="single class"):
        import_idx(ws, imgs, one)
    with pytest.raises(BadInput, match="labels out of range"):
        import_idx(ws, imgs, labels, classes=["a", "b"])
    short = write_idx(tmp_path / "short", y[:10])
    with pytest.raises(BadInput, match="60 images but .* 10 labels"):
        import_idx(ws, imgs, short)
    with pytest.raises(NotFound, match="unknown dataset"):
        load_dataset(ws, "deadbeef")
    assert ws.rows("datasets") == []
