"""The keeper's own rbee-fabric wheel, written directly (no pip, no package index).

rbee-fabric is pure Python, so its wheel is a zip of the running package
(the code the keeper itself runs: same version, same health proof) plus
the metadata of its pyproject.toml (or, for an installed keeper without its
source, of its installed distribution).
"""

from __future__ import annotations

import base64
import hashlib
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import rbee_fabric

NAME = "rbee_fabric"
DIST = "rbee-fabric"


def package_dir() -> Path:
    return Path(rbee_fabric.__file__).resolve().parent


def _from_pyproject(pyproject: Path) -> tuple[list[str], dict[str, str]]:
    """(METADATA lines after Name/Version, console scripts) from pyproject.toml."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    lines = [f"Summary: {project.get('description', '')}", f"Requires-Python: {project.get('requires-python', '>=3.11')}"]
    lines += [f"Requires-Dist: {req}" for req in project.get("dependencies", [])]
    for extra, reqs in project.get("optional-dependencies", {}).items():
        lines.append(f"Provides-Extra: {extra}")
        for req in reqs:
            sep = ";" in req
            marker = f' and extra == "{extra}"' if sep else f'; extra == "{extra}"'
            lines.append(f"Requires-Dist: {req}{marker}")
    return lines, dict(project.get("scripts", {}))


def _from_installed() -> tuple[list[str], dict[str, str]]:
    dist = metadata.distribution(DIST)
    keep = ("Summary", "Requires-Python", "Requires-Dist", "Provides-Extra")
    lines = [f"{k}: {v}" for k in keep for v in dist.metadata.get_all(k) or []]
    scripts = {ep.name: ep.value for ep in dist.entry_points if ep.group == "console_scripts"}
    return lines, scripts


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def build(out_dir: Path) -> Path:
    """Write rbee_fabric-VERSION-py3-none-any.whl into out_dir; returns its path."""
    pkg = package_dir()
    version = rbee_fabric.__version__
    pyproject = pkg.parent / "pyproject.toml"
    meta, scripts = _from_pyproject(pyproject) if pyproject.exists() else _from_installed()
    info = f"{NAME}-{version}.dist-info"
    files: dict[str, bytes] = {}
    for path in sorted(pkg.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo"):
            files[f"{NAME}/{path.relative_to(pkg).as_posix()}"] = path.read_bytes()
    files[f"{info}/METADATA"] = "\n".join(
        ["Metadata-Version: 2.1", f"Name: {DIST}", f"Version: {version}", *meta, ""]
    ).encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: rbee-fabric\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    if scripts:
        eps = "[console_scripts]\n" + "".join(f"{k} = {v}\n" for k, v in scripts.items())
        files[f"{info}/entry_points.txt"] = eps.encode()
    record = [f"{name},{_record_hash(data)},{len(data)}" for name, data in files.items()]
    files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{NAME}-{version}-py3-none-any.whl"
    tmp = target.with_name(target.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            entry = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            entry.external_attr = 0o644 << 16
            zf.writestr(entry, data, zipfile.ZIP_DEFLATED)
    tmp.replace(target)
    return target
