"""The worker's API: readiness, loading progress, inference and its SSE events."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from rbee_fabric.schemas.base import Message, WorkerState


class WorkerReady(Message):
    ready: bool
    state: WorkerState
    progress_url: str
    model: str
    idle_seconds: float | None = None
    queued: int = 0  # requests waiting for the slot
    n_ctx: int | None = None
    # Whether the GGUF holds a chat template (as the hive's catalog says); None: unknown.
    chat_template: bool | None = None


class LoadingProgress(Message):
    """SSE event of `GET /v1/loading/progress`."""

    stage: Literal["loading", "ready", "failed"]
    progress: float = Field(ge=0.0, le=1.0)
    error: str | None = None


ChatRole = Literal["system", "user", "assistant"]


class ChatMessage(Message):
    role: ChatRole
    content: str = Field(max_length=1_000_000)


class ResponseFormat(Message):
    """Constrain the output: any JSON object, or JSON matching `json_schema`."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: dict[str, Any] | None = None


class InferenceRequest(Message):
    """One generation: a raw completion of `prompt`, or a chat over `messages`.

    Exactly one of `prompt` and `messages` is given. Chat messages are
    rendered with the model's own template (its GGUF metadata), else the
    known format of its architecture, else `chat_format` must name one.
    """

    prompt: str | None = Field(default=None, min_length=1, max_length=1_000_000)
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    chat_format: str | None = Field(default=None, min_length=1, max_length=64)
    max_tokens: int | None = Field(default=20, ge=1, le=1_000_000)
    temperature: float = Field(default=0.7, ge=0.0, le=10.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    stop: list[str] = Field(default_factory=list, max_length=16)
    response_format: ResponseFormat | None = None
    request_id: str | None = Field(default=None, min_length=1, max_length=128)

    @model_validator(mode="after")
    def _one_input(self) -> InferenceRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt and messages")
        return self


class QueuedEvent(Message):
    """Sent before any token while the request waits for its turn (position 1 = next)."""

    queued: Literal[True] = True
    position: int = Field(ge=1)


class TokenEvent(Message):
    token: str
    index: int


class DoneEvent(Message):
    done: Literal[True] = True
    total_tokens: int
    duration_ms: int
    stop_reason: Literal["length", "stop", "canceled"] = "stop"
    prompt_tokens: int = 0
    # How the input was rendered: "raw", or the chat template/format used.
    rendered_as: str | None = None


class CancelAck(Message):
    request_id: str
    canceled: bool
