import importlib
import subprocess
import sys

import pytest

import datamoat


@pytest.mark.slow
def test_import_datamoat_is_light():
    code = "import sys, datamoat; print(sorted(m for m in ('torch', 'onnxruntime', 'fastapi', 'optuna', 'cleanlab', 'sklearn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_public_names_resolve():
    for name in datamoat.__all__:
        module = datamoat._EXPORTS.get(name)
        if module and importlib.util.find_spec(module) is None:
            continue  # a stage not built yet
        assert getattr(datamoat, name) is not None, name


def test_every_module_declares_all():
    import pkgutil

    for info in pkgutil.walk_packages(datamoat.__path__, "datamoat."):
        if info.name.startswith("datamoat.cli") or info.name == "datamoat.__main__":
            continue
        mod = importlib.import_module(info.name)
        assert isinstance(getattr(mod, "__all__", None), list), f"{info.name} has no __all__"
        for name in mod.__all__:
            assert hasattr(mod, name), f"{info.name}.__all__ names missing {name}"


@pytest.mark.slow
def test_lock_check_finds_a_version_the_lock_does_not_pin(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    check = [sys.executable, str(root / "scripts" / "check_lock.py")]
    lock = (root / "requirements.lock").read_text()
    numpy_pin = next(line for line in lock.splitlines() if line.startswith("numpy=="))
    (tmp_path / "other.lock").write_text(lock.replace(numpy_pin, "numpy==0.0.1") + "\nnot-installed-pkg==1.0\n")
    bad = subprocess.run([*check, str(tmp_path / "other.lock")], capture_output=True, text=True)
    assert bad.returncode == 1
    assert f"{numpy_pin} is installed but" in bad.stderr and "not-installed-pkg==1.0 is pinned" in bad.stderr
