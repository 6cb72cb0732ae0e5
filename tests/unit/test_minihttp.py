"""The lean path's HTTP client against a real socket server sending canned answers."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from rbee_fabric.minihttp import Connection, ProtocolError


class Canned:
    """A loopback server: answers each request read on a connection with the next answer."""

    def __init__(self, answers: list[bytes], port: int = 0) -> None:
        self.answers = answers
        self.requests: list[bytes] = []
        self.connections = 0
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.answers:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                while self.answers:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    if not data:
                        break
                    head, _, body = data.partition(b"\r\n\r\n")
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            want = int(line.split(b":")[1])
                            while len(body) < want:
                                body += conn.recv(65536)
                    self.requests.append(head + b"\r\n\r\n" + body)
                    answer = self.answers.pop(0)
                    conn.sendall(answer)
                    if b"Connection: close" in answer:
                        break

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def canned() -> Iterator[list[Canned]]:
    made: list[Canned] = []
    yield made
    for c in made:
        c.close()


def _serve(made: list[Canned], *answers: bytes) -> Canned:
    c = Canned(list(answers))
    made.append(c)
    return c


def _chunked(*parts: bytes) -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    return b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + body


def test_json_answers_reuse_one_connection(canned: list[Canned]) -> None:
    ok = b'HTTP/1.1 200 OK\r\ncontent-length: 11\r\ncontent-type: application/json\r\n\r\n{"a": true}'
    srv = _serve(canned, ok, b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}")
    conn = Connection("127.0.0.1", srv.port, timeout=5)
    conn.request("POST", "/v1/x", body=b'{"q": 1}', headers={"Authorization": "Bearer k"})
    r = conn.getresponse()
    assert (r.status, r.read()) == (200, b'{"a": true}')
    conn.request("GET", "/v1/y")
    r = conn.getresponse()
    assert (r.status, r.read()) == (404, b"{}")
    conn.close()
    assert srv.connections == 1
    first = srv.requests[0]
    assert first.startswith(b"POST /v1/x HTTP/1.1\r\n") and first.endswith(b'\r\n\r\n{"q": 1}')
    assert b"Authorization: Bearer k" in first and b"Content-Length: 8" in first


def test_a_chunked_stream_reads_line_by_line_across_chunk_borders(canned: list[Canned]) -> None:
    srv = _serve(canned, _chunked(b"data: {\"tok", b"en\": 1}\n\n: waiting\n", b"\ndata: [DONE]\n\n"))
    conn = Connection("127.0.0.1", srv.port, timeout=5)
    conn.request("POST", "/v1/inference", body=b"{}")
    r = conn.getresponse()
    lines = []
    while line := r.readline():
        lines.append(line)
    assert lines == [b'data: {"token": 1}\n', b"\n", b": waiting\n", b"\n", b"data: [DONE]\n", b"\n"]


def test_a_body_cut_short_or_no_answer_is_a_protocol_error(canned: list[Canned]) -> None:
    srv = _serve(canned, b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\nConnection: close\r\n\r\nabc")
    conn = Connection("127.0.0.1", srv.port, timeout=5)
    conn.request("GET", "/")
    r = conn.getresponse()
    with pytest.raises(ProtocolError, match="inside the body"):
        r.read()
    srv2 = _serve(canned, b"Connection: close\r\n")  # not HTTP at all
    conn2 = Connection("127.0.0.1", srv2.port, timeout=5)
    conn2.request("GET", "/")
    with pytest.raises(ProtocolError, match="not an HTTP answer"):
        conn2.getresponse()


def test_a_refused_connection_is_an_os_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        conn = Connection("127.0.0.1", s.getsockname()[1], timeout=5)
        with pytest.raises(ConnectionRefusedError):
            conn.request("GET", "/")
