"""
C{ockam:} endpoint strings (issue #16): real Twisted clients and servers
whose connections are portal streams of a node, through a relay, on
loopback sockets (port 0): treq to a twisted.web site, flow control both
ways (a registered producer paused while the far end does not read, with
StringTransport's producerState), half-close, refusals with their reasons,
and the reasons a connection is lost.
"""

from __future__ import annotations

import hashlib
import os
import tempfile

from twisted.internet import error, reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IPushProducer,
    IStreamClientEndpointStringParserWithReactor,
    IStreamServerEndpointStringParser,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import resource, server, static
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer
from zope.interface.verify import verifyObject

from ockamtw import Node, OckamAddress, OckamClientEndpoint, OckamServerEndpoint, embedded_node, register_node
from ockamtw.control import state as st
from ockamtw.endpoint_parsers import OckamClientParser, OckamServerParser, stop_embedded_nodes, unregister_node
from ockamtw.flow import STREAM_WINDOW
from ockamtw.portal.pipe import StreamTransport
from ockamtw.status import UP

from .helpers import async_test, deadline, held_port, wait_until
from .portal_harness import Collector, StreamWriter, TargetFactory

#: Seconds any one step may take.
STEP = 15


class ParserTests(SynchronousTestCase):
    def test_plugins(self):
        """
        The dropin gives Twisted both parsers (prefix C{ockam}).
        """
        clients = [p for p in getPlugins(IStreamClientEndpointStringParserWithReactor) if p.prefix == "ockam"]
        servers = [p for p in getPlugins(IStreamServerEndpointStringParser) if p.prefix == "ockam"]
        self.assertEqual([type(p) for p in clients], [OckamClientParser])
        self.assertEqual([type(p) for p in servers], [OckamServerParser])

    def test_client_strings(self):
        e = clientFromString(reactor, "ockam:route=/node/n2/service/forward_to_n3/service/outlet")
        self.assertIsInstance(e, OckamClientEndpoint)
        self.assertEqual(e.route, "/node/n2/service/forward_to_n3/service/outlet")
        e = clientFromString(reactor, "ockam:/node/n2/service/outlet:timeout=2.5:authorized=Pab,Pcd")
        self.assertEqual((e.route, e.timeout, e.authorized), ("/node/n2/service/outlet", 2.5, ["Pab", "Pcd"]))

    def test_server_strings(self):
        e = serverFromString(reactor, "ockam:relay=n3:at=/ip4/127.0.0.1/tcp/7000")
        self.assertIsInstance(e, OckamServerEndpoint)
        self.assertEqual((e.relay, e.at, e.service), ("n3", "/ip4/127.0.0.1/tcp/7000", "outlet"))
        e = serverFromString(reactor, "ockam:service=web")
        self.assertEqual((e.relay, e.service), (None, "web"))

    def test_bad_strings(self):
        """
        A mistake is a ValueError that says what is wrong in one line.
        """
        home = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, home)
        self.patch(os, "environ", dict(os.environ, OCKAM_HOME=home))
        for text, words in [
            ("ockam:", "route= is empty"),
            ("ockam:timeout=3", "a client needs route="),
            ("ockam:route=/node/n2:bogus=1", "unknown parameter 'bogus'"),
            ("ockam:route=/node/n2:timeout=soon", "timeout=soon: not a number of seconds"),
            ("ockam:route=/node/n2:timeout=0", "more than 0 seconds"),
            ("ockam:route=/node/n2:identity=alice", "no identity named 'alice'"),
            ("ockam:route=/node/n2:identity=alice:node=n1", "cannot go together"),
            ("ockam:route=/nonsense/x", "route=/nonsense/x"),
        ]:
            with self.assertRaises(ValueError, msg=text) as caught:
                clientFromString(reactor, text)
            self.assertIn(words, str(caught.exception), text)
            self.assertNotIn("\n", str(caught.exception))
        for text, words in [
            ("ockam:relay=n3", "relay=NAME and at=ROUTE"),
            ("ockam:at=/node/n2", "relay=NAME and at=ROUTE"),
            ("ockam:relay=a/b:at=/node/n2", "not a relay name"),
            ("ockam:service=a/b", "not a service address"),
            ("ockam:route=/node/n2", "unknown parameter 'route'"),
        ]:
            with self.assertRaises(ValueError, msg=text) as caught:
                serverFromString(reactor, text)
            self.assertIn(words, str(caught.exception), text)


@implementer(IAgentEndpointFactory)
class _OneEndpoint:
    """
    An agent's endpoint factory that connects every request with one
    endpoint.
    """

    def __init__(self, endpoint) -> None:
        self.endpoint = endpoint

    def endpointForURI(self, uri):
        return self.endpoint


@implementer(IHalfCloseableProtocol)
class HalfCloser(Collector):
    """
    Collects; at end of file answers what it read, reversed, then closes.
    """

    def __init__(self) -> None:
        Collector.__init__(self)
        self.events = []

    def readConnectionLost(self) -> None:
        self.events.append("read closed")
        self.transport.write(bytes(reversed(self.data)))
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        self.events.append("write closed")


@implementer(IHalfCloseableProtocol)
class HalfClient(Collector):
    def __init__(self) -> None:
        Collector.__init__(self)
        self.events = []

    def readConnectionLost(self) -> None:
        self.events.append("read closed")

    def writeConnectionLost(self) -> None:
        self.events.append("write closed")


class NotReading(Collector):
    """
    A target that reads nothing until told (its transport paused).
    """

    def connectionMade(self) -> None:
        self.transport.pauseProducing()
        Collector.connectionMade(self)


class EndpointTestCase(TestCase):
    """
    Three nodes on loopback: C{n2} (listening, the relay node), C{srv}
    (the server side) and C{cli} (the client side), registered for
    C{node=}.
    """

    timeout = 60

    async def nodes(self):
        self.n2 = await self.node("n2")
        listener = await self.n2.tcp.listen("tcp:0:interface=127.0.0.1")
        self.at = f"/ip4/127.0.0.1/tcp/{listener.port}"
        self.srv = await self.node("srv")
        self.cli = await self.node("cli")

    async def node(self, name: str) -> Node:
        node = Node(reactor, name=name)
        node.startService()
        self.addCleanup(node.stopService)
        register_node(node)
        self.addCleanup(unregister_node, node)
        return node

    async def serve(self, factory, relay: str = "n3", extra: str = ""):
        port = await serverFromString(reactor, f"ockam:relay={relay}:at={self.at}:node=srv{extra}").listen(factory)
        self.addCleanup(port.stopListening)
        return port

    def client(self, route: str, extra: str = ""):
        return clientFromString(reactor, f"ockam:route={route}:node=cli{extra}")

    async def connect(self, route: str, protocol, extra: str = ""):
        return await deadline(self.client(route, extra).connect(Factory.forProtocol(lambda: protocol)), STEP,
                              f"connect to {route}")

    def relayed(self, service: str = "outlet", relay: str = "n3") -> str:
        return f"{self.at}/service/forward_to_{relay}/service/{service}"

    async def failure(self, d: Deferred, kind):
        try:
            await deadline(d, STEP, "the connection attempt")
        except kind as e:
            return e
        self.fail(f"connected, expected {kind.__name__}")


class WebTests(EndpointTestCase):
    @async_test
    async def test_treq_get_through_a_relay(self):
        """
        A twisted.web site served with C{ockam:relay=...} (no local port)
        answers treq's GET made with C{ockam:route=...} (no local port), a
        small page and one of 3 MiB.
        """
        import treq.client

        await self.nodes()
        big = os.urandom(3 * 1024 * 1024)
        root = resource.Resource()
        root.putChild(b"", static.Data(b"hello through ockam\n", "text/plain"))
        root.putChild(b"big", static.Data(big, "application/octet-stream"))
        port = await self.serve(server.Site(root))
        self.assertEqual(port.getHost(), OckamAddress(self.relayed()))

        pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(pool.closeCachedConnections)
        agent = Agent.usingEndpointFactory(reactor, _OneEndpoint(self.client(port.getHost().route)), pool=pool)
        http = treq.client.HTTPClient(agent)
        response = await deadline(http.get("http://n3.ockam/"), STEP, "GET /")
        self.assertEqual(response.code, 200)
        self.assertEqual(await response.content(), b"hello through ockam\n")
        response = await deadline(http.get("http://n3.ockam/big"), STEP, "GET /big")
        body = await deadline(response.content(), STEP, "the big body")
        self.assertEqual(hashlib.sha256(body).hexdigest(), hashlib.sha256(big).hexdigest())


class TransportTests(EndpointTestCase):
    @async_test
    async def test_the_transport(self):
        """
        A client's transport is an ITransport, IConsumer and IPushProducer;
        its peer is the route, the server's peer the route back.
        """
        await self.nodes()
        servers = TargetFactory(Collector)
        await self.serve(servers)
        client = await self.connect(self.relayed(), Collector())
        for interface in (ITransport, IConsumer, IPushProducer):
            verifyObject(interface, client.transport)
        self.assertEqual(client.transport.getPeer(), OckamAddress(self.relayed()))
        [target] = await servers.accepted(1, STEP, "the server's protocol")
        self.assertEqual(target.transport.getHost(), OckamAddress("/service/outlet"))
        self.assertIsInstance(target.transport.getPeer(), OckamAddress)
        client.transport.write(b"ping")
        await target.received(4, STEP, "ping at the server")
        target.transport.write(b"pong")
        await client.received(4, STEP, "pong at the client")
        self.assertEqual(bytes(client.data), b"pong")

    @async_test
    async def test_many_streams(self):
        """
        Twenty connections at once, each its own stream, echoed.
        """
        await self.nodes()

        class Echo(Protocol):
            def dataReceived(self, data):
                self.transport.write(data)

        await self.serve(Factory.forProtocol(Echo))
        clients = [await self.connect(self.relayed(), Collector()) for _ in range(20)]
        for i, c in enumerate(clients):
            c.transport.write(b"stream %d" % i)
        for i, c in enumerate(clients):
            await c.received(len(b"stream %d" % i), STEP, f"echo {i}")
            self.assertEqual(bytes(c.data), b"stream %d" % i)


class FlowControlTests(EndpointTestCase):
    @async_test
    async def test_client_writer_paused_by_a_target_that_does_not_read(self):
        """
        A client writing to a TCP target (a plain outlet) that reads nothing:
        once the stream's credit is spent, the producer registered with the
        client's transport is paused (StringTransport.producerState), with
        little more than the credit window written; when the target reads,
        every byte arrives and the producer is resumed.
        """
        await self.nodes()
        targets = TargetFactory(NotReading)
        listening = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(targets)
        self.addCleanup(listening.stopListening)
        await self.srv.create_outlet("outlet", f"127.0.0.1:{listening.getHost().port}")
        await self.srv.create_relay(self.at, name="n3")

        client = await self.connect(self.relayed(), Collector())
        [target] = await targets.accepted(1, STEP, "the target's connection")
        source = StringTransport()
        client.transport.registerProducer(source, True)
        written = 0
        chunk = os.urandom(65536)
        while source.producerState == "producing" and written < 16 * STREAM_WINDOW:
            client.transport.write(chunk)
            written += len(chunk)
            if written % (1024 * 1024) == 0:
                # Let Credit messages come back (the target's kernel buffer
                # takes some).
                await wait_until(lambda: True, STEP, "a reactor turn")
        self.assertEqual(source.producerState, "paused", f"{written} bytes written, never paused")
        self.assertLess(written, 4 * STREAM_WINDOW)
        await wait_until(lambda: source.producerState == "paused", STEP, "stays paused")
        self.assertLessEqual(client.transport.unsent_bytes, 2 * StreamTransport.bufferSize + len(chunk))

        target.transport.resumeProducing()
        await target.received(written, STEP, "every byte at the target")
        self.assertEqual(target.count, written)
        await wait_until(lambda: source.producerState == "producing", STEP, "the producer resumed")

    @async_test
    async def test_server_writer_paused_by_a_client_that_does_not_read(self):
        """
        A server protocol writes 12 MiB with its producer registered; the
        client reads nothing (its transport paused): the server's writer is
        paused after about one credit window, and once the client reads,
        everything arrives in order.
        """
        await self.nodes()
        total = 12 * 1024 * 1024
        writers = []

        class Writer(Protocol):
            def connectionMade(self):
                w = StreamWriter(self.transport, total, seed=7, close=True)
                writers.append(w)
                w.start()

        await self.serve(Factory.forProtocol(Writer))
        client = NotReading(keep=False)
        await self.connect(self.relayed(), client)
        await wait_until(lambda: writers and writers[0].paused, STEP, "the server's writer paused")
        await wait_until(lambda: True, STEP, "a reactor turn")
        sent_while_paused = writers[0].sent
        self.assertLess(sent_while_paused, 3 * STREAM_WINDOW)
        self.assertEqual(client.count, 0)
        client.transport.resumeProducing()
        await client.when_lost(STEP, "the whole stream")
        self.assertEqual(client.count, total)
        self.assertEqual(client.digest.hexdigest(), writers[0].digest.hexdigest())
        client.reason.trap(error.ConnectionDone)


class WithoutCreditTests(EndpointTestCase):
    @async_test
    async def test_outlet_without_credit(self):
        """
        An outlet that offers no per-stream credit (as Ockam 0.83's): 4 MiB
        echoed (flow control by pausing the link), and a half-close ends the
        stream as 0.83 does (Disconnect): the client loses the connection
        cleanly after the echo.
        """
        await self.nodes()

        class Echo(Protocol):
            def connectionMade(self):
                self.transport.registerProducer(self.transport, True)

            def dataReceived(self, data):
                self.transport.write(data)

        listening = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Factory.forProtocol(Echo))
        self.addCleanup(listening.stopListening)
        await self.srv.create_outlet("outlet", f"127.0.0.1:{listening.getHost().port}", flow_control=False)
        await self.srv.create_relay(self.at, name="n3")
        client = await self.connect(self.relayed(), Collector(keep=False))
        [portal] = [p for o in self.cli.getServiceNamed("ockamtw-endpoints").openers.values() for p in o.portals]
        self.assertFalse(portal.flow)
        writer = StreamWriter(client.transport, 4 * 1024 * 1024, seed=3)
        writer.start()
        await client.received(writer.total, STEP, "the echo")
        self.assertEqual(client.digest.hexdigest(), writer.digest.hexdigest())
        client.transport.loseWriteConnection()
        await client.when_lost(STEP, "the end of the stream")
        client.reason.trap(error.ConnectionDone)


class HalfCloseTests(EndpointTestCase):
    @async_test
    async def test_half_close_to_a_tcp_target(self):
        """
        The client shuts down its write side: the TCP target reads its end
        of file, answers, and closes; the client reads the answer, then the
        connection is lost cleanly.
        """
        await self.nodes()
        targets = TargetFactory(HalfCloser)
        listening = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(targets)
        self.addCleanup(listening.stopListening)
        await self.srv.create_outlet("outlet", f"127.0.0.1:{listening.getHost().port}")
        await self.srv.create_relay(self.at, name="n3")
        client = await self.connect(self.relayed(), HalfClient())
        client.transport.write(b"hello, half-closed world")
        client.transport.loseWriteConnection()
        await client.when_lost(STEP, "the answer and the close")
        self.assertEqual(bytes(client.data), b"dlrow desolc-flah ,olleh")
        self.assertIn("write closed", client.events)
        client.reason.trap(error.ConnectionDone)

    @async_test
    async def test_half_close_to_a_server_endpoint(self):
        """
        The same between a client endpoint and a server endpoint: the
        server's protocol reads the end of file and still writes.
        """
        await self.nodes()
        servers = TargetFactory(HalfCloser)
        await self.serve(servers)
        client = await self.connect(self.relayed(), HalfClient())
        client.transport.write(b"abc")
        client.transport.loseWriteConnection()
        await client.when_lost(STEP, "the answer and the close")
        self.assertEqual(bytes(client.data), b"cba")
        [target] = servers.protocols
        self.assertEqual(target.events[0], "read closed")
        client.reason.trap(error.ConnectionDone)


class RefusalTests(EndpointTestCase):
    @async_test
    async def test_route_refused(self):
        """
        A route whose TCP hop refuses: NoRouteError, saying so.
        """
        await self.nodes()
        port = held_port(self)
        e = await self.failure(self.client(f"/ip4/127.0.0.1/tcp/{port}/service/outlet").connect(Factory.forProtocol(Protocol)),
                               error.NoRouteError)
        self.assertIn(f"/ip4/127.0.0.1/tcp/{port}/service/outlet", str(e))
        self.assertIn("refused", str(e).lower())

    @async_test
    async def test_no_outlet(self):
        """
        Nothing at the end of the route answers: TimeoutError after
        C{timeout=} seconds.
        """
        await self.nodes()
        e = await self.failure(self.client(f"{self.at}/service/nothing", ":timeout=0.5").connect(Factory.forProtocol(Protocol)),
                               error.TimeoutError)
        self.assertIn("no answer from the outlet", str(e))
        self.assertEqual(str(e).count("no answer"), 1, str(e))
        [opener] = self.cli.getServiceNamed("ockamtw-endpoints").openers.values()
        await wait_until(lambda: not opener.portals, STEP, "the portal gone")

    @async_test
    async def test_relay_node_stops_while_waiting(self):
        """
        The relay node stops while an attempt waits for the outlet's Pong
        (its Ping went out on the open link): the attempt goes on trying
        until C{timeout=}, and its TimeoutError says what the tries met
        (the relay node refuses connections), not only that nothing
        answered.
        """
        await self.nodes()
        await self.serve(TargetFactory(Collector))
        await self.connect(self.relayed(), Collector())  # the link to n2 is open
        attempt = self.client(self.relayed(), ":timeout=2").connect(Factory.forProtocol(Protocol))
        await self.n2.stopService()
        e = await self.failure(attempt, error.TimeoutError)
        self.assertIn("no answer from the outlet", str(e))
        self.assertIn("connection refused", str(e).lower())
        self.assertEqual(str(e).count("no answer"), 1, str(e))

    @async_test
    async def test_outlet_target_down(self):
        """
        An outlet whose TCP target refuses: ConnectionRefusedError, saying
        the outlet cannot reach it.
        """
        await self.nodes()
        await self.srv.create_outlet("outlet", f"127.0.0.1:{held_port(self)}")
        await self.srv.create_relay(self.at, name="n3")
        e = await self.failure(self.client(self.relayed()).connect(Factory.forProtocol(Protocol)),
                               error.ConnectionRefusedError)
        self.assertIn("the outlet cannot reach its target", str(e))

    @async_test
    async def test_not_authorized(self):
        """
        A server endpoint with C{authorized=} refuses a client whose stream
        did not come through a secure channel from that identity, and
        accepts one that did (C{/secure/api} in the route).
        """
        await self.nodes()
        await self.serve(Factory.forProtocol(Collector), extra=f":authorized={self.cli.identity.identifier}")
        e = await self.failure(self.client(self.relayed()).connect(Factory.forProtocol(Protocol)),
                               error.ConnectionRefusedError)
        self.assertIn("refused by the outlet: not authorized", str(e))
        secure = f"{self.at}/service/forward_to_n3/secure/api/service/outlet"
        client = await self.connect(secure, Collector())
        self.assertTrue(client.connected_now)

    @async_test
    async def test_factory_builds_nothing(self):
        await self.nodes()
        await self.serve(Factory.forProtocol(Collector))
        e = await self.failure(self.client(self.relayed()).connect(_NoProtocol()), error.ConnectError)
        self.assertIn("built no protocol", str(e))

    @async_test
    async def test_server_factory_builds_nothing(self):
        await self.nodes()
        await self.serve(_NoProtocol())
        e = await self.failure(self.client(self.relayed()).connect(Factory.forProtocol(Protocol)),
                               error.ConnectionRefusedError)
        self.assertIn("turned the stream away", str(e))

    @async_test
    async def test_cancel(self):
        """
        Cancelling a connection attempt that waits for the outlet ends it:
        ConnectingCancelledError, and no portal left.
        """
        await self.nodes()
        d = self.client(f"{self.at}/service/nothing").connect(Factory.forProtocol(Protocol))
        await wait_until(lambda: any(o.portals for o in self.streams().openers.values()), STEP, "a portal")
        d.cancel()
        e = await self.failure(d, error.ConnectingCancelledError)
        self.assertEqual(e.address, OckamAddress(f"{self.at}/service/nothing"))
        await wait_until(lambda: not any(o.portals for o in self.streams().openers.values()), STEP, "no portal")

    def streams(self):
        return self.cli.getServiceNamed("ockamtw-endpoints")


class _NoProtocol(Factory):
    def buildProtocol(self, addr):
        return None


class ListenTests(EndpointTestCase):
    @async_test
    async def test_relay_node_unreachable(self):
        """
        listen() fails with CannotListenError when the relay cannot be
        registered, and leaves no outlet behind.
        """
        await self.nodes()
        at = f"/ip4/127.0.0.1/tcp/{held_port(self)}"
        endpoint = serverFromString(reactor, f"ockam:relay=n3:at={at}:node=srv:timeout=2")
        try:
            await deadline(endpoint.listen(Factory.forProtocol(Protocol)), STEP, "listen")
        except error.CannotListenError as e:
            self.assertIn("relay n3", str(e))
            self.assertIn("refused", str(e).lower())
        else:
            self.fail("listened")
        self.assertIsNone(self.srv.worker_at("outlet"))

    @async_test
    async def test_relay_node_starts_later(self):
        """
        listen() retries the relay while the relay node is not there yet
        (two programs started together), and fires once it is registered.
        """
        self.srv = await self.node("srv")
        port = held_port(self)
        endpoint = serverFromString(reactor, f"ockam:relay=n3:at=/ip4/127.0.0.1/tcp/{port}:node=srv")
        listening = endpoint.listen(Factory.forProtocol(Protocol))
        await wait_until(lambda: self.srv.tcp.connections == [] and reactor.seconds() > 0, STEP, "a turn")
        self.assertFalse(listening.called)
        n2 = await self.node("n2")
        await n2.tcp.listen(f"tcp:{port}:interface=127.0.0.1")
        outlet_port = await deadline(listening, STEP, "listening once the relay node is up")
        self.addCleanup(outlet_port.stopListening)
        self.assertEqual(outlet_port.relay.status, UP)

    @async_test
    async def test_address_taken(self):
        await self.nodes()
        await self.srv.create_outlet("outlet", "127.0.0.1:9")
        try:
            await serverFromString(reactor, "ockam:node=srv").listen(Factory.forProtocol(Protocol))
        except error.CannotListenError as e:
            self.assertIn("already taken", str(e))
        else:
            self.fail("listened")

    @async_test
    async def test_relay_name_taken(self):
        """
        The relay is one of the node's relays: a name the node has taken
        already cannot be listened on, and stopListening frees it.
        """
        await self.nodes()
        port = await self.serve(Factory.forProtocol(Protocol))
        self.assertIs(self.srv.relays["n3"], port.relay)
        try:
            await serverFromString(reactor, f"ockam:relay=n3:at={self.at}:node=srv:service=other").listen(
                Factory.forProtocol(Protocol))
        except error.CannotListenError as e:
            self.assertIn("relay 'n3' already exists", str(e))
        else:
            self.fail("listened")
        self.assertIsNone(self.srv.worker_at("other"))
        await port.stopListening()
        self.assertNotIn("n3", self.srv.relays)

    @async_test
    async def test_stop_listening(self):
        """
        After stopListening, new streams are not opened (the relay is gone)
        and an open one goes on.
        """
        await self.nodes()
        factory = TargetFactory(Collector)
        port = await self.serve(factory)
        client = await self.connect(self.relayed(), Collector())
        await port.stopListening()
        e = await self.failure(self.client(self.relayed(), ":timeout=1").connect(Factory.forProtocol(Protocol)),
                               error.ConnectError)
        self.assertNotIsInstance(e, error.ConnectingCancelledError)
        client.transport.write(b"still here")
        [target] = await factory.accepted(1, STEP, "the server protocol")
        await target.received(10, STEP, "data on the open stream")

    @async_test
    async def test_listen_again_after_stop_listening(self):
        """
        A program that stops listening and listens again under the same
        relay name (on the same node, whose link to the relay node stays
        open) is served again: the name was not left taken at the relay
        node.
        """
        await self.nodes()
        port = await self.serve(TargetFactory(Collector))
        await port.stopListening()
        self.assertNotIn("n3", self.srv.relays)
        self.assertIsNone(self.srv.worker_at("outlet"))
        factory = TargetFactory(Collector)
        port = await deadline(Deferred.fromCoroutine(self.serve(factory)), STEP, "listen again")
        client = await self.connect(self.relayed(), Collector())
        client.transport.write(b"again")
        [target] = await factory.accepted(1, STEP, "the server protocol")
        await target.received(5, STEP, "data through the new relay")


class LostTests(EndpointTestCase):
    @async_test
    async def test_server_closes(self):
        await self.nodes()
        factory = TargetFactory(Collector)
        await self.serve(factory)
        client = await self.connect(self.relayed(), Collector())
        [target] = await factory.accepted(1, STEP, "the server protocol")
        target.transport.write(b"bye")
        target.transport.loseConnection()
        await client.when_lost(STEP, "the close")
        self.assertEqual(bytes(client.data), b"bye")
        client.reason.trap(error.ConnectionDone)
        target.reason.trap(error.ConnectionDone)

    @async_test
    async def test_client_closes(self):
        await self.nodes()
        factory = TargetFactory(Collector)
        await self.serve(factory)
        client = await self.connect(self.relayed(), Collector())
        [target] = await factory.accepted(1, STEP, "the server protocol")
        client.transport.write(b"bye")
        client.transport.loseConnection()
        await target.when_lost(STEP, "the close")
        self.assertEqual(bytes(target.data), b"bye")
        client.reason.trap(error.ConnectionDone)

    @async_test
    async def test_relay_node_stops(self):
        """
        The relay node stops: both protocols lose the connection with
        ConnectionLost, saying the link closed.
        """
        await self.nodes()
        factory = TargetFactory(Collector)
        await self.serve(factory)
        client = await self.connect(self.relayed(), Collector())
        [target] = await factory.accepted(1, STEP, "the server protocol")
        await self.n2.stopService()
        await client.when_lost(STEP, "the client's stream lost")
        client.reason.trap(error.ConnectionLost)
        self.assertIn("the link to the other side closed", str(client.reason.value))
        await target.when_lost(STEP, "the server's stream lost")
        target.reason.trap(error.ConnectionLost)

    @async_test
    async def test_client_node_stops(self):
        await self.nodes()
        factory = TargetFactory(Collector)
        await self.serve(factory)
        client = await self.connect(self.relayed(), Collector())
        [target] = await factory.accepted(1, STEP, "the server protocol")
        await self.cli.stopService()
        self.assertFalse(client.connected_now)
        client.reason.trap(error.ConnectionLost)
        self.assertIn("node cli stopped", str(client.reason.value))
        await target.when_lost(STEP, "the server's stream closed")
        target.reason.trap(error.ConnectionDone)


class EmbeddedNodeTests(TestCase):
    """
    Without C{node=}: the program's embedded node, with C{$OCKAM_HOME}'s
    background nodes for C{/node/NAME} and its identities for
    C{identity=}.
    """

    timeout = 60

    def setUp(self):
        self.home = tempfile.mkdtemp(prefix="ockhome-")
        self.patch(os, "environ", dict(os.environ, OCKAM_HOME=self.home))
        self.addCleanup(stop_embedded_nodes, reactor)

    async def background_node(self, name: str) -> Node:
        """
        A node listening on loopback, recorded in the home as a background
        node C{name} is (its state.json's listener).
        """
        node = Node(reactor, name=name)
        node.startService()
        self.addCleanup(node.stopService)
        listener = await node.tcp.listen("tcp:0:interface=127.0.0.1")
        st.write_state(st.make_node_dir(self.home, name), st.empty_state(name, f"127.0.0.1:{listener.port}"))
        return node

    def identity(self, name: str):
        from ockamtw.secure.identity import LocalIdentity

        identity = LocalIdentity.create()
        st.secure_identities_dir(self.home)
        identity.save(st.identity_path(self.home, name))
        return identity

    @async_test
    async def test_node_routes(self):
        """
        C{ockam:relay=n3:at=/node/n2} and C{ockam:route=/node/n2/...}: the
        embedded node finds n2 as the C{ockam} command does.
        """
        await self.background_node("n2")
        port = await deadline(serverFromString(reactor, "ockam:relay=n3:at=/node/n2").listen(
            Factory.forProtocol(EchoBack)), STEP, "listen")
        self.addCleanup(port.stopListening)
        self.assertEqual(port.getHost().route, "/node/n2/service/forward_to_n3/service/outlet")
        client = await deadline(clientFromString(reactor, "ockam:route=/node/n2/service/forward_to_n3/service/outlet")
                                .connect(Factory.forProtocol(Collector)), STEP, "connect")
        client.transport.write(b"round trip")
        await client.received(10, STEP, "the echo")
        self.assertIs(embedded_node(reactor), port.outlet.node)

    @async_test
    async def test_no_such_node(self):
        e = None
        try:
            await deadline(clientFromString(reactor, "ockam:route=/node/nope/service/outlet")
                           .connect(Factory.forProtocol(Protocol)), STEP, "connect")
        except error.NoRouteError as caught:
            e = caught
        self.assertIsNotNone(e)
        self.assertIn("no node named 'nope'", str(e))

    @async_test
    async def test_identity(self):
        """
        C{identity=alice}: the embedded node is alice (a secure channel
        through the relay proves it to an outlet that accepts only her).
        """
        await self.background_node("n2")
        alice = self.identity("alice")
        srv = Node(reactor, name="srv")
        srv.startService()
        self.addCleanup(srv.stopService)
        # srv resolves /node/n2 through the home too.
        srv.node_resolver = lambda name: st.listener_of(self.home, name)
        port = await deadline(OckamServerEndpoint(srv, relay="n3", at="/node/n2", authorized=[alice.identifier])
                              .listen(Factory.forProtocol(EchoBack)), STEP, "listen")
        self.addCleanup(port.stopListening)
        route = "/node/n2/service/forward_to_n3/secure/api/service/outlet"
        client = await deadline(clientFromString(reactor, f"ockam:route={route}:identity=alice")
                                .connect(Factory.forProtocol(Collector)), STEP, "connect as alice")
        self.assertEqual(embedded_node(reactor, "alice").identity.identifier, alice.identifier)
        client.transport.write(b"it is me")
        await client.received(8, STEP, "the echo")
        try:
            await deadline(clientFromString(reactor, f"ockam:route={route}").connect(Factory.forProtocol(Protocol)),
                           STEP, "connect as someone else")
        except error.ConnectionRefusedError as e:
            self.assertIn("not authorized", str(e))
        else:
            self.fail("someone else connected")


class EchoBack(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class ProjectTests(TestCase):
    """
    C{/project/NAME} routes, with an Orchestrator in-process: a server
    endpoint on a member node registers its relay at the project, and a
    client endpoint with C{identity=} (an identity of the home, enrolled in
    the project the home knows) reaches it; an identity that is not a
    member is refused, saying so.
    """

    timeout = 90

    async def orchestrator(self):
        import json

        import treq
        from twisted.web.client import HTTPConnectionPool

        from ockamtw.orchestrator.service import ENROLL_CONTEXT, Orchestrator, Settings
        from ockamtw.project.projectinfo import ProjectInfo
        from ockamtw.secure.identity import LocalIdentity

        data = tempfile.mkdtemp(prefix="ockorch-")
        o = Orchestrator(reactor, Settings(data, http="tcp:0:interface=127.0.0.1", project_ports=None, refresh=0.1))
        o.startService()
        self.addCleanup(o.stopService)
        await deadline(o.ready, 10, "the orchestrator started")
        with open(os.path.join(data, "admin.token")) as f:
            token = f.read().strip()
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        http = treq.client.HTTPClient(treq.api.Agent(reactor, pool=pool))

        async def api(method, path, body=None):
            headers = {b"authorization": [f"Bearer {token}".encode()]}
            response = await http.request(method, o.url + path, data=json.dumps(body).encode() if body else None,
                                          headers=headers)
            return json.loads(await response.content())

        admin = LocalIdentity.create()
        challenge = (await api("GET", "/v0/enroll/challenge"))["challenge"]
        signature = admin.sign(ENROLL_CONTEXT + bytes.fromhex(challenge))
        enrolled = await api("POST", "/v0/enroll", {"identity": admin.export().hex(), "challenge": challenge,
                                                     "signature": signature.hex()})
        info = await api("GET", f"/v0/projects/{enrolled['project']['id']}/information")
        return admin, ProjectInfo.from_json(json.dumps(info))

    @async_test
    async def test_project_routes(self):
        from ockamtw.cli import home as h
        from ockamtw.secure.identity import LocalIdentity

        admin, info = await self.orchestrator()
        home = tempfile.mkdtemp(prefix="ockhome-")
        self.patch(os, "environ", dict(os.environ, OCKAM_HOME=home))
        self.addCleanup(stop_embedded_nodes, reactor)
        st.secure_identities_dir(home)
        admin.save(st.identity_path(home, "admin"))
        LocalIdentity.create().save(st.identity_path(home, "stranger"))
        h.save_project(home, info)

        srv = Node(reactor, name="srv", identity=admin)
        srv.add_project(info)
        srv.startService()
        self.addCleanup(srv.stopService)
        register_node(srv)
        self.addCleanup(unregister_node, srv)
        port = await deadline(serverFromString(reactor, "ockam:relay=n3:at=/project/default:node=srv").listen(
            Factory.forProtocol(EchoBack)), STEP, "the relay at the project")
        self.addCleanup(port.stopListening)
        route = "/project/default/service/forward_to_n3/service/outlet"
        self.assertEqual(port.getHost().route, route)
        client = await deadline(clientFromString(reactor, f"ockam:route={route}:identity=admin")
                                .connect(Factory.forProtocol(Collector)), 20, "connect through the project")
        client.transport.write(b"through the project")
        await client.received(19, STEP, "the echo")
        self.assertEqual(bytes(client.data), b"through the project")

        try:
            await deadline(clientFromString(reactor, f"ockam:route={route}:identity=stranger")
                           .connect(Factory.forProtocol(Protocol)), 20, "a stranger's attempt")
        except error.NoRouteError as e:
            self.assertIn("not a member of project default", str(e))
        else:
            self.fail("a stranger connected")
