"""The special token strings of a model file, kept on disk after the first scan.

Finding them takes a scan of the whole vocabulary through llama.cpp (262144
ctypes calls for Gemma 3, ~0.35 s quiet and over a second on a busy machine),
and a request's first token waits for it. The answer depends only on the file
and on the llama.cpp that reads it, so it is kept under the data directory,
keyed by the file's path, size and modification time and llama-cpp-python's
version; a file that changes gets a new key. A cache that cannot be read or
written only costs the scan.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from rbee_fabric import paths

VERSION = 1


def _file(model_path: str, llama_version: str) -> Path | None:
    try:
        st = os.stat(model_path)
    except OSError:
        return None
    key = f"{VERSION}|{os.path.realpath(model_path)}|{st.st_size}|{st.st_mtime_ns}|{llama_version}"
    name = hashlib.sha256(key.encode()).hexdigest()[:32] + ".json"
    return paths.data_dir() / "cache" / "specials" / name


def load(model_path: str, llama_version: str) -> list[str] | None:
    """The cached special strings of the file; None when there are none (yet)."""
    if (f := _file(model_path, llama_version)) is None:
        return None
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, list) or not all(isinstance(s, str) for s in data):
        return None
    return data


def save(model_path: str, llama_version: str, specials: list[str]) -> None:
    """Keep them (atomically: a reader never sees half a file)."""
    if (f := _file(model_path, llama_version)) is None:
        return
    with contextlib.suppress(OSError):
        paths.ensure_dir(f.parent)
        tmp = f.with_name(f"{f.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(specials), encoding="utf-8")
        os.replace(tmp, f)
