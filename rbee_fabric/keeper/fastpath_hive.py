"""Start this machine's hive early, while the full path is still loading its libraries.

When the lean path hands a cold `rbee infer` to the full path and no hive
answers on the node's port, waiting for typer, httpx and pydantic to load
before starting the hive puts two interpreter start-ups in series. This starts
the hive at once (the command LocalTransport.start_hive runs) and holds the
keeper's hive-start lock (hivectl.start_lock) until the hive answers, from a
thread. The full path then finds the hive answering, or waits on the lock
and finds it then: it never starts a second one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import subprocess
import sys
import threading
import time

from rbee_fabric import minihttp, paths

WAIT_S = 20.0


def listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def start_early(node: str, port: int, note: object, preload: str | None = None) -> bool:
    """Start the hive of node on port unless one answers or is being started; True if started.

    note(msg) prints the line the full path would print about it. preload: the
    request about to be made (JSON, hive/speculate.py): its worker starts loading
    before the hive is up.
    """
    if listening(port):
        return False
    lock = paths.ensure_dir(paths.data_dir() / "locks") / f"hive-start-{node}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False  # another keeper is starting it
    try:
        if listening(port):
            os.close(fd)
            return False
        paths.ensure_dir(paths.logs_dir())
        paths.ensure_api_key()
        note(f"rbee-hive is not running on {node}; starting it")  # type: ignore[operator]
        proc = _spawn(port, preload)
    except BaseException:
        os.close(fd)
        raise
    threading.Thread(target=_release_when_up, args=(fd, port, proc), daemon=True).start()
    return True


def _spawn(port: int, preload: str | None) -> subprocess.Popen[bytes]:
    """As LocalTransport.start_hive: detached, logging to the data directory."""
    cmd = [sys.executable, "-m", "rbee_fabric.hive", "--port", str(port)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if preload is not None:  # in the environment: a hive of another version ignores it
        env["RBEE_HIVE_PRELOAD"] = preload
    log_fd = os.open(paths.hive_log_file(), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with open(log_fd, "ab") as log:
        return subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, env=env,
        )  # fmt: skip


def answers(port: int) -> bool:
    conn = minihttp.Connection("127.0.0.1", port, timeout=2.0)
    try:
        conn.request("GET", "/v1/health")
        return conn.getresponse().status == 200
    except (OSError, minihttp.ProtocolError):
        return False
    finally:
        conn.close()


def _release_when_up(fd: int, port: int, proc: subprocess.Popen[bytes]) -> None:
    """Hold the start lock until the hive answers, exits, or WAIT_S pass."""
    try:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and proc.poll() is None:
            if answers(port):
                return
            time.sleep(0.02)
    finally:
        os.close(fd)
