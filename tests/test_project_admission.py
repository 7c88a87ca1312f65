"""
Who gets through a project node (issue #13, "a non-member ... raw
attempts"): a node that skips the command line and talks to the project
node over its own secure channel (pinned to the project identity, as
anyone may open one) with no credential, another project's credential, an
expired one, one issued to another identity, or the credential of a
member since revoked, registers no relay and moves no byte: no message
reaches a member's node through its relay, no portal stream reaches its
outlet's target.  The same attempts with a valid credential go through
(so each test can fail).  And a one-time code redeemed at once by many
identities makes one member.
"""

from __future__ import annotations

import json

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString

from ockamtw import Address, Route
from ockamtw.access import ANYONE
from ockamtw.node import Worker
from ockamtw.project import codec
from ockamtw.project.codec import CreateToken, Method, OneTimeCode
from ockamtw.project.credentials import Credential, issue
from ockamtw.project.projectinfo import ProjectInfo
from ockamtw.project.service import ApiError, call
from ockamtw.secure.identity import LocalIdentity
from ockamtw.status import CLOSED

from .helpers import async_test, deadline, wait_until
from .orchestrator_harness import ProjectTestCase
from .portal_harness import Collector, EchoTarget, TargetFactory


class _Count(Worker):
    """
    Counts what reaches it (anyone may send).
    """

    access = ANYONE

    def __init__(self) -> None:
        self.received = []

    def receive(self, message) -> None:
        self.received.append(message.payload)


class AdmissionTestCase(ProjectTestCase):
    timeout = 60

    async def setup(self):
        """
        The project, n3 (the admin) with a relay C{n3} at it, a counting
        worker and an outlet to an echo server; a second project C{p2}.
        """
        self.info = info = await self.project()
        n3 = self.n3 = self.member_node("n3", info)
        self.relay = await deadline(
            n3.create_relay("/project/default", name="n3", service=codec.STATIC_FORWARDING_SERVICE), 10, "n3's relay"
        )
        self.count = _Count()
        n3.start_worker("count", self.count)
        self.targets = TargetFactory(EchoTarget)
        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(self.targets)
        self.addCleanup(port.stopListening)
        await n3.create_outlet("outlet", f"127.0.0.1:{port.getHost().port}")
        self.runtime = self.o.runtimes[info.id]
        spaces = await self.api("GET", "/v0/spaces")
        p2 = await self.api("POST", f"/v0/spaces/{spaces[0]['id']}/projects", {"name": "p2"})
        self.info2 = ProjectInfo.from_json(json.dumps(await self.api("GET", f"/v0/projects/{p2['id']}/information")))

    def raw_node(self, name: str, identity=None):
        """
        A node that knows no project (nothing it does goes through the
        resolver of C{/project/NAME}).
        """
        return self.node(name, identity=identity or LocalIdentity.create())

    async def project_channel(self, node, info=None) -> Address:
        info = info or self.info
        return await self.channel(node, info.access_route, info.identity)

    async def fetch_credential(self, node, info=None) -> Credential:
        """
        C{node}'s credential, from the authority of C{info}.
        """
        info = info or self.info
        enc = await self.channel(node, info.authority_access_route, info.authority().identifier)
        resp = await call(node, Route([enc, codec.CREDENTIAL_ISSUER]), Method.POST, "/", timeout=5)
        return resp.decode_body(Credential.decode)

    async def present(self, node, enc, credential, refused: bool) -> None:
        route = Route([enc, codec.CREDENTIALS])
        if not refused:
            await call(node, route, Method.POST, codec.PRESENT_PATH, credential, timeout=5)
            return
        with self.assertRaises(ApiError) as e:
            await call(node, route, Method.POST, codec.PRESENT_PATH, credential, timeout=5)
        self.assertIn(int(e.exception.status), (400, 403))

    async def attempts(self, node, enc, allowed: bool) -> None:
        """
        Through channel C{enc} to the project node: register relays (a new
        name, and n3's), send to n3's counting worker through n3's relay,
        and open a portal stream to n3's outlet.  With C{allowed}, the new
        relay registers and the message and the stream arrive; without,
        nothing does.
        """
        name = f"x{id(node) % 100000}"
        relays_before = await self.api("GET", f"/v0/projects/{self.info.id}/relays")
        payload = f"from {node.name}".encode()
        counted = len(self.count.received)
        accepted = len(self.targets.protocols)
        project = self.runtime.project

        # A relay of its own.
        d = node.create_relay(Route([enc]), name=name, service=codec.STATIC_FORWARDING_SERVICE, timeout=1.0)
        if allowed:
            relay = await deadline(d, 5, "the member's relay")
            self.assertEqual(relay.remote_address, Address.local(f"forward_to_{name}"))
            node.delete_relay(name)
        else:
            with self.assertRaises(Exception):
                await deadline(d, 5, "the refused relay")
        # n3's name (never, for anyone but n3).
        with self.assertRaises(Exception):
            await deadline(
                node.create_relay(Route([enc]), name="n3", service=codec.STATIC_FORWARDING_SERVICE, timeout=1.0),
                5, "n3's name refused",
            )
        # A message to n3 through its relay, and a portal stream to its outlet.
        node.send(Route([enc, codec.forwarder_address("n3"), "count"]), payload)
        inlet = await node.create_inlet("127.0.0.1:0", Route([enc, codec.forwarder_address("n3"), "outlet"]),
                                        ping_timeout=1.0)
        self.addCleanup(inlet.close)
        client = await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", int(inlet.socket_address.rsplit(":", 1)[1])), Collector()
        )
        self.addCleanup(client.transport.abortConnection)
        client.transport.write(b"stream bytes")
        if allowed:
            await wait_until(lambda: payload in self.count.received, 5, "the member's message at n3")
            await client.received(12, 5, "the member's stream echoed")
        else:
            await client.when_lost(5, "the refused stream closed")
            # n3's own round trip through the same relay: what the
            # attempt sent would have arrived before it.
            reply = await deadline(
                self.n3.request("/project/default/service/forward_to_n3/service/echo", b"probe", timeout=5), 6,
                "a round trip through n3's relay",
            )
            self.assertEqual(reply.payload, b"probe")
            self.assertEqual(len(self.count.received), counted)
            self.assertEqual(len(self.targets.protocols), accepted)
            self.assertIsNone(project.worker_at(codec.forwarder_address(name)))
        relays = await self.api("GET", f"/v0/projects/{self.info.id}/relays")
        n3_owner = [(r["name"], r["owner"]) for r in relays if r["name"] == "n3"]
        self.assertEqual(n3_owner, [("n3", self.admin.identifier)])
        if not allowed:
            self.assertEqual([(r["name"], r["owner"]) for r in relays], [(r["name"], r["owner"]) for r in relays_before])


class RawAttemptTests(AdmissionTestCase):
    @async_test
    async def test_member_gets_through(self):
        """
        The control: a member's valid credential, presented on its own
        channel, lets the same attempts through (its own relay; n3's name
        stays n3's).
        """
        await self.setup()
        member = await self.new_member(self.info)
        await wait_until(lambda: member.identifier in self.runtime.members, 5, "the member known to the project")
        x = self.raw_node("member", member)
        credential = await self.fetch_credential(x)
        enc = await self.project_channel(x)
        await self.present(x, enc, credential, refused=False)
        await self.attempts(x, enc, allowed=True)

    @async_test
    async def test_no_credential(self):
        await self.setup()
        x = self.raw_node("stranger")
        enc = await self.project_channel(x)
        await self.attempts(x, enc, allowed=False)

    @async_test
    async def test_another_projects_credential(self):
        """
        A member of project p2 presents its (valid) p2 credential to the
        project C{default}.
        """
        await self.setup()
        other = LocalIdentity.create()
        await self.api("POST", f"/v0/projects/{self.info2.id}/members", {"identifier": other.identifier})
        runtime2 = self.o.runtimes[self.info2.id]
        await wait_until(lambda: other.identifier in runtime2.members, 5, "the member known to p2")
        x = self.raw_node("p2-member", other)
        credential = await self.fetch_credential(x, self.info2)
        enc = await self.project_channel(x)
        await self.present(x, enc, credential, refused=True)
        await self.attempts(x, enc, allowed=False)

    @async_test
    async def test_expired_credential(self):
        """
        A member presents a credential of this project's authority that
        has expired.
        """
        await self.setup()
        member = await self.new_member(self.info)
        now = int(reactor.seconds())
        credential = issue(self.runtime.authority_identity, member.identifier, {}, self.info.id, now - 120, ttl=60)
        x = self.raw_node("expired", member)
        enc = await self.project_channel(x)
        await self.present(x, enc, credential, refused=True)
        await self.attempts(x, enc, allowed=False)

    @async_test
    async def test_credential_of_another_identity(self):
        """
        A stranger presents a member's valid credential (its subject is
        the member, not the channel's identity).
        """
        await self.setup()
        member = await self.new_member(self.info)
        await wait_until(lambda: member.identifier in self.runtime.members, 5, "the member known to the project")
        credential = await self.fetch_credential(self.raw_node("member", member))
        x = self.raw_node("thief")
        enc = await self.project_channel(x)
        await self.present(x, enc, credential, refused=True)
        await self.attempts(x, enc, allowed=False)

    @async_test
    async def test_revoked_member(self):
        """
        A member gets its credential and is admitted; it is revoked: its
        channel is closed within a tick, at the project and (the TCP
        connection under it dropped: no message says a channel closed) at
        the member's node; on a new channel its (unexpired) credential is
        refused and nothing gets through.
        """
        await self.setup()
        member = await self.new_member(self.info)
        await wait_until(lambda: member.identifier in self.runtime.members, 5, "the member known to the project")
        x = self.raw_node("revoked", member)
        credential = await self.fetch_credential(x)
        enc = await self.project_channel(x)
        await self.present(x, enc, credential, refused=False)
        (end,) = [e for e, (who, _, _) in self.runtime.admitted.items() if who == member.identifier]
        mine = x.worker_at(enc).end
        await self.api("DELETE", f"/v0/projects/{self.info.id}/members/{member.identifier}")
        await wait_until(lambda: end.status == CLOSED, 1, "the revoked member's channel closed by the project")
        self.assertNotIn(end, self.runtime.admitted)
        await wait_until(lambda: mine.status == CLOSED, 1, "the revoked member's channel closed at its node")
        enc = await self.project_channel(x)
        await self.present(x, enc, credential, refused=True)
        await self.attempts(x, enc, allowed=False)


class OneTimeCodeTests(AdmissionTestCase):
    async def code(self, usage_count=None) -> OneTimeCode:
        admin = self.node("admin", identity=self.admin)
        enc = await self.channel(admin, self.info.authority_access_route, self.info.authority().identifier)
        resp = await call(admin, Route([enc, codec.ENROLLMENT_TOKEN_ISSUER]), Method.POST, "/",
                          CreateToken({"role": "edge"}, None, usage_count))
        return resp.decode_body(OneTimeCode.decode)

    async def redeem_at_once(self, code: OneTimeCode, n: int):
        """
        C{n} new identities, each with a channel to the authority, redeem
        C{code} at the same moment; the identities that succeeded, and the
        errors of the others.
        """
        nodes = [self.raw_node(f"r{i}") for i in range(n)]
        route, authority = self.info.authority_access_route, self.info.authority().identifier
        encs = [await self.channel(node, route, authority) for node in nodes]
        results = await DeferredList(
            [Deferred.fromCoroutine(call(node, Route([enc, codec.ENROLLMENT_TOKEN_ACCEPTOR]), Method.POST, "/", code,
                                         timeout=10))
             for node, enc in zip(nodes, encs)],
            consumeErrors=True,
        )
        won = [node.identity.identifier for node, (ok, _) in zip(nodes, results) if ok]
        errors = [r.value for ok, r in results if not ok]
        return won, errors

    @async_test
    async def test_redeemed_at_once_succeeds_once(self):
        """
        Eight identities redeem one code at once: one becomes a member (with
        the code's attributes), the seven others are told "unknown token".
        """
        self.info = await self.project()
        code = await self.code()
        won, errors = await self.redeem_at_once(code, 8)
        self.assertEqual(len(won), 1, errors)
        self.assertEqual([(type(e), e.message) for e in errors], [(ApiError, "unknown token")] * 7)
        members = await self.api("GET", f"/v0/projects/{self.info.id}/members")
        self.assertEqual([(m["identifier"], m["attributes"].get("role")) for m in members], [(won[0], "edge")])

    @async_test
    async def test_usage_count_at_once(self):
        """
        A code for three uses, redeemed by eight at once: three members.
        """
        self.info = await self.project()
        code = await self.code(usage_count=3)
        won, errors = await self.redeem_at_once(code, 8)
        self.assertEqual(len(won), 3, errors)
        self.assertEqual(len(errors), 5)
        members = await self.api("GET", f"/v0/projects/{self.info.id}/members")
        self.assertEqual(sorted(m["identifier"] for m in members), sorted(won))
