from pathlib import Path

import pytest

from rbee_fabric.errors import InventoryError, UnknownNode, UsageError
from rbee_fabric.keeper import inventory


def write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "hosts.toml"
    p.write_text(text)
    return str(p)


def test_builtin_inventory_has_only_localhost(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RBEE_INVENTORY", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    inv = inventory.load(None)
    assert inv.path is None
    assert list(inv.nodes) == ["localhost"]
    assert inv.nodes["localhost"].local


def test_lookup_order_flag_then_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    a = tmp_path / "a.toml"
    a.write_text('[nodes.alpha]\nhostname = "alpha.lan"\n')
    b = tmp_path / "b.toml"
    b.write_text('[nodes.beta]\nhostname = "beta.lan"\n')
    monkeypatch.setenv("RBEE_INVENTORY", str(b))
    assert "beta" in inventory.load(None).nodes
    assert "alpha" in inventory.load(str(a)).nodes


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[nodes.mac]\nhostname = "mac.lan"\nhive_prot = 1\n', "nodes.mac.hive_prot"),
        ('[nodes.mac]\nhostname = "mac.lan"\nhive_port = "x"\n', "nodes.mac.hive_port"),
        ('[nodes.mac]\nhostname = "mac.lan"\nbackend = "rocm"\n', "nodes.mac.backend"),
        ('[nodes.mac]\nuser = "me"\n', "nodes.mac.hostname"),
        ('[node.mac]\nhostname = "mac.lan"\n', "node"),
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InventoryError) as exc:
        inventory.load(path)
    assert path in exc.value.message
    assert key in exc.value.message
    assert exc.value.exit_code == 2


def test_duplicate_node_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, '[nodes.mac]\nhostname = "a"\n[nodes.mac]\nhostname = "b"\n')
    with pytest.raises(InventoryError, match=r"hosts\.toml"):
        inventory.load(path)


def test_missing_file_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(InventoryError) as exc:
        inventory.load(str(tmp_path / "nope.toml"))
    # A pip user has no hosts.example.toml: the hint is a command that writes a starter.
    assert exc.value.hint == f"write a commented starter there: rbee --inventory {tmp_path / 'nope.toml'} nodes init"
    assert exc.value.exit_code == 2


def test_resolution_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ssh_config").write_text("Host alias\n    HostName 10.0.0.9\n")
    monkeypatch.setenv("RBEE_SSH_CONFIG", str(tmp_path / "ssh_config"))
    inv = inventory.load(write(tmp_path, '[nodes.gpu]\nhostname = "10.0.0.5"\nuser = "ai"\n'))
    assert inv.resolve("gpu").hostname == "10.0.0.5"
    assert inv.resolve("gpu").user == "ai"
    for local in ("localhost", "127.0.0.1", "::1"):
        assert inv.resolve(local).local
    home_arpa = inv.resolve("mac", resolves=lambda host: host == "mac.home.arpa")
    assert home_arpa.hostname == "mac.home.arpa" and not home_arpa.local
    assert inv.resolve("box.example.org").hostname == "box.example.org"
    # The SSH config comes before the .home.arpa fallback: the name as typed, as `ssh alias` does.
    assert inv.resolve("alias", resolves=lambda host: True).hostname == "alias"
    with pytest.raises(UnknownNode, match=r"tried nosuch through the SSH config, then nosuch\.home\.arpa"):
        inv.resolve("nosuch", resolves=lambda host: False)


@pytest.mark.parametrize("name", ["mac; rm -rf /", "-oProxyCommand=x", "a b", "", "x" * 64, "ma_c"])
def test_unsafe_node_names_are_refused(tmp_path: Path, name: str) -> None:
    inv = inventory.load(write(tmp_path, ""))
    with pytest.raises(UsageError):
        inv.resolve(name)


def test_example_inventory_documents_every_key_and_parses() -> None:
    example = Path(__file__).parents[2] / "hosts.example.toml"
    inv = inventory.load(str(example))
    text = example.read_text()
    for key in inventory.NodeEntry.model_fields:
        assert f"{key} =" in text, f"hosts.example.toml does not document {key}"
    assert len(inv.nodes) > 1


def test_the_default_inventory_lives_in_the_config_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # RBEE_CONFIG_DIR moves hosts.toml with the API key; the lean path reads the same file.
    from rbee_fabric.keeper import fastpath_node

    monkeypatch.delenv("RBEE_INVENTORY", raising=False)
    monkeypatch.setenv("RBEE_CONFIG_DIR", str(tmp_path))
    assert inventory.inventory_path(None) is None and fastpath_node.inventory_path(None) is None
    (tmp_path / "hosts.toml").write_text('[nodes.gpu]\nhostname = "gpu.example"\n')
    assert inventory.inventory_path(None) == fastpath_node.inventory_path(None) == tmp_path / "hosts.toml"
    assert "gpu" in inventory.load().nodes
