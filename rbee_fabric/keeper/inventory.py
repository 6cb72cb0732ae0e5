"""The inventory (SPEC section 3): which nodes exist and how each is reached.

Lookup order: `--inventory PATH`, `$RBEE_INVENTORY`, `~/.config/rbee/hosts.toml`,
else a built-in inventory holding only `localhost`.
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rbee_fabric.errors import InventoryError, UnknownNode, UsageError
from rbee_fabric.keeper.nodenames import DEFAULT_HIVE_PORT, LOCAL_NAMES, valid_name

DEFAULT_MAX_QUEUE = 64


class NodeEntry(BaseModel):
    """One `[nodes.NAME]` table; see hosts.example.toml for every key."""

    model_config = ConfigDict(extra="forbid")

    hostname: str = Field(min_length=1, max_length=253)
    user: str | None = Field(default=None, pattern=r"^[a-z_][a-z0-9_.-]{0,31}$")
    ssh_port: int | None = Field(default=None, ge=1, le=65535)
    hive_port: int = Field(default=DEFAULT_HIVE_PORT, ge=1, le=65535)
    backend: Literal["auto", "cpu", "cuda", "metal"] = "auto"
    devices: list[int] = Field(default_factory=list)
    network: Literal["tunnel", "direct"] = "tunnel"
    python: str = Field(default="python3", min_length=1)
    install_dir: str = "~/.local/share/rbee"
    local: bool = False
    max_queue: int = Field(default=DEFAULT_MAX_QUEUE, ge=0, le=100_000)
    max_replicas: int = Field(default=1, ge=1, le=64)
    safe_mode: Literal["auto", "on", "off"] = "auto"


class InventoryFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    nodes: dict[str, NodeEntry] = Field(default_factory=dict)


@dataclass(frozen=True)
class Node:
    """A resolved node: inventory entry, or a name resolved by the rules."""

    name: str
    hostname: str
    local: bool
    hive_port: int = DEFAULT_HIVE_PORT
    user: str | None = None
    ssh_port: int | None = None
    backend: str = "auto"
    devices: tuple[int, ...] = ()
    network: str = "tunnel"
    python: str = "python3"
    install_dir: str = "~/.local/share/rbee"
    source: str = "built-in"
    max_queue: int = DEFAULT_MAX_QUEUE  # requests that may wait per worker
    max_replicas: int = 1  # workers one model configuration may have
    safe_mode: str = "auto"  # llama.cpp extra buffer types: auto (off after a crash), on, off

    @property
    def reach(self) -> str:
        if self.local:
            return "local (no SSH)"
        user = f"{self.user}@" if self.user else ""
        port = f":{self.ssh_port}" if self.ssh_port else ""
        return f"ssh {user}{self.hostname}{port} ({self.network})"


@dataclass(frozen=True)
class Inventory:
    nodes: dict[str, Node]
    path: Path | None

    def resolve(self, name: str, resolves: Callable[[str], bool] | None = None) -> Node:
        """Inventory first; then local names; then the name as typed through the SSH
        config (as `ssh NAME` does); then NAME.home.arpa for a bare name that resolves.

        UnknownNode (saying what was tried) when nothing does. `resolves` tells
        whether a host name resolves (default: the system resolver).
        """
        validate_node_name(name)
        if name in self.nodes:
            return self.nodes[name]
        if name in LOCAL_NAMES or name == socket.gethostname():
            return Node(name=name, hostname="127.0.0.1", local=True)
        # Imported here: asyncssh is loaded only when a remote name needs it.
        from rbee_fabric.keeper.transport.sshconfig import lookup, ssh_config_files

        if (known := lookup(name)) is not None:
            via = f" via {known.jump}" if known.jump else ""
            return Node(name=name, hostname=name, local=False,
                        source=f"ssh config: {name} -> {known.hostname}{via}")  # fmt: skip
        if "." in name:
            return Node(name=name, hostname=name, local=False, source="name rules")
        fallback = f"{name}.home.arpa"
        if (resolves or _resolves)(fallback):
            return Node(name=name, hostname=fallback, local=False, source="name rules")
        configs = ", ".join(ssh_config_files()) or "no SSH config file"
        where = str(self.path) if self.path else "no inventory file (built-in: localhost only)"
        raise UnknownNode(
            f"unknown node {name!r}: it is not in the inventory ({where}) nor in the SSH config "
            f"({configs}); tried {name} through the SSH config, then {fallback} (does not resolve)",
            hint=f"add it to the inventory: a [nodes.{name}] table with its hostname in "
            f"{self.path or '~/.config/rbee/hosts.toml'} (`rbee nodes init` writes a starter), "
            f"or a `Host {name}` entry with its HostName to ~/.ssh/config",
            details={"node": name, "tried": [f"{name} (ssh config)", fallback]},
        )


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    return True


def validate_node_name(name: str) -> None:
    """Refuse anything that is not a DNS name (or a loopback literal)."""
    if not valid_name(name):
        raise UsageError(
            f"invalid node name {name!r}",
            hint="node names are DNS labels: letters, digits and '-', separated by dots",
            details={"field": "node", "node": name},
        )


def default_inventory_path() -> Path:
    """~/.config/rbee/hosts.toml (in $RBEE_CONFIG_DIR or under $XDG_CONFIG_HOME when set)."""
    from rbee_fabric import paths

    return paths.inventory_file()


def inventory_path(explicit: str | None) -> Path | None:
    """The inventory file to read, by the lookup order; None for the built-in one."""
    if explicit:
        return Path(explicit).expanduser()
    if env := os.environ.get("RBEE_INVENTORY"):
        return Path(env).expanduser()
    candidate = default_inventory_path()
    return candidate if candidate.exists() else None


def load(explicit: str | None = None) -> Inventory:
    path = inventory_path(explicit)
    builtin = {"localhost": Node(name="localhost", hostname="127.0.0.1", local=True)}
    if path is None:
        return Inventory(nodes=builtin, path=None)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InventoryError(
            f"inventory file not found: {path}",
            hint=f"write a commented starter there: rbee --inventory {path} nodes init",
            details={"file": str(path)},
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise InventoryError(
            f"{path}: not valid TOML: {exc}",
            hint="`rbee --inventory NEW.toml nodes init` writes a commented example of the format",
            details={"file": str(path)},
        ) from None
    try:
        parsed = InventoryFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        reason = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise InventoryError(
            f"{path}: {key}: {reason}",
            hint="`rbee --inventory NEW.toml nodes init` writes an example with every key",
            details={"file": str(path), "key": key},
        ) from None
    nodes = dict(builtin)
    for name, entry in parsed.nodes.items():
        try:
            validate_node_name(name)
        except UsageError:
            raise InventoryError(
                f"{path}: nodes.{name}: not a valid node name",
                hint="node names are DNS labels: letters, digits and '-'",
                details={"file": str(path), "key": f"nodes.{name}"},
            ) from None
        local = entry.local or (entry.hostname in LOCAL_NAMES and entry.user is None)
        nodes[name] = Node(
            name=name,
            hostname=entry.hostname,
            local=local,
            hive_port=entry.hive_port,
            user=entry.user,
            ssh_port=entry.ssh_port,
            backend=entry.backend,
            devices=tuple(entry.devices),
            network=entry.network,
            python=entry.python,
            install_dir=entry.install_dir,
            source=str(path),
            max_queue=entry.max_queue,
            max_replicas=entry.max_replicas,
            safe_mode=entry.safe_mode,
        )
    return Inventory(nodes=nodes, path=path)
