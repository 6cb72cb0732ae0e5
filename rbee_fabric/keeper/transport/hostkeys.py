"""Host keys: known_hosts lookups, `rbee nodes trust`, and the errors a bad key gives.

Keys leave this module as strings (algorithm, SHA256 fingerprint, the
OpenSSH public key line), never as asyncssh objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import asyncssh

from rbee_fabric.errors import HostKeyChanged, HostKeyUnknown, NodeUnreachable
from rbee_fabric.keeper.inventory import Node
from rbee_fabric.keeper.transport.sshconfig import (
    address,
    describe,
    options,
    ssh_config_files,
    target,
)


@dataclass(frozen=True)
class HostKey:
    algorithm: str  # ssh-ed25519, ...
    fingerprint: str  # SHA256:...
    public: str  # "ssh-ed25519 AAAA..." (no comment)

    @classmethod
    def of(cls, key: asyncssh.SSHKey) -> HostKey:
        line = key.export_public_key("openssh").decode().split()
        return cls(key.get_algorithm(), key.get_fingerprint(), " ".join(line[:2]))


def known_hosts_files(node: Node) -> list[str]:
    """The known_hosts files that apply to node (from the SSH config, else the default).

    HostKeyUnknown when the SSH config turns checking off (`UserKnownHostsFile
    none`): asyncssh would then accept any key, and rbee never connects so.
    """
    opts = options(node)
    if opts.known_hosts is None:
        raise HostKeyUnknown(
            f"the SSH config disables host-key checking for {node.name} "
            "(UserKnownHostsFile none); rbee does not connect without checking the host key",
            hint=f"remove `UserKnownHostsFile none` for {check_name(node)} from your SSH config "
            f"(or name a file), then run: rbee nodes trust {node.name}",
            details={"node": node.name},
        )
    files = opts.known_hosts if isinstance(opts.known_hosts, list) else []
    return [str(f) for f in files] or [str(Path.home() / ".ssh" / "known_hosts")]


def check_name(node: Node) -> str:
    """The name asyncssh checks in known_hosts: HostKeyAlias, else HostName, else the host."""
    opts = options(node)
    return str(opts.host_key_alias or opts.host or node.hostname)


def host_pattern(host: str, port: int) -> str:
    return host if port == 22 else f"[{host}]:{port}"


def known_keys(node: Node, port: int) -> list[str]:
    """The public keys known_hosts holds for node ("ALGO BASE64" strings)."""
    keys: list[str] = []
    name = check_name(node)
    for f in known_hosts_files(node):
        path = Path(f).expanduser()
        if not path.exists():
            continue
        try:
            trusted = asyncssh.read_known_hosts(str(path)).match(name, address(name), port)[0]
        except (OSError, ValueError):
            continue
        keys.extend(HostKey.of(k).public for k in trusted)
    return keys


def refused(node: Node, where: str, fingerprint: str | None, jump: str | None, reason: str) -> Exception:
    """The error for a host key that known_hosts did not accept (unknown, changed, or the jump host's)."""
    n = node
    if fingerprint is None and jump:
        # Our client never saw a key: the check that failed was the jump host's.
        return HostKeyUnknown(
            f"the host key of the jump host {jump} (ProxyJump for {n.name}) could not "
            f"be verified: {reason}; rbee did not connect",
            hint=f"check the jump host's key: connect once with `ssh {jump}`, compare "
            f"the fingerprint it shows with the jump host's real key, and accept it "
            f"(its entry belongs in known_hosts; {n.name}'s own entry is not at fault)",
            details={"node": n.name, "jump_host": jump},
        )
    port = target(n).port
    shown = fingerprint or "unknown"
    if known_keys(n, port):
        return HostKeyChanged(
            f"THE HOST KEY OF {n.name} ({where}) HAS CHANGED: it now presents "
            f"{shown}, which is not the key in known_hosts. Someone may be "
            "intercepting the connection, or the node was reinstalled.",
            hint="if you know why it changed, remove the old key with "
            f"`ssh-keygen -R '{host_pattern(check_name(n), port)}'` "
            f"(file: {known_hosts_files(n)[0]}), then run `rbee nodes trust {n.name}`",
            details={"node": n.name, "fingerprint": shown},
        )
    return HostKeyUnknown(
        f"the host key of {n.name} ({where}) is not known: {shown}",
        hint=f"check the fingerprint, then trust it with: rbee nodes trust {n.name}",
        details={"node": n.name, "fingerprint": shown},
    )


async def fetch(node: Node) -> HostKey:
    """The host key a node presents (for `rbee nodes trust`)."""
    t = target(node)
    try:
        key = await asyncssh.get_server_host_key(node.hostname, t.port, config=ssh_config_files())
    except (OSError, asyncssh.Error) as exc:
        raise NodeUnreachable(
            f"cannot reach {node.name} over SSH ({t.hostname}:{t.port}): {describe(exc)}",
            details={"node": node.name},
        ) from None
    if key is None:
        raise NodeUnreachable(f"{node.name} presented no host key", details={"node": node.name})
    return HostKey.of(key)


def trust(node: Node, key: HostKey) -> tuple[str, bool]:
    """Add node's key to known_hosts; (file, added). Refuses to replace a different key."""
    port = target(node).port
    known = known_keys(node, port)
    path = Path(known_hosts_files(node)[0]).expanduser()
    if key.public in known:
        return str(path), False
    if known:
        raise HostKeyChanged(
            f"{node.name} already has a different key in known_hosts; not replacing it",
            hint=f"remove the old key first: ssh-keygen -R '{host_pattern(check_name(node), port)}' -f {path}",
            details={"node": node.name, "fingerprint": key.fingerprint},
        )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(f"{host_pattern(check_name(node), port)} {key.public}\n")
    return str(path), True
