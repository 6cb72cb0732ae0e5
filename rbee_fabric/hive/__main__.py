"""`rbee-hive`: the node's pool manager daemon."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from rbee_fabric import __version__, paths

PRELOAD_ENV = "RBEE_HIVE_PRELOAD"
"""The --preload hint, as keepers pass it."""
PRELOAD_FD_ENV = "RBEE_HIVE_PRELOAD_FD"
"""A pipe the keeper reads: the speculative worker's record, or nothing (speculate.py)."""


def _port_range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    try:
        a, b = int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a range like 9300-9399") from None
    if not (1 <= a <= b <= 65535):
        raise argparse.ArgumentTypeError("expected a range like 9300-9399")
    return a, b


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="rbee-hive", description="rbee pool manager daemon")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9200, help="port to bind (default 9200)")
    p.add_argument(
        "--idle-timeout", type=float, default=float(os.environ.get("RBEE_IDLE_TIMEOUT", 300)),
        help="stop workers idle longer than this many seconds (default 300)",
    )  # fmt: skip
    p.add_argument("--worker-ports", type=_port_range, default=(9300, 9399))
    p.add_argument(
        "--preload", metavar="JSON", default=None,
        help='the request a keeper is about to make, {"model": REF, "n_ctx": N, "backend": B, '
        '"device": D, "safe_mode": POLICY}: its worker starts loading before the hive is up '
        "(keepers set RBEE_HIVE_PRELOAD instead)",
    )  # fmt: skip
    p.add_argument("--version", action="version", version=f"rbee-hive {__version__}")
    return p.parse_args(argv)


def _import_at_low_priority() -> None:
    """The web stack's imports (~1 s of one core) in a thread at nice 19 (Linux: a
    thread's own priority), waited for; this thread keeps its priority."""
    import contextlib
    import threading

    def run() -> None:
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        with contextlib.suppress(BaseException):  # imported again below, where errors show
            import rbee_fabric.hive.app
            import rbee_fabric.httpserver  # noqa: F401

    t = threading.Thread(target=run, name="imports", daemon=True)
    t.start()
    t.join()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.umask(0o077)  # logs, catalog and models are private to this user
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from rbee_fabric.errors import RbeeError

    data = paths.ensure_dir(paths.data_dir())
    try:
        api_key = paths.ensure_api_key()
    except RbeeError as exc:
        print(f"rbee-hive: {exc}; {exc.hint}", file=sys.stderr)
        return 2
    from rbee_fabric.hive import speculate

    # Keepers pass the hint in the environment: a hive of another version ignores it.
    preload = os.environ.pop(PRELOAD_ENV, None) or args.preload
    # Before the imports below: the model loads while they run.
    record_fd = os.environ.pop(PRELOAD_FD_ENV, None)  # not for the workers' environment
    listen = speculate.Listen(args.host, args.port, args.worker_ports, str(paths.api_key_file()))
    early = speculate.begin(preload, data, api_key, listen) if preload else None
    if speculate.tell_keeper(record_fd, early):
        # The keeper streams from that worker without waiting for this hive: the
        # load and the worker's own imports get the cores first.
        _import_at_low_priority()

    from rbee_fabric.hive.app import HiveSettings, create_app
    from rbee_fabric.hive.forker import Template
    from rbee_fabric.httpserver import bind_socket, serve

    speculation = early
    # The worker template: a fork of this process now (its imports done, no thread
    # started, no socket bound); it imports llama_cpp while this one goes on.
    keep_out = speculation.pipe_fd if speculation is not None else None
    template = Template.start(close=(keep_out,) if keep_out is not None else (),
                              lazy=speculation is not None)  # fmt: skip
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as exc:
        print(f"rbee-hive: cannot bind {args.host}:{args.port}: {exc}", file=sys.stderr)
        if speculation is not None:
            speculation.cancel("the hive cannot start")
        return 3
    settings = HiveSettings(
        host=args.host,
        port=sock.getsockname()[1],
        data_dir=data,
        api_key=api_key,
        key_file=str(paths.api_key_file()),
        idle_timeout_s=args.idle_timeout,
        worker_ports=args.worker_ports,
        template=template,
        speculation=speculation,
    )
    from rbee_fabric import pidfile  # psutil: after the speculative worker started

    pidfile.write_hive(settings.port)
    try:
        serve(create_app(settings), sock)
    finally:
        pidfile.remove_hive(settings.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
