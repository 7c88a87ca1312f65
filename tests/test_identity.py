"""
Tests for L{ockamtw.secure.identity}: the identity regenerated from Ockam's
seed byte for byte, chain verification (every one-byte mutation of the export
is refused; rotations need exactly SelfSign and PrevSign), signing with the
current root key, and identity files (mode 0600, atomic, verified on load).
"""

import hashlib
import json
import os
import stat

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import serialization
from twisted.trial.unittest import SynchronousTestCase

from ockamtw.errors import OckamError
from ockamtw.secure.codec import (
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
from ockamtw.secure.errors import IdentityError, SecureChannelError
from ockamtw.secure.identity import (
    INITIAL_CHANGE_ID,
    ROOT_LABEL,
    Identity,
    LocalIdentity,
    change_id_of,
    identifier_of,
    import_identity,
)

from .vectors import handshake_vector, ockam_pair, run_handshake, secure_vectors, x

SEED_B = bytes(range(100, 132))
SEED_C = bytes(range(200, 232))
SEED_D = b"\x07" * 32


def seed_vector(testcase):
    return secure_vectors(testcase)["identity_from_seed"]


def assert_identity_error(testcase, fn, *args, context="", contains=None):
    """
    Assert that C{fn(*args)} raises L{IdentityError} (and nothing else).
    """
    try:
        result = fn(*args)
    except IdentityError as e:
        if contains is not None:
            testcase.assertIn(contains, str(e), context)
        return e
    except Exception as e:  # noqa: BLE001 - the point is to catch the wrong kind
        testcase.fail(f"{context}: expected IdentityError, got {type(e).__name__}: {e!r}")
    testcase.fail(f"{context}: expected IdentityError, got a result: {result!r}")


def ed_key(seed):
    return Ed25519PrivateKey.from_private_bytes(seed)


def ed_public(seed):
    return ed_key(seed).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def signed_change(kind, prev_id, public_key, signers, **overrides):
    """
    A SignedChange whose change id is right, signed by C{signers}: a list
    of (SignatureType, seed).
    """
    fields = dict(
        prev_change_id=prev_id,
        label=ROOT_LABEL,
        stype=SecretType.ED25519,
        persistence=Persistence.PERSISTENT,
        length=32,
        public_key=public_key,
        key_stype=SecretType.ED25519,
    )
    fields.update(overrides)
    change = Change(kind, KeyChangeData(**fields))
    cid = hashlib.sha256(change.encode()).digest()
    sigs = tuple(ChangeSignature(t, ed_key(seed).sign(cid)) for t, seed in signers)
    return SignedChange(cid, change, sigs)


def create_change(seed, signers=None, **overrides):
    if signers is None:
        signers = [(SignatureType.SELF_SIGN, seed)]
    public_key = overrides.pop("public_key", ed_public(seed))
    return signed_change(ChangeKind.CREATE_KEY, INITIAL_CHANGE_ID, public_key, signers, **overrides)


def rotate_change(prev, old_seed, new_seed, signers=None, prev_id=None, **overrides):
    if signers is None:
        signers = [(SignatureType.SELF_SIGN, new_seed), (SignatureType.PREV_SIGN, old_seed)]
    return signed_change(
        ChangeKind.ROTATE_KEY,
        prev.change_id if prev_id is None else prev_id,
        ed_public(new_seed),
        signers,
        **overrides,
    )


class VectorIdentityTests(SynchronousTestCase):
    def test_createFromSeed(self):
        """
        The identity created from the vector's seed exports the vector's
        bytes and has its identifier.
        """
        v = seed_vector(self)
        ident = LocalIdentity.create(x(v["ed25519_seed"]))
        self.assertEqual(ident.export().hex(), v["export"])
        self.assertEqual(ident.identifier, v["identifier"])
        self.assertEqual(
            ident.identifier, "Pe92f183eb4c324804ef4d62962dea94cf095a265d4d28500c34e1a4e0d5ef638"
        )

    def test_import(self):
        """
        Importing the vector export verifies and yields its identifier and
        root key.
        """
        v = seed_vector(self)
        ident = import_identity(x(v["export"]))
        self.assertIsInstance(ident, Identity)
        self.assertNotIsInstance(ident, LocalIdentity)
        self.assertEqual(ident.identifier, v["identifier"])
        self.assertEqual(ident.export(), x(v["export"]))
        self.assertEqual(ident.public_key, ed_public(x(v["ed25519_seed"])))
        self.assertEqual(ident.identifier, identifier_of(ident.public_key))
        self.assertEqual(len(ident.changes), 1)
        self.assertEqual(ident, LocalIdentity.create(x(v["ed25519_seed"])))
        self.assertEqual(Identity.from_export(bytearray(x(v["export"]))), ident)

    def test_identifierIsHashOfFirstKey(self):
        self.assertEqual(
            identifier_of(b"\x00" * 32),
            "P66687aadf862bd776c8fc18b8e9f8e20089714856ee233b3902a591d0d5f2925",
        )

    def test_initialChangeId(self):
        self.assertEqual(
            INITIAL_CHANGE_ID.hex(),
            "0547c93239ba3d818ec26c9cdadd2a35cbdf1fa3b6d1a731e06164b1079fb7b8",
        )

    def test_everySingleByteMutationRefused(self):
        """
        Every byte of the export, changed in three ways (flip the low bit,
        flip the high bit, invert), makes the import fail with
        IdentityError.

        None can verify: the change id, previous id, key attributes and
        public key are all hashed into the change id, which the signature
        covers; a changed change id no longer matches the hash; a changed
        signature no longer verifies (Ed25519 in OpenSSL refuses a
        non-canonical S); the list and length prefixes break the structure
        or leave trailing bytes.
        """
        raw = x(seed_vector(self)["export"])
        self.assertEqual(len(raw), 182)
        for pos in range(len(raw)):
            for mask in (0x01, 0x80, 0xFF):
                bad = bytearray(raw)
                bad[pos] ^= mask
                assert_identity_error(
                    self, import_identity, bytes(bad), context=f"byte {pos} ^ {mask:#x}"
                )

    def test_truncatedAndTrailing(self):
        raw = x(seed_vector(self)["export"])
        for n in range(len(raw)):
            assert_identity_error(self, import_identity, raw[:n], context=f"[:{n}]")
        assert_identity_error(
            self, import_identity, raw + b"\x00", context="trailing", contains="trailing"
        )
        assert_identity_error(
            self, import_identity, b"\x00", context="no changes", contains="no changes"
        )
        assert_identity_error(self, import_identity, "text", context="not bytes")

    def test_errorsAreOckamErrors(self):
        self.assertTrue(issubclass(IdentityError, SecureChannelError))
        self.assertTrue(issubclass(IdentityError, OckamError))


class RotationTests(SynchronousTestCase):
    def test_rotate(self):
        """
        A rotated identity keeps its identifier, exports a CreateKey and a
        RotateKey signed by SelfSign then PrevSign, re-imports and verifies.
        """
        v = seed_vector(self)
        first = LocalIdentity.create(x(v["ed25519_seed"]))
        rotated = first.rotate(SEED_B)
        self.assertEqual(first.export().hex(), v["export"], "rotate leaves the original alone")
        self.assertEqual(rotated.identifier, v["identifier"])
        self.assertEqual(rotated.public_key, ed_public(SEED_B))
        imported = import_identity(rotated.export())
        self.assertEqual(imported, rotated)
        self.assertEqual(imported.identifier, v["identifier"])
        create, rotate = imported.changes
        self.assertEqual(create, first.changes[0])
        self.assertIs(rotate.change.kind, ChangeKind.ROTATE_KEY)
        self.assertEqual(rotate.change.data.prev_change_id, create.change_id)
        self.assertEqual(rotate.change.data.label, "OCKAM_RK")
        self.assertEqual(rotate.change_id, change_id_of(rotate.change))
        self.assertEqual(
            [s.sig_type for s in rotate.signatures],
            [SignatureType.SELF_SIGN, SignatureType.PREV_SIGN],
        )
        # the exact bytes: an independent construction of the same change
        self.assertEqual(rotate, rotate_change(create, x(v["ed25519_seed"]), SEED_B))
        # count, CreateKey (181 bytes), change id, RotateKey change (82), 2 signatures
        self.assertEqual(len(rotated.export()), 1 + 181 + 32 + 82 + 1 + 2 * 66)

    def test_rotateTwice(self):
        ident = LocalIdentity.create(SEED_B).rotate(SEED_C).rotate(SEED_D)
        imported = import_identity(ident.export())
        self.assertEqual(len(imported.changes), 3)
        self.assertEqual(imported.identifier, identifier_of(ed_public(SEED_B)))
        self.assertEqual(imported.public_key, ed_public(SEED_D))
        imported.verify(b"data", ident.sign(b"data"))

    def test_rotatedSignatures(self):
        """
        After a rotation only the new key's signatures verify.
        """
        first = LocalIdentity.create(SEED_B)
        rotated = first.rotate(SEED_C)
        peer_view = import_identity(rotated.export())
        peer_view.verify(b"h" * 32, rotated.sign(b"h" * 32))
        old_sig = first.sign(b"h" * 32)
        assert_identity_error(self, peer_view.verify, b"h" * 32, old_sig, context="old key")

    def _chain(self):
        create = create_change(SEED_B)
        return create, rotate_change(create, SEED_B, SEED_C)

    def test_helperChainVerifies(self):
        """
        The hand-built chain the refusal tests start from is valid, so each
        refusal is due to the one thing changed.
        """
        create, rotate = self._chain()
        ident = import_identity(encode_change_history([create, rotate]))
        self.assertEqual(ident.public_key, ed_public(SEED_C))
        self.assertEqual(ident, LocalIdentity.create(SEED_B).rotate(SEED_C))

    def _refused(self, changes, contains, context):
        raw = encode_change_history(changes)
        assert_identity_error(self, import_identity, raw, context=context, contains=contains)
        assert_identity_error(
            self, Identity, changes, context=f"Identity({context})", contains=contains
        )

    def test_rotateMissingPrevSign(self):
        """
        A RotateKey with only SelfSign is refused.
        """
        create, _ = self._chain()
        rotate = rotate_change(create, SEED_B, SEED_C, signers=[(SignatureType.SELF_SIGN, SEED_C)])
        self._refused([create, rotate], "needs exactly [SELF_SIGN, PREV_SIGN]", "only SelfSign")

    def test_rotateMissingPrevSignFromRealRotation(self):
        """
        The same, starting from what L{LocalIdentity.rotate} produced.
        """
        rotated = LocalIdentity.create(SEED_B).rotate(SEED_C)
        create, rotate = decode_change_history(rotated.export())
        stripped = rotate._replace(signatures=rotate.signatures[:1])
        self.assertEqual(stripped.signatures[0].sig_type, SignatureType.SELF_SIGN)
        self._refused([create, stripped], "PREV_SIGN", "stripped PrevSign")

    def test_rotateOtherSignatureSets(self):
        create, _ = self._chain()
        S, P, R = SignatureType.SELF_SIGN, SignatureType.PREV_SIGN, SignatureType.ROOT_SIGN
        for signers in (
            [(P, SEED_B)],
            [],
            [(S, SEED_C), (P, SEED_B), (R, SEED_B)],
            [(S, SEED_C), (S, SEED_C)],
            [(S, SEED_C), (P, SEED_B), (P, SEED_B)],
            [(S, SEED_C), (R, SEED_B)],
        ):
            rotate = rotate_change(create, SEED_B, SEED_C, signers=signers)
            self._refused([create, rotate], "needs exactly", f"signers {signers}")

    def test_rotateSignaturesInOtherOrder(self):
        """
        PrevSign before SelfSign is the same set of signatures: accepted.
        """
        create, _ = self._chain()
        rotate = rotate_change(
            create,
            SEED_B,
            SEED_C,
            signers=[(SignatureType.PREV_SIGN, SEED_B), (SignatureType.SELF_SIGN, SEED_C)],
        )
        import_identity(encode_change_history([create, rotate]))

    def test_rotateWrongSigners(self):
        """
        PrevSign by the new key, or SelfSign by the old one, is refused.
        """
        create, _ = self._chain()
        S, P = SignatureType.SELF_SIGN, SignatureType.PREV_SIGN
        for signers, bad in (
            ([(S, SEED_C), (P, SEED_C)], "PREV_SIGN"),
            ([(S, SEED_B), (P, SEED_B)], "SELF_SIGN"),
            ([(S, SEED_C), (P, SEED_D)], "PREV_SIGN"),
        ):
            rotate = rotate_change(create, SEED_B, SEED_C, signers=signers)
            self._refused([create, rotate], f"{bad} signature does not verify", f"signers {signers}")

    def test_createKeySignatureSets(self):
        S, P, R = SignatureType.SELF_SIGN, SignatureType.PREV_SIGN, SignatureType.ROOT_SIGN
        for signers in ([], [(S, SEED_B), (S, SEED_B)], [(R, SEED_B)], [(S, SEED_B), (P, SEED_B)]):
            self._refused([create_change(SEED_B, signers)], "needs exactly [SELF_SIGN]", f"{signers}")
        self._refused(
            [create_change(SEED_B, [(S, SEED_C)])], "SELF_SIGN signature does not verify", "other key"
        )

    def test_wrongPrevId(self):
        """
        Correctly signed changes with the wrong previous change id are
        refused.
        """
        create, _ = self._chain()
        rotate = rotate_change(create, SEED_B, SEED_C, prev_id=INITIAL_CHANGE_ID)
        self._refused([create, rotate], "wrong prev_change_id", "rotation with initial prev id")
        first = signed_change(
            ChangeKind.CREATE_KEY, b"\x00" * 32, ed_public(SEED_B), [(SignatureType.SELF_SIGN, SEED_B)]
        )
        self._refused([first], "wrong prev_change_id", "creation with zero prev id")

    def test_spliceOtherIdentitysRotation(self):
        """
        A rotation taken from another identity does not follow this one.
        """
        mine = LocalIdentity.create(SEED_B)
        other = LocalIdentity.create(SEED_C).rotate(SEED_D)
        self._refused([mine.changes[0], other.changes[1]], "wrong prev_change_id", "spliced")

    def test_kindsOutOfPlace(self):
        create, rotate = self._chain()
        self._refused([rotate], "expected CREATE_KEY", "rotation first")
        self._refused([rotate, create], "expected CREATE_KEY", "reordered")
        second_create = signed_change(
            ChangeKind.CREATE_KEY,
            create.change_id,
            ed_public(SEED_C),
            [(SignatureType.SELF_SIGN, SEED_C)],
        )
        self._refused([create, second_create], "expected ROTATE_KEY", "two creations")

    def test_wrongChangeId(self):
        create = create_change(SEED_B)
        cid = bytes(32)
        sig = ed_key(SEED_B).sign(cid)
        bad = SignedChange(cid, create.change, (ChangeSignature(SignatureType.SELF_SIGN, sig),))
        self._refused([bad], "change id", "change id signed but not the hash")

    def test_keyAttributes(self):
        """
        Only Ed25519 root keys labelled OCKAM_RK, 32 bytes long.
        """
        S = SignatureType.SELF_SIGN
        for overrides, contains in (
            (dict(label="OTHER"), "label"),
            (dict(key_stype=SecretType.NIST_P256), "only Ed25519"),
            (dict(stype=SecretType.X25519), "only Ed25519"),
            (dict(length=33), "declared length 33"),
            (dict(public_key=b"\x01" * 31), "31 bytes"),
        ):
            change = create_change(SEED_B, [(S, SEED_B)], **overrides)
            self._refused([change], contains, repr(overrides))

    def test_ephemeralPersistenceAccepted(self):
        """
        Persistence is not part of what we refuse: an Ephemeral root key
        that is properly signed verifies.
        """
        change = create_change(SEED_B, persistence=Persistence.EPHEMERAL)
        import_identity(encode_change_history([change]))

    def test_localIdentityKeyMustMatch(self):
        ident = LocalIdentity.create(SEED_B)
        assert_identity_error(
            self,
            LocalIdentity.from_secret,
            ident.export(),
            SEED_C,
            context="other key",
            contains="does not match",
        )
        assert_identity_error(self, LocalIdentity.create, b"short", context="short seed")


class SigningTests(SynchronousTestCase):
    def _final_h(self):
        i, r = ockam_pair(handshake_vector(self))
        run_handshake(i, r)
        self.assertEqual(i.h, r.h)
        self.assertEqual(len(i.h), 32)
        return i.h

    def test_signHandshakeHash(self):
        """
        The vector identity signs the final h of Ockam's handshake vector;
        the imported identity verifies it; a signature by another identity,
        another h, or a changed signature does not verify.
        """
        v = seed_vector(self)
        h = self._final_h()
        me = LocalIdentity.create(x(v["ed25519_seed"]))
        sig = me.sign(h)
        self.assertEqual(len(sig), 64)
        self.assertEqual(sig, ed_key(x(v["ed25519_seed"])).sign(h), "Ed25519 is deterministic")
        peer_view = import_identity(x(v["export"]))
        peer_view.verify(h, sig)
        other = LocalIdentity.create(SEED_B)
        assert_identity_error(self, peer_view.verify, h, other.sign(h), context="other identity")
        assert_identity_error(
            self, import_identity(other.export()).verify, h, sig, context="other identity's view"
        )
        initial_h = x(handshake_vector(self)["initial_h_after_empty_prologue"])
        assert_identity_error(self, peer_view.verify, initial_h, sig, context="other h")
        bad = bytearray(sig)
        bad[10] ^= 1
        assert_identity_error(self, peer_view.verify, h, bytes(bad), context="changed signature")
        assert_identity_error(self, peer_view.verify, h, sig[:63], context="short signature")
        assert_identity_error(self, peer_view.verify, h, "sig", context="text signature")

    def test_freshIdentitiesDiffer(self):
        a, b = LocalIdentity.create(), LocalIdentity.create()
        self.assertNotEqual(a.identifier, b.identifier)
        self.assertTrue(a.identifier.startswith("P"))
        self.assertEqual(len(a.identifier), 65)
        import_identity(a.export()).verify(b"x", a.sign(b"x"))

    def test_public(self):
        me = LocalIdentity.create(SEED_B)
        pub = me.public()
        self.assertNotIsInstance(pub, LocalIdentity)
        self.assertFalse(hasattr(pub, "sign"))
        self.assertEqual(pub, me)
        self.assertEqual(hash(pub), hash(me))
        self.assertIn(me.identifier, repr(me))
        self.assertNotIn(SEED_B.hex(), repr(me))


class FileTests(SynchronousTestCase):
    def _path(self):
        d = self.mktemp()
        os.makedirs(d)
        return d, os.path.join(d, "identity.json")

    def test_saveLoad(self):
        """
        The file has mode 0600 even under a permissive umask; loading gives
        the same identity, which can sign.
        """
        v = seed_vector(self)
        d, path = self._path()
        me = LocalIdentity.create(x(v["ed25519_seed"]))
        old = os.umask(0)
        try:
            me.save(path)
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(os.listdir(d), ["identity.json"], "no temporary file left behind")
        loaded = LocalIdentity.load(path)
        self.assertEqual(loaded.identifier, v["identifier"])
        self.assertEqual(loaded.export(), x(v["export"]))
        sig = loaded.sign(b"after load")
        import_identity(x(v["export"])).verify(b"after load", sig)
        with open(path, "rb") as f:
            doc = json.loads(f.read())
        self.assertEqual(doc["format"], "ockamtw-identity")
        self.assertEqual(doc["version"], 1)
        self.assertEqual(doc["identifier"], v["identifier"])
        self.assertEqual(doc["export"], v["export"])
        self.assertEqual(doc["secret_key"], v["ed25519_seed"])

    def test_saveLoadRotated(self):
        d, path = self._path()
        rotated = LocalIdentity.create(SEED_B).rotate(SEED_C)
        rotated.save(path)
        loaded = LocalIdentity.load(path)
        self.assertEqual(loaded, rotated)
        self.assertEqual(loaded.public_key, ed_public(SEED_C))
        import_identity(rotated.export()).verify(b"m", loaded.sign(b"m"))
        loaded.rotate(SEED_D).save(path)
        self.assertEqual(len(LocalIdentity.load(path).changes), 3)

    def test_replacesWithMode0600(self):
        """
        Saving over a world-readable file leaves a 0600 file.
        """
        d, path = self._path()
        with open(path, "w") as f:
            f.write("old")
        os.chmod(path, 0o644)
        LocalIdentity.create(SEED_B).save(path)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(LocalIdentity.load(path).identifier, identifier_of(ed_public(SEED_B)))

    def test_loadRefusesOpenMode(self):
        d, path = self._path()
        LocalIdentity.create(SEED_B).save(path)
        os.chmod(path, 0o640)
        assert_identity_error(self, LocalIdentity.load, path, context="mode 0640", contains="chmod 600")

    def _write(self, path, doc):
        with open(path, "w") as f:
            f.write(doc if isinstance(doc, str) else json.dumps(doc))
        os.chmod(path, 0o600)

    def test_loadRefusesBadFiles(self):
        d, path = self._path()
        me = LocalIdentity.create(SEED_B)
        good = {
            "format": "ockamtw-identity",
            "version": 1,
            "identifier": me.identifier,
            "export": me.export().hex(),
            "secret_key": SEED_B.hex(),
        }
        self._write(path, good)
        self.assertEqual(LocalIdentity.load(path), me)
        tampered_export = bytearray(me.export())
        tampered_export[-1] ^= 1
        for change, contains in (
            ({"secret_key": SEED_C.hex()}, "does not match"),
            ({"identifier": "P" + "0" * 64}, "names"),
            ({"export": tampered_export.hex()}, "does not verify"),
            ({"export": "zz"}, "not hex"),
            ({"secret_key": None}, "not hex"),
            ({"format": "other"}, "not an ockamtw-identity file"),
            ({"version": 2}, "unsupported version"),
        ):
            doc = dict(good)
            doc.update(change)
            self._write(path, doc)
            assert_identity_error(
                self, LocalIdentity.load, path, context=repr(change), contains=contains
            )
        self._write(path, "not json")
        assert_identity_error(self, LocalIdentity.load, path, context="not JSON", contains="not JSON")
        self._write(path, "[1]")
        assert_identity_error(self, LocalIdentity.load, path, context="a list")
        assert_identity_error(
            self,
            LocalIdentity.load,
            os.path.join(d, "missing"),
            context="missing",
            contains="cannot read",
        )
        assert_identity_error(self, LocalIdentity.load, d, context="a directory")

    def test_saveIntoMissingDirectory(self):
        d, path = self._path()
        assert_identity_error(
            self, LocalIdentity.create(SEED_B).save, os.path.join(d, "no", "x.json"), context="no dir"
        )
