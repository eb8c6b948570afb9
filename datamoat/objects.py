"""The content-addressed object store: blobs named by their sha256, as files under a workspace's
``objects/`` or at an fsspec URL (``s3://``, ``gs://``, ``az://``, ``file://``, ``memory://``).

Every read is checked against the blob's hash, wherever it came from: neither a folder nor a bucket
is trusted. Credentials come from the protocol's standard environment variables and files, never
from the URL (refused) or the catalog.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

from datamoat.errors import BadInput, NotFound
from datamoat.files import atomic_path, atomic_write, fsync_dir, make_dirs

__all__ = ["OBJECTS_URL_FILE", "ObjectStore", "check_objects_url"]

OBJECTS_URL_FILE = "objects.url"


def check_objects_url(url: str) -> str:
    """An object-store URL as the workspace records it, or a one-line refusal: it needs a protocol
    and must carry no credentials (they come from the environment, never from a file or the catalog).

    >>> check_objects_url("s3://bucket/datamoat/")
    's3://bucket/datamoat'
    >>> check_objects_url("s3://KEY:SECRET@bucket/x")
    Traceback (most recent call last):
    ...
    datamoat.errors.BadInput: object store URL s3://...@bucket/x carries credentials: ...
    """
    url = url.strip().rstrip("/")
    proto, sep, rest = url.partition("://")
    if not sep or not proto or not rest:
        raise BadInput(
            f"object store URL {url!r} has no protocol: give one like s3://bucket/prefix or file:///mnt/store"
        )
    if proto == "file" and not rest.startswith("/"):
        raise BadInput(f"object store URL {url!r} is relative: give an absolute path, file:///mnt/store")
    if "@" in rest.split("/", 1)[0]:
        raise BadInput(
            f"object store URL {proto}://...@{rest.split('@', 1)[1]} carries credentials: remove them and set the "
            "protocol's standard variables or files instead (AWS_ACCESS_KEY_ID, GOOGLE_APPLICATION_CREDENTIALS...)"
        )
    return url


class ObjectStore:
    """Blobs by sha256 under `objects` (a local folder) or, when `objects_url` is set, at that URL.

    >>> import tempfile
    >>> store = ObjectStore(Path(tempfile.mkdtemp()), None)
    >>> store.get_bytes(store.put_bytes(b"hello"))
    b'hello'
    """

    def __init__(self, objects: Path, url: str | None):
        self.url = url  # the store as recorded: None for `objects`, else a URL
        # A file:// store is a folder like `objects`: written atomically, arrays mapped, not fetched.
        local = url is not None and url.startswith("file://")
        self.objects = Path(url[len("file://") :]) if local and url else objects
        self.objects_url = None if local else url  # None: the blobs are files under `objects`

    def object_path(self, sha: str) -> Path:
        """The local file of a blob (a workspace whose objects are at a URL has none: see
        `object_location`)."""
        if self.objects_url is not None:
            raise BadInput(f"this store keeps its objects at {self.objects_url}, not in local files")
        return self.objects / sha[:2] / sha[2:]

    @property
    def object_root(self) -> str:
        """The store's folder or URL: blob `sha` is at ``{object_root}/{sha[:2]}/{sha[2:]}``."""
        return self.objects_url or str(self.objects)

    def object_location(self, sha: str) -> str:
        """Where a blob is: a local path, or its URL in the object store. `datamoat.data.shards`'
        readers take either, so callers read records without caring which."""
        return f"{self.object_root}/{sha[:2]}/{sha[2:]}"

    def _fs(self) -> tuple[Any, str]:
        import fsspec  # type: ignore[import-untyped]  # no stubs in the lock

        assert self.objects_url is not None
        fs, base = fsspec.core.url_to_fs(self.objects_url)
        if getattr(fs, "auto_mkdir", True) is False:  # real folders (local://): make a blob's folder as it is put
            fs.auto_mkdir = True
        return fs, base

    def _remote(self, sha: str) -> tuple[Any, str]:
        fs, base = self._fs()
        return fs, f"{base.rstrip('/')}/{sha[:2]}/{sha[2:]}"

    def has_object(self, sha: str) -> bool:
        if self.objects_url is None:
            return self.object_path(sha).exists()
        fs, path = self._remote(sha)
        return bool(fs.exists(path))

    def object_size(self, sha: str) -> int:
        """A stored blob's size in bytes, from the store (never from the catalog)."""
        if self.objects_url is None:
            return self.object_path(sha).stat().st_size
        fs, path = self._remote(sha)
        return int(fs.size(path))

    def put_bytes(self, data: bytes) -> str:
        """Store `data` under its sha256 and return the full hex digest."""
        sha = hashlib.sha256(data).hexdigest()
        if self.objects_url is None:
            path = self.object_path(sha)
            if not path.exists():
                atomic_write(path, data)
        else:
            fs, path_ = self._remote(sha)
            if not fs.exists(path_):  # content-addressed: an object already there is this one
                fs.pipe_file(path_, data)
        return sha

    def put_local_file(self, sha: str, src: Path) -> None:
        """Move the finished local file `src`, whose sha256 the caller computed while writing it, into
        the store as blob `sha` (a shard too big to hold in memory); `src` is gone afterwards."""
        if self.objects_url is None:
            path = self.object_path(sha)
            make_dirs(path.parent)
            if path.exists():  # content-addressed: the same blob is already stored
                src.unlink()
                return
            os.chmod(src, 0o600)
            os.replace(src, path)
            fsync_dir(path.parent)
            return
        fs, path_ = self._remote(sha)
        if not fs.exists(path_):
            fs.put_file(str(src), path_)
        src.unlink()

    def put_file(self, src: str | os.PathLike[str]) -> str:
        return self.put_bytes(Path(src).read_bytes())

    def get_bytes(self, sha: str) -> bytes:
        where = self.objects_url or self.objects
        if not self.has_object(sha):
            raise NotFound(f"artifact {sha[:12]} is missing from {where}: the workspace is incomplete")
        if self.objects_url is None:
            data = self.object_path(sha).read_bytes()
        else:
            fs, path = self._remote(sha)
            data = bytes(fs.cat_file(path))
        if hashlib.sha256(data).hexdigest() != sha:
            raise BadInput(
                f"artifact {sha[:12]} is corrupt (hash mismatch): restore {self.object_location(sha)} from a backup"
            )
        return data

    def put_array(self, arr: Any) -> str:
        """Store a numpy array as .npy bytes (deterministic, so content-addressed)."""
        import numpy as np

        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
        return self.put_bytes(buf.getvalue())

    def get_array(self, sha: str, *, mmap: bool = False) -> Any:
        """A stored array. `mmap` maps the blob read-only instead of reading it, so only the pages a
        caller touches take memory (a dataset's images, whatever their number); its hash is still
        checked first, in chunks. A blob at a URL is first copied, in chunks, to a local cache
        (`cached_copy`) and mapped from there: rows are read at random, which would be a request
        each from a bucket.

        >>> import tempfile, numpy as np
        >>> store = ObjectStore(Path(tempfile.mkdtemp()), None)
        >>> store.get_array(store.put_array(np.arange(3)), mmap=True).tolist()
        [0, 1, 2]
        """
        import numpy as np

        if not mmap:
            return np.load(io.BytesIO(self.get_bytes(sha)), allow_pickle=False)
        if self.objects_url is None:
            path = self.object_path(sha)
            if not path.exists():
                raise NotFound(f"artifact {sha[:12]} is missing from {self.objects}: the workspace is incomplete")
            self._check_file(sha, path)
        else:
            path = self.cached_copy(sha)
        return np.load(path, mmap_mode="r", allow_pickle=False)

    def _check_file(self, sha: str, path: Path) -> None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        if h.hexdigest() != sha:
            raise BadInput(f"artifact {sha[:12]} is corrupt (hash mismatch): restore {path} from a backup")

    def cached_copy(self, sha: str) -> Path:
        """A local file of blob `sha` from a store at a URL, under ``objects/cache/`` beside the
        catalog: downloaded in 4 MiB chunks (memory stays flat, whatever the blob's size), its hash
        checked on the way, renamed into place only when it matched; a copy already there is checked
        again before use, as every local blob is. Processes of one machine that ask at once (DDP ranks)
        fetch it once: the first holds a lock beside the copy, the others wait for it and use its copy.
        The cache can be deleted at any time.

        >>> import tempfile, uuid
        >>> store = ObjectStore(Path(tempfile.mkdtemp()), f"memory://{uuid.uuid4().hex}")
        >>> store.cached_copy(store.put_bytes(b"rows")).read_bytes()
        b'rows'
        """
        if self.objects_url is None:
            raise BadInput(f"this store keeps its objects in {self.objects}: read them there, not from a cache")
        path = self.objects / "cache" / sha[:2] / sha[2:]
        if not path.exists():
            import fcntl

            make_dirs(path.parent)
            fd = os.open(path.parent / f".{path.name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:  # one process of a machine fetches (DDP ranks start together); the others wait for its copy
                fcntl.flock(fd, fcntl.LOCK_EX)
                if not path.exists():
                    self._fetch(sha, path)
                    return path
            finally:
                os.close(fd)  # and with it the lock
        self._check_file(sha, path)
        return path

    def _fetch(self, sha: str, path: Path) -> None:
        """Blob `sha` from the URL store to `path`, in 4 MiB chunks, hashed on the way: renamed into
        place only when the hash matched."""
        fs, remote = self._remote(sha)
        if not fs.exists(remote):
            raise NotFound(f"artifact {sha[:12]} is missing from {self.objects_url}: the workspace is incomplete")
        h = hashlib.sha256()
        with atomic_path(path) as tmp:
            with fs.open(remote, "rb") as src, open(tmp, "wb") as dst:
                while chunk := src.read(4 << 20):
                    h.update(chunk)
                    dst.write(chunk)
            if h.hexdigest() != sha:  # raised inside the block: the temp file is deleted, nothing cached
                raise BadInput(
                    f"artifact {sha[:12]} is corrupt (hash mismatch): restore {self.object_location(sha)} from a backup"
                )
