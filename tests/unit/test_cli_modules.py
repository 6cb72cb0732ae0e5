"""The CLI package's layout: one module per command group, no import cycle, each importable alone."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import rbee_fabric

CLI_DIR = Path(rbee_fabric.__file__).parent / "cli"
MODULES = sorted(p.stem for p in CLI_DIR.glob("*.py") if p.stem not in ("__init__", "__main__"))


def _module_level_imports(name: str) -> set[str]:
    """The rbee_fabric.cli modules NAME imports at module level (not inside functions)."""
    tree = ast.parse((CLI_DIR / f"{name}.py").read_text())
    found: set[str] = set()
    for node in tree.body:  # top-level statements only: imports inside commands are lazy
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "rbee_fabric.cli":
                found |= {a.name for a in node.names}
            elif node.module.startswith("rbee_fabric.cli."):
                found.add(node.module.removeprefix("rbee_fabric.cli."))
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("rbee_fabric.cli.") for a in node.names if a.name.startswith("rbee_fabric.cli.")}
    return found & set(MODULES)


def test_no_import_cycle_between_cli_modules() -> None:
    graph = {m: _module_level_imports(m) for m in MODULES}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        if state.get(m) == 1:
            pytest.fail("import cycle: " + " -> ".join([*path, m]))
        if state.get(m) == 2:
            return
        state[m] = 1
        for dep in sorted(graph[m]):
            visit(dep, [*path, m])
        state[m] = 2

    for m in MODULES:
        visit(m, [])
    assert "app" not in set().union(*graph.values()), "only the entry point may import the root app"


@pytest.mark.parametrize("name", MODULES)
def test_every_cli_module_imports_alone(name: str) -> None:
    r = subprocess.run([sys.executable, "-c", f"import rbee_fabric.cli.{name}"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("name", MODULES)
def test_cli_modules_stay_small(name: str) -> None:
    lines = len((CLI_DIR / f"{name}.py").read_text().splitlines())
    assert lines <= 400, f"cli/{name}.py has {lines} lines: split it by command group"
