"""
Tests for L{ockamtw.secure.codec}: Ockam's M1 payload vector, the identity
export vector decoded field by field, property tests holding the hand-written
codec equal to the construct declarations, and the error contract (bad bytes
raise L{WireError} and nothing else).
"""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ockamtw.errors import WireError
from ockamtw.routing import Address
from ockamtw.secure import codec
from ockamtw.secure.codec import (
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
    construct_decode_change_history,
    construct_encode_change_history,
    decode_address,
    decode_change_history,
    decode_encrypted_payload,
    decode_key_exchange,
    encode_change_history,
    encode_encrypted_payload,
    encode_key_exchange,
)

from .helpers import assert_wire_error
from .vectors import secure_vectors, x

PROPERTY = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def m1_vector(testcase):
    return x(secure_vectors(testcase)["m1_payload_example"]["hex"])


def export_vector(testcase):
    return x(secure_vectors(testcase)["identity_from_seed"]["export"])


# --- CreateResponderChannelMessage -------------------------------------------


class CreateResponderChannelMessageTests(SynchronousTestCase):
    def test_vector(self):
        """
        The M1 payload example decodes to msg1 of Ockam's handshake vector
        and the BARE address 0#aaaa... (32 a's), and re-encodes byte for byte.
        """
        raw = m1_vector(self)
        msg = CreateResponderChannelMessage.decode(raw)
        self.assertEqual(msg.payload.hex(), secure_vectors(self)["noise_handshake_1"]["msg1"])
        self.assertEqual(msg.custom_payload, b"\x00\x20" + b"a" * 32)
        self.assertEqual(msg.backwards_address(), Address.local("a" * 32))
        self.assertEqual(msg.encode(), raw)
        self.assertEqual(len(raw), 69, "the spec's typical M1 payload size")

    def test_forInitiator(self):
        """
        What an initiator builds from msg1 and its backwards address is the
        vector byte for byte.
        """
        v = secure_vectors(self)
        msg = CreateResponderChannelMessage.for_initiator(
            x(v["noise_handshake_1"]["msg1"]), Address.local("a" * 32)
        )
        self.assertEqual(msg.encode(), m1_vector(self))

    def test_construct(self):
        raw = m1_vector(self)
        parsed = codec.CREATE_RESPONDER_CHANNEL_MESSAGE_STRUCT.parse(raw)
        msg = CreateResponderChannelMessage.decode(raw)
        self.assertEqual(parsed.payload, msg.payload)
        self.assertEqual(parsed.custom_payload.present, 1)
        self.assertEqual(parsed.custom_payload.value, msg.custom_payload)
        built = codec.CREATE_RESPONDER_CHANNEL_MESSAGE_STRUCT.build(
            dict(payload=msg.payload, custom_payload=dict(present=1, value=msg.custom_payload))
        )
        self.assertEqual(built, raw)

    def test_withoutCustomPayload(self):
        """
        A message without custom payload decodes (C{None}) so that the
        responder can refuse it; asking for its backwards address raises.
        """
        msg1 = x(secure_vectors(self)["noise_handshake_1"]["msg1"])
        raw = b"\x20" + msg1 + b"\x00"
        msg = CreateResponderChannelMessage.decode(raw)
        self.assertEqual(msg, CreateResponderChannelMessage(msg1, None))
        self.assertIsNone(msg.custom_payload)
        self.assertEqual(msg.encode(), raw)
        e = assert_wire_error(self, msg.backwards_address, context="no custom payload")
        self.assertIn("no custom payload", str(e))
        self.assertEqual(
            codec.CREATE_RESPONDER_CHANNEL_MESSAGE_STRUCT.parse(raw).custom_payload.value, None
        )

    def test_badBytes(self):
        raw = m1_vector(self)
        for n in range(len(raw)):
            assert_wire_error(self, CreateResponderChannelMessage.decode, raw[:n], context=f"[:{n}]")
        assert_wire_error(self, CreateResponderChannelMessage.decode, raw + b"\x00", context="trailing")
        bad_tag = bytearray(raw)
        bad_tag[33] = 2
        e = assert_wire_error(
            self, CreateResponderChannelMessage.decode, bytes(bad_tag), context="tag 2"
        )
        self.assertIn("optional tag 2", str(e))

    def test_badCustomPayload(self):
        """
        A custom payload that is not exactly one BARE address is refused
        when the address is asked for.
        """
        for custom in (b"", b"\x00", b"\x00\x05ab", b"\x00\x01ab"):
            msg = CreateResponderChannelMessage(b"m", custom)
            assert_wire_error(self, msg.backwards_address, context=f"custom {custom!r}")

    @PROPERTY
    @given(payload=st.binary(max_size=300), custom=st.none() | st.binary(max_size=300))
    def test_roundTripAndConstruct(self, payload, custom):
        msg = CreateResponderChannelMessage(payload, custom)
        raw = msg.encode()
        self.assertEqual(CreateResponderChannelMessage.decode(raw), msg)
        built = codec.CREATE_RESPONDER_CHANNEL_MESSAGE_STRUCT.build(
            dict(
                payload=payload,
                custom_payload=dict(present=0 if custom is None else 1, value=custom),
            )
        )
        self.assertEqual(built, raw)


class AddressTests(SynchronousTestCase):
    def test_roundTrip(self):
        a = Address(1, "127.0.0.1:4000")
        self.assertEqual(codec.encode_address(a), b"\x01\x0e127.0.0.1:4000")
        self.assertEqual(decode_address(b"\x01\x0e127.0.0.1:4000"), a)

    def test_bad(self):
        for raw in (b"", b"\x00", b"\x00\x02a", b"\x00\x01ab", b"\x00\x81\x00" + b"a"):
            assert_wire_error(self, decode_address, raw, context=repr(raw))
        assert_wire_error(self, codec.encode_address, "0#a", context="text, not Address")


# --- key exchange and encrypted payloads -------------------------------------


class KeyExchangeTests(SynchronousTestCase):
    def test_vector(self):
        """
        M2's payload is data(msg2): a 96-byte message gets one length byte.
        """
        msg2 = x(secure_vectors(self)["noise_handshake_1"]["msg2"])
        raw = encode_key_exchange(msg2)
        self.assertEqual(raw, b"\x60" + msg2)
        self.assertEqual(decode_key_exchange(raw), msg2)
        self.assertEqual(codec.KEY_EXCHANGE_STRUCT.parse(raw), msg2)

    def test_bad(self):
        assert_wire_error(self, decode_key_exchange, b"\x60" + b"x" * 95, context="truncated")
        assert_wire_error(self, decode_key_exchange, b"\x01ab", context="trailing")
        assert_wire_error(self, decode_key_exchange, b"", context="empty")


class EncryptedPayloadTests(SynchronousTestCase):
    def test_concrete(self):
        """
        Counter 1 and a 16-byte ciphertext: length 24, counter big-endian.
        """
        ct = bytes(range(16))
        raw = encode_encrypted_payload(1, ct)
        self.assertEqual(raw, b"\x18" + b"\x00" * 7 + b"\x01" + ct)
        self.assertEqual(decode_encrypted_payload(raw), (1, ct))
        parsed = codec.ENCRYPTED_PAYLOAD_STRUCT.parse(raw)
        self.assertEqual((parsed.counter, parsed.ciphertext), (1, ct))
        big = encode_encrypted_payload(0x0102030405060708, b"t" * 200)
        self.assertEqual(big[:2], b"\xd0\x01")  # 208 as uvarint
        self.assertEqual(big[2:10], bytes.fromhex("0102030405060708"))
        self.assertEqual(decode_encrypted_payload(big), (0x0102030405060708, b"t" * 200))

    def test_bad(self):
        good = encode_encrypted_payload(3, b"c" * 20)
        for n in range(len(good)):
            assert_wire_error(self, decode_encrypted_payload, good[:n], context=f"[:{n}]")
        assert_wire_error(self, decode_encrypted_payload, good + b"\x00", context="trailing")
        e = assert_wire_error(
            self, decode_encrypted_payload, b"\x17" + b"\x00" * 23, context="no room for a tag"
        )
        self.assertIn("shorter than counter and tag", str(e))
        for counter in (-1, 1 << 64, "1", True):
            assert_wire_error(self, encode_encrypted_payload, counter, b"", context=repr(counter))
        assert_wire_error(self, encode_encrypted_payload, 0, "text", context="text ciphertext")

    @PROPERTY
    @given(counter=st.integers(0, (1 << 64) - 1), ct=st.binary(min_size=16, max_size=400))
    def test_roundTripAndConstruct(self, counter, ct):
        raw = encode_encrypted_payload(counter, ct)
        self.assertEqual(decode_encrypted_payload(raw), (counter, ct))
        self.assertEqual(
            codec.ENCRYPTED_PAYLOAD_STRUCT.build(dict(counter=counter, ciphertext=ct)), raw
        )


# --- IdentityChannelMessage ----------------------------------------------------


class IdentityChannelMessageTests(SynchronousTestCase):
    def test_concrete(self):
        req = IdentityChannelMessage.request(b"ab", b"c")
        self.assertEqual(req.encode(), b"\x00\x02ab\x01c")
        resp = IdentityChannelMessage.response(b"", b"sig")
        self.assertEqual(resp.encode(), b"\x01\x00\x03sig")
        self.assertEqual(IdentityChannelMessage.decode(b"\x00\x02ab\x01c"), req)
        self.assertEqual(IdentityChannelMessage.decode(b"\x01\x00\x03sig").kind, 1)

    def test_withVectorIdentity(self):
        """
        A Request carrying the vector export and a 64-byte signature.
        """
        export = export_vector(self)
        sig = b"\x55" * 64
        raw = IdentityChannelMessage.request(export, sig).encode()
        self.assertEqual(raw[:3], b"\x00\xb6\x01")  # variant 0, data of 182 bytes
        self.assertEqual(raw[3 : 3 + 182], export)
        self.assertEqual(raw[185:], b"\x40" + sig)
        self.assertEqual(IdentityChannelMessage.decode(raw).identity, export)

    def test_bad(self):
        good = b"\x01\x02ab\x01c"
        for n in range(len(good)):
            assert_wire_error(self, IdentityChannelMessage.decode, good[:n], context=f"[:{n}]")
        assert_wire_error(self, IdentityChannelMessage.decode, good + b"x", context="trailing")
        e = assert_wire_error(self, IdentityChannelMessage.decode, b"\x02\x00\x00", context="variant 2")
        self.assertIn("variant 2", str(e))
        assert_wire_error(
            self, IdentityChannelMessage.decode, b"\x80\x00\x00\x00", context="non-minimal"
        )
        assert_wire_error(self, IdentityChannelMessage(2, b"", b"").encode, context="encode variant 2")
        assert_wire_error(self, IdentityChannelMessage(0, "id", b"").encode, context="text identity")

    @PROPERTY
    @given(kind=st.sampled_from([0, 1]), identity=st.binary(max_size=300), sig=st.binary(max_size=80))
    def test_roundTripAndConstruct(self, kind, identity, sig):
        msg = IdentityChannelMessage(kind, identity, sig)
        raw = msg.encode()
        self.assertEqual(IdentityChannelMessage.decode(raw), msg)
        self.assertEqual(
            codec.IDENTITY_CHANNEL_MESSAGE_STRUCT.build(
                dict(kind=kind, identity=identity, signature=sig)
            ),
            raw,
        )
        parsed = codec.IDENTITY_CHANNEL_MESSAGE_STRUCT.parse(raw)
        self.assertEqual((parsed.kind, parsed.identity, parsed.signature), (kind, identity, sig))


# --- the change history ----------------------------------------------------


#: Offsets in the vector export (182 bytes).
_OFF_KIND = 33
_OFF_LABEL_LEN = 66
_OFF_STYPE = 75
_OFF_PERSISTENCE = 76
_OFF_LENGTH = 77
_OFF_KEY_STYPE = 114
_OFF_SIG_COUNT = 115
_OFF_SIG_TYPE = 116


class ChangeHistoryTests(SynchronousTestCase):
    def test_vectorFields(self):
        """
        The vector export decodes field by field to the spec's values.
        """
        raw = export_vector(self)
        (sc,) = decode_change_history(raw)
        self.assertEqual(sc.change_id.hex(), raw[1:33].hex())
        self.assertEqual(
            sc.change_id.hex(), "dcf392551f796ef1bcb368177e53f9a5875a962f67279259207d24a01e690721"
        )
        self.assertIs(sc.change.kind, ChangeKind.CREATE_KEY)
        d = sc.change.data
        self.assertEqual(
            d.prev_change_id.hex(), "0547c93239ba3d818ec26c9cdadd2a35cbdf1fa3b6d1a731e06164b1079fb7b8"
        )
        self.assertEqual(d.label, "OCKAM_RK")
        self.assertIs(d.stype, SecretType.ED25519)
        self.assertIs(d.persistence, Persistence.PERSISTENT)
        self.assertEqual(d.length, 32)
        self.assertEqual(
            d.public_key.hex(), "a0d205f09cab9a9467591fcee560429aab1215d8136e5c985a6b7dc729e6f082"
        )
        self.assertIs(d.key_stype, SecretType.ED25519)
        self.assertEqual(len(sc.signatures), 1)
        self.assertIs(sc.signatures[0].sig_type, SignatureType.SELF_SIGN)
        self.assertEqual(sc.signatures[0].data, raw[118:])
        self.assertEqual(len(sc.signatures[0].data), 64)
        # the offsets the mutation tests below rely on
        self.assertEqual(raw[_OFF_KIND], 0)
        self.assertEqual(raw[_OFF_LABEL_LEN : _OFF_LABEL_LEN + 9], b"\x08OCKAM_RK")
        self.assertEqual(raw[_OFF_STYPE : _OFF_LENGTH + 4], b"\x03\x01\x20\x00\x00\x00")
        self.assertEqual(raw[_OFF_KEY_STYPE : _OFF_SIG_TYPE + 2], b"\x03\x01\x01\x40")

    def test_vectorRoundTrip(self):
        raw = export_vector(self)
        changes = decode_change_history(raw)
        self.assertEqual(encode_change_history(changes), raw)
        self.assertEqual(construct_decode_change_history(raw), changes)
        self.assertEqual(construct_encode_change_history(changes), raw)

    def test_changeEncoding(self):
        """
        BARE(Change) is the bytes between the change id and the signature
        list: its SHA-256 is the change id.
        """
        import hashlib

        raw = export_vector(self)
        (sc,) = decode_change_history(raw)
        self.assertEqual(sc.change.encode(), raw[33:_OFF_SIG_COUNT])
        self.assertEqual(hashlib.sha256(raw[33:_OFF_SIG_COUNT]).digest(), sc.change_id)

    def _mutated(self, pos, value):
        raw = bytearray(export_vector(self))
        raw[pos] = value
        return bytes(raw)

    def test_unknownEnumValues(self):
        """
        Unknown change kind, secret types, persistence and signature type
        are refused by both decoders.
        """
        for pos, value, what in (
            (_OFF_KIND, 2, "change kind"),
            (_OFF_STYPE, 5, "secret type"),
            (_OFF_PERSISTENCE, 2, "persistence"),
            (_OFF_KEY_STYPE, 5, "public key type"),
            (_OFF_SIG_TYPE, 3, "signature type"),
        ):
            bad = self._mutated(pos, value)
            e = assert_wire_error(self, decode_change_history, bad, context=what)
            self.assertIn(f"unknown {what} {value}", str(e))
            assert_wire_error(self, construct_decode_change_history, bad, context=f"construct {what}")

    def test_knownEnumValuesDecode(self):
        """
        Other known enum values decode (refusing them is the identity
        layer's business, not the codec's).
        """
        bad = self._mutated(_OFF_KEY_STYPE, 4)
        (sc,) = decode_change_history(bad)
        self.assertIs(sc.change.data.key_stype, SecretType.NIST_P256)

    def test_truncatedAndTrailing(self):
        raw = export_vector(self)
        for n in range(len(raw)):
            assert_wire_error(self, decode_change_history, raw[:n], context=f"[:{n}]")
        assert_wire_error(self, decode_change_history, raw + b"\x00", context="trailing")
        assert_wire_error(
            self, construct_decode_change_history, raw + b"\x00", context="construct trailing"
        )

    def test_nonMinimalUvarint(self):
        """
        A label length written in two bytes (0x88 0x00) is refused: only the
        canonical form hashes to the change id Rust computes.
        """
        raw = export_vector(self)
        bad = raw[:_OFF_LABEL_LEN] + b"\x88\x00" + raw[_OFF_LABEL_LEN + 1 :]
        e = assert_wire_error(self, decode_change_history, bad, context="non-minimal")
        self.assertIn("not minimally encoded", str(e))

    def test_labelNotUtf8(self):
        raw = self._mutated(_OFF_LABEL_LEN + 1, 0xFF)
        assert_wire_error(self, decode_change_history, raw, context="label 0xff")
        assert_wire_error(self, construct_decode_change_history, raw, context="construct label 0xff")

    def test_hugeCounts(self):
        """
        Counts that cannot fit in the bytes left are refused at once.
        """
        assert_wire_error(self, decode_change_history, b"\xff\xff\xff\xff\x0f", context="2**32 changes")
        raw = bytearray(export_vector(self))
        bad = bytes(raw[:_OFF_SIG_COUNT]) + b"\xff\xff\x03" + bytes(raw[_OFF_SIG_COUNT + 1 :])
        assert_wire_error(self, decode_change_history, bad, context="65535 signatures")

    def test_encodeRefusesBadValues(self):
        (sc,) = decode_change_history(export_vector(self))
        d = sc.change.data
        for bad in (
            d._replace(prev_change_id=b"\x00" * 31),
            d._replace(length=1 << 32),
            d._replace(stype=9),
            d._replace(label=b"OCKAM_RK"),
            d._replace(public_key="text"),
        ):
            assert_wire_error(self, bad.encode, context=repr(bad))
        assert_wire_error(self, Change(7, d).encode, context="kind 7")
        assert_wire_error(self, sc._replace(change_id=b"").encode, context="short change id")
        assert_wire_error(self, ChangeSignature(3, b"").encode, context="sig type 3")
        assert_wire_error(self, encode_change_history, [sc, "x"], context="not a SignedChange")


def _key_change_data():
    return st.builds(
        KeyChangeData,
        prev_change_id=st.binary(min_size=32, max_size=32),
        label=st.text(max_size=20),
        stype=st.sampled_from(list(SecretType)),
        persistence=st.sampled_from(list(Persistence)),
        length=st.integers(0, (1 << 32) - 1),
        public_key=st.binary(max_size=70),
        key_stype=st.sampled_from(list(SecretType)),
    )


_signed_change = st.builds(
    SignedChange,
    change_id=st.binary(min_size=32, max_size=32),
    change=st.builds(Change, kind=st.sampled_from(list(ChangeKind)), data=_key_change_data()),
    signatures=st.lists(
        st.builds(
            ChangeSignature,
            sig_type=st.sampled_from(list(SignatureType)),
            data=st.binary(max_size=70),
        ),
        max_size=3,
    ).map(tuple),
)


class ChangeHistoryPropertyTests(SynchronousTestCase):
    @PROPERTY
    @given(changes=st.lists(_signed_change, max_size=4).map(tuple))
    def test_fastEqualsConstruct(self, changes):
        """
        Any history: both encoders give the same bytes and both decoders
        give the history back.
        """
        raw = encode_change_history(changes)
        self.assertEqual(construct_encode_change_history(changes), raw)
        self.assertEqual(decode_change_history(raw), changes)
        self.assertEqual(construct_decode_change_history(raw), changes)

    @PROPERTY
    @given(data=st.binary(max_size=300))
    def test_onlyWireError(self, data):
        """
        Arbitrary bytes give a value or WireError from every decoder.
        """
        for fn in (
            decode_change_history,
            CreateResponderChannelMessage.decode,
            IdentityChannelMessage.decode,
            decode_encrypted_payload,
            decode_key_exchange,
            decode_address,
        ):
            try:
                fn(data)
            except WireError:
                pass

    @PROPERTY
    @given(pos=st.integers(0, 181), value=st.integers(0, 255))
    def test_mutatedVectorFastEqualsConstruct(self, pos, value):
        """
        A one-byte change to the vector export: the two decoders agree on
        refusing or on the result (non-minimal uvarints aside, which only
        the fast decoder refuses).
        """
        raw = bytearray(export_vector(self))
        raw[pos] = value
        raw = bytes(raw)
        try:
            fast = decode_change_history(raw)
        except WireError as e:
            if "minimally" in str(e):
                return
            assert_wire_error(self, construct_decode_change_history, raw, context=f"{pos}={value}")
            return
        self.assertEqual(construct_decode_change_history(raw), fast)
