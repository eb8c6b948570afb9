"""A loaded version maps its images; a pass over them in batches holds a batch, not the version."""

import sys

import numpy as np
import pytest

from datamoat.data import load_dataset, make_dataset
from datamoat.data.dataset import drop_pages, read_rows
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
    drop_pages(ds.x)  # which the mapping's own readers (index builds) hand back so
    assert file_rss_mib() - before < 8


def peak_growth_mib(path, select: str, read: str) -> int:
    """In a fresh process with the .npy at `path` mapped as `x`: how far its peak resident set
    (VmHWM) grows while `got = {read}` runs, `rows = {select}` first; `got` is checked against
    indexing the loaded array."""
    import subprocess
    import textwrap

    script = textwrap.dedent(
        f"""
        import numpy as np
        from datamoat.data.dataset import read_rows
        def peak_kib():
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        x = np.load({str(path)!r}, mmap_mode="r")
        rows = {select}
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # the peak restarts from what is resident now
        before = peak_kib()
        got = {read}
        grew = peak_kib() - before
        assert np.array_equal(got, np.load({str(path)!r})[rows])
        print(grew // 1024)
        """
    )
    return int(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout)


def test_a_batch_of_random_rows_never_maps_the_file(tmp_path):
    """The peak, not just what is left: a read through the mapping maps the page cache around every
    row it faults (a whole large folio, on recent kernels) until the drop, so one batch of random
    rows of a large version took memory by the version. `read_rows` reads them with pread."""
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (32_768, 4096), dtype=np.uint8))  # 128 MiB
    rows = "np.random.default_rng(1).choice(len(x), 512, replace=False)"  # 2 MiB of rows
    assert peak_growth_mib(path, rows, "read_rows(x, rows)") <= 4  # MiB: the batch itself, 2
    # Indexing the mapping maps at least each row's pages and whatever fault-around adds: the bound
    # above can fail.
    assert peak_growth_mib(path, rows, "np.array(x[rows])") >= 8


def test_a_slice_of_a_byte_column_takes_the_slice_not_an_index_of_it(tmp_path):
    """A chunk of an index's path bytes is a slice of millions of one-byte rows: reading it must not
    build an int64 index of every row (8 bytes a byte, and its diff 8 more), which at the end of an
    import of a million photos was a burst of 64 MiB for a 4 MiB chunk."""
    path = tmp_path / "paths.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, 16 << 20, dtype=np.uint8))  # 16 MiB
    # MiB: the 8 MiB read, not 16 bytes of index for each of its bytes (128 MiB and more)
    assert peak_growth_mib(path, "slice(1, 8 << 20)", "read_rows(x, rows)") <= 12


@pytest.mark.parametrize(
    "rows",
    [
        np.array([7, 0, 3, 3, -1]),
        np.array([2, 3, 4, 8, 9]),
        np.array([], dtype=np.int64),
        slice(2, 9),
        slice(9, 2),
        slice(-3, None),
        slice(0, 10, 3),
        [1, 5],
        np.arange(10) % 3 == 0,
    ],
    ids=["shuffled", "runs", "empty", "slice", "empty-slice", "negative-slice", "strided", "list", "mask"],
)
def test_read_rows_of_a_mapping_equals_indexing(tmp_path, rows):
    table = np.zeros(10, dtype=[("sha", "S4"), ("n", "<i8")])
    table["sha"], table["n"] = [b"%04d" % i for i in range(10)], np.arange(10) * 7
    np.save(tmp_path / "t.npy", table)
    mapped = np.load(tmp_path / "t.npy", mmap_mode="r")
    assert np.array_equal(read_rows(mapped, rows), table[rows])


def test_read_rows_of_views_refuses_rows_out_of_range_and_reads_private_mappings_as_mapped(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(20, dtype=np.float32).reshape(5, 4))
    with pytest.raises(IndexError, match="out of bounds"):
        read_rows(np.load(tmp_path / "a.npy", mmap_mode="r"), np.array([1, 5]))
    view = np.load(tmp_path / "a.npy", mmap_mode="r")[2:]  # starts 2 rows into the file
    assert read_rows(view, np.array([2, 0])).tolist() == [[16, 17, 18, 19], [8, 9, 10, 11]]
    assert read_rows(view[:, 1:], np.array([0])).tolist() == [[9, 10, 11]]  # not contiguous: indexed
    private = np.load(tmp_path / "a.npy", mmap_mode="c")
    private[2] = -1  # only in this process's copy: the file still holds 8..11
    assert read_rows(private, np.array([2]))[0].tolist() == [-1, -1, -1, -1]


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


def test_channel_stats_match_float_statistics_whatever_the_chunks_and_order():
    from datamoat.data.dataset import channel_stats

    x = np.random.default_rng(3).integers(0, 256, (50, 3, 5, 4), dtype=np.uint8)  # (N, C, H, W)
    x[:, 2] //= 8  # channels unlike one another
    rows = np.flatnonzero(np.arange(50) % 3 != 0)
    ref = x[rows].astype(np.float64) / 255.0
    mean, std = channel_stats(x, rows)
    assert np.allclose(mean, ref.mean(axis=(0, 2, 3)), rtol=0, atol=1e-12)
    assert np.allclose(std, ref.std(axis=(0, 2, 3)) + 1e-8, rtol=0, atol=1e-12)
    assert mean[2] < mean[0] and std[2] < std[0]
    assert channel_stats(x, rows[::-1].copy(), chunk=7) == (mean, std)  # exact counts: bit for bit
