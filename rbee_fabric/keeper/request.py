"""What one `rbee infer` request is: its options, its summary, who is told what."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from rbee_fabric.keeper import defaults
from rbee_fabric.keeper.registry import Registry, WorkerRecord
from rbee_fabric.keeper.transport import Transport
from rbee_fabric.schemas import (
    ChatMessage,
    DownloadProgress,
    InferenceRequest,
    LoadingProgress,
)
from rbee_fabric.summary import Summary

__all__ = ["Summary"]  # defined in summary.py, stdlib only (the lean path prints it too)

RAW_MAX_TOKENS = defaults.RAW_MAX_TOKENS


@dataclass
class InferOptions:
    model: str
    prompt: str = ""
    # None: a chat answer runs to the end of its turn, a raw one to RAW_MAX_TOKENS.
    max_tokens: int | None = None
    system: str | None = None
    raw: bool = False  # plain completion even when the model has a chat template
    chat_format: str | None = None  # render chat with this format (implies chat)
    # Set by the flow: the conversation sent to the worker (None: raw completion).
    messages: list[ChatMessage] | None = None
    temperature: float = defaults.TEMPERATURE
    top_p: float = defaults.TOP_P
    seed: int | None = None
    backend: str = "auto"
    device: int = 0
    timeout: float = defaults.LOAD_TIMEOUT_S
    n_ctx: int = defaults.N_CTX
    start_hive: bool = True
    retry: int = defaults.RETRY
    queue_timeout: float = defaults.QUEUE_TIMEOUT_S


class Reporter(Protocol):
    """What the flow tells the user; the CLI draws it, tests record it."""

    def info(self, msg: str) -> None: ...

    def attempt(self, n: int, total: int, address: str, error: str) -> None: ...

    def download(self, p: DownloadProgress) -> None: ...

    def loading(self, p: LoadingProgress) -> None: ...

    def token(self, text: str) -> None: ...


@dataclass
class Run:
    t: Transport
    opts: InferOptions
    out: Reporter
    registry: Registry
    ref: str
    started: float = field(default_factory=time.monotonic)


@dataclass
class Acquired:
    """A ready worker for the flow's model, and whether the model has a chat template."""

    run: Run
    rec: WorkerRecord
    reused: bool
    chat_template: bool



def use_chat(opts: InferOptions, chat_template: bool) -> bool:
    """Chat when a format is named, else when the model has a template and --raw is off."""
    if opts.chat_format:
        return True
    return chat_template and not opts.raw


def build_request(o: InferOptions, request_id: str) -> InferenceRequest:
    """The worker request: the conversation when there is one, else the raw prompt."""
    common: dict[str, Any] = {
        "temperature": o.temperature, "top_p": o.top_p, "seed": o.seed, "request_id": request_id,
    }  # fmt: skip
    if o.messages is not None:
        return InferenceRequest.model_validate(
            {"messages": o.messages, "chat_format": o.chat_format, "max_tokens": o.max_tokens}
            | common
        )
    return InferenceRequest.model_validate(
        {"prompt": o.prompt, "max_tokens": o.max_tokens or RAW_MAX_TOKENS} | common
    )
