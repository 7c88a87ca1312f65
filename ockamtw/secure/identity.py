"""
Ockam 0.83 identities: an Ed25519 root key and its signed change history.

An identity's export is its change history in BARE
(L{ockamtw.secure.codec.decode_change_history}).  The first change is a
CreateKey of the root key (label C{OCKAM_RK}, Ed25519, persistent, 32
bytes) signed by that key (SelfSign); each later change is a RotateKey
signed by the new key (SelfSign) and by the key it replaces (PrevSign).
Every signature is over the change id, SHA-256 of the BARE change.  The
identifier, C{"P"} and the hex SHA-256 of the first public key, never
changes.

  - L{Identity}: a verified identity (someone else's, or the public half of
    ours).  L{Identity.from_export} (also L{import_identity}) verifies the
    whole chain; L{Identity.verify} checks a signature by the current root
    key.
  - L{LocalIdentity}: one we hold the current private key of:
    L{LocalIdentity.create}, L{LocalIdentity.sign}, L{LocalIdentity.rotate},
    L{LocalIdentity.save} and L{LocalIdentity.load}.

Identity file format (L{LocalIdentity.save}): UTF-8 JSON, mode 0600, written
atomically (temporary file in the same directory, fsync, rename)::

    {"format": "ockamtw-identity", "version": 1,
     "identifier": "P...",
     "export": "<hex of the change history>",
     "secret_key": "<hex of the 32-byte Ed25519 seed of the current root key>"}

Only the current root key is stored: earlier keys are needed neither to sign
nor to rotate again.  An identity whose key is kept in a vault
(L{ockamtw.secure.vault}) has, instead of C{secret_key}, the vault's name
and the key's id::

    {..., "vault": "v1", "key_id": "<hex SHA-256 of the public key>"}

and the vault is looked up in the C{vaults} directory next to the identity
file's directory (C{$OCKAM_HOME/identities/X.json} keeps its key in
C{$OCKAM_HOME/vaults/v1.json}).

Every failure raises L{IdentityError}.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Iterable, Optional, Tuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import WireError
from .codec import (
    Change,
    ChangeKind,
    ChangeSignature,
    KeyChangeData,
    Persistence,
    SecretType,
    SignatureType,
    SignedChange,
    decode_change_history,
    encode_change_history,
)
from .errors import IdentityError
from .files import read_private_json

__all__ = [
    "ROOT_LABEL",
    "INITIAL_CHANGE_ID",
    "IDENTITY_FILE_FORMAT",
    "IdentityError",
    "Identity",
    "LocalIdentity",
    "import_identity",
    "identifier_of",
    "change_id_of",
]

#: The label of the root key in every change.
ROOT_LABEL = "OCKAM_RK"
#: The previous change id of the first change.
INITIAL_CHANGE_ID = hashlib.sha256(b"OCKAM_INITIAL_CHANGE").digest()
#: The C{format} field of an identity file.
IDENTITY_FILE_FORMAT = "ockamtw-identity"
_FILE_VERSION = 1
#: Identity files larger than this are refused unread.
_MAX_FILE = 1 << 20

ED25519_KEY_LEN = 32
ED25519_SIGNATURE_LEN = 64

_RAW = serialization.Encoding.Raw


def identifier_of(first_public_key: bytes) -> str:
    """
    The identifier of an identity whose first root public key is given.
    """
    return "P" + hashlib.sha256(bytes(first_public_key)).hexdigest()


def change_id_of(change: Change) -> bytes:
    """
    SHA-256 of the BARE encoding of C{change}.
    """
    return hashlib.sha256(change.encode()).digest()


def _ed25519_verify(public_key: bytes, data: bytes, signature: bytes) -> bool:
    if len(public_key) != ED25519_KEY_LEN or len(signature) != ED25519_SIGNATURE_LEN:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(bytes(public_key)).verify(bytes(signature), bytes(data))
    except (InvalidSignature, ValueError):
        return False
    return True


def _public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)


def _seed_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def _private_key(seed: Optional[bytes]) -> Ed25519PrivateKey:
    if seed is None:
        return Ed25519PrivateKey.generate()
    if not isinstance(seed, (bytes, bytearray)) or len(seed) != ED25519_KEY_LEN:
        raise IdentityError(f"an Ed25519 seed is {ED25519_KEY_LEN} bytes")
    return Ed25519PrivateKey.from_private_bytes(bytes(seed))


def _root_key_data(prev_change_id: bytes, public_key: bytes) -> KeyChangeData:
    return KeyChangeData(
        prev_change_id,
        ROOT_LABEL,
        SecretType.ED25519,
        Persistence.PERSISTENT,
        ED25519_KEY_LEN,
        public_key,
        SecretType.ED25519,
    )


_REQUIRED_SIGNATURES = {
    ChangeKind.CREATE_KEY: (SignatureType.SELF_SIGN,),
    ChangeKind.ROTATE_KEY: (SignatureType.SELF_SIGN, SignatureType.PREV_SIGN),
}


def _verify_history(changes: Tuple[SignedChange, ...]) -> None:
    """
    Verify a whole change history.

    @raise IdentityError: naming the first change that does not verify.
    """
    if not changes:
        raise IdentityError("identity export has no changes")
    prev_id = INITIAL_CHANGE_ID
    prev_key: Optional[bytes] = None
    for i, sc in enumerate(changes):
        where = f"identity change {i}"
        change, data = sc.change, sc.change.data
        expected_kind = ChangeKind.CREATE_KEY if i == 0 else ChangeKind.ROTATE_KEY
        if change.kind != expected_kind:
            raise IdentityError(
                f"{where} is {change.kind.name}; expected {expected_kind.name} "
                f"(the first change creates the root key, later ones rotate it)"
            )
        if data.prev_change_id != prev_id:
            raise IdentityError(f"{where} does not follow the previous change (wrong prev_change_id)")
        if data.label != ROOT_LABEL:
            raise IdentityError(f"{where} has key label {data.label!r}, not {ROOT_LABEL!r}")
        if data.key_stype != SecretType.ED25519 or data.stype != SecretType.ED25519:
            raise IdentityError(
                f"{where} has a {data.key_stype.name} key ({data.stype.name} attributes); "
                f"only Ed25519 root keys are supported"
            )
        if data.length != ED25519_KEY_LEN or len(data.public_key) != ED25519_KEY_LEN:
            raise IdentityError(
                f"{where} has an Ed25519 key of {len(data.public_key)} bytes "
                f"(declared length {data.length}); expected {ED25519_KEY_LEN}"
            )
        cid = change_id_of(change)
        if cid != sc.change_id:
            raise IdentityError(f"{where} has a change id that is not SHA-256 of the change")
        required = _REQUIRED_SIGNATURES[change.kind]
        found = tuple(sorted(s.sig_type for s in sc.signatures))
        if found != required:
            raise IdentityError(
                f"{where} ({change.kind.name}) is signed by "
                f"[{', '.join(t.name for t in found)}]; it needs exactly "
                f"[{', '.join(t.name for t in required)}]"
            )
        for sig in sc.signatures:
            key = data.public_key if sig.sig_type == SignatureType.SELF_SIGN else prev_key
            assert key is not None
            if not _ed25519_verify(key, cid, sig.data):
                raise IdentityError(f"{where}: {sig.sig_type.name} signature does not verify")
        prev_id = cid
        prev_key = data.public_key


class Identity:
    """
    A verified identity: its change history, identifier and current root
    public key.  Equal when their exports are equal.

    Make one with L{Identity.from_export} (or L{import_identity}).
    """

    __slots__ = ("_changes", "_export", "_identifier")

    def __init__(self, changes: Iterable[SignedChange]) -> None:
        """
        Verify C{changes} and hold them.

        @raise IdentityError: when they cannot be encoded or do not verify.
        """
        try:
            export = encode_change_history(tuple(changes))
            normalized = decode_change_history(export)  # plain ints become enums
        except WireError as e:
            raise IdentityError(f"identity cannot be encoded: {e}") from None
        self._init_verified(normalized, export)

    def _init_verified(self, changes: Tuple[SignedChange, ...], export: bytes) -> None:
        _verify_history(changes)
        self._changes = changes
        self._export = export
        self._identifier = identifier_of(changes[0].change.data.public_key)

    @classmethod
    def from_export(cls, data: bytes) -> "Identity":
        """
        Decode and verify an export.

        @raise IdentityError: for malformed or trailing bytes, unknown enum
            values, a non-canonical encoding, or a chain that does not verify.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise IdentityError(f"an identity export is bytes, not {type(data).__name__}")
        data = bytes(data)
        try:
            changes = decode_change_history(data)
        except WireError as e:
            raise IdentityError(f"malformed identity export: {e}") from None
        if encode_change_history(changes) != data:
            # The decoder refuses non-minimal uvarints, so this should not
            # happen; kept so that what we verify is exactly what we got.
            raise IdentityError("identity export is not canonically encoded")
        identity = Identity.__new__(Identity)
        identity._init_verified(changes, data)
        return identity

    @property
    def identifier(self) -> str:
        """
        C{"P"} + hex SHA-256 of the first root public key.
        """
        return self._identifier

    @property
    def changes(self) -> Tuple[SignedChange, ...]:
        return self._changes

    @property
    def public_key(self) -> bytes:
        """
        The current (last) Ed25519 root public key.
        """
        return self._changes[-1].change.data.public_key

    def export(self) -> bytes:
        """
        The BARE change history.
        """
        return self._export

    def verify(self, data: bytes, signature: bytes) -> None:
        """
        Check an Ed25519 signature of C{data} by the current root key.

        @raise IdentityError: when it does not verify.
        """
        if not isinstance(signature, (bytes, bytearray, memoryview)):
            raise IdentityError("a signature is bytes")
        if not _ed25519_verify(self.public_key, bytes(data), bytes(signature)):
            raise IdentityError(f"signature does not verify with the root key of {self._identifier}")

    def public(self) -> "Identity":
        """
        This identity without any private key.
        """
        out = Identity.__new__(Identity)
        out._changes = self._changes
        out._export = self._export
        out._identifier = self._identifier
        return out

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Identity):
            return self._export == other._export
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._export)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._identifier} changes={len(self._changes)}>"


def import_identity(data: bytes) -> Identity:
    """
    L{Identity.from_export}.
    """
    return Identity.from_export(data)


class LocalIdentity(Identity):
    """
    An identity with the private half of its current root key.
    """

    __slots__ = ("_key",)

    def __init__(self, changes: Iterable[SignedChange], key: Ed25519PrivateKey) -> None:
        Identity.__init__(self, changes)
        if _public_bytes(key) != self.public_key:
            raise IdentityError("private key does not match the identity's current root key")
        self._key = key

    @classmethod
    def create(cls, seed: Optional[bytes] = None) -> "LocalIdentity":
        """
        A new identity: one CreateKey of an Ed25519 root key, self-signed.

        @param seed: the 32-byte Ed25519 private key (tests); fresh when
            C{None}.
        """
        key = _private_key(seed)
        change = Change(ChangeKind.CREATE_KEY, _root_key_data(INITIAL_CHANGE_ID, _public_bytes(key)))
        cid = change_id_of(change)
        signed = SignedChange(
            cid, change, (ChangeSignature(SignatureType.SELF_SIGN, key.sign(cid)),)
        )
        return cls((signed,), key)

    @classmethod
    def from_secret(cls, export: bytes, secret_key: bytes) -> "LocalIdentity":
        """
        Rebuild from an export and the 32-byte seed of its current root key.
        """
        public = Identity.from_export(export)
        return cls(public.changes, _private_key(secret_key))

    def secret(self) -> bytes:
        """
        The 32-byte seed of the current root key (L{from_secret} takes it
        back); for keeping the identity elsewhere, e.g. sealed in a
        database.
        """
        return _seed_bytes(self._key)

    def rotate(self, seed: Optional[bytes] = None) -> "LocalIdentity":
        """
        A new L{LocalIdentity} whose history adds a RotateKey to a new root
        key, signed by the new key (SelfSign) and by the current one
        (PrevSign).  This object is unchanged.
        """
        new_key = _private_key(seed)
        data = _root_key_data(self._changes[-1].change_id, _public_bytes(new_key))
        change = Change(ChangeKind.ROTATE_KEY, data)
        cid = change_id_of(change)
        signed = SignedChange(
            cid,
            change,
            (
                ChangeSignature(SignatureType.SELF_SIGN, new_key.sign(cid)),
                ChangeSignature(SignatureType.PREV_SIGN, self._key.sign(cid)),
            ),
        )
        return LocalIdentity(self._changes + (signed,), new_key)

    def sign(self, data: bytes) -> bytes:
        """
        The 64-byte Ed25519 signature of C{data} by the current root key.
        """
        return self._key.sign(bytes(data))

    # --- files -----------------------------------------------------------

    def save(self, path: str, vault=None) -> None:
        """
        Write the identity file (see the module docstring) atomically with
        mode 0600, replacing any file at C{path}; with C{vault} (a
        L{ockamtw.secure.vault.SoftwareVault}), the key goes into the vault
        first and the file names it.

        @raise IdentityError: when it cannot be written.
        """
        doc = {
            "format": IDENTITY_FILE_FORMAT,
            "version": _FILE_VERSION,
            "identifier": self._identifier,
            "export": self._export.hex(),
        }
        if vault is None:
            doc["secret_key"] = _seed_bytes(self._key).hex()
        else:
            from .vault import key_id

            kid = key_id(self.public_key)
            vault.put(kid, _seed_bytes(self._key))
            doc.update(vault=vault.name, key_id=kid)
        raw = (json.dumps(doc, indent=1) + "\n").encode("utf-8")
        path = os.path.abspath(os.fspath(path))
        directory, name = os.path.split(path)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
        except OSError as e:
            raise IdentityError(f"cannot write identity file {path}: {e.strerror or e}") from None
        try:
            try:
                os.fchmod(fd, 0o600)
                view = memoryview(raw)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise IdentityError(f"cannot write identity file {path}: {e.strerror or e}") from None
        try:
            dfd = os.open(directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(dfd)
        except OSError:
            pass
        finally:
            os.close(dfd)

    @classmethod
    def load(cls, path: str, vaults_dir: Optional[str] = None) -> "LocalIdentity":
        """
        Read an identity file written by L{save}; the chain is verified
        again and the key must match it.  A key kept in a vault is read from
        the vault's file in C{vaults_dir} (by default the C{vaults}
        directory next to the identity file's directory).

        @raise IdentityError: when the file is missing, readable by group or
            others, too large, malformed, or does not verify.
        """
        path = os.fspath(path)
        doc = read_private_json(path, "identity file", IdentityError, _MAX_FILE, holds="a private key")
        if not isinstance(doc, dict) or doc.get("format") != IDENTITY_FILE_FORMAT:
            raise IdentityError(f"{path} is not an {IDENTITY_FILE_FORMAT} file")
        if doc.get("version") != _FILE_VERSION:
            raise IdentityError(f"identity file {path} has unsupported version {doc.get('version')!r}")
        fields = {}
        for field in ("export", "secret_key") if doc.get("vault") is None else ("export",):
            value = doc.get(field)
            try:
                fields[field] = bytes.fromhex(value)
            except (TypeError, ValueError):
                raise IdentityError(f"identity file {path}: {field!r} is not hex") from None
        if doc.get("vault") is not None:
            from .vault import vault_of_identity_file

            if not isinstance(doc["vault"], str) or not isinstance(doc.get("key_id"), str):
                raise IdentityError(f"identity file {path}: 'vault' and 'key_id' must be text")
            vault = vault_of_identity_file(path, doc["vault"], vaults_dir)
            try:
                fields["secret_key"] = vault.get(doc["key_id"])
            except IdentityError as e:
                raise IdentityError(f"identity file {path}: {e}") from None
        try:
            identity = cls.from_secret(fields["export"], fields["secret_key"])
        except IdentityError as e:
            raise IdentityError(f"identity file {path}: {e}") from None
        if doc.get("identifier") != identity.identifier:
            raise IdentityError(
                f"identity file {path} names {doc.get('identifier')!r} but its export is "
                f"{identity.identifier}"
            )
        return identity

    def __reduce__(self):
        raise TypeError("a LocalIdentity holds a private key; save it explicitly")
