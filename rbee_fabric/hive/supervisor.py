"""Spawn, watch, reap and stop worker processes on one node."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from rbee_fabric import cpufeatures, proof
from rbee_fabric.errors import WorkerNotFound, WorkerStartFailed
from rbee_fabric.hive import safemode
from rbee_fabric.hive.forker import Template, WorkerProc
from rbee_fabric.hive.speculate import LoadSpec, Speculation, pick_port, ttl_s
from rbee_fabric.schemas import ModelInfo, WorkerInfo, WorkerReadyCallback

log = logging.getLogger("rbee.hive")

STOP_GRACE_S = 5.0
TEMPLATE_WARM_DELAY_S = 5.0
KILL_GRACE_S = 3.0


@dataclass
class SupervisorSettings:
    host: str
    hive_url: str
    api_key: str
    logs_dir: Path
    key_file: str
    idle_timeout_s: float = 300.0
    port_range: tuple[int, int] = (9300, 9399)
    python: str = sys.executable
    safe_store: safemode.SafeModeStore | None = None
    template: Template | None = None  # workers are forked from it when set
    speculation: Speculation | None = None  # a worker started before the hive's imports


@dataclass
class _Worker:
    info: WorkerInfo
    proc: WorkerProc
    log_path: Path
    watcher: asyncio.Task[None] | None = None
    stopping: bool = False
    probe_failures: int = 0
    loaded: asyncio.Event = field(default_factory=asyncio.Event)
    cmd: list[str] = field(default_factory=list)
    safe_policy: str = "auto"
    crashed_with: str | None = None  # the engine signal that caused a safe-mode restart


def tail(path: Path, lines: int = 20) -> list[str]:
    """The last lines of a log file (empty when unreadable)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


def free_port(host: str, lo: int, hi: int) -> int:
    """A port of [lo, hi] that binds right now on host; else one the OS picks."""
    port = pick_port(host, lo, hi)
    if port is None:
        raise WorkerStartFailed(f"no free port on {host}")
    return port


class Supervisor:
    """The hive's worker table; every worker runs in its own process group."""

    def __init__(self, settings: SupervisorSettings) -> None:
        self.s = settings
        self.workers: dict[str, _Worker] = {}
        self.exited: OrderedDict[str, dict[str, object]] = OrderedDict()
        # No default key: it goes only to a worker that proved it holds it (_keyed).
        # Plain HTTP to local workers: no TLS context to build at start (verify=False).
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(5.0, connect=2.0), verify=False)
        self._reaper: asyncio.Task[None] | None = None
        self._stopping: set[asyncio.Task[bool]] = set()
        self._speculation = settings.speculation
        self._expiry: asyncio.Task[None] | None = None

    # ------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap_idle())
        if self._speculation is not None:
            self._expiry = asyncio.create_task(self._expire_speculation(self._speculation))

    async def close(self) -> None:
        for task in (self._reaper, self._expiry):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._drop_speculation("the hive is stopping")
        await asyncio.gather(*(self.stop(wid, reason="hive stopping") for wid in list(self.workers)))
        await self._client.aclose()

    # ----------------------------------------------------------------- spawn

    async def spawn(
        self, model: ModelInfo, backend: str, device: int, n_ctx: int, *,
        safe_mode: bool = False, safe_reason: str | None = None, safe_policy: str = "auto",
        max_queue: int = 64,
    ) -> WorkerInfo:  # fmt: skip
        pre = await self._take_speculation(
            LoadSpec(model.path, n_ctx, backend, device if backend != "cpu" else 0, safe_mode),
            max_queue,
        )
        if pre is not None and pre.identity is not None and not pre.claim():
            # Dead since: a new worker on a new port (its port may be why it died).
            await asyncio.to_thread(pre.cancel, "it exited before it was adopted")
            pre = None
        wid = pre.wid if pre is not None else f"w-{uuid.uuid4().hex[:10]}"
        try:
            # A worker told where to listen before this hive was up keeps that port.
            given = pre.identity if pre is not None and pre.identity is not None else None
            port = int(given["port"]) if given is not None else free_port(self.s.host, *self.s.port_range)
            self.s.logs_dir.mkdir(parents=True, exist_ok=True)
        except BaseException:
            if pre is not None:  # taken, so nobody else would end it
                await asyncio.to_thread(pre.cancel, "its worker could not be started")
            raise
        host = f"[{self.s.host}]" if ":" in self.s.host else self.s.host
        url = f"http://{host}:{port}"
        log_path = self.s.logs_dir / f"worker-{wid}.log"
        cmd = [
            self.s.python, "-m", "rbee_fabric.worker",
            "--worker-id", wid, "--model", model.path,
            "--host", self.s.host, "--port", str(port),
            "--hive-url", self.s.hive_url,
            "--backend", backend, "--device", str(device), "--n-ctx", str(n_ctx),
            "--key-file", self.s.key_file, "--max-queue", str(max_queue),
        ]  # fmt: skip
        identity = {"host": self.s.host, "port": port, "hive_url": self.s.hive_url,
                    "key_file": self.s.key_file, "max_queue": max_queue}  # fmt: skip
        proc: WorkerProc
        if pre is not None and (pre.claim() if given is not None else pre.adopt(identity)):
            proc = pre.process()
            log.info("adopted speculative worker %s (pid %d): its model is loaded or loading",
                     wid, proc.pid)  # fmt: skip
        else:
            if pre is not None:
                await asyncio.to_thread(pre.cancel, "it exited before it was adopted")
            proc = await self._launch([*cmd, "--safe-mode"] if safe_mode else cmd, log_path)
        info = WorkerInfo(
            id=wid, model_id=model.id, model_reference=model.reference, url=url,
            pid=proc.pid, backend=backend, device=device, state="starting",
            started_at=time.time(), safe_mode=safe_mode, safe_mode_reason=safe_reason,
            n_ctx=n_ctx,
        )  # fmt: skip
        worker = _Worker(info=info, proc=proc, log_path=log_path, cmd=cmd, safe_policy=safe_policy)
        self.workers[wid] = worker
        worker.watcher = asyncio.create_task(self._watch(worker))
        log.info("spawned worker %s pid %d on %s for %s", wid, proc.pid, url, model.reference)
        return info

    # ----------------------------------------------------- speculative worker

    def speculating(self, model_path: str, backend: str, device: int, n_ctx: int) -> bool:
        """Whether a speculative worker holds this model already (its memory is taken)."""
        pre = self._speculation
        return pre is not None and pre.spec[:4] == (
            model_path, n_ctx, backend, device if backend != "cpu" else 0
        )

    async def _take_speculation(self, spec: LoadSpec, max_queue: int) -> Speculation | None:
        """The speculative worker when it loads exactly spec; else it is ended, unless it
        was placed before the hive was up: the keeper that started the hive may be using
        it, so it stays until claimed or its time is up."""
        pre = self._speculation
        if pre is None:
            return None
        placed = pre.identity is not None
        if placed and pre.proc.poll() is not None:  # it died: its port is free to reuse
            self._speculation = None
            await asyncio.to_thread(pre.cancel, "it exited before it was adopted")
            return None
        if pre.spec == spec and (not placed or pre.identity["max_queue"] == max_queue):  # type: ignore[index]
            self._speculation = None
            if self._expiry is not None:
                self._expiry.cancel()
            return pre
        if placed:
            return None
        self._speculation = None
        if self._expiry is not None:
            self._expiry.cancel()
        await asyncio.to_thread(pre.cancel, f"the hive decided on {spec}, not {pre.spec}")
        self._warm_template()
        return None

    async def _drop_speculation(self, why: str) -> None:
        pre, self._speculation = self._speculation, None
        if pre is not None:
            await asyncio.to_thread(pre.cancel, why)
        self._warm_template()

    def _warm_template(self) -> None:
        """The template waits to import while a speculative worker loads, and a little
        after (TEMPLATE_WARM_DELAY_S): the first request's prompt needs both cores."""
        if self.s.template is not None:
            asyncio.get_running_loop().call_later(TEMPLATE_WARM_DELAY_S, self.s.template.warm)

    async def _expire_speculation(self, pre: Speculation) -> None:
        ttl = ttl_s()
        await asyncio.sleep(max(0.0, ttl - (time.monotonic() - pre.started)))
        if self._speculation is pre:
            await self._drop_speculation(f"nobody asked for it in {ttl:g} s")

    async def _launch(self, cmd: list[str], log_path: Path) -> WorkerProc:
        env = {**os.environ, "RBEE_API_KEY": self.s.api_key, "PYTHONUNBUFFERED": "1",
               "RBEE_HIVE_PID": str(os.getpid())}  # the worker ends when the hive does  # fmt: skip
        if self.s.template is not None:  # a fork of the pre-imported template (template.py)
            try:
                forked = await self.s.template.spawn(cmd[3:], env, str(log_path))
            except OSError as exc:
                raise WorkerStartFailed(f"cannot start the worker: {exc}") from exc
            if forked is not None:
                return forked
        with open(log_path, "ab") as logf:
            try:
                return await asyncio.create_subprocess_exec(
                    *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=logf,
                    stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True,
                )  # fmt: skip
            except OSError as exc:
                raise WorkerStartFailed(f"cannot start the worker: {exc}") from exc

    async def _watch(self, w: _Worker) -> None:
        """Notice a worker's exit, whoever caused it, and forget it.

        An engine crash while loading gets one restart in safe mode, under the
        same id and URL, so whoever follows its loading just keeps following.
        """
        code = await w.proc.wait()
        while sig := safemode.should_retry(
            w.safe_policy, safe_mode=w.info.safe_mode, state=w.info.state,
            stopping=w.stopping, returncode=code,
        ):  # fmt: skip
            if not await self._restart_safe(w, sig):
                break
            code = await w.proc.wait()
        self.workers.pop(w.info.id, None)
        reason = "stopped" if w.stopping else "exited unexpectedly"
        if not w.stopping:
            log.warning("worker %s (pid %d) %s with code %s", w.info.id, w.info.pid, reason, code)
        self.exited[w.info.id] = {
            "exit_code": code,
            "reason": reason,
            "state_before": w.info.state,
            "signal": safemode.signal_name(code),
            "safe_mode": w.info.safe_mode,
            "log_tail": tail(w.log_path),
            "log_file": str(w.log_path),
        }
        while len(self.exited) > 100:
            self.exited.popitem(last=False)

    async def _restart_safe(self, w: _Worker, sig: str) -> bool:
        """Start a worker that crashed while loading once more, in safe mode."""
        cpu = cpufeatures.detect()
        log.warning(
            "worker %s (pid %d) crashed with %s while loading (CPU: %s); llama.cpp's "
            "AMX/repacking kernels are a known cause on some CPUs: restarting it once in safe mode",
            w.info.id, w.info.pid, sig, f"{cpu.model}, {cpu.summary()}" if cpu else "unknown",
        )  # fmt: skip
        with contextlib.suppress(OSError), open(w.log_path, "a", encoding="utf-8") as fh:
            fh.write(f"--- rbee-hive: worker crashed with {sig}; restarting in safe mode ---\n")
        try:
            w.proc = await self._launch([*w.cmd, "--safe-mode"], w.log_path)
        except WorkerStartFailed as exc:
            log.error("safe-mode restart of worker %s failed: %s", w.info.id, exc.message)
            return False
        w.crashed_with = sig
        w.info = w.info.model_copy(update={
            "pid": w.proc.pid, "state": "starting", "safe_mode": True,
            "safe_mode_reason": safemode.crash_reason(sig),
        })  # fmt: skip
        if w.stopping:  # stop() came while it was starting: it signalled the dead process
            self._signal(w, signal.SIGTERM)
        return True

    # ----------------------------------------------------------------- state

    def on_callback(self, cb: WorkerReadyCallback) -> None:
        w = self.workers.get(cb.worker_id)
        if w is None:
            raise WorkerNotFound(f"unknown worker {cb.worker_id!r}")
        w.info = w.info.model_copy(update={"state": cb.state})
        if cb.state != "loading":
            w.loaded.set()
            self._warm_template()
        if cb.state == "idle" and w.crashed_with and self.s.safe_store is not None:
            rec = self.s.safe_store.record(w.crashed_with, w.info.model_reference)
            w.crashed_with = None
            log.warning("safe mode works here; recorded for %s in %s: later workers start "
                        "in safe mode (%s)", self.s.safe_store.build, self.s.safe_store.path,
                        rec["reason"])  # fmt: skip

    def list(self) -> list[WorkerInfo]:
        return [w.info for w in self.workers.values()]

    def get(self, wid: str) -> WorkerInfo:
        if (w := self.workers.get(wid)) is not None:
            return w.info
        if (gone := self.exited.get(wid)) is not None:
            raise WorkerNotFound(
                f"worker {wid} {gone['reason']} (exit code {gone['exit_code']})",
                details={"exited": gone},
            )
        raise WorkerNotFound(f"no worker {wid!r} on this node", details={"worker_id": wid})

    # ------------------------------------------------------------------ stop

    async def stop(self, wid: str, *, reason: str = "requested") -> bool:
        """Ask the worker to leave, then SIGTERM, then SIGKILL its process group."""
        w = self.workers.get(wid)
        if w is None:
            self.get(wid)  # raises WorkerNotFound with what is known
            return False
        if w.stopping:
            await self._wait_exit(w, STOP_GRACE_S + KILL_GRACE_S + 1)
            return True
        w.stopping = True
        w.info = w.info.model_copy(update={"state": "stopping"})
        log.info("stopping worker %s (%s)", wid, reason)
        with contextlib.suppress(httpx.HTTPError):
            if headers := await self._keyed(w.info.url):
                await self._client.post(f"{w.info.url}/v1/admin/shutdown", timeout=2.0, headers=headers)
        if not await self._wait_exit(w, STOP_GRACE_S):
            self._signal(w, signal.SIGTERM)
            if not await self._wait_exit(w, KILL_GRACE_S):
                self._signal(w, signal.SIGKILL)
                await self._wait_exit(w, 10.0)
        return True

    async def _wait_exit(self, w: _Worker, timeout: float) -> bool:
        if w.watcher is None:
            return True
        try:
            await asyncio.wait_for(asyncio.shield(w.watcher), timeout)
        except TimeoutError:
            return False
        return True

    async def _keyed(self, url: str) -> dict[str, str]:
        """The key header for url, or {} when its listener cannot prove it holds the key."""
        nonce = proof.new_nonce()
        try:
            r = await self._client.get(f"{url}/v1/health", params={"nonce": nonce}, timeout=2.0)
            given = r.json().get("proof")
        except (httpx.HTTPError, ValueError, AttributeError):
            return {}
        if not proof.check(self.s.api_key, nonce, given if isinstance(given, str) else None):
            log.warning("the listener at %s is not our worker: the key was not sent", url)
            return {}
        return {"Authorization": f"Bearer {self.s.api_key}"}

    @staticmethod
    def _signal(w: _Worker, sig: signal.Signals) -> None:
        if w.proc.returncode is not None:
            return  # already reaped: the pid may belong to someone else now
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(w.proc.pid, sig)

    # ------------------------------------------------------------ idle reaper

    async def _reap_idle(self) -> None:
        period = max(0.5, min(5.0, self.s.idle_timeout_s / 4))
        while True:
            await asyncio.sleep(period)
            for wid, w in list(self.workers.items()):
                if w.stopping or w.info.state not in ("idle", "busy"):
                    continue
                try:
                    if not (headers := await self._keyed(w.info.url)):
                        raise httpx.ConnectError("not our worker on that port")
                    r = await self._client.get(f"{w.info.url}/v1/ready", timeout=2.0, headers=headers)
                    ready = r.json()
                except (httpx.HTTPError, ValueError):
                    w.probe_failures += 1
                    continue
                w.probe_failures = 0
                idle = ready.get("idle_seconds")
                w.info = w.info.model_copy(
                    update={"state": ready.get("state", w.info.state), "idle_seconds": idle,
                            "queued": int(ready.get("queued", 0))}
                )  # fmt: skip
                if idle is not None and idle > self.s.idle_timeout_s:
                    task = asyncio.create_task(self.stop(wid, reason=f"idle for {idle:.0f} s"))
                    self._stopping.add(task)
                    task.add_done_callback(self._stopping.discard)
