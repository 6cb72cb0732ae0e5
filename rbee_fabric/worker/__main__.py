"""`llm-worker-rbee`: started by the hive, one process per loaded model."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import sys

from rbee_fabric import __version__


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="llm-worker-rbee",
        description="Serve one GGUF model over HTTP (started by rbee-hive). "
        "The API key is read from the RBEE_API_KEY environment variable.",
    )
    p.add_argument("--worker-id", required=True)
    p.add_argument("--model", required=True, help="path of the GGUF file")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--hive-url", default=None, help="where to send the ready callback")
    p.add_argument("--backend", default="auto", choices=["auto", "cpu", "cuda", "metal"])
    p.add_argument("--device", type=int, default=0)
    p.add_argument("--n-ctx", type=int, default=2048)
    p.add_argument("--key-file", default="~/.config/rbee/api_key")
    p.add_argument(
        "--safe-mode", action="store_true",
        help="turn off llama.cpp's extra buffer types (no AMX, no weight repacking): "
        "for CPUs where those kernels crash",
    )  # fmt: skip
    p.add_argument("--version", action="version", version=f"llm-worker-rbee {__version__}")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # A crash in the engine (SIGSEGV...) leaves the crashing thread's Python stack
    # in the worker log (one thread: the log tail the keeper shows stays short).
    faulthandler.enable(all_threads=False)
    api_key = os.environ.get("RBEE_API_KEY")
    if not api_key:
        print("llm-worker-rbee: RBEE_API_KEY is not set", file=sys.stderr)
        return 2

    from rbee_fabric.httpserver import bind_socket, serve
    from rbee_fabric.worker.app import WorkerSettings, create_app
    from rbee_fabric.worker.engine import make_engine

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
    )
    engine = make_engine(
        args.model, backend=args.backend, device=args.device, n_ctx=args.n_ctx,
        safe_mode=args.safe_mode,
    )  # fmt: skip
    log = logging.getLogger("rbee")
    log.info("worker %s listening on %s", args.worker_id, settings.url)
    if args.safe_mode:
        log.info("safe mode: llama.cpp extra buffer types off (no AMX, no weight repacking)")
    app = create_app(settings, engine)
    serve(app, sock)
    return int(getattr(app.state, "exit_code", 0))


if __name__ == "__main__":
    sys.exit(main())
