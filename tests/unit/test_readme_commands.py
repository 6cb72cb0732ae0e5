"""The README cannot drift from the CLI: every `rbee ...` line it shows must parse.

Each command line in the README's code blocks is split into its sub-command
path and its flags; `rbee PATH --help` must succeed and list every flag the
README uses with it.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
GROUPS = {"nodes", "hive", "workers", "models"}


def _command_lines() -> list[str]:
    """`rbee ...` invocations inside the README's fenced code blocks."""
    lines: list[str] = []
    inside = False
    for raw in README.read_text(encoding="utf-8").splitlines():
        if raw.startswith("```"):
            inside = not inside
            continue
        if not inside:
            continue
        line = raw.split("  #", 1)[0].strip()  # drop trailing comments
        for part in re.split(r"&&|\|", line):
            part = part.strip()
            if part.startswith("$ "):
                part = part[2:]
            if part.startswith("rbee ") and "..." not in part:
                lines.append(part)
    return lines


def _split(line: str) -> tuple[list[str], list[str]]:
    """The sub-command path (e.g. ['models', 'pull']) and the long flags used."""
    words = shlex.split(line)[1:]
    path: list[str] = []
    flags: list[str] = []
    for w in words:
        if w.startswith("--"):
            flags.append(w.split("=", 1)[0])
        elif (not flags and not path) or (not flags and len(path) == 1 and path[0] in GROUPS and not w.startswith("-")):
            path.append(w)
    return path, flags


@cache
def _help(path: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rbee_fabric.cli", *path, "--help"],
        capture_output=True, text=True, timeout=60, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


LINES = _command_lines()


def test_the_readme_shows_commands() -> None:
    assert len(LINES) >= 15, LINES


@pytest.mark.parametrize("line", LINES)
def test_readme_command_parses(line: str) -> None:
    path, flags = _split(line)
    r = _help(tuple(path))
    assert r.returncode == 0, f"`rbee {' '.join(path)} --help` failed for README line {line!r}:\n{r.stderr}"
    global_flags = {"--inventory", "--debug", "--help"}
    for flag in flags:
        if flag in global_flags:
            continue
        assert flag in r.stdout, f"README line {line!r} uses {flag}, which `rbee {' '.join(path)}` lacks"
