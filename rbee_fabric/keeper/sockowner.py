"""Who owns a listening TCP socket on this machine (Linux: /proc/net/tcp*).

The keeper checks that a hive or worker port on its own machine is held by
its own user before it talks to it. Where /proc/net is missing (macOS) or
the socket is not visible (another network namespace), the answer is None
and the keeper relies on the key proof alone.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

_LISTEN = "0A"


def listening(proc_net: Path = Path("/proc/net")) -> dict[int, set[int]]:
    """Every listening TCP port of this machine with the uids holding it (one scan)."""
    table: dict[int, set[int]] = {}
    for name in ("tcp", "tcp6"):
        try:
            lines = (proc_net / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) < 8 or cols[3] != _LISTEN:
                continue
            _, _, hexport = cols[1].rpartition(":")
            try:
                table.setdefault(int(hexport, 16), set()).add(int(cols[7]))
            except ValueError:
                continue
    return table


def owner(port: int, table: dict[int, set[int]]) -> int | None:
    """The uid owning port in a `listening()` table, or None; a foreign owner wins."""
    uids = table.get(port, set())
    foreign = sorted(uids - {os.getuid()})
    if foreign:
        return foreign[0]
    return os.getuid() if uids else None


def listener_uid(port: int, proc_net: Path = Path("/proc/net")) -> int | None:
    """The uid owning the listening socket on port (any local address), or None.

    With several listeners on the port (IPv4 and IPv6), a foreign owner wins.
    """
    return owner(port, listening(proc_net))


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
