"""Start this machine's hive early, while the full path is still loading its libraries.

When the lean path hands a cold `rbee infer` to the full path and no hive
answers on the node's port, waiting for typer, httpx and pydantic to load
before starting the hive puts two interpreter start-ups in series. This starts
the hive at once (the command LocalTransport.start_hive runs) and holds the
keeper's hive-start lock (keeper/startlock.py) until the hive answers, from a
thread. The full path then finds the hive answering, or waits on the lock
and finds it then: it never starts a second one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from rbee_fabric import minihttp, paths
from rbee_fabric.keeper.startlock import lock_file

WAIT_S = 20.0


def listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


class EarlyHive:
    """A hive this keeper started, and the pipe its speculative worker's record
    comes on (hive/speculate.py: tell_keeper)."""

    def __init__(self, port: int, proc: subprocess.Popen[bytes], record_fd: int) -> None:
        self.port = port
        self.proc = proc
        self._fd: int | None = record_fd

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def record(self, wait_s: float = WAIT_S) -> dict[str, Any] | None:
        """The worker the hive started for this keeper's request, told where to listen;
        None when it started none (the pipe closed empty), or answers without a record
        (a hive that does not write one), or within wait_s neither."""
        fd, self._fd = self._fd, None
        if fd is None:
            return None
        data = b""
        try:
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                if not select.select([fd], [], [], 0.02)[0]:
                    if self.proc.poll() is not None or answers(self.port):
                        return None
                    continue
                chunk = os.read(fd, 65536)
                if not chunk or (data := data + chunk).endswith(b"\n"):
                    break
            rec = json.loads(data) if data.endswith(b"\n") else None
        except (OSError, ValueError):
            return None
        finally:
            os.close(fd)
        keys = ("worker_id", "url", "pid", "n_ctx", "backend", "device", "safe_mode")
        return rec if isinstance(rec, dict) and all(k in rec for k in keys) else None


def start_early(node: str, port: int, note: object, preload: str | None = None) -> EarlyHive | None:
    """Start the hive of node on port unless one answers or is being started; the
    started hive, or None.

    note(msg) prints the line the full path would print about it. preload: the
    request about to be made (JSON, hive/speculate.py): its worker starts loading
    before the hive is up.
    """
    if listening(port):
        return None
    lock = lock_file(node)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None  # another keeper is starting it
    try:
        if listening(port):
            os.close(fd)
            return None
        paths.ensure_dir(paths.logs_dir())
        paths.ensure_api_key()
        note(f"rbee-hive is not running on {node}; starting it")  # type: ignore[operator]
        read_fd, write_fd = os.pipe()
        try:
            proc = _spawn(port, preload, write_fd)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
    except BaseException:
        os.close(fd)
        raise
    threading.Thread(target=_release_when_up, args=(fd, port, proc), daemon=True).start()
    return EarlyHive(port, proc, read_fd)


def _spawn(port: int, preload: str | None, record_fd: int) -> subprocess.Popen[bytes]:
    """As LocalTransport.start_hive: detached, logging to the data directory."""
    cmd = [sys.executable, "-m", "rbee_fabric.hive", "--port", str(port)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if preload is not None:  # in the environment: a hive of another version ignores it
        env["RBEE_HIVE_PRELOAD"] = preload
        env["RBEE_HIVE_PRELOAD_FD"] = str(record_fd)
    log_fd = os.open(paths.hive_log_file(), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with open(log_fd, "ab") as log:
        return subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, env=env,
            pass_fds=(record_fd,) if preload is not None else (),
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
