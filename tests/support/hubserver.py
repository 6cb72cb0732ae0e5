"""A local server with the Hugging Face hub's URL layout, and faults on demand.

    GET /api/models/ORG/REPO[/revision/REV]   repo metadata (siblings, lfs sha256)
    GET|HEAD /ORG/REPO/resolve/REV/FILE       the file, with Range support

Point HF_ENDPOINT at it. Faults are per file, injected for real on the wire:
`reset_at` (close the connection after N bytes, once), `stall_at` (stop
sending after N bytes for `stall_s`, once), `reset_always_at` (every
time), `wrong_sha` (announce a hash the
bytes do not have), and per repo `private` (401 without the right token) and
`api_failures` (answer the metadata request with HTTP 503 that many times).
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class HubFile:
    path: Path
    reset_at: int | None = None
    reset_always_at: int | None = None  # cut every response at this offset
    stall_at: int | None = None
    stall_s: float = 60.0
    wrong_sha: bool = False
    no_meta: bool = False  # the repo metadata gives neither size nor sha256
    rate: int | None = None  # bytes per second, to make progress visible
    served: list[tuple[int, int]] = field(default_factory=list)  # (start, bytes sent) per GET

    @property
    def sha256(self) -> str:
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
        return ("0" * 64) if self.wrong_sha else digest


@dataclass
class HubRepo:
    files: dict[str, HubFile] = field(default_factory=dict)
    private_token: str | None = None
    api_failures: int = 0  # metadata requests still to answer with 503


class Hub:
    """The server and what it serves; tests mutate repos and read `served`."""

    def __init__(self) -> None:
        self.repos: dict[str, HubRepo] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add(self, repo: str, name: str, path: Path, **faults: object) -> HubFile:
        f = HubFile(path=path, **faults)  # type: ignore[arg-type]
        self.repos.setdefault(repo, HubRepo()).files[name] = f
        return f

    def start(self) -> Hub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(hub: Hub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _repo(self, name: str) -> HubRepo | None:
            repo = hub.repos.get(name)
            if repo is None:
                self._error(404, "RepoNotFound", f"Repository {name} not found")
                return None
            if repo.private_token and self.headers.get("authorization") != f"Bearer {repo.private_token}":
                self._error(401, "RepoNotFound", "Invalid username or password.")
                return None
            return repo

        def _error(self, status: int, code: str, message: str) -> None:
            body = json.dumps({"error": message}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._serve(head=False)

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def _serve(self, head: bool) -> None:
            path = self.path.split("?")[0]
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/[^/]+)?", path):
                if (repo := self._repo(m.group(1))) is None:
                    return
                if repo.api_failures > 0:
                    repo.api_failures -= 1
                    self._error(503, "ServiceUnavailable", "the hub is overloaded")
                    return
                siblings = [
                    {"rfilename": n} if f.no_meta else
                    {"rfilename": n, "size": f.path.stat().st_size,
                     "lfs": {"sha256": f.sha256, "size": f.path.stat().st_size, "pointerSize": 134}}
                    for n, f in repo.files.items()
                ]  # fmt: skip
                body = json.dumps({"id": m.group(1), "modelId": m.group(1), "sha": "0" * 40,
                                   "siblings": siblings, "private": bool(repo.private_token)}).encode()  # fmt: skip
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)
                return
            if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/[^/]+/(.+)", path):
                if (repo := self._repo(m.group(1))) is None:
                    return
                f = repo.files.get(m.group(2))
                if f is None:
                    self._error(404, "EntryNotFound", f"{m.group(2)} not found")
                    return
                self._file(f, head)
                return
            self._error(404, "NotFound", path)

        def _cut(self) -> None:
            """Drop the connection mid-body (the file objects keep the fd, so shutdown)."""
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True

        def _file(self, f: HubFile, head: bool) -> None:
            data = f.path.read_bytes()
            start = 0
            if rng := re.fullmatch(r"bytes=(\d+)-", self.headers.get("range", "")):
                start = int(rng.group(1))
            self.send_response(206 if start else 200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data) - start))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{f.sha256}"')
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if head:
                return
            sent = 0
            pos = start
            chunk = 65536
            try:
                while pos < len(data):
                    if f.reset_at is not None and pos >= f.reset_at:
                        f.reset_at = None  # once
                        self._cut()
                        return
                    if f.reset_always_at is not None and pos >= f.reset_always_at:
                        self._cut()
                        return
                    if f.stall_at is not None and pos >= f.stall_at:
                        f.stall_at = None  # once
                        time.sleep(f.stall_s)
                    piece = data[pos : pos + chunk]
                    self.wfile.write(piece)
                    pos += len(piece)
                    sent += len(piece)
                    if f.rate:
                        time.sleep(len(piece) / f.rate)
            except (BrokenPipeError, ConnectionResetError, OSError):
                pass
            finally:
                f.served.append((start, sent))

    return Handler
