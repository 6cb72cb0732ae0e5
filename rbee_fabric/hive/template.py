"""The worker template: a fork of the hive with the worker's libraries imported, forked per worker.

The hive forks it right after its own imports (fastapi, uvicorn, pydantic,
httpx: the worker needs them too) and before it starts any thread; the
template then imports llama_cpp and the worker's modules while the hive goes
on starting. Each worker is a fork of the template: no new interpreter, no
imports. That is two interpreter starts and their imports fewer on a cold
start.

Each forked worker rewrites its command line (set_cmdline) to
`... -m rbee_fabric.worker --worker-id ID ...`, as much as the hive's own
command line has room for, so ps, psutil and pidfile.is_worker see it as a
started worker; the template shows as `rbee_fabric-worker-template`. When
even `-m rbee_fabric.worker --worker-id ID` does not fit, the hive starts
that worker the old way.

Protocol over two pipes, JSON lines: the template writes {"ready": true} once
imported, then reads {"argv", "env", "log"} lines (one per worker) and answers
each with {"pid": N}, {"fallback": true} (start it the old way) or {"error"};
whenever a worker exits it writes {"exited": N, "code": C} (C as asyncio's
returncode: negative for a signal). It ends when its request pipe closes (the
hive closed it, or died), and on Linux also by SIGTERM when the hive dies
(PR_SET_PDEATHSIG). A worker ends when the template does (the worker's own
die-with-parent, see worker/__main__.py).

Linux only; elsewhere the hive starts each worker as a new interpreter.
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
           "rbee_fabric.httpserver", "rbee_fabric.worker.__main__", "uvicorn")  # fmt: skip
# What uvicorn loads when it starts serving (optional: their names vary by version).
PRELOAD_SERVING = ("uvicorn.lifespan.on", "uvicorn.protocols.http.auto",
                   "uvicorn.protocols.websockets.auto", "uvicorn.loops.auto")  # fmt: skip


def _die_with_parent() -> None:
    import ctypes
    import ctypes.util

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


TEMPLATE_TITLE = "rbee_fabric-worker-template"


def _arg_area() -> tuple[int, int] | None:
    """(start, size) of this process's argument memory (/proc/self/stat fields 48, 49)."""
    try:
        with open("/proc/self/stat", "rb") as fh:
            stat = fh.read()
        fields = stat[stat.rindex(b")") + 2 :].split()
        start, end = int(fields[45]), int(fields[46])
    except (OSError, ValueError, IndexError):
        return None
    return (start, end - start) if end > start else None


def _packed(args: list[str]) -> bytes:
    return b"".join(a.encode() + b"\0" for a in args)


def worker_title(argv: list[str], room: int) -> list[str] | None:
    """The fullest worker command line that fits room bytes; None when none does."""
    wid = argv[argv.index("--worker-id") + 1] if "--worker-id" in argv else "?"
    for title in ([sys.executable, "-m", "rbee_fabric.worker", *argv],
                  [sys.executable, "-m", "rbee_fabric.worker", "--worker-id", wid],
                  ["python", "-m", "rbee_fabric.worker", "--worker-id", wid],
                  ["-m", "rbee_fabric.worker", "--worker-id", wid]):  # fmt: skip
        if len(_packed(title)) <= room:
            return title
    return None


def set_cmdline(args: list[str]) -> bool:
    """Make /proc/self/cmdline read args (Linux). The kernel shows the memory between
    arg_start and arg_end, which CPython no longer uses once started: args are
    written there, padded with NULs; False when they do not fit."""
    import ctypes

    area = _arg_area()
    data = _packed(args)
    if area is None or len(data) > area[1]:
        return False
    start, size = area
    ctypes.memmove(start, data + b"\0" * (size - len(data)), size)
    return True


def _send(fd: int, msg: dict[str, Any]) -> None:
    os.write(fd, (json.dumps(msg) + "\n").encode())


def _code(status: int) -> int:
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _child(req: dict[str, Any], title: list[str], fds: list[int]) -> None:
    """In the forked worker: become the worker process described by req; never returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for fd in fds:  # the template's pipes
            os.close(fd)
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
        set_cmdline(title)
        sys.argv = ["llm-worker-rbee", *req["argv"]]
        import logging

        logging.root.handlers.clear()  # the hive's; the worker configures its own
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


def serve(req_fd: int, rep_fd: int, imports: Any = None) -> int:
    """The template's loop: fork on request, report exits, end with the request pipe.
    imports: called before the first request is handled (a lazy template's imports),
    low=True when that request only asks for them."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    sel = selectors.DefaultSelector()
    sel.register(req_fd, selectors.EVENT_READ, "control")
    sel.register(wake_r, selectors.EVENT_READ, "wake")
    area = _arg_area()
    buf = b""
    children: set[int] = set()
    while True:
        for key, _ in sel.select():
            if key.data == "wake":
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 512)
                continue
            data = os.read(req_fd, 65536)
            if not data:
                return 0  # the hive is gone or done with us
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                req = json.loads(line)
                if imports is not None:
                    # Asked to warm up: at the lowest priority; for a fork: now.
                    if not imports(low=bool(req.get("import")) and not req.get("now")):
                        return 1
                    imports = None
                if req.get("import"):
                    continue  # only the imports were asked for
                title = worker_title(req["argv"], area[1]) if area else None
                if title is None:
                    _send(rep_fd, {"fallback": True})
                    continue
                try:
                    pid = os.fork()
                except OSError as exc:
                    _send(rep_fd, {"error": str(exc)})
                    continue
                if pid == 0:
                    sel.close()
                    _child(req, title, [req_fd, rep_fd, wake_r, wake_w])
                children.add(pid)
                _send(rep_fd, {"pid": pid})
        while children:  # reap whoever exited
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            children.discard(pid)
            _send(rep_fd, {"exited": pid, "code": _code(status)})


def _import_all() -> str | None:
    """Import what workers need; None, or what failed."""
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as exc:
            return f"cannot import {name}: {exc}"
    for name in PRELOAD_SERVING:
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    return None


def _background(work: Any) -> Any:
    """work() in a thread at the lowest priority (Linux: nice is per thread), joined:
    the imports take only idle CPU from loading models and prompts, and this thread,
    whose nice value workers would inherit, is gone before any fork."""
    import threading

    result: list[Any] = [f"{work.__name__} did not finish"]

    def run() -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        result[0] = work()

    t = threading.Thread(target=run, name="template-imports")
    t.start()
    t.join()
    return result[0]


def _template_main(req_fd: int, rep_fd: int, hive_pid: int, lazy: bool) -> int:
    set_cmdline([TEMPLATE_TITLE])  # neither a hive nor a worker to ps
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl+C of a foreground hive is the hive's
    _die_with_parent()
    if os.getppid() != hive_pid:
        return 1  # the hive died before we could ask
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy (via llama_cpp): no threads

    def imports(low: bool = False) -> bool:
        failed = _background(_import_all) if low else _import_all()
        if failed is not None:  # the hive starts its workers the old way, which will say why
            _send(rep_fd, {"error": failed})
            return False
        _send(rep_fd, {"ready": True})
        return True

    if lazy:  # a speculative worker is loading: its cores are not taken from it
        return serve(req_fd, rep_fd, imports)
    if not imports():
        return 1
    return serve(req_fd, rep_fd)


def fork_template(close: tuple[int, ...] = (), lazy: bool = False) -> tuple[int, int, int]:
    """Fork the template from this (single-threaded) process: (pid, request fd, reply fd).
    close: descriptors of the hive the template closes (a pipe whose EOF matters)."""
    req_r, req_w = os.pipe()
    rep_r, rep_w = os.pipe()
    hive_pid = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(req_w)
            os.close(rep_r)
            for fd in close:
                with contextlib.suppress(OSError):
                    os.close(fd)
            code = _template_main(req_r, rep_w, hive_pid, lazy)
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(req_r)
    os.close(rep_w)
    return pid, req_w, rep_r
