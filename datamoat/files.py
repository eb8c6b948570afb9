"""Files that survive a crash: atomic writes through a temp file and a rename, private folders and
files, scratch folders, and the sweep of what a crash left behind. The workspace and every writer use
these."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from datamoat.errors import BadInput, TooLarge

try:
    import fcntl
except ImportError:  # Windows: scratch folders are removed by their block only
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "SCRATCH_PREFIX",
    "TEMP_SUFFIX",
    "atomic_write",
    "atomic_path",
    "make_dirs",
    "read_capped",
    "touch_private",
    "fsync_dir",
    "scratch_dir",
    "sweep_scratch_dirs",
    "sweep_temp_files",
]

TEMP_SUFFIX = ".tmp"
SCRATCH_PREFIX = ".scratch-"
_SCRATCH_LOCK = "lock"
_SCRATCH_GRACE_S = 60.0  # a folder without its lock yet: its maker may be between mkdtemp and rename


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


def read_capped(path: Path, cap: int) -> bytes:
    """The bytes of the regular file at `path`: `TooLarge` over `cap` bytes (from its size, before
    reading), `BadInput` for a pipe, device or folder, `OSError` as the OS says.

    The file is opened without blocking, so a named pipe (which a manifest may name, or swap in for
    a listed file) is refused instead of waiting for a writer forever, and the size and type are
    those of what was opened, not of whatever the name points at by then.

    >>> import tempfile
    >>> f = Path(tempfile.mkdtemp()) / "a"; _ = f.write_bytes(b"abc")
    >>> read_capped(f, 3)
    b'abc'
    >>> read_capped(f.parent, 3)
    Traceback (most recent call last):
    datamoat.errors.BadInput: not a regular file (a pipe, device or folder)
    >>> read_capped(f, 2)
    Traceback (most recent call last):
    datamoat.errors.TooLarge: 3 bytes, over max_file_bytes 2
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadInput("not a regular file (a pipe, device or folder)")
        if st.st_size > cap:  # refused before reading, so a huge file costs nothing
            raise TooLarge(f"{st.st_size} bytes, over max_file_bytes {cap}")
        with open(fd, "rb", closefd=False) as f:
            data = f.read(cap + 1)  # + 1: a file that grew since fstat is still caught
    finally:
        os.close(fd)
    if len(data) > cap:
        raise TooLarge(f"over max_file_bytes {cap}")
    return data


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


@contextlib.contextmanager
def scratch_dir(parent: Path | None, purpose: str) -> Iterator[Path]:
    """A private folder for work that spills to disk (an import's sort), removed when the block ends,
    on an error too. A process killed inside the block cannot remove it, so the folder holds an
    exclusive `flock` for as long as its maker lives: the kernel drops the lock when the process dies,
    and `sweep_scratch_dirs` removes folders whose lock nobody holds, however long a live one runs.

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> with scratch_dir(root, "demo") as d:
    ...     sweep_scratch_dirs(root), d.exists()  # held by this process: kept
    (0, True)
    >>> d.exists()
    False
    """
    folder = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{purpose}-", dir=parent))
    lock = None
    try:
        if fcntl is not None:
            # Locked before it takes its name, so a sweeper that finds the lock file finds it held.
            new = folder / f".{_SCRATCH_LOCK}{TEMP_SUFFIX}"
            lock = open(new, "xb")  # noqa: SIM115 - held open for the block's life
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.replace(new, folder / _SCRATCH_LOCK)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if lock is not None:
            lock.close()


def sweep_scratch_dirs(root: Path) -> int:
    """Remove the `scratch_dir` folders directly under `root` whose maker is gone (its lock is free,
    or it never took one and is over a minute old); returns how many. A no-op where `flock` is
    missing (Windows): there a live folder cannot be told from a dead one.

    >>> import tempfile
    >>> sweep_scratch_dirs(Path(tempfile.mkdtemp()))
    0
    """
    if fcntl is None or not root.is_dir():
        return 0
    n = 0
    for folder in root.glob(f"{SCRATCH_PREFIX}*"):
        with contextlib.suppress(OSError):
            if not folder.is_dir() or folder.is_symlink():
                continue
            try:
                f = open(folder / _SCRATCH_LOCK, "rb")  # noqa: SIM115 - closed below, after the removal
            except FileNotFoundError:
                if folder.stat().st_mtime < time.time() - _SCRATCH_GRACE_S:
                    shutil.rmtree(folder, ignore_errors=True)
                    n += 1
                continue
            with f:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its maker is alive
                shutil.rmtree(folder, ignore_errors=True)
                n += 1
    return n
