"""A node's kept SSH connection (its link), as OpenSSH's ControlPersist: the client side.

After a remote `rbee infer` the full path leaves a small daemon
(keeper/linkd.py) holding the node's SSH connection until it has been idle
for RBEE_SSH_KEEP_S seconds (default 300; 0: never kept). It listens on a
Unix socket in a directory only this user may enter (and, on Linux, serves
only this user's processes). The lean path of the next `rbee infer` on that
node asks it for the node's API key and for a channel to the worker's
loopback port, and so skips the full path's imports, the SSH handshake, the
remote commands and the port forwards.

Protocol: one JSON line each way ({"op": "ping" | "key" | "stop" | "connect",
...} and {"ok": true, ...} or {"ok": false, "error": ...}); after a connect
answer the socket carries the channel's bytes. Standard library only: the
lean path imports this.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import sys
from pathlib import Path

from rbee_fabric import paths

KEEP_S = 300.0
_MAX_LINE = 65536


class LinkError(OSError):
    """No usable link: none runs, it refused, or it is not this user's (a connection
    failure, as the lean path's HTTP sees it)."""


def keep_seconds() -> float:
    """RBEE_SSH_KEEP_S: how long an idle link stays (0: no link); bad values: the default."""
    try:
        value = float(os.environ.get("RBEE_SSH_KEEP_S", KEEP_S))
    except ValueError:
        return KEEP_S
    return value if value >= 0 else KEEP_S


def runtime_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR") or os.environ.get("TMPDIR") or "/tmp"
    return Path(base) / f"rbee-{os.getuid()}"


def socket_path(node: str, inventory: Path | None) -> Path:
    """Where node's link listens, for this data directory, inventory and SSH config
    (short: Unix socket paths are limited to about 100 bytes)."""
    identity = [str(paths.data_dir()), node, str(inventory) if inventory else None,
                os.environ.get("RBEE_SSH_CONFIG")]  # fmt: skip
    digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:24]
    return runtime_dir() / f"{digest}.sock"


def private_dir(path: Path, create: bool = False) -> None:
    """LinkError unless path is a directory of this user that nobody else may enter."""
    if create:
        try:
            path.mkdir(mode=0o700, parents=True)
        except FileExistsError:
            pass
        except OSError as exc:
            raise LinkError(f"cannot create {path}: {exc}") from None
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise LinkError(f"{path}: {exc}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise LinkError(f"{path} is not a private directory of this user")


def request(path: Path, op: dict[str, object], timeout: float = 3.0) -> tuple[socket.socket, dict[str, object]]:
    """Send op to the link at path: (the socket, the answer). LinkError when it cannot."""
    private_dir(path.parent)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(json.dumps(op).encode() + b"\n")
        line = b""
        while not line.endswith(b"\n"):  # byte by byte: a channel's bytes follow the answer
            byte = sock.recv(1)
            if not byte or len(line) > _MAX_LINE:
                raise LinkError("the link closed without an answer")
            line += byte
        answer = json.loads(line)
        if not isinstance(answer, dict) or answer.get("ok") is not True:
            raise LinkError(str(answer.get("error") if isinstance(answer, dict) else answer))
    except (OSError, ValueError) as exc:
        sock.close()
        raise LinkError(str(exc)) from None
    except BaseException:
        sock.close()
        raise
    return sock, answer


def ask(path: Path, op: str) -> dict[str, object]:
    """A one-line exchange (ping, key, stop)."""
    sock, answer = request(path, {"op": op})
    sock.close()
    return answer


def api_key(path: Path) -> str:
    key = ask(path, "key").get("api_key")
    if not isinstance(key, str) or not key:
        raise LinkError("the link holds no API key")
    return key


def connect(path: Path, host: str, port: int, timeout: float | None) -> socket.socket:
    """A socket that is a channel to host:port on the node (its loopback)."""
    sock, _ = request(path, {"op": "connect", "host": host, "port": port})
    sock.settimeout(timeout)
    return sock


def _socket_for(node: str, explicit_inventory: str | None) -> Path:
    from rbee_fabric.keeper.fastpath_node import inventory_path

    return socket_path(node, inventory_path(explicit_inventory))


def stop(node: str, explicit_inventory: str | None) -> bool:
    """End node's link if one runs; True when one did."""
    try:
        ask(_socket_for(node, explicit_inventory), "stop")
    except LinkError:
        return False
    return True


def ensure(node: str, explicit_inventory: str | None) -> bool:
    """Leave a link to node running (keeper/linkd.py), unless one answers or keeping is off;
    True when a new one was started (in the background: its handshake is off this
    command's path). LinkError when its directory is not private."""
    keep = keep_seconds()
    if keep <= 0:
        return False
    path = _socket_for(node, explicit_inventory)
    try:
        ask(path, "ping")
        return False
    except LinkError:
        pass
    import subprocess

    private_dir(path.parent, create=True)
    log = paths.ensure_dir(paths.logs_dir()) / f"link-{node}.log"
    argv = [sys.executable, "-m", "rbee_fabric.keeper.linkd", node, "--socket", str(path), "--keep", str(keep)]
    if explicit_inventory:
        argv += ["--inventory", explicit_inventory]
    with open(log, "ab") as out:
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                         start_new_session=True)  # fmt: skip
    return True
