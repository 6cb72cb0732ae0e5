"""Safe mode: llama.cpp without its extra buffer types (no AMX, no weight repacking).

On some CPUs llama.cpp's AMX kernels crash the process (SIGSEGV in
`ggml_backend_amx_mul_mat`, llama.cpp issue 20824; Sapphire Rapids cloud VMs).
A worker proves its engine with a warm-up before it reports ready, so such a
crash happens while loading. When a worker dies there from an engine signal,
the hive starts it once more in safe mode; when that worker becomes ready, the
node remembers it in `safe_mode.json` of the hive's data dir, keyed by the
llama.cpp build, and later workers start in safe mode directly.

`rbee nodes check` reads the record from the facts its probe collects on the
node (`make_build_key`, `parse_records`), without importing rbee there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Literal

from rbee_fabric.llamabuild import llama_build_backend

Policy = Literal["auto", "on", "off"]
RECORD_FILE = "safe_mode.json"
ENGINE_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGILL, signal.SIGBUS})
LOADING_STATES = frozenset({"starting", "loading"})
COST = "AMX and weight repacking are off; prompt processing and decode may be slower"


def signal_name(returncode: int | None) -> str | None:
    """`SIGSEGV` for an exit code of -11; None when the process exited normally."""
    if returncode is None or returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def engine_crash(returncode: int | None) -> str | None:
    """The signal name when an exit code means the engine itself crashed.

    SIGKILL and SIGTERM come from outside (a user, the OOM killer, the hive
    stopping it): those are never taken for an engine crash.
    """
    if returncode is None or returncode >= 0:
        return None
    with contextlib.suppress(ValueError):
        if signal.Signals(-returncode) in ENGINE_SIGNALS:
            return signal.Signals(-returncode).name
    return None


def should_retry(policy: str, *, safe_mode: bool, state: str, stopping: bool, returncode: int | None) -> str | None:
    """The crash signal when a worker that just exited deserves one safe-mode restart."""
    if policy != "auto" or safe_mode or stopping or state not in LOADING_STATES:
        return None
    return engine_crash(returncode)


def crash_reason(sig: str) -> str:
    """Why a node runs in safe mode, as the keeper and `rbee nodes check` show it."""
    return f"the engine crashed with {sig} on this CPU while loading"


def build_key() -> str:
    """Names this node's llama.cpp build: package version, backend, library fingerprint.

    A rebuild (other flags, other llama.cpp) gets a new key, so a record made
    for one build never forces safe mode on another.
    """
    import importlib.metadata
    import importlib.util

    try:
        version = importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        version = "missing"
    files: list[tuple[str, int]] = []
    spec = importlib.util.find_spec("llama_cpp")
    if spec is not None and spec.origin:
        lib = Path(spec.origin).parent / "lib"
        with contextlib.suppress(OSError):
            files = [(f.name, f.stat().st_size) for f in lib.iterdir() if f.is_file() and not f.is_symlink()]
    return make_build_key(version, llama_build_backend(), files)


def make_build_key(version: str, backend: str, files: list[tuple[str, int]]) -> str:
    """The build key from its parts: the version, the backend, (name, size) of each library file.

    Pure, so `rbee nodes check` computes a node's key from the facts its probe lists.
    """
    digest = hashlib.sha256()
    for name, size in sorted(files):
        digest.update(f"{name}:{size};".encode())
    return f"llama-cpp-python {version} {backend} {digest.hexdigest()[:12]}"


def parse_records(text: str) -> dict[str, dict[str, object]]:
    """The records of a `safe_mode.json` text, by build key (empty when unreadable)."""
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    builds = data.get("builds") if isinstance(data, dict) else None
    return builds if isinstance(builds, dict) else {}


class SafeModeStore:
    """The node's safe-mode records: `{"builds": {build_key: record}}`."""

    def __init__(self, data_dir: Path, build: str | None = None) -> None:
        self.path = Path(data_dir) / RECORD_FILE
        self._build = build

    @property
    def build(self) -> str:
        if self._build is None:
            self._build = build_key()
        return self._build

    def _read(self) -> dict[str, dict[str, object]]:
        try:
            return parse_records(self.path.read_text(encoding="utf-8"))
        except OSError:
            return {}

    def get(self) -> dict[str, object] | None:
        """The record for this node's current build, if any."""
        records = self._read()
        if not records:  # the usual case: no build key to compute (~50 ms of metadata)
            return None
        rec = records.get(self.build)
        return rec if isinstance(rec, dict) else None

    def record(self, sig: str, model: str) -> dict[str, object]:
        """Remember that this build needs safe mode here (atomic replace)."""
        builds = self._read()
        rec: dict[str, object] = {
            "signal": sig, "reason": crash_reason(sig), "model": model, "recorded_at": time.time(),
        }  # fmt: skip
        builds[self.build] = rec
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": 1, "builds": builds}, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)
        return rec

    def initial(self, policy: str) -> tuple[bool, str | None]:
        """Whether a new worker starts in safe mode, and why."""
        if policy == "on":
            return True, 'safe_mode = "on" for this node in the inventory'
        if policy == "off":
            return False, None
        rec = self.get()
        return (True, str(rec.get("reason") or "recorded for this build")) if rec else (False, None)


def recorded(data_dir: str) -> dict[str, object] | None:
    """The node's record for its current build (for `rbee nodes check`)."""
    return SafeModeStore(Path(os.path.expanduser(data_dir))).get()
