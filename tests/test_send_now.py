"""
flow.send_now: large writes go to the kernel at once; what it does not take
waits in the transport's buffer, in order, under the transport's flow
control.  Real loopback sockets, port 0.
"""

from __future__ import annotations

import hashlib
import random
import socket
from time import monotonic_ns

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ockamtw import flow
from ockamtw.flow import SEND_NOW_FROM, SMALL_SEND_GAP_NS, BackPressure, send_now

from ockamtw.access import ANYONE

from .helpers import async_test, deadline, outbound_buffered, start_node


class Sink(Protocol):
    def __init__(self) -> None:
        self.digest = hashlib.sha1()
        self.count = 0
        self.want = None

    def dataReceived(self, data: bytes) -> None:
        self.digest.update(data)
        self.count += len(data)
        if self.want is not None and self.count >= self.want[0] and not self.want[1].called:
            self.want[1].callback(None)

    def received(self, n: int) -> Deferred:
        d: Deferred = Deferred()
        self.want = (n, d)
        if self.count >= n:
            d.callback(None)
        return d


class SendNowTests(TestCase):
    timeout = 30

    async def _pair(self):
        made: Deferred = Deferred()

        class Accepted(Sink):
            def connectionMade(self) -> None:
                made.callback(self)

        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Factory.forProtocol(Accepted))
        self.addCleanup(port.stopListening)
        writer = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), Protocol())
        self.addCleanup(writer.transport.abortConnection)
        sink = await deadline(made, 5, "the accepted connection")
        self.addCleanup(sink.transport.abortConnection)
        return writer.transport, sink

    @async_test
    async def test_large_write_goes_at_once_small_waits(self):
        clock = [10**12]
        self.patch(flow, "monotonic_ns", lambda: clock[0])
        t, sink = await self._pair()
        big = b"b" * SEND_NOW_FROM
        send_now(t, [b"head", big], 4 + len(big))
        self.assertEqual(outbound_buffered(t), 0)  # the kernel has it
        send_now(t, [b"lone"], 4)
        self.assertEqual(outbound_buffered(t), 0)  # a lone small one too
        clock[0] += SMALL_SEND_GAP_NS - 1
        send_now(t, [b"small"], 5)
        self.assertEqual(outbound_buffered(t), 5)  # one soon after waits, to be coalesced
        send_now(t, [big], len(big))  # behind the small one, so buffered too
        self.assertEqual(outbound_buffered(t), 5 + len(big))
        await deadline(sink.received(8 + 2 * len(big) + 5), 5, "all of it")
        h = hashlib.sha1(b"head" + big + b"lone" + b"small" + big).hexdigest()
        self.assertEqual(sink.digest.hexdigest(), h)
        clock[0] += SMALL_SEND_GAP_NS
        send_now(t, [b"later"], 5)
        self.assertEqual(outbound_buffered(t), 0)

    @async_test
    async def test_order_and_flow_control_when_the_kernel_is_full(self):
        t, sink = await self._pair()
        t.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        sink.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sink.transport.pauseProducing()  # reads nothing for now
        bp = BackPressure()
        bp.attach(t)
        rng = random.Random(4)
        sent = hashlib.sha1()
        total = 0
        while not bp.congested:
            chunk = rng.randbytes(49152)
            head = total.to_bytes(8, "big")
            send_now(t, [head, chunk], len(head) + len(chunk))
            sent.update(head + chunk)
            total += len(head) + len(chunk)
            self.assertLess(total, 64 << 20, "never congested")
        # Congested: the transport holds more than its high-water mark.
        self.assertGreater(outbound_buffered(t), 0)
        sink.transport.resumeProducing()
        await deadline(sink.received(total), 10, "everything, once the reader reads")
        self.assertEqual(sink.digest.hexdigest(), sent.hexdigest())
        self.assertFalse(bp.congested)


class SendNowFallbackTests(SynchronousTestCase):
    def test_other_transports_buffer(self):
        t = StringTransport()
        send_now(t, [b"a", b"b" * SEND_NOW_FROM], SEND_NOW_FROM + 1)
        self.assertEqual(t.value(), b"a" + b"b" * SEND_NOW_FROM)


class GatherTests(TestCase):
    """
    A link (L{ockamtw.transport.tcp.TcpConnection}) writes a lone small
    frame at once, gathers the small frames of a burst and sends them
    together once the reactor has handled the round's events, and loses
    none of them when it is closed right after the burst.  Real nodes on
    loopback sockets.
    """

    timeout = 30

    async def _link(self):
        from ockamtw import Route, Worker

        got: list = []
        done: Deferred = Deferred()

        class Sink(Worker):
            def receive(self, message):
                got.append(message.payload)
                if len(got) == self.want and not done.called:
                    done.callback(None)

        receiver, listener = await start_node(self, "receiver", "tcp:0:interface=127.0.0.1")
        sink = Sink()
        sink.want = None
        receiver.start_worker("sink", sink, access=ANYONE)
        sender, _ = await start_node(self, "sender")
        conn = await sender.tcp.connect(f"127.0.0.1:{listener.port}")
        route = Route([conn.address, "sink"])
        self._steady_clock()
        return sender, conn, route, sink, got, done

    def _steady_clock(self) -> None:
        """
        The link's clock reads 1 us later each time it is read, from well
        after any real reading: the first frame is lone and the ones the
        test sends after it come close together, however loaded the
        machine is (a process descheduled between two sends made the next
        frame lone, and the burst's groups fell elsewhere).
        """
        from ockamtw.transport import tcp

        now = [monotonic_ns() + 10**12]

        def tick() -> int:
            now[0] += 1000
            return now[0]

        self.patch(tcp, "monotonic_ns", tick)

    @async_test
    async def test_a_burst_leaves_together_in_order(self):
        sender, conn, route, sink, got, done = await self._link()
        sink.want = 50
        sender.send(route, b"first")  # lone: straight to the kernel
        self.assertIsNone(conn._gathered)
        self.assertEqual(outbound_buffered(conn.transport), 0)
        for i in range(1, 50):
            sender.send(route, b"m%d" % i)
        # The burst waits in one list, not in Twisted's buffer (which would
        # wait for the socket to be reported writable) ...
        self.assertIsNotNone(conn._gathered)
        self.assertEqual(outbound_buffered(conn.transport), 0)
        self.assertGreater(conn.unsent(), 0)  # ... and counts as unsent
        await deadline(done, 10, "the burst")
        self.assertEqual(got, [b"first"] + [b"m%d" % i for i in range(1, 50)])
        self.assertIsNone(conn._gathered)
        self.assertEqual(conn.unsent(), 0)

    @async_test
    async def test_a_long_burst_leaves_in_groups(self):
        # Every GATHER_FRAMES gathered frames go to the kernel without
        # waiting for the end of the round, so the next node can start.
        from ockamtw.transport.tcp import GATHER_FRAMES

        sender, conn, route, sink, got, done = await self._link()
        total = 3 * GATHER_FRAMES + 2
        sink.want = total
        sender.send(route, b"first")  # lone: straight to the kernel
        sent_before = conn._taken()
        for i in range(1, total):
            sender.send(route, b"m%d" % i)
        # Three groups left during the burst; what follows waits for the round.
        self.assertEqual(conn._gathered_frames, (total - 1) % GATHER_FRAMES)
        self.assertEqual(len(conn._gathered), 2 * ((total - 1) % GATHER_FRAMES))
        self.assertGreater(conn._taken(), sent_before)
        self.assertEqual(outbound_buffered(conn.transport), 0)
        await deadline(done, 10, "the burst")
        self.assertEqual(got, [b"first"] + [b"m%d" % i for i in range(1, total)])
        self.assertIsNone(conn._gathered)
        self.assertEqual(conn.unsent(), 0)

    @async_test
    async def test_a_burst_of_larger_frames_waits_for_the_round(self):
        # Frames that are not small wait for the end of the round together
        # (see GATHER_EARLY_BYTES: early small writes slowed a reader with
        # a small receive buffer for good).
        from ockamtw.transport.tcp import GATHER_EARLY_BYTES, GATHER_FRAMES

        sender, conn, route, sink, got, done = await self._link()
        total = 3 * GATHER_FRAMES
        size = GATHER_EARLY_BYTES // GATHER_FRAMES
        sink.want = total + 1
        sender.send(route, b"first")
        for i in range(total):
            sender.send(route, b"%05d" % i + b"x" * size)
        self.assertEqual(conn._gathered_frames, total)
        await deadline(done, 10, "the burst")
        self.assertEqual(got[1:], [b"%05d" % i + b"x" * size for i in range(total)])

    async def _burst_then(self, end):
        """
        Send a burst of 20 small messages on a link, then C{end(sender,
        conn)}; every message must arrive, in order.
        """
        sender, conn, route, sink, got, done = await self._link()
        sink.want = 20
        for i in range(20):
            sender.send(route, b"m%d" % i)
        self.assertIsNotNone(conn._gathered)
        await deadline(end(sender, conn), 10, "the end of the link")
        await deadline(done, 10, "every message of the burst")
        self.assertEqual(got, [b"m%d" % i for i in range(20)])

    @async_test
    async def test_close_after_a_burst_loses_nothing(self):
        await self._burst_then(lambda sender, conn: conn.close())

    @async_test
    async def test_node_stop_after_a_burst_loses_nothing(self):
        await self._burst_then(lambda sender, conn: sender.stopService())
