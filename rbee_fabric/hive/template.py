"""The worker template: a process with the worker's libraries imported, forked per worker.

The hive starts it first thing (`python -m rbee_fabric.hive.template`), so
`import llama_cpp`, fastapi and uvicorn happen while the hive itself starts,
once. Each worker is then a fork of it: no new interpreter, no imports.

A forked worker rewrites its command line to the one a started worker has
(set_cmdline), so every tool that finds workers by it still does.

Protocol: JSON lines. The template writes {"ready": true} once imported,
then reads {"argv", "env", "log", "name"} lines (one per worker) and answers
each with {"pid": N} (or {"error": "..."}); whenever a worker exits it writes
{"exited": N, "code": C} (C as asyncio's returncode: negative for a signal).
It ends when its stdin closes (the hive closed it, or died), and on Linux also
by SIGTERM when the hive dies (PR_SET_PDEATHSIG). A worker ends when the
template does (the worker's own die-with-parent, see worker/__main__.py).

Linux only (fork after importing llama.cpp, no threads started); elsewhere
the hive starts each worker as a new interpreter, as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import sys
from typing import Any

PRELOAD = ("llama_cpp", "rbee_fabric.worker.app", "rbee_fabric.worker.engine",
           "rbee_fabric.httpserver", "rbee_fabric.worker.__main__")  # fmt: skip


def _die_with_parent() -> None:
    import ctypes
    import ctypes.util

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


TEMPLATE_TITLE = "rbee_fabric-worker-template"
ARGV_ROOM = 4096  # bytes of command line reserved for a forked worker's (see set_cmdline)


def set_cmdline(args: list[str]) -> bool:
    """Make /proc/self/cmdline read args (Linux): ps, psutil and pidfile.is_worker see a
    forked worker exactly as a started one. The kernel shows the memory between
    arg_start and arg_end (/proc/self/stat fields 48, 49), which CPython no longer
    uses once started: args are written there, padded with NULs; False if they do
    not fit (the hive reserves ARGV_ROOM bytes with a padding argument)."""
    import ctypes

    try:
        with open("/proc/self/stat", "rb") as fh:
            stat = fh.read()
        fields = stat[stat.rindex(b")") + 2 :].split()
        start, end = int(fields[45]), int(fields[46])
    except (OSError, ValueError, IndexError):
        return False
    data = b"\0".join(a.encode() for a in args) + b"\0"
    size = end - start
    if not 0 < len(data) <= size:
        return False
    ctypes.memmove(start, data + b"\0" * (size - len(data)), size)
    return True


def _send(msg: dict[str, Any]) -> None:
    os.write(1, (json.dumps(msg) + "\n").encode())


def _code(status: int) -> int:
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _child(req: dict[str, Any], wake_r: int, wake_w: int) -> None:
    """In the forked worker: become the worker process described by req; never returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)
        os.close(wake_r)
        os.close(wake_w)
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDONLY)
        log = os.open(req["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(devnull)
        os.close(log)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        os.environ.clear()
        os.environ.update(req["env"])
        os.environ["RBEE_HIVE_PID"] = str(os.getppid())  # the worker ends with the template
        set_cmdline([sys.executable, "-m", "rbee_fabric.worker", *req["argv"]])
        sys.argv = ["llm-worker-rbee", *req["argv"]]
        from rbee_fabric.worker.__main__ import main

        code = main(req["argv"])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def serve() -> int:
    """The template's loop: fork on request, report exits, end with stdin."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    sel = selectors.DefaultSelector()
    sel.register(0, selectors.EVENT_READ, "control")
    sel.register(wake_r, selectors.EVENT_READ, "wake")
    buf = b""
    children: set[int] = set()
    while True:
        for key, _ in sel.select():
            if key.data == "wake":
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 512)
            else:
                data = os.read(0, 65536)
                if not data:
                    return 0  # the hive is gone or done with us
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    req = json.loads(line)
                    try:
                        pid = os.fork()
                    except OSError as exc:
                        _send({"error": str(exc)})
                        continue
                    if pid == 0:
                        sel.close()
                        _child(req, wake_r, wake_w)
                    children.add(pid)
                    _send({"pid": pid})
        while children:  # reap whoever exited
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            children.discard(pid)
            _send({"exited": pid, "code": _code(status)})


def main() -> int:
    set_cmdline([sys.executable, TEMPLATE_TITLE])  # neither a hive nor a worker to ps
    if sys.platform.startswith("linux"):
        _die_with_parent()
        if os.getppid() == 1:
            return 1  # the hive died before we could ask
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy (via llama_cpp): no threads
    import importlib

    try:
        for name in PRELOAD:
            importlib.import_module(name)
    except Exception as exc:  # the hive starts its workers the old way, which will say why
        _send({"error": f"cannot import {name}: {exc}"})
        return 1
    _send({"ready": True})
    return serve()


if __name__ == "__main__":
    sys.exit(main())
