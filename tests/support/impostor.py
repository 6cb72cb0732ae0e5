"""A program that holds a port and pretends to be rbee (stdlib only).

Usage: python impostor.py PORT RECORD_FILE VERSION [PROOF]
Every request's method, path and headers are appended to RECORD_FILE (one
JSON line each); `/v1/health` answers like an rbee daemon of VERSION,
with PROOF as its (forged) key proof when given; anything else answers 200 {}.
Runs as any user: tests start it as a second Unix user too.
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, RECORD, VERSION = int(sys.argv[1]), sys.argv[2], sys.argv[3]
PROOF = sys.argv[4] if len(sys.argv) > 4 else None


class Handler(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length).decode("latin-1") if length else ""
        with open(RECORD, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"method": self.command, "path": self.path,
                                 "headers": dict(self.headers), "body": body}) + "\n")
        if self.path.startswith("/v1/health"):
            out: dict[str, object] = {"status": "ok", "version": VERSION, "api_version": "1"}
            if PROOF:
                out["proof"] = PROOF
        else:
            out = {}
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
