"""HTTP/1.1 over one kept-alive loopback socket, for the lean path of `rbee infer`.

http.client costs a warm `rbee infer` ~40 ms of imports (email's parser and
its regular expressions, ssl) for what the lean path needs of it: a few JSON
requests and one server-sent-event stream to a daemon on this machine. This
is that much and no more: requests with a JSON body, responses with a
Content-Length or chunked, a line reader for streams. The rest of rbee uses
httpx.
"""

from __future__ import annotations

import io
import socket
from collections.abc import Callable
from functools import partial


class ProtocolError(Exception):
    """The daemon's answer is not the HTTP this client reads (or it hung up)."""


class Response:
    def __init__(self, conn: Connection, status: int, headers: dict[str, str]) -> None:
        self.status = status
        self.headers = headers
        self._conn = conn
        self._file = conn.file
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        self._left: int | None = int(length) if length is not None and not self._chunked else None
        self._buf = b""
        self._done = False
        if self._left == 0:
            self._finish()

    def _finish(self) -> None:
        self._done = True
        self._conn.response_done(self)

    def _chunk(self) -> bytes:
        """The next chunk of a chunked body (b"" at its end)."""
        assert self._file is not None
        size_line = self._file.readline(1024)
        if not size_line.endswith(b"\n"):
            raise ProtocolError("the connection closed inside a chunked body")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ProtocolError(f"bad chunk size {size_line[:40]!r}") from None
        if size == 0:
            while self._file.readline(1024) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b""
        data = self._file.read(size)
        if len(data) != size or self._file.readline(1024) not in (b"\r\n", b"\n"):
            raise ProtocolError("the connection closed inside a chunk")
        return data

    def _more(self) -> bytes:
        """More of the body (b"" at its end)."""
        if self._done:
            return b""
        assert self._file is not None
        if self._chunked:
            data = self._chunk()
        elif self._left is not None:
            data = self._file.read1(min(self._left, 65536)) if self._left else b""
            if self._left and not data:
                raise ProtocolError("the connection closed inside the body")
            self._left -= len(data)
        else:
            data = self._file.read1(65536)  # until the server closes
        if not data or self._left == 0:
            self._finish()
        return data

    def read(self) -> bytes:
        parts = [self._buf]
        self._buf = b""
        while data := self._more():
            parts.append(data)
        return b"".join(parts)

    def readline(self) -> bytes:
        """One line of the body, with its newline (b"" at the end)."""
        while b"\n" not in self._buf:
            data = self._more()
            if not data:
                line, self._buf = self._buf, b""
                return line
            self._buf += data
        line, _, self._buf = self._buf.partition(b"\n")
        return line + b"\n"


def _connect(host: str, port: int, timeout: float | None) -> socket.socket:
    """A TCP connection, Nagle off. An address literal skips getaddrinfo, which imports
    the idna codec for any host name (~2 ms)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if host == "localhost" or not all(c in "0123456789.:abcdefABCDEF" for c in host):
        sock = socket.create_connection((host, port), timeout=timeout)
    else:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Connection:
    """One kept-alive connection to host:port, opened on the first request."""

    def __init__(
        self, host: str, port: int, timeout: float | None = None,
        opener: Callable[[float | None], socket.socket] | None = None,
    ) -> None:  # fmt: skip
        """opener(timeout): a connected socket to the daemon, where TCP to host:port
        is not the way (a node's link, keeper/link.py)."""
        self.host = host
        self.port = port
        self.timeout = timeout
        self._opener = opener
        self.sock: socket.socket | None = None
        self.file: io.BufferedReader | None = None
        self._reusable = False
        self._keep = False

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.sock is not None:
            self.sock.close()
        self.sock = self.file = None

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> None:
        if self.sock is None or not self._reusable:
            self.close()
            self.sock = (self._opener or partial(_connect, self.host, self.port))(self.timeout)
            self.file = self.sock.makefile("rb")
        self._reusable = False
        host = f"[{self.host}]" if ":" in self.host else self.host
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body is not None or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body or b'')}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))

    def getresponse(self) -> Response:
        if self.file is None:
            raise ProtocolError("no request was sent")
        status_line = self.file.readline(65537)
        if not status_line:
            raise ProtocolError("the daemon closed the connection without an answer")
        parts = status_line.decode("latin-1").split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(f"not an HTTP answer: {status_line[:60]!r}")
        headers: dict[str, str] = {}
        while True:
            line = self.file.readline(65537)
            if line in (b"\r\n", b"\n"):
                break
            if not line:
                raise ProtocolError("the connection closed inside the headers")
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        self._keep = headers.get("connection", "").lower() != "close"
        return Response(self, int(parts[1]), headers)

    def response_done(self, r: Response) -> None:
        """The body was read whole: the next request may use this connection."""
        self._reusable = self._keep and ("content-length" in r.headers or "chunked" in
                                         r.headers.get("transfer-encoding", "").lower())  # fmt: skip
