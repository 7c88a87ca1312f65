"""
An outlet answers an ockamtw TCP inlet's Ping at once and connects to its
target meanwhile (docs/protocol.md, "Early Pong"): the data that comes
before the target is connected waits in the outlet's portal, at most the
inlet's first credit; a target that cannot be reached is reported by the
portal that sent the Pong.  Any other opener (an Ockam 0.83 inlet, an
C{ockam:} client endpoint) gets its Pong once the target is connected.

The outlet runs on a node with a L{MemoryReactorClock}: its connection
attempts are the reactor's C{tcpClients}, completed or refused by hand.
"""

from __future__ import annotations

import random

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from ockamtw import Address, Route
from ockamtw.flow import STREAM_WINDOW
from ockamtw.node import BaseNode, FunctionWorker
from ockamtw.portal import CONNECTING, DONE, MAX_CHUNK, OPEN, WRITE_CLOSED, portal_address, takes_early_pong
from ockamtw.portal.outlet import Outlet
from ockamtw.wire import DISCONNECT, PING, PONG, TransportMessage, decode_refuse, encode_eof, encode_payload

from .helpers import async_test
from .portal_harness import Collector, PortalTestCase


class _Target(StringTransport):
    write_lost = False

    def loseWriteConnection(self):
        self.write_lost = True


class EarlyPongTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.node = BaseNode(self.reactor, name="out")
        self.outlet = Outlet("127.0.0.1:9000")
        self.node.start_worker(Address.local("outlet"), self.outlet)
        self.got = []

    def inlet(self, flow=True, early=True):
        """
        A worker standing for an inlet's portal: records what it gets.
        """
        return self.node.start_worker(
            portal_address(flow, early), FunctionWorker(lambda w, m: self.got.append((m.payload, m.return_route)))
        )

    def ping(self, inlet):
        before = set(self.outlet.portals)
        self.node.send(Route([Address.local("outlet")]), PING, sender=inlet)
        [portal] = self.outlet.portals - before
        return portal

    def payloads(self):
        return [p for p, _ in self.got]

    def connect_target(self):
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        target = _Target()
        factory.buildProtocol(IPv4Address("TCP", host, port)).makeConnection(target)
        return target

    def refuse_target(self):
        _, _, factory, _, _ = self.reactor.tcpClients[-1]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))

    def test_marks(self):
        self.assertTrue(takes_early_pong(portal_address(True, True)))
        self.assertFalse(takes_early_pong(portal_address(True, False)))
        self.assertFalse(takes_early_pong(portal_address(False, True)))
        self.assertFalse(takes_early_pong(Address.parse("1#127.0.0.1:4000")))

    def test_pong_before_the_target_is_connected(self):
        """
        To a TCP inlet's portal: Pong at once, from the new portal, while
        its target connection is still being made.
        """
        inlet = self.inlet()
        portal = self.ping(inlet)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(portal.state, CONNECTING)
        self.assertEqual(self.got, [(PONG, Route([portal.address]))])

    def test_pong_after_connect_for_other_openers(self):
        """
        An Ockam 0.83 inlet (no flow control) and an ockamtw portal without
        the early mark (an C{ockam:} client endpoint's) get Pong only once
        the target is connected.
        """
        for flow in (False, True):
            del self.got[:]
            portal = self.ping(self.inlet(flow=flow, early=False))
            self.assertEqual(self.payloads(), [], flow)
            self.connect_target()
            self.assertEqual(portal.state, OPEN)
            self.assertEqual(self.payloads(), [PONG], flow)
            portal.close()

    def test_data_held_until_connected(self):
        """
        Payloads and Eof that come before the target is connected are
        written, in order, once it is; then its write side is shut down.
        """
        inlet = self.inlet()
        portal = self.ping(inlet)
        for part in (b"GET / HTTP/1.0\r\n", b"\r\n"):
            self.node.send(Route([portal.address]), encode_payload(part), sender=inlet)
        self.node.send(Route([portal.address]), encode_eof(), sender=inlet)
        self.assertEqual(portal.state, CONNECTING)
        target = self.connect_target()
        self.assertEqual(target.value(), b"GET / HTTP/1.0\r\n\r\n")
        self.assertEqual(portal.bytes_out, 18)
        self.assertEqual(portal.state, WRITE_CLOSED)
        self.assertTrue(target.write_lost)
        # Data after the connection goes straight to the socket.
        self.assertEqual(portal._held, None)

    def test_stranger_not_held(self):
        """
        Once it answered Pong, the portal takes data only from the way its
        stream was opened: a Payload that comes another way (another
        connection or channel) while the target is being connected is
        refused by the node, not held and not written.
        """
        inlet = self.inlet()
        portal = self.ping(inlet)
        stranger = TransportMessage(Route([portal.address]), Route([inlet]), encode_payload(b"not yours"))
        stranger.origin = object()  # some other connection
        refused = self.node.refused
        self.node.deliver(stranger)
        self.assertEqual(self.node.refused, refused + 1)
        self.node.send(Route([portal.address]), encode_payload(b"mine"), sender=inlet)
        target = self.connect_target()
        self.assertEqual(target.value(), b"mine")

    def test_nothing_held_without_early_pong(self):
        """
        Without an early Pong nobody can know the portal's address yet; a
        Payload sent to it anyway is not written.
        """
        inlet = self.inlet(early=False)
        portal = self.ping(inlet)
        self.node.send(Route([portal.address]), encode_payload(b"guess"), sender=inlet)
        target = self.connect_target()
        self.assertEqual(target.value(), b"")

    def test_past_credit_ends_the_stream(self):
        """
        An inlet that sends more than its first credit allows before the
        target is connected: the portal ends (Disconnect), the connection
        attempt is cancelled and nothing is kept.
        """
        inlet = self.inlet()
        portal = self.ping(inlet)
        chunk = encode_payload(b"x" * MAX_CHUNK)
        sent = 0
        while portal.state == CONNECTING:
            self.node.send(Route([portal.address]), chunk, sender=inlet)
            sent += MAX_CHUNK
            self.assertLess(sent, 2 * STREAM_WINDOW)
        self.assertGreater(sent, STREAM_WINDOW)
        self.assertEqual(portal.state, DONE)
        self.assertEqual(self.payloads(), [PONG, DISCONNECT])
        self.assertIsNone(portal._held)
        self.assertEqual(self.outlet.portals, set())
        self.assertIsNone(portal.connecting)
        # A cancelled attempt is not a target that cannot be reached.
        self.assertEqual(self.outlet.refused, 0)

    def test_target_unreachable_after_pong(self):
        """
        The target refuses after the Pong went: the same portal sends
        Refuse (so the inlet's user learns why), and ends.
        """
        inlet = self.inlet()
        portal = self.ping(inlet)
        self.node.send(Route([portal.address]), encode_payload(b"hello"), sender=inlet)
        self.refuse_target()
        [(pong, _), (refuse, back)] = self.got
        self.assertEqual(pong, PONG)
        self.assertEqual(decode_refuse(refuse), "the outlet cannot reach its target")
        self.assertEqual(back, Route([portal.address]))
        self.assertEqual(portal.state, DONE)
        self.assertEqual((self.outlet.refused, self.outlet.portals), (1, set()))

    def test_disconnect_while_connecting(self):
        """
        The inlet's side ends (Disconnect) while the target is being
        connected: the attempt is cancelled, quietly (no Refuse, not counted
        as a target that cannot be reached), with or without an early Pong.
        """
        for early in (True, False):
            del self.got[:]
            inlet = self.inlet(early=early)
            portal = self.ping(inlet)
            self.node.send(Route([portal.address]), DISCONNECT, sender=inlet)
            self.assertEqual(portal.state, DONE)
            self.assertIsNone(portal.connecting)
            self.assertEqual(self.payloads(), [PONG] if early else [])
        self.assertEqual((self.outlet.refused, self.outlet.portals), (0, set()))


class EarlyPongSocketTests(PortalTestCase):
    """
    Through a relay, on loopback sockets: a target whose connection takes
    a while (the outlet's connection attempt starts 0.2 s late, as to a
    far-away target) gets every byte the client wrote meanwhile, in order,
    and its end of file.
    """

    timeout = 30

    @async_test
    async def test_data_waits_for_a_slow_target(self):
        targets, target_port = await self.start_target(Collector)
        t = await self.topology(target_port)
        held_at_connect = []
        connect = t.outlet._connect_target

        def slow_connect(portal, offered):
            def now():
                held_at_connect.append((portal.state, portal._held_bytes))
                connect(portal, offered)

            reactor.callLater(0.2, now)

        t.outlet._connect_target = slow_connect
        sent = random.Random(17).randbytes(300_000)
        client = await self.connect_client(t.inlet_port, Collector())
        client.transport.write(sent)
        client.transport.loseWriteConnection()
        [target] = await targets.accepted(1, 5, "the target connection")
        await target.when_lost(5, "the target's end of file")
        self.assertEqual(bytes(target.data), sent)
        # All of it had come before the target was connected: it waited in
        # the outlet's portal (each Payload counted with its 4-byte prefix).
        [(state, held)] = held_at_connect
        self.assertEqual(state, CONNECTING)
        self.assertGreaterEqual(held, len(sent))
        self.assertEqual(t.inlet.last_error, None)
        await client.when_lost(5, "the client closed after the stream ended")
        await self.no_portals_left(t)
