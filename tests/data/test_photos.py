import csv
import io
import json
import os
import shutil
import struct
import threading
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from datamoat.data.photos import PhotoImportConfig, import_photos, load_photos, probe_photo
from datamoat.errors import BadInput, NotFound, TooLarge
from datamoat.workspace import Workspace

CFG = PhotoImportConfig(val_fraction=0.2, test_fraction=0.2)


def _img(seed, size, mode):
    rng = np.random.default_rng(seed)
    w, h = size
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
    arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    im = Image.fromarray(arr)
    return im.convert("P") if mode == "P" else im.convert(mode)


def _save(path, im, fmt, **kw):
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def bomb_png(w=100_000, h=100_000):
    """A tiny, well-formed PNG whose IHDR claims w x h pixels."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


# (format, mode) mixes of every kind the importer accepts
KINDS = [("JPEG", "RGB"), ("PNG", "RGB"), ("WEBP", "RGB"), ("PNG", "L"), ("PNG", "RGBA"), ("JPEG", "L"), ("PNG", "P")]
KINDS += [("PNG", "I;16")]
EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


@pytest.fixture
def photo_dir(tmp_path):
    root = tmp_path / "photos"
    for c, cls in enumerate(["cat", "dog", "fox"]):
        (root / cls).mkdir(parents=True)
        for i, (fmt, mode) in enumerate(KINDS):
            _save(root / cls / f"{i:02d}.{EXT[fmt]}", _img(100 * c + i, (16 + 3 * i, 12 + 2 * i), mode), fmt)
    good = (root / "cat" / "00.jpg").read_bytes()
    (root / "cat" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "cat" / "empty.jpg").write_bytes(b"")
    (root / "cat" / "notes.jpg").write_text("this is not a photo\n")
    (root / "cat" / "bomb.png").write_bytes(bomb_png())
    _save(root / "cat" / "anim.gif", _img(7, (8, 8), "P"), "GIF")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90: displayed 20 wide, 40 high; stored 40 x 20
    _save(root / "dog" / "rotated.jpg", _img(9, (40, 20), "RGB"), "JPEG", exif=exif.tobytes())
    shutil.copy(root / "dog" / "01.png", root / "dog" / "01-copy.png")  # duplicate, same label
    shutil.copy(root / "cat" / "02.webp", root / "fox" / "cat-or-fox.webp")  # same bytes, two labels
    return root


def test_bad_files_are_skipped_with_a_reason_each(ws, photo_dir):
    v = import_photos(ws, photo_dir, CFG)
    kinds = {s["path"]: s["kind"] for s in v.skipped}
    assert kinds == {
        "cat/truncated.jpg": "corrupt",
        "cat/empty.jpg": "empty",
        "cat/notes.jpg": "not an image",
        "cat/bomb.png": "over max_pixels",
        "cat/anim.gif": "format not accepted",
        "cat/02.webp": "label conflict",
        "fox/cat-or-fox.webp": "label conflict",
    }
    assert "GIF" in next(s["reason"] for s in v.skipped if s["kind"] == "format not accepted")
    rep = v.report
    assert rep["imported"] == 3 * len(KINDS) + 1 - 1 and rep["skipped"] == 7 and rep["duplicates"] == 1
    assert rep["skipped_reasons"]["label conflict"] == 2 and json.dumps(rep)  # ready for --json
    assert v.duplicates == [{"sha256": v.duplicates[0]["sha256"], "paths": ["dog/01-copy.png", "dog/01.png"]}]
    assert v.classes == ["cat", "dog", "fox"] and sum(v.counts.values()) == rep["imported"]
    rows = v.rows()
    assert {r["format"] for r in rows} == {"JPEG", "PNG", "WEBP"}
    assert {"RGB", "L", "RGBA", "P"} <= {r["mode"] for r in rows} and {r["mode"] for r in rows} & {"I;16", "I"}
    # Every record reads back byte-equal to its file, by random access and by streaming.
    for r in rows:
        assert v.read(r["sha256"]) == (photo_dir / r["path"]).read_bytes()
    streamed = {r["sha256"]: data for split in ("train", "val", "test") for r, data in v.iter_bytes(split)}
    assert streamed == {r["sha256"]: v.read(r["sha256"]) for r in rows}
    with pytest.raises(NotFound):
        v.read("0" * 64)


def test_exif_orientation_is_recorded_and_the_bytes_kept(ws, photo_dir):
    v = import_photos(ws, photo_dir, CFG)
    [row] = [r for r in v.rows() if r["path"] == "dog/rotated.jpg"]
    assert (row["width"], row["height"], row["orientation"]) == (20, 40, 6)
    data = v.read(row["sha256"])
    assert data == (photo_dir / "dog" / "rotated.jpg").read_bytes()  # original encoding, not re-encoded
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (40, 20)  # stored pixels
        assert ImageOps.exif_transpose(im).size == (row["width"], row["height"])


def test_strict_mode_raises_naming_the_first_bad_file(ws, photo_dir, tmp_path):
    with pytest.raises(BadInput, match="cat/anim.gif: format not accepted"):
        import_photos(ws, photo_dir, CFG.replace(strict=True))
    bombs = tmp_path / "bombs"
    bombs.mkdir()
    (bombs / "b.png").write_bytes(bomb_png())
    with pytest.raises(TooLarge, match="b.png: over max_pixels"):
        import_photos(ws, bombs, CFG.replace(strict=True))
    with pytest.raises(BadInput, match="no importable images"):
        import_photos(ws, bombs, CFG)


def test_max_pixels_is_checked_before_decoding(ws, tmp_path):
    root = tmp_path / "u"
    root.mkdir()
    for i in range(5):
        _save(root / f"{i}.png", _img(i, (20, 10 + i), "RGB"), "PNG")
    v = import_photos(ws, root, PhotoImportConfig(max_pixels=230, val_fraction=0, test_fraction=0))
    assert [s["reason"] for s in v.skipped] == [
        "over max_pixels: 20x12 = 240 pixels, over max_pixels 230",
        "over max_pixels: 20x13 = 260 pixels, over max_pixels 230",
        "over max_pixels: 20x14 = 280 pixels, over max_pixels 230",
    ]
    with pytest.raises(TooLarge, match="max_pixels"):
        probe_photo(bomb_png())
    with pytest.raises(TooLarge, match="max_file_bytes"):
        probe_photo(b"x" * 100, PhotoImportConfig(max_file_bytes=10))


def test_same_files_give_the_same_id_and_byte_identical_shards(ws, photo_dir, tmp_path):
    a = import_photos(ws, photo_dir, CFG, name="first")
    b = import_photos(ws, photo_dir, CFG, name="second")
    assert a.id == b.id and b.name == "first"  # write-once: a re-import keeps the first name
    other = Workspace.init(tmp_path / "ws2")
    copy = shutil.copytree(photo_dir, tmp_path / "elsewhere")
    c = import_photos(other, copy, CFG)
    assert c.id == a.id and c.manifest == a.manifest
    for s in a.manifest["shards"]:
        assert ws.object_path(s["sha256"]).read_bytes() == other.object_path(s["sha256"]).read_bytes()
    assert import_photos(ws, photo_dir, CFG.replace(seed=1)).id != a.id  # another split is another version
    assert import_photos(other, photo_dir, CFG.replace(read_ahead=0)).manifest == a.manifest  # reads, not content
    with pytest.raises(BadInput, match="read_ahead"):
        CFG.replace(read_ahead=-1)
    loaded = load_photos(ws, a.id)
    assert loaded.rows() == a.rows() and loaded.skipped == a.skipped and loaded.classes == a.classes
    assert load_photos(ws, a.id[:6]).id == a.id and load_photos(ws, "first").id == a.id
    with pytest.raises(NotFound):
        load_photos(ws, "nope")


def test_csv_and_jsonl_manifests_give_the_same_content(ws, tmp_path):
    (tmp_path / "imgs").mkdir()
    rows = []
    for i in range(12):
        _save(tmp_path / "imgs" / f"{i}.jpg", _img(i, (24, 16), "RGB"), "JPEG")
        rows.append({"path": f"imgs/{i}.jpg", "label": "ab"[i % 2], "site": f"s{i % 3}", "source": "cam"})
    rows.append({"path": "imgs/missing.jpg", "label": "a", "site": "s0", "source": "cam"})
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "site", "source"])
        w.writeheader()
        w.writerows(rows)
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    a = import_photos(ws, tmp_path / "m.csv", CFG)
    b = import_photos(ws, tmp_path / "m.jsonl", CFG)
    assert a.id == b.id and a.classes == ["a", "b"] and len(a.rows()) == 12
    assert [s["path"] for s in a.skipped] == ["imgs/missing.jpg"] and a.skipped[0]["kind"] == "unreadable"
    r0 = next(r for r in a.rows() if r["path"] == "imgs/0.jpg")
    assert r0["extra"] == {"site": "s0", "source": "cam"} and r0["label"] == "a"
    (tmp_path / "bad.jsonl").write_text('{"label": "a"}\n')
    with pytest.raises(BadInput, match="line 1"):
        import_photos(ws, tmp_path / "bad.jsonl", CFG)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes")
def test_a_manifest_naming_a_pipe_a_device_or_a_folder_skips_them_and_never_hangs(ws, tmp_path):
    """A manifest may name any path: a named pipe opened for reading waits for a writer forever, so
    the importer (and its read-ahead) must open without blocking and take only regular files."""
    (tmp_path / "imgs").mkdir()
    for i in range(4):
        _save(tmp_path / "imgs" / f"{i}.png", _img(i, (8, 6), "RGB"), "PNG")
    os.mkfifo(tmp_path / "imgs" / "pipe.png")
    others = ["imgs/pipe.png", "imgs", "/dev/zero"]
    lines = [json.dumps({"path": p, "label": "ab"[i % 2]}) for i, p in enumerate([f"imgs/{i}.png" for i in range(4)])]
    lines += [json.dumps({"path": p, "label": "a"}) for p in others]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    got: list = []
    t = threading.Thread(target=lambda: got.append(import_photos(ws, tmp_path / "m.jsonl", CFG)), daemon=True)
    t.start()
    t.join(timeout=60)
    assert got, "the import hung on a named pipe"
    v = got[0]
    assert len(v.rows()) == 4
    assert {s["path"]: s["kind"] for s in v.skipped} == dict.fromkeys(others, "unreadable")
    assert all("not a regular file" in s["reason"] for s in v.skipped)


def test_a_bad_row_deep_in_a_manifest_is_a_one_line_error_and_nothing_is_stored(ws, tmp_path):
    """Manifests are read a row at a time, so a bad row is found after good files were read: the
    import must still store nothing (no shards, no version) and leave no sort folder behind."""
    (tmp_path / "imgs").mkdir()
    for i in range(6):
        _save(tmp_path / "imgs" / f"{i}.jpg", _img(i, (24, 16), "RGB"), "JPEG")
    good = [json.dumps({"path": f"imgs/{i}.jpg", "label": "ab"[i % 2]}) for i in range(6)]
    before = sorted(p.relative_to(ws.root) for p in ws.root.rglob("*"))
    cases = {
        "bad.jsonl": ("\n".join([*good, "{not json"]) + "\n", r"bad.jsonl line 7 is not JSON"),
        "nopath.jsonl": ("\n".join([*good, '{"label": "a"}']) + "\n", r"nopath.jsonl line 7: every row needs a 'path'"),
        "extra.csv": ("path,label\n" + "".join(f"imgs/{i}.jpg,a\n" for i in range(6)) + "imgs/0.jpg,a,x\n", "line 8"),
    }
    for name, (text, match) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(BadInput, match=match) as e:
            import_photos(ws, tmp_path / name, CFG)
        assert "\n" not in str(e.value)
    assert sorted(p.relative_to(ws.root) for p in ws.root.rglob("*")) == before


def test_an_unlabeled_folder_imports_with_no_labels(ws, tmp_path):
    root = tmp_path / "unlabeled"
    root.mkdir()
    for i in range(6):
        _save(root / f"{i}.webp", _img(i, (10, 10), "RGB"), "WEBP")
    v = import_photos(ws, root, CFG)
    assert v.classes == [] and {r["label"] for r in v.rows()} == {None} and len(v.rows()) == 6


def test_jpeg_shards_stay_within_a_tenth_of_the_source_bytes(ws, tmp_path):
    root = tmp_path / "jpegs" / "c"
    root.mkdir(parents=True)
    for i in range(12):
        _save(root / f"{i}.jpg", _img(i, (160, 120), "RGB"), "JPEG", quality=85)
    v = import_photos(ws, tmp_path / "jpegs", CFG.replace(val_fraction=0, test_fraction=0))
    rep = v.report
    on_disk = sum(ws.object_path(s["sha256"]).stat().st_size for s in v.manifest["shards"])
    index = sum(ws.object_path(v.manifest["index"][k]).stat().st_size for k in ("rows", "paths", "extras"))
    assert rep["stored_bytes"] == on_disk + index and rep["source_bytes"] == sum(
        p.stat().st_size for p in root.iterdir()
    )
    assert rep["stored_vs_source"] <= 1.1, rep


def test_splits_are_stratified_and_reproducible(ws, tmp_path):
    root = tmp_path / "two"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(10):
            _save(root / cls / f"{i}.png", _img(i + (cls == "b") * 1000, (6, 6), "L"), "PNG")
    v = import_photos(ws, root, CFG)
    for cls in ("a", "b"):
        assert {s: v.report["per_class"][s][cls] for s in ("train", "val", "test")} == {"train": 6, "val": 2, "test": 2}
    # Renamed files in another order: splits follow the content, not the names.
    renamed = tmp_path / "renamed"
    for cls in ("a", "b"):
        (renamed / cls).mkdir(parents=True)
        for i, p in enumerate(sorted((root / cls).iterdir())):
            shutil.copy(p, renamed / cls / f"z{9 - i}.png")
    w = import_photos(ws, renamed, CFG)
    assert {r["sha256"]: r["split"] for r in w.rows()} == {r["sha256"]: r["split"] for r in v.rows()}
    other = import_photos(ws, root, CFG.replace(seed=3))
    assert {r["sha256"]: r["split"] for r in other.rows()} != {r["sha256"]: r["split"] for r in v.rows()}
    with pytest.raises(BadInput, match="too few"):
        import_photos(ws, root, PhotoImportConfig(val_fraction=0.5, test_fraction=0.49))


def test_versions_and_renders_of_the_json_format_still_load(ws, photo_dir):
    """Format 1 kept the index as JSON lines and a render's refs as a JSON list: both still read."""
    from datamoat.data.dataset import Dataset
    from datamoat.data.photo_render import photo_refs

    v = import_photos(ws, photo_dir, CFG)
    assert v.manifest["format"] == 2 and len(v.table.table) == len(v.rows())
    jsonl = "".join(json.dumps(r, sort_keys=True) + "\n" for r in v.rows()).encode()
    old = {**v.manifest, "format": 1, "index": ws.put_bytes(jsonl)}
    rec = {"id": "0ld0ld0ld0ld", "name": "old", "source": "x", "manifest": old, "skipped": [], "duplicates": []}
    (ws.root / "photos" / "0ld0ld0ld0ld.json").write_text(json.dumps(rec))
    loaded = load_photos(ws, "0ld0ld0ld0ld")
    assert loaded.rows() == v.rows() and loaded.classes == v.classes
    sha = v.rows("test")[0]["sha256"]
    assert loaded.read(sha) == v.read(sha) and loaded.table.find("f" * 64) is None
    tuples = [(r["shard"], r["offset"], r["size"], r["sha256"]) for r in v.rows()]
    info = {"version": "0ld0ld0ld0ld", "refs": ws.put_bytes(json.dumps(tuples).encode())}
    refs = photo_refs(
        Dataset("d", "d", [], np.zeros((0, 3, 1, 1), np.uint8), np.zeros(0), np.zeros(0), {"photos": info}, ws)
    )
    assert refs is not None and [refs[i] for i in range(len(refs))] == tuples
    assert refs.ids(np.array([2, 0])) == [tuples[2][3], tuples[0][3]]
