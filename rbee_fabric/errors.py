"""The error tree every program raises and the CLI prints: one closed tree.

    RbeeError                      code, message, hint, details, exit_code
    ├── UsageError                 INVALID_REQUEST (422; bad CLI input or request field, exit 2)
    ├── InventoryError             INVENTORY_INVALID (exit 2)
    ├── ConfigError                CONFIG_INVALID (a damaged local file, exit 2)
    ├── RequestTooLarge            REQUEST_TOO_LARGE (413, exit 2)
    ├── ContextTooLong             CONTEXT_TOO_LONG (400, prompt_tokens, n_ctx, exit 2)
    ├── NoChatTemplate             NO_CHAT_TEMPLATE (400, exit 2)
    ├── ConnectionTimeout          CONNECTION_TIMEOUT (a daemon did not answer in time)
    │   └── HiveNotRunning         HIVE_NOT_RUNNING (nothing listens on the hive's port)
    ├── VersionMismatch            VERSION_MISMATCH (409)
    ├── ModelNotFound              MODEL_NOT_FOUND (404)
    ├── DownloadFailed             DOWNLOAD_FAILED (502)
    ├── InsufficientRam            INSUFFICIENT_RAM (507)
    ├── VramExhausted              VRAM_EXHAUSTED (507)
    ├── InsufficientDisk           INSUFFICIENT_DISK (507)
    ├── DiskError                  DISK_ERROR (507, a full or failing data disk)
    ├── BackendUnavailable         BACKEND_UNAVAILABLE (400)
    ├── InvalidApiKey              INVALID_API_KEY (401)
    ├── ForeignListener            FOREIGN_LISTENER (502, a port held by another program or user)
    ├── AllSlotsBusy               ALL_SLOTS_BUSY (503)
    ├── QueueFull                  QUEUE_FULL (429, details.retry_after_s)
    ├── QueueTimeout               QUEUE_TIMEOUT (504, waited past --queue-timeout)
    ├── ConnectionLost             CONNECTION_LOST (502, stream broke, worker alive)
    ├── NodesUnavailable           NODES_UNAVAILABLE (503, no node holding the model answers)
    ├── WorkerCrashed              WORKER_CRASHED (502)
    ├── WorkerStartFailed          WORKER_START_FAILED (502)
    ├── WorkerNotFound             WORKER_NOT_FOUND (404)
    ├── WorkerNotReady             WORKER_NOT_READY (503, still loading or stopping)
    ├── GenerationFailed           GENERATION_FAILED (500, the engine failed mid-generation)
    ├── LoadingTimeout             LOADING_TIMEOUT (504)
    ├── RequestCanceled            REQUEST_CANCELED (499, exit 130)
    ├── NotInstalled               NOT_INSTALLED (rbee-fabric missing on a node)
    ├── UnknownNode                UNKNOWN_NODE (404, not in the inventory nor the SSH config, exit 2)
    ├── InstallFailed              INSTALL_FAILED (building or installing the wheels failed)
    ├── NotFound                   NOT_FOUND (404, no such path or job on the daemon)
    ├── MethodNotAllowed           METHOD_NOT_ALLOWED (405)
    ├── HttpError                  HTTP_ERROR (any other HTTP status of the framework)
    ├── SshError                   SSH_ERROR (reaching a node over SSH)
    │   ├── NodeUnreachable        NODE_UNREACHABLE (DNS, refused, timeout)
    │   ├── HostKeyUnknown         HOST_KEY_UNKNOWN (fingerprint + trust command)
    │   ├── HostKeyChanged         HOST_KEY_CHANGED (loud)
    │   ├── SshAuthFailed          SSH_AUTH_FAILED
    │   └── RemoteCommandFailed    REMOTE_COMMAND_FAILED (command, status, output)
    └── InternalError              INTERNAL_ERROR (500)

Every class is in the code table (`error_class`), has a default hint (the CLI's
`Suggestion:` line) and an exit code: 2 for usage errors refused before
anything runs, 130 for Ctrl+C, else 1. HTTP servers turn an RbeeError into the
envelope `{"error": {code, message, details}}`; clients rebuild the typed
error from `code` alone (`from_envelope`), never from the message text.
"""

from __future__ import annotations

import re
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
    default_hint: ClassVar[str] = "run again with --debug and report the traceback"

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint or self.default_hint
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
    default_hint = "see the command's --help for the accepted values"


class InventoryError(RbeeError):
    code = "INVENTORY_INVALID"
    http_status = 400
    exit_code = EXIT_USAGE
    default_hint = "fix the inventory file; `rbee nodes init` writes a commented example"


class ConfigError(RbeeError):
    code = "CONFIG_INVALID"
    http_status = 500
    exit_code = EXIT_USAGE
    default_hint = "the message names the file: repair or remove it"


class RequestTooLarge(RbeeError):
    code = "REQUEST_TOO_LARGE"
    http_status = 413
    exit_code = EXIT_USAGE
    default_hint = "send a smaller request (prompts and bodies are limited to a few MB)"


class ContextTooLong(RbeeError):
    code = "CONTEXT_TOO_LONG"
    http_status = 400
    exit_code = EXIT_USAGE
    default_hint = "use a larger --ctx-size or a shorter prompt"


class NoChatTemplate(RbeeError):
    code = "NO_CHAT_TEMPLATE"
    http_status = 400
    exit_code = EXIT_USAGE
    default_hint = "name a chat format with --chat-format, or use --raw"



class ConnectionTimeout(RbeeError):
    code = "CONNECTION_TIMEOUT"
    http_status = 504
    default_hint = "see whether the hive runs: rbee hive status NODE; its log: rbee hive logs NODE"


class HiveNotRunning(ConnectionTimeout):
    code = "HIVE_NOT_RUNNING"
    http_status = 503
    default_hint = "start it: rbee hive start NODE (rbee infer starts it on its own)"


class VersionMismatch(RbeeError):
    code = "VERSION_MISMATCH"
    http_status = 409
    default_hint = "install the keeper's version on the node: rbee nodes install NODE --upgrade"


class InvalidApiKey(RbeeError):
    code = "INVALID_API_KEY"
    http_status = 401
    default_hint = "the node's key is ~/.config/rbee/api_key there; restart its hive after a change"


class ForeignListener(RbeeError):
    # Checked before the API key is sent anywhere, so the key never reaches an
    # impostor (another user's program on the port, a reused worker address).
    code = "FOREIGN_LISTENER"
    http_status = 502
    default_hint = "stop the program on that port, or give the node another hive_port"


class NotFound(RbeeError):
    code = "NOT_FOUND"
    http_status = 404
    default_hint = "keeper and node may run different versions: rbee nodes check NODE"


class MethodNotAllowed(RbeeError):
    code = "METHOD_NOT_ALLOWED"
    http_status = 405
    default_hint = "keeper and node may run different versions: rbee nodes check NODE"


class HttpError(RbeeError):
    code = "HTTP_ERROR"
    http_status = 400
    default_hint = "keeper and node may run different versions: rbee nodes check NODE"



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
    default_hint = "check the node's network and HF_ENDPOINT, or copy the model: rbee models push"


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


class DiskError(RbeeError):
    code = "DISK_ERROR"
    http_status = 507
    default_hint = "free space on the disk of the rbee data directory, then retry"


class BackendUnavailable(RbeeError):
    code = "BACKEND_UNAVAILABLE"
    http_status = 400
    default_hint = "use --backend auto or cpu; rbee nodes check NODE lists the node's backends"



class AllSlotsBusy(RbeeError):
    code = "ALL_SLOTS_BUSY"
    http_status = 503
    default_hint = "the worker is generating for another request; try again shortly"


class QueueFull(RbeeError):
    code = "QUEUE_FULL"
    http_status = 429
    default_hint = "wait and retry, or raise the node's queue limit (max_queue in the inventory)"


class QueueTimeout(RbeeError):
    code = "QUEUE_TIMEOUT"
    http_status = 504
    default_hint = "raise --queue-timeout, or allow more workers (max_replicas in the inventory)"


class ConnectionLost(RbeeError):
    code = "CONNECTION_LOST"
    http_status = 502
    default_hint = "run the command again: the same worker is reused"


class NodesUnavailable(RbeeError):
    code = "NODES_UNAVAILABLE"
    http_status = 503
    default_hint = "check the nodes with `rbee nodes check`; the gateway retries them on its own"


class WorkerCrashed(RbeeError):
    code = "WORKER_CRASHED"
    http_status = 502
    default_hint = "run the command again (a fresh worker starts); why it died: rbee hive logs NODE"


class WorkerStartFailed(RbeeError):
    code = "WORKER_START_FAILED"
    http_status = 502
    default_hint = "check the model file; the worker's log: rbee hive logs NODE"


class WorkerNotFound(RbeeError):
    code = "WORKER_NOT_FOUND"
    http_status = 404
    default_hint = "rbee workers list shows the workers of every node"


class WorkerNotReady(RbeeError):
    code = "WORKER_NOT_READY"
    http_status = 503
    default_hint = "the model is still loading; follow /v1/loading/progress"


class GenerationFailed(RbeeError):
    code = "GENERATION_FAILED"
    http_status = 500
    default_hint = "the worker's log has the cause (rbee hive logs NODE); try again or another model"


class LoadingTimeout(RbeeError):
    code = "LOADING_TIMEOUT"
    http_status = 504
    default_hint = "give big models more time: --timeout SECONDS"


class RequestCanceled(RbeeError):
    code = "REQUEST_CANCELED"
    http_status = 499
    exit_code = EXIT_CANCELED
    default_hint = "the generation was stopped on the worker; run the command again to retry"


class UnknownNode(RbeeError):
    """A --node name that neither the inventory nor the SSH config knows, and no fallback resolves."""

    code = "UNKNOWN_NODE"
    http_status = 404
    exit_code = EXIT_USAGE
    default_hint = "add the node to the inventory (`rbee nodes init` writes a starter one) or a Host entry to ~/.ssh/config"


class NotInstalled(RbeeError):
    code = "NOT_INSTALLED"
    default_hint = "install it on the node: rbee nodes install NODE"


class InstallFailed(RbeeError):
    code = "INSTALL_FAILED"
    default_hint = "the keeper needs pip and its package index (or cache) to build the wheels"


class SshError(RbeeError):
    code = "SSH_ERROR"
    http_status = 502
    default_hint = "see what fails with: rbee nodes check NODE"


class NodeUnreachable(SshError):
    code = "NODE_UNREACHABLE"
    default_hint = "is the node on and its sshd running? rbee nodes check NODE"


class HostKeyUnknown(SshError):
    code = "HOST_KEY_UNKNOWN"
    default_hint = "check the key's fingerprint, then: rbee nodes trust NODE"


class HostKeyChanged(SshError):
    code = "HOST_KEY_CHANGED"
    default_hint = "find out why the key changed; then ssh-keygen -R HOST and rbee nodes trust NODE"


class SshAuthFailed(SshError):
    code = "SSH_AUTH_FAILED"
    default_hint = "set user in the inventory or ~/.ssh/config; add your key to authorized_keys"


class RemoteCommandFailed(SshError):
    code = "REMOTE_COMMAND_FAILED"
    default_hint = "the output shows why; see the node with: rbee nodes check NODE"


class InternalError(RbeeError):
    code = "INTERNAL_ERROR"
    http_status = 500


def _tree(base: type[RbeeError]) -> list[type[RbeeError]]:
    out = [base]
    for sub in base.__subclasses__():
        if sub.__module__ == __name__:
            out += _tree(sub)
    return out


# Every class of this module, by its wire code: the one table.
_BY_CODE: dict[str, type[RbeeError]] = {cls.code: cls for cls in _tree(RbeeError)}
_BY_CODE["INTERNAL_ERROR"] = InternalError
ALL_ERRORS: tuple[type[RbeeError], ...] = tuple(c for c in _BY_CODE.values())

def error_class(code: str) -> type[RbeeError]:
    """The error class for a wire code (unknown codes become InternalError)."""
    return _BY_CODE.get(code, InternalError)


def from_envelope(body: Any, *, status: int | None = None, node: str | None = None) -> RbeeError:
    """Rebuild a typed error from an error envelope, by its code only; `node` (the
    name the keeper knows the daemon by) replaces the NODE of the daemon's hint."""
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
    if node and isinstance(hint, str):
        hint = re.sub(r"\bNODE\b", node, hint)
    cls = _BY_CODE.get(code)
    if cls is None:  # a newer daemon's code: keep it visible, not just "internal"
        return InternalError(f"{code}: {message}", hint=hint, details={**details, "code": code})
    return cls(message, hint=hint, details=details)
