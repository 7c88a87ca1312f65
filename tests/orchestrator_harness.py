"""
The Orchestrator in-process on loopback, for tests: an Orchestrator on
free ports in a temporary directory, its HTTP API through treq, enrolled
administrators, member nodes embedded in the test, and a proxy that can
go silent (L{FreezingProxy}).
"""

from __future__ import annotations

import json
import os
import tempfile

import treq
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from ockamtw import Address, Node
from ockamtw.orchestrator.service import ENROLL_CONTEXT, Orchestrator, Settings
from ockamtw.project.projectinfo import ProjectInfo
from ockamtw.secure.identity import LocalIdentity

from .helpers import deadline
from .portal_harness import Collector, EchoTarget, TargetFactory


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

    async def new_member(self, info, attributes=None) -> LocalIdentity:
        """
        A new identity, added as a member of project C{info} through the
        HTTP API.
        """
        identity = LocalIdentity.create()
        await self.api("POST", f"/v0/projects/{info.id}/members",
                       {"identifier": identity.identifier, "attributes": attributes or {}})
        return identity

    async def echo_target(self) -> int:
        """
        A TCP echo server on a free port (stopped at cleanup); its port.
        """
        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(TargetFactory(EchoTarget))
        self.addCleanup(port.stopListening)
        return port.getHost().port

    async def echo_through(self, port: int, token: bytes, seconds: float = 10) -> None:
        """
        C{token} goes through the inlet at C{port} to an echo server and
        comes back, on one new connection.
        """
        client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Collector())
        self.addCleanup(client.transport.abortConnection)
        client.transport.write(token)
        try:
            await client.received(len(token), seconds, f"echo of {token!r}")
            self.assertEqual(bytes(client.data), token)
        finally:
            client.transport.abortConnection()

    async def echo_until(self, port: int, token: bytes, seconds: float) -> int:
        """
        New connections to the inlet at C{port}, one after the other (as
        a user retries), until one echoes C{token}, within C{seconds};
        returns how many failed first.
        """
        end = reactor.seconds() + seconds
        failed = 0
        while True:
            left = end - reactor.seconds()
            if left <= 0:
                self.fail(f"no echo of {token!r} through the inlet within {seconds:g} s ({failed} tries failed)")
            try:
                await self.echo_through(port, token, min(left, 3.0))
                return failed
            except (AssertionError, ConnectionError, OSError):
                failed += 1


class Pipe(Protocol):
    """
    One side of a L{FreezingProxy} connection: passes bytes to its peer
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

            connectProtocol(ep, Pipe(self.proxy, self)).addCallbacks(connected, lambda f: self.transport.loseConnection())

    def dataReceived(self, data: bytes) -> None:
        if not self.frozen and self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)

    def connectionLost(self, reason) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.loseConnection()


class FreezingProxy(Factory):
    def __init__(self, target: int) -> None:
        self.target = target
        self.pipes = []

    def buildProtocol(self, addr):
        return Pipe(self)

    def freeze(self) -> int:
        """
        Silence every connection open now (new ones pass); returns how many.
        """
        for pipe in self.pipes:
            pipe.frozen = True
        return len(self.pipes)
