"""The workspace: a SQLite catalog plus a content-addressed artifact store.

Layout of a workspace directory::

    catalog.db            SQLite (WAL): datasets, models, runs, evals
    objects/ab/cdef...    immutable blobs named by their sha256
    runs/<run id>/        checkpoints of training runs (mutable, resumable)
    reports/<id>/         rendered reports

Every write is atomic: blobs go to a temp file that is renamed into place,
and catalog rows are written in transactions. Several processes may write at
once; WAL mode and a busy timeout serialise them without corruption.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datamoat.errors import BadInput, NotFound

__all__ = [
    "Workspace",
    "default_root",
    "atomic_path",
    "atomic_write",
    "fsync_dir",
    "make_dirs",
    "safe_name",
    "short_hash",
    "sweep_temp_files",
    "touch_private",
]

DEFAULT_DIR = ".datamoat"
TABLES = ("datasets", "models", "runs", "evals")

# Each entry migrates the schema from version i to i + 1. Later stages append.
_MIGRATIONS: list[str] = [
    """
    CREATE TABLE datasets (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, created REAL NOT NULL,
        parent_id TEXT, source TEXT, manifest TEXT NOT NULL);
    CREATE TABLE models (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, created REAL NOT NULL,
        arch TEXT NOT NULL, dataset_id TEXT, parent_id TEXT, run_id TEXT,
        weights_sha TEXT NOT NULL, meta TEXT NOT NULL);
    CREATE TABLE runs (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, created REAL NOT NULL,
        dataset_id TEXT NOT NULL, arch TEXT NOT NULL, status TEXT NOT NULL,
        model_id TEXT, config TEXT NOT NULL, result TEXT);
    CREATE TABLE evals (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, created REAL NOT NULL,
        model_id TEXT NOT NULL, dataset_id TEXT NOT NULL, split TEXT NOT NULL,
        metrics TEXT NOT NULL, report TEXT);
    CREATE INDEX models_name ON models(name);
    CREATE INDEX datasets_name ON datasets(name);
    """,
]


def default_root() -> Path:
    """`$DATAMOAT_HOME` if set, else `./.datamoat`."""
    return Path(os.environ.get("DATAMOAT_HOME") or DEFAULT_DIR)


def short_hash(data: bytes, n: int = 12) -> str:
    return hashlib.sha256(data).hexdigest()[:n]


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_name(text: str, max_len: int = 64) -> str:
    """A file or folder name made from any string (a node, class, model, alias or
    device name): ASCII letters, digits, '.', '_' and '-' only, never hidden,
    '.' or '..'. When anything had to change, a short hash of the original is
    appended, so two different strings never share a name.

    >>> safe_name("teacher-int8")
    'teacher-int8'
    >>> safe_name("/features/conv/Conv")
    '_features_conv_Conv-aad91755'
    >>> safe_name("..")
    'x-5ec1f7e7'
    """
    clean = _UNSAFE.sub("_", text).lstrip(".")[:max_len]
    if clean == text and clean:
        return clean
    return f"{clean or 'x'}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


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


class Workspace:
    """A datamoat workspace rooted at a directory.

    >>> import tempfile
    >>> ws = Workspace.init(tempfile.mkdtemp())
    >>> sha = ws.put_bytes(b"hello")
    >>> ws.get_bytes(sha)
    b'hello'
    """

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.db_path = self.root / "catalog.db"
        self.objects = self.root / "objects"

    # -- lifecycle ---------------------------------------------------------
    @classmethod
    def init(cls, root: str | os.PathLike[str] | None = None) -> Workspace:
        """Create (or open) a workspace; idempotent."""
        ws = cls(root if root is not None else default_root())
        make_dirs(ws.objects)  # the owner's: models, data, tokens
        ws._migrate()
        sweep_temp_files(ws.root)
        return ws

    @classmethod
    def open(cls, root: str | os.PathLike[str] | None = None) -> Workspace:
        """Open an existing workspace; a clear error if there is none."""
        ws = cls(root if root is not None else default_root())
        if not ws.db_path.exists():
            raise NotFound(f"no datamoat workspace at {ws.root}: run `datamoat init {ws.root}` or set DATAMOAT_HOME")
        ws._migrate()
        sweep_temp_files(ws.root)
        return ws

    def connect(self) -> sqlite3.Connection:
        touch_private(self.db_path)
        conn = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: BEGIN IMMEDIATE takes the write lock up front,
        so two writers queue on the busy timeout instead of deadlocking."""
        conn = self.connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    def _migrate(self) -> None:
        with self.tx() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for i, script in enumerate(_MIGRATIONS[version:], start=version):
                for stmt in filter(str.strip, script.split(";")):
                    conn.execute(stmt)
                conn.execute(f"PRAGMA user_version={i + 1}")

    # -- content-addressed blobs -------------------------------------------
    def object_path(self, sha: str) -> Path:
        return self.objects / sha[:2] / sha[2:]

    def put_bytes(self, data: bytes) -> str:
        """Store `data` under its sha256 and return the full hex digest."""
        sha = hashlib.sha256(data).hexdigest()
        path = self.object_path(sha)
        if not path.exists():
            atomic_write(path, data)
        return sha

    def put_file(self, src: str | os.PathLike[str]) -> str:
        return self.put_bytes(Path(src).read_bytes())

    def get_bytes(self, sha: str) -> bytes:
        path = self.object_path(sha)
        if not path.exists():
            raise NotFound(f"artifact {sha[:12]} is missing from {self.objects}: the workspace is incomplete")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != sha:
            raise BadInput(f"artifact {sha[:12]} is corrupt (hash mismatch): restore {path} from a backup")
        return data

    def put_array(self, arr: Any) -> str:
        """Store a numpy array as .npy bytes (deterministic, so content-addressed)."""
        import numpy as np

        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
        return self.put_bytes(buf.getvalue())

    def get_array(self, sha: str) -> Any:
        import numpy as np

        return np.load(io.BytesIO(self.get_bytes(sha)), allow_pickle=False)

    # -- catalog -------------------------------------------------------------
    def insert(self, table: str, row: dict[str, Any], *, conn: sqlite3.Connection | None = None) -> None:
        """Insert a row; dict/list values are stored as JSON. Existing id: no-op."""
        assert table in TABLES or table.isidentifier()
        row = {k: (json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v) for k, v in row.items()}
        row.setdefault("created", time.time())
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        sql = f"INSERT OR IGNORE INTO {table} ({cols}) VALUES ({marks})"
        if conn is not None:
            conn.execute(sql, tuple(row.values()))
            return
        with self.tx() as c:
            c.execute(sql, tuple(row.values()))

    def update(self, table: str, id: str, **values: Any) -> None:
        values = {k: (json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v) for k, v in values.items()}
        sets = ", ".join(f"{k} = ?" for k in values)
        with self.tx() as c:
            c.execute(f"UPDATE {table} SET {sets} WHERE id = ?", (*values.values(), id))

    def rows(self, table: str, where: str = "", params: tuple = ()) -> list[dict[str, Any]]:
        conn = self.connect()
        try:
            cur = conn.execute(f"SELECT * FROM {table} {where} ORDER BY created", params)
            return [_decode(dict(r)) for r in cur.fetchall()]
        finally:
            conn.close()

    def resolve(self, table: str, ref: str) -> dict[str, Any]:
        """Find a row by full id, unique id prefix (4+ chars) or name (newest wins)."""
        kind = table.rstrip("s")
        hint = f"`datamoat {'data' if table == 'datasets' else table} list` shows what exists"
        if not ref:
            raise NotFound(f"no {kind} given: {hint}")
        exact = self.rows(table, "WHERE id = ?", (ref,))
        if exact:
            return exact[0]
        if len(ref) >= 4:
            pref = self.rows(table, "WHERE id LIKE ?", (ref.replace("%", "") + "%",))
            if len(pref) == 1:
                return pref[0]
            if len(pref) > 1:
                raise BadInput(f"{kind} id prefix {ref!r} is ambiguous ({len(pref)} matches): give more characters")
        named = self.rows(table, "WHERE name = ?", (ref,))
        if named:
            return named[-1]
        raise NotFound(f"unknown {kind} {ref!r}: {hint}")

    def new_id(self) -> str:
        return uuid.uuid4().hex[:12]

    def path_for(self, *parts: str) -> Path:
        """A folder under the workspace; every part must already be a safe name
        (see `safe_name`), so no caller can reach outside the workspace."""
        bad = [p for p in parts if safe_name(p) != p]
        if bad:
            raise ValueError(f"unsafe workspace path part(s) {bad!r}: pass them through safe_name() first")
        path = self.root.joinpath(*parts)
        make_dirs(path)
        return path


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    for key in ("manifest", "meta", "config", "result", "metrics", "report", "source"):
        val = row.get(key)
        if isinstance(val, str) and val[:1] in "{[":
            row[key] = json.loads(val)
    return row
