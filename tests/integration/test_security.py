"""Issue 12: attacks on the running daemons, each reproduced for real.

Every test here failed on the code before the hardening: it shows what a
user (or an attacker next to them) would see.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rbee_fabric import __version__
from tests.conftest import RbeeHome, start_hive, stop_hive
from tests.support.procs import free_port, start_on_port_0, wait_http

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


# ---------------------------------------------------- finding 3: orphan workers


def alive(pid: int) -> bool:
    try:
        return ") Z " not in Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False


def wait_dead(pid: int, within: float = 60.0) -> bool:
    deadline = time.monotonic() + within
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not alive(pid)


def test_3_workers_end_when_their_hive_is_killed(rbee_home: RbeeHome, tiny_model: Path) -> None:
    rbee_home.local_node()
    r = rbee_home.run("infer", "--model", f"file:{tiny_model}", "--prompt", "x", "--max-tokens", "2", "--json")
    assert r.returncode == 0, r.stderr
    workers = json.loads(rbee_home.run("workers", "list", "--json").stdout)
    assert len(workers) == 1
    worker_pid = workers[0]["pid"]
    status = rbee_home.run("hive", "status", "localhost").stdout
    hive_pid = int(status.split(" pid ")[1].split()[0])
    os.kill(hive_pid, signal.SIGKILL)
    assert wait_dead(hive_pid)
    assert wait_dead(worker_pid), "the worker outlived its killed hive"
    stop = rbee_home.run("hive", "stop", "localhost")
    assert stop.returncode == 0 and "was not running" in stop.stderr
    # The next infer starts one fresh worker, and it is the only one.
    r = rbee_home.run("infer", "--model", f"file:{tiny_model}", "--prompt", "x", "--max-tokens", "2", "--json")
    assert r.returncode == 0, r.stderr
    assert len(json.loads(rbee_home.run("workers", "list", "--json").stdout)) == 1
    assert rbee_home.run("hive", "stop", "localhost").returncode == 0


def test_3_hive_stop_reaps_workers_whose_hive_is_gone(rbee_home: RbeeHome, tiny_model: Path) -> None:
    from rbee_fabric.keeper.registry import Registry, WorkerRecord

    rbee_home.local_node()
    env = {**rbee_home.env, "RBEE_API_KEY": rbee_home.api_key}
    env.pop("RBEE_HIVE_PID", None)  # a worker of a hive that is gone (or an old version)
    orphan, wport, _ = start_on_port_0(
        [sys.executable, "-m", "rbee_fabric.worker", "--worker-id", "w-orphan1234", "--model", str(tiny_model),
         "--port", "0"], env=env, start_new_session=True,
    )  # fmt: skip
    # An unrelated process whose pid the registry also names (under another worker id).
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "rbee_fabric.worker"], env=rbee_home.env)
    try:
        wait_http(f"http://127.0.0.1:{wport}/v1/health", proc=orphan)
        registry = Registry(rbee_home.data / "registry.db")
        for wid, pid in (("w-orphan1234", orphan.pid), ("w-other", bystander.pid)):
            registry.add(WorkerRecord(
                id=wid, node="localhost", model_ref="file:/x.gguf", backend="cpu", device=0,
                url=f"http://127.0.0.1:{wport}", pid=pid, state="idle", last_health_at=time.time(),
                created_at=time.time(),
            ))  # fmt: skip
        registry.close()
        stop = rbee_home.run("hive", "stop", "localhost")
        assert stop.returncode == 0, stop.stderr
        assert "stopped 1 orphaned worker(s)" in stop.stderr
        assert orphan.wait(timeout=30) is not None
        assert bystander.poll() is None, "a process that is not that worker was signalled"
        assert json.loads(rbee_home.run("workers", "list", "--json").stdout) == []
    finally:
        for p in (orphan, bystander):
            if p.poll() is None:
                p.kill()
            p.wait()


# ------------------------------------------------------- finding 4: pid files


def test_4_stale_pid_file_never_signals_an_unrelated_process(rbee_home: RbeeHome) -> None:
    port = rbee_home.local_node()
    # Looks like a hive to a substring check, and sits in both the old and the new pid file.
    victim = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)", "rbee_fabric.hive", "--port", str(free_port())],
        env=rbee_home.env,
    )
    try:
        rbee_home.data.mkdir(parents=True, exist_ok=True)
        (rbee_home.data / "hive.pid").write_text(f"{victim.pid}\n{port}\n")
        (rbee_home.data / f"hive-{port}.pid").write_text(f"{victim.pid}\n{port}\n{time.time() - 1000}\n{rbee_home.data}\n")
        r = rbee_home.run("hive", "stop", "localhost")
        assert r.returncode == 0, r.stderr
        assert "was not running" in r.stderr
        time.sleep(0.5)  # a signal would have landed by now (not a speed assertion)
        assert victim.poll() is None, "hive stop signalled a process that is not the hive"
    finally:
        victim.kill()
        victim.wait()


def test_4_two_hives_in_one_data_dir_stop_independently(rbee_home: RbeeHome) -> None:
    a, b = free_port(), free_port()
    Path(rbee_home.env["RBEE_INVENTORY"]).write_text(
        f'[nodes.localhost]\nhostname = "127.0.0.1"\nlocal = true\nhive_port = {a}\n'
        f'[nodes.second]\nhostname = "127.0.0.1"\nlocal = true\nhive_port = {b}\n'
    )
    try:
        for node in ("localhost", "second"):
            r = rbee_home.run("hive", "start", node)
            assert r.returncode == 0, r.stderr
        r = rbee_home.run("hive", "stop", "localhost")
        assert r.returncode == 0 and "stopped" in r.stderr and "not running" not in r.stderr, r.stderr
        assert httpx.get(f"http://127.0.0.1:{b}/v1/health").status_code == 200, "stopping one hive hit the other"
        assert "running" in rbee_home.run("hive", "status", "second").stdout
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{a}/v1/health")
    finally:
        rbee_home.run("hive", "stop", "localhost")
        rbee_home.run("hive", "stop", "second")


# ----------------------------------------------------------- finding 7: limits


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def chunked_post(port: int, path: str, key: str, total: int) -> bytes:
    """POST `total` bytes of JSON-ish body, chunked (no Content-Length to trust)."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode()
        )
        block = b'{"prompt": "' + b"a" * (1 << 20)
        sent = 0
        with contextlib.suppress(OSError):  # the server may answer and close early
            while sent < total:
                s.sendall(f"{len(block):x}\r\n".encode() + block + b"\r\n")
                sent += len(block)
            s.sendall(b"0\r\n\r\n")
        out = b""
        with contextlib.suppress(OSError):
            while chunk := s.recv(65536):
                out += chunk
    return out


def test_7_huge_bodies_are_refused_by_both_daemons(rbee_home: RbeeHome, tiny_model: Path) -> None:
    hive = start_hive(rbee_home)
    worker, wport, _ = start_on_port_0(
        [sys.executable, "-m", "rbee_fabric.worker", "--worker-id", "w-big", "--model", str(tiny_model), "--port", "0"],
        env={**rbee_home.env, "RBEE_API_KEY": hive.api_key, "RBEE_WORKER_ENGINE": "scripted"},
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{wport}/v1/health", proc=worker)
        for pid, port, path in ((worker.pid, wport, "/v1/inference"), (hive.proc.pid, hive.port, "/v1/workers/spawn")):
            before = rss_mb(pid)
            answer = chunked_post(port, path, hive.api_key, 200 << 20)
            assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
            assert b"REQUEST_TOO_LARGE" in answer
            assert rss_mb(pid) - before < 100, "the daemon buffered the huge body"
            # A lying Content-Length is refused before any body is read.
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                s.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {hive.api_key}\r\n"
                          f"Content-Length: {1 << 30}\r\n\r\n{{}}".encode())  # fmt: skip
                head = b""
                while b"}}" not in head and (chunk := s.recv(65536)):
                    head += chunk
            assert head.startswith(b"HTTP/1.1 413") and b"REQUEST_TOO_LARGE" in head, head[:300]
        # Ordinary requests still work.
        assert httpx.get(f"{hive.url}/v1/workers", headers=hive.headers).status_code == 200
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        stop_hive(hive)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MB filesystem for the rbee data directory (we are root)."""
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_7_download_without_hub_size_is_bounded_by_free_disk(rbee_home: RbeeHome, tmp_path: Path, small_disk: Path) -> None:
    from tests.support.hubserver import Hub
    from tests.support.tiny_gguf import write_tiny_gguf

    model = write_tiny_gguf(tmp_path / "tiny.Q4_K_M.gguf", seed=5)
    with open(model, "ab") as fh:  # a GGUF header followed by 50 MB of garbage
        fh.write(os.urandom(50 << 20))
    hub = Hub().start()
    hub.add("org/nometa-GGUF", "tiny.Q4_K_M.gguf", model, no_meta=True)
    env = {"RBEE_DATA_DIR": str(small_disk / "rbee"), "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_TELEMETRY": "1"}
    rbee_home.env.update(env)
    rbee_home.local_node()
    try:
        r = rbee_home.run("models", "pull", "hf:org/nometa-GGUF")
        assert r.returncode == 1, r.stdout + r.stderr
        assert "INSUFFICIENT_DISK" in r.stderr and "announced no size" in r.stderr
        assert "free disk space" in r.stderr
        models = small_disk / "rbee" / "models"
        assert [p for p in models.rglob("*") if p.is_file()] == [], "a partial file was kept"
        listed = rbee_home.run("models", "list", "--json")
        assert json.loads(listed.stdout) == []
    finally:
        rbee_home.run("hive", "stop", "localhost")
        hub.stop()


# ------------------------------------------------ finding 6: private node files


def test_6_files_the_hive_and_workers_create_are_private(rbee_home: RbeeHome, tiny_model: Path) -> None:
    rbee_home.local_node()
    old = os.umask(0o022)  # a typical login umask: files 0644 unless rbee says otherwise
    try:
        r = rbee_home.run("infer", "--model", f"file:{tiny_model}", "--prompt", "a private prompt", "--max-tokens", "2")
        assert r.returncode == 0, r.stderr
        made = [p for p in rbee_home.data.rglob("*")]
        names = {p.name for p in made}
        assert "hive.log" in names and "catalog.db" in names and any(n.startswith("worker-") for n in names)
        readable = [f"{p} {oct(p.stat().st_mode & 0o777)}" for p in made if p.stat().st_mode & 0o077]
        assert readable == [], "readable by other users: " + ", ".join(readable)
    finally:
        os.umask(old)
        rbee_home.run("hive", "stop", "localhost")


# ------------------------------------------------------- finding 8: small ones


def test_8_empty_api_key_file_is_a_clear_config_error(rbee_home: RbeeHome) -> None:
    rbee_home.local_node()
    rbee_home.config.mkdir(parents=True, exist_ok=True)
    (rbee_home.config / "api_key").write_text("\n")
    for args in (("hive", "status", "localhost"), ("infer", "--model", "gemma3-270m", "--prompt", "x")):
        r = rbee_home.run(*args)
        assert r.returncode == 2, r.stderr
        assert "CONFIG_INVALID" in r.stderr and "is empty" in r.stderr
        assert "INTERNAL_ERROR" not in r.stderr and "AssertionError" not in r.stderr
        assert f"rm {rbee_home.config / 'api_key'}" in r.stderr
    assert (rbee_home.config / "api_key").read_text() == "\n"  # nothing was overwritten


def test_8_full_data_disk_is_disk_error_with_a_suggestion(rbee_home: RbeeHome, small_disk: Path, tiny_model: Path) -> None:
    data = small_disk / "rbee"
    data.mkdir()
    rbee_home.env["RBEE_DATA_DIR"] = str(data)
    rbee_home.local_node()
    filler = small_disk / "filler"
    with open(filler, "wb") as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * (1 << 20))
            fh.flush()
    try:
        r = rbee_home.run("infer", "--model", f"file:{tiny_model}", "--prompt", "x", "--max-tokens", "2")
        assert r.returncode == 1, r.stderr
        assert "DISK_ERROR" in r.stderr and "INTERNAL_ERROR" not in r.stderr, r.stderr
        assert "Suggestion: " in r.stderr and "free space" in r.stderr
    finally:
        filler.unlink()
        rbee_home.run("hive", "stop", "localhost")


def test_8_escape_sequences_and_markup_from_elsewhere_never_reach_the_terminal(rbee_home: RbeeHome) -> None:
    rbee_home.local_node()
    evil = "/nonexistent/\x1b]0;pwned\x07\x1b[2J[blink]x[/blink][/].gguf"
    try:
        r = rbee_home.run("infer", "--model", f"file:{evil}", "--prompt", "x")
        assert r.returncode == 1 and "MODEL_NOT_FOUND" in r.stderr, r.stderr  # a well-formed path nobody has
        assert "\x1b" not in r.stderr and "\x07" not in r.stderr, repr(r.stderr)
        assert "[blink]x[/blink][/]" in r.stderr  # shown literally, not interpreted (nor a crash)
        assert "\\x1b]0;pwned" in r.stderr  # made visible instead
        assert "MarkupError" not in r.stderr and "INTERNAL_ERROR" not in r.stderr
    finally:
        rbee_home.run("hive", "stop", "localhost")
