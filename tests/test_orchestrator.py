"""
The Orchestrator in-process on loopback: its HTTP API (tokens, enrollment,
spaces, projects, members), its project authority and project node as an
Ockam 0.83 client reaches them (secure channels pinned to their identities,
the API framing of shared/spec/ockam-project-api.md), and what survives a
restart.
"""

from __future__ import annotations

import json
import os
import tempfile

import treq
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.web.client import HTTPConnectionPool
from twisted.trial.unittest import TestCase

from ockamtw import Address, Node, Route, encode_string, decode_string
from ockamtw.orchestrator.service import ENROLL_CONTEXT, Orchestrator, Settings
from ockamtw.project import codec
from ockamtw.project.codec import CreateToken, Method, OneTimeCode
from ockamtw.project.credentials import Credential, verify
from ockamtw.project.projectinfo import ProjectInfo
from ockamtw.project.service import ApiError, call
from ockamtw.secure.identity import LocalIdentity, import_identity
from ockamtw.status import CLOSED, DOWN, UP

from tests.helpers import async_test, deadline, wait_until
from tests.portal_harness import Collector, EchoTarget, TargetFactory


class OrchestratorTestCase(TestCase):
    timeout = 60

    def setUp(self):
        self.data = tempfile.mkdtemp()
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = treq.client.HTTPClient(treq.api.Agent(reactor, pool=self.pool))
        self.addCleanup(self.pool.closeCachedConnections)

    async def start(self, **kw) -> Orchestrator:
        kw.setdefault("http", "tcp:0:interface=127.0.0.1")
        kw.setdefault("project_ports", None)
        kw.setdefault("refresh", 0.1)
        settings = Settings(self.data, **kw)
        o = Orchestrator(reactor, settings)
        o.startService()
        self.addCleanup(o.stopService)
        await deadline(o.ready, 10, "the orchestrator started")
        self.o = o
        with open(os.path.join(self.data, "admin.token")) as f:
            self.token = f.read().strip()
        return o

    async def api(self, method: str, path: str, body=None, token=True, expect=200):
        headers = {b"authorization": [f"Bearer {self.token}".encode()]} if token else {}
        data = json.dumps(body).encode() if body is not None else None
        response = await self.http.request(method, self.o.url + path, data=data, headers=headers)
        result = json.loads(await response.content())
        self.assertEqual(response.code, expect, result)
        return result

    async def enroll(self, identity: LocalIdentity):
        challenge = (await self.api("GET", "/v0/enroll/challenge"))["challenge"]
        signature = identity.sign(ENROLL_CONTEXT + bytes.fromhex(challenge))
        return await self.api(
            "POST", "/v0/enroll", {"identity": identity.export().hex(), "challenge": challenge, "signature": signature.hex()}
        )

    def node(self, name: str, identity=None) -> Node:
        node = Node(reactor, name=name, identity=identity)
        node.startService()
        self.addCleanup(node.stopService)
        return node

    async def channel(self, node: Node, route: str, identifier: str) -> Address:
        return await deadline(node.create_secure_channel(route, authorized=[identifier], timeout=5), 6, f"channel {route}")


class ApiTests(OrchestratorTestCase):
    @async_test
    async def test_tokens_required(self):
        await self.start()
        await self.api("GET", "/v0/health", token=False)
        r = await self.api("GET", "/v0/projects", token=False, expect=401)
        self.assertEqual(r["error"]["code"], "unauthorized")
        self.token = "otw_" + "x" * 43
        await self.api("GET", "/v0/projects", expect=401)

    @async_test
    async def test_enroll_is_idempotent_and_proved(self):
        await self.start()
        admin = LocalIdentity.create()
        first = await self.enroll(admin)
        self.assertEqual(first["project"]["name"], "default")
        second = await self.enroll(admin)
        self.assertEqual(second["project"]["id"], first["project"]["id"])
        self.assertEqual(second["space"]["id"], first["space"]["id"])
        # A signature that does not prove the identity.
        challenge = (await self.api("GET", "/v0/enroll/challenge"))["challenge"]
        other = LocalIdentity.create()
        r = await self.api(
            "POST", "/v0/enroll",
            {"identity": admin.export().hex(), "challenge": challenge, "signature": other.sign(b"x").hex()},
            expect=403,
        )
        self.assertEqual(r["error"]["code"], "forbidden")
        # The token is bound to the first identity.
        r = await self.enroll_expect(other, 403)

    async def enroll_expect(self, identity, status):
        challenge = (await self.api("GET", "/v0/enroll/challenge"))["challenge"]
        signature = identity.sign(ENROLL_CONTEXT + bytes.fromhex(challenge))
        return await self.api(
            "POST", "/v0/enroll",
            {"identity": identity.export().hex(), "challenge": challenge, "signature": signature.hex()},
            expect=status,
        )

    @async_test
    async def test_errors_are_json(self):
        await self.start()
        r = await self.api("GET", "/v0/projects/nothing", expect=404)
        self.assertEqual(r["error"]["code"], "not_found")
        r = await self.api("POST", "/v0/spaces", {"name": "bad name!"}, expect=400)
        self.assertEqual(r["error"]["code"], "bad_request")
        r = await self.api("DELETE", "/v0/health", expect=405)
        await self.api("POST", "/v0/spaces", {"name": "s1"})
        r = await self.api("POST", "/v0/spaces", {"name": "s1"}, expect=409)
        self.assertEqual(r["error"]["code"], "conflict")


class ProjectTests(OrchestratorTestCase):
    async def enrolled(self):
        await self.start()
        self.admin = LocalIdentity.create()
        enrolled = await self.enroll(self.admin)
        info = await self.api("GET", f"/v0/projects/{enrolled['project']['id']}/information")
        self.info = ProjectInfo.from_json(json.dumps(info, indent=2))
        return info

    @async_test
    async def test_information_and_authority(self):
        """
        project.json has Ockam's shape; the authority issues the admin a
        credential (pre-trusted enroller) that verifies against the
        authority identity in project.json.
        """
        info = await self.enrolled()
        self.assertEqual(list(info), ["id", "name", "identity", "access_route", "authority_access_route", "authority_identity"])
        authority = import_identity(bytes.fromhex(info["authority_identity"]))
        node = self.node("admin", identity=self.admin)
        enc = await self.channel(node, info["authority_access_route"], authority.identifier)
        resp = await call(node, Route([enc, codec.CREDENTIAL_ISSUER]), Method.POST, "/")
        credential = resp.decode_body(Credential.decode)
        data = verify(credential, [authority], self.admin.identifier, int(reactor.seconds()))
        self.assertEqual(data.attribute_text("project_id"), info["id"])
        self.assertEqual(data.attribute_text("ockam-role"), "enroller")

    @async_test
    async def test_stranger_refused_with_403(self):
        info = await self.enrolled()
        authority = import_identity(bytes.fromhex(info["authority_access_route"] and info["authority_identity"]))
        stranger = self.node("stranger")
        enc = await self.channel(stranger, info["authority_access_route"], authority.identifier)
        with self.assertRaises(ApiError) as e:
            await call(stranger, Route([enc, codec.CREDENTIAL_ISSUER]), Method.POST, "/", timeout=5)
        self.assertEqual(int(e.exception.status), 403)

    @async_test
    async def test_enrollment_code_once(self):
        """
        The admin makes a one-time code; a new identity redeems it and gets
        a credential; the code does not work a second time.
        """
        info = await self.enrolled()
        authority = import_identity(bytes.fromhex(info["authority_identity"]))
        admin = self.node("admin", identity=self.admin)
        enc = await self.channel(admin, info["authority_access_route"], authority.identifier)
        resp = await call(admin, Route([enc, codec.ENROLLMENT_TOKEN_ISSUER]), Method.POST, "/",
                          CreateToken({"role": "member"}))
        code = resp.decode_body(OneTimeCode.decode)
        member = self.node("member")
        enc2 = await self.channel(member, info["authority_access_route"], authority.identifier)
        await call(member, Route([enc2, codec.ENROLLMENT_TOKEN_ACCEPTOR]), Method.POST, "/", code)
        resp = await call(member, Route([enc2, codec.CREDENTIAL_ISSUER]), Method.POST, "/")
        data = verify(resp.decode_body(Credential.decode), [authority], member.identity.identifier, int(reactor.seconds()))
        self.assertEqual(data.attribute_text("role"), "member")
        other = self.node("other")
        enc3 = await self.channel(other, info["authority_access_route"], authority.identifier)
        with self.assertRaises(ApiError) as e:
            await call(other, Route([enc3, codec.ENROLLMENT_TOKEN_ACCEPTOR]), Method.POST, "/", code, timeout=5)
        self.assertEqual(e.exception.message, "unknown token")

    @async_test
    async def test_project_node_admits_members_only(self):
        """
        Through the project node: without a credential, echo and relay
        registration are refused; after presenting one, both work, and the
        relay is owned (another member cannot take it).
        """
        info = await self.enrolled()
        authority = import_identity(bytes.fromhex(info["authority_identity"]))
        n3 = self.node("n3", identity=self.admin)
        penc = await self.channel(n3, info["access_route"], info["identity"])
        # Not presented yet: refused.
        with self.assertRaises(Exception):
            await deadline(n3.request(Route([penc, "echo"]), b"x", timeout=0.5), 2, "refused echo")
        aenc = await self.channel(n3, info["authority_access_route"], authority.identifier)
        credential = (await call(n3, Route([aenc, codec.CREDENTIAL_ISSUER]), Method.POST, "/")).decode_body(Credential.decode)
        await call(n3, Route([penc, codec.CREDENTIALS]), Method.POST, codec.PRESENT_PATH, credential)
        reply = await deadline(n3.request(Route([penc, "echo"]), b"hello", timeout=5), 6, "echo")
        self.assertEqual(reply.payload, b"hello")
        relay = await deadline(
            n3.create_relay(Route([penc]), name="n3", service=codec.STATIC_FORWARDING_SERVICE), 6, "relay"
        )
        self.assertEqual(relay.remote_address, Address.local("forward_to_n3"))
        relays = await self.api("GET", f"/v0/projects/{info['id']}/relays")
        self.assertEqual([(r["name"], r["owner"]) for r in relays], [("n3", self.admin.identifier)])


class ProjectTestCase(OrchestratorTestCase):
    """
    An orchestrator with the admin enrolled (its project "default"), and
    member nodes embedded in the test.
    """

    async def project(self):
        await self.start()
        self.admin = LocalIdentity.create()
        enrolled = await self.enroll(self.admin)
        info = await self.api("GET", f"/v0/projects/{enrolled['project']['id']}/information")
        return ProjectInfo.from_json(json.dumps(info, indent=2))

    def member_node(self, name, info, identity=None):
        node = self.node(name, identity=identity or self.admin)
        node.add_project(info)
        return node



class SeedTests(ProjectTestCase):
    """
    The seed's Orchestrator section with embedded nodes: relay at
    /project/default, a message through it, a portal through it; a
    non-member is refused at once with a sentence.
    """

    @async_test
    async def test_relay_message_and_portal(self):
        info = await self.project()
        n3 = self.member_node("n3", info)
        n1 = self.member_node("n1", info)
        relay = await deadline(
            n3.create_relay("/project/default", name="n3", service=codec.STATIC_FORWARDING_SERVICE), 10, "the relay"
        )
        self.assertEqual(relay.remote_address, Address.local("forward_to_n3"))
        reply = await deadline(
            n1.request("/project/default/service/forward_to_n3/service/uppercase", encode_string("hello"), timeout=10),
            11, "HELLO",
        )
        self.assertEqual(decode_string(reply.payload), "HELLO")

        targets = TargetFactory(EchoTarget)
        from twisted.internet.endpoints import serverFromString

        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(targets)
        self.addCleanup(port.stopListening)
        await n3.create_outlet("outlet", f"127.0.0.1:{port.getHost().port}")
        inlet = await n1.create_inlet("127.0.0.1:0", "/project/default/service/forward_to_n3/service/outlet")
        client = await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", int(inlet.socket_address.rsplit(":", 1)[1])), Collector()
        )
        self.addCleanup(client.transport.abortConnection)
        client.transport.write(b"through the project")
        await client.received(19, 10, "the echo through the project")
        self.assertEqual(bytes(client.data), b"through the project")

    @async_test
    async def test_non_member_refused_at_once(self):
        info = await self.project()
        x = self.member_node("x", info, identity=LocalIdentity.create())
        started = reactor.seconds()
        with self.assertRaises(Exception) as e:
            await deadline(x.create_relay("/project/default", name="x1", service=codec.STATIC_FORWARDING_SERVICE), 10, "refusal")
        self.assertIn("not a member of project default", str(e.exception))
        self.assertLess(reactor.seconds() - started, 5)
        with self.assertRaises(Exception) as e:
            await deadline(x.request("/project/default/service/echo", b"x", timeout=10), 11, "refusal")
        self.assertIn("not a member of project default", str(e.exception))
        relays = await self.api("GET", f"/v0/projects/{info.id}/relays")
        self.assertEqual(relays, [])


class RestartTests(ProjectTestCase):
    """
    Restart the Orchestrator: projects, identities, ports, members and relay
    owners are unchanged, project.json is byte-identical, and live relays
    and inlets come back on their own.
    """

    @async_test
    async def test_restart(self):
        info = await self.project()
        before_json = info.to_json()
        n3 = self.member_node("n3", info)
        n1 = self.member_node("n1", info)
        relay = await deadline(
            n3.create_relay("/project/default", name="n3", service=codec.STATIC_FORWARDING_SERVICE, refresh=0.5,
                            timeout=1.0),
            10, "the relay",
        )
        targets = TargetFactory(EchoTarget)
        from twisted.internet.endpoints import serverFromString

        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(targets)
        self.addCleanup(port.stopListening)
        await n3.create_outlet("outlet", f"127.0.0.1:{port.getHost().port}")
        inlet = await n1.create_inlet("127.0.0.1:0", "/project/default/service/forward_to_n3/service/outlet")
        inlet_port = int(inlet.socket_address.rsplit(":", 1)[1])

        async def echo(token: bytes):
            client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", inlet_port), Collector())
            self.addCleanup(client.transport.abortConnection)
            client.transport.write(token)
            await client.received(len(token), 10, f"echo of {token!r}")
            self.assertEqual(bytes(client.data), token)
            client.transport.loseConnection()

        await echo(b"before")

        # Stop the orchestrator and start a new one on the same data.
        await self.o.stopService()
        await wait_until(lambda: relay.status == DOWN, 10, "the relay down")
        await self.start()
        after = await self.api("GET", f"/v0/projects/{info.id}/information")
        self.assertEqual(ProjectInfo.from_json(json.dumps(after, indent=2)).to_json(), before_json)
        relays = await self.api("GET", f"/v0/projects/{info.id}/relays")
        self.assertEqual([(r["name"], r["owner"]) for r in relays], [("n3", self.admin.identifier)])
        try:
            await wait_until(lambda: relay.status == UP, 15, "the relay back")
        except AssertionError:
            self.fail(f"the relay did not come back: {relay.last_error}")
        reply = await deadline(
            n1.request("/project/default/service/forward_to_n3/service/uppercase", encode_string("again"), timeout=10),
            11, "AGAIN",
        )
        self.assertEqual(decode_string(reply.payload), "AGAIN")
        await echo(b"after the restart")


class _Pipe(Protocol):
    """
    One side of a L{_FreezingProxy} connection: passes bytes to its peer
    until the proxy is frozen, then drops them (the connection stays open:
    a half-dead path, as a NAT that forgot the mapping).
    """

    def __init__(self, proxy, peer=None) -> None:
        self.proxy = proxy
        self.peer = peer
        self.frozen = False

    def connectionMade(self) -> None:
        self.proxy.pipes.append(self)
        if self.peer is None:  # the accepted side: dial the target
            self.transport.pauseProducing()
            ep = TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxy.target)

            def connected(other):
                self.peer = other
                self.transport.resumeProducing()

            connectProtocol(ep, _Pipe(self.proxy, self)).addCallbacks(connected, lambda f: self.transport.loseConnection())

    def dataReceived(self, data: bytes) -> None:
        if not self.frozen and self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)

    def connectionLost(self, reason) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.loseConnection()


class _FreezingProxy(Factory):
    def __init__(self, target: int) -> None:
        self.target = target
        self.pipes = []

    def buildProtocol(self, addr):
        return _Pipe(self)

    def freeze(self) -> int:
        """
        Silence every connection open now (new ones pass); returns how many.
        """
        for pipe in self.pipes:
            pipe.frozen = True
        return len(self.pipes)


class HealingTests(ProjectTestCase):
    @async_test
    async def test_relay_heals_after_silence(self):
        """
        The path to the project node goes silent without closing (a proxy
        that stops passing bytes): the Medic, pinging every 100 ms, closes
        the channel after three unanswered pings; the relay then resolves
        /project/default again (a new connection, channel and presented
        credential) and registers the same name; messages through it work
        again.
        """
        info = await self.project()
        host, port = info.access_route.split("/")[2], int(info.access_route.split("/")[4])
        self.assertEqual(host, "127.0.0.1")
        proxy = _FreezingProxy(port)
        listening = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(proxy)
        self.addCleanup(listening.stopListening)
        self.addCleanup(lambda: [p.transport.abortConnection() for p in proxy.pipes if p.transport])
        proxied = info._replace(access_route=f"/dnsaddr/127.0.0.1/tcp/{listening.getHost().port}/service/api")
        n3 = self.member_node("n3", proxied)
        n3.membership.medic.interval = 0.1
        n1 = self.member_node("n1", info)
        relay = await deadline(
            n3.create_relay("/project/default", name="n3", service=codec.STATIC_FORWARDING_SERVICE, refresh=0.3,
                            timeout=0.5),
            10, "the relay",
        )

        async def hello(text):
            reply = await deadline(
                n1.request("/project/default/service/forward_to_n3/service/uppercase", encode_string(text), timeout=5),
                6, text,
            )
            return decode_string(reply.payload)

        self.assertEqual(await hello("before"), "BEFORE")
        first_channel = n3.membership.project_channel("default")
        self.assertEqual(proxy.freeze(), 2)
        await wait_until(lambda: first_channel.status == CLOSED, 5, "the silent channel closed by the Medic")
        self.assertEqual(n3.membership.medic.closed, 1)
        await wait_until(lambda: relay.status == UP and relay.route[0] != first_channel.encryptor, 10,
                         "the relay registered again through a new channel")
        self.assertEqual(relay.remote_address, Address.local("forward_to_n3"))
        self.assertEqual(await hello("after"), "AFTER")
        relays = await self.api("GET", f"/v0/projects/{info.id}/relays")
        self.assertEqual([(r["name"], r["owner"]) for r in relays], [("n3", self.admin.identifier)])
