"""What `rbee serve` runs: the key, the socket, the log lines, then uvicorn.

The key comes from $RBEE_SERVE_API_KEY, else from `serve_api_key` in the
configuration directory (created 0600 on first start). Its path is printed,
the key itself never. A non-loopback address is bound only when the key is
in place and private (a key file others can read is refused).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rbee_fabric import paths
from rbee_fabric.errors import UsageError

ENV_KEY = "RBEE_SERVE_API_KEY"
DEFAULT_PORT = 9000
GRACEFUL_S = 10.0  # on SIGINT/SIGTERM, running generations get this long (--grace)
MIN_KEY_LEN = 16

log = logging.getLogger("rbee.serve")


def key_file() -> Path:
    return paths.config_dir() / "serve_api_key"


@dataclass
class Key:
    value: str
    source: str  # what to tell a client that sent the wrong one
    created: bool = False


def load_key() -> Key:
    """The gateway's key: the environment, else the key file (created on first start)."""
    if env := os.environ.get(ENV_KEY, "").strip():
        return Key(env, f"${ENV_KEY} of the gateway's environment")
    path = key_file()
    existed = path.exists()
    value = paths.ensure_api_key(path)
    return Key(value, str(path), created=not existed)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, key: Key) -> str:
    """Who can reach host:port; refuses a non-loopback bind without a private key."""
    if is_loopback(host):
        return "this machine only (loopback)"
    if len(key.value) < MIN_KEY_LEN:
        raise UsageError(
            f"refusing to listen on {host} with an API key shorter than {MIN_KEY_LEN} characters",
            hint=f"set a longer {ENV_KEY}, or unset it to use the generated key file",
        )
    if not key.source.startswith("$"):
        mode = stat.S_IMODE(key_file().stat().st_mode)
        if mode & 0o077:
            raise UsageError(
                f"refusing to listen on {host}: the key file {key_file()} is readable by others "
                f"(mode {mode:o})",
                hint=f"chmod 600 {key_file()}",
            )
    who = "every machine that can reach this one" if host in ("0.0.0.0", "::") else f"machines that can reach {host}"
    return f"{who}, with the API key"


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        out.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(json_logs: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_logs:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s rbee serve: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("rbee")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def run(
    host: str, port: int, *, json_logs: bool = False, inventory_file: str | None = None,
    n_ctx: int = 2048, grace_s: float = GRACEFUL_S,
) -> None:  # fmt: skip
    """Serve until SIGINT or SIGTERM; raises UsageError before binding anything wrong."""
    from rbee_fabric.gateway.app import GatewaySettings, create_app
    from rbee_fabric.httpserver import bind_socket, serve

    setup_logging(json_logs)
    key = load_key()
    reach = check_exposure(host, key)
    try:
        sock = bind_socket(host, port)
    except OSError as exc:
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            hint="choose another --port, or stop what uses this one",
        ) from None
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    if key.created:
        log.info("created the gateway's API key in %s (mode 600)", key.source)
    log.info(
        "listening on http://%s:%d/v1 (OpenAI API); reachable from %s; API key: %s",
        shown, bound, reach, key.source,
        extra={"fields": {"event": "listening", "host": host, "port": bound, "key_source": key.source}},
    )  # fmt: skip
    settings = GatewaySettings(
        api_key=key.value, key_source=key.source, inventory_file=inventory_file, n_ctx=n_ctx
    )
    serve(create_app(settings), sock, graceful_s=grace_s)
