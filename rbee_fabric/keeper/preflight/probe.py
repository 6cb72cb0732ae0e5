"""The probe `rbee nodes check` runs on a node: raw facts, no verdicts.

Standard library only, and it never imports rbee_fabric: the keeper reads
this file's source and feeds it to the node's Python on stdin
(`python - REQUEST`), so a node is checked with the keeper's code, not with
the installation being checked. It only collects; the keeper parses its one
JSON line (`parsers.parse_probe_output`) and judges with its own rules.

REQUEST is a JSON object: `host`, `hive_port`, `worker_ports` [lo, hi],
`data` (the rbee data directory), and optionally `model` (a GGUF path),
`ctx`, `gguf_reader` (the keeper's own ggufmeta.py source, to read the
model's header) and `alias` (the module of a demo model to size).

Kept to syntax Python 3.7 reads, so an old interpreter still answers.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import sys
import types
from typing import Any

MAX_TEXT = 64 * 1024  # bytes read from any small file (safe_mode.json, __init__.py)


def port_free(host: str, port: int) -> bool:
    """True when host:port can be bound, with the options the daemons bind with."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def ports(host: str, hive_port: int, lo: int, hi: int) -> dict[str, Any]:
    free = next((p for p in range(lo, hi + 1) if port_free(host, p)), None)
    return {"hive_free": port_free(host, hive_port), "worker_free": free}


def read_text(path: str) -> str | None:
    try:
        with open(os.path.expanduser(path), encoding="utf-8", errors="replace") as fh:
            return fh.read(MAX_TEXT)
    except OSError:
        return None


def package_dir(name: str) -> str | None:
    """Where a top-level package would be imported from (found, not imported)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    return os.path.dirname(spec.origin)


def rbee() -> dict[str, Any]:
    """The installed rbee-fabric's `__init__.py` text (the keeper reads its version)."""
    where = package_dir("rbee_fabric")
    if where is None:
        return {"found": False}
    return {"found": True, "init": read_text(os.path.join(where, "__init__.py"))}


def llama() -> dict[str, Any]:
    """llama-cpp-python's version and library files (name, size, regular file)."""
    where = package_dir("llama_cpp")
    if where is None:
        return {"found": False}
    version = None
    try:
        import importlib.metadata as md

        version = md.version("llama_cpp_python")
    except Exception:  # no metadata: the keeper reports it as missing
        pass
    libs = []
    lib = os.path.join(where, "lib")
    try:
        for name in sorted(os.listdir(lib)):
            path = os.path.join(lib, name)
            regular = os.path.isfile(path) and not os.path.islink(path)
            libs.append([name, os.path.getsize(path) if regular else 0, regular])
    except OSError:
        pass
    return {"found": True, "version": version, "libs": libs}


def model(path: str, ctx: int, reader_source: str) -> dict[str, Any]:
    """Size and KV cache of a GGUF file, read with the keeper's own header reader."""
    try:
        size = os.path.getsize(path)
        reader = types.ModuleType("rbee_probe_gguf")
        sys.modules[reader.__name__] = reader  # dataclasses look their module up
        exec(compile(reader_source, "ggufmeta.py", "exec"), reader.__dict__)
        info = reader.read_info(path)
        return {"size": size, "kv": int(info.kv_cache_bytes(ctx))}
    except Exception as exc:  # any failure is the fact to report
        return {"error": str(exc) or type(exc).__name__}


def alias(module: str) -> dict[str, Any]:
    """Total size of a demo model package's chunks (the package's own chunk_paths())."""
    try:
        mod = importlib.import_module(module)
        return {"size": sum(os.path.getsize(str(p)) for p in mod.chunk_paths())}
    except Exception as exc:
        return {"error": str(exc) or type(exc).__name__}


def collect(req: dict[str, Any]) -> dict[str, Any]:
    lo, hi = req["worker_ports"]
    out: dict[str, Any] = {
        "python": list(sys.version_info[:3]),
        "ports": ports(req["host"], int(req["hive_port"]), int(lo), int(hi)),
        "rbee": rbee(),
        "llama": llama(),
        "safe_mode": read_text(os.path.join(req["data"], "safe_mode.json")),
    }
    if req.get("model"):
        out["model"] = model(req["model"], int(req.get("ctx") or 2048), req.get("gguf_reader") or "")
    if req.get("alias"):
        out["alias"] = alias(req["alias"])
    return out


def main(argv: list[str]) -> int:
    if sys.path and sys.path[0] == "":  # `python -` puts the working directory first
        del sys.path[0]
    req = json.loads(argv[1])
    sys.stdout.write(json.dumps(collect(req)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
