"""Drive a program in a real terminal: a private tmux server, keys in, screen out."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
import uuid
from pathlib import Path


class Terminal:
    """One tmux pane running `argv` with `env`; the pane stays after the program exits."""

    def __init__(self, argv: list[str], env: dict[str, str], workdir: Path) -> None:
        if shutil.which("tmux") is None:
            raise RuntimeError("tmux is not installed (apt-get install -y tmux)")
        self.socket = f"rbee-test-{uuid.uuid4().hex[:8]}"
        script = workdir / f"{self.socket}.sh"
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items() if k.isidentifier())
        # The shell outlives the program to report its status; it ignores Ctrl+C itself
        # (a trap, unlike an ignored signal, is not inherited by the program).
        script.write_text(f"{exports}trap 'true' INT\n{shlex.join(argv)}\necho \"EXIT=$?\"\n")
        self._tmux("new-session", "-d", "-s", "t", "-x", "200", "-y", "200", f"sh {shlex.quote(str(script))}")
        self._tmux("set-option", "-t", "t", "remain-on-exit", "on")

    def _tmux(self, *args: str) -> str:
        r = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"tmux {args[0]} failed: {r.stderr.strip()}")
        return r.stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-J", "-S", "-", "-t", "t")

    def send(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "t", *keys)

    def type(self, line: str) -> None:
        self._tmux("send-keys", "-t", "t", "-l", line)
        self._tmux("send-keys", "-t", "t", "Enter")

    def wait_for(self, text: str, *, count: int = 1, timeout: float = 120.0) -> str:
        """Wait until `text` shows `count` times on the screen; the screen then."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if screen.count(text) >= count:
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} (x{count}) never appeared; the screen:\n{screen}")
            time.sleep(0.1)

    def exit_status(self, timeout: float = 30.0) -> int:
        """The program's exit status once it has ended."""
        screen = self.wait_for("EXIT=", timeout=timeout)
        return int(screen.rsplit("EXIT=", 1)[1].split()[0])

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=30)
