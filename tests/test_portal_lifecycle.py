"""
A TCP portal's life around its ends: a target that refuses, an inlet
created before its outlet, its relay or the relay node's listener (the Pong
timeout, then service once they exist), recovery after the relay node
restarts on the same port, and Disconnect from either side leaving no
worker behind.

In-process nodes on the global reactor, real loopback sockets on port 0
(L{tests.portal_harness}).  Nothing sleeps: waits are Deferreds fired by
events, or conditions checked until a deadline.
"""

from __future__ import annotations

import time

from twisted.logger import formatEvent

from ockamtw.relay import Forwarder
from ockamtw.status import DOWN, UP

from .helpers import LogWatch, async_test, deadline, held_port, wait_until
from .portal_harness import Collector, EchoTarget, PortalTestCase, Topology, figure


# --- a target that refuses ---------------------------------------------------------------


class RefusedTargetTests(PortalTestCase):
    timeout = 30

    @async_test
    async def test_refused_target_closes_client(self):
        # A port nothing listens on, and that nobody else can take.
        dead = held_port(self)

        t = await self.topology(dead, ping_timeout=10)
        base = {n.name: n.worker_addresses() for n in (t.n1, t.n2, t.n3)}
        client = await self.connect_client(t.inlet_port, Collector())
        client.transport.write(b"anyone there?")
        started = time.monotonic()
        await client.when_lost(3, "the client closed after the target refused")
        elapsed = time.monotonic() - started
        figure(f"refused target: client closed {elapsed * 1000:.0f} ms after connecting (ping_timeout 10 s)")
        self.assertLess(elapsed, 3)
        self.assertEqual(bytes(client.data), b"")
        self.assertEqual(t.outlet.refused, 1)
        self.assertEqual(t.outlet.accepted, 1)
        self.assertEqual(t.inlet.timeouts, 0)  # Refuse, not the Pong timeout
        # The outlet answered Pong at once (to a TCP inlet it does not wait
        # for its target), then its portal said the target cannot be reached.
        self.assertEqual((t.inlet.accepted, t.inlet.refusals), (1, 1))
        self.assertEqual(t.inlet.last_error, "refused by the outlet: the outlet cannot reach its target")
        await self.no_portals_left(t)
        for n in (t.n1, t.n2, t.n3):
            self.assertEqual(n.worker_addresses(), base[n.name], n.name)


# --- an inlet created before its outlet or relay -------------------------------------------


def pong_timeout_events(testcase) -> LogWatch:
    return LogWatch(
        testcase,
        lambda e: e.get("log_namespace") == "ockamtw.portal.inlet" and "no Pong" in (e.get("log_format") or ""),
    )


class InletFirstTests(PortalTestCase):
    timeout = 30

    async def _closed_after_timeout(self, t, watch: LogWatch, n: int) -> None:
        """
        A client of an inlet whose outlet cannot be reached is closed after
        about C{ping_timeout} (0.5 s), with a log line.
        """
        client = await self.connect_client(t.inlet_port, Collector())
        client.transport.write(b"early")
        started = time.monotonic()
        await client.when_lost(5, "the client closed after the Pong timeout")
        elapsed = time.monotonic() - started
        figure(f"no outlet yet: client closed after {elapsed:.2f} s (ping_timeout 0.5 s)")
        self.assertGreaterEqual(elapsed, 0.4)
        self.assertLess(elapsed, 2.5)
        self.assertEqual(bytes(client.data), b"")
        self.assertEqual(t.inlet.timeouts, n)
        events = await watch.when(n, 1, "the Pong timeout log line")
        text = formatEvent(events[-1])
        self.assertIn(t.inlet.socket_address, text)
        self.assertIn("0.5 s", text)
        await wait_until(lambda: not t.inlet.portals, 2, "the timed-out inlet portal gone")

    @async_test
    async def test_outlet_created_after_inlet(self):
        targets, target_port = await self.start_target(EchoTarget)
        watch = pong_timeout_events(self)
        t = await self.topology(target_port, ping_timeout=0.5, ping_interval=0.1, outlet=False)
        await self._closed_after_timeout(t, watch, 1)
        self.assertEqual(targets.protocols, [])

        t.outlet = await t.n3.create_outlet("outlet", t.target)
        client = await self.echo_round_trip(t, b"outlet is here now")
        self.assertEqual(t.inlet.timeouts, 1)
        self.assertEqual(t.inlet.status, UP)
        client.transport.loseConnection()
        await self.no_portals_left(t)

    @async_test
    async def test_relay_and_outlet_created_after_inlet(self):
        targets, target_port = await self.start_target(EchoTarget)
        watch = pong_timeout_events(self)
        t = await self.topology(target_port, ping_timeout=0.5, ping_interval=0.1, relay=False, outlet=False)
        await self._closed_after_timeout(t, watch, 1)
        self.assertIsNone(t.n2.worker_at("forward_to_n3"))

        t.relay = await t.n3.create_relay(t.at, name="n3")
        t.outlet = await t.n3.create_outlet("outlet", t.target)
        await self.echo_round_trip(t, b"relay and outlet are here now")
        self.assertEqual(t.inlet.timeouts, 1)

    @async_test
    async def test_relay_node_listens_after_inlet(self):
        """
        Nothing listens at the relay node's address when the inlet is
        created; once n2 listens there (and n3 registers), a new client of
        the same inlet works.
        """
        p2 = held_port(self)  # refuses until n2 listens there; nobody else can take it
        targets, target_port = await self.start_target(EchoTarget)
        watch = pong_timeout_events(self)
        n1 = self.make_node("n1")
        inlet = await n1.create_inlet(
            "127.0.0.1:0",
            f"/ip4/127.0.0.1/tcp/{p2}/service/forward_to_n3/service/outlet",
            ping_timeout=0.5,
            ping_interval=0.1,
        )
        t = Topology()
        t.n1, t.inlet = n1, inlet
        t.inlet_port = int(inlet.socket_address.rsplit(":", 1)[1])
        await self._closed_after_timeout(t, watch, 1)
        self.assertIsNotNone(inlet.last_error)
        self.assertEqual(inlet.status, DOWN)

        t.n2, t.listener = await self.listening_node("n2", f"tcp:{p2}:interface=127.0.0.1")
        t.n3 = self.make_node("n3")
        t.relay = await t.n3.create_relay(f"/ip4/127.0.0.1/tcp/{p2}", name="n3")
        t.outlet = await t.n3.create_outlet("outlet", f"127.0.0.1:{target_port}")
        await self.echo_round_trip(t, b"the relay node is up")
        self.assertEqual(inlet.status, UP)

    @async_test
    async def test_outlet_appears_while_client_waits(self):
        """
        A client connects (and writes) while there is no outlet; the outlet
        appears within the client's ping_timeout: the client is served.
        """
        targets, target_port = await self.start_target(EchoTarget)
        t = await self.topology(target_port, ping_timeout=5, ping_interval=0.1, outlet=False)
        dropped = LogWatch(
            self,
            lambda e: e.get("node") == "n3" and e.get("address") == "0#outlet" and "no worker" in e.get("log_format", ""),
        )
        client = await self.connect_client(t.inlet_port, Collector())
        client.transport.write(b"written before the outlet existed")
        await dropped.when(2, 5, "two Pings dropped at n3 for lack of an outlet")
        self.assertEqual(client.count, 0)

        t.outlet = await t.n3.create_outlet("outlet", t.target)
        await client.received(33, 4, "the early bytes echoed once the outlet exists")
        self.assertEqual(bytes(client.data), b"written before the outlet existed")
        self.assertEqual(t.inlet.timeouts, 0)
        self.assertEqual(t.inlet.accepted, 1)
        # Repeated Pings may have made more than one outlet portal; the
        # inlet keeps one and the others are told to go.
        await wait_until(lambda: len(t.outlet.portals) == 1, 5, "one outlet portal for one client")
        await wait_until(lambda: len(targets.open) == 1, 5, "one target connection for one client")
        self.assertEqual(sum(p.count for p in targets.protocols), 33)
        client.transport.loseConnection()
        await self.no_portals_left(t)


# --- recovery after the relay node restarts ----------------------------------------------


class RecoveryTests(PortalTestCase):
    timeout = 40

    @async_test
    async def test_relay_node_restarts_on_same_port(self):
        """
        n2 stops and a new n2 listens on its port: the relay registers
        again and the inlet carries traffic again.  The port is held by the
        test (L{held_port}), so nobody else takes it while n2 is down.
        """
        targets, target_port = await self.start_target(EchoTarget)
        held = held_port(self)
        t = await self.topology(
            target_port, ping_timeout=5, ping_interval=0.1, refresh=0.5, timeout=0.5,
            n2_listen=f"tcp:{held}:interface=127.0.0.1",
        )
        first = await self.echo_round_trip(t, b"before the restart")
        self.assertEqual(t.relay.status, UP)
        port = t.listener.port

        down = t.relay.when_status(DOWN)
        started = time.monotonic()
        await deadline(self.stop_node(t.n2), 5, "n2 stopped")
        await deadline(down, 5, "the relay Down after n2 stopped")
        await wait_until(lambda: t.inlet.status == DOWN, 5, "the inlet Down after n2 stopped")
        # The old client's tunnel ran over the dead links: both of its
        # portals end with them, so the client and the target connection
        # are closed instead of lingering.
        await wait_until(lambda: not first.transport.connected, 5, "the old client closed by n1")
        await wait_until(lambda: not t.outlet.portals, 5, "the old outlet portal gone from n3")
        await wait_until(lambda: not targets.open, 5, "the old target connection closed by n3")
        self.assertEqual(t.inlet.portals, set())

        n2b, listener = await self.listening_node("n2-again", f"tcp:{port}:interface=127.0.0.1")
        self.assertEqual(listener.port, port)
        up = await deadline(t.relay.when_status(UP), 10, "the relay re-registered at the new n2")
        recovered = time.monotonic() - started
        self.assertIs(up, t.relay)
        self.assertIsInstance(n2b.worker_at("forward_to_n3"), Forwarder)

        second = await self.echo_round_trip(t, b"after the restart", seconds=10)
        figure(f"relay node restart: relay Up again {recovered:.2f} s after n2 stopped; inlet carried traffic again")
        self.assertEqual(t.inlet.status, UP)
        self.assertEqual(len(t.n1.tcp.connections), 1)
        self.assertEqual(t.n1.tcp.connections[0].socket_address, f"127.0.0.1:{port}")
        self.assertEqual(len(n2b.tcp.connections), 2)  # from n3 and from n1
        second.transport.loseConnection()
        await wait_until(lambda: not t.inlet.portals, 5, "the new client's inlet portal gone")


# --- Disconnect, both ways -----------------------------------------------------------------


class DisconnectTests(PortalTestCase):
    timeout = 30

    async def _baseline(self, t):
        # One round trip first: the inlet's link and the relay are set up.
        c = await self.echo_round_trip(t, b"warm up")
        c.transport.loseConnection()
        await self.no_portals_left(t)
        return {n.name: n.worker_addresses() for n in (t.n1, t.n2, t.n3)}

    def _assert_baseline(self, t, base) -> None:
        for n in (t.n1, t.n2, t.n3):
            self.assertEqual(n.worker_addresses(), base[n.name], n.name)

    @async_test
    async def test_client_closes(self):
        echo, echo_port = await self.start_target(EchoTarget)
        targets, target_port = await self.start_target(lambda: Collector())
        t = await self.topology(echo_port)
        base = await self._baseline(t)
        t.outlet.target = f"127.0.0.1:{target_port}"

        client = await self.connect_client(t.inlet_port, Collector())
        [target] = await targets.accepted(1, 5, "the target connection")
        client.transport.write(b"last words")
        client.transport.loseConnection()
        await target.when_lost(5, "the target closed after the client")
        self.assertEqual(bytes(target.data), b"last words")
        await self.no_portals_left(t)
        self._assert_baseline(t, base)

    @async_test
    async def test_target_closes(self):
        class Goodbye(Collector):
            def connectionMade(self):
                Collector.connectionMade(self)
                self.transport.write(b"goodbye")
                self.transport.loseConnection()

        echo, echo_port = await self.start_target(EchoTarget)
        targets, target_port = await self.start_target(Goodbye)
        t = await self.topology(echo_port)
        base = await self._baseline(t)
        t.outlet.target = f"127.0.0.1:{target_port}"

        client = await self.connect_client(t.inlet_port, Collector())
        await client.when_lost(5, "the client closed after the target")
        self.assertEqual(bytes(client.data), b"goodbye")
        await self.no_portals_left(t)
        self._assert_baseline(t, base)
