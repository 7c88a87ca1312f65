"""
Tests for L{ockamtw.project.credentials} and L{ockamtw.project.members}:
the credential of section 5.6 issued byte for byte (signature included) from
the vectors' seeds, every C{verification} vector with its error kind and
reason, the signed variants of those vectors rebuilt, the display and
C{project authenticate} output, Ockam's own credential tests
(C{ockam_source_checks}), Rust's formatting of times and strings, round
trips, and the member stores.
"""

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from ockamtw.errors import OckamError, WireError
from ockamtw.project import cbor
from ockamtw.project.credentials import (
    MAX_CREDENTIAL_VALIDITY,
    PROJECT_MEMBER_SCHEMA,
    Credential,
    CredentialData,
    authenticate_output,
    display,
    format_timestamp,
    issue,
    rust_debug_str,
    verify,
)
from ockamtw.project.errors import (
    AuthorityListError,
    CredentialError,
    CredentialIssueError,
    CredentialVerificationFailed,
    InvalidCredentialFormat,
    UnknownAuthority,
)
from ockamtw.project.members import (
    IMemberStore,
    MemberEntry,
    MemoryMemberStore,
    PreTrustedMemberStore,
    attributes_of,
)
from ockamtw.secure.identity import Identity, LocalIdentity

from .helpers import assert_wire_error
from .strategies import PROJECT_PROPERTY as PROPERTY
from .vectors import identities, project_vectors, x


class CredentialVectorTests(SynchronousTestCase):
    def setUp(self):
        self.v = project_vectors(self)
        self.c = self.v["credential"]
        self.ids = identities(self)
        self.project_id = self.v["constants"]["project_id"]

    def issue_member(self, **kw):
        return issue(
            self.ids["authority"],
            self.ids["member"].identifier,
            {"role": "member"},
            self.project_id,
            self.c["created"],
            **kw,
        )

    def test_issueByteForByte(self):
        """
        The credential of 5.6, from the authority's seed: data, signature
        and the whole Credential equal Rust's bytes.
        """
        cred = self.issue_member()
        self.assertEqual(cred.data.hex(), self.c["data_hex"])
        self.assertEqual(len(cred.data), 226)
        self.assertEqual(cred.signature.hex(), self.c["signature_hex"])
        self.assertEqual(cred.encode().hex(), self.c["credential_hex"])
        self.assertEqual(cred.hex(), self.c["credential_hex"])
        self.assertEqual(Credential.from_hex(self.c["credential_hex"]), cred)

    def test_issueDefaults(self):
        """
        schema 1, label OCKAM_RK, expires = created + 30 days, project_id
        overrides a stored value, text and bytes values alike.
        """
        cred = issue(
            self.ids["authority"],
            self.ids["member"].identifier,
            {"role": b"member", "project_id": "someone else's"},
            self.project_id,
            self.c["created"] + 0.9,
        )
        self.assertEqual(cred.hex(), self.c["credential_hex"])

    def test_decodedFields(self):
        data = Credential.from_hex(self.c["credential_hex"]).credential_data()
        self.assertEqual(data.subject, self.c["subject"])
        self.assertEqual(data.issuer, self.c["issuer"])
        self.assertEqual(data.schema, self.c["schema"])
        self.assertEqual(data.issuer_key_label, self.c["key_label"])
        self.assertEqual((data.created, data.expires), (self.c["created"], self.c["expires"]))
        self.assertEqual(
            {k: v.decode() for k, v in data.attributes.items()}, self.c["attributes"]
        )
        self.assertEqual(data.attribute_text("role"), "member")
        self.assertIsNone(data.attribute_text("nope"))
        self.assertEqual(data.encode().hex(), self.c["data_hex"])

    def test_enrollerCredential(self):
        cred = issue(
            self.ids["authority"],
            self.ids["enroller"].identifier,
            {"ockam-role": "enroller"},
            self.project_id,
            self.c["created"],
        )
        self.assertEqual(cred.hex(), self.v["enroller_credential_hex"])

    def test_display(self):
        cred = Credential.from_hex(self.c["credential_hex"])
        self.assertEqual(display(cred), self.c["display"])
        self.assertEqual(cred.display(), self.c["display"])
        self.assertEqual(display(cred.encode()), self.c["display"])
        self.assertEqual(authenticate_output(cred), self.c["authenticate_output"])

    def test_verificationVectors(self):
        """
        Every C{verification} case: the result and Ockam's error kind, the
        reason of a CredentialVerificationFailed and the issuer of an
        UnknownAuthority.  (The InvalidCredentialFormat detail of the
        vectors is a Python message of their generator, not Ockam's, so it
        is not compared.)
        """
        cases = self.v["verification"]
        self.assertEqual(len(cases), 11)
        for case in cases:
            name = case["name"]
            trusted = [self.ids[a] for a in case["authorities"]]
            args = (x(case["credential_hex"]), trusted, case["subject"], case["now"])
            if case["result"] == "ok":
                data = verify(*args)
                self.assertEqual(data, CredentialData.decode(Credential.decode(args[0]).data), name)
                continue
            with self.assertRaises(CredentialError, msg=name) as cm:
                verify(*args)
            err = cm.exception
            self.assertEqual(err.kind, case["result"], name)
            if isinstance(err, CredentialVerificationFailed):
                self.assertEqual(err.reason, case["detail"], name)
            elif isinstance(err, UnknownAuthority):
                self.assertEqual(err.issuer, case["detail"], name)
            else:
                self.assertIsInstance(err, InvalidCredentialFormat, name)

    def test_verificationVariantsRebuilt(self):
        """
        The signed variants of the verification vectors are what the
        authority's key gives for their data: the encoder writes a missing
        schema, other labels and times as Rust does.
        """
        authority = self.ids["authority"]
        for case in self.v["verification"]:
            cred = Credential.decode(x(case["credential_hex"]))
            try:
                data = CredentialData.decode(cred.data)
            except WireError:
                continue  # the "not CredentialData" case
            if case["name"] == "signature altered":
                self.assertNotEqual(authority.sign(cred.data), cred.signature)
                continue
            self.assertEqual(authority.sign(cred.data), cred.signature, case["name"])
            if "unknown key 9" in case["name"]:
                # our encoder never writes key 9; rebuild it by hand
                m = cbor.loads(cred.data)
                self.assertEqual(m[9], "ignored")
                del m[9]
                self.assertEqual(data.encode(), cbor.dumps(m))
                self.assertIsNone(data.schema)
                self.assertEqual(dict(data.attributes), {})
                continue
            self.assertEqual(data.encode(), cred.data, case["name"])

    def test_verifyOrder(self):
        """
        The checks run in the spec's order: with every check failing, the
        first one is reported.
        """
        ids = self.ids
        wrong_label = Credential.decode(
            x([c for c in self.v["verification"] if "key label" in c["name"]][0]["credential_hex"])
        )
        # unknown authority beats a wrong label
        with self.assertRaises(UnknownAuthority):
            verify(wrong_label, [ids["member"]], "P" + "0" * 64, 2**40)
        # a wrong label beats a wrong subject and expiry
        with self.assertRaises(CredentialVerificationFailed) as cm:
            verify(wrong_label, [ids["authority"]], "P" + "0" * 64, 2**40)
        self.assertEqual(cm.exception.reason, "invalid signing key")
        # a wrong subject beats expiry and a bad signature
        cred = self.issue_member()
        bad = cred._replace(signature=b"\x00" * 64)
        with self.assertRaises(CredentialVerificationFailed) as cm:
            verify(bad, [ids["authority"]], ids["enroller"].identifier, 2**40)
        self.assertEqual(cm.exception.reason, "unknown subject")
        # expiry beats a bad signature
        with self.assertRaises(CredentialVerificationFailed) as cm:
            verify(bad, [ids["authority"]], ids["member"].identifier, 2**40)
        self.assertEqual(cm.exception.reason, "expired credential")

    def test_verifySignatureSizes(self):
        cred = self.issue_member()
        for sig in (b"", cred.signature[:63], cred.signature + b"\x00"):
            with self.assertRaises(CredentialVerificationFailed) as cm:
                verify(cred._replace(signature=sig), [self.ids["authority"]], self.ids["member"].identifier, 1680000001)
            self.assertEqual(cm.exception.reason, "invalid signature")

    def test_verifyAuthorityForms(self):
        """
        Authorities as a mapping, a list or one Identity (public halves
        work); a mapping whose keys are not the identifiers is refused.
        """
        cred = self.issue_member()
        member = self.ids["member"].identifier
        pub = Identity.from_export(self.ids["authority"].export())
        for trusted in ({pub.identifier: pub}, [pub], pub, (i for i in [pub])):
            self.assertEqual(verify(cred, trusted, member, 1680000001).subject, member)
        with self.assertRaises(AuthorityListError):
            verify(cred, {self.ids["member"].identifier: pub}, member, 1680000001)
        with self.assertRaises(AuthorityListError):
            verify(cred, ["Pada09e0"], member, 1680000001)
        with self.assertRaises(UnknownAuthority):
            verify(cred, [], member, 1680000001)

    def test_verifyMalformed(self):
        """
        Bytes that are not a Credential, or whose data is not a
        CredentialData, are InvalidCredentialFormat; so is a data item with
        trailing bytes or a non-canonical identifier.
        """
        authority = self.ids["authority"]
        member = self.ids["member"].identifier
        data = self.issue_member().data
        upper = CredentialData.decode(data)._replace(subject="P" + "A" * 64)
        raw_upper = cbor.dumps({2: {1: {}}, 3: upper.subject, 4: upper.issuer, 5: "OCKAM_RK", 6: 1, 7: 2**40})
        for name, raw in {
            "empty": b"",
            "not a map": b"\x01",
            "text data": cbor.dumps({1: "x", 2: b"y"}),
            "signature missing": cbor.dumps({1: data}),
            "trailing data bytes": Credential(data + b"\x00", authority.sign(data + b"\x00")).encode(),
            "upper-case subject": Credential(raw_upper, authority.sign(raw_upper)).encode(),
            "text attribute": Credential(
                cbor.dumps({2: {1: {"a": "b"}}, 3: member, 4: authority.identifier, 5: "OCKAM_RK", 6: 1, 7: 2**40}),
                b"",
            ).encode(),
            "attributes missing": Credential(
                cbor.dumps({3: member, 4: authority.identifier, 5: "OCKAM_RK", 6: 1, 7: 2**40}), b""
            ).encode(),
        }.items():
            with self.assertRaises(InvalidCredentialFormat, msg=name):
                verify(raw, [authority], member, 1680000001)
        with self.assertRaises(InvalidCredentialFormat):
            verify("a2", [authority], member, 1680000001)
        with self.assertRaises(InvalidCredentialFormat):
            display(b"\xa2\x01\x41\x01\x02\x40")

    def test_rotatedAuthority(self):
        """
        A rotated authority signs with its new root key; a verifier holding
        the rotated history accepts, one holding only the old history
        refuses ("invalid signature"); the identifier is unchanged.
        """
        old = self.ids["authority"]
        new = old.rotate(seed=b"\x07" * 32)
        self.assertEqual(new.identifier, old.identifier)
        member = self.ids["member"].identifier
        cred = issue(new, member, {}, "p", 1000)
        self.assertEqual(verify(cred, [new.public()], member, 1001).issuer, old.identifier)
        with self.assertRaises(CredentialVerificationFailed) as cm:
            verify(cred, [old.public()], member, 1001)
        self.assertEqual(cm.exception.reason, "invalid signature")

    def test_issueRefusals(self):
        authority, member = self.ids["authority"], self.ids["member"].identifier
        bad = [
            ((authority, member, {}, "p", 0), {"ttl": MAX_CREDENTIAL_VALIDITY + 1}),
            ((authority, member, {}, "p", 0), {"ttl": 0}),
            ((authority, member, {}, "p", 0), {"ttl": 1.5}),
            ((authority, "P" + "A" * 64, {}, "p", 0), {}),
            ((authority, member, {1: "x"}, "p", 0), {}),
            ((authority, member, {"a": 1}, "p", 0), {}),
            ((authority, member, {}, b"p", 0), {}),
            ((authority, member, {}, "p", -1), {}),
            ((authority, member, {}, "p", "now"), {}),
            ((authority, member, {}, "p", 2**64 - 10), {}),
            ((authority.public(), member, {}, "p", 0), {}),
            ((authority, member, {}, "p", 0), {"schema": -1}),
            ((authority, member, {"\ud800": "x"}, "p", 0), {}),
        ]
        for args, kw in bad:
            with self.assertRaises(CredentialIssueError, msg=repr((args[1:], kw))):
                issue(*args, **kw)
        cred = issue(authority, member, {}, "p", 0, ttl=MAX_CREDENTIAL_VALIDITY, schema=None)
        data = cred.credential_data()
        self.assertIsNone(data.schema)
        self.assertEqual(data.expires, MAX_CREDENTIAL_VALIDITY)

    def test_errorsAreOckamErrors(self):
        for cls in (CredentialError, InvalidCredentialFormat, UnknownAuthority, CredentialVerificationFailed):
            self.assertTrue(issubclass(cls, OckamError))
        self.assertEqual(UnknownAuthority("P1").kind, "UnknownAuthority")
        self.assertEqual(CredentialVerificationFailed("x").kind, "CredentialVerificationFailed")


class SourceCheckTests(SynchronousTestCase):
    """
    Ockam's own credential and identity tests (C{ockam_source_checks}).
    """

    def setUp(self):
        self.checks = {c["source"]: c for c in project_vectors(self)["ockam_source_checks"]}

    def check(self, fragment):
        (c,) = [c for s, c in self.checks.items() if fragment in s]
        return c

    def test_serdeBare(self):
        c = self.check("test_serialization")
        cred = Credential(bytes([1, 2, 3]), bytes([5, 6, 7]))
        self.assertEqual(cred.encode().hex(), c["credential_hex"])
        self.assertEqual(cred.to_bare().hex(), c["serde_bare_hex"])
        self.assertEqual(Credential.from_bare(x(c["serde_bare_hex"])), cred)
        assert_wire_error(self, Credential.from_bare, x(c["serde_bare_hex"]) + b"\x00", context="trailing")

    def test_display(self):
        """
        Ockam's display tests: the CredentialData (schema 1, created 120,
        expires 200, {"name": "value"}) built from values encodes to the
        recorded bytes and displays as Ockam expects, with and without the
        signature line.
        """
        c = self.check("test_display_credential_data")
        data = CredentialData(
            subject="P6474cfdbf547240b6d716bff89c976810859bc3f47be8ea620df12a392ea6cb7",
            issuer="P0db4fec87ff764485f1311e68d6f474e786f1fdbafcd249a5eb73dd681fd1d5d",
            attributes={"name": b"value"},
            created=120,
            expires=200,
        )
        self.assertEqual(data.encode().hex(), c["data_hex"])
        cred = Credential(data.encode(), x(c["signature_hex"]))
        self.assertEqual(display(cred), c["display"])
        self.assertEqual(data.display() + "Signature:  010203\n", c["display"])
        self.assertTrue(data.display().endswith('Attributes: {"name": "value"}\n'))

    def test_publicIdentity(self):
        c = self.check("public_identity.rs")
        self.assertEqual(Identity.from_export(x(c["export"])).identifier, c["identifier"])

    def test_exampleIdentities(self):
        for fragment in ("(authority)", "(member)"):
            c = self.check(fragment)
            self.assertEqual(LocalIdentity.create(x(c["ed25519_seed"])).export().hex(), c["export"])


class FormattingTests(SynchronousTestCase):
    def test_timestamps(self):
        cases = {
            0: "1970-01-01T00:00:00Z",
            120: "1970-01-01T00:02:00Z",
            1680000000: "2023-03-28T10:40:00Z",
            1682592000: "2023-04-27T10:40:00Z",
            253402300799: "9999-12-31T23:59:59Z",
            2**64 - 1: "1969-12-31T23:59:59Z",  # as i64: -1
            2**64 - 62167219200: "0000-01-01T00:00:00Z",
            2**64 - 62135596801: "0000-12-31T23:59:59Z",
            2**64 - 62162035201: "0000-02-29T23:59:59Z",
        }
        for seconds, text in cases.items():
            self.assertEqual(format_timestamp(seconds), text, seconds)
        invalid = "The unix time is invalid component cannot be formatted into the requested format."
        for seconds in (253402300800, 2**63, 2**63 - 1, 2**64 - 377705116801):
            self.assertEqual(format_timestamp(seconds), invalid, seconds)
        year = "The timestamp error component cannot be formatted into the requested format."
        for seconds in (2**64 - 62167219201, 2**64 - 377705116800):
            self.assertEqual(format_timestamp(seconds), year, seconds)

    def test_debugStrings(self):
        cases = {
            "member": '"member"',
            'a"b': '"a\\"b"',
            "a\\b": '"a\\\\b"',
            "tab\there": '"tab\\there"',
            "\n\r\0": '"\\n\\r\\0"',
            "it's": '"it\'s"',
            "\x7f\x01": '"\\u{7f}\\u{1}"',
            "caf\u00e9 \u00fc": '"caf\u00e9 \u00fc"',
            "\u00a0": '"\\u{a0}"',
            "\u200b": '"\\u{200b}"',
            "e\u0301": '"e\\u{301}"',
            "\U0001f600": '"\U0001f600"',
        }
        for text, shown in cases.items():
            self.assertEqual(rust_debug_str(text), shown, repr(text))

    def test_displayShapes(self):
        """
        No schema: no line; a value that is not UTF-8 shows as
        C{"**binary**"}; names are sorted and escaped.
        """
        data = CredentialData(
            subject="P" + "1" * 64,
            issuer="P" + "2" * 64,
            attributes={"z": b"\xff", 'a"': b"x\ny", "m": b""},
            created=0,
            expires=1,
            schema=None,
            issuer_key_label="OTHER",
        )
        self.assertEqual(
            data.display(),
            "Subject:    P" + "1" * 64 + "\n"
            "Issuer:     P" + "2" * 64 + " (OTHER)\n"
            "Created:    1970-01-01T00:00:00Z\n"
            "Expires:    1970-01-01T00:00:01Z\n"
            'Attributes: {"a\\"": "x\\ny", "m": "", "z": "**binary**"}\n',
        )
        self.assertEqual(
            CredentialData("P" + "1" * 64, "P" + "2" * 64, {}, 0, 1, 7).display().splitlines()[0], "Schema:     7"
        )
        self.assertIn("Attributes: {}\n", CredentialData("P" + "1" * 64, "P" + "2" * 64, {}, 0, 1).display())


identifiers = st.binary(min_size=32, max_size=32).map(lambda b: "P" + b.hex())
u64 = st.integers(0, 2**64 - 1)
credential_data = st.builds(
    CredentialData,
    identifiers,
    identifiers,
    st.dictionaries(st.text(max_size=10), st.binary(max_size=10), max_size=4),
    u64,
    u64,
    st.none() | u64,
    st.text(max_size=10),
)


class CredentialRoundTripTests(SynchronousTestCase):
    @given(credential_data)
    @PROPERTY
    def test_data(self, data):
        raw = data.encode()
        back = CredentialData.decode(raw)
        self.assertEqual(back, data._replace(attributes=dict(sorted(data.attributes.items(), key=lambda kv: kv[0].encode()))))
        self.assertEqual(list(back.attributes), sorted(data.attributes, key=lambda k: k.encode()))
        self.assertEqual(back.encode(), raw)
        back.display()  # never fails

    @given(st.binary(max_size=300), st.binary(max_size=80))
    @PROPERTY
    def test_credential(self, data, signature):
        cred = Credential(data, signature)
        self.assertEqual(Credential.decode(cred.encode()), cred)
        self.assertEqual(Credential.from_hex(cred.hex()), cred)
        self.assertEqual(Credential.from_bare(cred.to_bare()), cred)

    @given(
        st.dictionaries(st.text(max_size=10), st.text(max_size=10) | st.binary(max_size=10), max_size=4),
        st.text(max_size=40),
        st.integers(0, 2**40),
        st.integers(1, MAX_CREDENTIAL_VALIDITY),
    )
    @PROPERTY
    def test_issueVerify(self, attrs, project_id, now, ttl):
        """
        What is issued verifies until its expiry, with the attributes given
        plus project_id.
        """
        ids = identities(self)
        member = ids["member"].identifier
        cred = issue(ids["authority"], member, attrs, project_id, now, ttl=ttl)
        data = verify(cred.encode(), [ids["authority"]], member, now + ttl - 1)
        expected = {k: (v.encode() if isinstance(v, str) else v) for k, v in attrs.items()}
        expected["project_id"] = project_id.encode()
        self.assertEqual(dict(data.attributes), expected)
        self.assertEqual((data.created, data.expires), (now, now + ttl))
        with self.assertRaises(CredentialVerificationFailed):
            verify(cred, [ids["authority"]], member, now + ttl)

    @given(st.binary(max_size=80))
    @PROPERTY
    def test_garbage(self, raw):
        """
        Random bytes: decoders raise only WireError, verify only
        CredentialError.
        """
        try:
            CredentialData.decode(raw)
        except WireError:
            pass
        try:
            verify(raw, [], "P" + "0" * 64, 0)
        except CredentialError:
            pass


class MemberStoreTests(SynchronousTestCase):
    A = "P" + "a" * 64
    B = "P" + "b" * 64

    def test_interface(self):
        verifyObject(IMemberStore, MemoryMemberStore())
        verifyObject(IMemberStore, PreTrustedMemberStore({}, MemoryMemberStore()))

    def test_replaceNotMerge(self):
        store = MemoryMemberStore()
        store.put(self.A, MemberEntry({"role": "member", "x": b"1"}, 10, None, self.B))
        store.put(self.A, MemberEntry({"role": "admin"}, 20))
        entry = store.get(self.A, 30)
        self.assertEqual(dict(entry.attributes), {"role": b"admin"})
        self.assertEqual(entry.added, 20)
        self.assertEqual(entry.text("role"), "admin")
        self.assertIsNone(entry.text("x"))
        self.assertIsNone(store.get(self.B, 30))

    def test_expiry(self):
        """
        An entry reads as absent from its expires on.
        """
        store = MemoryMemberStore()
        store.put(self.A, MemberEntry({}, 0, 100))
        store.put(self.B, MemberEntry({}, 0))
        self.assertIsNotNone(store.get(self.A, 99))
        self.assertEqual(set(store.members(99)), {self.A, self.B})
        self.assertIsNone(store.get(self.A, 100))
        self.assertEqual(set(store.members(100)), {self.B})
        self.assertIsNotNone(store.get(self.B, 2**64))

    def test_delete(self):
        store = MemoryMemberStore()
        store.put(self.A, MemberEntry({}, 0))
        store.delete(self.A)
        store.delete(self.A)
        self.assertIsNone(store.get(self.A, 0))

    def test_preTrusted(self):
        """
        Pre-trusted identities are read first; writes and deletes for them
        are ignored; others go to the store.
        """
        inner = MemoryMemberStore()
        store = PreTrustedMemberStore({self.A: {"ockam-role": "enroller", "project_id": "p"}}, inner)
        self.assertTrue(store.is_pre_trusted(self.A))
        store.put(self.A, MemberEntry({"role": "member"}, 5))
        store.delete(self.A)
        self.assertEqual(dict(store.get(self.A, 0).attributes), {"ockam-role": b"enroller", "project_id": b"p"})
        self.assertIsNone(inner.get(self.A, 0))
        store.put(self.B, MemberEntry({"role": "member"}, 5))
        self.assertEqual(dict(store.get(self.B, 0).attributes), {"role": b"member"})
        self.assertEqual(set(store.members(0)), {self.A, self.B})

    def test_validation(self):
        store = MemoryMemberStore()
        assert_wire_error(self, store.put, "P1", MemberEntry({}, 0), context="bad identifier")
        assert_wire_error(self, store.put, self.A, {"a": "b"}, context="not an entry")
        assert_wire_error(self, store.put, self.A, MemberEntry({"a": 1}, 0), context="int value")
        assert_wire_error(self, attributes_of, [("a", "b")], context="not a mapping")
        assert_wire_error(self, PreTrustedMemberStore, {"x": {}}, inner_store(), context="bad pre-trusted")
        self.assertEqual(list(attributes_of({"b": "1", "a": b"2"})), ["a", "b"])

    def test_schemaConstant(self):
        self.assertEqual(PROJECT_MEMBER_SCHEMA, 1)


def inner_store():
    return MemoryMemberStore()
