"""The lean path's HTTP: one keep-alive connection to a daemon, stdlib only.

Same rules as keeper/client.py: a listening socket on this machine must
belong to this user, and the key goes out only after the daemon proved it
holds it (HMAC of a fresh nonce, see proof.py). A remote node's daemons are
reached through the node's link (keeper/link.py). Any surprise raises Fallback; the
caller then hands the command to the full path, which explains it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rbee_fabric import minihttp, proof
from rbee_fabric.keeper import link, sockowner

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class Fallback(Exception):
    """The lean path cannot serve this command: the full path takes over.

    `node` is set once the command is known to run on this machine's node
    (then the hive may be started early, see fastpath_hive.py).
    """

    node: object = None


class HttpError(Exception):
    """A daemon answered with an error status (body: the error envelope)."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


_listeners: dict[int, set[int]] | None = None


def _owner(port: int) -> int | None:
    """sockowner.listener_uid from one scan per lean process (the worker's and the hive's
    ports are checked milliseconds apart; each scan of /proc/net/tcp* costs ~7 ms)."""
    global _listeners
    if _listeners is None:
        _listeners = sockowner.listening()
    return sockowner.owner(port, _listeners)


def _loopback(url: str) -> tuple[str, int]:
    """(host, port) of an http:// URL on this machine; Fallback for anything else."""
    rest = url[len("http://") :] if url.startswith("http://") else ""
    hostport = rest.split("/", 1)[0]
    if hostport.startswith("["):
        host, _, port = hostport[1:].partition("]:")
    else:
        host, _, port = hostport.rpartition(":")
    if host not in LOOPBACK or not port.isdigit() or not 0 < int(port) < 65536:
        raise Fallback(f"not a loopback daemon: {url}")
    return host, int(port)


class Daemon:
    """A proven connection to one loopback daemon (hive or worker): on this machine, or
    on a remote node through its link (`via`, keeper/link.py)."""

    def __init__(self, url: str, api_key: str, timeout: float = 3.0, via: Path | None = None) -> None:
        host, port = _loopback(url)
        self.url = url
        self.port = port
        self._via = via
        opener = None
        if via is not None:
            opener = lambda t: link.connect(via, host, port, t)  # noqa: E731
        self.conn = minihttp.Connection(host, port, timeout=timeout, opener=opener)
        self._key = api_key
        self._auth: dict[str, str] = {}

    def close(self) -> None:
        self.conn.close()

    def way_open(self) -> bool:
        """Whether the way to the daemon still works (a node's link answers); always
        True on this machine. When it does not, the daemon's fate is unknown."""
        if self._via is None:
            return True
        try:
            link.ask(self._via, "ping")
        except link.LinkError:
            return False
        return True

    def another(self, timeout: float) -> Daemon:
        """A new connection to the same daemon, the same way (not proven yet)."""
        return Daemon(self.url, self._key, timeout, via=self._via)

    def prove(self) -> None:
        # A node's port is not on this machine: there the proof alone decides.
        uid = None if self._via is not None else _owner(self.port)
        if uid is not None and uid != os.getuid():
            raise Fallback("the port belongs to another user")
        nonce = proof.new_nonce()
        body = self._request("GET", f"/v1/health?nonce={nonce}", auth=False)
        if not isinstance(body, dict) or not proof.check(self._key, nonce, body.get("proof")):
            raise Fallback("the listener did not prove it holds the key")
        self._auth = {"Authorization": f"Bearer {self._key}"}

    def get(self, path: str) -> Any:
        return self._request("GET", path)

    def _request(self, method: str, path: str, *, auth: bool = True, body: Any = None) -> Any:
        status, answer = self.request(method, path, auth=auth, body=body)
        if status >= 400:
            raise Fallback(f"{self.url}{path}: HTTP {status}")
        return answer

    def request(
        self, method: str, path: str, *, auth: bool = True, body: Any = None
    ) -> tuple[int, Any]:
        """(status, JSON body); Fallback when the daemon cannot be reached or is not JSON."""
        try:
            self._send(method, path, auth=auth, body=body)
            r = self.conn.getresponse()
            data = r.read()
        except (OSError, minihttp.ProtocolError) as exc:
            raise Fallback(f"{self.url}: {exc}") from None
        try:
            return r.status, json.loads(data)
        except ValueError:
            raise Fallback(f"{self.url}{path}: not JSON") from None

    def _send(self, method: str, path: str, *, auth: bool = True, body: Any = None) -> None:
        headers = {"Accept": "application/json", **(self._auth if auth else {})}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        self.conn.request(method, path, body=payload, headers=headers)

    def stream(self, path: str, body: Any, timeout: float | None) -> Iterator[dict[str, Any] | str]:
        """POST and yield the SSE payloads (a dict, or "[DONE]"; {} for a heartbeat).

        Raises HttpError for an error status, OSError/minihttp.ProtocolError when
        the stream breaks (the caller decides what that means: tokens may be out).
        """
        self.conn.timeout = timeout
        if self.conn.sock is not None:
            self.conn.sock.settimeout(timeout)
        self._send("POST", path, body=body)
        r = self.conn.getresponse()
        if r.status >= 400:
            data = r.read()
            try:
                raise HttpError(r.status, json.loads(data))
            except ValueError:
                raise HttpError(r.status, data.decode(errors="replace")) from None
        buf: list[str] = []
        while True:
            raw = r.readline()
            if not raw:
                break
            line = raw.decode("utf-8").rstrip("\r\n")
            if line.startswith("data:"):
                buf.append(line[5:].lstrip(" "))
            elif line.startswith(":"):
                yield {}  # a heartbeat (": waiting"): the caller checks its deadlines
            elif line == "" and buf:
                payload = "\n".join(buf)
                buf.clear()
                if payload == "[DONE]":
                    yield payload
                    return
                yield json.loads(payload)
        if buf:
            payload = "\n".join(buf)
            yield payload if payload == "[DONE]" else json.loads(payload)

    def set_timeout(self, timeout: float | None) -> None:
        """The read timeout of the open stream (the queue deadline)."""
        if self.conn.sock is not None:
            self.conn.sock.settimeout(timeout)
