"""What a node name may be, and the names of this machine (stdlib only: the lean path reads it)."""

from __future__ import annotations

import re

DEFAULT_HIVE_PORT = 9200
LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", re.IGNORECASE)


def valid_name(name: str) -> bool:
    """A DNS name (labels of letters, digits and '-', separated by dots) or a loopback literal."""
    if name in LOCAL_NAMES:
        return True
    labels = name.split(".")
    return bool(name) and len(name) <= 253 and all(_LABEL.match(lbl) for lbl in labels)
