"""Token engines: llama-cpp-python for real, a scripted one for orchestration tests.

This is the only module that imports llama_cpp, and it does so lazily.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from rbee_fabric.schemas import InferenceRequest

ProgressFn = Callable[[float], bool]
"""Called with 0.0..1.0 while loading; returning False aborts the load."""


@dataclass
class Generation:
    """What a finished generation reports besides its tokens."""

    stop_reason: str = "stop"
    tokens: int = 0


class Engine(Protocol):
    def load(self, progress: ProgressFn) -> None: ...

    def generate(
        self, req: InferenceRequest, cancel: threading.Event, result: Generation
    ) -> Iterator[str]: ...

    def count_tokens(self, text: str) -> int:
        """Tokens of text with the model's vocabulary (BOS included); safe beside generate."""
        ...

    def close(self) -> None: ...


class LlamaEngine:
    """llama-cpp-python on one GGUF file."""

    def __init__(self, model_path: str, *, backend: str, device: int, n_ctx: int) -> None:
        self.model_path = model_path
        self.backend = backend
        self.device = device
        self.n_ctx = n_ctx
        self._llm: Any = None

    def load(self, progress: ProgressFn) -> None:
        import llama_cpp

        n_gpu_layers = 0 if self.backend == "cpu" else -1
        with _progress_callback(progress):
            self._llm = llama_cpp.Llama(
                model_path=self.model_path,
                n_ctx=self.n_ctx,
                n_gpu_layers=n_gpu_layers,
                main_gpu=self.device,
                verbose=False,
            )

    def generate(
        self, req: InferenceRequest, cancel: threading.Event, result: Generation
    ) -> Iterator[str]:
        kwargs: dict[str, Any] = {
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "stream": True,
        }
        if req.seed is not None:
            kwargs["seed"] = req.seed
        if req.prompt is None:
            raise ValueError("chat messages are not supported by this worker yet")
        stream = self._llm.create_completion(req.prompt, **kwargs)
        try:
            for chunk in stream:
                if cancel.is_set():
                    result.stop_reason = "canceled"
                    return
                choice = chunk["choices"][0]
                finish = choice.get("finish_reason")
                if finish is None:
                    result.tokens += 1  # the closing chunk carries no token
                else:
                    result.stop_reason = "length" if finish == "length" else "stop"
                if text := choice.get("text", ""):
                    yield text
        finally:
            stream.close()

    def count_tokens(self, text: str) -> int:
        return len(self._llm.tokenize(text.encode(), add_bos=True, special=True))

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None


@contextlib.contextmanager
def _progress_callback(progress: ProgressFn) -> Iterator[None]:
    """Give llama.cpp a model-loading progress callback.

    The high-level `Llama` class does not expose `progress_callback` of
    `llama_model_params`, so the default-params factory it calls is wrapped
    for the duration of this one load (a worker loads exactly one model).
    """
    import llama_cpp
    import llama_cpp.llama as high_level

    low: Any = high_level.llama_cpp  # type: ignore[attr-defined]
    original = low.llama_model_default_params

    @llama_cpp.llama_progress_callback  # type: ignore[untyped-decorator]
    def _cb(value: float, _user: Any) -> bool:
        return bool(progress(float(value)))

    def _params() -> Any:
        params = original()
        params.progress_callback = _cb
        return params

    low.llama_model_default_params = _params
    try:
        yield
    finally:
        low.llama_model_default_params = original


class ScriptedEngine:
    """A deterministic engine for orchestration tests: no model, scripted tokens.

    Selected with RBEE_WORKER_ENGINE=scripted; RBEE_SCRIPTED_DELAY_MS sets the
    pause before each token and RBEE_SCRIPTED_LOAD_S the loading time.
    """

    def __init__(self, model_path: str) -> None:
        self.model_path = model_path
        self.delay = float(os.environ.get("RBEE_SCRIPTED_DELAY_MS", "20")) / 1000
        self.load_s = float(os.environ.get("RBEE_SCRIPTED_LOAD_S", "0.1"))

    def load(self, progress: ProgressFn) -> None:
        if not os.path.isfile(self.model_path):
            raise ValueError(f"Model path does not exist: {self.model_path}")
        steps = 10
        for i in range(steps + 1):
            if not progress(i / steps):
                raise RuntimeError("loading aborted")
            time.sleep(self.load_s / steps)

    def generate(
        self, req: InferenceRequest, cancel: threading.Event, result: Generation
    ) -> Iterator[str]:
        result.stop_reason = "length"
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


def make_engine(model_path: str, *, backend: str, device: int, n_ctx: int) -> Engine:
    if os.environ.get("RBEE_WORKER_ENGINE") == "scripted":
        return ScriptedEngine(model_path)
    return LlamaEngine(model_path, backend=backend, device=device, n_ctx=n_ctx)
