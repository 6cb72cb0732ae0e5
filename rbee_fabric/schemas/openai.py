"""The subset of the OpenAI HTTP API that `rbee serve` speaks.

Requests refuse unknown fields like every other message here; fields OpenAI
defines that rbee cannot honour are named in UNSUPPORTED_FIELDS so the
gateway can say so plainly instead of ignoring them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from rbee_fabric.schemas.base import Message

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
