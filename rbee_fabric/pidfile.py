"""The hive's pid file: one per hive port, checked before anyone signals it.

`<data>/hive-<port>.pid` holds four lines: pid, port, the process's start
time (seconds since the epoch, as psutil reports it) and the data
directory. A pid is only trusted while a process with that pid, that start
time and `rbee_fabric.hive ... --port <port>` on its command line exists: a
stale file whose pid now belongs to another process (or another hive)
never gets that process signalled.

`python -m rbee_fabric.pidfile hive PORT` prints the verified pid (the SSH
transport runs it on the node); `... worker PID WORKER_ID` prints PID when
it is that rbee worker; `... alive PID...` prints those of the pids that run
one of rbee's programs (psutil: no /proc, so it works on macOS too).
"""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

import psutil

from rbee_fabric import paths

START_TOLERANCE_S = 0.05


def hive_pid_file(port: int) -> Path:
    return paths.data_dir() / f"hive-{port}.pid"


def start_time(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, OSError):
        return None


def _cmdline(pid: int) -> list[str] | None:
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return list(proc.cmdline())
    except (psutil.Error, OSError):
        return None


def write_hive(port: int) -> Path:
    """Record this process as the hive on port (atomically)."""
    path = hive_pid_file(port)
    pid = os.getpid()
    text = f"{pid}\n{port}\n{start_time(pid)!r}\n{paths.data_dir()}\n"
    tmp = path.with_name(f".{path.name}.{pid}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def remove_hive(port: int) -> None:
    path = hive_pid_file(port)
    try:
        if path.read_text().split()[0] == str(os.getpid()):
            path.unlink()
    except (OSError, IndexError):
        pass


def _has_arg(cmd: list[str], flag: str, value: str) -> bool:
    return any(a == flag and b == value for a, b in itertools.pairwise(cmd))


def is_hive(pid: int, port: int, started: float) -> bool:
    """True when pid is the rbee-hive on port that started at `started`."""
    now = start_time(pid)
    if now is None or abs(now - started) > START_TOLERANCE_S:
        return False
    cmd = _cmdline(pid)
    return cmd is not None and "rbee_fabric.hive" in cmd and _has_arg(cmd, "--port", str(port))


def is_worker(pid: int, worker_id: str) -> bool:
    """True when pid runs the rbee worker `worker_id` (ids are random, never reused)."""
    cmd = _cmdline(pid)
    if cmd is not None and "rbee_fabric.hive.template" in cmd:
        # Forked from the worker template (hive/template.py): it is named after its id.
        return _comm(pid) == worker_id[:15]
    return cmd is not None and "rbee_fabric.worker" in cmd and _has_arg(cmd, "--worker-id", worker_id)


def _comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def read_hive(port: int) -> int | None:
    """The pid of the hive on port, verified; None when there is none."""
    try:
        lines = hive_pid_file(port).read_text().split("\n")
        pid, file_port, started = int(lines[0]), int(lines[1]), float(lines[2])
    except (OSError, ValueError, IndexError):
        return _read_legacy(port)
    if file_port != port or not is_hive(pid, port, started):
        return None
    return pid


def _read_legacy(port: int) -> int | None:
    """A hive of version 0.1.0 (one `hive.pid`, no start time) still running on port.

    Without a start time the check is the command line: `rbee_fabric.hive`
    with `--port PORT` exactly, so another hive or program is never chosen.
    """
    try:
        lines = (paths.data_dir() / "hive.pid").read_text().split()
        pid, file_port = int(lines[0]), int(lines[1])
    except (OSError, ValueError, IndexError):
        return None
    cmd = _cmdline(pid)
    if file_port != port or cmd is None:
        return None
    return pid if "rbee_fabric.hive" in cmd and _has_arg(cmd, "--port", str(port)) else None


def is_ours(pid: int) -> bool:
    """True when pid runs one of rbee's programs (not a zombie): guards against reused pids."""
    cmd = _cmdline(pid)
    return cmd is not None and any("rbee_fabric" in arg for arg in cmd)


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "hive" and argv[1].isdigit():
        pid = read_hive(int(argv[1]))
        if pid is not None:
            print(pid)
        return 0
    if len(argv) == 3 and argv[0] == "worker" and argv[1].isdigit():
        if is_worker(int(argv[1]), argv[2]):
            print(argv[1])
        return 0
    if len(argv) >= 1 and argv[0] == "alive" and all(a.isdigit() for a in argv[1:]):
        for arg in argv[1:]:
            if is_ours(int(arg)):
                print(arg)
        return 0
    print("usage: python -m rbee_fabric.pidfile hive PORT | worker PID WORKER_ID | alive PID...",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
