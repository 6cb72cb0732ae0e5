"""Every message exchanged by keeper, hive and worker.

This is the one module the three programs share for their wire format: the
request and response bodies of both HTTP APIs, the SSE events of every
stream, and the error envelope. Nothing else defines a field name that
crosses a process boundary.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

API_VERSION = "1"

Backend = Literal["auto", "cpu", "cuda", "metal"]
WorkerState = Literal["starting", "loading", "idle", "busy", "failed", "stopping"]


class Message(BaseModel):
    """Base for every wire message: unknown fields are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")


# ----------------------------------------------------------------- errors


class ErrorBody(Message):
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorEnvelope(Message):
    """The single error shape of every HTTP error and every SSE error event."""

    error: ErrorBody


# ------------------------------------------------------------------- hive


class HiveHealth(Message):
    """The open health answer; `proof` answers the keeper's `?nonce=` (see proof.py).

    Unknown fields are ignored so that a newer or older hive still parses and
    reads as VERSION_MISMATCH instead of a validation error.
    """

    model_config = ConfigDict(extra="ignore")

    status: Literal["ok"] = "ok"
    version: str
    api_version: str = API_VERSION
    proof: str | None = None


class WorkerHealth(Message):
    """A worker's open health answer, with the same proof of the key as the hive's."""

    model_config = ConfigDict(extra="ignore")

    status: Literal["ok"] = "ok"
    version: str | None = None
    proof: str | None = None


class ModelInfo(Message):
    """One entry of a node's model catalog."""

    id: str
    reference: str
    path: str
    size_bytes: int
    sha256: str | None = None
    architecture: str | None = None
    quantization: str | None = None
    context_length: int | None = None
    parameter_count: int | None = None
    added_at: str
    # The GGUF carries its own chat template (`rbee infer` then answers through it).
    chat_template: bool = False


class ModelList(Message):
    models: list[ModelInfo]


class DownloadRequest(Message):
    reference: str = Field(min_length=1, max_length=512)


class RegisterRequest(Message):
    """Register a file already on the node (pushed by the keeper) under a reference."""

    reference: str = Field(min_length=1, max_length=512)
    path: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class DownloadStarted(Message):
    """Answer to a download request: the model is there, or a job streams progress."""

    model: ModelInfo | None = None
    download_id: str | None = None
    progress_url: str | None = None


class DownloadProgress(Message):
    """SSE event of `GET /v1/models/download/{id}/progress`."""

    stage: Literal["resolving", "downloading", "verifying", "done", "failed"]
    filename: str | None = None
    bytes_done: int = 0
    bytes_total: int | None = None
    bytes_per_second: float | None = None
    resumed_from: int = 0
    model: ModelInfo | None = None
    error: ErrorBody | None = None
    # Lines for the user, oldest first ("retry 2/6 in 2 s: ConnectError: ..."). Each
    # event carries them all, so a client that missed an event still shows every one.
    notes: list[str] = Field(default_factory=list)
    # What the progress bar says the hive does ("assembling FILE"); None: fetching FILE.
    label: str | None = None


class SpawnRequest(Message):
    """A worker for this configuration: an existing one (least loaded), or a new one.

    `max_queue` and `max_replicas` are the node's settings from the keeper's
    inventory (None: the hive's defaults, 64 and 1).
    """

    model_id: str = Field(min_length=1)
    backend: Backend = "auto"
    device: int = Field(default=0, ge=0)
    n_ctx: int = Field(default=2048, ge=16, le=1_048_576)
    max_queue: int | None = Field(default=None, ge=0, le=100_000)
    max_replicas: int | None = Field(default=None, ge=1, le=64)

    # auto: safe mode (llama.cpp extra buffer types off) after an engine crash
    # while loading, and from then on for this node's build; on/off: forced.
    safe_mode: Literal["auto", "on", "off"] = "auto"


class TokenCountRequest(Message):
    text: str = Field(max_length=64_000_000)


class TokenCount(Message):
    """Tokens of a text with a model's vocabulary (BOS included)."""

    tokens: int
    context_length: int | None = None


class WorkerInfo(Message):
    id: str
    model_id: str
    model_reference: str
    url: str
    pid: int
    backend: str
    device: int
    state: WorkerState
    started_at: float
    idle_seconds: float | None = None
    n_ctx: int | None = None
    # Safe mode: llama.cpp's extra buffer types (AMX, repacking) off, and why.
    safe_mode: bool = False
    safe_mode_reason: str | None = None
    queued: int = 0
    # True only in the answer to the spawn request that started this worker.
    spawned: bool = False
    # Filled in by the hive's worker list (`rbee workers list`, as `ollama ps` shows):
    # memory_mb: resident memory of the worker process (RSS, measured; on a GPU the
    # weights in VRAM are not in it); memory_estimate_mb: what the hive reserved for
    # it (model file x 1.2 + KV cache of n_ctx); unload_at: when the hive stops it
    # (seconds since the epoch) if it stays idle, after idle_timeout_s of idleness.
    memory_mb: int | None = None
    memory_estimate_mb: int | None = None
    idle_timeout_s: float | None = None
    unload_at: float | None = None


class WorkerList(Message):
    workers: list[WorkerInfo]


class WorkerReadyCallback(Message):
    """The worker calls the hive back with this: once bound, again when loaded."""

    worker_id: str
    url: str
    state: Literal["loading", "idle", "failed"]
    error: str | None = None


class Ack(Message):
    ok: bool = True
    message: str | None = None


class DeviceInfo(Message):
    index: int
    name: str
    total_mb: int
    free_mb: int


class Resources(Message):
    ram_total_mb: int
    ram_available_mb: int
    backends: list[str]
    devices: dict[str, list[DeviceInfo]] = Field(default_factory=dict)
    llama_backend: str
    disk_free_mb: int


# ----------------------------------------------------------------- worker


class WorkerReady(Message):
    ready: bool
    state: WorkerState
    progress_url: str
    model: str
    idle_seconds: float | None = None
    queued: int = 0  # requests waiting for the slot
    n_ctx: int | None = None


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


# ------------------------------------------------- OpenAI API (rbee serve)
#
# The subset of the OpenAI HTTP API that `rbee serve` speaks. Requests refuse
# unknown fields like every other message here; fields OpenAI defines that
# rbee cannot honour are named in UNSUPPORTED_FIELDS so the gateway can say
# so plainly instead of ignoring them.

UNSUPPORTED_FIELDS: dict[str, str] = {
    "tools": "tool calling is not supported",
    "tool_choice": "tool calling is not supported",
    "functions": "function calling is not supported",
    "function_call": "function calling is not supported",
    "parallel_tool_calls": "tool calling is not supported",
    "logprobs": "log probabilities are not supported",
    "top_logprobs": "log probabilities are not supported",
    "logit_bias": "logit_bias is not supported",
    "presence_penalty": "presence_penalty is not supported",
    "frequency_penalty": "frequency_penalty is not supported",
    "best_of": "best_of is not supported",
    "echo": "echo is not supported",
    "suffix": "suffix (insertion) is not supported",
    "audio": "audio output is not supported",
    "modalities": "only text output is supported",
    "prediction": "predicted outputs are not supported",
    "reasoning_effort": "reasoning_effort is not supported",
    "service_tier": "service tiers are not supported",
    "store": "stored completions are not supported",
    "web_search_options": "web search is not supported",
}


class OpenAIContentPart(Message):
    type: Literal["text"]
    text: str


class OpenAIChatMessage(Message):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[OpenAIContentPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class OpenAIStreamOptions(Message):
    include_usage: bool = False


class OpenAIJsonSchema(Message):
    name: str = Field(default="response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class OpenAIResponseFormat(Message):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: OpenAIJsonSchema | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> OpenAIResponseFormat:
        if self.type == "json_schema" and (self.json_schema is None or self.json_schema.schema_ is None):
            raise ValueError("type json_schema needs json_schema.schema")
        return self


class OpenAISampling(Message):
    """Fields both completion endpoints share."""

    model: str = Field(min_length=1, max_length=600)
    stream: bool = False
    stream_options: OpenAIStreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    stop: str | list[str] | None = None
    n: int | None = Field(default=None, ge=1, le=1)
    user: str | None = Field(default=None, max_length=256)

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class OpenAIChatRequest(OpenAISampling):
    """`POST /v1/chat/completions`."""

    messages: list[OpenAIChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    response_format: OpenAIResponseFormat | None = None


class OpenAICompletionRequest(OpenAISampling):
    """`POST /v1/completions` (raw text; `max_tokens` defaults to 16 as in OpenAI)."""

    prompt: str | list[str]

    def prompt_text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise ValueError("one prompt per request")
        return self.prompt[0]


class OpenAIUsage(Message):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class OpenAIAssistantMessage(Message):
    role: Literal["assistant"] = "assistant"
    content: str


class OpenAIChatChoice(Message):
    index: int = 0
    message: OpenAIAssistantMessage
    finish_reason: Literal["stop", "length"] | None
    logprobs: None = None


class OpenAIChatCompletion(Message):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[OpenAIChatChoice]
    usage: OpenAIUsage
    system_fingerprint: str | None = None


class OpenAIDelta(Message):
    role: Literal["assistant"] | None = None
    content: str | None = None


class OpenAIChunkChoice(Message):
    index: int = 0
    delta: OpenAIDelta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class OpenAIChatChunk(Message):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[OpenAIChunkChoice]
    usage: OpenAIUsage | None = None


class OpenAITextChoice(Message):
    index: int = 0
    text: str
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class OpenAICompletion(Message):
    """A `/v1/completions` answer, and (object the same) each of its stream chunks."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[OpenAITextChoice]
    usage: OpenAIUsage | None = None


class OpenAIModel(Message):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "rbee"
    # rbee's addition: the nodes whose catalog holds the model.
    nodes: list[str] = Field(default_factory=list)


class OpenAIModelList(Message):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


class OpenAIErrorBody(Message):
    """OpenAI's error object, plus rbee's `details` (hint, counts, retry_after_s).

    `code` is rbee's error code, so `errors.from_envelope` rebuilds the typed
    error from a gateway answer as from any daemon's.
    """

    message: str
    type: str
    param: str | None = None
    code: str
    details: dict[str, Any] = Field(default_factory=dict)


class OpenAIError(Message):
    error: OpenAIErrorBody
