"""The lean path's step 8: stream the answer from a proven worker connection.

The same outcomes as generate.py, the same messages: tokens to stdout, the
queue note, the summary; an error event, QUEUE_TIMEOUT, Ctrl+C, a lost
connection or a crash become the same RbeeErrors, printed by cli/ui.py.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from typing import TYPE_CHECKING, Any, NoReturn

from rbee_fabric.keeper.fastpath_net import Fallback, HttpError
from rbee_fabric.keeper.fastpath_out import Output
from rbee_fabric.minihttp import ProtocolError
from rbee_fabric.summary import Summary, summary_json, summary_line

if TYPE_CHECKING:
    from rbee_fabric.keeper.fastpath import Plan


class _QueueDeadline(Exception):
    pass


def generate(p: Plan, body: dict[str, Any], out: Output, started: float) -> int:
    a = p.args
    rid = str(body["request_id"])
    pieces: list[str] = []
    first: float | None = None
    done: dict[str, Any] | None = None
    broken: str | None = None
    waiting_since: float | None = None
    queued_s = 0.0
    try:
        try:
            for event in p.worker.stream("/v1/inference", body, timeout=None):
                if not isinstance(event, dict):
                    break  # [DONE]
                if first is None and waiting_since is not None:
                    left = waiting_since + a.queue_timeout - time.monotonic()
                    if left <= 0:
                        raise _QueueDeadline
                    p.worker.set_timeout(left)
                if "token" in event:
                    if first is None:
                        first = time.monotonic()
                        p.worker.set_timeout(None)
                        if waiting_since is not None:  # the turn came
                            queued_s = first - waiting_since
                    pieces.append(event["token"])
                    out.token(event["token"])
                elif event.get("queued"):
                    out.info(f"queued (position {event.get('position')})")
                    if waiting_since is None:
                        waiting_since = time.monotonic()
                        p.worker.set_timeout(a.queue_timeout)
                elif event.get("done"):
                    done = event
                elif "error" in event:
                    _fail_envelope(event, node=p.node.name)
        except TimeoutError:
            if waiting_since is None or first is not None:
                raise
            raise _QueueDeadline from None
        except HttpError:
            raise
        except (OSError, ProtocolError, ValueError) as exc:
            broken = f"connection to {p.worker.url} failed: {str(exc) or type(exc).__name__}"
    except HttpError as exc:
        _fail_envelope(exc.body, exc.status, node=p.node.name)
    except _QueueDeadline:
        _cancel(p, rid)
        from rbee_fabric.errors import QueueTimeout

        _fail(QueueTimeout(
            f"waited {a.queue_timeout:.0f} s in the queue of worker {p.worker_id} on "
            f"{p.node.name} without a turn",
            details={"request_id": rid, "worker_id": p.worker_id},
        ))  # fmt: skip
    except KeyboardInterrupt:
        message = _cancel(p, rid)
        from rbee_fabric.errors import RequestCanceled

        _fail(RequestCanceled(
            message, details={"request_id": rid, "tokens": len(pieces), "worker_id": p.worker_id}
        ))  # fmt: skip
    if done is None:
        _broken_off(p, rid, pieces, broken)
    _touch(p.db, "UPDATE workers SET state = ?, last_health_at = ? WHERE id = ?",
           ["idle", time.time(), p.worker_id])  # fmt: skip
    end = time.monotonic()
    summary = Summary(
        tokens=int(done["total_tokens"]), seconds=end - started,
        first_token_s=(first or end) - started, worker_id=p.worker_id, reused=p.reused,
        stop_reason=str(done.get("stop_reason", "stop")), queued_s=queued_s,
        prompt_tokens=int(done.get("prompt_tokens", 0)), rendered_as=done.get("rendered_as"),
    )  # fmt: skip
    if a.as_json:
        print(json.dumps(summary_json(summary, "".join(out.tokens))))
        return 0
    sys.stdout.write("\n")
    sys.stdout.flush()
    out.dim(summary_line(summary))
    return 0


def _broken_off(p: Plan, rid: str, pieces: list[str], broken: str | None) -> NoReturn:
    """The stream ended early: a lost connection if the worker still answers or the way to
    its node is gone (its fate unknown), else a crash."""
    from rbee_fabric.keeper.partial import crashed_error, lost_error

    if not p.worker.way_open():
        _fail(lost_error(p.node.name, p.worker_id, p.args.max_tokens, rid, pieces, broken, link_ended=True))
    if _alive(p):
        _cancel(p, rid)
        _touch(p.db, "UPDATE workers SET state = ?, last_health_at = ? WHERE id = ?",
               ["idle", time.time(), p.worker_id])  # fmt: skip
        _fail(lost_error(p.node.name, p.worker_id, p.args.max_tokens, rid, pieces, broken))
    _touch(p.db, "DELETE FROM workers WHERE id = ?", [p.worker_id])
    _fail(crashed_error(p.node.name, p.worker_id, p.args.max_tokens, rid, pieces, broken))


def _alive(p: Plan) -> bool:
    worker = p.worker.another(timeout=3.0)
    try:
        worker.prove()
        worker.get("/v1/ready")
        return True
    except Fallback:
        return False
    finally:
        worker.close()


def _cancel(p: Plan, rid: str) -> str:
    """Ask the worker to stop the request (5 s at most); the words generate._cancel says."""
    worker = p.worker.another(timeout=5.0)
    try:
        worker.prove()
        status, body = worker.request("DELETE", f"/v1/inference/{rid}")
    except Fallback:
        return "Canceled; the worker did not acknowledge and may still be working."
    finally:
        worker.close()
    if status < 400 and isinstance(body, dict):
        return "Canceled." if body.get("canceled") else "Canceled; the worker may still be working."
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("code") == "WORKER_NOT_FOUND":
        return "Canceled."  # it had already finished
    return "Canceled; the worker did not acknowledge and may still be working."


def _touch(db: sqlite3.Connection, sql: str, params: list[object]) -> None:
    try:
        db.execute(sql, params)
    except sqlite3.Error as exc:
        _fail(exc)


def _fail_envelope(body: Any, status: int | None = None, *, node: str | None = None) -> NoReturn:
    from rbee_fabric.errors import from_envelope

    _fail(from_envelope(body, status=status, node=node))


def _fail(exc: BaseException) -> NoReturn:
    """Print exc exactly as the full path's CLI does (cli/ui.py report), and exit."""
    from rbee_fabric.cli.ui import report

    report(exc)
