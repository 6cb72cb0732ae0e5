"""The node probe (preflight/probe.py), run as the node runs it: `python - REQUEST`, source on stdin."""

from __future__ import annotations

import ast
import json
import socket
import subprocess
import sys
from pathlib import Path

from rbee_fabric.ggufmeta import read_info
from rbee_fabric.hive.safemode import make_build_key
from rbee_fabric.keeper.preflight import facts
from rbee_fabric.keeper.preflight.parsers import parse_probe_output
from rbee_fabric.keeper.transport.base import RemoteResult

PROBE = Path(facts.__file__).with_name("probe.py")


def run_probe(request: facts.ProbeRequest, cwd: Path, pythonpath: Path | None = None) -> RemoteResult:
    env = {"PATH": "/usr/bin:/bin"} | ({"PYTHONPATH": str(pythonpath)} if pythonpath else {})
    fact = facts.probe(sys.executable, request)
    r = subprocess.run(list(fact.argv), input=fact.stdin, capture_output=True, text=True, cwd=cwd,
                       env=env, timeout=30)  # fmt: skip
    return RemoteResult("probe", r.returncode, r.stdout, r.stderr)


def fake_node_packages(root: Path) -> Path:
    """site-packages of a node: an rbee_fabric that must never be imported, a CUDA llama_cpp."""
    rbee = root / "rbee_fabric"
    rbee.mkdir(parents=True)
    (rbee / "__init__.py").write_text('__version__ = "9.9.9"\nraise SystemExit("the probe imported rbee_fabric")\n')
    lib = root / "llama_cpp" / "lib"
    lib.mkdir(parents=True)
    (root / "llama_cpp" / "__init__.py").write_text("")
    (lib / "libggml-cuda.so").write_bytes(b"x" * 300)
    (lib / "libllama.so").write_bytes(b"y" * 20)
    (lib / "libllama.so.0").symlink_to("libllama.so")
    # Its own metadata (first on sys.path, so the keeper's own llama-cpp-python is not read).
    dist = root / "llama_cpp_python-0.0.7.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: llama_cpp_python\nVersion: 0.0.7\n")
    return root


def test_the_shipped_source_is_this_module_and_stdlib_only() -> None:
    source = facts.probe_source()
    assert source == PROBE.read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


def test_probe_reads_the_install_without_importing_it(tmp_path: Path, tiny_model: Path) -> None:
    site = fake_node_packages(tmp_path / "site")
    data = tmp_path / "data"
    data.mkdir()
    key = make_build_key("0.0.7", "cuda", [("libggml-cuda.so", 300), ("libllama.so", 20)])
    record = {"signal": "SIGSEGV", "reason": "crashed", "model": "tiny", "recorded_at": 0}
    (data / "safe_mode.json").write_text(json.dumps({"version": 1, "builds": {key: record}}))
    request = facts.ProbeRequest("127.0.0.1", 1, (1, 1), str(data), str(tiny_model), 512, "no_such_demo_model")
    r = run_probe(request, tmp_path, site)
    assert r.exit_status == 0, r.stderr
    found = parse_probe_output(r)
    assert found.installed == "9.9.9"  # read from the file; importing it would have exited
    assert found.llama_backend == "cuda" and found.build_key == key and found.safe_mode == record
    info = read_info(tiny_model)
    assert found.model is not None and found.model.size == tiny_model.stat().st_size
    assert found.model.kv == info.kv_cache_bytes(512)  # the keeper's own reader, run by the probe
    assert found.alias_error is not None and "no_such_demo_model" in found.alias_error


def test_probe_finds_taken_ports(tmp_path: Path) -> None:
    with socket.socket() as hive, socket.socket() as worker:
        hive.bind(("127.0.0.1", 0))
        hive.listen(1)
        worker.bind(("127.0.0.1", 0))
        worker.listen(1)
        hport, wport = hive.getsockname()[1], worker.getsockname()[1]
        taken = run_probe(facts.ProbeRequest("127.0.0.1", hport, (wport, wport), str(tmp_path)), tmp_path)
    found = parse_probe_output(taken)
    assert found.hive_port_free is False and found.worker_port is None


def test_probe_reports_a_model_it_cannot_read(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf file at all")
    r = run_probe(facts.ProbeRequest("127.0.0.1", 1, (1, 1), str(tmp_path), str(bogus)), tmp_path)
    found = parse_probe_output(r)
    assert found.model is not None and found.model.error is not None and "GGUF" in found.model.error
