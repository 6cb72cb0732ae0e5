"""Which chat template renders a conversation, and how.

Order: the request's `chat_format`; else the model's own Jinja2 template from
its GGUF metadata (`tokenizer.chat_template`); else the known format of its
architecture (never llama-cpp-python's `llama-2` guess for a Gemma model);
else an error that names `--chat-format`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rbee_fabric.errors import NoChatTemplate

if TYPE_CHECKING:  # pydantic costs ~0.3 s: a worker starts loading before it
    from rbee_fabric.schemas import ChatMessage

log = logging.getLogger("rbee.worker")

# Names accepted by --chat-format -> llama-cpp-python formatter functions.
KNOWN_FORMATS: dict[str, str] = {
    "gemma": "format_gemma",
    "llama-2": "format_llama2",
    "llama-3": "format_llama3",
    "chatml": "format_chatml",
    "mistral-instruct": "format_mistral_instruct",
    "qwen": "format_qwen",
    "zephyr": "format_zephyr",
    "alpaca": "format_alpaca",
    "phind": "format_phind",
    "openchat": "format_openchat",
}

# GGUF general.architecture -> format, used only when the file has no template.
ARCH_FORMATS: dict[str, str] = {
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "gemma3n": "gemma",
    "qwen2": "chatml",
    "qwen2moe": "chatml",
    "qwen3": "chatml",
    "qwen3moe": "chatml",
}

TEMPLATE = "chat_template"  # rendered_as for the model's own GGUF template


@dataclass
class Rendered:
    prompt: str
    stop: list[str]
    stop_token_ids: set[int]
    add_bos: bool
    rendered_as: str


@dataclass
class TokenInfo:
    """What rendering needs from the model's vocabulary."""

    bos: str = ""
    eos: str = ""
    eos_id: int = -1
    eot_id: int = -1
    text_of: Callable[[int], str] = field(default=lambda _i: "")


class ChatTemplates:
    """The chat renderer of one model, chosen from its metadata."""

    def __init__(self, metadata: dict[str, str], tokens: TokenInfo) -> None:
        self.template = metadata.get("tokenizer.chat_template") or None
        self.architecture = metadata.get("general.architecture")
        self.tokens = tokens
        self._warned = False
        self._formatter: Any = None  # the compiled GGUF template (stop ids are the model's)

    def default_name(self) -> str | None:
        """What a request without `chat_format` is rendered with (None: cannot chat)."""
        if self.template:
            return TEMPLATE
        return ARCH_FORMATS.get(self.architecture or "")

    def render(self, messages: list[ChatMessage], chat_format: str | None) -> Rendered:
        msgs: list[dict[str, Any]] = [m.model_dump() for m in messages]
        stop_ids = {i for i in (self.tokens.eos_id, self.tokens.eot_id) if i >= 0}
        if chat_format is not None and chat_format != TEMPLATE:
            return self._named(chat_format, msgs, stop_ids, chat_format)
        if chat_format == TEMPLATE or self.template:
            if not self.template:
                raise NoChatTemplate(
                    "this model has no chat template in its GGUF metadata",
                    hint=f"name a format with --chat-format ({', '.join(KNOWN_FORMATS)})",
                )
            return self._jinja(msgs, stop_ids)
        name = ARCH_FORMATS.get(self.architecture or "")
        if name is None:
            raise NoChatTemplate(
                f"this model has no chat template in its GGUF metadata and rbee knows no "
                f"chat format for its architecture ({self.architecture or 'unknown'})",
                hint=f"name one with --chat-format ({', '.join(KNOWN_FORMATS)}), "
                "or use --raw for plain completion",
                details={"architecture": self.architecture},
            )
        if not self._warned:
            log.warning(
                "the model has no chat template; using the %r format known for architecture %s",
                name, self.architecture,
            )  # fmt: skip
            self._warned = True
        return self._named(name, msgs, stop_ids, f"{name} (no template; {self.architecture} default)")

    def _jinja(self, msgs: list[dict[str, Any]], stop_ids: set[int]) -> Rendered:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        assert self.template is not None
        t = self.tokens
        if self._formatter is None:  # compiling the template costs ms: once per model
            self._formatter = Jinja2ChatFormatter(
                template=self.template, eos_token=t.eos, bos_token=t.bos,
                stop_token_ids=sorted(stop_ids),
            )  # fmt: skip
        formatter = self._formatter
        try:
            res = formatter(messages=msgs)
        except Exception as exc:  # a template that fails on these messages
            raise NoChatTemplate(
                f"the model's chat template failed to render the conversation: {exc}",
                hint=f"name another format with --chat-format ({', '.join(KNOWN_FORMATS)})",
            ) from None
        stop = _as_list(res.stop)
        # The end-of-turn token as text too, for templates that spell it out.
        if t.eot_id >= 0 and (eot := t.text_of(t.eot_id)):
            stop.append(eot)
        return Rendered(res.prompt, stop, stop_ids, not res.added_special, TEMPLATE)

    def _named(
        self, name: str, msgs: list[dict[str, Any]], stop_ids: set[int], label: str
    ) -> Rendered:
        import llama_cpp.llama_chat_format as formats

        fn = KNOWN_FORMATS.get(name)
        if fn is None:
            raise NoChatTemplate(
                f"unknown chat format {name!r}",
                hint=f"use one of: {', '.join(KNOWN_FORMATS)}",
                details={"chat_format": name},
            )
        res = getattr(formats, fn)(messages=msgs)
        return Rendered(res.prompt, _as_list(res.stop), stop_ids, True, label)


def _as_list(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)
