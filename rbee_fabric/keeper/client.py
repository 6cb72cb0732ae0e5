"""HTTP clients for the hive and worker APIs; httpx errors are mapped here, once."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Iterator
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from rbee_fabric import sse
from rbee_fabric.errors import ConnectionTimeout, InvalidApiKey, RbeeError, from_envelope
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
    """One daemon's base URL, API key, and who to name in errors."""

    def __init__(self, base_url: str, api_key: str | None, node: str, key_file: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.node = node
        self.key_file = key_file
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # Plain HTTP only (loopback, SSH tunnels, the LAN): verify=False skips
        # loading the CA bundle, which costs ~0.2 s per client.
        self.http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(30.0, connect=3.0),
            verify=False,
        )

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
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise Unreachable(
                f"cannot connect to {self.base_url}: {_reason(exc)}",
                details={"address": self.base_url},
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

    @staticmethod
    def _check(r: httpx.Response) -> None:
        if r.status_code >= 400:
            try:
                body: Any = r.json()
            except ValueError:
                body = r.text
            raise from_envelope(body, status=r.status_code)

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
            r = await self.http.request(method, path, **kwargs)
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
            async with self.http.stream(method, path, **kwargs) as r:
                if r.status_code >= 400:
                    await r.aread()
                    self._check(r)
                async for event in sse.decode(r.aiter_lines()):
                    yield event


def _body(body: BaseModel) -> dict[str, Any]:
    """The JSON of a request: the fields it sets, None included (max_tokens=None
    means "until the end of the turn", not "the default cap")."""
    return body.model_dump(mode="json", exclude_unset=True)


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


class HiveClient(Endpoint):
    async def health(self, timeout: float = 3.0) -> HiveHealth:
        return await self.call("GET", "/v1/health", HiveHealth, timeout=timeout)

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
    async def ready(self, timeout: float = 3.0) -> WorkerReady:
        return await self.call("GET", "/v1/ready", WorkerReady, timeout=timeout)

    async def loading_progress(self) -> AsyncGenerator[LoadingProgress, None]:
        async with contextlib.aclosing(self.stream("GET", "/v1/loading/progress")) as events:
            async for event in events:
                if isinstance(event, dict):
                    yield LoadingProgress.model_validate(event)

    async def cancel(self, request_id: str, timeout: float = 5.0) -> CancelAck:
        return await self.call("DELETE", f"/v1/inference/{request_id}", CancelAck, timeout=timeout)
