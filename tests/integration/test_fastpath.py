"""A warm `rbee infer` on the lean path prints what the full path prints, and falls back.

The lean path is seen from outside: `python -X importtime` lists every module
a run imports, so a run that never imported typer was served by it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import RbeeHome
from tests.support.procs import processes_with_env

SUMMARY = re.compile(r"^\d+ tokens? in [\d.]+ s, first after [\d.]+ s(, then [\d.]+ tokens/s)?$")
WORKER = re.compile(r"^worker w-\w+ \(reused\)")


def _rbee(home: RbeeHome, *args: str, lean: bool = True, input: str | None = None) -> tuple[subprocess.CompletedProcess[str], bool]:
    """Run rbee; (result without the import-time lines, whether typer was imported)."""
    env = {**home.env, "RBEE_FAST_PATH": "1" if lean else "0"}
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "rbee_fabric.cli", *args],
                       env=env, capture_output=True, text=True, input=input, timeout=300)  # fmt: skip
    lines = r.stderr.splitlines(keepends=True)
    typer = any(re.search(r"\|\s+typer$", line.rstrip()) for line in lines if line.startswith("import time:"))
    r.stderr = "".join(line for line in lines if not line.startswith("import time:"))
    return r, typer


def _masked(stderr: str) -> str:
    """stderr with the figures of the summary line (they differ run to run) masked."""
    return re.sub(r"[\d.]+ (s|tokens/s)\b", r"N \1", stderr)


def test_warm_infer_takes_the_lean_path_and_prints_the_same(rbee_home: RbeeHome, tiny_model: Path) -> None:
    rbee_home.local_node()
    base = ("infer", "--model", f"file:{tiny_model}", "--prompt", "hello", "--max-tokens", "6",
            "--seed", "3", "--temperature", "0")  # fmt: skip
    try:
        cold, typer = _rbee(rbee_home, *base)
        assert cold.returncode == 0, cold.stderr
        assert typer  # nothing to reuse yet: the full path started hive and worker
        full, typer = _rbee(rbee_home, *base, lean=False)
        assert full.returncode == 0 and typer
        lean, typer = _rbee(rbee_home, *base)
        assert lean.returncode == 0, lean.stderr
        assert not typer, "a warm infer should not need typer"
        assert lean.stdout == full.stdout and lean.stdout.strip()
        assert _masked(lean.stderr) == _masked(full.stderr)
        *_, times, worker = lean.stderr.splitlines()
        assert SUMMARY.match(times) and WORKER.match(worker), lean.stderr
        assert max(map(len, lean.stderr.splitlines())) <= 80, lean.stderr
        # --json: the same object, bar the timings.
        jl, typer = _rbee(rbee_home, *base, "--json")
        jf, _ = _rbee(rbee_home, *base, "--json", lean=False)
        assert not typer and jl.returncode == jf.returncode == 0
        a, b = json.loads(jl.stdout), json.loads(jf.stdout)
        for key in ("seconds", "first_token_s", "tokens_per_second", "queued_s"):
            assert isinstance(a.pop(key), float | int) and isinstance(b.pop(key), float | int)
        assert a == b and a["reused_worker"] is True
        # The prompt from stdin, as the full path reads it.
        piped, typer = _rbee(rbee_home, *base[:3], "--max-tokens", "6", "--seed", "3",
                             "--temperature", "0", input="hello")  # fmt: skip
        assert piped.returncode == 0 and not typer and piped.stdout == full.stdout
    finally:
        rbee_home.run("hive", "stop", "localhost")


def test_errors_print_the_same_on_both_paths(rbee_home: RbeeHome, tiny_model: Path) -> None:
    rbee_home.local_node()
    model = ("--model", f"file:{tiny_model}", "--ctx-size", "64")
    try:
        r = rbee_home.run("infer", *model, "--prompt", "hi", "--max-tokens", "2")
        assert r.returncode == 0, r.stderr
        long = ("infer", *model, "--prompt", "word " * 200, "--max-tokens", "2")
        lean, typer = _rbee(rbee_home, *long)
        full, _ = _rbee(rbee_home, *long, lean=False)
        assert not typer  # the worker was live: the error came from it, on the lean path
        assert lean.returncode == full.returncode != 0
        assert "CONTEXT_TOO_LONG" in lean.stderr and "Suggestion:" in lean.stderr
        assert lean.stderr == full.stderr and lean.stdout == full.stdout
    finally:
        rbee_home.run("hive", "stop", "localhost")


def test_a_dead_worker_falls_back_to_the_full_path(rbee_home: RbeeHome, tiny_model: Path) -> None:
    rbee_home.local_node()
    args = ("infer", "--model", f"file:{tiny_model}", "--prompt", "x", "--max-tokens", "3", "--json")
    try:
        first = json.loads(rbee_home.run(*args).stdout)
        listed = json.loads(rbee_home.run("workers", "list", "--json").stdout)
        os.kill(listed[0]["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and rbee_home.run("workers", "list", "--json").stdout.count('"id"'):
            time.sleep(0.1)
        again, typer = _rbee(rbee_home, *args)
        assert again.returncode == 0, again.stderr
        assert typer  # the lean path declined before printing anything
        second = json.loads(again.stdout)
        assert second["worker_id"] != first["worker_id"] and second["reused_worker"] is False
    finally:
        rbee_home.run("hive", "stop", "localhost")


def test_workers_fork_from_the_template_and_go_with_the_hive(rbee_home: RbeeHome, tiny_model: Path) -> None:
    rbee_home.local_node()
    r = rbee_home.run("infer", "--model", f"file:{tiny_model}", "--prompt", "x", "--max-tokens", "3", "--json")
    assert r.returncode == 0, r.stderr
    try:
        _check_forked_worker(rbee_home, json.loads(r.stdout)["worker_id"])
    except BaseException:
        rbee_home.run("hive", "stop", "localhost")
        raise


def _check_forked_worker(rbee_home: RbeeHome, wid: str) -> None:
    worker = json.loads(rbee_home.run("workers", "list", "--json").stdout)[0]
    # Forked from the template (its parent), and to ps a worker like any other.
    stat = Path(f"/proc/{worker['pid']}/stat").read_text()
    parent = int(stat[stat.rindex(")") + 2 :].split()[1])
    assert Path(f"/proc/{parent}/cmdline").read_bytes().split(b"\0")[0] == b"rbee_fabric-worker-template"
    cmdline = Path(f"/proc/{worker['pid']}/cmdline").read_bytes().split(b"\0")
    assert cmdline[1:5] == [b"-m", b"rbee_fabric.worker", b"--worker-id", wid.encode()]
    from rbee_fabric import pidfile

    assert pidfile.is_worker(worker["pid"], wid)
    (pid_file,) = rbee_home.data.glob("hive-*.pid")
    hive_pid = int(pid_file.read_text().split()[0])
    assert len(processes_with_env("RBEE_TEST_MARKER", rbee_home.marker)) == 3  # hive, template, worker
    os.kill(hive_pid, signal.SIGKILL)  # no clean-up by the hive at all
    deadline = time.monotonic() + 30
    while processes_with_env("RBEE_TEST_MARKER", rbee_home.marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_with_env("RBEE_TEST_MARKER", rbee_home.marker) == []
