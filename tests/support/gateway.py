"""`rbee serve` as a user runs it: a real process, reached with the official openai client."""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import openai

from tests.support.procs import free_port, wait_http

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
    port = free_port()
    log = log_dir / f"serve-{port}.log"
    full_env = dict(env)
    if key is not None:
        full_env["RBEE_SERVE_API_KEY"] = key
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rbee_fabric.cli", "serve", "--port", str(port), *args],
            env=full_env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health", timeout=60, proc=proc)
    return Gateway(url=url, key=key or "", proc=proc, log=log)
