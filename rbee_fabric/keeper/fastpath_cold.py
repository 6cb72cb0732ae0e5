"""A cold `rbee infer` on the lean path: the hive this keeper just started, its worker.

When the lean path started the hive itself (fastpath_hive.start_early, with the
request as the speculative worker's hint), the full path would now load typer,
httpx and pydantic (~1 s of CPU) while the hive imports its web stack and the
worker loads the model on the same cores. This does the few requests the
common case needs with the standard library instead: wait for the hive, find
the model in its catalog, ask for the worker (the hive adopts the speculative
one), record it in the keeper's registry, follow its loading, and hand a Plan
to the lean path's streaming.

When the hive told its speculative worker where to listen before its own
imports (hive/speculate.py), it writes that worker's record on a pipe this
keeper reads: the keeper then follows the worker and streams from it at once,
and asks the hive for it (the spawn that adopts it) from a thread, finished
once the answer is out; the hive imports its web stack at low priority
meanwhile, so the load gets the cores.

Anything unusual (the model not in the catalog, a prompt that may not fit,
an error answer, a worker that fails or takes long to load) raises Fallback:
the full path takes over and reports it as always. Until the worker is asked
for nothing is printed; after that, a fallback may repeat what the full path
says about that same worker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from rbee_fabric import paths
from rbee_fabric.keeper import fastpath
from rbee_fabric.keeper.fastpath_args import LeanArgs
from rbee_fabric.keeper.fastpath_hive import EarlyHive, answers
from rbee_fabric.keeper.fastpath_net import Daemon, Fallback
from rbee_fabric.keeper.fastpath_node import LocalNode
from rbee_fabric.keeper.fastpath_out import Output

HIVE_WAIT_S = 20.0
CLAIM_WAIT_S = 55.0  # within the hive's RBEE_SPECULATION_TTL_S (60 s) for an unclaimed worker
LOAD_WAIT_S = 60.0  # longer loads: the full path follows them with its progress bar
FRAMING_PER_MESSAGE = 16  # as contextfit.FRAMING_PER_MESSAGE (a test holds them equal)


def plan_cold(a: LeanArgs, node: LocalNode, out: Output, early: EarlyHive | None = None) -> fastpath.Plan:
    """A ready worker for the request on the hive this keeper started; Fallback if not."""
    try:
        return _plan_cold(a, node, out, early)
    finally:
        if early is not None:
            early.close()  # read, or not needed


def _plan_cold(a: LeanArgs, node: LocalNode, out: Output, early: EarlyHive | None) -> fastpath.Plan:
    if node.max_replicas > 1:
        raise Fallback("several replicas: the hive picks the worker")
    ref = _ref(a)
    api_key = paths.read_api_key()
    if not api_key:
        raise Fallback("no API key")
    rec = early.record() if early is not None else None
    if early is not None and rec is not None and _surely_fits(a, int(rec["n_ctx"])):
        return _plan_preloaded(a, node, out, ref, api_key, rec, early.proc)
    _wait_hive(node.hive_port)
    db = fastpath.registry()
    try:
        hive = Daemon(f"http://127.0.0.1:{node.hive_port}", api_key)
        try:
            hive.prove()
            model = _catalogued(hive, ref)
            n_ctx = min(a.ctx_size, model.get("context_length") or a.ctx_size)
            if not _surely_fits(a, n_ctx):
                raise Fallback("the prompt may not fit: the full path counts its tokens")
            info = _spawn(hive, a, node, model["id"])
            if not info.get("spawned"):
                raise Fallback("a worker someone else started: the full path follows it")
            try:
                out.info(f"starting a worker for {ref} on {node.name}")
                _register(db, info, node.name, ref, a.ctx_size)
                worker, _ = _wait_ready(info, api_key, _gone_from(hive, str(info["id"])))
            except KeyboardInterrupt:  # as the full path: forget it, stop what we started
                _abandon(db, hive, str(info["id"]))
                raise
            final = hive.get(f"/v1/workers/{info['id']}")
        finally:
            hive.close()
        fastpath.execute(db, "UPDATE workers SET pid = ?, state = ?, last_health_at = ? WHERE id = ?",
                         [final.get("pid", info.get("pid")), "idle", time.time(), info["id"]])  # fmt: skip
        if final.get("safe_mode"):
            out.info(f"{node.name} runs llama.cpp in safe mode (AMX/repacking off): "
                     f"{final.get('safe_mode_reason')}; decode may be slower")  # fmt: skip
        chat = bool(a.chat_format) or (not a.raw and bool(model.get("chat_template")))
        return fastpath.Plan(a, node, ref, api_key, str(info["id"]), worker, chat, db, reused=False)
    except BaseException:
        db.close()
        raise


def _ref(a: LeanArgs) -> str:
    from rbee_fabric import modelref
    from rbee_fabric.errors import RbeeError

    try:
        return modelref.parse(a.model).canonical
    except RbeeError:
        raise Fallback("bad model reference") from None


def _wait_hive(
    port: int, wait_s: float = HIVE_WAIT_S, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Until the hive answers; Fallback after wait_s, or when its process (if given) ends."""
    deadline = time.monotonic() + wait_s
    while not answers(port):
        if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
            raise Fallback("the hive did not answer")
        time.sleep(0.02)


def _catalogued(hive: Daemon, ref: str) -> dict:  # type: ignore[type-arg]
    models = hive.get("/v1/models").get("models")
    for m in models if isinstance(models, list) else []:
        if isinstance(m, dict) and m.get("reference") == ref and isinstance(m.get("id"), str):
            return m
    raise Fallback("the model is not in the node's catalog: the full path gets it")


def _surely_fits(a: LeanArgs, n_ctx: int) -> bool:
    """As contextfit.surely_fits for the request the lean path sends."""
    assert a.prompt is not None
    texts = [a.prompt] + ([a.system] if a.system else [])
    text = "\n".join(texts)
    bound = len(text.encode()) + 2 * text.count(" ") + 5 + FRAMING_PER_MESSAGE * len(texts)
    return bound + (a.max_tokens or 1) <= n_ctx


def _spawn(hive: Daemon, a: LeanArgs, node: LocalNode, model_id: str) -> dict:  # type: ignore[type-arg]
    body: dict[str, object] = {"model_id": model_id, "backend": a.backend, "device": a.device,
                               "n_ctx": a.ctx_size, "safe_mode": node.safe_mode}  # fmt: skip
    if node.max_queue is not None:
        body["max_queue"] = node.max_queue
    status, info = hive.request("POST", "/v1/workers/spawn", body=body)
    if status != 200 or not isinstance(info, dict) or not isinstance(info.get("url"), str):
        raise Fallback(f"spawn answered HTTP {status}: the full path reports it")
    return info


def _register(db: sqlite3.Connection, info: dict, node: str, ref: str, n_ctx: int) -> None:  # type: ignore[type-arg]
    """As Registry.add (keeper/registry.py): the row the full path writes."""
    now = time.time()
    fastpath.execute(
        db,
        "INSERT OR REPLACE INTO workers (id, node, model_ref, backend, device, url, pid, state, "
        "last_health_at, created_at, n_ctx) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [info["id"], node, ref, info.get("backend"), info.get("device"), info["url"],
         info.get("pid"), info.get("state"), now, now, n_ctx],
    )  # fmt: skip


def _abandon(db: sqlite3.Connection, hive: Daemon, wid: str) -> None:
    """Ctrl+C while the worker loads: its registry row goes, and the worker (best effort)."""
    with contextlib.suppress(Fallback, sqlite3.Error):
        db.execute("DELETE FROM workers WHERE id = ?", [wid])
    with contextlib.suppress(Fallback, OSError):
        hive.request("POST", f"/v1/workers/{wid}/shutdown")


def _gone_from(hive: Daemon, wid: str) -> Callable[[], bool]:
    def gone() -> bool:
        status, _ = hive.request("GET", f"/v1/workers/{wid}")
        return status == 404

    return gone


def _wait_ready(
    info: dict[str, Any], api_key: str, gone: Callable[[], bool]
) -> tuple[Daemon, dict[str, Any]]:
    """The worker, proven and ready, and its ready answer; on a terminal a line shows
    the loading progress. A worker that is gone is the full path's to report."""
    tty = sys.stderr.isatty()
    deadline = time.monotonic() + LOAD_WAIT_S
    worker: Daemon | None = None
    next_check = time.monotonic() + 0.5
    try:
        while time.monotonic() < deadline:
            if worker is None:  # not listening yet, or not proven
                candidate = Daemon(str(info["url"]), api_key, timeout=2.0)
                try:
                    candidate.prove()
                    worker = candidate
                except Fallback:
                    candidate.close()
                    if time.monotonic() > next_check:
                        next_check = time.monotonic() + 0.5
                        if gone():
                            raise Fallback("the worker is gone: the full path reports why") from None
                    time.sleep(0.02)
                    continue
            ready = worker.get("/v1/ready")
            if isinstance(ready, dict) and ready.get("ready") is True:
                done, worker = worker, None
                return done, ready
            if isinstance(ready, dict) and ready.get("state") == "failed":
                raise Fallback("the worker failed to load: the full path reports why")
            if tty:
                sys.stderr.write("\rloading model …")
                sys.stderr.flush()
            time.sleep(0.02)
        raise Fallback("the worker is still loading: the full path follows it")
    finally:
        if worker is not None:
            worker.close()
        if tty:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()


# ------------------------------------------------ a worker started before the hive


class _Claim:
    """The spawn request that makes the hive adopt the worker it started for this
    keeper, from a thread: the hive answers once its imports are done."""

    def __init__(self, a: LeanArgs, node: LocalNode, ref: str, api_key: str, wid: str,
                 hive: subprocess.Popen[bytes]) -> None:  # fmt: skip
        self.error: str | None = None
        self.done = False
        self._args = (a, node, ref, api_key, wid)
        self._hive = hive
        self._thread = threading.Thread(target=self._run, name="claim", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        a, node, ref, api_key, wid = self._args
        try:
            # As long as the hive lives (up to the time it keeps an unclaimed worker):
            # its imports wait for the load on a busy machine.
            _wait_hive(node.hive_port, CLAIM_WAIT_S, self._hive)
            hive = Daemon(f"http://127.0.0.1:{node.hive_port}", api_key, timeout=10.0)
            try:
                hive.prove()
                info = _spawn(hive, a, node, _catalogued(hive, ref)["id"])
            finally:
                hive.close()
            if info.get("id") != wid:
                self.error = f"the hive started worker {info.get('id')} instead"
        except Fallback as exc:
            self.error = str(exc)
        except Exception as exc:  # reported by after(), not as a thread traceback
            self.error = f"{type(exc).__name__}: {exc}"
        self.done = True

    def wait(self, timeout: float) -> bool:
        """True when the hive adopted the worker within timeout."""
        self._thread.join(timeout)
        return self.done and self.error is None


def _plan_preloaded(
    a: LeanArgs, node: LocalNode, out: Output, ref: str, api_key: str, rec: dict[str, Any],
    hive_proc: subprocess.Popen[bytes],
) -> fastpath.Plan:  # fmt: skip
    """The worker the hive started and placed before its own imports (its record):
    followed and used at once, claimed from the hive meanwhile."""
    wid = str(rec["worker_id"])
    claim = _Claim(a, node, ref, api_key, wid, hive_proc)
    db = fastpath.registry()
    try:
        info = {"id": wid, "url": rec["url"], "pid": rec["pid"], "backend": rec["backend"],
                "device": rec["device"], "state": "loading"}  # fmt: skip
        try:
            out.info(f"starting a worker for {ref} on {node.name}")
            _register(db, info, node.name, ref, a.ctx_size)
            worker, ready = _wait_ready(info, api_key, lambda: not _alive(int(rec["pid"])))
        except KeyboardInterrupt:
            _abandon_preloaded(db, claim, node, api_key, wid, int(rec["pid"]))
            raise
        except Fallback:
            claim.wait(HIVE_WAIT_S)  # the full path then finds the worker the hive adopted
            raise
        fastpath.execute(db, "UPDATE workers SET state = ?, last_health_at = ? WHERE id = ?",
                         ["idle", time.time(), wid])  # fmt: skip
        if rec.get("safe_mode"):
            out.info(f"{node.name} runs llama.cpp in safe mode (AMX/repacking off): "
                     f"{rec.get('safe_mode_reason')}; decode may be slower")  # fmt: skip
        chat = bool(a.chat_format) or (not a.raw and bool(ready.get("chat_template")))

        def after(finished: bool) -> None:
            # The hive adopts it, or ends it (then the next run must not find it).
            # After Ctrl+C or an error, only a short wait: the hive ends it in time.
            if not claim.wait(CLAIM_WAIT_S + 5.0 if finished else 2.0):
                with contextlib.suppress(sqlite3.Error):
                    db.execute("DELETE FROM workers WHERE id = ?", [wid])
                if finished:
                    out.info(f"the hive did not keep worker {wid}: {claim.error or 'no answer'}")

        return fastpath.Plan(a, node, ref, api_key, wid, worker, chat, db, reused=False, after=after)
    except BaseException:
        db.close()
        raise


def _alive(pid: int) -> bool:
    """Whether pid runs: a dead worker its hive has not reaped yet (the hive may still
    be importing) is a zombie, which kill(pid, 0) does not tell apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rpartition(b")")[2].split()[0] not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        pass  # no /proc (macOS)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _abandon_preloaded(
    db: sqlite3.Connection, claim: _Claim, node: LocalNode, api_key: str, wid: str, pid: int
) -> None:
    """Ctrl+C while the worker loads: its row goes, and the worker: through the hive
    once it adopted it, else directly (the hive ends what it has not adopted)."""
    with contextlib.suppress(sqlite3.Error):
        db.execute("DELETE FROM workers WHERE id = ?", [wid])
    if claim.wait(2.0):
        hive = Daemon(f"http://127.0.0.1:{node.hive_port}", api_key)
        with contextlib.suppress(Fallback, OSError):
            hive.prove()
            hive.request("POST", f"/v1/workers/{wid}/shutdown")
        hive.close()
    else:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
