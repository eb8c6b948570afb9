import hashlib
import io
import tarfile

import pytest

from datamoat.data.shards import iter_shard, read_record, record, write_shards
from datamoat.errors import BadInput, TooLarge
from datamoat.workspace import Workspace


def _records(n=20, seed=0):
    # Sizes that straddle block boundaries: 0, 1, 511, 512, 513 ... bytes.
    sizes = [0, 1, 511, 512, 513] + [(seed * 7919 + i * 2654435761) % 6000 for i in range(n - 5)]
    return [record(hashlib.sha256(f"{seed}-{i}".encode()).digest() * (s // 32 + 1), "bin") for i, s in enumerate(sizes)]


def test_same_records_give_byte_identical_shards(tmp_path):
    recs = _records()
    a = write_shards(recs, tmp_path / "a", max_shard_bytes=40_000)
    b = write_shards(recs, tmp_path / "b", max_shard_bytes=40_000)
    assert [s.sha256 for s in a] == [s.sha256 for s in b]
    for sa, sb in zip(a, b):
        assert sa.path.read_bytes() == sb.path.read_bytes()
        assert sa.path.name == f"{sa.sha256}.tar"
        assert hashlib.sha256(sa.path.read_bytes()).hexdigest() == sa.sha256 and sa.path.stat().st_size == sa.size
    # Deterministic headers: nothing of the writer's clock, user or umask is in them.
    with tarfile.open(a[0].path) as tf:
        ti = tf.getmembers()[0]
        assert (ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname, ti.mode) == (0, 0, 0, "", "", 0o444)


def test_random_access_reads_every_record(tmp_path):
    recs = _records()
    shards = write_shards(recs, tmp_path, max_shard_bytes=30_000)
    refs = [r for s in shards for r in s.records]
    assert [r.key for r in refs] == [k for k, _, _ in recs]
    paths = {s.sha256: s.path for s in shards}
    for (_, _, data), ref in zip(recs, refs):
        assert read_record(paths[ref.shard], ref.offset, ref.size) == data
    with open(shards[-1].path, "rb") as f:  # a file kept open by the caller
        ref = shards[-1].records[-1]
        assert read_record(f, ref.offset, ref.size) == recs[-1][2]
    with pytest.raises(BadInput, match="truncated"):
        read_record(shards[0].path, shards[0].size - 10, 100)


def test_a_shard_handed_to_on_shard_carries_its_positions_as_arrays_and_no_record_objects(tmp_path):
    recs = _records()
    seen = []
    out = write_shards(recs, tmp_path / "cb", max_shard_bytes=30_000, on_shard=seen.append)
    kept = write_shards(recs, tmp_path / "kept", max_shard_bytes=30_000)
    assert [s.sha256 for s in seen] == [s.sha256 for s in kept] and len(seen) > 1
    for cb, ref in zip(seen, kept):
        assert cb.records == () and cb.first_key == ref.records[0].key
        assert list(cb.offsets) == [r.offset for r in ref.records]
        assert list(cb.sizes) == [r.size for r in ref.records] and cb.count == len(cb.offsets)
        for off, size, (_, _, data) in zip(cb.offsets, cb.sizes, recs[: cb.count]):
            assert read_record(cb.path, off, size) == data
        recs = recs[cb.count :]
    assert all(len(s.offsets) == 0 and s.records == () for s in out)  # the caller kept what it needed


def test_streaming_yields_all_records_in_order(tmp_path):
    recs = _records()
    shards = write_shards(recs, tmp_path, max_shard_bytes=30_000)
    got = [item for s in shards for item in iter_shard(s.path)]
    assert got == [(f"{k}.{e}", d) for k, e, d in recs]


def test_shards_split_by_max_bytes_and_stay_under_it(tmp_path):
    recs = [record(bytes([i]) * 5000, "bin") for i in range(30)]
    shards = write_shards(recs, tmp_path, max_shard_bytes=40_960)
    assert len(shards) > 3 and sum(s.count for s in shards) == 30
    assert all(s.size <= 40_960 for s in shards)
    # A record over the cap gets a shard of its own rather than failing.
    big = write_shards([record(b"x" * 50_000, "bin"), recs[0]], tmp_path / "big", max_shard_bytes=20_480)
    assert [s.count for s in big] == [1, 1]
    with pytest.raises(BadInput, match="max_shard_bytes"):
        write_shards(recs, tmp_path, max_shard_bytes=100)
    with pytest.raises(BadInput, match="plain key"):
        write_shards([("../evil", "bin", b"x")], tmp_path)


def test_shards_go_into_the_workspace_store(tmp_path):
    ws = Workspace.init(tmp_path / "ws")
    recs = _records(8)
    [s] = write_shards(recs, ws)
    assert s.path == ws.object_path(s.sha256) and ws.get_bytes(s.sha256) == s.path.read_bytes()
    assert write_shards(recs, ws)[0].sha256 == s.sha256  # stored once
    assert not [p for p in ws.objects.rglob("*.tmp")]


def _tar(tmp_path, name, members):
    path = tmp_path / name
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return path


def _reg(name, data):
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    return ti, data


def test_adversarial_shards_are_refused(tmp_path):
    ok = _reg("a" * 64 + ".jpg", b"fine")
    link = tarfile.TarInfo("b" * 64 + ".jpg")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    cases = {
        "dotdot.tar": ([ok, _reg("../x", b"evil")], BadInput, "flat key.ext"),
        "slash.tar": ([_reg("dir/x.jpg", b"evil")], BadInput, "flat key.ext"),
        "link.tar": ([ok, (link, None)], BadInput, "not a regular file"),
        "big.tar": ([_reg("c" * 64 + ".jpg", b"z" * 5000)], TooLarge, "over 4096"),
    }
    for name, (members, err, msg) in cases.items():
        path = _tar(tmp_path, name, members)
        with pytest.raises(err, match=msg):
            list(iter_shard(path, max_member_bytes=4096))
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()  # nothing was extracted
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(BadInput, match="not a readable tar"):
        list(iter_shard(tmp_path / "junk.tar"))


def test_fsspec_file_url_reads(tmp_path):
    recs = _records(6)
    [s] = write_shards(recs, tmp_path)
    url = s.path.as_uri()
    assert url.startswith("file://")
    ref = s.records[3]
    assert read_record(url, ref.offset, ref.size) == recs[3][2]
    assert [d for _, d in iter_shard(url)] == [d for _, _, d in recs]
