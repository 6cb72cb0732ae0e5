"""The README cannot drift from the CLI: every `rbee ...` line it shows must parse.

Each command line of the README (its code blocks, and the `rbee ...` spans of
its prose, placeholders such as NODE filled in) is parsed by the real CLI's
own parser, down to its sub-command, without running it: unknown commands or
flags, missing arguments and bad values fail here. Every command of the CLI
must appear in the README at least once, and its --help must work.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.main import get_command

from rbee_fabric.cli.app import app
from rbee_fabric.cli.run import CLICK_EXCEPTION

README = Path(__file__).resolve().parents[2] / "README.md"
ROOT = get_command(app)
# Placeholders the prose uses, and a value of the right type for each.
PLACEHOLDERS = {"NODE": "localhost", "SECONDS": "60", "N": "1", "M": "gemma3-270m", "MODEL": "gemma3-270m",
                "ID": "w-1a2b3c4d5e", "PATH": "/tmp/hosts.toml", "TEXT": "hi", "NAME": "gemma",
                "JUMPHOST": "jump", "HOST": "mac"}  # fmt: skip
# Eager root options with side effects (they would install a completion script): checked, not run.
NOT_RUN = {"--install-completion", "--show-completion"}


def _clean(part: str) -> str | None:
    part = part.strip()
    if part.startswith("$ "):
        part = part[2:]
    if not part.startswith("rbee ") or "..." in part or "[" in part:
        return None
    words = [PLACEHOLDERS.get(w, w) for w in shlex.split(part)]
    return shlex.join(words)


def _command_lines() -> list[str]:
    """`rbee ...` invocations of the README: its code blocks and its `inline` spans."""
    lines: list[str] = []
    inside = False
    for raw in README.read_text(encoding="utf-8").splitlines():
        if raw.startswith("```"):
            inside = not inside
            continue
        candidates = (
            re.split(r"&&|\|", raw.split("  #", 1)[0]) if inside else re.findall(r"`(rbee [^`]+)`", raw)
        )
        for part in candidates:
            if (line := _clean(part)) is None:
                continue
            if not inside and set(shlex.split(line)[1:]) <= COMMAND_WORDS:
                continue  # prose naming a command (`rbee models rm`), not a command line
            lines.append(line)
    return sorted(set(lines))


def _is_group(cmd: Any) -> bool:
    return hasattr(cmd, "resolve_command")


def _parse(line: str) -> Any:
    """Parse LINE as `rbee` would, sub-command by sub-command; the command reached."""
    args = shlex.split(line)[1:]
    if NOT_RUN & set(args):
        assert {o for p in ROOT.params for o in p.opts} >= NOT_RUN, "shell completion is off"
        return ROOT
    cmd: Any = ROOT
    ctx = cmd.make_context("rbee", args)
    while _is_group(cmd):
        # click keeps the sub-command and what follows in (_)protected_args, then args
        rest = [*(getattr(ctx, "protected_args", None) or getattr(ctx, "_protected_args", [])), *ctx.args]
        if not rest:
            break
        name, sub, rest = cmd.resolve_command(ctx, rest)
        assert sub is not None and name is not None
        cmd, ctx = sub, sub.make_context(name, rest, parent=ctx)
    assert not _is_group(cmd), f"{line!r} stops at a command group"
    return cmd


def _leaf_commands(group: Any = ROOT, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, cmd in group.commands.items():
        if _is_group(cmd):
            out += _leaf_commands(cmd, (*prefix, name))
        else:
            out.append((*prefix, name))
    return out


COMMAND_WORDS = {w for path in _leaf_commands() for w in path}
LINES = _command_lines()


def test_the_readme_shows_commands() -> None:
    assert len(LINES) >= 30, LINES


@pytest.mark.parametrize("line", LINES)
def test_readme_command_parses(line: str) -> None:
    try:
        _parse(line)
    except typer.Exit as exc:  # --help: printed, then a clean exit
        assert exc.exit_code == 0, line
    except CLICK_EXCEPTION as exc:
        pytest.fail(f"README line {line!r} does not parse: {exc}")


def test_every_command_of_the_cli_is_in_the_readme() -> None:
    used = set()
    for line in LINES:
        words = shlex.split(line)[1:]
        for n in (1, 2):
            used.add(tuple(words[:n]))
    missing = [" ".join(c) for c in _leaf_commands() if c not in used]
    assert not missing, f"commands the README never shows: {missing}"


def _help(path: tuple[str, ...]) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "rbee_fabric.cli", *path, "--help"],
        capture_output=True, text=True, timeout=60, env={"COLUMNS": "80", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    too_wide = [line for line in r.stdout.splitlines() if len(line) > 80]
    assert not too_wide, f"rbee {' '.join(path)} --help is wider than 80 columns: {too_wide}"
    return r.stdout


@pytest.mark.parametrize("path", _leaf_commands(), ids=" ".join)
def test_every_command_has_help_in_80_columns(path: tuple[str, ...]) -> None:
    out = _help(path)
    assert "Usage: rbee " + " ".join(path) in " ".join(out.split())
    assert "<bool>" not in out, "flags take no value: no type after them"


def _command(path: tuple[str, ...]) -> Any:
    cmd: Any = ROOT
    for name in path:
        cmd = cmd.commands[name]
    return cmd


def test_every_option_and_argument_has_help() -> None:
    missing = [
        f"rbee {' '.join(path)} {p.opts[0]}"
        for path in _leaf_commands()
        for p in _command(path).params
        if not getattr(p, "help", None)
    ]
    assert not missing, f"without help: {missing}"


@pytest.mark.parametrize("path", [(), ("nodes",), ("hive",), ("workers",), ("models",)], ids=lambda p: " ".join(p) or "rbee")
def test_command_lists_are_not_cut(path: tuple[str, ...]) -> None:
    out = _help(path)
    listed = out[out.index("Commands:") :].splitlines()[1:]
    assert listed and not [line for line in listed if line.endswith("...")], listed
