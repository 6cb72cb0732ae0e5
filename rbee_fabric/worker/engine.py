"""Token engines: llama-cpp-python for real, a scripted one for orchestration tests.

This is the only module that imports llama_cpp, and it does so lazily.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from rbee_fabric.schemas import InferenceRequest

ProgressFn = Callable[[float], bool]
"""Called with 0.0..1.0 while loading; returning False aborts the load."""

log = logging.getLogger("rbee.worker")
WARMUP_TOKENS = 8


@dataclass
class Generation:
    """What a finished generation reports besides its tokens."""

    stop_reason: str = "stop"
    tokens: int = 0


class Engine(Protocol):
    def load(self, progress: ProgressFn) -> None: ...

    def warm_up(self) -> None:
        """Run the engine once before the worker reports ready (a crash shows here)."""

    def generate(
        self, req: InferenceRequest, cancel: threading.Event, result: Generation
    ) -> Iterator[str]: ...

    def close(self) -> None: ...


class LlamaEngine:
    """llama-cpp-python on one GGUF file."""

    def __init__(
        self, model_path: str, *, backend: str, device: int, n_ctx: int, safe_mode: bool = False
    ) -> None:
        self.model_path = model_path
        self.backend = backend
        self.device = device
        self.n_ctx = n_ctx
        self.safe_mode = safe_mode
        self._llm: Any = None

    def load(self, progress: ProgressFn) -> None:
        import llama_cpp

        n_gpu_layers = 0 if self.backend == "cpu" else -1
        with _progress_callback(progress, safe_mode=self.safe_mode):
            self._llm = llama_cpp.Llama(
                model_path=self.model_path,
                n_ctx=self.n_ctx,
                n_gpu_layers=n_gpu_layers,
                main_gpu=self.device,
                verbose=False,
            )

    def warm_up(self) -> None:
        """Evaluate a short batch, then one token, then forget them, as llama.cpp's tools do.

        Both shapes, because llama.cpp picks its kernels by batch size: its AMX
        matmul uses the AMX tiles for more than one row and AVX512-VNNI for a
        single one, so a one-token warm-up would not reach the tiles that crash.
        """
        llm = self._llm
        bos = llm.token_bos()
        first = bos if bos >= 0 else llm.token_eos()
        eos = llm.token_eos()
        batch = [first] + [eos if eos >= 0 else first] * (WARMUP_TOKENS - 1)
        llm.eval(batch)
        llm.eval([batch[-1]])
        llm.reset()
        llm._ctx.kv_cache_clear()

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

    def close(self) -> None:
        if self._llm is not None:
            self._llm.close()
            self._llm = None


@contextlib.contextmanager
def _progress_callback(progress: ProgressFn, *, safe_mode: bool = False) -> Iterator[None]:
    """Give llama.cpp a model-loading progress callback, and safe mode when asked.

    The high-level `Llama` class exposes neither `progress_callback` nor
    `use_extra_bufts` of `llama_model_params`, so the default-params factory it
    calls is wrapped for the duration of this one load (a worker loads exactly
    one model). Safe mode turns the extra buffer types off: no AMX, no weight
    repacking.
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
        if safe_mode:
            if hasattr(params, "use_extra_bufts"):
                params.use_extra_bufts = False
            else:
                log.warning(
                    "safe mode asked, but this llama-cpp-python (%s) has no use_extra_bufts: "
                    "extra buffer types (AMX, repacking) stay on",
                    getattr(llama_cpp, "__version__", "?"),
                )
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

    def load(self, progress: ProgressFn) -> None:
        if not os.path.isfile(self.model_path):
            raise ValueError(f"Model path does not exist: {self.model_path}")
        steps = 10
        for i in range(steps + 1):
            if not progress(i / steps):
                raise RuntimeError("loading aborted")
            time.sleep(self.load_s / steps)

    def warm_up(self) -> None:
        if self.crash == "always" or (self.crash == "warmup" and not self.safe_mode):
            log.error("scripted engine: crashing in warm-up (safe mode %s)", self.safe_mode)
            # To this thread, as a real fault in a kernel would be.
            signal.pthread_kill(threading.get_ident(), signal.SIGSEGV)
            time.sleep(10)  # the signal is delivered before this returns

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

    def close(self) -> None:
        pass


def make_engine(
    model_path: str, *, backend: str, device: int, n_ctx: int, safe_mode: bool = False
) -> Engine:
    if os.environ.get("RBEE_WORKER_ENGINE") == "scripted":
        return ScriptedEngine(model_path, safe_mode=safe_mode)
    return LlamaEngine(
        model_path, backend=backend, device=device, n_ctx=n_ctx, safe_mode=safe_mode
    )
