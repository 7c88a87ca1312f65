"""
A node's project, policies and authority in its state and control API, in
one process: C{state.json} keys (C{project}, C{policies}, C{authority})
checked in one line, restored by the node's controller and written back;
the policy endpoints; relays at a project shown with the address the
project gave; a standalone authority's one-time codes (0.83's table of
128, single use, 600 s; ockamtw's usage counts) and members kept through
its controller.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ockamtw import Node
from ockamtw.control import state as st
from ockamtw.control.server import NodeController, relay_dict
from ockamtw.project import codec
from ockamtw.project.authority import Authority, AuthorityConfig, AuthorityConfigError, parse_trusted_identities
from ockamtw.project.projectinfo import ProjectInfo
from ockamtw.project.service import ApiError
from ockamtw.relay import STATIC_FORWARDING_SERVICE, Relay
from ockamtw.secure.identity import LocalIdentity

from .helpers import async_test
from .control_harness import ControlAPITestCase

MEMBER = "P" + "1" * 64
ENROLLER = "P" + "2" * 64


def project_doc(name: str = "default") -> dict:
    authority = LocalIdentity.create()
    return ProjectInfo.build(
        "91c57e59-ad52-4b4e-9c4a-dd03113da939", name, "P" + "a" * 64, "/dnsaddr/127.0.0.1/tcp/4000/service/api",
        authority, "/dnsaddr/127.0.0.1/tcp/4001/service/api",
    ).to_dict()


def authority_doc(**kw) -> dict:
    doc = {"project_identifier": "proj1", "trusted_identities": {ENROLLER: {"ockam-role": "enroller"}}}
    doc.update(kw)
    return doc


class StateTests(SynchronousTestCase):
    def directory(self) -> str:
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d, True)
        return d

    def problem(self, **extra) -> str:
        d = self.directory()
        state = st.empty_state("n1", "127.0.0.1:0")
        state.update(extra)
        with open(os.path.join(d, st.STATE), "w") as f:
            json.dump(state, f)
        with self.assertRaises(st.StateError) as e:
            st.read_state(d)
        self.assertNotIn("\n", str(e.exception))
        return e.exception.problem

    def test_good_state(self):
        d = self.directory()
        state = st.empty_state("n1", "127.0.0.1:0")
        state.update(project=project_doc(), policies={"tcp-outlet": "(= subject.role \"member\")"},
                     authority=authority_doc())
        st.write_state(d, state)
        self.assertEqual(st.read_state(d)["policies"], {"tcp-outlet": '(= subject.role "member")'})

    def test_bad_project(self):
        self.assertEqual(self.problem(project=[]), "state.json: project: expected an object (what project.json holds), got a list")
        doc = project_doc()
        doc["identity"] = None
        self.assertEqual(self.problem(project=doc), "state.json: project: 'identity' is null: the project is not ready")
        doc = project_doc()
        doc["authority_identity"] = "00"
        self.assertIn("state.json: project: 'authority_identity' does not verify", self.problem(project=doc))

    def test_bad_policies(self):
        self.assertEqual(self.problem(policies=[]),
                         "state.json: policies: expected an object {resource: expression}, got a list")
        self.assertIn("state.json: policies.tcp-outlet: ", self.problem(policies={"tcp-outlet": "(= a"}))
        self.assertEqual(self.problem(policies={"tcp-outlet": 3}),
                         "state.json: policies.tcp-outlet: expected policy text, got a number")

    def test_bad_authority(self):
        self.assertIn("state.json: authority: exactly one of trusted_identities or trusted_identities_file",
                      self.problem(authority={"project_identifier": "p"}))
        self.assertIn("not an identifier", self.problem(authority=authority_doc(trusted_identities={"x": {}})))


class RestoreTests(SynchronousTestCase):
    def test_restore_and_save(self):
        """
        The controller gives the node its project, policies and authority
        from C{state.json} (twice changes nothing) and writes them back.
        """
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d, True)
        state = st.empty_state("n1", "127.0.0.1:0")
        project = project_doc()
        state.update(project=project, policies={"tcp-outlet": "true"}, authority=authority_doc())
        st.write_state(d, state)
        node = Node(Clock(), name="n1")
        controller = NodeController(node, d)
        controller.restore(st.read_state(d))
        self.assertEqual(list(node.membership.projects), ["default"])
        self.assertEqual(node.membership.policies, {"tcp-outlet": "true"})
        for service in (codec.CREDENTIAL_ISSUER, codec.DIRECT_AUTHENTICATOR, codec.ENROLLMENT_TOKEN_ISSUER,
                        codec.ENROLLMENT_TOKEN_ACCEPTOR):
            self.assertIsNotNone(node.worker_at(service), service)
        self.assertEqual(controller.show()["project"], "default")
        self.assertEqual(controller.show()["authority"]["project_identifier"], "proj1")
        controller.authority.put_member(MEMBER, {"role": "member"}, ENROLLER)
        saved = st.read_state(d)
        self.assertEqual(saved["project"], project)
        self.assertEqual(saved["policies"], {"tcp-outlet": "true"})
        self.assertEqual(saved["authority"]["members"][MEMBER]["attributes"], {"role": "member", "project_id": "proj1"})
        # A new controller (a restart) has the member again.
        again = NodeController(Node(Clock(), name="n1"), d)
        self.assertEqual(again.authority.attributes_of(MEMBER), {"role": "member", "project_id": "proj1"})

    def test_static_relay_address(self):
        """
        A relay at a project registered its bare name; it is shown with the
        address the project gives it.
        """
        node = Node(Clock(), name="n3")
        relay = Relay(node, "/project/default", name="n3", service=STATIC_FORWARDING_SERVICE)
        self.assertEqual(relay_dict(relay)["alias"], "forward_to_n3")
        other = Relay(node, "/node/n2", name="n3")
        self.assertEqual(relay_dict(other)["alias"], "forward_to_n3")

    def test_project_relays_default_to_static(self):
        from ockamtw.relay import relay_service as _relay_service
        from ockamtw.relay import FORWARDING_SERVICE

        self.assertEqual(_relay_service("/project/default", None), STATIC_FORWARDING_SERVICE)
        self.assertEqual(_relay_service("/node/n2", None), FORWARDING_SERVICE)
        self.assertEqual(_relay_service("/project/default", FORWARDING_SERVICE), FORWARDING_SERVICE)


class AuthorityTokenTests(SynchronousTestCase):
    def authority(self, **kw):
        clock = Clock()
        clock.advance(1000)
        node = Node(clock, name="authority")
        changes = []
        a = Authority(node, AuthorityConfig.from_dict(authority_doc(**kw)), on_change=lambda: changes.append(1))
        return a, clock, changes

    def test_single_use(self):
        a, clock, changes = self.authority()
        code = a.new_token({"role": "member"}, ENROLLER, None, None)
        a.redeem(code, MEMBER)
        self.assertEqual(a.attributes_of(MEMBER), {"role": "member", "project_id": "proj1"})
        self.assertEqual(a.config.members[MEMBER]["attested_by"], ENROLLER)
        self.assertEqual(changes, [1])
        with self.assertRaises(ApiError) as e:
            a.redeem(code, MEMBER)
        self.assertEqual(e.exception.message, "unknown token")

    def test_expiry(self):
        """
        0.83: refused when strictly older than 600 s, and consumed by the
        refused attempt.
        """
        a, clock, _ = self.authority()
        code = a.new_token({}, ENROLLER, None, None)
        clock.advance(600)
        other = a.new_token({}, ENROLLER, None, None)
        a.redeem(code, MEMBER)  # exactly 600 s: still good
        clock.advance(600.5)
        with self.assertRaises(ApiError) as e:
            a.redeem(other, MEMBER)
        self.assertEqual(e.exception.message, "expired token")
        with self.assertRaises(ApiError) as e:
            a.redeem(other, MEMBER)
        self.assertEqual(e.exception.message, "unknown token")

    def test_usage_count_and_lifetime(self):
        a, clock, _ = self.authority()
        code = a.new_token({}, ENROLLER, 60, 2)
        a.redeem(code, MEMBER)
        a.redeem(code, "P" + "3" * 64)
        with self.assertRaises(ApiError):
            a.redeem(code, "P" + "4" * 64)
        code = a.new_token({}, ENROLLER, 60, None)
        clock.advance(61)
        with self.assertRaises(ApiError) as e:
            a.redeem(code, MEMBER)
        self.assertEqual(e.exception.message, "expired token")

    def test_table_of_128(self):
        a, clock, _ = self.authority()
        codes = [a.new_token({}, ENROLLER, None, None) for _ in range(129)]
        with self.assertRaises(ApiError) as e:
            a.redeem(codes[0], MEMBER)
        self.assertEqual(e.exception.message, "unknown token")
        a.redeem(codes[1], MEMBER)

    def test_pre_trusted(self):
        """
        Pre-trusted identities get C{project_id} added (given on the command
        line) and cannot be overwritten; from a file, they are read again at
        each lookup and taken as they are.
        """
        a, clock, changes = self.authority()
        self.assertEqual(a.attributes_of(ENROLLER), {"ockam-role": "enroller", "project_id": "proj1"})
        a.put_member(ENROLLER, {"role": "member"}, MEMBER)
        self.assertEqual(a.attributes_of(ENROLLER), {"ockam-role": "enroller", "project_id": "proj1"})
        self.assertEqual(changes, [])
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump({MEMBER: {"role": "member"}}, f)
        a, clock, changes = self.authority(trusted_identities=None, trusted_identities_file=path)
        self.assertEqual(a.attributes_of(MEMBER), {"role": "member"})
        with open(path, "w") as f:
            json.dump({}, f)
        self.assertIsNone(a.attributes_of(MEMBER))

    def test_parse_trusted(self):
        self.assertEqual(parse_trusted_identities(json.dumps({MEMBER: {"a": "b"}})), {MEMBER: {"a": "b"}})
        for bad in ("[]", "{", json.dumps({MEMBER: {"a": 1}}), json.dumps({"P1": {}})):
            with self.assertRaises(AuthorityConfigError):
                parse_trusted_identities(bad)

    def test_services_follow_the_flags(self):
        a, _, _ = self.authority(direct_authentication=False, token_enrollment=False)
        a.start()
        self.assertIsNotNone(a.node.worker_at(codec.CREDENTIAL_ISSUER))
        for service in (codec.DIRECT_AUTHENTICATOR, codec.ENROLLMENT_TOKEN_ISSUER, codec.ENROLLMENT_TOKEN_ACCEPTOR):
            self.assertIsNone(a.node.worker_at(service), service)


class PolicyAPITests(ControlAPITestCase):
    @async_test
    async def test_policy_endpoints(self):
        node, _, controller, client = await self.serve()
        self.assertEqual(await client.call("GET", "policies"), [])
        message = await self.refused(client, "GET", ("policies", "tcp-outlet"))
        self.assertEqual(message, "no policy for resource 'tcp-outlet' on node n1")
        policy = await client.call("PUT", ("policies", "tcp-outlet"), {"expression": '(= subject.role  "member")'})
        self.assertEqual(policy, {"resource": "tcp-outlet", "action": "handle_message",
                                  "expression": '(= subject.role "member")'})
        self.assertEqual(node.membership.policies, {"tcp-outlet": '(= subject.role "member")'})
        with open(os.path.join(controller.directory, st.STATE)) as f:
            self.assertEqual(json.load(f)["policies"], {"tcp-outlet": '(= subject.role "member")'})
        message = await self.refused(client, "PUT", ("policies", "tcp-outlet"), {"expression": "(= a"})
        self.assertTrue(message.startswith("bad policy expression: "), message)
        message = await self.refused(client, "PUT", ("policies", "tcp-outlet"), {"expression": "true", "action": "x"})
        self.assertEqual(message, "unknown action 'x' (policies are for handle_message)")
        self.assertEqual(await client.call("GET", "policies"), [policy])
        self.assertEqual(await client.call("DELETE", ("policies", "tcp-outlet")), policy)
        self.assertEqual(node.membership.policies, {})
        message = await self.refused(client, "GET", "project")
        self.assertEqual(message, "node n1 belongs to no project")
        self.assertEqual(await client.call("GET", "credentials"), {"own": [], "presented": []})
        message = await self.refused(client, "POST", "credentials", {})
        self.assertEqual(message, "node n1 belongs to no project")

    @async_test
    async def test_project_and_show(self):
        node, _, controller, client = await self.serve()
        doc = project_doc("p9")
        node.add_project(ProjectInfo.from_json(json.dumps(doc)))
        self.assertEqual(await client.call("GET", "project"), doc)
        self.assertEqual((await client.call("GET", "node"))["project"], "p9")
        await client.call("PUT", ("policies", "tcp-inlet"), {"expression": "true"})
        with open(os.path.join(controller.directory, st.STATE)) as f:
            self.assertEqual(json.load(f)["project"], doc)
