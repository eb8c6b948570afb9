"""Photos in a real S3 endpoint: moto's server speaks the S3 API over HTTP on a local port, and s3fs
reaches it exactly as it would reach AWS, with credentials and the endpoint from the standard
environment variables (nothing in the URL or the catalog)."""

from __future__ import annotations

import numpy as np
import pytest

from datamoat.data.photo_render import render_photos
from datamoat.data.photo_transforms import PhotoTransformConfig
from datamoat.data.photos import PhotoImportConfig, import_photos
from datamoat.workspace import Workspace


@pytest.fixture
def s3(monkeypatch):
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": endpoint,
    }.items():
        monkeypatch.setenv(k, v)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="dm-photos")
    yield endpoint
    server.stop()


@pytest.mark.slow
def test_photos_in_an_s3_bucket_import_render_and_train_with_no_local_copy_of_a_shard(photo_world, tmp_path, s3):
    import boto3

    from datamoat.models import new_model
    from datamoat.train.loop import TrainConfig, train

    ws = Workspace.init(tmp_path / "ws", objects="s3://dm-photos/team-a")
    photos = import_photos(ws, photo_world.folder, PhotoImportConfig(val_fraction=0.2, test_fraction=0.25))
    ds = render_photos(ws, photos, PhotoTransformConfig(size=(32, 32)), workers=0)
    assert np.array_equal(ds.x, photo_world.ds.x)
    m = train(new_model("cnn_small", ds), ds, TrainConfig(epochs=1, workers=1, threads=1), progress=False)
    assert m.history["train_samples"] > 0
    keys = {o["Key"] for o in boto3.client("s3", endpoint_url=s3).list_objects_v2(Bucket="dm-photos")["Contents"]}
    shards = {r["shard"] for r in photos.index}
    assert {f"team-a/{s[:2]}/{s[2:]}" for s in shards} <= keys
    # Every blob is in the bucket; the images, read by row, are mapped from a checked local copy; shards never are.
    local = {p.parent.name + p.name for p in (tmp_path / "ws" / "objects").rglob("*") if p.is_file()}
    assert ds.manifest["blobs"]["x"] in local and not local & shards
    assert [p.name for p in (tmp_path / "ws" / "objects").iterdir()] == ["cache"]
    assert "testing" not in (tmp_path / "ws" / "objects.url").read_text()
