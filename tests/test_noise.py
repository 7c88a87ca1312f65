"""
Tests for L{ockamtw.secure.noise}: the cacophony Noise_XX_25519_AESGCM_SHA256
vector (standard split), Ockam 0.83's own handshake vector (swapped split),
cipher states with explicit nonces, and the error contract (every failure is
a L{SecureChannelError} and kills the handshake).

The vectors are read from C{tests/data/secure-channel-vectors.json} and
C{tests/data/noise/cacophony-XX_25519_AESGCM_SHA256.json}
(C{tests/data/README.md} says where they come from; L{tests.test_data_files}
checks they are unchanged) by the loaders of L{tests.vectors}.
"""

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ockamtw.errors import OckamError
from ockamtw.secure.errors import SecureChannelError
from ockamtw.secure.noise import (
    MAX_NONCE,
    CipherState,
    HandshakeState,
    hkdf,
    nonce_bytes,
    x25519_public_key,
)

from .vectors import cacophony_vector, handshake_vector, ockam_pair, run_handshake, secure_vectors, x

#: Modest settings so the module runs in a few seconds.
PROPERTY = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

def assert_secure_error(testcase, fn, *args, context=""):
    """
    Assert that C{fn(*args)} raises L{SecureChannelError} and nothing else.
    """
    try:
        result = fn(*args)
    except SecureChannelError as e:
        return e
    except Exception as e:  # noqa: BLE001 - the point is to catch the wrong kind
        testcase.fail(f"{context}: expected SecureChannelError, got {type(e).__name__}: {e!r}")
    testcase.fail(f"{context}: expected SecureChannelError, got a result: {result!r}")


class VectorFileTests(SynchronousTestCase):
    def test_expectedSections(self):
        """
        The vector files hold what these tests read, so none passes vacuously.
        """
        doc = secure_vectors(self)
        self.assertEqual(
            {"noise_handshake_1", "identity_from_seed", "m1_payload_example"} - set(doc), set()
        )
        caco = cacophony_vector(self)
        self.assertEqual(caco["protocol_name"], "Noise_XX_25519_AESGCM_SHA256")
        self.assertEqual(len(caco["messages"]), 6)


class CacophonyTests(SynchronousTestCase):
    """
    The cacophony vector: prologue, non-empty payloads, standard split.
    """

    def _pair(self):
        v = cacophony_vector(self)
        i = HandshakeState(
            True, x(v["init_static"]), x(v["init_ephemeral"]), x(v["init_prologue"])
        )
        r = HandshakeState(
            False, x(v["resp_static"]), x(v["resp_ephemeral"]), x(v["resp_prologue"])
        )
        return v, i, r

    def _handshake(self):
        v, i, r = self._pair()
        msgs = v["messages"]
        for n, (writer, reader) in enumerate(((i, r), (r, i), (i, r))):
            payload = x(msgs[n]["payload"])
            wire = writer.write_message(payload)
            self.assertEqual(wire.hex(), msgs[n]["ciphertext"], f"handshake message {n}")
            self.assertEqual(reader.read_message(wire), payload, f"handshake payload {n}")
        return v, i, r

    def test_handshakeMessages(self):
        """
        Each handshake message is the vector's byte for byte, and each side
        reads the other's payload back.
        """
        v, i, r = self._handshake()
        self.assertTrue(i.is_complete())
        self.assertTrue(r.is_complete())
        self.assertEqual(i.remote_static, x25519_public_key(x(v["resp_static"])))
        self.assertEqual(r.remote_static, x25519_public_key(x(v["init_static"])))

    def test_handshakeHash(self):
        """
        Both sides end with the vector's handshake hash.
        """
        v, i, r = self._handshake()
        self.assertEqual(i.h.hex(), v["handshake_hash"])
        self.assertEqual(r.h.hex(), v["handshake_hash"])

    def test_transportMessages(self):
        """
        With the standard split, the transport messages (responder first,
        then alternating) are the vector's byte for byte.
        """
        v, i, r = self._handshake()
        i_send, i_recv = i.split(swapped=False)
        r_send, r_recv = r.split(swapped=False)
        for n in range(3, len(v["messages"])):
            msg = v["messages"][n]
            payload = x(msg["payload"])
            sender, receiver = (r_send, i_recv) if n % 2 else (i_send, r_recv)
            wire = sender.encrypt_with_ad(b"", payload)
            self.assertEqual(wire.hex(), msg["ciphertext"], f"transport message {n}")
            self.assertEqual(receiver.decrypt_with_ad(b"", wire), payload)

    def test_swappedSplitDoesNotMatch(self):
        """
        Ockam's swapped split gives other transport ciphertexts: the split
        direction is really exercised by the vector.
        """
        v, i, r = self._handshake()
        r_send, _ = r.split(swapped=True)
        msg = v["messages"][3]
        self.assertNotEqual(r_send.encrypt_with_ad(b"", x(msg["payload"])).hex(), msg["ciphertext"])


class OckamVectorTests(SynchronousTestCase):
    """
    Ockam 0.83's handshake vector: empty prologue and payloads, swapped split.
    """

    def test_initialHash(self):
        """
        After the empty prologue h is SHA256 of the zero-padded protocol name.
        """
        v = handshake_vector(self)
        i, r = ockam_pair(v)
        self.assertEqual(i.h.hex(), v["initial_h_after_empty_prologue"])
        self.assertEqual(r.h.hex(), v["initial_h_after_empty_prologue"])
        self.assertEqual(
            v["initial_h_after_empty_prologue"],
            "5df72b67b965add1168f0a6c756df21c204f7e64fc682be6a3ab4b682c8db64b",
        )

    def test_messages(self):
        """
        msg1, msg2 and msg3 are the vector's byte for byte (32, 96 and 64
        bytes), and every payload is empty.
        """
        v = handshake_vector(self)
        self.assertEqual(v["payloads"], ["", "", ""])
        i, r = ockam_pair(v)
        m1 = i.write_message(b"")
        self.assertEqual(m1.hex(), v["msg1"])
        self.assertEqual(r.read_message(m1), b"")
        m2 = r.write_message(b"")
        self.assertEqual(m2.hex(), v["msg2"])
        self.assertEqual(i.read_message(m2), b"")
        m3 = i.write_message(b"")
        self.assertEqual(m3.hex(), v["msg3"])
        self.assertEqual(r.read_message(m3), b"")
        self.assertEqual((len(m1), len(m2), len(m3)), (32, 96, 64))
        self.assertEqual(i.h, r.h)
        self.assertNotEqual(i.h.hex(), v["initial_h_after_empty_prologue"])
        self.assertEqual(i.remote_static, x25519_public_key(x(v["resp_static"])))
        self.assertEqual(r.remote_static, x25519_public_key(x(v["init_static"])))
        self.assertEqual(i.ephemeral_public.hex(), v["msg1"])

    def test_swappedSplitWorksBothWays(self):
        """
        With Ockam's split, what the initiator encrypts the responder
        decrypts, and the other way round.
        """
        i, r = ockam_pair(handshake_vector(self))
        run_handshake(i, r)
        i_send, i_recv = i.ockam_split()
        r_send, r_recv = r.split(swapped=True)
        c = i_send.encrypt_with_ad(b"", b"hello responder")
        self.assertEqual(r_recv.decrypt_with_ad(b"", c), b"hello responder")
        c = r_send.encrypt_with_ad(b"", b"hello initiator")
        self.assertEqual(i_recv.decrypt_with_ad(b"", c), b"hello initiator")

    def test_swappedKeysAreTheStandardOnesExchanged(self):
        """
        The swapped split exchanges the standard split's two keys, which
        differ: the initiator sends with k2 and the responder with k1.
        """
        i, r = ockam_pair(handshake_vector(self))
        run_handshake(i, r)
        k1, k2 = i.split_keys()
        self.assertEqual(r.split_keys(), (k1, k2))
        self.assertNotEqual(k1, k2)
        std_i_send, std_i_recv = i.split(swapped=False)
        ock_i_send, ock_i_recv = i.split(swapped=True)
        std_r_send, std_r_recv = r.split(swapped=False)
        ock_r_send, ock_r_recv = r.split(swapped=True)
        self.assertEqual((std_i_send.key, std_i_recv.key), (k1, k2))
        self.assertEqual((ock_i_send.key, ock_i_recv.key), (k2, k1))
        self.assertEqual((std_r_send.key, std_r_recv.key), (k2, k1))
        self.assertEqual((ock_r_send.key, ock_r_recv.key), (k1, k2))

    def test_splitKeysAreHkdfOfChainingKey(self):
        """
        The split keys are HKDF(ck, "", 2): checked against an independent
        HMAC computation from the standard library.
        """
        import hashlib
        import hmac as std_hmac

        i, r = ockam_pair(handshake_vector(self))
        run_handshake(i, r)
        ck = i._ss.ck
        temp = std_hmac.new(ck, b"", hashlib.sha256).digest()
        k1 = std_hmac.new(temp, b"\x01", hashlib.sha256).digest()
        k2 = std_hmac.new(temp, k1 + b"\x02", hashlib.sha256).digest()
        self.assertEqual(i.split_keys(), (k1, k2))
        self.assertEqual(hkdf(ck, b"", 2), (k1, k2))

    def test_ockamTransportNonceFormat(self):
        """
        A transport message at counter n is AES-GCM with nonce 4 zero bytes
        ++ n big-endian and empty AAD, under the swapped key; a wrong
        counter or the standard split's key does not decrypt it.
        """
        i, r = ockam_pair(handshake_vector(self))
        run_handshake(i, r)
        k1, k2 = i.split_keys()
        i_send, _ = i.ockam_split()
        _, r_recv = r.ockam_split()
        _, r_recv_std = r.split(swapped=False)
        counter = 0x0102030405
        ct = i_send.encrypt_at(counter, b"application data")
        expected = AESGCM(k2).encrypt(
            b"\x00\x00\x00\x00\x00\x00\x00\x01\x02\x03\x04\x05", b"application data", b""
        )
        self.assertEqual(ct, expected)
        self.assertEqual(i_send.n, 0, "encrypt_at must not move the implicit counter")
        self.assertEqual(r_recv.decrypt_at(counter, ct), b"application data")
        assert_secure_error(self, r_recv.decrypt_at, counter + 1, ct, context="wrong counter")
        assert_secure_error(self, r_recv.decrypt_at, counter, ct, b"aad", context="non-empty AAD")
        assert_secure_error(self, r_recv_std.decrypt_at, counter, ct, context="standard key")

    def test_handshakeHashEqualsIndependentComputation(self):
        """
        h after msg1 is SHA256(SHA256(h0 || e) || payload-ciphertext), here
        with the empty plaintext payload of msg1.
        """
        import hashlib

        v = handshake_vector(self)
        i, r = ockam_pair(v)
        m1 = i.write_message(b"")
        h0 = x(v["initial_h_after_empty_prologue"])
        h1 = hashlib.sha256(h0 + m1).digest()
        h2 = hashlib.sha256(h1 + b"").digest()
        self.assertEqual(i.h, h2)


class HandshakeBehaviourTests(SynchronousTestCase):
    def test_nonEmptyPayloadsAccepted(self):
        """
        Non-empty payloads travel (Ockam ignores them; the state machine
        still delivers them).
        """
        i, r = HandshakeState(True), HandshakeState(False)
        m1 = i.write_message(b"one")
        self.assertEqual(m1[32:], b"one", "msg1's payload is not encrypted: no key yet")
        self.assertEqual(r.read_message(m1), b"one")
        m2 = r.write_message(b"two")
        self.assertEqual(len(m2), 32 + 48 + 3 + 16)
        self.assertEqual(i.read_message(m2), b"two")
        self.assertEqual(r.read_message(i.write_message(b"three")), b"three")
        self.assertEqual(i.h, r.h)

    def test_freshKeysDiffer(self):
        """
        Without injected keys each handshake uses fresh static and
        ephemeral keys, so two runs give different hashes.
        """
        a = [HandshakeState(True), HandshakeState(False)]
        b = [HandshakeState(True), HandshakeState(False)]
        run_handshake(*a)
        run_handshake(*b)
        self.assertNotEqual(a[0].h, b[0].h)
        self.assertNotEqual(a[0].static_public, b[0].static_public)
        self.assertEqual(a[1].remote_static, a[0].static_public)

    def test_turns(self):
        """
        Steps out of turn are refused.
        """
        i, r = HandshakeState(True), HandshakeState(False)
        self.assertTrue(i.is_my_turn())
        self.assertFalse(r.is_my_turn())
        assert_secure_error(self, r.write_message, b"", context="responder writes first")
        assert_secure_error(
            self, HandshakeState(True).read_message, b"\x00" * 32, context="initiator reads first"
        )

    def test_afterComplete(self):
        i, r = HandshakeState(True), HandshakeState(False)
        run_handshake(i, r)
        self.assertEqual((i.message_index, r.message_index), (3, 3))
        assert_secure_error(self, i.write_message, b"", context="write after complete")
        assert_secure_error(self, r.read_message, b"\x00" * 64, context="read after complete")

    def test_splitBeforeComplete(self):
        i, r = HandshakeState(True), HandshakeState(False)
        r.read_message(i.write_message())
        assert_secure_error(self, i.split, True, context="split after 1 message")
        assert_secure_error(self, r.split_keys, context="split_keys after 1 message")

    def test_badKeySizes(self):
        for kwargs in ({"static_key": b"\x01" * 31}, {"ephemeral_key": b"\x01" * 33}):
            self.assertRaises(SecureChannelError, HandshakeState, True, **kwargs)

    def test_repr(self):
        self.assertEqual(repr(HandshakeState(False)), "<HandshakeState responder 0/3>")


class HandshakeErrorTests(SynchronousTestCase):
    """
    Bad handshake messages raise L{SecureChannelError} and leave the
    handshake dead.
    """

    def _after_msg1(self):
        v = handshake_vector(self)
        i, r = ockam_pair(v)
        r.read_message(i.write_message())
        return v, i, r

    def test_tamperedMsg2(self):
        """
        Flipping any byte of msg2 makes the initiator refuse it; the
        refusal is final.
        """
        v = handshake_vector(self)
        msg2 = x(v["msg2"])
        for pos in range(len(msg2)):
            i, r = ockam_pair(v)
            r.read_message(i.write_message())
            self.assertEqual(r.write_message(), msg2)
            bad = bytearray(msg2)
            bad[pos] ^= 0x01
            assert_secure_error(self, i.read_message, bytes(bad), context=f"msg2 byte {pos}")
            e = assert_secure_error(self, i.read_message, msg2, context="retry after failure")
            self.assertIn("failed", str(e))

    def test_tamperedMsg3(self):
        v = handshake_vector(self)
        msg3 = x(v["msg3"])
        for pos in range(0, len(msg3), 7):
            i, r = ockam_pair(v)
            r.read_message(i.write_message())
            i.read_message(r.write_message())
            self.assertEqual(i.write_message(), msg3)
            bad = bytearray(msg3)
            bad[pos] ^= 0x80
            assert_secure_error(self, r.read_message, bytes(bad), context=f"msg3 byte {pos}")
            self.assertFalse(r.is_complete())

    def test_truncated(self):
        """
        Messages too short for their keys and tags are refused.
        """
        v = handshake_vector(self)
        for n in (0, 31):
            _, r = ockam_pair(v)
            assert_secure_error(self, r.read_message, x(v["msg1"])[:n], context=f"msg1[:{n}]")
        for n in (0, 32, 63, 79, 95):
            _, i, _ = self._after_msg1()
            assert_secure_error(self, i.read_message, x(v["msg2"])[:n], context=f"msg2[:{n}]")

    def test_oversized(self):
        i = HandshakeState(True)
        assert_secure_error(self, i.write_message, b"\x00" * 65504, context="write 65536")
        r = HandshakeState(False)
        assert_secure_error(self, r.read_message, b"\x00" * 65536, context="read 65536")

    def test_lowOrderEphemeral(self):
        """
        An all-zero ephemeral key (a low-order point) makes the DH refuse.
        """
        r = HandshakeState(False)
        r.read_message(b"\x00" * 32)
        assert_secure_error(self, r.write_message, b"", context="ee with zero point")

    def test_wrongPrologue(self):
        """
        Different prologues make msg2 fail to authenticate.
        """
        i = HandshakeState(True, prologue=b"a")
        r = HandshakeState(False, prologue=b"b")
        r.read_message(i.write_message())
        assert_secure_error(self, i.read_message, r.write_message(), context="prologue mismatch")

    def test_errorsAreOckamErrors(self):
        self.assertTrue(issubclass(SecureChannelError, OckamError))


class CipherStateTests(SynchronousTestCase):
    KEY = bytes(range(32))

    def test_nonceBytes(self):
        self.assertEqual(nonce_bytes(0), b"\x00" * 12)
        self.assertEqual(nonce_bytes(258), b"\x00" * 10 + b"\x01\x02")
        self.assertEqual(nonce_bytes(MAX_NONCE - 1), b"\x00" * 4 + b"\xff" * 7 + b"\xfe")
        for bad in (-1, MAX_NONCE, 1 << 64, "1", None):
            assert_secure_error(self, nonce_bytes, bad, context=f"nonce {bad!r}")

    def test_implicitCounter(self):
        """
        encrypt_with_ad uses n then advances it; a failed decryption does
        not advance the receiver.
        """
        a, b = CipherState(self.KEY), CipherState(self.KEY)
        c0 = a.encrypt_with_ad(b"ad", b"zero")
        c1 = a.encrypt_with_ad(b"ad", b"one")
        self.assertEqual(a.n, 2)
        self.assertEqual(c0, AESGCM(self.KEY).encrypt(b"\x00" * 12, b"zero", b"ad"))
        self.assertEqual(c1, a.encrypt_at(1, b"one", b"ad"))
        assert_secure_error(self, b.decrypt_with_ad, b"ad", c1, context="out of order")
        self.assertEqual(b.n, 0)
        self.assertEqual(b.decrypt_with_ad(b"ad", c0), b"zero")
        self.assertEqual(b.decrypt_with_ad(b"ad", c1), b"one")
        self.assertEqual(b.n, 2)

    def test_noKey(self):
        """
        Without a key the implicit calls pass data through (handshake
        semantics); the explicit ones refuse.
        """
        cs = CipherState()
        self.assertFalse(cs.has_key())
        self.assertEqual(cs.encrypt_with_ad(b"h", b"plain"), b"plain")
        assert_secure_error(self, cs.encrypt_at, 0, b"x", context="encrypt_at without key")
        assert_secure_error(self, cs.decrypt_at, 0, b"x" * 16, context="decrypt_at without key")

    def test_badInputs(self):
        cs = CipherState(self.KEY)
        assert_secure_error(self, cs.decrypt_at, 0, b"short", context="shorter than a tag")
        assert_secure_error(self, cs.encrypt_at, MAX_NONCE, b"x", context="reserved nonce")
        assert_secure_error(self, CipherState, b"\x00" * 16, context="16-byte key")
        cs.set_nonce(5)
        self.assertEqual(cs.n, 5)
        assert_secure_error(self, cs.set_nonce, -1, context="negative nonce")

    @PROPERTY
    @given(
        key=st.binary(min_size=32, max_size=32),
        n=st.integers(0, MAX_NONCE - 1),
        plaintext=st.binary(max_size=200),
        ad=st.binary(max_size=40),
        flip=st.integers(0, 10_000),
    )
    def test_roundTrip(self, key, n, plaintext, ad, flip):
        """
        decrypt_at(encrypt_at(...)) is the identity; any flipped bit is
        refused.
        """
        cs = CipherState(key)
        ct = cs.encrypt_at(n, plaintext, ad)
        self.assertEqual(len(ct), len(plaintext) + 16)
        self.assertEqual(cs.decrypt_at(n, ct, ad), plaintext)
        bad = bytearray(ct)
        bad[flip % len(bad)] ^= 1 << (flip % 8)
        assert_secure_error(self, cs.decrypt_at, n, bytes(bad), ad, context="flipped bit")


class RandomHandshakeTests(SynchronousTestCase):
    @PROPERTY
    @given(
        payloads=st.tuples(st.binary(max_size=64), st.binary(max_size=64), st.binary(max_size=64)),
        prologue=st.binary(max_size=16),
        swapped=st.booleans(),
        data=st.binary(max_size=100),
    )
    def test_anyHandshake(self, payloads, prologue, swapped, data):
        """
        Fresh keys, any payloads and prologue: both sides agree on h and on
        the keys, and traffic flows both ways with either split.
        """
        i = HandshakeState(True, prologue=prologue)
        r = HandshakeState(False, prologue=prologue)
        m1 = i.write_message(payloads[0])
        self.assertEqual(r.read_message(m1), payloads[0])
        m2 = r.write_message(payloads[1])
        self.assertEqual(i.read_message(m2), payloads[1])
        m3 = i.write_message(payloads[2])
        self.assertEqual(r.read_message(m3), payloads[2])
        self.assertEqual((len(m1), len(m2), len(m3)), tuple(
            n + len(p) for n, p in zip((32, 96, 64), payloads)
        ))
        self.assertEqual(i.h, r.h)
        i_send, i_recv = i.split(swapped)
        r_send, r_recv = r.split(swapped)
        self.assertEqual(r_recv.decrypt_at(7, i_send.encrypt_at(7, data)), data)
        self.assertEqual(i_recv.decrypt_at(9, r_send.encrypt_at(9, data)), data)
