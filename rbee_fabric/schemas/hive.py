"""The hive's API: health, catalog, downloads, workers, resources (keeper <-> hive <-> worker)."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field

from rbee_fabric.schemas.base import API_VERSION, Backend, ErrorBody, Message, WorkerState


class HiveHealth(Message):
    """The open health answer; `proof` answers the keeper's `?nonce=` (see proof.py).

    Unknown fields are ignored and `status` is free text, so that a newer or
    older hive still parses and reads as VERSION_MISMATCH (its `version`)
    instead of a validation error. Only `version` is required.
    """

    model_config = ConfigDict(extra="ignore")

    status: str = "ok"
    version: str
    api_version: str = API_VERSION
    proof: str | None = None


class WorkerHealth(Message):
    """A worker's open health answer, with the same proof of the key as the hive's."""

    model_config = ConfigDict(extra="ignore")

    status: str = "ok"
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
