"""What every wire message shares: the base class, the version, the error envelope."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

API_VERSION = "1"

Backend = Literal["auto", "cpu", "cuda", "metal"]
WorkerState = Literal["starting", "loading", "idle", "busy", "failed", "stopping"]


class Message(BaseModel):
    """Base for every wire message: unknown fields are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")


class ErrorBody(Message):
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorEnvelope(Message):
    """The single error shape of every HTTP error and every SSE error event."""

    error: ErrorBody
