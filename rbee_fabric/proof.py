"""Proof that a daemon holds the node's API key, without revealing the key.

The keeper sends a fresh random nonce to `/v1/health` (which needs no key);
the daemon answers HMAC-SHA256(key, domain + nonce). The keeper compares it
with its own computation in constant time and only then sends the key. A
program that merely holds the port cannot answer, so it never sees the key.
"""

from __future__ import annotations

import hashlib
import hmac
import os

DOMAIN = b"rbee-health-proof-v1:"
MAX_NONCE = 128


def new_nonce() -> str:
    return os.urandom(16).hex()  # as secrets.token_hex, without importing random


def valid_nonce(nonce: str) -> bool:
    return 0 < len(nonce) <= MAX_NONCE and all(c in "0123456789abcdef" for c in nonce)


def answer(api_key: str, nonce: str) -> str:
    """The daemon's answer to nonce."""
    return hmac.new(api_key.encode(), DOMAIN + nonce.encode(), hashlib.sha256).hexdigest()


def check(api_key: str, nonce: str, given: str | None) -> bool:
    """True when given is the answer of a holder of api_key (constant time)."""
    if not given:
        return False
    return hmac.compare_digest(answer(api_key, nonce).encode(), given.encode())
