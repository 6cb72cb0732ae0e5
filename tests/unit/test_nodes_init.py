"""`rbee nodes init`: a commented starter inventory for a pip user (who has no hosts.example.toml)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rbee_fabric.cli.app import app
from rbee_fabric.keeper import inventory


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("RBEE_INVENTORY", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("RBEE_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def test_init_writes_the_default_inventory_and_prints_its_path(home: Path) -> None:
    r = CliRunner().invoke(app, ["nodes", "init"])
    path = home / "config" / "rbee" / "hosts.toml"
    assert r.exit_code == 0, r.stderr
    assert r.stdout == f"{path}\n"
    assert f"wrote a starter inventory to {path}" in r.stderr
    # It is a valid inventory as written (everything commented) ...
    assert set(inventory.load(None).nodes) == {"localhost"}
    # ... and its example node, uncommented, is valid too and shows every key.
    text = path.read_text()
    example = "\n".join(
        re.sub(r"^# ", "", line) for line in text.splitlines() if line.startswith("# [nodes.") or (line.startswith("# ") and "=" in line)
    )
    uncommented = home / "uncommented.toml"
    uncommented.write_text(example + "\n")
    node = inventory.load(str(uncommented)).nodes["mac"]
    assert node.hostname == "mac.home.arpa"
    keys = set(re.findall(r"^(\w+) =", example, re.MULTILINE))
    assert keys == set(inventory.NodeEntry.model_fields)


def test_init_never_overwrites_unless_forced(home: Path) -> None:
    path = home / "mine.toml"
    path.write_text('[nodes.gpu]\nhostname = "10.0.0.5"\n')
    r = CliRunner().invoke(app, ["--inventory", str(path), "nodes", "init"])
    assert r.exit_code == 2
    assert r.stderr.splitlines() == [
        f"error INVALID_REQUEST: {path} already exists; it was left as it is",
        f"Suggestion: edit it, or overwrite it with the starter: rbee --inventory {path} nodes init --force",
    ]
    assert "10.0.0.5" in path.read_text()
    r = CliRunner().invoke(app, ["--inventory", str(path), "nodes", "init", "--force"])
    assert r.exit_code == 0 and r.stdout == f"{path}\n"
    assert "10.0.0.5" not in path.read_text()


def test_a_missing_inventory_points_to_init(home: Path) -> None:
    missing = home / "nope.toml"
    r = CliRunner().invoke(app, ["--inventory", str(missing), "nodes", "list"])
    assert r.exit_code == 2
    assert r.stderr.splitlines() == [
        f"error INVENTORY_INVALID: inventory file not found: {missing}",
        f"Suggestion: write a commented starter there: rbee --inventory {missing} nodes init",
    ]
