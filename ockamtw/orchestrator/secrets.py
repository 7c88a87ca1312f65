"""
Private keys at rest: encrypted with a key-encryption key (the
C{--secrets-key-file} every instance sharing a database is given), with
AES-256-GCM and the row's identity as associated data, so that a sealed key
cannot be moved to another project or role.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import OckamError

KEY_BYTES = 32
NONCE_BYTES = 12


class SecretsError(OckamError):
    """
    A key file that cannot be used, or a sealed secret that does not open
    with it (another key file, or tampered data).
    """


def load_or_create_key(path: str, create: bool = True) -> bytes:
    """
    The key in C{path} (32 bytes, hex or raw); created (mode 0600) when
    missing and C{create}.  Instances that start together on one host
    with one missing file get one key: it is written whole to a file of
    its own, then linked to C{path}, which only one of them can do; the
    others read the winner's (never a file being written).
    """
    try:
        with open(path, "rb") as f:
            data = f.read().strip()
    except FileNotFoundError:
        if not create:
            raise SecretsError(f"no secrets key file at {path}") from None
        key = _create_key(path)
        if key is not None:
            return key
        return load_or_create_key(path, create=False)
    except OSError as e:
        raise SecretsError(f"cannot read the secrets key file {path}: {e.strerror}") from None
    try:
        key = bytes.fromhex(data.decode("ascii")) if len(data) == 2 * KEY_BYTES else data
    except (UnicodeDecodeError, ValueError):
        key = data
    if len(key) != KEY_BYTES:
        raise SecretsError(f"the secrets key file {path} does not hold a {KEY_BYTES}-byte key")
    return key


def _create_key(path: str):
    """
    A new key written to C{path} (mode 0600), or C{None} if another
    process made C{path} first.
    """
    key = os.urandom(KEY_BYTES)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{os.urandom(4).hex()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.hex().encode() + b"\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            return None
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
            # A file system without hard links: made in place.
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return None
            with os.fdopen(fd, "wb") as f:
                f.write(key.hex().encode() + b"\n")
    except OSError as e:
        raise SecretsError(f"cannot write the secrets key file {path}: {e.strerror}") from None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    return key


def fingerprint(key: bytes) -> str:
    """
    What the database keeps to tell whether an instance was given the key
    its projects are sealed with (a MAC of a constant: it says nothing of
    the key).
    """
    return hmac.new(key, b"ockamtw orchestrator: secrets key check", hashlib.sha256).hexdigest()


class Sealer:
    """
    Seals and opens secrets with one key.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise SecretsError(f"a secrets key is {KEY_BYTES} bytes")
        self._aead = AESGCM(key)

    def seal(self, secret: bytes, context: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, secret, context.encode())

    def open(self, sealed: bytes, context: str) -> bytes:
        if len(sealed) < NONCE_BYTES + 16:
            raise SecretsError(f"sealed secret for {context} is too short")
        try:
            return self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], context.encode())
        except InvalidTag:
            raise SecretsError(f"the secret for {context} does not open with this secrets key file") from None
