"""
A software vault: where the private keys of identities are kept, in one
file (as Ockam 0.83's default vault is a file of its own).

A vault file is UTF-8 JSON, mode 0600, replaced atomically (temporary file
in the same directory, fsync, rename) under an exclusive lock on a lock
file next to it (C{.NAME.lock}), so that two commands adding keys at once
both keep theirs::

    {"format": "ockamtw-vault", "version": 1, "name": "v1", "type": "software",
     "secrets": {"<key id>": "<hex of the 32-byte Ed25519 seed>"}}

A key's id is the hex SHA-256 of its public key (L{key_id}).  An identity
whose key is in a vault names the vault and the key id in its own file
instead of holding the key (see L{ockamtw.secure.identity}).

Every failure raises L{VaultError} (an L{IdentityError}) in one line that
names the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from typing import Dict, Iterator, Optional

from .errors import IdentityError
from .files import read_private_json

VAULT_FILE_FORMAT = "ockamtw-vault"
_FILE_VERSION = 1
#: Vault files larger than this are refused unread.
_MAX_FILE = 4 << 20
#: The only kind of vault there is (Ockam 0.83 also had AWS KMS vaults).
SOFTWARE = "software"


class VaultError(IdentityError):
    """
    A vault that cannot be read or written, or a key that is not in it.
    """


def key_id(public_key: bytes) -> str:
    """
    The id under which a vault keeps the private half of C{public_key}.
    """
    return hashlib.sha256(bytes(public_key)).hexdigest()


class SoftwareVault:
    """
    The vault in the file C{path} (named by the file, without C{.json}).
    """

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(os.fspath(path))
        name = os.path.basename(self.path)
        self.name = name[: -len(".json")] if name.endswith(".json") else name

    @property
    def _lock_path(self) -> str:
        directory, name = os.path.split(self.path)
        return os.path.join(directory, f".{self.name}.lock")

    # --- the file ---------------------------------------------------------------

    @classmethod
    def create(cls, path: str) -> "SoftwareVault":
        """
        A new, empty vault file at C{path} (created exclusively, 0600).

        @raise VaultError: if it exists or cannot be written.
        """
        vault = cls(path)
        try:
            fd = os.open(vault.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise VaultError(f"vault {vault.name!r} already exists ({vault.path})") from None
        except OSError as e:
            raise VaultError(f"cannot create vault file {vault.path}: {e.strerror or e}") from None
        try:
            os.write(fd, _encode(vault.name, {}))
            os.fsync(fd)
        except OSError as e:
            os.close(fd)
            os.unlink(vault.path)
            raise VaultError(f"cannot write vault file {vault.path}: {e.strerror or e}") from None
        os.close(fd)
        return vault

    def secrets(self) -> Dict[str, str]:
        """
        Key id -> hex seed of every key in the vault.

        @raise VaultError: when the file is missing, readable by group or
            others, too large, or malformed.
        """
        path = self.path
        doc = read_private_json(
            path, "vault file", VaultError, _MAX_FILE,
            missing=lambda: VaultError(f"no vault {self.name!r} ({path} is missing)"),
        )
        if not isinstance(doc, dict) or doc.get("format") != VAULT_FILE_FORMAT:
            raise VaultError(f"{path} is not an {VAULT_FILE_FORMAT} file")
        if doc.get("version") != _FILE_VERSION:
            raise VaultError(f"vault file {path} has unsupported version {doc.get('version')!r}")
        secrets = doc.get("secrets")
        if not isinstance(secrets, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in secrets.items()
        ):
            raise VaultError(f"vault file {path}: 'secrets' must be an object of hex strings")
        return dict(secrets)

    def get(self, kid: str) -> bytes:
        """
        The seed of the key C{kid}.

        @raise VaultError: if the vault does not have it.
        """
        value = self.secrets().get(kid)
        if value is None:
            raise VaultError(f"vault {self.name!r} has no key {kid}")
        try:
            seed = bytes.fromhex(value)
        except ValueError:
            raise VaultError(f"vault file {self.path}: key {kid} is not hex") from None
        if len(seed) != 32:
            raise VaultError(f"vault file {self.path}: key {kid} is not a 32-byte Ed25519 key")
        return seed

    def put(self, kid: str, seed: bytes) -> None:
        """
        Keep the seed C{seed} under C{kid} (atomically, under the vault's
        lock).
        """
        with self._locked():
            secrets = self.secrets()
            secrets[kid] = bytes(seed).hex()
            self._write(secrets)

    def remove(self, kid: str) -> None:
        with self._locked():
            secrets = self.secrets()
            if secrets.pop(kid, None) is not None:
                self._write(secrets)

    def delete(self) -> None:
        """
        Remove the vault's file (and its lock file).
        """
        for path in (self.path, self._lock_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as e:
                raise VaultError(f"cannot delete vault file {path}: {e.strerror or e}") from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise VaultError(f"cannot lock vault {self.name}: {e.strerror or e} ({self._lock_path})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, secrets: Dict[str, str]) -> None:
        directory = os.path.dirname(self.path)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.name}.", suffix=".tmp", dir=directory)
        except OSError as e:
            raise VaultError(f"cannot write vault file {self.path}: {e.strerror or e}") from None
        try:
            try:
                os.fchmod(fd, 0o600)
                os.write(fd, _encode(self.name, secrets))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise VaultError(f"cannot write vault file {self.path}: {e.strerror or e}") from None

    def __repr__(self) -> str:
        return f"<SoftwareVault {self.name} {self.path}>"


def _encode(name: str, secrets: Dict[str, str]) -> bytes:
    doc = {"format": VAULT_FILE_FORMAT, "version": _FILE_VERSION, "name": name, "type": SOFTWARE,
           "secrets": dict(sorted(secrets.items()))}
    return (json.dumps(doc, indent=1) + "\n").encode("utf-8")


def vault_of_identity_file(identity_path: str, name: str, vaults_dir: Optional[str] = None) -> SoftwareVault:
    """
    The vault C{name} an identity file refers to: in C{vaults_dir}, by
    default the C{vaults} directory next to the identity file's directory
    (C{$OCKAM_HOME/identities/X.json} -> C{$OCKAM_HOME/vaults/NAME.json}).
    """
    if not name or "/" in name or name.startswith("."):
        raise VaultError(f"identity file {identity_path} names an unusable vault {name!r}")
    if vaults_dir is None:
        vaults_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(identity_path))), "vaults")
    return SoftwareVault(os.path.join(vaults_dir, name + ".json"))
