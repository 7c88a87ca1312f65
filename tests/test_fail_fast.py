"""
Mistakes and refusals are reported at once, on the side that asked, with
the reason (issue #11 item 4), instead of as a time-out with the reason only
in the far node's log:

  - a route whose first hop is a local address with no worker;
  - an inlet whose route cannot work, or whose outlet refuses it (not
    authorized, or its target is unreachable): the client is closed at
    once, and the inlet shows the reason and is Down;
  - a relay name that is taken (tests/test_relay.py, test_takeOverRefused);
  - a secure channel to something that is not a listener.

Real loopback sockets, port 0; every wait bounded.
"""

from __future__ import annotations

import socket
import time

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from ockamtw import Node, RouteUnreachable, Route
from ockamtw.errors import TransportError
from ockamtw.secure.errors import SecureChannelError

from tests.helpers import async_test, held_port, wait_until
from tests.portal_harness import Collector, EchoTarget, PortalTestCase, figure


class RequestTests(SynchronousTestCase):
    def test_unknownLocalFirstHopFailsAtOnce(self):
        node = Node(MemoryReactorClock(), name="n1")
        for route in ("/service/nobody", Route(["garbage", "echo"])):
            d = node.request(route, b"x", timeout=10)
            f = self.failureResultOf(d, RouteUnreachable)
            self.assertIn("no worker at /service/", str(f.value))
        self.successResultOf(node.request("/service/echo", b"x", timeout=10))


class InletTests(PortalTestCase):
    timeout = 30

    async def client_closed_at_once(self, inlet, bound: float = 1.0) -> float:
        port = int(inlet.socket_address.rsplit(":", 1)[1])
        client = await self.connect_client(port, Collector())
        client.transport.write(b"anyone?")
        started = time.monotonic()
        await client.when_lost(bound + 2, "the client closed")
        elapsed = time.monotonic() - started
        self.assertLess(elapsed, bound, "the client waited for a time-out")
        self.assertEqual(bytes(client.data), b"")
        return elapsed

    @async_test
    async def test_route_to_nothing(self):
        """
        An inlet to a local address with no worker is Down and says why
        from the start.
        """
        n1 = self.make_node("n1")
        inlet = await n1.create_inlet("127.0.0.1:0", "/service/nothing", ping_timeout=10)
        await wait_until(lambda: inlet.last_error is not None, 2, "the inlet's reason")
        self.assertEqual(inlet.status, "DOWN")
        self.assertIn("no worker at /service/nothing", inlet.last_error)

    @async_test
    async def test_client_of_a_route_to_nothing(self):
        """
        A client of an inlet whose route names what does not exist (a
        worker of this node, a node) is closed at once, not after the
        ping time-out: there is nothing to wait for.  The inlet says why.
        """
        n1 = self.make_node("n1")
        for route, reason in (
            ("/service/nothing", "no worker at /service/nothing on node n1"),
            ("/node/nowhere/service/outlet", "no node named 'nowhere'"),
        ):
            inlet = await n1.create_inlet("127.0.0.1:0", route, ping_timeout=10)
            await self.client_closed_at_once(inlet)
            self.assertEqual((inlet.status, inlet.last_error, inlet.refusals), ("DOWN", reason, 1))
            await wait_until(lambda: not inlet.portals, 2, "the inlet's portal gone")

    async def refused(self, flow_control: bool):
        targets, target_port = await self.start_target(EchoTarget)
        n2, l2 = await self.listening_node("n2")
        outlet = await n2.create_outlet(
            "private", f"127.0.0.1:{target_port}", authorized=["P" + "0" * 64], flow_control=flow_control
        )
        n1 = self.make_node("n1")
        inlet = await n1.create_inlet(
            "127.0.0.1:0", f"/ip4/127.0.0.1/tcp/{l2.port}/service/private", ping_timeout=10, flow_control=flow_control
        )
        await self.within(inlet.route(), 5, "the route")
        elapsed = await self.client_closed_at_once(inlet)
        figure(f"refused inlet (flow control {flow_control}): client closed after {elapsed * 1000:.0f} ms")
        self.assertEqual(targets.protocols, [])
        self.assertEqual(outlet.unauthorized, 1)
        self.assertEqual(inlet.status, "DOWN")
        return inlet

    @async_test
    async def test_refused_by_the_outlet(self):
        """
        An outlet's authorized list refuses the inlet's Ping: the outlet
        answers (Refuse, between ockamtw ends), the client is closed at once
        and the inlet says why.
        """
        inlet = await self.refused(flow_control=True)
        self.assertEqual(inlet.last_error, "refused by the outlet: not authorized")

    @async_test
    async def test_refused_as_ockam_083(self):
        """
        Without ockamtw's extensions on either end (an Ockam 0.83 peer), the
        refusal is a Disconnect: the client is closed at once all the same.
        """
        inlet = await self.refused(flow_control=False)
        self.assertIn("before opening it", inlet.last_error)

    @async_test
    async def test_target_unreachable(self):
        dead = held_port(self)  # refuses, and nobody else can take it
        n1 = self.make_node("n1")
        await n1.create_outlet("outlet", f"127.0.0.1:{dead}")
        inlet = await n1.create_inlet("127.0.0.1:0", "/service/outlet", ping_timeout=10)
        await self.client_closed_at_once(inlet)
        self.assertEqual(inlet.last_error, "refused by the outlet: the outlet cannot reach its target")
        self.assertEqual(inlet.status, "DOWN")


class SecureChannelTests(PortalTestCase):
    @async_test
    async def test_not_a_listener(self):
        """
        A secure channel pointed at something that is not a listener (here
        C{echo}, which sends M1 back) fails at once with a sentence, not
        with a decoding error.
        """
        n2, l2 = await self.listening_node("n2")
        n1 = self.make_node("n1")
        route = f"/ip4/127.0.0.1/tcp/{l2.port}/service/echo"
        started = time.monotonic()
        e = await self.within(self.assertFailure(n1.create_secure_channel(route, timeout=10), SecureChannelError), 3, "failure")
        self.assertLess(time.monotonic() - started, 2)
        self.assertEqual(str(e), f"{route} did not answer as a secure channel listener")


class ClosedLinkTests(PortalTestCase):
    """
    A request whose connection closes before the answer (a peer that
    accepted and went away, an Orchestrator instance killed) fails then,
    not at its time-out: C{node.request}, a project API call.
    """

    async def close_on_data(self) -> int:
        from twisted.internet import reactor
        from twisted.internet.endpoints import serverFromString
        from twisted.internet.protocol import Factory, Protocol

        class CloseOnData(Protocol):
            def dataReceived(self, data):
                self.transport.loseConnection()

        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Factory.forProtocol(CloseOnData))
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @async_test
    async def test_request(self):
        port = await self.close_on_data()
        n1 = self.make_node("n1")
        started = time.monotonic()
        e = await self.within(
            self.assertFailure(n1.request(f"/ip4/127.0.0.1/tcp/{port}/service/echo", b"x", timeout=30), RouteUnreachable),
            5,
            "the request's failure",
        )
        self.assertLess(time.monotonic() - started, 5)
        self.assertIn("closed before a reply came", str(e))

    @async_test
    async def test_project_api_call(self):
        from ockamtw.errors import RequestTimeout
        from ockamtw.project.codec import Method
        from ockamtw.project.service import call

        port = await self.close_on_data()
        n1 = self.make_node("n1")
        conn = await n1.tcp.connect(f"127.0.0.1:{port}")
        started = time.monotonic()
        d = call(n1, Route([conn.address, "credentials"]), Method.GET, "/", timeout=30)
        from twisted.internet.defer import Deferred

        e = await self.within(self.assertFailure(Deferred.fromCoroutine(d), RequestTimeout), 5, "the call's failure")
        self.assertLess(time.monotonic() - started, 5)
        self.assertIn("the connection closed first", str(e))


class MessageTests(PortalTestCase):
    @async_test
    async def test_unreachable_said_once(self):
        """
        "cannot connect to HOST:PORT" appears once in the reason, not twice.
        """
        dead = held_port(self)  # refuses, and nobody else can take it
        n1 = self.make_node("n1")
        e = await self.within(
            self.assertFailure(n1.request(f"/ip4/127.0.0.1/tcp/{dead}/service/echo", b"x", timeout=5), RouteUnreachable),
            6,
            "the failure",
        )
        self.assertEqual(str(e).count(f"cannot connect to 127.0.0.1:{dead}"), 1, str(e))
        # The system's reason, without Twisted's own wording around it.
        self.assertTrue(str(e).endswith(f"cannot connect to 127.0.0.1:{dead}: Connection refused"), str(e))

    @async_test
    async def test_listen_failure_quotes_what_was_typed(self):
        """
        A port in use: the message names the address as the caller gave it
        (not the endpoint string it became) and the reason once.
        """
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        n1 = self.make_node("n1")
        for typed in (str(port), f"127.0.0.1:{port}", f"tcp:{port}:interface=127.0.0.1"):
            e = await self.within(self.assertFailure(n1.tcp.listen(typed), TransportError), 3, "the failure")
            self.assertEqual(str(e), f"cannot listen on {typed}: Address already in use")
