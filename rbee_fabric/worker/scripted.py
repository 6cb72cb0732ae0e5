"""The scripted engine: orchestration tests without a model."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from rbee_fabric.worker.engine import Generation, ProgressFn

if TYPE_CHECKING:
    from rbee_fabric.schemas import InferenceRequest

log = logging.getLogger("rbee.worker")


class ScriptedEngine:
    """A deterministic engine for orchestration tests: no model, scripted tokens.

    Selected with RBEE_WORKER_ENGINE=scripted; RBEE_SCRIPTED_DELAY_MS sets the
    pause before each token and RBEE_SCRIPTED_LOAD_S the loading time.
    RBEE_SCRIPTED_CRASH makes the warm-up kill its own process with SIGSEGV,
    as llama.cpp's AMX kernels do on some CPUs: `warmup` unless in safe mode,
    `always` in safe mode too.
    """

    def __init__(self, model_path: str, *, safe_mode: bool = False) -> None:
        self.model_path = model_path
        self.safe_mode = safe_mode
        self.delay = float(os.environ.get("RBEE_SCRIPTED_DELAY_MS", "20")) / 1000
        self.load_s = float(os.environ.get("RBEE_SCRIPTED_LOAD_S", "0.1"))
        self.crash = os.environ.get("RBEE_SCRIPTED_CRASH", "")

    def prepare(self) -> None:
        pass

    def load(self, progress: ProgressFn) -> None:
        if not os.path.isfile(self.model_path):
            raise ValueError(f"Model path does not exist: {self.model_path}")
        steps = 10
        for i in range(steps + 1):
            if not progress(i / steps):
                raise RuntimeError("loading aborted")
            time.sleep(self.load_s / steps)

    def warm_up(self) -> bool:
        if self.crash == "always" or (self.crash == "warmup" and not self.safe_mode):
            log.error("scripted engine: crashing in warm-up (safe mode %s)", self.safe_mode)
            # To this thread, as a real fault in a kernel would be.
            signal.pthread_kill(threading.get_ident(), signal.SIGSEGV)
            time.sleep(10)  # the signal is delivered before this returns
        return True

    def generate(
        self, req: InferenceRequest, cancel: threading.Event, result: Generation
    ) -> Iterator[str]:
        result.stop_reason = "length"
        if req.messages is not None:
            result.rendered_as = req.chat_format or "scripted-chat"
            words = sum(len(m.content.split()) + 2 for m in req.messages)
        else:
            result.rendered_as = "raw"
            words = len((req.prompt or "").split())
        result.prompt_tokens = words
        for i in range(req.max_tokens or 20):
            if cancel.wait(self.delay):
                result.stop_reason = "canceled"
                return
            result.tokens += 1
            yield f" tok{i}"

    def count_tokens(self, text: str) -> int:
        return len(text.encode()) + 1  # as a byte-level vocabulary with BOS would

    def close(self) -> None:
        pass
