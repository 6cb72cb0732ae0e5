"""`llm-worker-rbee`: started by the hive, one process per loaded model."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import logging
import os
import signal
import sys
import threading
import time

from rbee_fabric import __version__

PARENT_POLL_S = 1.0
PARENT_GRACE_S = 15.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="llm-worker-rbee",
        description="Serve one GGUF model over HTTP (started by rbee-hive). "
        "The API key is read from the RBEE_API_KEY environment variable.",
    )
    p.add_argument("--worker-id", required=True)
    p.add_argument("--model", required=True, help="path of the GGUF file")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, help="port to listen on (required unless --speculate)")
    p.add_argument("--hive-url", default=None, help="where to send the ready callback")
    p.add_argument("--backend", default="auto", choices=["auto", "cpu", "cuda", "metal"])
    p.add_argument("--device", type=int, default=0)
    p.add_argument("--n-ctx", type=int, default=2048)
    p.add_argument(
        "--max-queue", type=int, default=64,
        help="requests that may wait for the slot; more get QUEUE_FULL (default 64)",
    )  # fmt: skip
    p.add_argument("--key-file", default="~/.config/rbee/api_key")
    p.add_argument(
        "--safe-mode", action="store_true",
        help="turn off llama.cpp's extra buffer types (no AMX, no weight repacking): "
        "for CPUs where those kernels crash",
    )  # fmt: skip
    p.add_argument(
        "--speculate", action="store_true",
        help="load the model now, then wait for the hive to adopt this worker: one JSON line "
        "on stdin with host, port, hive_url, key_file and max_queue (EOF: exit)",
    )  # fmt: skip
    p.add_argument("--version", action="version", version=f"llm-worker-rbee {__version__}")
    args = p.parse_args(argv)
    if args.port is None and not args.speculate:
        p.error("the following arguments are required: --port")
    return args


def die_with_parent(expected: int) -> None:
    """End this worker when its hive ends, whatever kills the hive.

    Linux: the kernel sends SIGTERM when the parent dies (PR_SET_PDEATHSIG).
    Everywhere (macOS too): a watchdog thread notices the parent pid changed
    (re-parented to init or a subreaper) and stops the worker gracefully,
    then for good if that does not finish in time.
    """
    if sys.platform.startswith("linux"):
        import ctypes
        import ctypes.util

        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != expected:  # the hive died before we could ask
        os._exit(1)

    def watch() -> None:
        while os.getppid() == expected:
            time.sleep(PARENT_POLL_S)
        logging.getLogger("rbee").warning("the hive (pid %d) is gone: stopping", expected)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(PARENT_GRACE_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.umask(0o077)
    if hive_pid := os.environ.get("RBEE_HIVE_PID"):
        die_with_parent(int(hive_pid))
    # The log goes to a copy of stderr: llama-cpp-python points fds 1 and 2 at
    # /dev/null while it loads a model (verbose=False), and the load runs beside
    # the rest of the start-up (worker/preload.py), whose lines would be lost.
    log_stream = os.fdopen(os.dup(2), "w", buffering=1)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=log_stream,
    )  # fmt: skip
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # A crash in the engine (SIGSEGV...) leaves the crashing thread's Python stack
    # in the worker log (one thread: the log tail the keeper shows stays short),
    # also when it happens while loading.
    faulthandler.enable(file=log_stream, all_threads=False)
    api_key = os.environ.get("RBEE_API_KEY")
    if not api_key:
        print("llm-worker-rbee: RBEE_API_KEY is not set", file=sys.stderr)
        return 2

    from rbee_fabric.worker.engine import make_engine
    from rbee_fabric.worker.preload import EarlyLoad, speculate_identity

    # The load starts before the web stack is imported (worker/preload.py).
    engine = make_engine(
        args.model, backend=args.backend, device=args.device, n_ctx=args.n_ctx,
        safe_mode=args.safe_mode,
    )  # fmt: skip
    loader = EarlyLoad(engine)
    from rbee_fabric.httpserver import bind_socket, serve
    from rbee_fabric.worker.app import WorkerSettings, create_app

    if args.speculate:
        if (identity := speculate_identity()) is None:
            os._exit(0)  # the hive did not need this worker; no clean-up to wait for
        for key, value in identity.items():
            setattr(args, key, value)
        logging.getLogger("rbee").info("worker %s placed by the hive", args.worker_id)
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as exc:
        print(f"llm-worker-rbee: cannot bind {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 3
    host = f"[{args.host}]" if ":" in args.host else args.host
    settings = WorkerSettings(
        worker_id=args.worker_id,
        model_path=args.model,
        url=f"http://{host}:{sock.getsockname()[1]}",
        api_key=api_key,
        hive_url=args.hive_url,
        key_file=args.key_file,
        n_ctx=args.n_ctx,
        max_queue=args.max_queue,
    )
    log = logging.getLogger("rbee")
    log.info("worker %s listening on %s", args.worker_id, settings.url)
    if args.safe_mode:
        log.info("safe mode: llama.cpp extra buffer types off (no AMX, no weight repacking)")
    app = create_app(settings, engine, loader)
    serve(app, sock)
    return int(getattr(app.state, "exit_code", 0))


if __name__ == "__main__":
    sys.exit(main())
