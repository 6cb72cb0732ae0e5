"""`rbee serve` as a user runs it: a real process, reached with the official openai client."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import openai

from tests.support.procs import LISTENING, wait_http

KEY = "test-gateway-key-0123456789abcdef"


@dataclass
class Gateway:
    url: str
    key: str
    proc: subprocess.Popen[bytes]
    log: Path

    def client(self, **kwargs: object) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=self.key, max_retries=0, **kwargs)  # type: ignore[arg-type]

    def aclient(self, **kwargs: object) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=self.key, max_retries=0, **kwargs)  # type: ignore[arg-type]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def start_gateway(env: dict[str, str], log_dir: Path, *args: str, key: str | None = KEY) -> Gateway:
    """`rbee serve --port 0`; the port it bound is read from its "listening on" log line."""
    log = Path(tempfile.mkstemp(prefix="serve-", suffix=".log", dir=log_dir)[1])
    full_env = dict(env)
    if key is not None:
        full_env["RBEE_SERVE_API_KEY"] = key
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rbee_fabric.cli", "serve", "--port", "0", *args],
            env=full_env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (m := LISTENING.search(log.read_text(errors="replace"))):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"rbee serve did not start:\n{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)
    url = f"http://127.0.0.1:{m.group(1)}"
    wait_http(f"{url}/health", timeout=60, proc=proc)
    return Gateway(url=url, key=key or "", proc=proc, log=log)
