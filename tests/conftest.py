"""Shared fixtures: an isolated rbee home per test, the tiny model, real daemons."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.procs import free_port, kill_all, processes_with_env, wait_http
from tests.support.tiny_gguf import write_tiny_gguf

IN_CI = os.environ.get("CI", "") not in ("", "0", "false")


@dataclass
class RbeeHome:
    data: Path
    config: Path
    env: dict[str, str]
    marker: str

    @property
    def api_key(self) -> str:
        from rbee_fabric.paths import ensure_api_key

        return ensure_api_key(self.config / "api_key")

    def local_node(self, hive_port: int | None = None) -> int:
        """Point `localhost` at a private hive port (so tests never share a hive)."""
        port = hive_port or free_port()
        Path(self.env["RBEE_INVENTORY"]).write_text(
            f'[nodes.localhost]\nhostname = "127.0.0.1"\nlocal = true\nhive_port = {port}\n'
        )
        return port

    def run(
        self, *args: str, input: str | None = None, timeout: float = 600, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `rbee ARGS` as a user would, in this home (env adds variables)."""
        return subprocess.run(
            [sys.executable, "-m", "rbee_fabric.cli", *args],
            env={**self.env, **(env or {})}, capture_output=True, text=True, input=input, timeout=timeout,
        )


@pytest.fixture
def rbee_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RbeeHome]:
    """A private data and config directory; at the end, no process of ours may remain."""
    marker = uuid.uuid4().hex
    data, config = tmp_path / "data", tmp_path / "config"
    values = {
        "RBEE_DATA_DIR": str(data),
        "RBEE_CONFIG_DIR": str(config),
        "RBEE_TEST_MARKER": marker,
        "RBEE_INVENTORY": str(tmp_path / "hosts.toml"),
        "PYTHONUNBUFFERED": "1",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    (tmp_path / "hosts.toml").write_text("")
    home = RbeeHome(data=data, config=config, env=dict(os.environ), marker=marker)
    yield home
    # Let polite shutdowns finish before judging.
    import time

    deadline = time.monotonic() + 10
    left = processes_with_env("RBEE_TEST_MARKER", marker)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = processes_with_env("RBEE_TEST_MARKER", marker)
    kill_all(left)
    assert not left, f"processes left running after the test: {left}"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real GGUF file (llama architecture, random weights, ~0.5 MB)."""
    return write_tiny_gguf(tmp_path_factory.mktemp("models") / "tiny-llama.gguf")


@dataclass
class Hive:
    url: str
    port: int
    api_key: str
    proc: subprocess.Popen[bytes]
    home: RbeeHome

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


def start_hive(home: RbeeHome, *args: str, env: dict[str, str] | None = None) -> Hive:
    port = free_port()
    log = open(home.data.parent / f"hive-{port}.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "rbee_fabric.hive", "--port", str(port), *args],
        env={**home.env, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/v1/health", proc=proc)
    return Hive(url=url, port=port, api_key=home.api_key, proc=proc, home=home)


def stop_hive(hive: Hive) -> int:
    if hive.proc.poll() is None:
        hive.proc.send_signal(signal.SIGTERM)
    try:
        return hive.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        hive.proc.kill()
        return hive.proc.wait()


@pytest.fixture
def hive(rbee_home: RbeeHome) -> Iterator[Hive]:
    """A real rbee-hive process on a free loopback port."""
    h = start_hive(rbee_home)
    yield h
    stop_hive(h)


@pytest.fixture
def scripted_hive(rbee_home: RbeeHome) -> Iterator[Hive]:
    """A real hive whose workers use the scripted engine (slow, deterministic tokens)."""
    h = start_hive(
        rbee_home,
        env={"RBEE_WORKER_ENGINE": "scripted", "RBEE_SCRIPTED_DELAY_MS": "50"},
    )
    yield h
    stop_hive(h)


# ---------------------------------------------------------------------- lab


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Eight real sshd nodes on 127.0.0.2-9 (fresh homes); torn down at the end.

    Under CI a missing lab is a failure, never a skip.
    """
    from tests.lab import lab as lab_mod

    try:
        lab_mod.up(lab_mod.MAX_NODES, fresh=True)
    except (PermissionError, FileNotFoundError, OSError) as exc:
        if IN_CI:
            pytest.fail(f"the SSH lab cannot run here: {exc}")
        pytest.skip(f"the SSH lab needs root and openssh-server: {exc}")
    env = lab_mod.env()
    env["RBEE_WHEELHOUSE_DIR"] = str(tmp_path_factory.mktemp("wheelhouse"))
    yield env
    lab_mod.down()


@pytest.fixture
def lab_home(rbee_home: RbeeHome, lab: dict[str, str]) -> Iterator[RbeeHome]:
    """An rbee home whose keeper sees the lab inventory and SSH config.

    A remote `rbee infer` leaves the node's SSH connection open (keeper/link.py)
    for RBEE_SSH_KEEP_S; at the end the test ends those it left (by pid), as a
    user's `rbee hive stop` would (tests/e2e/test_link_lab.py tests that)."""
    rbee_home.env.update(lab)
    yield rbee_home
    for pid in links_of(rbee_home.marker):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)


def links_of(marker: str) -> list[int]:
    """The pids of the links (keeper/linkd.py) a test home started."""
    pids = []
    for pid in processes_with_env("RBEE_TEST_MARKER", marker):
        with contextlib.suppress(OSError):
            if b"rbee_fabric.keeper.linkd" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
    return pids


@pytest.fixture
def installed(lab_home: RbeeHome) -> RbeeHome:
    """The lab home, with rbee-fabric installed on labnode1 and labnode2."""
    for node in ("labnode1", "labnode2"):
        r = lab_home.run("nodes", "install", node)
        assert r.returncode == 0, r.stderr
    return lab_home
