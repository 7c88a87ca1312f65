"""
L{ockamtw.flow.Closer}, used by portals and TCP connections to close a
transport: it flushes, and aborts only after C{grace} seconds without
progress (issue #10), never at a fixed time after the close.  In memory with
a fake transport and a Clock, and once on real loopback sockets.
"""

from __future__ import annotations

import socket

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from ockamtw import Address, Route
from ockamtw.flow import Closer

from .helpers import async_test, fresh_from, h_frame, h_message
from .portal_harness import PortalTestCase, SteadyReader


# --- in memory --------------------------------------------------------


class FakeTransport:
    """
    What a Closer sees of a Twisted TCP transport: its unsent bytes
    (C{dataBuffer[offset:]} plus C{_tempDataLen}) and how it is closed.
    """

    def __init__(self, unsent: int) -> None:
        self.dataBuffer = b"x" * unsent
        self.offset = 0
        self._tempDataLen = 0
        self.lost = False
        self.aborted = False
        self.unregistered = False

    def take(self, n: int) -> None:
        """
        The kernel takes C{n} bytes.
        """
        self.offset += n

    def unregisterProducer(self) -> None:
        self.unregistered = True

    def loseConnection(self) -> None:
        self.lost = True

    def abortConnection(self) -> None:
        self.aborted = True


class CloserTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.closer = Closer(self.clock)

    def test_flushes_while_bytes_move(self):
        t = FakeTransport(10_000_000)
        self.closer.close(t, 2.0)
        self.assertTrue(t.lost and t.unregistered)
        # Twenty seconds, ten times the grace, with a little progress each
        # second: never aborted.
        for _ in range(20):
            self.clock.advance(1.0)
            t.take(1000)
            self.assertFalse(t.aborted, self.clock.seconds())
        # Then no progress: aborted after the grace, not before.
        stalled_at = self.clock.seconds()
        while not t.aborted:
            self.clock.advance(0.01)
            self.assertLess(self.clock.seconds() - stalled_at, 2.0 + 2.0 / Closer.CHECKS + 0.02)
        self.assertGreaterEqual(self.clock.seconds() - stalled_at, 2.0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stalled_from_the_start(self):
        t = FakeTransport(1000)
        self.closer.close(t, 2.0)
        self.clock.advance(1.99)
        self.assertFalse(t.aborted)
        self.clock.advance(0.01)
        self.assertTrue(t.aborted)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_late_check_only_samples(self):
        # The event loop was held up for 5 s (no check ran): the first
        # check after it does not abort, the next one on time does if
        # still nothing moved, and progress in between keeps it open.
        t = FakeTransport(10_000)
        self.closer.close(t, 2.0)
        self.clock.advance(5.0)
        self.assertFalse(t.aborted)
        t.take(10)
        self.clock.advance(0.5)
        self.assertFalse(t.aborted)
        self.clock.advance(5.0)  # held up again, then nothing moves
        self.assertFalse(t.aborted)
        self.clock.advance(0.5)
        self.assertTrue(t.aborted)

    def test_limit(self):
        t = FakeTransport(10_000_000)
        self.closer.close(t, 2.0, limit=5.0)
        for _ in range(39):
            self.clock.advance(0.125)
            t.take(1000)
        self.assertFalse(t.aborted)
        self.clock.advance(0.125)
        self.assertTrue(t.aborted)

    def test_a_second_close_may_only_hurry(self):
        t = FakeTransport(10_000_000)
        self.closer.close(t, 30.0)
        self.clock.advance(1.0)
        t.take(10)
        self.closer.close(t, 2.0, limit=2.0)  # e.g. Inlet.close() while flushing
        self.closer.close(t, 60.0)  # changes nothing
        self.clock.advance(1.0)
        t.take(10)
        self.assertFalse(t.aborted)
        self.clock.advance(1.0)
        self.assertTrue(t.aborted)

    def test_closed_cancels_the_timer(self):
        t = FakeTransport(1000)
        self.closer.close(t, 2.0)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.closer.closed()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(10)
        self.assertFalse(t.aborted)

    def test_closed_at_once(self):
        # loseConnection may close at once (a socket whose write side is
        # shut down already): no timer is left, a later close does nothing.
        t = FakeTransport(0)
        t.loseConnection = self.closer.closed
        self.closer.close(t, 2.0, limit=5.0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.closer.close(t, 1.0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_transport_that_does_not_say(self):
        # No unsent count (not a Twisted socket transport): as before,
        # aborted after the grace.
        t = StringTransport()
        t.write(b"x" * 1000)
        aborted = []
        t.abortConnection = lambda: aborted.append(True)
        self.closer.close(t, 2.0)
        self.clock.advance(1.99)
        self.assertEqual(aborted, [])
        self.clock.advance(0.01)
        self.assertEqual(aborted, [True])


# --- on loopback sockets ----------------------------------------------------------------


class ConnectionCloseTests(PortalTestCase):
    timeout = 40

    @async_test
    async def test_tcp_connection_close_flushes_to_a_slow_peer(self):
        """
        A node's TCP connection (C{close_grace} shortened to 0.5 s):
        C{close()} with 2.4 MB buffered for a peer that reads 600 kB/s
        (a 64 KiB kernel send buffer, so the bytes wait in the transport).
        Every frame arrives.
        """
        size = 2_400_000
        frame = h_frame(h_message(["0#x"], [], b"p" * 60_000))
        total = len(frame) * (size // 60_000)
        peers, port = await self.start_target(lambda: SteadyReader(600_000, total))
        n1 = self.make_node("n1")
        conn = await n1.tcp.connect(f"127.0.0.1:{port}")
        conn.close_grace = 0.5
        conn.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        [peer] = await peers.accepted(1, 5, "the peer's connection")
        for _ in range(size // 60_000):
            n1.send(Route([conn.address, Address.parse("x")]), b"p" * 60_000)
        await self.within(fresh_from(conn.close()), 30, "the connection closed")
        await peer.received(total, 5, "every frame at the slow peer")
        self.assertEqual(peer.count, total)
