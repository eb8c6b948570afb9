"""The external-sort index builder against the in-memory stable sort it replaced (issue 18)."""

import hashlib

import numpy as np
import pytest

from datamoat.data.dataset import drop_pages
from datamoat.data.index_builder import IndexBuilder, fill_column, tally
from datamoat.data.photo_index import ROW_DTYPE

MODES = ["RGB", "L"]


def _rows(n: int, seed: int) -> list[dict]:
    """n files over n // 3 contents (so duplicates fall in different runs), some under two labels."""
    rng = np.random.default_rng(seed)
    contents = rng.integers(0, max(1, n // 3), n)
    out = []
    for i, c in enumerate(contents):
        label = None if c % 11 == 0 else f"c{c % 4}"
        if c % 17 == 5 and i % 2:  # this content also appears under another label: a conflict
            label = "c9"
        out.append(
            {
                "sha": hashlib.sha256(str(c).encode()).digest(),
                "label": label,
                "meta": {"format": "JPEG", "width": int(c), "height": i, "mode": MODES[i % 2], "orientation": 1},
                "path": f"{label}/{i:05d}-{'x' * (i % 7)}.jpg",
                "extra": {"site": int(i % 3)} if i % 5 == 0 else {},
            }
        )
    return out


def _reference(rows: list[dict]):
    """What the in-memory builder gave: stable sort by hash, the first of each content, conflicts out."""
    order = sorted(range(len(rows)), key=lambda i: rows[i]["sha"])  # sorted() is stable
    groups: dict[bytes, list[int]] = {}
    for i in order:
        groups.setdefault(rows[i]["sha"], []).append(i)
    kept, dups, conflicts = [], [], []
    for sha, members in groups.items():
        labels = {rows[i]["label"] for i in members}
        paths = [rows[i]["path"] for i in members]
        if len(labels) > 1:
            conflicts.append((paths, sorted(str(x) for x in labels)))
        else:
            kept.append(members[0])
            if len(members) > 1:
                dups.append((sha.hex(), paths))
    classes = sorted({rows[i]["label"] for i in kept} - {None})
    return kept, dups, conflicts, classes


@pytest.mark.parametrize(
    ("n", "run_rows", "merge_rows"), [(1, 4, 8), (500, 37, 5), (500, 37, 1 << 16), (500, 1000, 8), (2000, 64, 40)]
)
def test_the_merged_index_is_the_in_memory_stable_sort(tmp_path, n, run_rows, merge_rows):
    rows = _rows(n, seed=n)
    with IndexBuilder(tmp_path, run_rows=run_rows, merge_rows=merge_rows) as b:
        for r in rows:
            b.add(r["sha"], r["label"], r["meta"], r["path"], r["extra"])
        index, dups, conflicts = b.finish()
        got = [index.row(i) for i in range(len(index))]
        streamed = list(index.iter_rows())
    kept, ref_dups, ref_conflicts, classes = _reference(rows)
    assert index.classes == classes and index.modes == sorted({r["meta"]["mode"] for r in rows})
    assert [g["sha256"] for g in got] == [rows[i]["sha"].hex() for i in kept]
    assert [g["path"] for g in got] == [rows[i]["path"] for i in kept]
    assert [g["label"] for g in got] == [rows[i]["label"] for i in kept]
    assert [g["mode"] for g in got] == [rows[i]["meta"]["mode"] for i in kept]
    assert [g["height"] for g in got] == [rows[i]["meta"]["height"] for i in kept]
    assert [g["extra"] for g in got] == [rows[i]["extra"] for i in kept]
    assert streamed == got
    assert dups == ref_dups and conflicts == ref_conflicts
    assert not list(tmp_path.iterdir())  # the spilled runs and the mapped index are gone


def test_a_content_repeated_across_many_runs_stays_one_group(tmp_path):
    """One hash in every run, far more times than a merge block: it must not split into groups."""
    meta = {"format": "PNG", "width": 1, "height": 1, "mode": "L", "orientation": 1}
    same = hashlib.sha256(b"same").digest()
    with IndexBuilder(tmp_path, run_rows=3, merge_rows=2) as b:
        for i in range(600):
            sha = same if i % 2 else hashlib.sha256(str(i).encode()).digest()
            b.add(sha, "a", meta, f"a/{i}.png", {})
        index, dups, conflicts = b.finish()
        assert len(index) == 301 and conflicts == []
    assert dups == [(same.hex(), [f"a/{i}.png" for i in range(1, 600, 2)])]


def test_an_empty_builder_gives_an_empty_index(tmp_path):
    with IndexBuilder(tmp_path) as b:
        index, dups, conflicts = b.finish()
        assert (len(index), dups, conflicts, index.classes) == (0, [], [], [])


def test_columns_written_through_a_mapping_survive_its_pages_being_dropped(tmp_path):
    path = tmp_path / "t"
    np.zeros(200_000, ROW_DTYPE).tofile(path)
    table = np.memmap(path, ROW_DTYPE, "r+", shape=(200_000,))
    fill_column(table, "split", np.arange(200_000) % 3)
    table["size"][:5] = 7
    drop_pages(table)
    del table
    back = np.fromfile(path, ROW_DTYPE)
    assert (back["split"] == np.arange(200_000) % 3).all() and back["size"][:6].tolist() == [7] * 5 + [0]
    per, size, unlabelled = tally(back, 1)
    assert per.sum() == 200_000 and size == 35 and unlabelled == 0


def test_extras_keep_their_json(tmp_path):
    meta = {"format": "PNG", "width": 1, "height": 1, "mode": "L", "orientation": 1}
    with IndexBuilder(tmp_path, run_rows=2) as b:
        for i in range(5):
            b.add(hashlib.sha256(bytes([i])).digest(), None, meta, f"{i}.png", {"i": i} if i % 2 else {})
        index, _, _ = b.finish()
        got = {r["path"]: r["extra"] for r in index.iter_rows()}
    assert got == {f"{i}.png": ({"i": i} if i % 2 else {}) for i in range(5)}
