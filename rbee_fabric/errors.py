"""The error tree every program raises and the CLI prints.

    RbeeError                      code, message, hint, details, exit_code
    ├── UsageError                 INVALID_REQUEST / bad CLI input (exit 2)
    ├── InventoryError             INVENTORY_INVALID (exit 2)
    ├── ConnectionTimeout          CONNECTION_TIMEOUT
    ├── VersionMismatch            VERSION_MISMATCH
    ├── ModelNotFound              MODEL_NOT_FOUND (404)
    ├── DownloadFailed             DOWNLOAD_FAILED (502)
    ├── InsufficientRam            INSUFFICIENT_RAM (507)
    ├── VramExhausted              VRAM_EXHAUSTED (507)
    ├── InsufficientDisk           INSUFFICIENT_DISK (507)
    ├── BackendUnavailable         BACKEND_UNAVAILABLE (400)
    ├── InvalidApiKey              INVALID_API_KEY (401)
    ├── ForeignListener            FOREIGN_LISTENER (a port held by another program or user)
    ├── RequestTooLarge            REQUEST_TOO_LARGE (413)
    ├── ConfigError                CONFIG_INVALID (a damaged local file, exit 2)
    ├── DiskError                  DISK_ERROR (507, a full or failing data disk)
    ├── AllSlotsBusy               ALL_SLOTS_BUSY (503)
    ├── QueueFull                  QUEUE_FULL (429, details.retry_after_s)
    ├── ContextTooLong             CONTEXT_TOO_LONG (400, prompt_tokens, n_ctx)
    ├── QueueTimeout               QUEUE_TIMEOUT (504, waited past --queue-timeout)
    ├── ConnectionLost             CONNECTION_LOST (stream broke, worker alive)
    ├── NodesUnavailable           NODES_UNAVAILABLE (503, no node holding the model answers)
    ├── WorkerCrashed              WORKER_CRASHED
    ├── WorkerStartFailed          WORKER_START_FAILED
    ├── WorkerNotFound             WORKER_NOT_FOUND (404)
    ├── LoadingTimeout             LOADING_TIMEOUT
    ├── RequestCanceled            REQUEST_CANCELED (499, exit 130)
    ├── NotInstalled               NOT_INSTALLED (rbee-fabric missing on a node)
    ├── UnknownNode                UNKNOWN_NODE (not in the inventory nor the SSH config, exit 2)
    ├── SshError                   reaching a node over SSH
    │   ├── NodeUnreachable        NODE_UNREACHABLE (DNS, refused, timeout)
    │   ├── HostKeyUnknown         HOST_KEY_UNKNOWN (fingerprint + trust command)
    │   ├── HostKeyChanged         HOST_KEY_CHANGED (loud)
    │   ├── SshAuthFailed          SSH_AUTH_FAILED
    │   └── RemoteCommandFailed    REMOTE_COMMAND_FAILED (command, status, output)
    └── InternalError              INTERNAL_ERROR (500)

HTTP servers turn an RbeeError into the envelope `{"error": {code, message,
details}}`; clients rebuild the typed error from `code` alone
(`from_envelope`), never from the message text.
"""

from __future__ import annotations

from typing import Any, ClassVar

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_CANCELED = 130


class RbeeError(Exception):
    """Base error: a code, a one-line message, a suggestion and context."""

    code: ClassVar[str] = "INTERNAL_ERROR"
    http_status: ClassVar[int] = 500
    exit_code: ClassVar[int] = EXIT_RUNTIME
    default_hint: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint
        self.details: dict[str, Any] = dict(details or {})

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def envelope(self) -> dict[str, Any]:
        """The wire form; the hint travels in details so the keeper can show it."""
        details = dict(self.details)
        if self.hint and "hint" not in details:
            details["hint"] = self.hint
        return {"error": {"code": self.code, "message": self.message, "details": details}}


class UsageError(RbeeError):
    code = "INVALID_REQUEST"
    http_status = 422
    exit_code = EXIT_USAGE


class InventoryError(RbeeError):
    code = "INVENTORY_INVALID"
    http_status = 400
    exit_code = EXIT_USAGE


class ConnectionTimeout(RbeeError):
    code = "CONNECTION_TIMEOUT"
    http_status = 504


class VersionMismatch(RbeeError):
    code = "VERSION_MISMATCH"
    http_status = 409


class ModelNotFound(RbeeError):
    code = "MODEL_NOT_FOUND"
    http_status = 404
    default_hint = (
        "accepted forms: gemma3-270m, file:/abs/path.gguf, hf:ORG/REPO, "
        "hf:ORG/REPO:FILE.gguf, hf:ORG/REPO:QUANT"
    )


class DownloadFailed(RbeeError):
    code = "DOWNLOAD_FAILED"
    http_status = 502


class InsufficientRam(RbeeError):
    code = "INSUFFICIENT_RAM"
    http_status = 507
    default_hint = "try a smaller quantization (e.g. Q4_K_M or Q3_K_S) or free some memory"


class VramExhausted(RbeeError):
    code = "VRAM_EXHAUSTED"
    http_status = 507
    default_hint = "try a smaller quantization, another --device, or --backend cpu"


class InsufficientDisk(RbeeError):
    code = "INSUFFICIENT_DISK"
    http_status = 507
    default_hint = "free some space in the model directory or remove models with `rbee models rm`"


class BackendUnavailable(RbeeError):
    code = "BACKEND_UNAVAILABLE"
    http_status = 400


class InvalidApiKey(RbeeError):
    code = "INVALID_API_KEY"
    http_status = 401


class ForeignListener(RbeeError):
    """The port of a hive or worker is held by a program that cannot prove it has the key.

    The keeper checks this before it sends the API key anywhere, so the key
    never reaches an impostor (another user's program on the same port, a
    stale worker address reused by someone else).
    """

    code = "FOREIGN_LISTENER"
    http_status = 502


class RequestTooLarge(RbeeError):
    code = "REQUEST_TOO_LARGE"
    http_status = 413
    exit_code = EXIT_USAGE
    default_hint = "send a smaller request (prompts and bodies are limited to a few MB)"


class ConfigError(RbeeError):
    """A local rbee file is damaged (for example an empty API key file)."""

    code = "CONFIG_INVALID"
    http_status = 500
    exit_code = EXIT_USAGE


class DiskError(RbeeError):
    """The data directory's disk is full or failing (SQLite disk I/O error)."""

    code = "DISK_ERROR"
    http_status = 507
    default_hint = "free space on the disk of the rbee data directory, then retry"


class AllSlotsBusy(RbeeError):
    code = "ALL_SLOTS_BUSY"
    http_status = 503
    default_hint = "the worker is generating for another request; try again shortly"


class QueueFull(RbeeError):
    """The node's queue for this model is at its limit; retry after details.retry_after_s."""

    code = "QUEUE_FULL"
    http_status = 429
    default_hint = "wait and retry, or raise the node's queue limit (max_queue in the inventory)"


class ContextTooLong(RbeeError):
    """The prompt (details.prompt_tokens) cannot fit the context (details.n_ctx)."""

    code = "CONTEXT_TOO_LONG"
    http_status = 400
    exit_code = EXIT_USAGE
    default_hint = "use a larger --ctx-size or a shorter prompt"


class QueueTimeout(RbeeError):
    """The request waited in a worker's queue longer than the keeper's --queue-timeout."""

    code = "QUEUE_TIMEOUT"
    http_status = 504
    default_hint = "raise --queue-timeout, or allow more workers (max_replicas in the inventory)"


class ConnectionLost(RbeeError):
    """The stream broke but the worker is alive (SSH or network drop), not a crash."""

    code = "CONNECTION_LOST"
    http_status = 502


class NoChatTemplate(RbeeError):
    """A chat request the model cannot render: no template, no known format."""

    code = "NO_CHAT_TEMPLATE"
    http_status = 400
    exit_code = EXIT_USAGE
    default_hint = "name a chat format with --chat-format, or use --raw"
class NodesUnavailable(RbeeError):
    """No node that could serve the request answers (details.nodes: name -> reason)."""

    code = "NODES_UNAVAILABLE"
    http_status = 503
    default_hint = "check the nodes with `rbee nodes check`; the gateway retries them on its own"


class WorkerCrashed(RbeeError):
    code = "WORKER_CRASHED"
    http_status = 502


class WorkerStartFailed(RbeeError):
    code = "WORKER_START_FAILED"
    http_status = 502


class WorkerNotFound(RbeeError):
    code = "WORKER_NOT_FOUND"
    http_status = 404


class LoadingTimeout(RbeeError):
    code = "LOADING_TIMEOUT"
    http_status = 504


class RequestCanceled(RbeeError):
    code = "REQUEST_CANCELED"
    http_status = 499
    exit_code = EXIT_CANCELED


class SshError(RbeeError):
    """Base of the errors of reaching a node over SSH."""

    code = "SSH_ERROR"
    http_status = 502


class NodeUnreachable(SshError):
    code = "NODE_UNREACHABLE"


class UnknownNode(RbeeError):
    """A --node name that neither the inventory nor the SSH config knows, and no fallback resolves."""

    code = "UNKNOWN_NODE"
    http_status = 404
    exit_code = EXIT_USAGE


class HostKeyUnknown(SshError):
    code = "HOST_KEY_UNKNOWN"


class HostKeyChanged(SshError):
    code = "HOST_KEY_CHANGED"


class SshAuthFailed(SshError):
    code = "SSH_AUTH_FAILED"


class RemoteCommandFailed(SshError):
    """A command on a node failed; keeps the command, exit status and output."""

    code = "REMOTE_COMMAND_FAILED"


class NotInstalled(RbeeError):
    code = "NOT_INSTALLED"


class InternalError(RbeeError):
    code = "INTERNAL_ERROR"
    http_status = 500


_BY_CODE: dict[str, type[RbeeError]] = {
    cls.code: cls
    for cls in (
        UsageError,
        InventoryError,
        ConnectionTimeout,
        VersionMismatch,
        ModelNotFound,
        DownloadFailed,
        InsufficientRam,
        VramExhausted,
        InsufficientDisk,
        BackendUnavailable,
        InvalidApiKey,
        ForeignListener,
        RequestTooLarge,
        ConfigError,
        DiskError,
        AllSlotsBusy,
        QueueFull,
        ContextTooLong,
        QueueTimeout,
        ConnectionLost,
        NoChatTemplate,
        NodesUnavailable,
        WorkerCrashed,
        WorkerStartFailed,
        WorkerNotFound,
        LoadingTimeout,
        RequestCanceled,
        NodeUnreachable,
        UnknownNode,
        HostKeyUnknown,
        HostKeyChanged,
        SshAuthFailed,
        RemoteCommandFailed,
        NotInstalled,
        InternalError,
    )
}


_DISK_WORDS = ("disk i/o error", "database or disk is full", "no space left on device")


def disk_error(exc: BaseException, where: str = "the rbee data directory") -> DiskError | None:
    """A DiskError for a full or failing disk (SQLite or OS error), else None."""
    import errno

    text = str(exc).lower()
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EIO, errno.EDQUOT):
        pass
    elif type(exc).__name__ not in ("OperationalError", "DatabaseError") or not any(
        w in text for w in _DISK_WORDS
    ):
        return None
    return DiskError(
        f"cannot write to {where}: {exc}",
        hint=f"the disk of {where} is full or failing: free space there (df -h), then retry",
        details={"where": where, "reason": str(exc)},
    )


def error_class(code: str) -> type[RbeeError]:
    """The error class for a wire code (unknown codes become InternalError)."""
    return _BY_CODE.get(code, InternalError)


def from_envelope(body: Any, *, status: int | None = None) -> RbeeError:
    """Rebuild a typed error from an error envelope, by its code only."""
    try:
        err = body["error"]
        code, message = str(err["code"]), str(err["message"])
        details = dict(err.get("details") or {})
    except (KeyError, TypeError, AttributeError):
        return InternalError(
            f"unexpected error answer (HTTP {status}): {str(body)[:200]}",
            details={"status": status},
        )
    hint = details.pop("hint", None)
    return error_class(code)(message, hint=hint, details=details)

