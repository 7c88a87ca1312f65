"""
Tests for L{ockamtw.project.projectinfo}: the C{project_json} vector read
and written byte for byte, serde_json's pretty printing of the other shapes
(nulls, okta_config, non-ASCII, escapes), tolerant reading (key order,
missing optional keys, unknown keys) and strict reading (one-line errors
that name the field), and the checks of C{node create --project}.
"""

import json
import os

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ockamtw.errors import OckamError
from ockamtw.project.errors import ProjectInfoError
from ockamtw.project.projectinfo import MAX_PROJECT_JSON, OktaConfig, ProjectInfo

from .strategies import PROJECT_PROPERTY as PROPERTY
from .vectors import identities, project_vectors


class VectorTests(SynchronousTestCase):
    def setUp(self):
        self.pj = project_vectors(self)["project_json"]

    def test_read(self):
        info = ProjectInfo.from_json(self.pj["text"])
        self.assertEqual(info.to_dict(), self.pj["info"])
        self.assertIsNone(info.okta_config)
        self.assertEqual(ProjectInfo.from_json(self.pj["text"].encode()), info)

    def test_write(self):
        i = self.pj["info"]
        info = ProjectInfo(
            i["id"],
            i["name"],
            i["identity"],
            i["access_route"],
            i["authority_access_route"],
            i["authority_identity"],
        )
        self.assertEqual(info.to_json(), self.pj["text"])

    def test_build(self):
        """
        From identities: the project identifier and the authority's export.
        """
        v = project_vectors(self)
        ids = identities(self)
        i = self.pj["info"]
        info = ProjectInfo.build(
            i["id"], i["name"], ids["project"].identifier, i["access_route"], ids["authority"].public(), i["authority_access_route"]
        )
        self.assertEqual(info.to_json(), self.pj["text"])
        self.assertEqual(info.identity, v["identities"]["project"]["identifier"])

    def test_complete(self):
        info = ProjectInfo.from_json(self.pj["text"])
        authority = info.require_complete()
        self.assertEqual(authority.identifier, project_vectors(self)["identities"]["authority"]["identifier"])
        self.assertEqual(info.authority(), authority)


def doc(**changes):
    base = {
        "id": "91c57e59-ad52-4b4e-9c4a-dd03113da939",
        "name": "default",
        "identity": "P" + "a" * 64,
        "access_route": "/dnsaddr/127.0.0.1/tcp/4000/service/api",
        "authority_access_route": "/dnsaddr/127.0.0.1/tcp/4001/service/api",
        "authority_identity": "00",
    }
    for k, v in changes.items():
        if v is KeyError:
            base.pop(k)
        else:
            base[k] = v
    return json.dumps(base)


class FormatTests(SynchronousTestCase):
    def test_nullsAndOkta(self):
        info = ProjectInfo(
            "id",
            "p\u00e9",
            None,
            "/ip4/10.0.0.1/tcp/1/service/api",
            None,
            None,
            OktaConfig("https://x.okta.com", "-----BEGIN\nCERT", "cid", ("email", "\u00e9")),
        )
        self.assertEqual(
            info.to_json(),
            "{\n"
            '  "id": "id",\n'
            '  "name": "p\u00e9",\n'
            '  "identity": null,\n'
            '  "access_route": "/ip4/10.0.0.1/tcp/1/service/api",\n'
            '  "authority_access_route": null,\n'
            '  "authority_identity": null,\n'
            '  "okta_config": {\n'
            '    "tenant_base_url": "https://x.okta.com",\n'
            '    "certificate": "-----BEGIN\\nCERT",\n'
            '    "client_id": "cid",\n'
            '    "attributes": [\n'
            '      "email",\n'
            '      "\u00e9"\n'
            "    ]\n"
            "  }\n"
            "}\n",
        )
        self.assertEqual(ProjectInfo.from_json(info.to_json()), info)
        empty = info._replace(okta_config=info.okta_config._replace(attributes=()))
        self.assertIn('"attributes": []\n', empty.to_json())
        self.assertEqual(ProjectInfo.from_json(empty.to_json()), empty)

    def test_controlCharacters(self):
        """
        serde_json escapes control characters as lowercase \\u00XX and
        leaves DEL and non-ASCII alone; so does the writer.
        """
        info = ProjectInfo("a\x01\x1f\x7f\u2028\"\\\t", "n", None, "/service/api", None, None)
        self.assertIn('"id": "a\\u0001\\u001f\x7f\u2028\\"\\\\\\t"', info.to_json())

    def test_tolerantRead(self):
        """
        Any key order, missing optional keys, nulls, unknown keys.
        """
        text = json.dumps(
            {
                "unknown": [1, 2],
                "access_route": "/dnsaddr/h/tcp/1/service/api",
                "name": "n",
                "id": "i",
                "okta_config": None,
            }
        )
        info = ProjectInfo.from_json(text)
        self.assertEqual(info, ProjectInfo("i", "n", None, "/dnsaddr/h/tcp/1/service/api", None, None))
        with self.assertRaises(ProjectInfoError) as cm:
            info.require_complete()
        self.assertIn("'identity'", str(cm.exception))

    def test_strictRead(self):
        """
        Each bad file gives one line naming the field.
        """
        cases = {
            doc(id=KeyError): "'id' is missing",
            doc(name=KeyError): "'name' is missing",
            doc(access_route=KeyError): "'access_route' is missing",
            doc(id=None): "'id' is null",
            doc(id=5): "'id' must be a string, not 5",
            doc(name=""): "'name' must be a non-empty name",
            doc(name="a/b"): "'name' must be a non-empty name",
            doc(identity="Pabc"): "'identity' must be an identifier",
            doc(identity="P" + "A" * 64): "'identity' must be an identifier",
            doc(identity=1): "'identity' must be a string or null",
            doc(access_route="dnsaddr/x"): "'access_route' is not a MultiAddr",
            doc(access_route="/dnsaddr/x/service/api"): "'access_route' is not a MultiAddr",
            doc(authority_access_route="/udp/1"): "'authority_access_route' is not a MultiAddr",
            doc(authority_identity="xyz"): "'authority_identity' must be the hex",
            doc(authority_identity=""): "'authority_identity' must be the hex",
            doc(authority_identity="0 1"): "'authority_identity' must be the hex",
            doc(okta_config=[]): "'okta_config' must be an object or null",
            doc(okta_config={"tenant_base_url": "u", "certificate": "c", "client_id": "i"}): "'okta_config.attributes' is missing",
            doc(okta_config={"tenant_base_url": "u", "certificate": "c", "client_id": 1, "attributes": []}): "'okta_config.client_id' must be a string",
            doc(okta_config={"tenant_base_url": "u", "certificate": "c", "client_id": "i", "attributes": [1]}): "'okta_config.attributes' must be a list of strings",
            '{"id": "a", "id": "b"}': "'id' appears twice",
            "[1]": "must hold a JSON object",
            "{": "is not JSON",
            "": "is not JSON",
            b"\xff": "is not UTF-8",
            "[" * 100000: "nested too deeply",
        }
        for text, fragment in cases.items():
            with self.assertRaises(ProjectInfoError, msg=repr(text)[:80]) as cm:
                ProjectInfo.from_json(text)
            message = str(cm.exception)
            self.assertIn(fragment, message, repr(text)[:80])
            self.assertNotIn("\n", message)
            self.assertLess(len(message), 300)
        with self.assertRaises(ProjectInfoError):
            ProjectInfo.from_json(5)

    def test_authorityChecks(self):
        """
        An authority history that does not verify is refused by
        L{ProjectInfo.authority} and L{ProjectInfo.require_complete}.
        """
        info = ProjectInfo.from_json(doc(authority_identity="0011"))
        for fn in (info.authority, info.require_complete):
            with self.assertRaises(ProjectInfoError) as cm:
                fn()
            self.assertIn("'authority_identity' does not verify", str(cm.exception))
        info = ProjectInfo.from_json(doc(authority_identity=None))
        with self.assertRaises(ProjectInfoError):
            info.authority()
        info = ProjectInfo.from_json(doc(authority_access_route=None))
        with self.assertRaises(ProjectInfoError) as cm:
            info.require_complete()
        self.assertIn("'authority_access_route' is null", str(cm.exception))

    def test_writeRefusals(self):
        for info in (
            ProjectInfo(1, "n", None, "/service/api", None, None),
            ProjectInfo("i", "n", 5, "/service/api", None, None),
            ProjectInfo("\ud800", "n", None, "/service/api", None, None),
        ):
            with self.assertRaises(ProjectInfoError):
                info.to_json()

    def test_load(self):
        path = self.mktemp()
        text = project_vectors(self)["project_json"]["text"]
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        self.assertEqual(ProjectInfo.load(path).to_json(), text)
        with self.assertRaises(ProjectInfoError) as cm:
            ProjectInfo.load(path + ".missing")
        self.assertIn("cannot read", str(cm.exception))
        with open(path, "w") as f:
            f.write("{}")
        with self.assertRaises(ProjectInfoError) as cm:
            ProjectInfo.load(path)
        self.assertIn(path, str(cm.exception))
        self.assertIn("'id' is missing", str(cm.exception))
        with open(path, "w") as f:
            f.write(" " * (MAX_PROJECT_JSON + 1))
        with self.assertRaises(ProjectInfoError) as cm:
            ProjectInfo.load(path)
        self.assertIn("larger than", str(cm.exception))
        os.unlink(path)

    def test_errorClass(self):
        self.assertTrue(issubclass(ProjectInfoError, OckamError))


names = st.text(min_size=1, max_size=12).filter(lambda s: "/" not in s)
opt_ident = st.none() | st.binary(min_size=32, max_size=32).map(lambda b: "P" + b.hex())
routes = st.sampled_from(["/dnsaddr/h/tcp/1/service/api", "/ip4/127.0.0.1/tcp/4000/service/api", "/service/api"])


class RoundTripTests(SynchronousTestCase):
    @given(
        st.text(max_size=20),
        names,
        opt_ident,
        routes,
        st.none() | routes,
        st.none() | st.binary(min_size=1, max_size=20).map(bytes.hex),
        st.none() | st.builds(OktaConfig, st.text(max_size=5), st.text(max_size=5), st.text(max_size=5), st.lists(st.text(max_size=5), max_size=3).map(tuple)),
    )
    @PROPERTY
    def test_roundTrip(self, id, name, identity, route, authority_route, authority, okta):
        info = ProjectInfo(id, name, identity, route, authority_route, authority, okta)
        text = info.to_json()
        self.assertEqual(ProjectInfo.from_json(text), info)
        self.assertEqual(json.loads(text), info.to_dict())
        self.assertEqual(list(json.loads(text)), list(info.to_dict()))
        self.assertTrue(text.endswith("}\n"))
