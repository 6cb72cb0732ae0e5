"""Load the model while the worker's web stack is still being imported.

A worker started as a new interpreter has two slow things to do before it is
ready: import FastAPI, uvicorn and pydantic (~1 s of one core) and load the
model (llama.cpp, in C: the GIL is free while it runs). EarlyLoad imports the
engine's library first (Python: beside the web imports it would share the GIL
with them), then starts the load (and the warm-up, which proves the engine) in
a thread before those imports, so both run side by side; the app's boot task then only follows it
to its end, with the same progress reports and errors as before.

A speculative worker (`--speculate`, started by a hive before its own imports
for the model a cold `rbee infer` asked for) is the same thing, waiting for
the hive to adopt it: see speculate_identity.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("rbee.worker")

Progress = Callable[[float], bool]

LOAD_SWITCH_INTERVAL_S = 0.0005


class EarlyLoad:
    """engine.load then engine.warm_up, in a thread started now."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._sink: Progress | None = None
        self._last = 0.0
        self._abort = False
        self._error: BaseException | None = None
        # The library's import is Python (~0.35 s): in the load thread it would share
        # the GIL with the web stack's imports and start the load late.
        try:
            engine.prepare()
        except Exception as exc:  # a library that cannot load: reported as a failed load
            self._error = exc
        # llama.cpp calls back into Python while it loads (progress, ~1400 log lines):
        # each call waits for the GIL, which the imports hold for a switch interval
        # (5 ms) at a time. A shorter one while loading: ~0.1 s sooner loaded.
        self._switch = sys.getswitchinterval()
        sys.setswitchinterval(LOAD_SWITCH_INTERVAL_S)
        self._thread = threading.Thread(target=self._run, name="early-load", daemon=True)
        self._thread.start()

    def _progress(self, value: float) -> bool:
        with self._lock:
            self._last = value
            sink = self._sink
        if sink is not None:
            return sink(value)
        return not self._abort

    def _run(self) -> None:
        try:
            if self._error is not None:
                return
            self.engine.load(self._progress)
            # Prove the engine before reporting ready: a crash of its kernels (AMX on
            # some CPUs) then happens while loading, where the hive can react.
            t0 = time.monotonic()
            if self.engine.warm_up():
                log.info("warm-up done in %.0f ms", (time.monotonic() - t0) * 1000)
            else:
                log.info("no warm-up: no llama.cpp kernel known to crash here (no AMX, or safe mode)")
        except BaseException as exc:  # raised by finish(), in the boot task
            self._error = exc
        finally:
            sys.setswitchinterval(self._switch)

    def finish(self, progress: Progress) -> None:
        """Report progress to `progress` from now on; return when loaded (blocking),
        raise what the load raised."""
        with self._lock:
            self._sink = progress
            last = self._last
        if self._thread.is_alive() and not progress(last):
            self._abort = True
        self._thread.join()
        if self._error is not None:
            raise self._error


IDENTITY_KEYS = ("host", "port", "hive_url", "key_file", "max_queue")


def speculate_identity(fd: int = 0) -> dict[str, Any] | None:
    """Wait for the hive to adopt this speculative worker: one JSON line on fd (stdin)
    with where to listen and whom to call back (IDENTITY_KEYS); None when the hive
    closes the pipe instead (it did not need this worker). fd is closed, and stdin
    is /dev/null, afterwards."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    if fd != 0:
        os.close(fd)
    try:
        identity = json.loads(data) if data.strip() else None
    except ValueError:
        return None
    if not isinstance(identity, dict) or not set(IDENTITY_KEYS) <= set(identity):
        return None
    return identity
