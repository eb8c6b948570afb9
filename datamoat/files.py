"""Files that survive a crash: atomic writes through a temp file and a rename, private folders and
files, and the sweep of temp files a crash left behind. The workspace and every writer use these."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from datamoat.errors import BadInput

__all__ = ["TEMP_SUFFIX", "atomic_write", "atomic_path", "make_dirs", "touch_private", "fsync_dir", "sweep_temp_files"]

TEMP_SUFFIX = ".tmp"


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file in the same directory + rename,
    then fsync the directory, so after a crash the file is either the old one
    or the new one, and the rename itself survives a power cut.

    The file is 0600 (mkstemp's mode): models, data and keys are the owner's.
    A temp file a crash leaves behind is swept by `sweep_temp_files`.
    """
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def atomic_path(path: Path, *, overwrite: bool = True) -> Iterator[Path]:
    """A temp path beside `path` for a writer that opens files itself (Parquet); renamed to `path`
    when the block ends without an error, deleted when it raises, so `path` never holds half a file.

    Without `overwrite` an existing `path` is refused, also one that appeared while the block ran:
    the temp file is hard-linked into place, which fails rather than replaces.

    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "a.txt"
    >>> with atomic_path(out, overwrite=False) as tmp:
    ...     _ = tmp.write_text("done")
    >>> out.read_text(), sorted(p.name for p in out.parent.iterdir())
    ('done', ['a.txt'])
    """
    make_dirs(path.parent)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)  # the writer reopens it; truncating keeps mkstemp's 0600
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            placed = False
            try:
                os.link(tmp, path)  # the temp name goes in `finally`
                placed = True
            except FileExistsError:
                pass
            except OSError:  # a file system without hard links: check, then rename
                if not path.exists():
                    os.replace(tmp, path)
                    placed = True
            if not placed:
                raise BadInput(f"{path} already exists: choose another path, or overwrite it (--overwrite)")
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(path.parent)


def make_dirs(path: Path) -> None:
    """`mkdir -p` with every folder it creates 0700 (mkdir's `mode` covers only the last)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for p in reversed(missing):
        with contextlib.suppress(FileExistsError):
            p.mkdir(mode=0o700)


def touch_private(path: Path) -> None:
    """Create `path` empty and 0600 if it does not exist, before a library
    (SQLite) creates it world-readable; SQLite gives its -wal and -shm files
    the database file's mode."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def sweep_temp_files(root: Path, older_than_s: float = 3600.0) -> int:
    """Delete `atomic_write` temp files under `root` that a crash left behind;
    returns how many. Only old ones: a fresh one may be another process's write
    in progress.

    >>> import tempfile
    >>> sweep_temp_files(Path(tempfile.mkdtemp()))
    0
    """
    cutoff, n = time.time() - older_than_s, 0
    for p in root.rglob(f".*{TEMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            if p.is_file() and p.stat().st_mtime < cutoff:
                p.unlink()
                n += 1
    return n
