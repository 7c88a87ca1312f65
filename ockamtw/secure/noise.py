"""
The Noise_XX_25519_AESGCM_SHA256 handshake (Noise spec revision 34) and the
cipher states it yields, on the C{cryptography} package.

Pattern XX::

    -> e
    <- e, ee, s, es
    -> s, se

L{HandshakeState} runs one side.  Static and ephemeral private keys can be
injected (test vectors); by default both are fresh, as Ockam 0.83 uses a new
X25519 static key per channel.  After the third message L{HandshakeState.split}
gives this side's (send, receive) L{CipherState}s:

  - C{split(swapped=False)}: the Noise spec (initiator sends with the first
    key); the cacophony vectors use it.
  - C{split(swapped=True)} (or L{HandshakeState.ockam_split}): Ockam 0.83,
    where the initiator sends with the second key and the responder with
    the first.

Nonces are 4 zero bytes followed by the 8-byte big-endian counter.  During
the handshake the associated data is the handshake hash C{h}; Ockam's
transport messages use empty associated data and carry the counter on the
wire, so L{CipherState} also encrypts and decrypts at an explicit nonce.

Every failure raises L{SecureChannelError}.  A handshake that failed once
refuses every later call: its hash and chaining key may already have
absorbed the bad message.
"""

from __future__ import annotations

import hashlib
from typing import Optional, Tuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import SecureChannelError

__all__ = [
    "PROTOCOL_NAME",
    "DHLEN",
    "HASHLEN",
    "TAGLEN",
    "MAX_MESSAGE",
    "MAX_NONCE",
    "SecureChannelError",
    "CipherState",
    "HandshakeState",
    "nonce_bytes",
    "x25519_public_key",
    "hkdf",
]

#: The protocol name; zero-padded to 32 bytes it is the initial h and ck.
PROTOCOL_NAME = b"Noise_XX_25519_AESGCM_SHA256"
#: Size of an X25519 public key and of a shared secret.
DHLEN = 32
#: Size of a SHA-256 digest.
HASHLEN = 32
#: Size of an AES-GCM authentication tag.
TAGLEN = 16
#: The largest Noise message.
MAX_MESSAGE = 65535
#: The reserved nonce 2**64-1: never used for encryption (Noise section 5.1).
MAX_NONCE = (1 << 64) - 1

_RAW = serialization.Encoding.Raw
_RAW_PUBLIC = serialization.PublicFormat.Raw
_RAW_PRIVATE = serialization.PrivateFormat.Raw
_NO_ENCRYPTION = serialization.NoEncryption()


_NONCE_HEAD = b"\x00\x00\x00\x00"


def nonce_bytes(n: int) -> bytes:
    """
    The 12-byte AES-GCM nonce for counter C{n}: 4 zero bytes, then C{n} as
    8 bytes big-endian.

    @raise SecureChannelError: when C{n} is not 0 to 2**64-2.
    """
    if not isinstance(n, int) or n < 0 or n >= MAX_NONCE:
        raise SecureChannelError(f"nonce must be an integer 0 to 2**64-2, not {n!r}")
    return _NONCE_HEAD + n.to_bytes(8, "big")


def _hmac(key: bytes, data: bytes) -> bytes:
    m = hmac.HMAC(key, hashes.SHA256())
    m.update(data)
    return m.finalize()


def hkdf(chaining_key: bytes, ikm: bytes, outputs: int) -> Tuple[bytes, ...]:
    """
    The Noise HKDF (HMAC-SHA256): 2 or 3 outputs of 32 bytes.
    """
    temp = _hmac(chaining_key, ikm)
    out1 = _hmac(temp, b"\x01")
    out2 = _hmac(temp, out1 + b"\x02")
    if outputs == 2:
        return out1, out2
    return out1, out2, _hmac(temp, out2 + b"\x03")


def _private_key(raw: Optional[bytes], what: str) -> X25519PrivateKey:
    if raw is None:
        return X25519PrivateKey.generate()
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != DHLEN:
        raise SecureChannelError(f"{what} private key must be {DHLEN} bytes")
    return X25519PrivateKey.from_private_bytes(bytes(raw))


def _public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(_RAW, _RAW_PUBLIC)


def x25519_public_key(private: bytes) -> bytes:
    """
    The X25519 public key of a 32-byte private key.
    """
    return _public_bytes(_private_key(private, "X25519"))


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        # cryptography refuses an all-zero shared secret (a low-order point).
        raise SecureChannelError("X25519 with a low-order public key") from None


class CipherState:
    """
    An AES-256-GCM key and a counter (Noise section 5.1).

    L{encrypt_with_ad} and L{decrypt_with_ad} use and advance the counter
    C{n}, as the handshake and plain Noise transport do.  L{encrypt_at} and
    L{decrypt_at} take the counter explicitly and leave C{n} alone, for
    Ockam's transport messages that carry it on the wire.

    Without a key (only during the handshake) encryption and decryption
    return their input unchanged.
    """

    __slots__ = ("_key", "_aead", "n")

    def __init__(self, key: Optional[bytes] = None, n: int = 0) -> None:
        self._key = None
        self._aead = None
        self.n = n
        if key is not None:
            self.initialize_key(key)

    def initialize_key(self, key: bytes) -> None:
        """
        Set the key and reset the counter to 0.
        """
        if not isinstance(key, (bytes, bytearray)) or len(key) != 32:
            raise SecureChannelError("an AES-256-GCM key is 32 bytes")
        self._key = bytes(key)
        self._aead = AESGCM(self._key)
        self.n = 0

    @property
    def key(self) -> Optional[bytes]:
        """
        The 32-byte key, or C{None} before one is set.
        """
        return self._key

    def has_key(self) -> bool:
        return self._key is not None

    def set_nonce(self, n: int) -> None:
        nonce_bytes(n)  # validates
        self.n = n

    def encrypt_at(self, n: int, plaintext: bytes, ad: bytes = b"") -> bytes:
        """
        Encrypt at counter C{n}; ciphertext and 16-byte tag.  C{self.n} is
        not changed.
        """
        if self._aead is None:
            raise SecureChannelError("cipher state has no key")
        if n.__class__ is not int or not 0 <= n < MAX_NONCE:
            nonce_bytes(n)  # raises
        return self._aead.encrypt(_NONCE_HEAD + n.to_bytes(8, "big"), plaintext, ad)

    def decrypt_at(self, n: int, ciphertext: bytes, ad: bytes = b"") -> bytes:
        """
        Decrypt what L{encrypt_at} made at counter C{n}.

        @raise SecureChannelError: when it does not authenticate.
        """
        if self._aead is None:
            raise SecureChannelError("cipher state has no key")
        if len(ciphertext) < TAGLEN:
            raise SecureChannelError(f"ciphertext of {len(ciphertext)} bytes is shorter than its tag")
        if n.__class__ is not int or not 0 <= n < MAX_NONCE:
            nonce_bytes(n)  # raises
        try:
            return self._aead.decrypt(_NONCE_HEAD + n.to_bytes(8, "big"), ciphertext, ad)
        except InvalidTag:
            raise SecureChannelError(f"message with nonce {n} does not authenticate") from None

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        """
        Encrypt at counter C{n}, then advance it.
        """
        if self._aead is None:
            return bytes(plaintext)
        out = self.encrypt_at(self.n, plaintext, ad)
        self.n += 1
        return out

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """
        Decrypt at counter C{n}; advance it only when that succeeds.
        """
        if self._aead is None:
            return bytes(ciphertext)
        out = self.decrypt_at(self.n, ciphertext, ad)
        self.n += 1
        return out

    def __repr__(self) -> str:
        return f"<CipherState {'keyed' if self._key else 'empty'} n={self.n}>"


class _SymmetricState:
    """
    Noise section 5.2: the chaining key, the handshake hash and a cipher.
    """

    __slots__ = ("ck", "h", "cipher")

    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASHLEN:
            h = protocol_name.ljust(HASHLEN, b"\x00")
        else:
            h = hashlib.sha256(protocol_name).digest()
        self.h = h
        self.ck = h
        self.cipher = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = hkdf(self.ck, ikm, 2)
        self.cipher.initialize_key(temp_k)

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ct = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ct)
        return ct

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        pt = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return pt

    def split_keys(self) -> Tuple[bytes, bytes]:
        return hkdf(self.ck, b"", 2)  # type: ignore[return-value]


#: The XX pattern: (initiator writes?, tokens) for each message.
_XX = (
    (True, ("e",)),
    (False, ("e", "ee", "s", "es")),
    (True, ("s", "se")),
)


class HandshakeState:
    """
    One side of a Noise_XX_25519_AESGCM_SHA256 handshake.

    Call L{write_message} and L{read_message} alternately, the initiator
    writing first; after three messages L{is_complete} is true and
    L{split} gives the transport cipher states.

    @param initiator: C{True} for the side that sends the first message.
    @param static_key: this side's 32-byte X25519 private static key;
        fresh when C{None}.
    @param ephemeral_key: this side's 32-byte X25519 private ephemeral key;
        fresh when C{None} (only test vectors set it).
    @param prologue: bytes both sides mix into h first (Ockam: empty).
    """

    def __init__(
        self,
        initiator: bool,
        static_key: Optional[bytes] = None,
        ephemeral_key: Optional[bytes] = None,
        prologue: bytes = b"",
    ) -> None:
        self.initiator = bool(initiator)
        self._s = _private_key(static_key, "static")
        self._e_injected = ephemeral_key
        if ephemeral_key is not None:
            _private_key(ephemeral_key, "ephemeral")  # validates now
        self._e: Optional[X25519PrivateKey] = None
        self._re: Optional[bytes] = None
        self._rs: Optional[bytes] = None
        self._ss = _SymmetricState(PROTOCOL_NAME)
        self._ss.mix_hash(bytes(prologue))
        self._index = 0
        self._failed = False

    # --- state -----------------------------------------------------------

    @property
    def h(self) -> bytes:
        """
        The handshake hash so far; after the last message, the value both
        sides sign in Ockam's identity exchange.
        """
        return self._ss.h

    @property
    def message_index(self) -> int:
        """
        How many handshake messages were written or read (0 to 3).
        """
        return self._index

    def is_complete(self) -> bool:
        return self._index == len(_XX)

    def is_my_turn(self) -> bool:
        """
        True when the next step is L{write_message}.
        """
        if self.is_complete():
            return False
        return _XX[self._index][0] == self.initiator

    @property
    def static_public(self) -> bytes:
        """
        This side's X25519 static public key.
        """
        return _public_bytes(self._s)

    @property
    def ephemeral_public(self) -> Optional[bytes]:
        """
        This side's ephemeral public key, once it was created.
        """
        return None if self._e is None else _public_bytes(self._e)

    @property
    def remote_static(self) -> Optional[bytes]:
        """
        The peer's X25519 static public key, once it was received.
        """
        return self._rs

    @property
    def remote_ephemeral(self) -> Optional[bytes]:
        return self._re

    # --- messages ------------------------------------------------------------

    def _check(self, writing: bool) -> Tuple[str, ...]:
        if self._failed:
            raise SecureChannelError("handshake already failed")
        if self.is_complete():
            raise SecureChannelError("handshake already complete")
        initiator_writes, tokens = _XX[self._index]
        if (initiator_writes == self.initiator) != writing:
            which = "write" if writing else "read"
            raise SecureChannelError(
                f"cannot {which} handshake message {self._index + 1} as "
                f"{'initiator' if self.initiator else 'responder'}"
            )
        return tokens

    def _dh_token(self, token: str) -> bytes:
        # ee, es, se: the first letter is the initiator's key, the second
        # the responder's.
        if token == "ee":
            return _dh(self._e, self._re)  # type: ignore[arg-type]
        if token == "es":
            if self.initiator:
                return _dh(self._e, self._rs)  # type: ignore[arg-type]
            return _dh(self._s, self._re)  # type: ignore[arg-type]
        if token == "se":
            if self.initiator:
                return _dh(self._s, self._re)  # type: ignore[arg-type]
            return _dh(self._e, self._rs)  # type: ignore[arg-type]
        raise AssertionError(token)  # pragma: no cover

    def write_message(self, payload: bytes = b"") -> bytes:
        """
        The next handshake message, carrying C{payload} (encrypted except in
        the first message).

        @raise SecureChannelError: when it is not this side's turn or the
            message would exceed 65535 bytes.
        """
        tokens = self._check(writing=True)
        try:
            ss = self._ss
            out = []
            for token in tokens:
                if token == "e":
                    self._e = _private_key(self._e_injected, "ephemeral")
                    e_pub = _public_bytes(self._e)
                    out.append(e_pub)
                    ss.mix_hash(e_pub)
                elif token == "s":
                    out.append(ss.encrypt_and_hash(self.static_public))
                else:
                    ss.mix_key(self._dh_token(token))
            out.append(ss.encrypt_and_hash(bytes(payload)))
            message = b"".join(out)
            if len(message) > MAX_MESSAGE:
                raise SecureChannelError(
                    f"handshake message of {len(message)} bytes exceeds {MAX_MESSAGE}"
                )
        except BaseException:
            self._failed = True
            raise
        self._index += 1
        return message

    def read_message(self, message: bytes) -> bytes:
        """
        Process the peer's next handshake message; return its payload.

        @raise SecureChannelError: when the message is too short or too long,
            does not authenticate, holds a low-order key, or comes out of
            turn.  The handshake is then dead.
        """
        tokens = self._check(writing=False)
        try:
            message = bytes(message)
            if len(message) > MAX_MESSAGE:
                raise SecureChannelError(
                    f"handshake message of {len(message)} bytes exceeds {MAX_MESSAGE}"
                )
            ss = self._ss
            pos = 0
            for token in tokens:
                if token == "e":
                    if len(message) - pos < DHLEN:
                        raise SecureChannelError(
                            f"handshake message {self._index + 1} of {len(message)} bytes "
                            f"is too short for an ephemeral key"
                        )
                    self._re = message[pos : pos + DHLEN]
                    pos += DHLEN
                    ss.mix_hash(self._re)
                elif token == "s":
                    size = DHLEN + (TAGLEN if ss.cipher.has_key() else 0)
                    if len(message) - pos < size:
                        raise SecureChannelError(
                            f"handshake message {self._index + 1} of {len(message)} bytes "
                            f"is too short for a static key"
                        )
                    self._rs = ss.decrypt_and_hash(message[pos : pos + size])
                    pos += size
                else:
                    ss.mix_key(self._dh_token(token))
            payload = ss.decrypt_and_hash(message[pos:])
        except BaseException:
            self._failed = True
            raise
        self._index += 1
        return payload

    # --- the result ----------------------------------------------------------

    def split_keys(self) -> Tuple[bytes, bytes]:
        """
        The two Noise transport keys (k1, k2) = HKDF(ck, "", 2), in the
        spec's order.
        """
        if self._failed or not self.is_complete():
            raise SecureChannelError("handshake is not complete")
        return self._ss.split_keys()

    def split(self, swapped: bool) -> Tuple[CipherState, CipherState]:
        """
        This side's (send, receive) cipher states, counters at 0.

        With C{swapped=False} (the Noise spec) the initiator sends with k1
        and receives with k2.  With C{swapped=True} (Ockam 0.83) the
        initiator sends with k2 and receives with k1; the responder the
        opposite.
        """
        k1, k2 = self.split_keys()
        initiator_send, responder_send = (k2, k1) if swapped else (k1, k2)
        if self.initiator:
            return CipherState(initiator_send), CipherState(responder_send)
        return CipherState(responder_send), CipherState(initiator_send)

    def ockam_split(self) -> Tuple[CipherState, CipherState]:
        """
        L{split} as Ockam 0.83 does it (swapped).
        """
        return self.split(swapped=True)

    def __repr__(self) -> str:
        role = "initiator" if self.initiator else "responder"
        state = "failed" if self._failed else f"{self._index}/3"
        return f"<HandshakeState {role} {state}>"
