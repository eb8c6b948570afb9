"""A loaded version maps its images; a pass over them in batches holds a batch, not the version."""

import sys

import numpy as np
import pytest

from datamoat.data import load_dataset, make_dataset
from datamoat.data.dataset import read_rows
from datamoat.models import new_model

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads the resident set from /proc")


def file_rss_mib() -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("RssFile:"))
    return int(line.split()[1]) / 1024


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A 48 MiB version (12,288 images of 3x32x32), loaded back, so its images are a mapping."""
    from datamoat.workspace import Workspace

    ws = Workspace.init(tmp_path_factory.mktemp("ws"))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12_288, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 4, 12_288)
    ds = make_dataset(ws, x, y, ["a", "b", "c", "d"], name="big", source={"kind": "test"})
    return load_dataset(ws, ds.id), x


def test_read_rows_gives_the_rows_and_drops_the_pages_it_read(big):
    ds, x = big
    rows = np.random.default_rng(1).permutation(len(x))
    before = file_rss_mib()
    for i in range(0, len(rows), 512):
        at = rows[i : i + 512]
        assert np.array_equal(read_rows(ds.x, at), x[at])
    assert file_rss_mib() - before < 8  # one batch is 1.5 MiB; the version is 48
    # The same pass by plain indexing keeps every page it touched: the check above can fail.
    for i in range(0, len(rows), 512):
        np.array(ds.x[rows[i : i + 512]])
    assert file_rss_mib() - before > 24
    read_rows(ds.x, slice(0, 1))  # and one read hands them back
    assert file_rss_mib() - before < 8


def test_scoring_a_mapped_version_by_rows_matches_scoring_a_copy(big):
    ds, x = big
    model = new_model("mlp", ds, seed=0)
    rows = np.array([5, 4000, 17, 12_287])
    assert np.allclose(model.logits(ds.x, rows=rows, batch_size=2), model.logits(x[rows]), atol=1e-6)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's heap, read from /proc")
def test_freed_heap_memory_goes_back_to_the_os():
    """What `Model.logits` relies on once a batch: memory freed between live allocations is returned."""
    import ctypes

    from datamoat.data.dataset import release_freed_memory

    def anon_mib() -> float:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:")) / 1024

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    # M_MMAP_THRESHOLD (-3): 2 MiB blocks come from the heap, as they do once glibc has seen large frees.
    libc.mallopt(-3, 64 << 20)
    blocks, keep = [], []
    try:
        for _ in range(100):  # 2 MiB each, a live block after each: the heap cannot shrink from its top
            blocks.append(libc.malloc(2 << 20))
            ctypes.memset(blocks[-1], 1, 2 << 20)
            keep.append(libc.malloc(300_001))
        for b in blocks:
            libc.free(b)
        before = anon_mib()
        release_freed_memory()
        after = anon_mib()
    finally:
        for k in keep:
            libc.free(k)
        libc.mallopt(-3, 128 << 10)  # glibc's starting threshold
    assert before - after > 100, (before, after)  # most of the 200 MiB freed came back
