"""HTTP clients for the hive and worker APIs; httpx errors are mapped here, once."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncGenerator, Iterator
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from rbee_fabric import __version__, proof, sse
from rbee_fabric.errors import (
    ConfigError,
    ConnectionTimeout,
    ForeignListener,
    InvalidApiKey,
    RbeeError,
    VersionMismatch,
    from_envelope,
)
from rbee_fabric.keeper import sockowner
from rbee_fabric.schemas import (
    Ack,
    CancelAck,
    DownloadProgress,
    DownloadRequest,
    DownloadStarted,
    HiveHealth,
    LoadingProgress,
    ModelInfo,
    ModelList,
    RegisterRequest,
    Resources,
    SpawnRequest,
    TokenCount,
    TokenCountRequest,
    WorkerInfo,
    WorkerList,
    WorkerReady,
)

M = TypeVar("M", bound=BaseModel)


class Unreachable(ConnectionTimeout):
    """One failed connection attempt (the flow decides when to give up)."""


class Endpoint:
    """One daemon's base URL, API key, and who to name in errors.

    The key is sent only after the listener proved it holds the key (see
    proof.py): `/v1/health` goes out without it, with a fresh nonce, and the
    answer must carry HMAC(key, nonce). On this machine the listening
    socket's owner must also be this user.
    """

    what = "rbee daemon"

    def __init__(self, base_url: str, api_key: str | None, node: str, key_file: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.node = node
        self.key_file = key_file
        self._key = api_key
        self._auth: dict[str, str] | None = None  # set once the listener is proven
        # Plain HTTP only (loopback, SSH tunnels, the LAN): verify=False skips
        # loading the CA bundle, which costs ~0.2 s per client.
        self.http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(30.0, connect=3.0),
            verify=False,
        )

    async def prove(self, timeout: float = 3.0) -> dict[str, Any]:
        """Check the listener is ours (owner, key proof); returns its health answer."""
        nonce = proof.new_nonce()
        with self._mapped():
            self._check_owner()
            r = await self.http.get("/v1/health", params={"nonce": nonce}, timeout=timeout)
            self._check(r)
            try:
                body = r.json()
            except ValueError:
                body = None
        if not isinstance(body, dict):
            raise self._foreign("its /v1/health answer is not rbee's")
        if self._key is None:
            return body  # no key to protect (and none to check against)
        if not proof.check(self._key, nonce, body.get("proof")):
            version = body.get("version")
            if body.get("proof") is None and isinstance(version, str) and version != __version__:
                # An rbee daemon of another version (before the proof existed).
                raise VersionMismatch(
                    f"keeper is {__version__}, the {self.what} on {self.node} "
                    f"({self.base_url}) is {version}",
                    hint=f"upgrade the node: rbee nodes install {self.node} --upgrade",
                    details={"keeper": __version__, "daemon": version, "node": self.node},
                )
            raise self._foreign("it could not prove it holds the node's API key")
        self._auth = {"Authorization": f"Bearer {self._key}"}
        return body

    def _check_owner(self) -> None:
        url = httpx.URL(self.base_url)
        if url.host not in ("127.0.0.1", "localhost", "::1") or url.port is None:
            return
        uid = sockowner.listener_uid(url.port)
        if uid is not None and uid != os.getuid():
            raise self._foreign(
                f"port {url.port} is held by user {sockowner.user_name(uid)}, not by you",
                owner=sockowner.user_name(uid),
            )

    def _foreign(self, why: str, owner: str | None = None) -> ForeignListener:
        details: dict[str, Any] = {"address": self.base_url, "node": self.node}
        if owner is not None:
            details["owner"] = owner
        return ForeignListener(
            f"{self.base_url} is not the {self.what} of {self.node}: {why}; "
            "the API key was not sent",
            hint="another program holds that port: stop it, or give the node another "
            "hive_port in the inventory",
            details=details,
        )

    async def _headers(self) -> dict[str, str]:
        if self._key is None:
            raise ConfigError(
                f"no API key for {self.node}: {self.key_file} is missing or empty",
                hint=f"reinstall the node's key: rbee nodes install {self.node}",
                details={"node": self.node, "key_file": self.key_file},
            )
        if self._auth is None:
            await self.prove()
        return self._auth or {}

    async def aclose(self) -> None:
        await self.http.aclose()

    @contextlib.contextmanager
    def _mapped(self) -> Iterator[None]:
        """Turn transport failures and error envelopes into RbeeErrors."""
        try:
            yield
        except InvalidApiKey as exc:
            raise InvalidApiKey(
                f"{self.node} refused the API key ({exc.message})",
                hint=f"the key lives on {self.node} in {self.key_file}; "
                f"the keeper must send the same key",
                details={"node": self.node, "key_file": self.key_file},
            ) from None
        except RbeeError:
            raise
        except httpx.ConnectError as exc:
            refused = _refused(exc)
            raise Unreachable(
                f"nothing listens at {self.base_url} (connection refused)"
                if refused
                else f"cannot connect to {self.base_url}: {_reason(exc)}",
                details={"address": self.base_url, "refused": refused},
            ) from None
        except httpx.TimeoutException as exc:
            raise Unreachable(
                f"{self.base_url} did not answer in time ({type(exc).__name__})",
                details={"address": self.base_url},
            ) from None
        except httpx.HTTPError as exc:
            raise Unreachable(
                f"connection to {self.base_url} failed: {_reason(exc)}",
                details={"address": self.base_url},
            ) from None
        except ValidationError as exc:  # an answer of another schema: another version
            raise VersionMismatch(
                f"the {self.what} on {self.node} ({self.base_url}) answered in a form "
                f"this keeper ({__version__}) does not know: {_reason(exc)}",
                hint=f"install the keeper's version on the node: rbee nodes install {self.node} --upgrade",
                details={"keeper": __version__, "node": self.node},
            ) from None

    def _check(self, r: httpx.Response) -> None:
        if r.status_code >= 400:
            try:
                body: Any = r.json()
            except ValueError:
                body = r.text
            raise from_envelope(body, status=r.status_code, node=self.node)

    async def call(
        self, method: str, path: str, model: type[M], body: BaseModel | None = None,
        timeout: float | None = None,
    ) -> M:  # fmt: skip
        with self._mapped():
            kwargs: dict[str, Any] = {}
            if body is not None:
                kwargs["json"] = _body(body)
            if timeout is not None:
                kwargs["timeout"] = timeout
            r = await self.http.request(method, path, headers=await self._headers(), **kwargs)
            self._check(r)
            return model.model_validate(r.json())

    async def stream(
        self, method: str, path: str, body: BaseModel | None = None
    ) -> AsyncGenerator[dict[str, Any] | str, None]:
        """Yield SSE payloads; an error answer raises before the first one."""
        kwargs: dict[str, Any] = {"timeout": httpx.Timeout(None, connect=3.0)}
        if body is not None:
            kwargs["json"] = _body(body)
        with self._mapped():
            headers = await self._headers()
            async with self.http.stream(method, path, headers=headers, **kwargs) as r:
                if r.status_code >= 400:
                    await r.aread()
                    self._check(r)
                async for event in sse.decode(r.aiter_lines()):
                    yield event


def _body(body: BaseModel) -> dict[str, Any]:
    """The JSON of a request: the fields it sets, None included (max_tokens=None
    means "until the end of the turn", not "the default cap")."""
    return body.model_dump(mode="json", exclude_unset=True)


def _refused(exc: BaseException) -> bool:
    """Whether a connect error is a refusal (nothing listens), through its causes."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, ConnectionRefusedError) or "refused" in str(seen).lower():
            return True
        if isinstance(seen, BaseExceptionGroup):
            return any(_refused(e) for e in seen.exceptions)
        seen = seen.__cause__ or seen.__context__
    return False


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


class HiveClient(Endpoint):
    what = "rbee-hive"

    async def health(self, timeout: float = 3.0) -> HiveHealth:
        """The hive's health, after it proved it is ours (no key is sent here)."""
        body = await self.prove(timeout)
        try:
            return HiveHealth.model_validate(body)
        except ValidationError:
            raise self._foreign("its /v1/health answer is not rbee-hive's") from None

    async def resources(self) -> Resources:
        return await self.call("GET", "/v1/resources", Resources)

    async def models(self) -> ModelList:
        return await self.call("GET", "/v1/models", ModelList)

    async def ensure_model(self, reference: str) -> DownloadStarted:
        body = DownloadRequest(reference=reference)
        return await self.call("POST", "/v1/models/download", DownloadStarted, body)

    async def download_progress(self, job_id: str) -> AsyncGenerator[DownloadProgress, None]:
        path = f"/v1/models/download/{job_id}/progress"
        async with contextlib.aclosing(self.stream("GET", path)) as events:
            async for event in events:
                if isinstance(event, dict):
                    yield DownloadProgress.model_validate(event)

    async def register_model(self, req: RegisterRequest) -> ModelInfo:
        return await self.call("POST", "/v1/models/register", ModelInfo, req, timeout=600.0)

    async def delete_model(self, model_id: str) -> Ack:
        return await self.call("DELETE", f"/v1/models/{model_id}", Ack)

    async def spawn(self, req: SpawnRequest) -> WorkerInfo:
        return await self.call("POST", "/v1/workers/spawn", WorkerInfo, req)

    async def count_tokens(self, model_id: str, text: str) -> TokenCount:
        body = TokenCountRequest(text=text)
        return await self.call("POST", f"/v1/models/{model_id}/tokens", TokenCount, body, timeout=120.0)

    async def workers(self) -> WorkerList:
        return await self.call("GET", "/v1/workers", WorkerList)

    async def worker(self, worker_id: str) -> WorkerInfo:
        return await self.call("GET", f"/v1/workers/{worker_id}", WorkerInfo)

    async def shutdown_worker(self, worker_id: str) -> Ack:
        return await self.call("POST", f"/v1/workers/{worker_id}/shutdown", Ack, timeout=30.0)


class WorkerClient(Endpoint):
    what = "rbee worker"

    async def ready(self, timeout: float = 3.0) -> WorkerReady:
        return await self.call("GET", "/v1/ready", WorkerReady, timeout=timeout)

    async def loading_progress(self) -> AsyncGenerator[LoadingProgress, None]:
        async with contextlib.aclosing(self.stream("GET", "/v1/loading/progress")) as events:
            async for event in events:
                if isinstance(event, dict):
                    yield LoadingProgress.model_validate(event)

    async def cancel(self, request_id: str, timeout: float = 5.0) -> CancelAck:
        return await self.call("DELETE", f"/v1/inference/{request_id}", CancelAck, timeout=timeout)
