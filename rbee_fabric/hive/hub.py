"""Hugging Face downloads: pick the file, fetch it resumably, verify its hash.

The only module that imports huggingface_hub. It resolves repositories and
files (honouring HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE) and builds the
URL and auth headers; the bytes are streamed with httpx into a `.part` file
so the hive can report progress per chunk, resume with a Range request after
an interruption, and check the sha256 before anything enters the catalog.

Both steps, asking the hub and fetching the bytes, are tried ATTEMPTS times
with exponential backoff (RBEE_DOWNLOAD_BACKOFF_S, 1 s: 1, 2, 4, 8, 16 s);
each retry is announced through `notify` ("retry 2/6 in 2 s: REASON"), which
the provisioner turns into a note of the download's progress stream.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from rbee_fabric.errors import DownloadFailed, ModelNotFound
from rbee_fabric.modelref import ModelRef

ATTEMPTS = 6
PREFERRED_QUANT = "Q4_K_M"


def _backoff_s() -> float:
    return float(os.environ.get("RBEE_DOWNLOAD_BACKOFF_S", "1.0"))


def _read_timeout_s() -> float:
    return float(os.environ.get("RBEE_DOWNLOAD_READ_TIMEOUT_S", "30"))


@dataclass(frozen=True)
class HubFile:
    repo: str
    filename: str
    size: int
    sha256: str | None
    url: str
    headers: dict[str, str]


def choose_file(files: list[str], ref: ModelRef) -> str:
    """The .gguf file a reference means (Q4_K_M when the repo offers a choice)."""
    ggufs = sorted(f for f in files if f.lower().endswith(".gguf"))
    if ref.filename:
        if ref.filename in files:
            return ref.filename
        raise ModelNotFound(
            f"{ref.repo} has no file {ref.filename!r}",
            hint="its .gguf files: " + (", ".join(ggufs) or "none"),
            details={"reference": ref.raw, "files": ggufs},
        )
    if not ggufs:
        raise ModelNotFound(
            f"{ref.repo} has no .gguf file",
            hint="rbee runs GGUF models; look for a -GGUF repository",
            details={"reference": ref.raw},
        )
    want = ref.quant or (PREFERRED_QUANT if len(ggufs) > 1 else None)
    if want is None:
        return ggufs[0]
    token = re.compile(rf"(^|[^A-Za-z0-9]){re.escape(want)}([^A-Za-z0-9]|$)", re.IGNORECASE)
    matches = [f for f in ggufs if token.search(Path(f).name)]
    if matches:
        return matches[0]
    if ref.quant:
        raise ModelNotFound(
            f"{ref.repo} has no {ref.quant} file",
            hint="its .gguf files: " + ", ".join(ggufs),
            details={"reference": ref.raw, "files": ggufs},
        )
    return ggufs[0]


Notify = Callable[[str], Awaitable[None]]
"""Tells the user something while a download goes on (a retry and its reason)."""


def endpoint() -> str:
    """The hub this node asks: HF_ENDPOINT, else the Hugging Face hub."""
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or "https://huggingface.co"


class Unreachable(Exception):
    """The hub did not answer (network, DNS, timeout, HTTP 5xx or 429): worth another try."""


def describe(exc: BaseException) -> str:
    """An exception as one line: its class and its message."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def resolve_retrying(ref: ModelRef, notify: Notify, attempts: int = ATTEMPTS) -> HubFile:
    """`resolve`, tried `attempts` times while the hub is unreachable; each retry announced."""
    started, reason = time.monotonic(), ""
    for attempt in range(1, attempts + 1):
        try:
            return await asyncio.to_thread(resolve, ref)
        except Unreachable as exc:
            reason = str(exc)
            if attempt < attempts:
                delay = _backoff_s() * 2 ** (attempt - 1)
                await notify(f"retry {attempt + 1}/{attempts} in {delay:g} s: {reason}")
                await asyncio.sleep(delay)
    raise DownloadFailed(
        f"cannot reach the model hub at {endpoint()} for {ref.raw}: tried {attempts} times "
        f"over {time.monotonic() - started:.0f} s; the last error: {reason}",
        hint=_unreachable_hint(),
        details={"attempts": attempts, "last_error": reason, "endpoint": endpoint()},
    )


def _unreachable_hint() -> str:
    mirror = f"HF_ENDPOINT is {endpoint()}: is it right?" if os.environ.get("HF_ENDPOINT") else (
        "behind a mirror, set HF_ENDPOINT for the node's hive"
    )
    return (
        f"check the node's network and DNS ({mirror}); to run only models the node "
        "already has, set HF_HUB_OFFLINE=1; or copy the model from a machine that has "
        "it: rbee models push --node NODE FILE.gguf"
    )


def resolve(ref: ModelRef) -> HubFile:
    """Ask the hub which file to fetch, its size and hash (blocking); Unreachable to retry."""
    import httpx2
    from huggingface_hub import HfApi, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

    assert ref.repo is not None
    api = HfApi()
    try:
        info = api.model_info(ref.repo, files_metadata=True)
    except OfflineModeIsEnabled:
        raise ModelNotFound(
            f"cannot fetch {ref.raw}: the node is in offline mode (HF_HUB_OFFLINE)",
            hint="copy the model to the node instead: rbee models push --node NODE FILE.gguf",
        ) from None
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status is None or status >= 500 or status == 429:
            raise Unreachable(describe(exc)) from None
        raise _hub_error(exc, ref) from None
    except (httpx.HTTPError, httpx2.HTTPError, OSError) as exc:
        # huggingface_hub speaks httpx2, the downloads below httpx: both are networks.
        raise Unreachable(describe(exc)) from None
    siblings = {s.rfilename: s for s in info.siblings or []}
    name = choose_file(list(siblings), ref)
    s = siblings[name]
    sha = s.lfs.sha256 if s.lfs is not None else None
    size = s.size if s.size is not None else (s.lfs.size if s.lfs is not None else 0)
    url = hf_hub_url(ref.repo, name)
    return HubFile(ref.repo, name, int(size or 0), sha, url, build_hf_headers())


def _hub_error(exc: Exception, ref: ModelRef) -> Exception:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in (401, 403):
        return ModelNotFound(
            f"{ref.repo} is private or gated, or does not exist (HTTP {status})",
            hint="if it is private or gated, set HF_TOKEN for the node's hive "
            "(a token with access to the repo), then restart the hive",
            details={"reference": ref.raw, "status": status},
        )
    if status == 404:
        return ModelNotFound(
            f"no repository {ref.repo} on the Hugging Face hub",
            hint="check the spelling: hf:ORG/REPO, e.g. hf:TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF",
            details={"reference": ref.raw, "status": status},
        )
    return DownloadFailed(f"the hub answered HTTP {status} for {ref.raw}: {exc}")


Progress = Callable[[int, int, float], Awaitable[None]]


class TooLarge(Exception):
    """The server sent more than the download may hold."""


async def fetch(
    f: HubFile, part: Path, progress: Progress, limit: int | None = None, notify: Notify | None = None
) -> int:
    """Download into `part`, resuming what is there; returns the bytes resumed from.

    Up to ATTEMPTS tries with exponential backoff, each retry announced to
    `notify`; an HTTP 4xx is final.
    The file never grows past the announced size, nor past `limit` bytes
    (the bound for a file whose size the hub did not announce): TooLarge.
    """
    cap = f.size or limit
    resumed_from = part.stat().st_size if part.exists() else 0
    last_error = ""
    timeout = httpx.Timeout(10.0, read=_read_timeout_s())
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=True, headers=f.headers) as client:
        for attempt in range(1, ATTEMPTS + 1):
            have = part.stat().st_size if part.exists() else 0
            if f.size and have >= f.size:
                return resumed_from
            headers = {"Range": f"bytes={have}-"} if have else {}
            try:
                async with client.stream("GET", f.url, headers=headers) as r:
                    if r.status_code in (401, 403, 404):
                        raise ModelNotFound(
                            f"{f.repo}/{f.filename}: HTTP {r.status_code}",
                            hint="set HF_TOKEN if the repo is private or gated",
                        )
                    if r.status_code >= 400:
                        raise httpx.HTTPStatusError(f"HTTP {r.status_code}", request=r.request, response=r)
                    if r.status_code == 200 and have:
                        have = 0  # the server ignored the Range: start over
                    await _write(r, part, have, f.size, progress, cap)
                if not f.size or part.stat().st_size >= f.size:
                    return resumed_from
                last_error = "the connection ended before the whole file arrived"
            except (httpx.HTTPError, OSError) as exc:
                last_error = describe(exc)
            if attempt < ATTEMPTS:
                delay = _backoff_s() * 2 ** (attempt - 1)
                if notify is not None:
                    await notify(f"retry {attempt + 1}/{ATTEMPTS} in {delay:g} s: {last_error}")
                await asyncio.sleep(delay)
    raise DownloadFailed(
        f"downloading {f.repo}/{f.filename} failed after {ATTEMPTS} attempts: {last_error}",
        hint="run the pull again: it resumes where it stopped; if it fails again, check the "
        f"node's network ({endpoint()}) or copy the model from a machine that has it: "
        "rbee models push --node NODE FILE.gguf",
        details={"attempts": ATTEMPTS, "last_error": last_error},
    )


async def _write(
    r: httpx.Response, part: Path, have: int, total: int, progress: Progress, cap: int | None
) -> None:
    started, done = time.monotonic(), have
    last_report = 0.0
    with open(part, "r+b" if have else "wb") as fh:
        fh.seek(have)
        fh.truncate()
        async for chunk in r.aiter_bytes(1 << 16):
            if cap is not None and done + len(chunk) > cap:
                raise TooLarge(done + len(chunk))
            fh.write(chunk)
            done += len(chunk)
            now = time.monotonic()
            if now - last_report > 0.1:
                last_report = now
                fh.flush()
                rate = (done - have) / max(now - started, 1e-6)
                await progress(done, total, rate)
    await progress(done, total, (done - have) / max(time.monotonic() - started, 1e-6))
