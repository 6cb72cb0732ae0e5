"""Token engines: llama-cpp-python for real, a scripted one for orchestration tests.

This is the only module that imports llama_cpp, and it does so lazily.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from rbee_fabric.errors import ContextTooLong
from rbee_fabric.worker import vocabcache
from rbee_fabric.worker.chat import ChatTemplates, TokenInfo
from rbee_fabric.worker.textfilter import (
    ATTR_CONTROL,
    ATTR_USER_DEFINED,
    SpecialTokenFilter,
    SpecialTokens,
    is_special,
)

if TYPE_CHECKING:  # pydantic costs ~0.3 s: a worker starts loading before it
    from rbee_fabric.schemas import InferenceRequest

log = logging.getLogger("rbee.worker")

ProgressFn = Callable[[float], bool]
"""Called with 0.0..1.0 while loading; returning False aborts the load."""

log = logging.getLogger("rbee.worker")
WARMUP_TOKENS = 8


@dataclass
class Generation:
    """What a finished generation reports besides its tokens."""

    stop_reason: str = "stop"
    tokens: int = 0
    prompt_tokens: int = 0
    rendered_as: str | None = None


class Engine(Protocol):
    def prepare(self) -> None:
        """Import the engine's library (before load, in the thread that starts the worker)."""

    def load(self, progress: ProgressFn) -> None: ...

    def warm_up(self) -> bool:
        """Run the engine once before the worker reports ready where its kernels may
        crash (a crash then shows here); False when there was nothing to prove."""

    def generate(
        self, req: InferenceRequest, cancel: threading.Event, result: Generation
    ) -> Iterator[str]: ...

    def count_tokens(self, text: str) -> int:
        """Tokens of text with the model's vocabulary (BOS included); safe beside generate."""
        ...

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
        self.chat = ChatTemplates({}, TokenInfo())
        self._specials = SpecialTokens(())
        self._scan: threading.Thread | None = None
        self._scan_error: BaseException | None = None

    def prepare(self) -> None:
        import llama_cpp  # noqa: F401  (~0.35 s: numpy, ctypes, the library itself)

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
        self._learn_vocab()

    def _learn_vocab(self) -> None:
        """The chat template and end-of-turn token now; the special token strings in a
        thread (a scan of the whole vocabulary, ~0.35 s for Gemma 3's 262144 tokens)
        that runs beside the warm-up, on the core llama.cpp leaves free."""
        import llama_cpp

        llm = self._llm
        vocab = llm._model.vocab
        text_of = llm._model.token_get_text

        def text(i: int) -> str:
            return str(text_of(i)) if i >= 0 else ""

        bos, eos = llm.token_bos(), llm.token_eos()
        eot = int(llama_cpp.llama_vocab_eot(vocab))
        self.chat = ChatTemplates(
            dict(llm.metadata),
            TokenInfo(bos=text(bos), eos=text(eos), eos_id=eos, eot_id=eot, text_of=text),
        )

        def scan_vocab() -> None:
            try:
                n = int(llama_cpp.llama_vocab_n_tokens(vocab))
                attr_of = llama_cpp.llama_vocab_get_attr
                marked = ATTR_CONTROL | ATTR_USER_DEFINED  # is_special is False without either
                # The attribute first, the text only of marked entries: fetching every
                # text cost ~0.5 s more.
                self._specials = SpecialTokens(
                    t for i in range(n)
                    if (a := int(attr_of(vocab, i))) & marked and is_special(t := text(i), a)
                )  # fmt: skip
                vocabcache.save(self.model_path, version, sorted(self._specials.strings))
                log.info(
                    "chat: %s; %d special tokens kept out of the text",
                    self.chat.default_name() or "no template, no known format",
                    len(self._specials.strings),
                )
            except BaseException as exc:  # raised where the specials are needed
                self._scan_error = exc

        version = str(getattr(llama_cpp, "__version__", "?"))
        if (kept := vocabcache.load(self.model_path, version)) is not None:
            self._specials = SpecialTokens(kept)
            log.info(
                "chat: %s; %d special tokens kept out of the text (as read before)",
                self.chat.default_name() or "no template, no known format", len(kept),
            )  # fmt: skip
        else:
            self._scan = threading.Thread(target=scan_vocab, name="vocab-scan", daemon=True)
            self._scan.start()

    def _wait_scan(self) -> None:
        if (scan := self._scan) is not None:
            scan.join()
        if self._scan_error is not None:
            raise RuntimeError(f"reading the vocabulary failed: {self._scan_error}")

    @property
    def specials(self) -> frozenset[str]:
        """The special token strings of the model (never in generated text)."""
        self._wait_scan()
        return self._specials.strings

    def warm_up(self) -> bool:
        """Evaluate a short batch, then one token, then forget them, as llama.cpp's tools do.

        Both shapes, because llama.cpp picks its kernels by batch size: its AMX
        matmul uses the AMX tiles for more than one row and AVX512-VNNI for a
        single one, so a one-token warm-up would not reach the tiles that crash.
        Skipped where no known crash can happen (needs_warm_up): on a cold start
        it cost 0.2-0.5 s before the first token.
        """
        if not needs_warm_up(self.backend, self.safe_mode):
            return False
        llm = self._llm
        bos = llm.token_bos()
        first = bos if bos >= 0 else llm.token_eos()
        eos = llm.token_eos()
        batch = [first] + [eos if eos >= 0 else first] * (WARMUP_TOKENS - 1)
        llm.eval(batch)
        llm.eval([batch[-1]])
        llm.reset()
        llm._ctx.kv_cache_clear()
        return True

    def generate(
        self, req: InferenceRequest, cancel: threading.Event, result: Generation
    ) -> Iterator[str]:
        llm = self._llm
        stop = list(req.stop)
        if req.messages is not None:
            rendered = self.chat.render(req.messages, req.chat_format)
            tokens = llm.tokenize(
                rendered.prompt.encode("utf-8"), add_bos=rendered.add_bos, special=True
            )
            stop += [s for s in rendered.stop if s not in stop]
            result.rendered_as = rendered.rendered_as
        else:
            assert req.prompt is not None
            tokens = llm.tokenize(req.prompt.encode("utf-8"), add_bos=True, special=True)
            result.rendered_as = "raw"
        result.prompt_tokens = len(tokens)
        n_ctx = llm.n_ctx()
        # A chat turn needs room to answer; a raw prompt needs one token at least.
        room = 1 if req.messages is None else min(req.max_tokens or n_ctx // 4, n_ctx // 4)
        if len(tokens) + room > n_ctx:
            raise ContextTooLong(
                f"the prompt is {len(tokens)} tokens and the context holds {n_ctx}"
                + ("" if req.messages is None else f" (with {room} left for the answer)"),
                details={"prompt_tokens": len(tokens), "n_ctx": n_ctx},
            )
        kwargs: dict[str, Any] = {
            # None: until the end of the turn, bounded by the context.
            "max_tokens": req.max_tokens if req.max_tokens is not None else -1,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "stream": True,
            "stop": stop,
        }
        if req.seed is not None:
            kwargs["seed"] = req.seed
        if (grammar := _grammar(req)) is not None:
            kwargs["grammar"] = grammar
        llm.generate = _TokenCounter(llm, req.max_tokens, result).generate  # until the end
        self._wait_scan()
        clean = SpecialTokenFilter(self._specials)
        try:
            stream = llm.create_completion(tokens, **kwargs)
        except BaseException:
            del llm.generate
            raise
        try:
            for chunk in stream:
                if cancel.is_set():
                    result.stop_reason = "canceled"
                    return
                choice = chunk["choices"][0]
                if (finish := choice.get("finish_reason")) is not None:
                    result.stop_reason = "length" if finish == "length" else "stop"
                if text := clean.feed(choice.get("text", "")):
                    yield text
            if tail := clean.flush():
                yield tail
        finally:
            stream.close()
            del llm.generate  # back to the class's method

    def count_tokens(self, text: str) -> int:
        return len(self._llm.tokenize(text.encode(), add_bos=True, special=True))

    def close(self) -> None:
        if (scan := self._scan) is not None:
            scan.join()  # it reads the vocabulary that close frees
        if self._llm is not None:
            self._llm.close()
            self._llm = None


class _TokenCounter:
    """Counts the tokens a completion generates and enforces max_tokens itself.

    llama-cpp-python's streaming completion is no measure of either: a stream
    chunk can carry several tokens (a multi-byte character) or none, and when
    the last allowed token starts a multi-byte UTF-8 character its loop skips
    the max_tokens check until the character is complete, so up to three more
    tokens come (a worker once reported 23 tokens for max_tokens 20). Every
    token the model samples passes through `Llama.generate`; this wrapper
    counts them (end-of-generation tokens aside, as the completion drops them)
    and ends the generation after the limit, which the completion reports as
    finish_reason "length".
    """

    def __init__(self, llm: Any, max_tokens: int | None, result: Generation) -> None:
        import llama_cpp

        self._generate = llm.generate
        vocab = llm._model.vocab
        self._is_eog: Callable[[int], bool] = lambda t: bool(llama_cpp.llama_vocab_is_eog(vocab, t))
        self.max_tokens = max_tokens
        self.result = result

    def generate(self, *args: Any, **kwargs: Any) -> Iterator[int]:
        tokens = self._generate(*args, **kwargs)
        try:
            for token in tokens:
                if self._is_eog(token):
                    yield token  # the completion stops here and does not count it
                    return
                if self.max_tokens is not None and self.result.tokens >= self.max_tokens:
                    return
                self.result.tokens += 1
                yield token
        finally:
            tokens.close()


def _grammar(req: InferenceRequest) -> Any:
    """A grammar for `response_format` json_object / json_schema (None for text)."""
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return None
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    if fmt.type == "json_schema" and fmt.json_schema:
        schema = fmt.json_schema.get("schema", fmt.json_schema)  # OpenAI nests it
        return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
    return LlamaGrammar.from_string(JSON_GBNF, verbose=False)


def needs_warm_up(backend: str, safe_mode: bool) -> bool:
    """Whether a warm-up can prove anything before the worker says ready.

    On a CPU, the kernels known to crash are llama.cpp's AMX ones (issue 10): a
    CPU without AMX, or safe mode (extra buffer types off), has nothing to prove.
    GPU backends, and a CPU whose features cannot be read, keep the warm-up.
    """
    if backend == "auto":
        from rbee_fabric.llamabuild import llama_build_backend

        backend = "cpu" if llama_build_backend() == "cpu" else backend
    if backend != "cpu":
        return True
    if safe_mode:
        return False
    from rbee_fabric import cpufeatures

    cpu = cpufeatures.detect()
    return cpu is None or cpu.amx


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


def make_engine(
    model_path: str, *, backend: str, device: int, n_ctx: int, safe_mode: bool = False
) -> Engine:
    if os.environ.get("RBEE_WORKER_ENGINE") == "scripted":
        from rbee_fabric.worker.scripted import ScriptedEngine

        return ScriptedEngine(model_path, safe_mode=safe_mode)
    return LlamaEngine(
        model_path, backend=backend, device=device, n_ctx=n_ctx, safe_mode=safe_mode
    )
