"""Photo versions as model inputs: the rendered view, the training stream, and one preprocessing
for training, ONNX, the server and a device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamoat.data.dataset import SPLITS
from datamoat.data.photo_render import PhotoSamples, photo_loader, photo_refs, render_photos, transform_of
from datamoat.data.photo_transforms import PhotoTransformConfig, decode, fit
from datamoat.data.versions import apply_fixes, flip_labels
from datamoat.errors import BadInput
from datamoat.inference.inputs import parse_image


def test_render_holds_every_decodable_photo_once_with_its_label_and_split(photo_world):
    w = photo_world
    assert [s["kind"] for s in w.photos.skipped] == ["corrupt"]
    labelled = [r for r in w.photos.index if r["label"] is not None]
    assert len(w.ds.y) == len(labelled) == len(w.photos.index)
    assert w.ds.x.shape == (len(labelled), 3, 32, 32) and w.ds.x.dtype == np.uint8
    for i, r in enumerate(labelled):  # dataset order is the index order
        assert w.ds.classes[w.ds.y[i]] == r["label"] and w.ds.split[i] == SPLITS[r["split"]]
    assert transform_of(w.ds.preprocess) == PhotoTransformConfig(size=(32, 32))
    assert w.ds.manifest["photos"]["version"] == w.photos.id


def test_render_is_content_addressed_and_a_new_transform_is_a_new_version(photo_world):
    import hashlib
    import io

    w = photo_world
    buf = io.BytesIO()  # streamed to the store, the images are still exactly np.save's bytes
    np.save(buf, np.ascontiguousarray(w.ds.x), allow_pickle=False)
    assert w.ds.manifest["blobs"]["x"] == hashlib.sha256(buf.getvalue()).hexdigest()
    assert not [p for p in w.ws.objects.rglob(".render.*")]  # no temp file left behind
    again = render_photos(w.ws, w.photos, PhotoTransformConfig(size=(32, 32)), workers=1)
    assert again.id == w.ds.id and np.array_equal(again.x, w.ds.x)
    boxed = render_photos(w.ws, w.photos, PhotoTransformConfig(size=(32, 32), resize="letterbox"), workers=0)
    assert boxed.id != w.ds.id and not np.array_equal(boxed.x, w.ds.x)


def test_the_rendered_pixels_are_fit_of_the_decoded_original(photo_world):
    w = photo_world
    cfg = transform_of(w.ds.preprocess)
    refs = photo_refs(w.ds)
    samples = PhotoSamples(w.ws.object_root, refs, cfg, 3, "fit")
    for i in (0, len(refs) // 2, len(refs) - 1):
        assert torch.equal(fit(decode(samples.raw(i)), cfg), torch.from_numpy(np.array(w.ds.x[i])))


def _rotated(w):
    [row] = [r for r in w.photos.index if r["path"].endswith("rotated.jpg")]
    return row, w.photos.read(row["sha256"])


def test_exif_rotation_and_16_bit_photos_reach_the_model_upright_and_in_8_bits(photo_world):
    w = photo_world
    row, data = _rotated(w)
    assert (row["width"], row["height"]) == (150, 90)
    assert tuple(decode(data).shape) == (3, 90, 150)  # displayed orientation, (C, H, W)
    [deep] = [r for r in w.photos.index if r["path"].endswith("deep.png")]
    img = decode(w.photos.read(deep["sha256"]))
    assert img.dtype == torch.uint8 and tuple(img.shape) == (3, 70, 130) and int(img.max()) > 200


def test_one_preprocessing_for_training_the_server_and_a_device(photo_world):
    """The server and a device prepare an upload with `parse_image(...)(shape, photo)`: the same JPEG
    must reach the model as the exact pixels training evaluated with (and rendered)."""
    w = photo_world
    row, data = _rotated(w)
    i = [r["sha256"] for r in w.photos.index].index(row["sha256"])
    served = parse_image(data, 24_000_000)(w.ds.input_shape, w.ds.preprocess["photo"])  # (1, C, H, W) float
    assert served.shape == (1, 3, 32, 32)
    assert np.array_equal(served[0].astype(np.uint8), w.ds.x[i])
    # an array model's path (no transform) squashes instead: the transform is what makes them agree
    squashed = parse_image(data, 24_000_000)(w.ds.input_shape, None)
    assert not np.array_equal(squashed[0].astype(np.uint8), w.ds.x[i])


def test_streamed_crops_are_reproducible_whichever_worker_decodes_them(photo_world):
    w = photo_world
    train = np.flatnonzero(w.ds.split == SPLITS["train"])
    batches = []
    for workers in (0, 2):
        samples, loader = photo_loader(w.ds, train, batch_size=8, workers=workers, seed=3)
        samples.epoch = 1
        loader.generator.manual_seed(11)
        batches.append(next(iter(loader)))
    (xa, ia), (xb, ib) = batches
    assert torch.equal(ia, ib) and torch.equal(xa, xb)
    assert xa.shape == (8, 3, 32, 32) and xa.dtype == torch.float32
    samples.epoch = 2  # another epoch, other crops of the same photos
    again = torch.stack([samples[int(j)][0] for j in ib])
    assert not torch.equal(again, xb)


def test_fixes_and_label_noise_keep_the_originals_and_the_transform(photo_world):
    w = photo_world
    fixed = apply_fixes(w.ws, w.ds, [{"index": 0, "drop": True}, {"index": 1, "new_label": int(w.ds.y[1] + 1) % 4}])
    assert fixed.preprocess == w.ds.preprocess
    assert photo_refs(fixed) == photo_refs(w.ds)[1:]
    noisy, _ = flip_labels(w.ws, w.ds, 0.2, seed=0)
    assert photo_refs(noisy) == photo_refs(w.ds) and noisy.preprocess == w.ds.preprocess


def test_an_unlabelled_version_renders_as_a_pool_once_it_has_class_names(ws, tmp_path):
    from PIL import Image

    from datamoat.data.photos import import_photos
    from datamoat.data.pool import pool_rows

    (tmp_path / "u").mkdir()
    for i in range(3):
        Image.new("RGB", (20 + i, 20), (i, 0, 0)).save(tmp_path / "u" / f"{i}.png")
    v = import_photos(ws, tmp_path / "u")
    with pytest.raises(BadInput, match="name the classes its labels will come from"):
        render_photos(ws, v, PhotoTransformConfig(size=(16, 16)), workers=0)
    with pytest.raises(BadInput, match="no labelled photos"):  # and with the pool left out, nothing is left
        render_photos(ws, v, PhotoTransformConfig(size=(16, 16)), workers=0, pool=False)
    pool = render_photos(ws, v, PhotoTransformConfig(size=(16, 16)), workers=0, classes=["cat", "dog"])
    assert pool.classes == ["cat", "dog"] and pool_rows(pool).tolist() == [0, 1, 2] and (pool.y == -1).all()
    assert len(photo_refs(pool)) == 3  # the originals stay reachable: labelled rows train on fresh crops


def test_a_tampered_shard_is_refused_by_the_render_and_the_training_stream(ws, tmp_path):
    from PIL import Image

    from datamoat.data.photos import import_photos

    for c in ("a", "b"):
        (tmp_path / "p" / c).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (30 + i, 24), (60 * i, 200 if c == "a" else 0, 90)).save(tmp_path / "p" / c / f"{i}.png")
    v = import_photos(ws, tmp_path / "p")
    ds = render_photos(ws, v, PhotoTransformConfig(size=(16, 16)), workers=0)
    shard, offset, size, _ = photo_refs(ds)[0]
    path = ws.object_path(shard)
    path.chmod(0o644)
    blob = bytearray(path.read_bytes())
    blob[offset + size // 2] ^= 0xFF  # one flipped byte inside the first photo's record
    path.write_bytes(bytes(blob))

    samples, _ = photo_loader(ds, np.arange(len(ds.y)), batch_size=4, workers=0, seed=0)
    with pytest.raises(BadInput, match="corrupt in shard"):
        samples[0]
    with pytest.raises(BadInput, match="corrupt"):
        render_photos(ws, v, PhotoTransformConfig(size=(20, 20)), workers=0)


def test_render_takes_the_clis_default_workers(photo_world):
    w = photo_world
    again = render_photos(w.ws, w.photos, transform_of(w.ds.preprocess), workers=-1)  # what `data render` passes
    assert again.id == w.ds.id and np.array_equal(again.x, w.ds.x)


@pytest.mark.parametrize("store", ["file", "memory"])
def test_photos_in_object_storage_import_render_train_and_predict_without_a_local_copy_of_a_shard(
    photo_world, tmp_path, store
):
    import uuid

    import pyarrow.parquet as pq

    from datamoat.data.photos import PhotoImportConfig, import_photos
    from datamoat.evaluate.predict import PredictConfig, predict
    from datamoat.models import load_model, new_model, save_model
    from datamoat.train.loop import TrainConfig, train
    from datamoat.workspace import Workspace

    url = f"file://{tmp_path}/bucket" if store == "file" else f"memory://dm-{uuid.uuid4().hex}"
    ws = Workspace.init(tmp_path / "ws", objects=url)
    photos = import_photos(ws, photo_world.folder, PhotoImportConfig(val_fraction=0.2, test_fraction=0.25))
    assert photos.id == photo_world.photos.id  # the same content, so the same version, wherever it is stored
    ds = render_photos(ws, photos, PhotoTransformConfig(size=(32, 32)), workers=0)
    assert np.array_equal(ds.x, photo_world.ds.x)  # the same pixels, read back through fsspec
    workers = 1 if store == "file" else 0  # a decode worker process reads the file:// store itself
    m = train(new_model("cnn_small", ds), ds, TrainConfig(epochs=1, workers=workers, threads=1), progress=False)
    m = load_model(ws, save_model(ws, m).id)
    out = predict(m, ds, tmp_path / "p.parquet", PredictConfig(workers=workers))
    assert pq.read_table(out).num_rows == len(ds.y)
    shards = {r["shard"] for r in photos.index}
    local = {p.parent.name + p.name for p in (tmp_path / "ws" / "objects").rglob("*") if p.is_file()}
    if store == "file":  # a file:// store is a folder: nothing is copied out of it
        assert local == set()
        assert all((tmp_path / "bucket" / s[:2] / s[2:]).is_file() for s in shards)
    else:  # every blob is in the store; arrays read by row are mapped from checked local copies, shards never
        assert ds.manifest["blobs"]["x"] in local and not local & shards
        assert [p.name for p in (tmp_path / "ws" / "objects").iterdir()] == ["cache"]


def test_training_validates_a_photo_version_from_its_shards_as_on_the_rendered_pixels(photo_world):
    from datamoat.models import new_model
    from datamoat.train.loop import TrainConfig, train

    ds = photo_world.ds
    m = train(new_model("cnn_small", ds), ds, TrainConfig(epochs=1, workers=1, threads=1), progress=False)
    x_val, y_val = ds.subset("val")  # the rendered pixels, which training's validation no longer holds
    assert m.history["val_accuracy"] == float(np.mean(m.logits(x_val).argmax(1) == y_val))


def test_only_shards_read_often_enough_are_read_ahead_into_the_page_cache(tmp_path):
    from datamoat.data.photo_index import REF_DTYPE, PhotoRefs
    from datamoat.data.photo_render import RANDOM_READ_BYTES, warm_shards

    shards = ["aa" * 32, "bb" * 32, "cc" * 32]
    for sh in shards[:2]:
        (tmp_path / sh[:2]).mkdir()
        (tmp_path / sh[:2] / sh[2:]).write_bytes(b"\0" * (4 * RANDOM_READ_BYTES))
    table = np.zeros(9, REF_DTYPE)
    table["shard"] = [0, 0, 0, 0, 0, 1, 1, 1, 2]  # 5 photos of the first, 3 of the second, 1 of a missing one
    refs = PhotoRefs(shards, table)
    assert warm_shards(str(tmp_path), refs) == 4 * RANDOM_READ_BYTES  # the first: 5 reads cost more than it
    assert warm_shards(str(tmp_path), refs.take(np.arange(5, 9))) == 0  # 3 reads of the second cost less
    assert warm_shards(f"file://{tmp_path}", refs) == 0  # a URL store is read by ranges
