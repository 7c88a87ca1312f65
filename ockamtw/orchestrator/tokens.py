"""
Bearer tokens of the Orchestrator's HTTP API: 32 random bytes shown once
as C{otw_<base64url>}, stored only as their SHA-256 (hex); and the limits
of what a token or a one-time enrollment code may be given.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

PREFIX = "otw_"

#: The longest lifetime (seconds) of an administrator's token made with
#: C{POST /v0/tokens} (C{ockam orchestrator token create --expires-in}).
MAX_TOKEN_LIFETIME = 10 * 366 * 86400
#: The longest lifetime (seconds) and the most uses of a one-time code, made
#: over the authority (ockamtw's CreateToken keys) or the HTTP API.
MAX_CODE_LIFETIME = 366 * 86400
MAX_CODE_USES = 1000


def new_token() -> str:
    """
    A fresh token (the only time it exists in clear, apart from the file or
    terminal it is given to).
    """
    return PREFIX + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def seconds(value, most: float) -> bool:
    """
    Whether C{value} (from JSON) is a number of seconds above 0 and at
    most C{most}: not a boolean, not NaN or infinite.
    """
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and 0 < value <= most)


def looks_like_token(text: str) -> bool:
    return text.startswith(PREFIX) and 20 <= len(text) <= 100


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
