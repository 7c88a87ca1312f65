"""
Backpressure through TCP portals: a fast writer and a slow reader at the
other end (client or target) keep every node's memory bounded and hold the
writer back; deleting an inlet or outlet, or stopping the relay node, while
a socket is congested still closes it.

In-process nodes on the global reactor, real loopback sockets on port 0
(L{tests.portal_harness}).  The only timers are the slow readers' pace (the
behaviour under test) and the buffer sampler.  Measured figures are printed
on lines starting with C{FIGURE:}.
"""

from __future__ import annotations

import socket
import time

from twisted.internet import reactor
from twisted.internet.task import LoopingCall

from ockamtw.flow import STREAM_WINDOW

from .helpers import async_test, fresh_from, wait_until
from .portal_harness import (
    MIB,
    Collector,
    PortalTestCase,
    SlowCollector,
    StreamWriter,
    WriterTarget,
    figure,
    node_buffered,
    rss_bytes,
)


# --- slow readers: bounded memory --------------------------------------------------------


class SlowReaderTests(PortalTestCase):
    """
    A fast writer and a slow reader at the other end, through inlet ->
    relay -> outlet: every node keeps a bounded amount in memory, the writer
    is held back, and every byte arrives in order.

    The issue's reader reads 1 MB/s; these read 4 MB/s (and move 24 MB) so
    that each test takes about 6 s.  The client's send and the target's
    receive buffers are 64 KiB so that the kernel soaks up less.
    """

    timeout = 60
    RATE = 4_000_000
    SIZE = 24_000_000
    #: The most a node may hold for one stream: the node writing to the slow
    #: socket holds up to one credit window (docs/protocol.md, 6.1), the
    #: others at most their connections' buffers.
    NODE_BOUND = STREAM_WINDOW + MIB

    def _sampler(self, t):
        peaks = {"n1": 0, "n2": 0, "n3": 0, "sum": 0, "rss": 0}
        rss0 = rss_bytes()

        def sample():
            total = 0
            for name, node in (("n1", t.n1), ("n2", t.n2), ("n3", t.n3)):
                b = node_buffered(node)["total"]
                peaks[name] = max(peaks[name], b)
                total += b
            peaks["sum"] = max(peaks["sum"], total)
            peaks["rss"] = max(peaks["rss"], rss_bytes() - rss0)

        return peaks, sample

    async def _check_held_back(self, reader: Collector, writer: StreamWriter, peaks) -> None:
        # Mid-transfer: the reader has a quarter; the writer has been paused
        # and could not push everything into the pipeline.
        await reader.received(self.SIZE // 4, 20, "a quarter of the stream at the slow reader")
        in_flight = writer.sent - reader.count
        figure(
            f"slow reader at {self.RATE / 1e6:g} MB/s, at {reader.count / 1e6:.1f} MB read: "
            f"writer had sent {writer.sent / 1e6:.1f} of {self.SIZE / 1e6:g} MB "
            f"(in flight {in_flight / 1e6:.1f} MB, mostly kernel socket buffers), paused {writer.pauses} times"
        )
        self.assertGreater(writer.pauses, 0)
        self.assertLess(writer.sent, self.SIZE)

    def _check_peaks(self, peaks, direction: str) -> None:
        figure(
            f"slow {direction}: peak buffered in memory n1={peaks['n1'] / 1024:.0f} KiB "
            f"n2={peaks['n2'] / 1024:.0f} KiB n3={peaks['n3'] / 1024:.0f} KiB, "
            f"sum {peaks['sum'] / 1024:.0f} KiB for {self.SIZE / 1e6:g} MB moved; "
            f"process RSS growth {peaks['rss'] / MIB:.1f} MiB"
        )
        for name in ("n1", "n2", "n3"):
            self.assertLess(peaks[name], self.NODE_BOUND, (name, peaks))
        self.assertLess(peaks["sum"], self.NODE_BOUND + MIB, peaks)
        self.assertLess(peaks["rss"], self.SIZE // 2, peaks)
        self.assertGreater(peaks["sum"], 0, peaks)  # the sampler saw the stream

    @async_test
    async def test_slow_target(self):
        targets, target_port = await self.start_target(lambda: SlowCollector(self.RATE, self.SIZE))
        t = await self.topology(target_port)
        peaks, sample = self._sampler(t)
        sampler = LoopingCall(sample)
        sampler.clock = reactor
        sampler.start(0.02)
        self.addCleanup(lambda: sampler.running and sampler.stop())

        client = await self.connect_client(t.inlet_port, Collector(keep=False))
        client.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        writer = StreamWriter(client.transport, self.SIZE, seed=3, close=True)
        started = time.monotonic()
        writer.start()
        [target] = await targets.accepted(1, 10, "the target connection")
        await self._check_held_back(target, writer, peaks)

        await target.received(self.SIZE, 30, "the whole stream at the slow target")
        elapsed = time.monotonic() - started
        sampler.stop()
        self.assertEqual(target.count, self.SIZE)
        self.assertEqual(target.digest.hexdigest(), writer.digest.hexdigest())
        figure(f"slow target: {self.SIZE / 1e6:g} MB in {elapsed:.1f} s")
        self._check_peaks(peaks, "target")
        # The client closed after writing: the close reached the target.
        await target.when_lost(5, "the target closed after the client")
        await client.when_lost(5, "the client closed")
        await self.no_portals_left(t)

    @async_test
    async def test_slow_client(self):
        targets, target_port = await self.start_target(
            lambda: WriterTarget(self.SIZE, seed=4, close=True, small_sndbuf=True)
        )
        t = await self.topology(target_port)
        peaks, sample = self._sampler(t)
        sampler = LoopingCall(sample)
        sampler.clock = reactor
        sampler.start(0.02)
        self.addCleanup(lambda: sampler.running and sampler.stop())

        started = time.monotonic()
        client = await self.connect_client(t.inlet_port, SlowCollector(self.RATE, self.SIZE))
        [target] = await targets.accepted(1, 10, "the target connection")
        await self._check_held_back(client, target.writer, peaks)

        await client.received(self.SIZE, 30, "the whole stream at the slow client")
        elapsed = time.monotonic() - started
        sampler.stop()
        self.assertEqual(client.count, self.SIZE)
        self.assertEqual(client.digest.hexdigest(), target.writer.digest.hexdigest())
        figure(f"slow client: {self.SIZE / 1e6:g} MB in {elapsed:.1f} s")
        self._check_peaks(peaks, "client")
        await client.when_lost(5, "the client closed after the target")
        await self.no_portals_left(t)


class CloseWhileCongestedTests(PortalTestCase):
    """
    Closing a portal (or a node) while its socket has more than the
    high-water mark buffered for a slow reader must still close the socket
    and fire: Twisted keeps a transport open while a paused streaming
    producer is registered with it.
    """

    timeout = 40

    async def _congested(self, portal, what: str) -> None:
        await wait_until(
            lambda: portal.transport is not None and portal.transport.producerPaused,
            10,
            f"{what}'s socket congested",
        )

    def _abort_at_cleanup(self, portal) -> None:
        def abort():
            if portal.transport is not None:
                portal.transport.abortConnection()

        self.addCleanup(abort)

    @async_test
    async def test_delete_outlet_while_target_is_slow(self):
        targets, target_port = await self.start_target(lambda: SlowCollector(1_000_000, 10**9))
        t = await self.topology(target_port)
        client = await self.connect_client(t.inlet_port, Collector(keep=False))
        writer = StreamWriter(client.transport, 64 * MIB, seed=5)
        writer.start()
        [target] = await targets.accepted(1, 10, "the target connection")
        [out] = t.outlet.portals
        self._abort_at_cleanup(out)
        await self._congested(out, "the outlet portal")

        closed = fresh_from(t.n3.delete_outlet("outlet"))
        await self.within(closed, 3, "delete_outlet with a congested target socket")
        await target.when_lost(3, "the target's connection closed by delete_outlet")
        await client.when_lost(5, "the client closed after the outlet was deleted")
        self.assertIsNone(out.transport)
        await wait_until(lambda: not t.inlet.portals, 5, "no inlet portal left")

    @async_test
    async def test_delete_inlet_while_client_is_slow(self):
        targets, target_port = await self.start_target(
            lambda: WriterTarget(64 * MIB, seed=6, close=False, small_sndbuf=True)
        )
        t = await self.topology(target_port)
        client = await self.connect_client(t.inlet_port, SlowCollector(1_000_000, 10**9))
        [target] = await targets.accepted(1, 10, "the target connection")
        await wait_until(lambda: len(t.inlet.portals) == 1, 5, "the inlet portal")
        [inl] = t.inlet.portals
        self._abort_at_cleanup(inl)
        await self._congested(inl, "the inlet portal")

        closed = fresh_from(t.n1.delete_inlet(t.inlet.socket_address))
        await self.within(closed, 3, "delete_inlet with a congested client socket")
        await client.when_lost(3, "the client's connection closed by delete_inlet")
        await target.when_lost(5, "the target closed after the inlet was deleted")
        self.assertIsNone(inl.transport)

    @async_test
    async def test_stop_relay_node_while_congested(self):
        """
        n2's connection to n3 is congested by a slow target: stopping n2
        still closes it, and n2's stopService fires.  (Without per-stream
        credit, as with Ockam peers: with it, one slow stream does not
        congest the link.)
        """
        targets, target_port = await self.start_target(lambda: SlowCollector(1_000_000, 10**9))
        t = await self.topology(target_port, flow_control=False)
        client = await self.connect_client(t.inlet_port, Collector(keep=False))
        writer = StreamWriter(client.transport, 256 * MIB, seed=7)
        writer.start()
        await targets.accepted(1, 10, "the target connection")
        to_n3 = [c for c in t.n2.tcp.connections if c.socket_address == t.n3.tcp.connections[0].local_address]
        self.assertEqual(len(to_n3), 1)
        await wait_until(lambda: to_n3[0].congested, 10, "n2's connection to n3 congested")
        await self.within(self.stop_node(t.n2), 3, "n2 stopService with a congested connection")
        self.assertEqual(t.n2.tcp.connections, [])
