"""`rbee models push` over SSH (the in-process server): copy once, never leave a file behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from rbee_fabric.keeper import hivectl
from rbee_fabric.keeper.inventory import Node
from rbee_fabric.keeper.push import push
from rbee_fabric.keeper.transport import NodeHive, connector_for
from tests.conftest import RbeeHome
from tests.support.insshd import InSshd, fake_install
from tests.support.procs import free_port


class _Notes:
    def __init__(self) -> None:
        self.infos: list[str] = []
        self.copied = 0

    def info(self, msg: str) -> None:
        self.infos.append(msg)

    def attempt(self, n: int, total: int, address: str, error: str) -> None:
        pass

    def transfer(self, name: str, done: int, total: int) -> None:
        self.copied = done


async def test_push_copies_once_and_replaces_without_leftovers(
    rbee_home: RbeeHome, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await InSshd(tmp_path / "sshd").start()
    monkeypatch.setenv("RBEE_SSH_CONFIG", str(server.ssh_config(tmp_path / "ssh_config")))
    install = tmp_path / "install"
    fake_install(install, server.home)
    node = Node(name="insshd", hostname="insshd", local=False, install_dir=str(install), hive_port=free_port())
    t = NodeHive(connector_for(node))
    pushed_dir = install / "models" / "pushed"
    try:
        first = _Notes()
        info = await push(t, str(tiny_model), first)
        remote = pushed_dir / tiny_model.name
        assert first.copied == tiny_model.stat().st_size
        assert info.path == str(remote) and remote.read_bytes() == tiny_model.read_bytes()
        stamp = remote.stat().st_mtime_ns

        again = _Notes()
        same = await push(t, str(tiny_model), again)
        assert again.copied == 0 and any("nothing to copy" in m for m in again.infos)
        assert same.id == info.id and remote.stat().st_mtime_ns == stamp

        # The node's copy is damaged: the catalog's size no longer matches, so it is copied again.
        remote.write_bytes(b"broken")
        fixed = _Notes()
        await push(t, str(tiny_model), fixed)
        assert fixed.copied == tiny_model.stat().st_size and remote.read_bytes() == tiny_model.read_bytes()
        assert sorted(p.name for p in pushed_dir.iterdir()) == [tiny_model.name]  # no .part, no old copy
    finally:
        await hivectl.stop(t)
        await t.close()
        await server.stop()
