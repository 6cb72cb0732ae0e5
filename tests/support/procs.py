"""Process helpers for tests: start the real programs, find what is left behind."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    """A port free right now: only for a port that must be known before the program
    starts (a hive port in the inventory). Another program may take it meanwhile;
    where the program can bind port 0 itself, use `start_on_port_0` instead."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def refusing_address() -> Iterator[str]:
    """An http://127.0.0.1:PORT address that refuses connections for as long as it is held.

    The port is bound but never listens, so no other program can take it and
    every connection attempt is refused (unlike a port that was free a moment ago).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


LISTENING = re.compile(r"listening on https?://[^\s:/]+:(\d+)")


def start_on_port_0(
    cmd: list[str], env: dict[str, str], timeout: float = 30.0, **popen: Any
) -> tuple[subprocess.Popen[str], int, list[str]]:
    """Start a daemon with --port 0 and read the port it bound from its "listening on" line.

    Returns the process, its port and the list its output keeps going into (a
    thread drains the pipe, so the daemon never blocks on a full one).
    """
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)
    assert proc.stdout is not None
    lines: list[str] = []
    found: list[int] = []
    ready = threading.Event()

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if not found and (m := LISTENING.search(line)):
                found.append(int(m.group(1)))
                ready.set()
        ready.set()  # the process ended

    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(timeout) or not found:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{cmd[2:4]} never said where it listens:\n{''.join(lines)[-2000:]}")
    return proc, found[0], lines


def processes_with_env(key: str, value: str) -> list[int]:
    """Pids of live processes whose environment holds key=value (we are their owner)."""
    needle = f"{key}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if ") Z " in stat:  # a zombie has exited already
            continue
        if needle in env.split(b"\0"):
            found.append(int(entry.name))
    return found


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_http(url: str, timeout: float = 20.0, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
