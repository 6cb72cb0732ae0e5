"""Issue 12: fuzzing of what reaches a shell or a parser, and the small guards in process."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rbee_fabric import modelref, proof
from rbee_fabric.errors import RbeeError, UsageError
from rbee_fabric.keeper.inventory import validate_node_name
from rbee_fabric.keeper.sockowner import listener_uid
from rbee_fabric.keeper.transport.ssh import remote_line, spawn_line

# Any text a user, an inventory or a daemon could hand us, NUL excepted (argv cannot hold it).
ARG = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=40)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def through_shell(shell: str, line: str) -> list[str]:
    out = subprocess.run([shell, "-c", line], capture_output=True, check=True).stdout
    return [a.decode("utf-8", "surrogateescape") for a in out.split(b"\0")[:-1]]


@pytest.mark.parametrize("shell", ["sh", "bash"])
@FUZZ
@given(argv=st.lists(ARG, min_size=1, max_size=6))
def test_remote_commands_reach_the_node_intact(shell: str, argv: list[str]) -> None:
    line = remote_line(shlex.join(["printf", "%s\\0", *argv]))
    assert through_shell(shell, line) == argv


@FUZZ
@given(data=ARG.filter(lambda s: s and "\n" not in s), argv=st.lists(ARG, min_size=1, max_size=4))
def test_spawn_line_quotes_every_part(data: str, argv: list[str], tmp_path_factory: pytest.TempPathFactory) -> None:
    """Hostile data directories and arguments: the line runs exactly the argv, nothing else."""
    base = tmp_path_factory.mktemp("start")
    record = base / "argv"
    fake = base / "fake.sh"
    fake.write_text(f'#!/bin/sh\nprintf "%s\\0" "$@" > {shlex.quote(str(record))}\n')
    fake.chmod(0o755)
    log = str(base / "d") + data.replace("/", "_") + "/logs/hive.log"
    line = spawn_line(log, [str(fake), *argv], {"RBEE_DATA_DIR": data})
    line = line.replace("nohup setsid ", "").removesuffix(" & echo $!")  # run it in the foreground here
    subprocess.run(["sh", "-c", remote_line(line)], check=True, capture_output=True)
    got = record.read_bytes().split(b"\0")[:-1]
    assert [a.decode("utf-8", "surrogateescape") for a in got] == argv


@FUZZ
@given(text=st.one_of(ARG, st.from_regex(r"(hf:|file:/)[ -~]{0,40}", fullmatch=True)))
def test_model_reference_parser_never_crashes_and_is_stable(text: str) -> None:
    try:
        ref = modelref.parse(text)
    except RbeeError:
        return
    assert modelref.parse(ref.canonical).canonical == ref.canonical
    if ref.repo is not None:
        assert ".." not in ref.repo and not any(c in ref.repo for c in " ;|&$`'\"\\\n")


@FUZZ
@given(name=st.one_of(ARG, st.from_regex(r"[a-z0-9.-]{1,30}", fullmatch=True)))
def test_node_name_parser_accepts_only_dns_names(name: str) -> None:
    try:
        validate_node_name(name)
    except UsageError as exc:
        assert exc.hint and "DNS" in exc.hint
        return
    assert all(c.isascii() and (c.isalnum() or c in ".-") for c in name), name


# --------------------------------------------------------- GGUF array bound


def forged_gguf(path: Path, count: int, size: int) -> Path:
    key = b"general.evil"
    head = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
    head += struct.pack("<IIQ", 9, 0, count)  # an array of uint8 with `count` items
    path.write_bytes(head)
    os.truncate(path, size)  # sparse: zeros that read as valid uint8 items
    return path


def test_7_gguf_header_with_a_huge_array_count_is_refused_without_allocating(tmp_path: Path) -> None:
    bad = forged_gguf(tmp_path / "evil.gguf", 2**40, 2**36)
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "from rbee_fabric.ggufmeta import GGUFError, read_info\n"
        "try:\n    read_info(sys.argv[1])\nexcept GGUFError as e:\n    print('GGUFError', e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(bad)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-500:]
    assert "GGUFError implausible array length" in r.stdout


# ----------------------------------------------------------------- others


def test_proof_is_an_hmac_of_the_nonce() -> None:
    nonce = proof.new_nonce()
    answer = proof.answer("key-1", nonce)
    assert proof.check("key-1", nonce, answer)
    assert not proof.check("key-2", nonce, answer)
    assert not proof.check("key-1", proof.new_nonce(), answer)
    assert not proof.check("key-1", nonce, None)
    assert "key-1" not in answer


def test_listener_owner_from_proc_net(tmp_path: Path) -> None:
    me = os.getuid()
    head = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    (tmp_path / "tcp").write_text(
        head + f"   0: 0100007F:23F0 00000000:0000 0A 00000000:00000000 00:00000000 00000000  {me}        0 1\n"
        "   1: 0100007F:23F1 00000000:0000 0A 00000000:00000000 00:00000000 00000000 65534        0 2\n"
        "   2: 0100007F:23F2 0100007F:9999 01 00000000:00000000 00:00000000 00000000 65534        0 3\n"
    )
    assert listener_uid(0x23F0, tmp_path) == me
    assert listener_uid(0x23F1, tmp_path) == 65534
    assert listener_uid(0x23F2, tmp_path) is None  # established, not listening
    assert listener_uid(1, tmp_path / "missing") is None  # no /proc/net: degrade


def test_tokens_and_remote_text_are_inert_on_the_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    from rbee_fabric.cli.ui import TerminalReporter, safe, sanitize

    TerminalReporter().token("hi\x1b]52;c;ZXZpbA==\x07\x1b[2J there\n")
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert out == "hi\\x1b]52;c;ZXZpbA==\\x07\\x1b[2J there\n"
    assert sanitize("tab\tand\nnewline stay, \x9b goes") == "tab\tand\nnewline stay, \\x9b goes"
    assert safe("[bold]x[/]") == "\\[bold]x\\[/]"


def test_auth_is_decided_on_the_raw_asgi_path() -> None:
    """What the router dispatches on is what is checked, whatever the Host header says."""
    from fastapi import FastAPI

    from rbee_fabric.httpserver import install_api_key

    app = FastAPI()
    install_api_key(app, "k", "/secret/path/api_key")

    @app.get("/v1/workers")
    async def workers() -> dict[str, str]:
        return {"secret": "yes"}

    sent: list[dict] = []

    async def call(headers: list[tuple[bytes, bytes]]) -> None:
        scope = {"type": "http", "method": "GET", "path": "/v1/workers", "raw_path": b"/v1/workers",
                 "root_path": "", "query_string": b"", "headers": headers, "scheme": "http",
                 "server": ("127.0.0.1", 9200), "client": ("127.0.0.1", 5000), "http_version": "1.1",
                 "asgi": {"version": "3.0"}}  # fmt: skip

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        await app(scope, receive, send)

    asyncio.run(call([(b"host", b"x/v1/health?")]))
    assert sent[0]["status"] == 401
    body = json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
    assert body["error"]["code"] == "INVALID_API_KEY" and "/secret/path" not in json.dumps(body)
    sent.clear()
    asyncio.run(call([(b"host", b"127.0.0.1"), (b"authorization", b"Bearer k")]))
    assert sent[0]["status"] == 200
