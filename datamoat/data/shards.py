"""Immutable tar shards of encoded records, in the WebDataset convention (issue 17).

A shard is a plain, uncompressed tar file whose members are ``<key>.<ext>`` (the key is the sha256
of the member's bytes). The shard itself is named by the sha256 of its own bytes, so shards are
content-addressed and write-once. Headers are fixed (ustar, mtime 0, uid/gid 0, no owner names,
mode 0444), so the same records in the same order give byte-identical shards.

Metadata does not live in the shards: the writer returns each record's data offset and size, and
the caller keeps them in an index, so one record is one seek and one read (or one HTTP range request),
and a whole shard streams front to back with `tarfile`'s stream mode. bench/results/shards.md has
the measurements behind this choice (against Parquet and Lance).

>>> import tempfile
>>> out = tempfile.mkdtemp()
>>> recs = [record(b"hello", "txt"), record(b"world", "txt")]
>>> [info] = write_shards(recs, out)
>>> info.count, info.size
(2, 10240)
>>> ref = info.records[1]
>>> read_record(info.path, ref.offset, ref.size)
b'world'
>>> [name for name, _ in iter_shard(info.path)] == [f"{k}.txt" for k, _, _ in recs]
True
"""

from __future__ import annotations

import array
import contextlib
import dataclasses
import hashlib
import os
import re
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from datamoat.errors import BadInput, TooLarge
from datamoat.files import TEMP_SUFFIX, fsync_dir, make_dirs
from datamoat.workspace import Workspace

__all__ = [
    "DEFAULT_MAX_SHARD_BYTES",
    "DEFAULT_MAX_MEMBER_BYTES",
    "RecordRef",
    "ShardInfo",
    "record",
    "write_shards",
    "read_record",
    "iter_shard",
    "open_shard",
    "warm_page_cache",
    "available_memory",
]

DEFAULT_MAX_SHARD_BYTES = 256 << 20
# Reading refuses a member larger than this: a shard from elsewhere must not make us allocate
# gigabytes for one record (the photo importer caps files at 64 MB by default).
DEFAULT_MAX_MEMBER_BYTES = 256 << 20
_BLOCK = tarfile.BLOCKSIZE
# A key or extension: no separators, no dots inside, so a member name can never leave a folder.
_KEY = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
_EXT = re.compile(r"^[a-z0-9]{1,16}$")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}\.[A-Za-z0-9]{1,16}$")


@dataclasses.dataclass(frozen=True)
class RecordRef:
    """Where one record's bytes lie: in shard `shard` (its sha256), `size` bytes from `offset`."""

    key: str
    ext: str
    shard: str
    offset: int
    size: int


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    """One written shard: its sha256 (its name), size in bytes, record count, path (a URL when the
    workspace keeps its objects in object storage), and records; `offsets` and `sizes` hold every
    record's data offset and size in order as 8-byte integers, `first_key` the first record's key."""

    sha256: str
    size: int
    count: int
    path: Path | str
    records: tuple[RecordRef, ...]
    first_key: str = ""
    offsets: array.array[int] = dataclasses.field(default_factory=lambda: array.array("q"), compare=False)
    sizes: array.array[int] = dataclasses.field(default_factory=lambda: array.array("q"), compare=False)


def record(data: bytes, ext: str) -> tuple[str, str, bytes]:
    """A record for `write_shards` keyed by the sha256 of `data`.

    >>> record(b"x", "jpg")[0][:12]
    '2d711642b726'
    """
    return hashlib.sha256(data).hexdigest(), ext, data


def _padded(n: int) -> int:
    return -(-n // _BLOCK) * _BLOCK


def _final_size(members: int) -> int:
    """A tar's size once closed: its members, two zero blocks, padded to a whole 10240-byte record."""
    rec = tarfile.RECORDSIZE
    return -(-(members + 2 * _BLOCK) // rec) * rec


class _HashingWriter:
    """A write-only file that hashes what passes through, so a shard is named without a second read."""

    def __init__(self, f: IO[bytes]):
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def write(self, b: Any) -> int:
        self.h.update(b)
        self.n += len(b)
        return self.f.write(b)

    def tell(self) -> int:
        return self.n


class _ShardWriter:
    """One shard in progress: a temp file in the destination folder, renamed to its hash on close."""

    def __init__(self, folder: Path, keep_refs: bool = True):
        self.folder = folder
        make_dirs(folder)
        fd, self.tmp = tempfile.mkstemp(dir=folder, prefix=".shard.", suffix=TEMP_SUFFIX)
        self.f = os.fdopen(fd, "wb")
        self.w = _HashingWriter(self.f)
        # ustar, fixed: every name here is under 100 characters, so each member is exactly one
        # 512-byte header and no PAX or GNU extension header ever appears.
        fobj: Any = self.w  # duck-typed: tarfile only calls write() and tell()
        self.tar = tarfile.open(fileobj=fobj, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 - closed in close()
        # 16 bytes a record, not a Python object: a 256 MiB shard of small photos holds 100,000 and more.
        self.offsets, self.sizes, self.first_key = array.array("q"), array.array("q"), ""
        self.keys: list[tuple[str, str]] | None = [] if keep_refs else None
        self.payload = 0

    def add(self, key: str, ext: str, data: bytes) -> None:
        ti = tarfile.TarInfo(f"{key}.{ext}")
        ti.size, ti.mtime, ti.mode, ti.uid, ti.gid = len(data), 0, 0o444, 0, 0
        ti.uname = ti.gname = ""
        ti.type = tarfile.REGTYPE
        start = self.tar.offset
        self.tar.addfile(ti, _Bytes(data))
        # TarFile keeps a TarInfo of every member it wrote, which writing never reads again: dropped,
        # so a shard of tens of thousands of photos does not hold an object each.
        self.tar.members.clear()  # type: ignore[attr-defined]  # stdlib attribute, not in the stubs
        # The data starts right after whatever header tarfile wrote (one block for ustar): what the
        # member took, less its padded data.
        header = self.tar.offset - start - _padded(len(data))
        self.offsets.append(start + header)
        self.sizes.append(len(data))
        self.first_key = self.first_key or key
        if self.keys is not None:
            self.keys.append((key, ext))
        self.payload = self.tar.offset

    def close(self, dest: Path | None, ws: Workspace | None) -> ShardInfo:
        self.tar.close()
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        sha, size = self.w.h.hexdigest(), self.w.n
        keys = self.keys or []
        refs = tuple(RecordRef(k, e, sha, off, n) for (k, e), off, n in zip(keys, self.offsets, self.sizes))
        if ws is not None:  # into the store, local or at a URL, under its sha256
            ws.put_local_file(sha, Path(self.tmp))
            where = ws.object_path(sha) if ws.objects_url is None else ws.object_location(sha)
            return ShardInfo(sha, size, len(self.offsets), where, refs, self.first_key, self.offsets, self.sizes)
        path = (dest or self.folder) / f"{sha}.tar"
        make_dirs(path.parent)
        if path.exists():  # the same shard already stored: content-addressed, so it is this one
            os.unlink(self.tmp)
        else:
            os.chmod(self.tmp, 0o600)
            os.replace(self.tmp, path)
            fsync_dir(path.parent)
        return ShardInfo(sha, size, len(self.offsets), path, refs, self.first_key, self.offsets, self.sizes)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.f.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


class _Bytes:
    """The smallest file object `TarFile.addfile` reads from (avoids copying into a BytesIO)."""

    def __init__(self, data: bytes):
        self.view, self.pos = memoryview(data), 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.view) if n < 0 else self.pos + n
        out = bytes(self.view[self.pos : end])
        self.pos += len(out)
        return out


def write_shards(
    records: Iterable[tuple[str, str, bytes]],
    out: str | os.PathLike[str] | Workspace,
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    on_shard: Callable[[ShardInfo], None] | None = None,
) -> list[ShardInfo]:
    """Write (key, ext, bytes) records, in the order given, into as few tar shards as keep each
    under `max_shard_bytes` (a record larger than that gets a shard of its own).

    `out` is a folder (shards are ``<sha256>.tar`` in it) or a `Workspace` (shards go into its object
    store under their sha256, as `Workspace.put_bytes` would put them). Shards are streamed to a
    temp file and renamed into place, so a shard is never held in memory and never seen half-written.
    Keys must be the records' sha256 (see `record`); they are not re-hashed here. With `on_shard`,
    each shard is handed to it as it closes, with its records' positions as `offsets` and `sizes`
    (and no `RecordRef` a record), and the returned infos carry neither, so memory holds one shard's
    positions as two integer arrays, not an object a record (a photo import of millions).
    """
    if max_shard_bytes < tarfile.RECORDSIZE:
        raise BadInput(f"max_shard_bytes must be at least {tarfile.RECORDSIZE}, got {max_shard_bytes}")
    ws = out if isinstance(out, Workspace) else None
    folder = ws.objects if ws is not None else Path(out)  # type: ignore[arg-type]
    shards: list[ShardInfo] = []
    cur: _ShardWriter | None = None
    try:
        for key, ext, data in records:
            if not _KEY.match(key) or not _EXT.match(ext):
                raise BadInput(f"record name {key!r}.{ext!r} is not a plain key.ext: keys are hashes, exts like 'jpg'")
            if (
                cur is not None
                and cur.offsets
                and _final_size(cur.payload + _BLOCK + _padded(len(data))) > max_shard_bytes
            ):
                shards.append(_done(cur.close(None, ws), on_shard))
                cur = None
            if cur is None:
                cur = _ShardWriter(folder, keep_refs=on_shard is None)
            cur.add(key, ext, data)
        if cur is not None:
            shards.append(_done(cur.close(None, ws), on_shard))
            cur = None
    finally:
        if cur is not None:
            cur.abort()
    return shards


def _done(info: ShardInfo, on_shard: Callable[[ShardInfo], None] | None) -> ShardInfo:
    if on_shard is None:
        return info
    on_shard(info)
    return dataclasses.replace(info, records=(), offsets=array.array("q"), sizes=array.array("q"))


def _is_url(src: object) -> bool:
    return isinstance(src, str) and "://" in src


def open_shard(src: str | os.PathLike[str]) -> IO[bytes]:
    """A binary file object for a shard: a local path, or any fsspec URL (``file://``, ``s3://``...)."""
    if _is_url(src):
        import fsspec  # type: ignore[import-untyped]  # no stubs in the lock

        return fsspec.open(str(src), "rb").open()  # type: ignore[no-any-return]
    return open(src, "rb")  # noqa: SIM115 - the caller closes it


def read_record(src: str | os.PathLike[str] | IO[bytes], offset: int, size: int) -> bytes:
    """The `size` bytes at `offset` of a shard: one seek and one read (for a URL, one range read).

    `src` is an open binary file (kept open by the caller, the fast path for many reads), a local path,
    or an fsspec URL. Nothing but the length is checked: the caller's index knows the record's hash.
    """
    if offset < 0 or size < 0:
        raise BadInput(f"record offset and size must be non-negative, got {offset} and {size}")
    if hasattr(src, "read"):
        f: Any = src
        f.seek(offset)
        data = f.read(size)
    elif _is_url(src):
        import fsspec  # type: ignore[import-untyped]  # no stubs in the lock

        fs, path = fsspec.core.url_to_fs(str(src))
        data = fs.cat_file(path, start=offset, end=offset + size)
    else:
        with open(src, "rb") as f:  # type: ignore[arg-type]
            f.seek(offset)
            data = f.read(size)
    if len(data) != size:
        raise BadInput(f"shard {src} ends before byte {offset + size}: it is truncated, restore it from the store")
    return bytes(data)


def iter_shard(
    src: str | os.PathLike[str] | IO[bytes], *, max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
) -> Iterator[tuple[str, bytes]]:
    """Stream a shard's members front to back as (name, bytes), never extracting anything to disk.

    The shard may come from elsewhere, so every member is checked before it is read: only regular
    files, only flat ``key.ext`` names (no "/", no "..", nothing hidden), at most `max_member_bytes`
    each. Anything else raises (`BadInput`, `TooLarge`): a shard is refused, not half-trusted.
    """
    own = not hasattr(src, "read")
    f: Any = open_shard(src) if own else src  # type: ignore[arg-type]
    try:
        # "r|": plain tar read as a stream (no seeking, no compression: nothing to inflate).
        with tarfile.open(fileobj=f, mode="r|") as tar:
            for ti in tar:
                if not ti.isreg():
                    raise BadInput(f"shard {src}: member {ti.name!r} is not a regular file (links are refused)")
                if not _NAME.match(ti.name) or ".." in ti.name:
                    raise BadInput(f"shard {src}: member name {ti.name!r} is not a flat key.ext name")
                if ti.size > max_member_bytes:
                    raise TooLarge(f"shard {src}: member {ti.name!r} is {ti.size} bytes, over {max_member_bytes}")
                fobj = tar.extractfile(ti)
                assert fobj is not None  # a regular file always has one
                data = fobj.read()
                if len(data) != ti.size:
                    raise BadInput(f"shard {src}: member {ti.name!r} is truncated")
                yield ti.name, data
    except tarfile.TarError as e:
        raise BadInput(f"shard {src} is not a readable tar file ({e})") from None
    finally:
        if own:
            f.close()


def available_memory() -> int:
    """Bytes the kernel says it can give without swapping (``MemAvailable``); 0 where it does not say.

    >>> available_memory() >= 0
    True
    """
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return 0


def warm_page_cache(paths: list[str], budget: int) -> int:
    """Read whole files front to back, a MiB at a time, so the random reads that follow come from
    the operating system's page cache instead of one disk access each; files past `budget` bytes in
    all are left alone. The pages read belong to the page cache, which the kernel reclaims under
    pressure, not to this process. Returns the bytes read.

    >>> import tempfile
    >>> f = tempfile.NamedTemporaryFile(delete=False); _ = f.write(b"x" * 3000); f.close()
    >>> warm_page_cache([f.name], budget=1 << 20), warm_page_cache([f.name], budget=100)
    (3000, 0)
    """
    done, buf = 0, bytearray(1 << 20)
    for path in paths:
        try:
            size = os.path.getsize(path)
            if done + size > budget:
                continue
            with open(path, "rb", buffering=0) as f:
                while n := f.readinto(buf):
                    done += n
        except OSError:  # a shard that cannot be read fails where it is read, with its own error
            continue
    return done
