"""The workspace: a SQLite catalog plus a content-addressed artifact store.

Layout of a workspace directory::

    catalog.db            SQLite (WAL): datasets, models, runs, evals
    objects/ab/cdef...    immutable blobs named by their sha256
    objects.url           where the blobs live instead, when not in objects/: an fsspec URL
    objects/cache/ab/...  then, local copies of the arrays read from there (mapped; deletable)
    runs/<run id>/        checkpoints of training runs (mutable, resumable)
    reports/<id>/         rendered reports

The blobs can live in object storage (``datamoat init --objects s3://bucket/prefix``; ``gs://``,
``az://``, ``file://`` and any other fsspec protocol whose package is installed), so every process
and machine reads models and photo shards from one store without a local copy (arrays read by row,
a dataset's images, are mapped from a checked copy under ``objects/cache/``). Credentials come from
the protocol's standard environment variables and files (``AWS_ACCESS_KEY_ID``, ``~/.aws``...),
never from the URL or the catalog.

Every write is atomic: blobs go to a temp file that is renamed into place (an object store's put is
whole or absent),
and catalog rows are written in transactions. Several processes may write at
once; WAL mode and a busy timeout serialise them without corruption.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datamoat.errors import BadInput, NotFound
from datamoat.files import (
    atomic_path,
    atomic_write,
    fsync_dir,
    make_dirs,
    scratch_dir,
    sweep_scratch_dirs,
    sweep_temp_files,
    touch_private,
)
from datamoat.objects import OBJECTS_URL_FILE, ObjectStore, check_objects_url

__all__ = [
    "Workspace",
    "check_objects_url",
    "default_root",
    "atomic_path",
    "atomic_write",
    "fsync_dir",
    "make_dirs",
    "safe_name",
    "scratch_dir",
    "short_hash",
    "sweep_scratch_dirs",
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


class Workspace(ObjectStore):
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
        url_file = self.root / OBJECTS_URL_FILE
        # The blobs: files under objects/, or at the fsspec URL the workspace was created with.
        super().__init__(self.root / "objects", check_objects_url(url_file.read_text()) if url_file.exists() else None)

    # -- lifecycle ---------------------------------------------------------
    @classmethod
    def init(cls, root: str | os.PathLike[str] | None = None, *, objects: str | None = None) -> Workspace:
        """Create (or open) a workspace; idempotent. `objects` puts its blobs at an fsspec URL
        (``s3://bucket/prefix``, ``file:///mnt/store``, ``memory://x``) instead of ``objects/``;
        a workspace keeps the store it was created with.

        >>> import tempfile
        >>> ws = Workspace.init(tempfile.mkdtemp(), objects="memory://doc-store")
        >>> ws.get_bytes(ws.put_bytes(b"hi")), ws.object_location(ws.put_bytes(b"hi"))[:16]
        (b'hi', 'memory://doc-sto')
        """
        ws = cls(root if root is not None else default_root())
        make_dirs(ws.root / "objects")  # the owner's: models, data, tokens
        if objects is not None:
            url = check_objects_url(objects)
            if ws.url not in (None, url) or (ws.url is None and any((ws.root / "objects").iterdir())):
                raise BadInput(
                    f"workspace {ws.root} already keeps its objects in {ws.url or ws.objects}: "
                    "a workspace keeps the store it was created with; init a new one for another store"
                )
            ObjectStore.__init__(ws, ws.root / "objects", url)
            if ws.objects_url is None:
                make_dirs(ws.objects)
            else:
                try:  # a protocol whose package is missing is refused here, not at the first write
                    fs, base = ws._fs()
                    fs.makedirs(base, exist_ok=True)
                except ImportError as e:
                    raise BadInput(f"object store {url}: {e}") from None
            atomic_write(ws.root / OBJECTS_URL_FILE, (url + "\n").encode())
        ws._migrate()
        sweep_temp_files(ws.root)
        sweep_scratch_dirs(ws.root)
        return ws

    @classmethod
    def open(cls, root: str | os.PathLike[str] | None = None) -> Workspace:
        """Open an existing workspace; a clear error if there is none."""
        ws = cls(root if root is not None else default_root())
        if not ws.db_path.exists():
            raise NotFound(f"no datamoat workspace at {ws.root}: run `datamoat init {ws.root}` or set DATAMOAT_HOME")
        ws._migrate()
        sweep_temp_files(ws.root)
        sweep_scratch_dirs(ws.root)
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
