"""The lean path's decisions: what it serves, and that it says what the full path says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rbee_fabric.keeper import fastpath, fastpath_args, fastpath_node, fastpath_out
from rbee_fabric.keeper.fastpath_args import LeanArgs
from rbee_fabric.keeper.request import InferOptions, build_request


def test_parses_the_usual_spellings() -> None:
    a = fastpath_args.parse(["--inventory", "/x.toml", "infer", "-m", "gemma3-270m",
                             "--prompt=hi", "--max-tokens", "20", "--json", "--seed", "7",
                             "--no-start-hive", "-n", "localhost"])  # fmt: skip
    assert a is not None
    assert (a.model, a.prompt, a.max_tokens, a.as_json, a.seed, a.start_hive, a.inventory) == (
        "gemma3-270m", "hi", 20, True, 7, False, "/x.toml"
    )


@pytest.mark.parametrize("argv", [
    ["infer", "--help"],
    ["infer", "--model", "m", "--"],
    ["infer", "--model", "m", "extra"],
    ["infer", "--model", "m", "--max-tokens", "0"],
    ["infer", "--model", "m", "--temperature", "nan"],
    ["infer", "--model", "m", "--top-p", "2"],
    ["infer", "--model", "m", "--prompt"],
    ["infer", "--model", "m", "--prompt", "-starts-with-a-dash"],
    ["infer", "--model", "m", "--raw=yes"],
    ["infer", "--model", "m", "--unknown"],
    ["infer", "--prompt", "x"],  # no model: typer says so
    ["--verbose", "infer", "--model", "m"],
    ["models", "list"],
])  # fmt: skip
def test_anything_unusual_goes_to_typer(argv: list[str]) -> None:
    assert fastpath_args.parse(argv) is None


def test_local_node_by_the_inventory_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RBEE_INVENTORY", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "none"))
    assert fastpath_node.local_node("localhost", None) == fastpath_node.LocalNode("localhost", 9200)
    assert fastpath_node.local_node("gpu-box", None) is None  # SSH: the full path
    inv = tmp_path / "hosts.toml"
    inv.write_text('[nodes.localhost]\nhostname = "127.0.0.1"\nlocal = true\nhive_port = 9555\n'
                   '[nodes.box]\nhostname = "box.lan"\nuser = "me"\n'
                   '[nodes.pool]\nhostname = "localhost"\nmax_replicas = 2\n')  # fmt: skip
    assert fastpath_node.local_node("localhost", str(inv)) == fastpath_node.LocalNode("localhost", 9555)
    assert fastpath_node.local_node("box", str(inv)) is None
    assert fastpath_node.local_node("pool", str(inv)) == fastpath_node.LocalNode("pool", 9200, 2)


def test_a_remote_node_is_lean_only_with_its_link(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rbee_fabric.keeper import link

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("RBEE_SSH_KEEP_S", raising=False)
    inv = tmp_path / "hosts.toml"
    inv.write_text('[nodes.box]\nhostname = "box.lan"\nuser = "me"\nhive_port = 9300\n'
                   '[nodes.lan]\nhostname = "lan.lan"\nnetwork = "direct"\n')  # fmt: skip
    assert fastpath_node.lean_node("box", str(inv)) is None  # no link yet: the full path
    sock = link.socket_path("box", inv)
    sock.parent.mkdir(mode=0o700, parents=True)
    sock.touch()
    assert fastpath_node.lean_node("box", str(inv)) == fastpath_node.RemoteNode("box", sock, 9300)
    link.socket_path("lan", inv).touch()
    assert fastpath_node.lean_node("lan", str(inv)) is None  # direct network: no link
    monkeypatch.setenv("RBEE_SSH_KEEP_S", "0")
    assert fastpath_node.lean_node("box", str(inv)) is None  # links off: not used either


@pytest.mark.parametrize("entry", [
    'hostname = "127.0.0.1"\nlocal = true\nhive_port = "9200"',  # pydantic would coerce: full path
    'hostname = "127.0.0.1"\nlocal = true\ncolour = "red"',  # unknown key: the full path's error
    'hostname = "127.0.0.1"\nlocal = true\nmax_replicas = 0',
    'hostname = "127.0.0.1"\nuser = "Bad User"',
])  # fmt: skip
def test_a_doubtful_inventory_goes_to_the_full_path(tmp_path: Path, entry: str) -> None:
    inv = tmp_path / "hosts.toml"
    inv.write_text(f"[nodes.localhost]\n{entry}\n")
    assert fastpath_node.local_node("localhost", str(inv)) is None


def _full_body(opts: InferOptions, chat: bool) -> dict[str, object]:
    from rbee_fabric.schemas import ChatMessage

    if chat:
        opts.messages = [ChatMessage(role="user", content=opts.prompt)]
        if opts.system:
            opts.messages.insert(0, ChatMessage(role="system", content=opts.system))
    return build_request(opts, "rid").model_dump(mode="json", exclude_unset=True)


@pytest.mark.parametrize("chat", [True, False])
@pytest.mark.parametrize("kw", [
    {}, {"max_tokens": 5, "seed": 3}, {"system": "be brief", "chat_format": "chatml"},
    {"temperature": 0.0, "top_p": 0.5},
])  # fmt: skip
def test_the_worker_request_is_the_full_paths(chat: bool, kw: dict[str, object]) -> None:
    lean = LeanArgs(model="m", prompt="hello", **kw)  # type: ignore[arg-type]
    full = InferOptions(model="m", prompt="hello", **kw)  # type: ignore[arg-type]
    assert fastpath.body_of(lean, chat, "rid") == _full_body(full, chat)


def test_sanitize_is_the_cli_one() -> None:
    from rbee_fabric.cli.ui import sanitize

    text = "ok\ttab\nline \x1b[31mred\x07 \x9b \x7f é"
    assert fastpath_out.sanitize(text) == sanitize(text)


def test_rbee_help_does_not_load_the_lean_path_and_infer_loads_no_heavy_library() -> None:
    code = (
        "import sys\n"
        "from rbee_fabric.keeper import fastpath, fastpath_stream\n"
        "from rbee_fabric import entry\n"
        "heavy = [m for m in ('typer', 'httpx', 'pydantic', 'sqlite_utils', 'rich', 'numpy',"
        " 'click') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
