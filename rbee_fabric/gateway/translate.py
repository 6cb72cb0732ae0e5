"""OpenAI requests to rbee's InferenceRequest, worker events back to OpenAI shapes.

Pure functions: no I/O, so every mapping is tested from data. Fields OpenAI
defines that rbee cannot honour are refused with a 400 naming the field
(a falsy value, as some clients send by default, is accepted).
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any, TypeVar

from pydantic import ValidationError

from rbee_fabric.errors import RbeeError, UsageError
from rbee_fabric.schemas import (
    UNSUPPORTED_FIELDS,
    ChatMessage,
    DoneEvent,
    InferenceRequest,
    OpenAIAssistantMessage,
    OpenAIChatChoice,
    OpenAIChatChunk,
    OpenAIChatCompletion,
    OpenAIChatRequest,
    OpenAIChunkChoice,
    OpenAICompletion,
    OpenAICompletionRequest,
    OpenAIDelta,
    OpenAIError,
    OpenAIErrorBody,
    OpenAISampling,
    OpenAITextChoice,
    OpenAIUsage,
    ResponseFormat,
)

R = TypeVar("R", bound=OpenAISampling)

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


def parse_request(body: Any, model: type[R]) -> R:
    """Validate a request body; a refused or unknown field is a 400 naming it."""
    if not isinstance(body, dict):
        raise UsageError("the request body must be a JSON object", details={"param": None})
    for name, why in UNSUPPORTED_FIELDS.items():
        if body.get(name) not in (None, False, 0, [], {}, ""):
            raise UsageError(
                f"unsupported field {name!r}: {why} by rbee serve",
                hint="remove the field from the request",
                details={"param": name},
            )
    try:
        return model.model_validate({k: v for k, v in body.items() if k not in UNSUPPORTED_FIELDS})
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        reason = "unknown field, not supported by rbee serve" if first["type"] == "extra_forbidden" else first["msg"]
        raise UsageError(f"invalid field {param!r}: {reason}", details={"param": param}) from None


def chat_inference(r: OpenAIChatRequest) -> InferenceRequest:
    """A chat request as the worker's InferenceRequest (messages, template on the worker)."""
    fmt: ResponseFormat | None = None
    if r.response_format is not None and r.response_format.type != "text":
        schema = r.response_format.json_schema.schema_ if r.response_format.json_schema else None
        fmt = ResponseFormat(type=r.response_format.type, json_schema=schema)
    messages = [
        ChatMessage(role="system" if m.role == "developer" else m.role, content=m.text())
        for m in r.messages
    ]
    return InferenceRequest(
        messages=messages,
        max_tokens=r.max_completion_tokens or r.max_tokens,
        response_format=fmt,
        **_sampling(r),
    )


def completion_inference(r: OpenAICompletionRequest) -> InferenceRequest:
    try:
        prompt = r.prompt_text()
    except ValueError as exc:
        raise UsageError(f"invalid field 'prompt': {exc}", details={"param": "prompt"}) from None
    if not prompt:
        raise UsageError("invalid field 'prompt': empty", details={"param": "prompt"})
    return InferenceRequest(
        prompt=prompt, max_tokens=r.max_tokens or COMPLETION_DEFAULT_MAX_TOKENS, **_sampling(r)
    )


def _sampling(r: OpenAISampling) -> dict[str, Any]:
    out: dict[str, Any] = {"stop": r.stop_list(), "seed": r.seed}
    if r.temperature is not None:
        out["temperature"] = r.temperature
    if r.top_p is not None:
        out["top_p"] = r.top_p
    return out


# ---------------------------------------------------------------- answers


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def finish_reason(done: DoneEvent | None) -> str | None:
    if done is None:
        return None
    return "length" if done.stop_reason == "length" else "stop"


def usage(done: DoneEvent | None, tokens: int) -> OpenAIUsage:
    completion = done.total_tokens if done is not None else tokens
    prompt = done.prompt_tokens if done is not None else 0
    return OpenAIUsage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def chat_completion(cid: str, model: str, text: str, done: DoneEvent | None, tokens: int) -> OpenAIChatCompletion:
    return OpenAIChatCompletion(
        id=cid, created=int(time.time()), model=model,
        choices=[OpenAIChatChoice(
            message=OpenAIAssistantMessage(content=text),
            finish_reason=finish_reason(done),  # type: ignore[arg-type]
        )],
        usage=usage(done, tokens),
    )  # fmt: skip


def chat_chunk(
    cid: str, created: int, model: str, *, content: str | None = None, role: bool = False,
    finish: str | None = None,
) -> OpenAIChatChunk:  # fmt: skip
    delta = OpenAIDelta(role="assistant" if role else None, content=content)
    choice = OpenAIChunkChoice(delta=delta, finish_reason=finish)  # type: ignore[arg-type]
    return OpenAIChatChunk(id=cid, created=created, model=model, choices=[choice])


def chat_usage_chunk(cid: str, created: int, model: str, u: OpenAIUsage) -> OpenAIChatChunk:
    return OpenAIChatChunk(id=cid, created=created, model=model, choices=[], usage=u)


def text_completion(
    cid: str, created: int, model: str, text: str, *, finish: str | None = None,
    u: OpenAIUsage | None = None, with_choice: bool = True,
) -> OpenAICompletion:  # fmt: skip
    choices = [OpenAITextChoice(text=text, finish_reason=finish)] if with_choice else []  # type: ignore[arg-type]
    return OpenAICompletion(id=cid, created=created, model=model, choices=choices, usage=u)


# ----------------------------------------------------------------- errors

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_status(err: RbeeError) -> int:
    """OpenAI clients expect 400 for a bad request (rbee's daemons answer 422)."""
    return 400 if err.http_status == 422 else err.http_status


def error_object(err: RbeeError) -> OpenAIError:
    status = openai_status(err)
    details = dict(err.details)
    if err.hint and "hint" not in details:
        details["hint"] = err.hint
    param = details.get("param")
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    message = err.message + (f" (Suggestion: {err.hint})" if err.hint else "")
    return OpenAIError(
        error=OpenAIErrorBody(
            message=message, type=kind, param=str(param) if param else None, code=err.code,
            details=details,
        )
    )  # fmt: skip


def retry_after(err: RbeeError) -> str | None:
    """The Retry-After header of a 429 or 503 answer, in whole seconds."""
    if openai_status(err) not in (429, 503):
        return None
    seconds = err.details.get("retry_after_s", 1)
    try:
        return str(max(1, math.ceil(float(seconds))))
    except (TypeError, ValueError):
        return "1"
