"""`rbee nodes install` builds the keeper's wheel without a package index."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import rbee_fabric
from rbee_fabric.errors import RbeeError
from rbee_fabric.keeper import bootstrap, ownwheel

NO_INDEX = {"PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull}


class _Notes:
    def info(self, msg: str) -> None:
        pass

    def transfer(self, name: str, done: int, total: int) -> None:
        pass


def test_the_own_wheel_is_written_from_the_running_package_and_installs(tmp_path: Path) -> None:
    wheel = ownwheel.build(tmp_path / "out")
    assert wheel.name == f"rbee_fabric-{rbee_fabric.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = zf.read(f"rbee_fabric-{rbee_fabric.__version__}.dist-info/METADATA").decode()
    assert "rbee_fabric/keeper/transport/ssh.py" in names
    assert not any("__pycache__" in n for n in names)
    assert "Requires-Dist: asyncssh" in meta and 'extra == "demo"' in meta
    # pip (with no index at all) installs it, and it is the keeper's own code.
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                        str(wheel)], env={**os.environ, **NO_INDEX}, capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = subprocess.run([sys.executable, "-c", "import rbee_fabric; print(rbee_fabric.__version__, rbee_fabric.__file__)"],
                         env={**os.environ, "PYTHONPATH": str(target)}, capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    version, where = out.stdout.split()
    assert version == rbee_fabric.__version__ and where.startswith(str(target))
    assert (target / "bin" / "rbee").exists() or "rbee = rbee_fabric.cli.app:app" in _entry_points(wheel)


def _entry_points(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as zf:
        return zf.read(f"rbee_fabric-{rbee_fabric.__version__}.dist-info/entry_points.txt").decode()


def test_an_own_only_wheelhouse_needs_no_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RBEE_WHEELHOUSE_DIR", str(tmp_path))
    for key, value in NO_INDEX.items():
        monkeypatch.setenv(key, value)
    house = bootstrap.wheelhouse(False, _Notes())
    assert [w.name for w in house.glob("*.whl")] == [f"rbee_fabric-{rbee_fabric.__version__}-py3-none-any.whl"]


def test_missing_dependency_wheels_give_the_real_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RBEE_WHEELHOUSE_DIR", str(tmp_path / "house"))
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    for key, value in NO_INDEX.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(RbeeError) as exc:
        bootstrap.wheelhouse(True, _Notes())
    assert "ERROR:" in exc.value.message and "satisf" in exc.value.message  # pip's own reason, not its last line
    assert "PIP_FIND_LINKS" in (exc.value.hint or "") and "pip download" in (exc.value.hint or "")
