"""`rbee nodes install`: put the keeper's own version of rbee-fabric on a node.

The keeper writes its own wheel directly (pure Python: a zip of the running
package, no index needed) and collects its dependencies' wheels (`pip wheel`,
once per version, cached under its data directory), copies them over SFTP and
installs them with `--no-index` into `~/.local/share/rbee/venv`: a node needs
no internet. When the node's Python or platform differs from the keeper's,
only rbee-fabric's own wheel is shipped and the node's pip resolves the rest.
"""

from __future__ import annotations

import asyncio
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from rbee_fabric import __version__, paths
from rbee_fabric.errors import (
    InstallFailed,
    NotInstalled,
    RemoteCommandFailed,
    UsageError,
)
from rbee_fabric.keeper import hivectl, ownwheel
from rbee_fabric.keeper.transport import Transport

MIN_PYTHON = (3, 11)

PROBE = (
    "import sys, platform\n"
    "ok = []\n"
    "for m in ('venv', 'ensurepip'):\n"
    "    try:\n"
    "        __import__(m); ok.append(m)\n"
    "    except Exception:\n"
    "        pass\n"
    "print('%d.%d.%d' % sys.version_info[:3], platform.system(), platform.machine(), ','.join(ok))\n"
)


class Progress(Protocol):
    def info(self, msg: str) -> None: ...

    def transfer(self, name: str, done: int, total: int) -> None: ...


@dataclass
class PythonFacts:
    version: tuple[int, int, int]
    system: str
    machine: str
    has_venv: bool


def parse_probe(text: str) -> PythonFacts:
    """Parse the output of PROBE (pure, tested from captured output)."""
    parts = text.strip().split()
    if len(parts) < 3:
        raise ValueError(f"unexpected python probe output: {text!r}")
    major, minor, micro = (int(x) for x in parts[0].split("."))
    mods = set(parts[3].split(",")) if len(parts) > 3 else set()
    return PythonFacts((major, minor, micro), parts[1], parts[2], {"venv", "ensurepip"} <= mods)


def wheelhouse(full: bool, notes: Progress, rebuild: bool = False) -> Path:
    """Collect (once) the wheels a node needs; returns the directory.

    rbee-fabric's own wheel is written directly from the running package (no
    pip, no index). Only `full` (a node with the keeper's Python and platform)
    also gets its dependencies, from pip's index or PIP_FIND_LINKS.
    """
    tag = f"{sys.version_info[0]}{sys.version_info[1]}-{platform.system()}-{platform.machine()}"
    kind = "full" if full else "own"
    base = Path(os.environ.get("RBEE_WHEELHOUSE_DIR") or paths.data_dir() / "wheelhouse")
    out = base / f"{__version__}-{kind}-{tag}"
    done = out / ".complete"
    if rebuild:
        for old in out.glob("rbee_fabric-*.whl"):
            old.unlink()  # rebuilt from the current source
        done.unlink(missing_ok=True)
    if done.exists():
        return out
    ownwheel.build(out)
    if full:
        notes.info(f"collecting dependency wheels for rbee-fabric {__version__} (once per version)")
        _collect_dependencies(out)
    done.write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
    return out


def _collect_dependencies(out: Path) -> None:
    """pip wheel for the dependencies (rbee-fabric itself is found in out, already built)."""
    cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
           "--wheel-dir", str(out), "--find-links", str(out), f"rbee-fabric[demo]=={__version__}"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode == 0:
        return
    lines = [ln.strip() for ln in (r.stderr + r.stdout).splitlines() if ln.strip()]
    reasons = [ln for ln in lines if ln.startswith("ERROR:")] or lines[-3:]
    raise InstallFailed(
        "collecting the dependency wheels for the node failed: "
        + (" / ".join(reasons) or f"pip exited with status {r.returncode}"),
        hint="pip takes them from its package index or cache; without an index here, point "
        "PIP_FIND_LINKS at a directory holding them (made once with `pip download "
        f"rbee-fabric[demo]=={__version__} -d DIR` where there is internet), or copy them into {out}",
        details={"command": " ".join(cmd), "exit_status": r.returncode, "stderr": r.stderr[-4000:]},
    )


@dataclass
class InstallReport:
    node: str
    changed: bool
    version: str
    seconds: float
    message: str


async def installed_version(t: Transport) -> str | None:
    try:
        python = await t.python()
    except NotInstalled:
        return None
    r = await t.run([python, "-c", "import rbee_fabric; print(rbee_fabric.__version__)"], check=False)
    return r.stdout.strip() if r.exit_status == 0 else None


async def check_python(t: Transport) -> PythonFacts:
    n = t.node
    r = await t.run([n.python, "-c", PROBE], check=False)
    if r.exit_status != 0:
        raise NotInstalled(
            f"{n.python} does not run on {n.name}: {(r.stderr or r.stdout).strip()[:200]}",
            hint="install Python 3.11+ on the node, or set `python` for it in the inventory",
            details={"node": n.name},
        )
    facts = parse_probe(r.stdout)
    if facts.version[:2] < MIN_PYTHON:
        raise NotInstalled(
            f"{n.name} has Python {'.'.join(map(str, facts.version))}; rbee needs 3.11 or newer",
            hint="install Python 3.11+ on the node and set `python` for it in the inventory",
            details={"node": n.name},
        )
    if not facts.has_venv:
        raise NotInstalled(
            f"{n.python} on {n.name} lacks the venv module (or ensurepip)",
            hint="on Debian/Ubuntu: sudo apt-get install python3-venv",
            details={"node": n.name},
        )
    return facts


async def install(
    t: Transport, notes: Progress, *, upgrade: bool = False, force: bool = False
) -> InstallReport:
    """Install (or upgrade) rbee-fabric on a node; idempotent unless force."""
    started = time.monotonic()
    n = t.node
    facts = await check_python(t)
    current = await installed_version(t)
    if current == __version__ and not force:
        await _ensure_key(t)
        return InstallReport(n.name, False, __version__, time.monotonic() - started,
                             f"rbee-fabric {__version__} is already installed on {n.name}; nothing to change")  # fmt: skip
    if current is not None and current != __version__ and not upgrade:
        raise UsageError(
            f"rbee-fabric {current} is installed on {n.name}; the keeper is {__version__}",
            hint=f"upgrade it with: rbee nodes install {n.name} --upgrade",
            details={"node": n.name, "installed": current},
        )
    if current is not None and await t.hive_pid() is not None:
        notes.info(f"stopping the {current} hive on {n.name} before replacing it")
        await hivectl.stop(t)

    same_platform = (
        facts.version[:2] == sys.version_info[:2]
        and facts.system == platform.system()
        and facts.machine == platform.machine()
    )
    house = await asyncio.to_thread(wheelhouse, same_platform, notes, force)
    data = await t.remote_path(n.install_dir)
    remote_wheels = f"{data}/wheels"
    await t.run(["mkdir", "-p", remote_wheels])
    await _upload(t, house, remote_wheels, notes)

    venv = f"{data}/venv"
    notes.info(f"creating {venv} with {n.python}")
    await t.run([n.python, "-m", "venv", venv])
    pip = [f"{venv}/bin/python", "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    spec = f"rbee-fabric[demo]=={__version__}" if same_platform else f"rbee-fabric=={__version__}"
    if force:
        pip += ["--force-reinstall", "--no-deps"]
        spec = f"rbee-fabric=={__version__}"
    if same_platform:
        pip += ["--no-index", "--find-links", remote_wheels, spec]
    else:
        own = next(house.glob("rbee_fabric-*.whl"))
        pip += [f"{remote_wheels}/{own.name}"]
        notes.info(f"{n.name} runs a different Python or platform: its pip fetches the dependencies")
    notes.info(f"installing rbee-fabric {__version__} on {n.name}")
    try:
        await t.run(pip, timeout=900)
    except RemoteCommandFailed as exc:
        raise RemoteCommandFailed(
            f"pip could not install rbee-fabric on {n.name}: {exc.message}",
            hint="check free disk space on the node and the node log above",
            details=exc.details,
        ) from None
    await _ensure_key(t)
    return InstallReport(n.name, True, __version__, time.monotonic() - started,
                         f"installed rbee-fabric {__version__} on {n.name}")  # fmt: skip


async def _ensure_key(t: Transport) -> None:
    """The node's API key (0600), created if absent."""
    python = await t.python()
    await t.run([python, "-c", "from rbee_fabric.paths import ensure_api_key; ensure_api_key()"])


async def _upload(t: Transport, house: Path, remote_dir: str, notes: Progress) -> None:
    """Copy the wheels the node does not have yet (same name and size are skipped)."""
    r = await t.run(["ls", "-l", remote_dir], check=False)
    have = parse_ls_sizes(r.stdout)
    wheels = sorted(house.glob("*.whl"))
    todo = [w for w in wheels if have.get(w.name) != w.stat().st_size]
    if not todo:
        return
    total = sum(w.stat().st_size for w in todo)
    sent = 0
    for w in todo:
        base = sent
        def report(done: int, _total: int, base: int = base) -> None:
            notes.transfer("wheels", base + done, total)

        await t.connector.put(w, f"{remote_dir}/{w.name}", report)
        sent += w.stat().st_size


def parse_ls_sizes(text: str) -> dict[str, int]:
    """{name: size} from `ls -l` output (pure)."""
    sizes = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 9 and parts[4].isdigit():
            sizes[parts[-1]] = int(parts[4])
    return sizes
