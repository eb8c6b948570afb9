"""Dataset versions: merge, flip, fix and diff make new versions and leave the old."""

import numpy as np
import pytest

from datamoat.data import SPLITS, load_dataset, make_dataset
from datamoat.data.versions import apply_fixes, diff, flip_labels, merge
from datamoat.errors import BadInput


def snapshot(ds):
    return ds.id, ds.x.copy(), ds.y.copy(), ds.split.copy()


def assert_unchanged(ws, snap):
    ds_id, x, y, split = snap
    again = load_dataset(ws, ds_id)
    assert again.id == ds_id
    assert np.array_equal(again.x, x) and np.array_equal(again.y, y) and np.array_equal(again.split, split)


def test_merge_appends_new_samples_and_keeps_the_base(ws, digits):
    snap = snapshot(digits)
    x_new = digits.x[:5, :, :, ::-1].copy()  # mirrored: new pixels
    y_new = np.array([0, 1, 2, 3, 4])
    v2 = merge(ws, digits, x_new, y_new, name="digits+fb", source={"kind": "feedback", "feedback_ids": ["f1", "f2"]})
    assert v2.id != digits.id and len(v2.y) == len(digits.y) + 5
    assert np.array_equal(v2.x[-5:], x_new) and np.array_equal(v2.y[-5:], y_new)
    assert (v2.split[-5:] == SPLITS["train"]).all() and np.array_equal(v2.split[:-5], digits.split)
    row = ws.resolve("datasets", v2.id)
    assert row["parent_id"] == digits.id and row["name"] == "digits+fb"
    src = row["source"]
    assert src["kind"] == "merge" and src["parent_id"] == digits.id
    assert src["from"]["feedback_ids"] == ["f1", "f2"]
    assert src["added"]["samples"] == 5 and src["added"]["per_class"][:5] == [1, 1, 1, 1, 1]
    assert np.array_equal(ws.get_array(src["added"]["x_sha256"]), x_new)  # what was added is retrievable
    assert_unchanged(ws, snap)
    d = diff(ws, digits, v2)
    assert d["splits"]["train"]["added"] == 5 and d["totals"]["removed"] == d["totals"]["relabelled"] == 0
    assert d["splits"]["train"]["per_class"]["added"][:5] == [1, 1, 1, 1, 1]
    to_val = merge(ws, digits, x_new, y_new, name="v", source={}, split="val")
    assert (to_val.split[-5:] == SPLITS["val"]).all()


@pytest.mark.parametrize(
    "x_new, y_new, match",
    [
        (np.zeros((2, 1, 4, 4), np.uint8), [0, 1], "shape"),
        (np.zeros((2, 1, 8, 8), np.float32), [0, 1], "shape"),
        (np.zeros((2, 1, 8, 8), np.uint8), [0, 10], "labels"),
        (np.zeros((2, 1, 8, 8), np.uint8), [0], "match"),
        (np.zeros((0, 1, 8, 8), np.uint8), [], "nothing"),
    ],
)
def test_merge_rejects_bad_samples(ws, digits, x_new, y_new, match):
    with pytest.raises(BadInput, match=match):
        merge(ws, digits, x_new, np.array(y_new), name="bad", source={})


def tiny(ws, classes=("a", "b", "c")):
    """12 distinct 2x2 images; two copies of image 11 (a duplicate pair)."""
    x = (np.arange(12 * 4).reshape(12, 1, 2, 2) * 5).astype(np.uint8)
    x[11] = x[10]
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 1])
    split = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 0, 0], np.uint8)
    return make_dataset(ws, x, y, list(classes), name="tiny", source={}, split=split)


def test_diff_counts_added_removed_relabelled_exactly(ws):
    a = tiny(ws)
    x, y, split = a.x.copy(), a.y.copy(), a.split.copy()
    y[0], y[4] = 2, 0  # two train relabels: a->c and b->a
    y[11] = 2  # one copy of the duplicate pair relabelled b->c, the other stays b
    keep = np.arange(12) != 9  # the only test sample removed
    x_add = (200 + np.arange(8).reshape(2, 1, 2, 2)).astype(np.uint8)
    x = np.concatenate([x[keep], x_add, x[:1]])  # two new images, plus a second copy of image 0 in val
    y = np.concatenate([y[keep], [1, 1], [0]])
    split = np.concatenate([split[keep], [0, 0], [1]])
    b = make_dataset(ws, x, y, ["a", "b", "C"], name="tiny2", source={}, split=split)
    d = diff(ws, a, b)
    tr, val, te = d["splits"]["train"], d["splits"]["val"], d["splits"]["test"]
    assert (tr["added"], tr["removed"], tr["relabelled"], tr["unchanged"]) == (2, 0, 3, 5)
    assert tr["per_class"]["added"] == [0, 2, 0]
    assert tr["per_class"]["relabelled_from"] == [1, 2, 0] and tr["per_class"]["relabelled_to"] == [1, 0, 2]
    assert (val["added"], val["removed"], val["relabelled"], val["unchanged"]) == (1, 0, 0, 3)
    assert (te["added"], te["removed"], te["per_class"]["removed"]) == (0, 1, [1, 0, 0])
    assert d["totals"] == {"added": 3, "removed": 1, "relabelled": 3, "unchanged": 8}
    assert sorted((r["from"], r["to"], r["count"]) for r in d["relabels"]) == [(0, 2, 1), (1, 0, 1), (1, 2, 1)]
    assert d["classes"]["changes"] == [{"index": 2, "a": "c", "b": "C"}]
    same = diff(ws, a, a.id)
    assert same["totals"] == {"added": 0, "removed": 0, "relabelled": 0, "unchanged": 12}


def test_flip_labels_flips_exactly_the_fraction_of_train_labels(ws, digits):
    snap = snapshot(digits)
    noisy, flipped = flip_labels(ws, digits, 0.1, seed=3)
    train = np.flatnonzero(digits.split == SPLITS["train"])
    assert len(flipped) == round(0.1 * len(train)) and len(set(flipped.tolist())) == len(flipped)
    assert np.isin(flipped, train).all()
    changed = np.flatnonzero(noisy.y != digits.y)
    assert np.array_equal(changed, flipped)  # every chosen label changed, nothing else did
    assert np.array_equal(noisy.x, digits.x) and np.array_equal(noisy.split, digits.split)
    assert len(np.unique(noisy.y[flipped])) == digits.num_classes  # flips land on every class
    row = ws.resolve("datasets", noisy.id)
    assert row["parent_id"] == digits.id and row["source"]["kind"] == "flip_labels"
    assert np.array_equal(ws.get_array(row["source"]["flipped_sha256"]), flipped)
    again, flipped2 = flip_labels(ws, digits, 0.1, seed=3)
    assert again.id == noisy.id and np.array_equal(flipped, flipped2)
    assert diff(ws, digits, noisy)["totals"]["relabelled"] == len(flipped)
    assert_unchanged(ws, snap)
    with pytest.raises(BadInput, match="fraction"):
        flip_labels(ws, digits, 1.5)


def test_flip_labels_with_pairs_flips_only_within_the_pairs_at_the_rate(ws, digits):
    snap = snapshot(digits)
    pairs = [(1, 7), (3, 8), (8, 9)]  # 8 has two partners
    partners = {1: {7}, 7: {1}, 3: {8}, 9: {8}, 8: {3, 9}}
    noisy, flipped = flip_labels(ws, digits, 0.2, seed=5, pairs=pairs)
    train = np.flatnonzero(digits.split == SPLITS["train"])
    assert np.isin(flipped, train).all()
    assert np.array_equal(np.flatnonzero(noisy.y != digits.y), flipped)  # every chosen label changed, nothing else
    for c in range(digits.num_classes):
        in_class = flipped[digits.y[flipped] == c]
        expected = round(0.2 * (digits.y[train] == c).sum()) if c in partners else 0
        assert len(in_class) == expected, c
        assert set(noisy.y[in_class].tolist()) <= partners.get(c, set())
    assert set(noisy.y[flipped[digits.y[flipped] == 8]].tolist()) == {3, 9}  # both partners drawn
    row = ws.resolve("datasets", noisy.id)
    assert row["source"]["pairs"] == [[1, 7], [3, 8], [8, 9]] and row["source"]["fraction"] == 0.2
    again, flipped2 = flip_labels(ws, digits, 0.2, seed=5, pairs=[(9, 8), (7, 1), (8, 3)])  # order does not matter
    assert again.id == noisy.id and np.array_equal(flipped, flipped2)
    assert_unchanged(ws, snap)
    for bad in ([(1, 1)], [(1, 10)], []):
        with pytest.raises(BadInput, match="pair"):
            flip_labels(ws, digits, 0.2, pairs=bad)


def test_apply_fixes_makes_a_new_version_and_leaves_the_old(ws, digits):
    snap = snapshot(digits)
    new_label = int((digits.y[3] + 1) % 10)
    fixed = apply_fixes(ws, digits, [{"index": 3, "new_label": new_label}, {"index": 7, "drop": True}])
    assert fixed.id != digits.id and len(fixed.y) == len(digits.y) - 1
    assert fixed.y[3] == new_label and np.array_equal(fixed.x[7], digits.x[8])
    row = ws.resolve("datasets", fixed.id)
    assert row["parent_id"] == digits.id and (row["source"]["relabelled"], row["source"]["dropped"]) == (1, 1)
    d = diff(ws, digits, fixed)["totals"]
    assert (d["relabelled"], d["removed"], d["added"]) == (1, 1, 0)
    assert_unchanged(ws, snap)


@pytest.mark.parametrize(
    "fixes, match",
    [
        ([{"index": 5000, "new_label": 1}], "index 5000"),
        ([{"index": -1, "drop": True}], "index -1"),
        ([{"index": 1, "new_label": 10}], "new_label"),
        ([{"index": 1, "drop": True}, {"index": 1, "new_label": 2}], "second time"),
        ([], "no fixes"),
    ],
)
def test_apply_fixes_rejects_bad_fixes(ws, digits, fixes, match):
    with pytest.raises(BadInput, match=match):
        apply_fixes(ws, digits, fixes)


def test_new_versions_of_a_large_dataset_never_hold_its_images(tmp_path):
    """A fix, a merge, a grown pool, new labels and flipped labels of a 128 MiB version, each in a
    fresh process: the images are copied a chunk at a time (or, where the rows are the parent's,
    not at all), and the normalisation statistics come from chunks too. Reading them whole took
    the version's size at least once per new version, eight times over for the float statistics."""
    import subprocess
    import sys
    import textwrap

    from datamoat.workspace import Workspace

    ws = Workspace.init(tmp_path / "ws")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8192, 1, 128, 128), dtype=np.uint8)  # 128 MiB
    y = np.arange(8192) % 4
    y[:1024] = -1  # an unlabeled pool to label from
    base = make_dataset(ws, x, y, list("abcd"), name="big", source={"kind": "test"})
    del x
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        from datamoat.data import load_dataset
        from datamoat.data.pool import label_rows, with_pool
        from datamoat.data.versions import apply_fixes, flip_labels, merge
        from datamoat.workspace import Workspace
        def peak_mib():
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) // 1024
        ws = Workspace.open(sys.argv[1])
        base = load_dataset(ws, "big")
        new = np.zeros((16, 1, 128, 128), np.uint8)
        make = {
            "fix": lambda: apply_fixes(ws, base, [{"index": 2000, "drop": True}, {"index": 3000, "new_label": 1}]),
            "merge": lambda: merge(ws, base, new, np.arange(16) % 4, name="m", source={}),
            "pool": lambda: with_pool(ws, base, new),
            "label": lambda: label_rows(ws, base, np.arange(10), np.zeros(10, np.int64), origin="human", actor="t"),
            "flip": lambda: flip_labels(ws, base, 0.1)[0],
        }[sys.argv[2]]
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # the peak restarts from what is resident now
        before = peak_mib()
        child = make()
        print(peak_mib() - before, child.id)
        """
    )
    for how in ("fix", "merge", "pool", "label", "flip"):
        r = subprocess.run([sys.executable, "-c", script, str(ws.root), how], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        grew, child_id = r.stdout.split()
        assert int(grew) < 48, (how, grew)  # MiB, against the version's 128
        child = load_dataset(ws, child_id)
        if how == "fix":
            keep = np.ones(8192, bool)
            keep[2000] = False
            assert np.array_equal(child.x, base.x[keep]) and child.y[2999] == 1
            assert child.manifest["blobs"]["x"] == ws.put_array(base.x[keep])  # put_array's blob: same ids
        elif how in ("merge", "pool"):
            assert np.array_equal(child.x[:8192], base.x) and not child.x[8192:].any() and len(child.x) == 8208
        else:
            assert child.manifest["blobs"]["x"] == base.manifest["blobs"]["x"]  # the parent's images, uncopied
