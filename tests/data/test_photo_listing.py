import os
import threading

import pytest

from datamoat.data.photo_listing import list_folder, read_ahead, visible_files


def test_read_ahead_yields_every_item_in_order_and_runs_depth_ahead(tmp_path):
    paths = []
    for i in range(300):
        p = tmp_path / f"{i:03d}.bin"
        p.write_bytes(bytes([i % 256]) * (i + 1))
        paths.append(p)
    asked = []

    def path(p):
        asked.append(p)
        return p

    seen = []
    for p in read_ahead(paths, path, depth=16):
        seen.append(p)
        # the threads were given the next 16 files before this one reached the reader, never more
        assert len(asked) == min(len(paths), len(seen) + 16)
        assert p.read_bytes() == bytes([int(p.stem) % 256]) * (int(p.stem) + 1)
    assert seen == paths
    assert list(read_ahead(paths, path, depth=0)) == paths


def test_a_reader_that_stops_early_pulls_no_more_than_the_window(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    pulled = 0

    def endless():
        nonlocal pulled
        while True:
            pulled += 1
            yield tmp_path / "f"

    gen = read_ahead(endless(), lambda p: p, depth=8)
    for _ in range(3):
        next(gen)
    gen.close()  # shuts the threads down
    assert pulled == 3 + 8
    assert not [t for t in threading.enumerate() if t.name.startswith("datamoat-read-ahead")]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes")
def test_read_ahead_neither_hangs_nor_fails_on_what_is_no_regular_file(tmp_path):
    os.mkfifo(tmp_path / "pipe")  # opened without O_NONBLOCK, it would wait for a writer forever
    (tmp_path / "dir").mkdir()
    items = [tmp_path / "pipe", tmp_path / "dir", tmp_path / "missing"]
    done = []
    t = threading.Thread(target=lambda: done.extend(read_ahead(items, lambda p: p, depth=4)), daemon=True)
    t.start()
    t.join(timeout=30)
    assert done == items


def test_listing_takes_files_and_linked_files_but_no_pipes_or_dot_files(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "b.jpg").write_bytes(b"b")
    (tmp_path / "cat" / "a.jpg").write_bytes(b"a")
    (tmp_path / "cat" / ".hidden.jpg").write_bytes(b"h")
    (tmp_path / "cat" / "link.jpg").symlink_to(tmp_path / "cat" / "a.jpg")
    (tmp_path / "cat" / "broken.jpg").symlink_to(tmp_path / "nowhere")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "cat" / "pipe.jpg")
    (tmp_path / "notes.txt").write_text("stray")
    assert visible_files(tmp_path / "cat") == (["a.jpg", "b.jpg", "link.jpg"], [])
    items, stray = list_folder(tmp_path)
    assert [(i.rel, i.label) for i in items] == [("cat/a.jpg", "cat"), ("cat/b.jpg", "cat"), ("cat/link.jpg", "cat")]
    assert stray == ["notes.txt"]
