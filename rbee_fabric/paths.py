"""Where rbee keeps its files on a machine, keeper and node alike.

Data (databases, models, logs, pid files, the node venv) lives under
`~/.local/share/rbee/`, configuration (the node API key) under
`~/.config/rbee/`. `RBEE_DATA_DIR` and `RBEE_CONFIG_DIR` override both, and
the XDG variables are honoured, so tests and several users never collide.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """The data directory (not created)."""
    if env := os.environ.get("RBEE_DATA_DIR"):
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "rbee"


def config_dir() -> Path:
    """The configuration directory (not created)."""
    if env := os.environ.get("RBEE_CONFIG_DIR"):
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "rbee"


def inventory_file() -> Path:
    """The default inventory: hosts.toml in the configuration directory."""
    return config_dir() / "hosts.toml"


def models_dir() -> Path:
    return data_dir() / "models"


def logs_dir() -> Path:
    return data_dir() / "logs"


def hive_log_file() -> Path:
    return logs_dir() / "hive.log"


def api_key_file() -> Path:
    return config_dir() / "api_key"


def ensure_dir(path: Path) -> Path:
    """Create a directory and its parents, private to the user."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def read_api_key(path: Path | None = None) -> str | None:
    """The node API key, or None when the file does not exist.

    ConfigError when the file exists but holds no key (emptied or truncated):
    a new key is never invented over it, since the hive may still hold the old one.
    """
    path = path or api_key_file()
    try:
        key = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    if not key:
        from rbee_fabric.errors import ConfigError

        raise ConfigError(
            f"the API key file {path} is empty",
            hint=f"delete it (rm {path}) so rbee creates a new key, then restart the hive "
            "(rbee hive stop localhost; the next command starts it with the new key)",
            details={"key_file": str(path)},
        )
    return key


def ensure_api_key(path: Path | None = None) -> str:
    """Read the node API key, creating it (mode 0600, atomically) if absent."""
    path = path or api_key_file()
    if (key := read_api_key(path)) is not None:
        return key
    ensure_dir(path.parent)
    import secrets  # only when a key is made: the lean path only reads it

    key = secrets.token_urlsafe(32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(key + "\n")
    try:
        # link() fails if another process created the key first: keep theirs.
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    key_read = read_api_key(path)
    if key_read is None:  # removed again between our link and our read
        return ensure_api_key(path)
    return key_read
