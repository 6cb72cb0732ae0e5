"""Issue 12: attacks on the running daemons, each reproduced for real.

Every test here failed on the code before the hardening: it shows what a
user (or an attacker next to them) would see.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rbee_fabric import __version__
from tests.conftest import RbeeHome, start_hive, stop_hive
from tests.support.procs import free_port, wait_http

IMPOSTOR = Path(__file__).parent.parent / "support" / "impostor.py"


# ------------------------------------------------------------------ helpers


@contextlib.contextmanager
def second_user() -> Iterator[str]:
    """A fresh Unix user (we are root in the test machine), removed afterwards."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root to create a second Unix user")
    name = f"rbx{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False)


@contextlib.contextmanager
def impostor(
    port: int, tmp: Path, *, user: str | None = None, version: str = __version__, proof: str | None = None
) -> Iterator[Path]:
    """Hold port with a fake rbee daemon (as user); yields the file of what it received."""
    # Not under tmp: pytest's directories are private to root.
    box = Path(tempfile.mkdtemp(prefix="rbee-impostor-"))
    box.chmod(0o777)
    script = box / "impostor.py"
    shutil.copy(IMPOSTOR, script)
    script.chmod(0o644)
    record = box / "requests.jsonl"
    record.touch()
    record.chmod(0o666)
    args = ["/usr/bin/python3", str(script), str(port), str(record), version]
    if proof:
        args.append(proof)
    env = {"PATH": "/usr/bin:/bin"}  # not the test marker: we reap it ourselves
    proc = subprocess.Popen(args, user=user, env=env, cwd=box, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/health", proc=proc)  # type: ignore[arg-type]
        record.write_text("")
        yield record
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(box, ignore_errors=True)


def received(record: Path) -> list[dict]:
    return [json.loads(line) for line in record.read_text().splitlines() if line.strip()]


def assert_key_never_sent(record: Path, key: str) -> None:
    text = record.read_text()
    assert key not in text
    for req in received(record):
        assert "authorization" not in {h.lower() for h in req["headers"]}, req


# ----------------------------------------------------------- finding 1: key


def test_1_port_held_by_another_user_gets_no_key(rbee_home: RbeeHome, tmp_path: Path, tiny_model: Path) -> None:
    port = rbee_home.local_node()
    key = rbee_home.api_key
    with second_user() as user, impostor(port, tmp_path, user=user) as record:
        status = rbee_home.run("hive", "status", "localhost")
        infer = rbee_home.run("infer", "--model", f"file:{tiny_model}", "--prompt", "secret prompt")
        stop = rbee_home.run("hive", "stop", "localhost")
        for r in (status, infer):
            assert r.returncode == 1, r.stdout + r.stderr
            assert "FOREIGN_LISTENER" in r.stderr
            assert f"held by user {user}" in r.stderr
            assert "the API key was not sent" in r.stderr
        assert "running" not in status.stdout
        assert "secret prompt" not in record.read_text()
        assert stop.returncode == 0, stop.stderr
        assert_key_never_sent(record, key)
        # What the impostor saw: at most the open health probe, with a nonce.
        assert {r["path"].split("?")[0] for r in received(record)} <= {"/v1/health"}


def test_1_same_user_program_without_the_key_gets_no_key(rbee_home: RbeeHome, tmp_path: Path, tiny_model: Path) -> None:
    port = rbee_home.local_node()
    key = rbee_home.api_key
    with impostor(port, tmp_path, proof="0" * 64) as record:
        r = rbee_home.run("infer", "--model", f"file:{tiny_model}", "--prompt", "x")
        assert r.returncode == 1
        assert "FOREIGN_LISTENER" in r.stderr
        assert "could not prove it holds the node's API key" in r.stderr
        assert "Suggestion" in r.stderr or "hive_port" in r.stderr
        assert_key_never_sent(record, key)
        assert any("nonce=" in req["path"] for req in received(record))


def test_1_old_daemon_without_proof_reads_as_version_mismatch(rbee_home: RbeeHome, tmp_path: Path) -> None:
    port = rbee_home.local_node()
    key = rbee_home.api_key
    with impostor(port, tmp_path, version="0.0.1") as record:
        r = rbee_home.run("hive", "status", "localhost")
        assert r.returncode == 1
        assert "VERSION_MISMATCH" in r.stderr and "0.0.1" in r.stderr
        assert "rbee nodes install localhost --upgrade" in r.stderr
        assert_key_never_sent(record, key)


def test_1_stale_worker_url_in_the_registry_gets_no_key(rbee_home: RbeeHome, tmp_path: Path, tiny_model: Path) -> None:
    from rbee_fabric import modelref
    from rbee_fabric.keeper.registry import Registry, WorkerRecord

    rbee_home.local_node()
    key = rbee_home.api_key
    wport = free_port()
    registry = Registry(rbee_home.data / "registry.db")
    ref = modelref.parse(f"file:{tiny_model}").canonical
    registry.add(WorkerRecord(
        id="w-gone", node="localhost", model_ref=ref, backend="cpu", device=0,
        url=f"http://127.0.0.1:{wport}", pid=1, state="idle", last_health_at=time.time(), created_at=time.time(),
    ))  # fmt: skip
    registry.close()
    try:
        with impostor(wport, tmp_path) as record:
            r = rbee_home.run("infer", "--model", f"file:{tiny_model}", "--prompt", "a prompt", "--max-tokens", "2", "--backend", "cpu")
            assert r.returncode == 0, r.stderr  # a fresh worker of our own answered
            assert_key_never_sent(record, key)
            assert "a prompt" not in record.read_text()
    finally:
        rbee_home.run("hive", "stop", "localhost")


# ------------------------------------------------------ finding 2: Host header


@pytest.mark.parametrize("path", ["/v1/workers", "/v1/resources", "/v1/models"])
def test_2_host_header_trick_does_not_open_keyed_hive_paths(rbee_home: RbeeHome, path: str) -> None:
    hive = start_hive(rbee_home)
    try:
        r = raw_get(hive.port, path, host="x/v1/health?")
        assert r.startswith(b"HTTP/1.1 401"), r[:200]
        assert b"INVALID_API_KEY" in r
        assert str(rbee_home.config).encode() not in r  # the 401 names no file path
        ok = httpx.get(f"{hive.url}{path}", headers=hive.headers)
        assert ok.status_code == 200
    finally:
        stop_hive(hive)


def raw_get(port: int, path: str, *, host: str, body: bytes = b"", method: str = "GET") -> bytes:
    """One raw HTTP/1.1 request (httpx would refuse such a Host header)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        s.sendall(head.encode() + body)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out
