import os

# Tests use one torch thread (set before torch loads): deterministic and polite on 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from dmtest import write_idx  # noqa: E402

from datamoat.data import import_digits  # noqa: E402
from datamoat.workspace import Workspace  # noqa: E402

PG_URL = os.environ.get("DATAMOAT_TEST_PG_URL")


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param(
            "postgresql",
            marks=pytest.mark.skipif(
                not PG_URL, reason="PostgreSQL registry tests: export DATAMOAT_TEST_PG_URL=$(scripts/start-postgres.sh)"
            ),
        ),
    ]
)
def url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'reg.db'}"
        return
    schema = f"t_{uuid.uuid4().hex[:10]}"  # one schema per test: isolated, then dropped
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    admin.dispose()


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace.init(tmp_path / "ws")


@pytest.fixture
def digits(ws: Workspace):
    return import_digits(ws)


@pytest.fixture
def idx_pair(tmp_path: Path):
    """A tiny 3-class IDX dataset: 60 images 6x6 whose brightness encodes the class."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20).astype(np.uint8)
    x = (rng.integers(0, 40, (60, 6, 6)) + y[:, None, None] * 80).astype(np.uint8)
    return write_idx(tmp_path / "imgs-idx3-ubyte", x), write_idx(tmp_path / "labels-idx1-ubyte", y), x, y


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect docstrings whose every example is marked +SKIP (they need a workspace, a server or a
    model): they are documentation, not tests, and reporting them as skipped would hide a real skip."""
    import doctest

    skip = doctest.OPTIONFLAGS_BY_NAME["SKIP"]
    docs_only = [it for it in items if hasattr(it, "dtest") and all(ex.options.get(skip) for ex in it.dtest.examples)]
    if docs_only:
        config.hook.pytest_deselected(items=docs_only)
        drop = set(docs_only)
        items[:] = [it for it in items if it not in drop]


def pytest_unconfigure(config: pytest.Config) -> None:
    """End the run with what was skipped, by group, and the command that enables each group."""
    reporter = config.pluginmanager.getplugin("terminalreporter")
    if reporter is None:
        return
    groups: dict[str, int] = {}
    for rep in reporter.stats.get("skipped", []):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        reason = reason.removeprefix("Skipped: ")
        groups[reason] = groups.get(reason, 0) + 1
    if groups:
        reporter.write_line("skipped: " + "; ".join(f"{n} {reason}" for reason, n in groups.items()), yellow=True)


@pytest.fixture(scope="session")
def photo_world(tmp_path_factory):
    """A tiny photo project: synthetic JPEGs of 4 digit classes (120-200 px, mixed aspect ratios) plus
    the awkward files (a corrupt JPEG, an EXIF-rotated JPEG, a 16-bit PNG, a palette PNG), imported
    as shards and rendered at 32x32. Read-only for the tests that share it."""
    import shutil
    from types import SimpleNamespace

    from PIL import Image
    from sklearn.datasets import load_digits

    from datamoat.data.photo_render import render_photos
    from datamoat.data.photo_transforms import PhotoTransformConfig
    from datamoat.data.photos import PhotoImportConfig, import_photos
    from datamoat.data.synth import SynthConfig, make_photos

    root = tmp_path_factory.mktemp("photos")
    d = load_digits()
    keep = d.target < 4
    x = np.clip(d.images[keep] * 16, 0, 255).astype(np.uint8)  # (N, 8, 8)
    src = (x, d.target[keep], [str(c) for c in range(4)])
    make_photos(root / "synth", SynthConfig(n_per_class=14, test_fraction=0.0, min_side=120, max_side=200), source=src)
    folder = root / "synth" / "train"
    classes = sorted(p.name for p in folder.iterdir())
    rng = np.random.default_rng(0)
    first = next((folder / classes[0]).iterdir()).read_bytes()
    (folder / classes[0] / "corrupt.jpg").write_bytes(first[: len(first) // 2])
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter: stored 90 x 150, displayed 150 x 90
    Image.fromarray(rng.integers(0, 255, (150, 90, 3), dtype=np.uint8)).save(
        folder / classes[1] / "rotated.jpg", exif=exif.tobytes()
    )
    Image.fromarray(rng.integers(0, 65535, (70, 130), dtype=np.uint16)).save(folder / classes[2] / "deep.png")
    Image.fromarray(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)).convert("P").save(folder / classes[3] / "p.png")
    ws = Workspace.init(root / "ws")
    photos = import_photos(ws, folder, PhotoImportConfig(val_fraction=0.2, test_fraction=0.25))
    ds = render_photos(ws, photos, PhotoTransformConfig(size=(32, 32)), workers=0)
    shutil.rmtree(root / "synth" / "test", ignore_errors=True)
    return SimpleNamespace(ws=ws, photos=photos, ds=ds, folder=folder, classes=classes)
