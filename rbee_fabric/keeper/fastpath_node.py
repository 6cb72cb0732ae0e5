"""The lean path's view of the inventory: a node's hive port and how to reach it, stdlib only.

It answers only when the answer is certain: the file parses, every entry holds
only known keys of the right types and ranges (so the full loader would accept
it too), and the node is on this machine or has a link (keeper/link.py).
Anything else is None, and the full path (pydantic validation, SSH) takes
over and says what is wrong.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from pathlib import Path
from typing import Any, NamedTuple

from rbee_fabric.keeper.nodenames import DEFAULT_HIVE_PORT, LOCAL_NAMES, valid_name

_USER = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")


def _int(lo: int, hi: int) -> Any:
    return lambda v: type(v) is int and lo <= v <= hi


def _str(lo: int = 0, hi: int = 10**9) -> Any:
    return lambda v: type(v) is str and lo <= len(v) <= hi


# Each key of a [nodes.NAME] table (keeper/inventory.py NodeEntry), checked strictly.
_CHECKS: dict[str, Any] = {
    "hostname": _str(1, 253),
    "user": lambda v: type(v) is str and _USER.match(v) is not None,
    "ssh_port": _int(1, 65535),
    "hive_port": _int(1, 65535),
    "backend": lambda v: v in ("auto", "cpu", "cuda", "metal"),
    "devices": lambda v: type(v) is list and all(type(d) is int for d in v),
    "network": lambda v: v in ("tunnel", "direct"),
    "python": _str(1),
    "install_dir": _str(),
    "local": lambda v: type(v) is bool,
    "max_queue": _int(0, 100_000),
    "max_replicas": _int(1, 64),
    "safe_mode": lambda v: v in ("auto", "on", "off"),
}


class LocalNode(NamedTuple):
    name: str
    hive_port: int = DEFAULT_HIVE_PORT
    max_replicas: int = 1
    safe_mode: str = "auto"
    max_queue: int | None = None  # None: the hive's default


def inventory_path(explicit: str | None) -> Path | None:
    """The inventory file by the lookup order (as keeper/inventory.py); None: built-in."""
    if explicit:
        return Path(explicit).expanduser()
    if env := os.environ.get("RBEE_INVENTORY"):
        return Path(env).expanduser()
    from rbee_fabric import paths

    candidate = paths.inventory_file()
    return candidate if candidate.exists() else None


def _entries(path: Path) -> dict[str, dict[str, Any]] | None:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if set(raw) - {"nodes"}:
        return None
    nodes = raw.get("nodes", {})
    if not isinstance(nodes, dict):
        return None
    for name, entry in nodes.items():
        if not isinstance(entry, dict) or not valid_name(name) or "hostname" not in entry:
            return None
        for key, value in entry.items():
            check = _CHECKS.get(key)
            if check is None or not check(value):
                return None
    return nodes


class RemoteNode(NamedTuple):
    """A node over an SSH tunnel with a link socket (keeper/link.py) for the lean path."""

    name: str
    link: Path
    hive_port: int = DEFAULT_HIVE_PORT
    max_replicas: int = 1


def _is_local(name: str, entry: dict[str, Any] | None) -> bool:
    if entry is None:
        return name in LOCAL_NAMES or name == socket.gethostname()
    return bool(entry.get("local", False) or (entry["hostname"] in LOCAL_NAMES and entry.get("user") is None))


def lean_node(name: str, explicit_inventory: str | None) -> LocalNode | RemoteNode | None:
    """The node `name` when the lean path can surely reach it: on this machine, or over
    an SSH tunnel whose link socket exists (whether it answers is seen when used)."""
    if not valid_name(name):
        return None
    path = inventory_path(explicit_inventory)
    entries = {} if path is None else _entries(path)
    if entries is None:
        return None
    entry = entries.get(name)
    if _is_local(name, entry):
        if entry is None:
            return LocalNode(name)
        return LocalNode(
            name, entry.get("hive_port", DEFAULT_HIVE_PORT), entry.get("max_replicas", 1),
            entry.get("safe_mode", "auto"), entry.get("max_queue"),
        )  # fmt: skip
    entry = entry or {}
    if entry.get("network", "tunnel") != "tunnel":
        return None
    from rbee_fabric.keeper import link

    if link.keep_seconds() <= 0:
        return None  # links are off
    sock = link.socket_path(name, path)
    if not sock.exists():
        return None
    return RemoteNode(name, sock, entry.get("hive_port", DEFAULT_HIVE_PORT), entry.get("max_replicas", 1))


def local_node(name: str, explicit_inventory: str | None) -> LocalNode | None:
    """The node `name` when it is surely this machine and the inventory is surely valid."""
    node = lean_node(name, explicit_inventory)
    return node if isinstance(node, LocalNode) else None
