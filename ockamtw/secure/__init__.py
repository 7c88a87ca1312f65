"""
The cryptographic core of Ockam 0.83 secure channels: the Noise XX
handshake (L{noise}), identities and their change histories (L{identity}),
and the BARE messages of the channel (L{codec}).

Bad bytes raise L{ockamtw.errors.WireError}; cryptographic and identity
failures raise L{SecureChannelError} (L{IdentityError} is a subclass).
"""

from .codec import (
    Change,
    ChangeKind,
    ChangeSignature,
    CreateResponderChannelMessage,
    IdentityChannelMessage,
    KeyChangeData,
    Persistence,
    SecretType,
    SignatureType,
    SignedChange,
    decode_change_history,
    decode_encrypted_payload,
    decode_key_exchange,
    encode_change_history,
    encode_encrypted_payload,
    encode_key_exchange,
)
from .errors import IdentityError, SecureChannelError
from .identity import Identity, LocalIdentity, identifier_of, import_identity
from .noise import CipherState, HandshakeState

__all__ = [
    "SecureChannelError",
    "IdentityError",
    "HandshakeState",
    "CipherState",
    "Identity",
    "LocalIdentity",
    "import_identity",
    "identifier_of",
    "CreateResponderChannelMessage",
    "IdentityChannelMessage",
    "encode_key_exchange",
    "decode_key_exchange",
    "encode_encrypted_payload",
    "decode_encrypted_payload",
    "encode_change_history",
    "decode_change_history",
    "SignedChange",
    "Change",
    "ChangeKind",
    "ChangeSignature",
    "KeyChangeData",
    "SecretType",
    "Persistence",
    "SignatureType",
]
