"""Where an import's files come from, listed lazily (issue 17, 18): a folder of class subfolders (or
an unlabeled folder), or a CSV / JSON-lines manifest read a row at a time, so a listing of millions
holds one folder's names, never an object a file.

>>> import tempfile
>>> root = Path(tempfile.mkdtemp()); (root / "cat").mkdir()
>>> _ = (root / "cat" / "a.png").write_bytes(b"x")
>>> items, stray = list_folder(root)
>>> [(i.rel, i.label) for i in items], stray
([('cat/a.png', 'cat')], [])
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import json
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from datamoat.errors import BadInput

__all__ = ["Item", "READ_THREADS", "list_folder", "list_manifest", "read_ahead"]

T = TypeVar("T")
READ_THREADS = 8  # files being fetched at once: the queue depth SSDs and network filesystems need


@dataclasses.dataclass(frozen=True)
class Item:
    """One file to import."""

    path: Path  # where to read it
    rel: str  # how the report and the index name it (relative to the source)
    label: str | None
    extra: dict[str, Any]


def visible_files(folder: Path) -> tuple[list[str], list[str]]:
    """The names of the files and of the folders in `folder` (links followed) not starting with a
    dot, sorted. The directory's own entry types answer without a stat a file, which on a cold disk
    is a read a file."""
    files, dirs = [], []
    with os.scandir(folder) as it:
        for e in it:
            if not e.name.startswith("."):
                if e.is_file():
                    files.append(e.name)
                elif e.is_dir():
                    dirs.append(e.name)
    return sorted(files), sorted(dirs)


def list_folder(root: Path) -> tuple[Iterator[Item], list[str]]:
    """Class subfolders (labels = their names), or, with none, an unlabeled folder; and stray files.
    The items come lazily, one folder listed at a time, so a listing holds names, not an object a file."""
    files, dirs = visible_files(root)
    if not dirs:
        return (Item(root / n, n, None, {}) for n in files), []
    items = (Item(root / d / f, f"{d}/{f}", d, {}) for d in dirs for f in visible_files(root / d)[0])
    return items, files


def read_ahead(items: Iterable[T], path: Callable[[T], Path], depth: int) -> Iterator[T]:
    """`items` in their order, while threads ask the OS for the files of the next `depth` ones, so
    the reader finds them in the page cache instead of waiting for one disk read after another.

    Nothing is held but the window of items: the threads only open each file and advise the kernel
    to read it (or, without ``posix_fadvise``, read and discard it a block at a time), and the reader
    still reads and checks every file itself. A file that cannot be opened is left to the reader to
    report. ``depth`` 0 reads ahead nothing.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp()); _ = (folder / "a").write_bytes(b"x")
    >>> [p.name for p in read_ahead([folder / "a", folder / "gone"], lambda p: p, depth=4)]
    ['a', 'gone']
    """
    if depth <= 0:
        yield from items
        return
    from concurrent.futures import Future, ThreadPoolExecutor

    window: collections.deque[tuple[T, Future[None]]] = collections.deque()
    pool = ThreadPoolExecutor(min(READ_THREADS, depth), thread_name_prefix="datamoat-read-ahead")

    def pop() -> T:
        item, fut = window.popleft()
        fut.cancel()  # not started yet: the reader is there first, and the queue stays the window
        return item

    try:
        for item in items:
            window.append((item, pool.submit(_warm, path(item))))
            if len(window) > depth:
                yield pop()
        while window:
            yield pop()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # a reader that stops early waits for no queued file


def _warm(path: Path) -> None:
    # O_NONBLOCK: a FIFO swapped in for a listed file must not hang a thread; only regular files are read.
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        else:
            while os.read(fd, 1 << 20):
                pass
    except OSError:
        pass
    finally:
        os.close(fd)


def list_manifest(path: Path) -> Iterator[Item]:
    """Rows of a CSV (with a header) or JSON-lines manifest, read lazily (a manifest of millions is
    never held); paths are relative to the manifest."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        if path.suffix.lower() == ".csv":
            reader = csv.DictReader(f)
            rows: Iterator[tuple[int, Any]] = ((reader.line_num, r) for r in reader)
        else:
            rows = ((i, _json_line(path, i, line)) for i, line in enumerate(f, 1) if line.strip())
        for lineno, r in rows:
            if not isinstance(r, dict) or not isinstance(r.get("path"), str) or not r["path"] or None in r:
                raise BadInput(f"{path} line {lineno}: every row needs a 'path' (and no cells past the header)")
            label = r.get("label")
            extra = {k: v for k, v in r.items() if k not in ("path", "label")}
            yield Item(path.parent / r["path"], r["path"], None if label in (None, "") else str(label), extra)


def _json_line(path: Path, i: int, line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise BadInput(f"{path} line {i} is not JSON ({e.msg}): one JSON object per line") from None
