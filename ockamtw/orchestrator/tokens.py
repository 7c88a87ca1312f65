"""
Bearer tokens of the Orchestrator's HTTP API: 32 random bytes shown once
as C{otw_<base64url>}, stored only as their SHA-256 (hex).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

PREFIX = "otw_"


def new_token() -> str:
    """
    A fresh token (the only time it exists in clear, apart from the file or
    terminal it is given to).
    """
    return PREFIX + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def looks_like_token(text: str) -> bool:
    return text.startswith(PREFIX) and 20 <= len(text) <= 100


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
