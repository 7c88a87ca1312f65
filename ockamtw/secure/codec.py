"""
The BARE messages of Ockam 0.83 secure channels (docs/protocol.md,
section 7):

  - L{CreateResponderChannelMessage}: the payload of M1, the first
    handshake message sent to a listener;
  - key-exchange payloads (M2, M3): C{data(noise message)};
  - encrypted payloads (M4, M5 and all traffic):
    C{data(counter as 8 bytes big-endian ++ ciphertext)};
  - L{IdentityChannelMessage}: the identity exchange inside M4 and M5;
  - the identity change history (an identity's export): L{SignedChange},
    L{Change}, L{KeyChangeData}, L{ChangeSignature}.

Each format is declared once with construct (the C{*_STRUCT} names); the
functions and classes below are hand-written equivalents that the tests hold
equal to the declarations.  Decoding is strict: trailing bytes, unknown enum
values, non-minimal uvarints and truncation raise L{WireError} and nothing
else.  Whether a decoded value is acceptable (a missing custom payload, a
signature that does not verify) is for the caller to decide.
"""

from __future__ import annotations

import enum
from typing import Iterable, NamedTuple, Optional, Tuple, Union

import construct as c

from ..errors import WireError
from ..routing import Address
from ..wire import DATA_STRUCT, STRING_STRUCT, UVARINT, construct_call, read_uvarint, uvarint

__all__ = [
    "CHANGE_ID_LEN",
    "COUNTER_LEN",
    "AEAD_TAG_LEN",
    "ChangeKind",
    "SecretType",
    "Persistence",
    "SignatureType",
    "CreateResponderChannelMessage",
    "IdentityChannelMessage",
    "KeyChangeData",
    "Change",
    "ChangeSignature",
    "SignedChange",
    "encode_key_exchange",
    "decode_key_exchange",
    "encode_encrypted_payload",
    "encrypted_payload_prefix",
    "decode_encrypted_payload",
    "encode_change_history",
    "decode_change_history",
    "encode_address",
    "decode_address",
]

#: A change id and a previous change id: SHA-256 digests.
CHANGE_ID_LEN = 32
#: The counter in front of every encrypted payload.
COUNTER_LEN = 8
#: The AES-GCM tag at the end of every ciphertext.
AEAD_TAG_LEN = 16


class ChangeKind(enum.IntEnum):
    CREATE_KEY = 0
    ROTATE_KEY = 1


class SecretType(enum.IntEnum):
    BUFFER = 0
    AES = 1
    X25519 = 2
    ED25519 = 3
    NIST_P256 = 4


class Persistence(enum.IntEnum):
    EPHEMERAL = 0
    PERSISTENT = 1


class SignatureType(enum.IntEnum):
    ROOT_SIGN = 0
    SELF_SIGN = 1
    PREV_SIGN = 2


# --- the declarations -------------------------------------------------------


def _one_of(subcon, enum_cls):
    return c.OneOf(subcon, [int(v) for v in enum_cls])


#: BARE optional<data>: u8 0 (absent) or 1 (present), then the value.
OPTIONAL_DATA_STRUCT = c.Struct(
    "present" / c.OneOf(c.Int8ub, [0, 1]),
    "value" / c.If(c.this.present == 1, DATA_STRUCT),
)
CREATE_RESPONDER_CHANNEL_MESSAGE_STRUCT = c.Struct(
    "payload" / DATA_STRUCT,
    "custom_payload" / OPTIONAL_DATA_STRUCT,
    c.Terminated,
)
#: The payload of M2 and M3.
KEY_EXCHANGE_STRUCT = c.FocusedSeq("message", "message" / DATA_STRUCT, c.Terminated)
#: The payload of every encrypted message.
ENCRYPTED_PAYLOAD_STRUCT = c.FocusedSeq(
    "body",
    "body"
    / c.Prefixed(
        UVARINT,
        c.Struct("counter" / c.Int64ub, "ciphertext" / c.GreedyBytes),
    ),
    c.Terminated,
)
IDENTITY_CHANNEL_MESSAGE_STRUCT = c.Struct(
    "kind" / c.OneOf(UVARINT, [0, 1]),
    "identity" / DATA_STRUCT,
    "signature" / DATA_STRUCT,
    c.Terminated,
)
#: A BARE Address (the custom payload of M1 holds one).
ADDRESS_STRUCT = c.Struct("type" / c.Int8ub, "value" / DATA_STRUCT)
KEY_CHANGE_DATA_STRUCT = c.Struct(
    "prev_change_id" / c.Bytes(CHANGE_ID_LEN),
    "label" / STRING_STRUCT,
    "stype" / _one_of(UVARINT, SecretType),
    "persistence" / _one_of(UVARINT, Persistence),
    "length" / c.Int32ul,
    "public_key" / DATA_STRUCT,
    "key_stype" / _one_of(UVARINT, SecretType),
)
CHANGE_STRUCT = c.Struct(
    "kind" / _one_of(UVARINT, ChangeKind),
    "data" / KEY_CHANGE_DATA_STRUCT,
)
SIGNATURE_STRUCT = c.Struct(
    "sig_type" / _one_of(UVARINT, SignatureType),
    "data" / DATA_STRUCT,
)
SIGNED_CHANGE_STRUCT = c.Struct(
    "change_id" / c.Bytes(CHANGE_ID_LEN),
    "change" / CHANGE_STRUCT,
    "signatures" / c.PrefixedArray(UVARINT, SIGNATURE_STRUCT),
)
#: An identity export.
CHANGE_HISTORY_STRUCT = c.FocusedSeq(
    "changes",
    "changes" / c.PrefixedArray(UVARINT, SIGNED_CHANGE_STRUCT),
    c.Terminated,
)


# --- primitives (fast path) -------------------------------------------------

_Buf = Union[bytes, bytearray, memoryview]


#: A uvarint; L{read_uvarint} takes only the minimal form (the only form
#: Rust's encoder writes), so re-encoding a decoded value gives its bytes.
_uvarint = read_uvarint


def _data(buf: _Buf, pos: int, end: int, what: str) -> Tuple[bytes, int]:
    n, pos = _uvarint(buf, pos, end)
    if n > end - pos:
        raise WireError(f"{what} of {n} bytes truncated to {end - pos}")
    return bytes(buf[pos : pos + n]), pos + n


def _fixed(buf: _Buf, pos: int, end: int, n: int, what: str) -> Tuple[bytes, int]:
    if n > end - pos:
        raise WireError(f"{what} of {n} bytes truncated to {end - pos}")
    return bytes(buf[pos : pos + n]), pos + n


def _enum(enum_cls, value: int, what: str):
    try:
        return enum_cls(value)
    except ValueError:
        raise WireError(f"unknown {what} {value}") from None


def _end(pos: int, end: int, what: str) -> None:
    if pos != end:
        raise WireError(f"{end - pos} trailing bytes after {what}")


def _bytes(value, what: str) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise WireError(f"{what} must be bytes, not {type(value).__name__}")
    return bytes(value)


def _enc_data(value, what: str) -> bytes:
    b = _bytes(value, what)
    return uvarint(len(b)) + b


def _enc_enum(enum_cls, value, what: str) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int):
        raise WireError(f"{what} must be an integer, not {value!r}")
    return uvarint(_enum(enum_cls, value, what))


# --- addresses ------------------------------------------------------------


def encode_address(address: Address) -> bytes:
    """
    The BARE encoding of one address (type byte, then data).
    """
    if not isinstance(address, Address):
        raise WireError(f"not an Address: {address!r}")
    return address.encode()


def decode_address(data: _Buf) -> Address:
    """
    Decode exactly one BARE address.
    """
    end = len(data)
    if end < 1:
        raise WireError("empty address")
    raw, pos = _data(data, 1, end, "address value")
    _end(pos, end, "address")
    return Address(data[0], raw)


# --- CreateResponderChannelMessage ---------------------------------------


class CreateResponderChannelMessage(NamedTuple):
    """
    The payload of M1: the first Noise message and, in Ockam 0.83, the
    BARE address of the initiator's backwards-compatibility worker as the
    custom payload.  A decoded message may lack the custom payload
    (C{None}); the responder refuses it.
    """

    payload: bytes
    custom_payload: Optional[bytes] = None

    @classmethod
    def for_initiator(cls, msg1: bytes, backwards: Address) -> "CreateResponderChannelMessage":
        """
        M1's payload as an initiator sends it.
        """
        return cls(_bytes(msg1, "payload"), encode_address(backwards))

    def backwards_address(self) -> Address:
        """
        The initiator's backwards address held in the custom payload.

        @raise WireError: when the custom payload is absent or is not one
            BARE address.
        """
        if self.custom_payload is None:
            raise WireError("CreateResponderChannelMessage has no custom payload")
        return decode_address(self.custom_payload)

    def encode(self) -> bytes:
        head = _enc_data(self.payload, "payload")
        if self.custom_payload is None:
            return head + b"\x00"
        return head + b"\x01" + _enc_data(self.custom_payload, "custom_payload")

    @classmethod
    def decode(cls, data: _Buf) -> "CreateResponderChannelMessage":
        """
        @raise WireError: for truncated bytes, an option tag other than 0
            or 1, or trailing bytes.
        """
        end = len(data)
        payload, pos = _data(data, 0, end, "payload")
        if pos >= end:
            raise WireError("CreateResponderChannelMessage truncated before its custom payload")
        tag = data[pos]
        pos += 1
        if tag == 0:
            custom = None
        elif tag == 1:
            custom, pos = _data(data, pos, end, "custom payload")
        else:
            raise WireError(f"optional tag {tag} is not 0 or 1")
        _end(pos, end, "CreateResponderChannelMessage")
        return cls(payload, custom)


# --- key exchange and encrypted payloads ----------------------------------


def encode_key_exchange(message: bytes) -> bytes:
    """
    The payload of M2 or M3: BARE data holding the Noise message.
    """
    return _enc_data(message, "key exchange message")


def decode_key_exchange(payload: _Buf) -> bytes:
    """
    The Noise message in an M2 or M3 payload (trailing bytes refused).
    """
    end = len(payload)
    message, pos = _data(payload, 0, end, "key exchange message")
    _end(pos, end, "key exchange message")
    return message


def encode_encrypted_payload(counter: int, ciphertext: bytes) -> bytes:
    """
    BARE data holding the 8-byte big-endian counter and the ciphertext.
    """
    if isinstance(counter, bool) or not isinstance(counter, int) or not 0 <= counter < 1 << 64:
        raise WireError(f"counter must be an integer 0 to 2**64-1, not {counter!r}")
    ct = _bytes(ciphertext, "ciphertext")
    return encrypted_payload_prefix(counter, len(ct)) + ct


def encrypted_payload_prefix(counter: int, size: int) -> bytes:
    """
    What L{encode_encrypted_payload} puts before a ciphertext of C{size}
    bytes (the data's length, then the counter), for a sender that writes
    the ciphertext as a piece of its own; C{counter} is not checked.
    """
    return uvarint(COUNTER_LEN + size) + counter.to_bytes(COUNTER_LEN, "big")


def decode_encrypted_payload(payload: _Buf) -> Tuple[int, memoryview]:
    """
    (counter, ciphertext) of an encrypted payload; the ciphertext is a view
    into C{payload} (not a copy: the AEAD reads it as it is).

    @raise WireError: for truncated or trailing bytes, or a ciphertext
        shorter than the 16-byte AES-GCM tag.
    """
    end = len(payload)
    n, pos = _uvarint(payload, 0, end)
    if n > end - pos:
        raise WireError(f"encrypted payload of {n} bytes truncated to {end - pos}")
    _end(pos + n, end, "encrypted payload")
    if n < COUNTER_LEN + AEAD_TAG_LEN:
        raise WireError(
            f"encrypted payload of {n} bytes is shorter than counter and tag "
            f"({COUNTER_LEN + AEAD_TAG_LEN})"
        )
    counter = int.from_bytes(payload[pos : pos + COUNTER_LEN], "big")
    return counter, memoryview(payload)[pos + COUNTER_LEN : end]


# --- IdentityChannelMessage ------------------------------------------------


class IdentityChannelMessage(NamedTuple):
    """
    M4 (C{REQUEST}, from the responder) or M5 (C{RESPONSE}, from the
    initiator): an identity export and its signature over the handshake
    hash.
    """

    kind: int
    identity: bytes
    signature: bytes

    REQUEST = 0
    RESPONSE = 1

    @classmethod
    def request(cls, identity: bytes, signature: bytes) -> "IdentityChannelMessage":
        return cls(cls.REQUEST, identity, signature)

    @classmethod
    def response(cls, identity: bytes, signature: bytes) -> "IdentityChannelMessage":
        return cls(cls.RESPONSE, identity, signature)

    def encode(self) -> bytes:
        if self.kind not in (self.REQUEST, self.RESPONSE) or isinstance(self.kind, bool):
            raise WireError(f"unknown IdentityChannelMessage variant {self.kind!r}")
        return (
            bytes((self.kind,))
            + _enc_data(self.identity, "identity")
            + _enc_data(self.signature, "signature")
        )

    @classmethod
    def decode(cls, data: _Buf) -> "IdentityChannelMessage":
        """
        @raise WireError: for an unknown variant, truncated or trailing bytes.
        """
        end = len(data)
        kind, pos = _uvarint(data, 0, end)
        if kind not in (cls.REQUEST, cls.RESPONSE):
            raise WireError(f"unknown IdentityChannelMessage variant {kind}")
        identity, pos = _data(data, pos, end, "identity")
        signature, pos = _data(data, pos, end, "signature")
        _end(pos, end, "IdentityChannelMessage")
        return cls(kind, identity, signature)


# --- the identity change history --------------------------------------------


class KeyChangeData(NamedTuple):
    """
    The body of a CreateKey or RotateKey change: the previous change id,
    the key attributes (label, secret type, persistence, length) and the
    public key with its type.
    """

    prev_change_id: bytes
    label: str
    stype: SecretType
    persistence: Persistence
    length: int
    public_key: bytes
    key_stype: SecretType

    def encode(self) -> bytes:
        prev = _bytes(self.prev_change_id, "prev_change_id")
        if len(prev) != CHANGE_ID_LEN:
            raise WireError(f"prev_change_id must be {CHANGE_ID_LEN} bytes, not {len(prev)}")
        if not isinstance(self.label, str):
            raise WireError(f"label must be text, not {self.label!r}")
        try:
            label = self.label.encode("utf-8")
        except UnicodeEncodeError:
            raise WireError(f"label {self.label!r} is not encodable as UTF-8") from None
        length = self.length
        if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length < 1 << 32:
            raise WireError(f"length must be a u32, not {length!r}")
        return b"".join(
            (
                prev,
                uvarint(len(label)),
                label,
                _enc_enum(SecretType, self.stype, "secret type"),
                _enc_enum(Persistence, self.persistence, "persistence"),
                length.to_bytes(4, "little"),
                _enc_data(self.public_key, "public_key"),
                _enc_enum(SecretType, self.key_stype, "public key type"),
            )
        )


class Change(NamedTuple):
    """
    C{union { 0: CreateKey(KeyChangeData), 1: RotateKey(KeyChangeData) }}.
    Its change id is SHA-256 of L{encode}.
    """

    kind: ChangeKind
    data: KeyChangeData

    def encode(self) -> bytes:
        if not isinstance(self.data, KeyChangeData):
            raise WireError(f"change data must be KeyChangeData, not {self.data!r}")
        return _enc_enum(ChangeKind, self.kind, "change kind") + self.data.encode()


class ChangeSignature(NamedTuple):
    """
    A signature of a change id, with its role (L{SignatureType}).
    """

    sig_type: SignatureType
    data: bytes

    def encode(self) -> bytes:
        return _enc_enum(SignatureType, self.sig_type, "signature type") + _enc_data(
            self.data, "signature"
        )


class SignedChange(NamedTuple):
    """
    One entry of an identity's change history.
    """

    change_id: bytes
    change: Change
    signatures: Tuple[ChangeSignature, ...]

    def encode(self) -> bytes:
        cid = _bytes(self.change_id, "change_id")
        if len(cid) != CHANGE_ID_LEN:
            raise WireError(f"change_id must be {CHANGE_ID_LEN} bytes, not {len(cid)}")
        sigs = tuple(self.signatures)
        for s in sigs:
            if not isinstance(s, ChangeSignature):
                raise WireError(f"not a ChangeSignature: {s!r}")
        return b"".join(
            [cid, self.change.encode(), uvarint(len(sigs))] + [s.encode() for s in sigs]
        )


def encode_change_history(changes: Iterable[SignedChange]) -> bytes:
    """
    An identity export: BARE list of signed changes.
    """
    changes = tuple(changes)
    for ch in changes:
        if not isinstance(ch, SignedChange):
            raise WireError(f"not a SignedChange: {ch!r}")
    return uvarint(len(changes)) + b"".join(ch.encode() for ch in changes)


def _read_key_change_data(buf: _Buf, pos: int, end: int) -> Tuple[KeyChangeData, int]:
    prev, pos = _fixed(buf, pos, end, CHANGE_ID_LEN, "prev_change_id")
    raw_label, pos = _data(buf, pos, end, "label")
    try:
        label = raw_label.decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("key label is not UTF-8") from None
    v, pos = _uvarint(buf, pos, end)
    stype = _enum(SecretType, v, "secret type")
    v, pos = _uvarint(buf, pos, end)
    persistence = _enum(Persistence, v, "persistence")
    raw_len, pos = _fixed(buf, pos, end, 4, "key length")
    public_key, pos = _data(buf, pos, end, "public key")
    v, pos = _uvarint(buf, pos, end)
    key_stype = _enum(SecretType, v, "public key type")
    return (
        KeyChangeData(
            prev, label, stype, persistence, int.from_bytes(raw_len, "little"), public_key, key_stype
        ),
        pos,
    )


def _read_signed_change(buf: _Buf, pos: int, end: int) -> Tuple[SignedChange, int]:
    change_id, pos = _fixed(buf, pos, end, CHANGE_ID_LEN, "change_id")
    v, pos = _uvarint(buf, pos, end)
    kind = _enum(ChangeKind, v, "change kind")
    data, pos = _read_key_change_data(buf, pos, end)
    count, pos = _uvarint(buf, pos, end)
    if count > end - pos:  # each signature takes at least 2 bytes
        raise WireError(f"{count} signatures cannot fit in {end - pos} bytes")
    sigs = []
    for _ in range(count):
        v, pos = _uvarint(buf, pos, end)
        sig_type = _enum(SignatureType, v, "signature type")
        sig, pos = _data(buf, pos, end, "signature")
        sigs.append(ChangeSignature(sig_type, sig))
    return SignedChange(change_id, Change(kind, data), tuple(sigs)), pos


def decode_change_history(data: _Buf) -> Tuple[SignedChange, ...]:
    """
    Decode an identity export.  Nothing is verified here (see
    L{ockamtw.secure.identity.import_identity}).

    @raise WireError: for truncated, trailing or non-minimal bytes, an
        unknown enum value or a label that is not UTF-8.
    """
    end = len(data)
    count, pos = _uvarint(data, 0, end)
    if count > end - pos:
        raise WireError(f"{count} changes cannot fit in {end - pos} bytes")
    changes = []
    for _ in range(count):
        ch, pos = _read_signed_change(data, pos, end)
        changes.append(ch)
    _end(pos, end, "identity change history")
    return tuple(changes)


# --- construct equivalents (tests hold the fast path equal to these) ------


def construct_decode_change_history(data: bytes) -> Tuple[SignedChange, ...]:
    """
    L{decode_change_history} by the construct declaration.
    """

    def parse():
        try:
            return CHANGE_HISTORY_STRUCT.parse(bytes(data))
        except UnicodeDecodeError:
            raise WireError("key label is not UTF-8") from None

    obj = construct_call(parse, "change history")
    out = []
    for sc in obj:
        d = sc.change.data
        kcd = KeyChangeData(
            bytes(d.prev_change_id),
            d.label,
            SecretType(d.stype),
            Persistence(d.persistence),
            d.length,
            bytes(d.public_key),
            SecretType(d.key_stype),
        )
        sigs = tuple(ChangeSignature(SignatureType(s.sig_type), bytes(s.data)) for s in sc.signatures)
        out.append(SignedChange(bytes(sc.change_id), Change(ChangeKind(sc.change.kind), kcd), sigs))
    return tuple(out)


def construct_encode_change_history(changes: Iterable[SignedChange]) -> bytes:
    """
    L{encode_change_history} by the construct declaration.
    """
    value = [
        dict(
            change_id=sc.change_id,
            change=dict(
                kind=int(sc.change.kind),
                data=dict(
                    prev_change_id=sc.change.data.prev_change_id,
                    label=sc.change.data.label,
                    stype=int(sc.change.data.stype),
                    persistence=int(sc.change.data.persistence),
                    length=sc.change.data.length,
                    public_key=sc.change.data.public_key,
                    key_stype=int(sc.change.data.key_stype),
                ),
            ),
            signatures=[dict(sig_type=int(s.sig_type), data=s.data) for s in sc.signatures],
        )
        for sc in changes
    ]
    return construct_call(lambda: CHANGE_HISTORY_STRUCT.build(value), "change history")
