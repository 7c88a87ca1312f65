"""
How portals end (issue #10): nothing is cut while bytes still move,
half-close is carried between ockamtw portals, and nothing is left behind.
(The Closer itself: L{tests.test_closer}; the Eof codec:
L{tests.test_portal_codec}.)

- L{SlowReaderFlushTests}: a slow client after the target closed: every
  byte arrives.
- L{HalfCloseTests}: request, shutdown of the write side, reply; a target
  that shuts down its write side first; through a relay, directly, and
  end to end in a secure channel.
- L{Ockam083HalfCloseTests}: with a peer that does not offer C{.fc1} a read
  EOF is a Disconnect, as in Ockam 0.83, byte for byte with raw peers.
- L{CloseWaitsTests}: C{Inlet.close()} waits for a socket still flushing.

Real loopback sockets on port 0; every wait is bounded; nothing sleeps.
"""

from __future__ import annotations

import hashlib
import random
import socket

from twisted.internet import reactor
from twisted.internet.interfaces import IHalfCloseableProtocol
from zope.interface import implementer

from ockamtw.flow import Closer
from ockamtw.portal import FLOW_MARK, PortalWorker

from .helpers import async_test, fresh_from, h_frame, h_message, wait_until
from .portal_harness import (
    HEX32,
    Collector,
    PortalTestCase,
    RawPeer,
    SteadyReader,
    WriterTarget,
    h_payload,
    r_frame,
)


# --- integration helpers ------------------------------------------------------------------


def stream_timers() -> list:
    """
    The reactor's delayed calls that belong to a portal or a Closer.
    """
    out = []
    for dc in reactor.getDelayedCalls():
        owner = getattr(dc.func, "__self__", None)
        if isinstance(owner, (Closer, PortalWorker)):
            out.append(dc)
    return out


@implementer(IHalfCloseableProtocol)
class AnswerTarget(Collector):
    """
    Reads a request until end of file, then writes its answer (the SHA-1 of
    the request, then C{size} pseudo-random bytes) and closes.
    """

    def __init__(self, size: int, seed: int) -> None:
        Collector.__init__(self)
        self.size = size
        self.seed = seed
        self.got_eof = False

    def readConnectionLost(self) -> None:
        self.got_eof = True
        self.transport.write(answer(bytes(self.data), self.size, self.seed))
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


def answer(request: bytes, size: int, seed: int) -> bytes:
    return hashlib.sha1(request).digest() + random.Random(seed).randbytes(size)


class HalfClosingWriter:
    """
    A mixin for a protocol with C{request} and C{got_eof}: once connected it
    writes C{request} and shuts down its write side; at end of file it
    closes.
    """

    def connectionMade(self) -> None:
        super().connectionMade()
        self.transport.write(self.request)
        self.transport.loseWriteConnection()

    def readConnectionLost(self) -> None:
        self.got_eof = True
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


@implementer(IHalfCloseableProtocol)
class WriteThenHalfClose(HalfClosingWriter, Collector):
    """
    Writes C{data} and shuts down its write side at once, then reads until
    end of file and closes: a client sending a request, or a target
    sending a greeting.
    """

    def __init__(self, data: bytes) -> None:
        Collector.__init__(self)
        self.request = data
        self.got_eof = False


RequestClient = GreeterTarget = WriteThenHalfClose


@implementer(IHalfCloseableProtocol)
class ReplyAfterEofClient(Collector):
    """
    Reads until end of file, then writes C{reply}, shuts down its write side
    and closes.
    """

    def __init__(self, reply: bytes) -> None:
        Collector.__init__(self)
        self.reply = reply
        self.got_eof = False

    def readConnectionLost(self) -> None:
        self.got_eof = True
        self.transport.write(self.reply)
        self.transport.loseWriteConnection()

    def writeConnectionLost(self) -> None:
        self.transport.loseConnection()


@implementer(IHalfCloseableProtocol)
class SlowRequestClient(HalfClosingWriter, SteadyReader):
    """
    A L{RequestClient} that reads the answer slowly (L{SteadyReader}).
    """

    def __init__(self, request: bytes, rate: float) -> None:
        SteadyReader.__init__(self, rate, 10**12)
        self.request = request
        self.got_eof = False


# --- 1. slow readers get everything ---------------------------------------------------------


def small_sndbuf(transport) -> None:
    """
    A kernel send buffer of 64 KiB on a socket of the node under test.
    Linux grows a loopback socket's send buffer up to 4 MiB
    (C{net.ipv4.tcp_wmem}), which would swallow these tests' streams at
    once; a fixed small one keeps the bytes in the transport, as on a host
    where the kernel buffers less or with a bigger stream.
    """
    transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)


class SlowReaderFlushTests(PortalTestCase):
    """
    Issue #10, item 1: the target writes a stream and closes; the client
    reads it slowly.  The portal's flush grace is shortened to 0.5 s and
    the transfer takes several seconds: it must not be cut.
    """

    timeout = 60
    SIZE = 1_000_000
    RATE = 500_000  # about 2 s
    GRACE = 0.5

    async def _slow_client_after_close(self, flow_control: bool, size: int, rate: float):
        self.patch(PortalWorker, "flush_grace", self.GRACE)
        targets, target_port = await self.start_target(
            lambda: WriterTarget(size, seed=31, close=True, small_sndbuf=True)
        )
        t = await self.topology(target_port, flow_control=flow_control)
        client = await self.connect_client(t.inlet_port, SteadyReader(rate, size))
        await wait_until(lambda: len(t.inlet.portals) == 1, 5, "the inlet's portal")
        [inl] = t.inlet.portals
        small_sndbuf(inl.transport)
        [target] = await targets.accepted(1, 10, "the target connection")
        await target.when_lost(20, "the target done writing and closed")
        await client.received(size, 30, "the whole stream at the slow client")
        self.assertEqual(client.count, size)
        self.assertEqual(client.digest.hexdigest(), target.writer.digest.hexdigest())
        await client.when_lost(5, "the client closed after the stream")
        await self.no_portals_left(t)
        self.assertEqual(stream_timers(), [])

    @async_test
    async def test_slow_client_after_target_closed(self):
        # The target's close is an Eof: the inlet holds up to a credit
        # window for the client when it arrives.
        await self._slow_client_after_close(True, self.SIZE, self.RATE)

    @async_test
    async def test_slow_client_after_target_closed_without_credit(self):
        # The target's close is a Disconnect; link pausing keeps the inlet's
        # share small (a few hundred KB), so the reader is slower here
        # (300 kB/s, about 4 s) for that share to outlast the grace.
        await self._slow_client_after_close(False, 1_200_000, 300_000)

    @async_test
    async def test_slow_client_after_both_ends(self):
        """
        Between ockamtw portals: the client sent its request and shut down
        its write side, the target answered and closed, so the stream is
        over at the inlet; its socket is still flushed to the slow client.
        """
        self.patch(PortalWorker, "flush_grace", self.GRACE)
        targets, target_port = await self.start_target(lambda: AnswerTarget(self.SIZE, seed=32))
        t = await self.topology(target_port)
        client = await self.connect_client(t.inlet_port, SlowRequestClient(b"request", self.RATE))
        await wait_until(lambda: len(t.inlet.portals) == 1, 5, "the inlet's portal")
        [inl] = t.inlet.portals
        small_sndbuf(inl.transport)
        [target] = await targets.accepted(1, 10, "the target connection")
        await target.when_lost(20, "the target answered and closed")
        await wait_until(lambda: inl.finished, 10, "the inlet's portal done (both ends of file)")
        self.assertIsNotNone(inl.transport)  # still flushing
        want = 20 + self.SIZE
        await client.received(want, 30, "the whole answer at the slow client")
        self.assertEqual(client.count, want)
        await client.when_lost(5, "the client closed after the answer")
        self.assertTrue(client.got_eof)
        await self.no_portals_left(t)
        self.assertEqual(stream_timers(), [])


# --- 2. half-close between ockamtw portals ----------------------------------------------------------


class HalfCloseTests(PortalTestCase):
    """
    Issue #10, item 2: a client that shuts down its write side gets the
    answer through a portal, as it does directly.
    """

    timeout = 40
    REQUEST = random.Random(41).randbytes(300_000)

    async def _direct(self, target_port: int):
        """
        n1 (inlet) -> n3 (outlet), no relay.
        """
        n3, listener = await self.listening_node("n3")
        outlet = await n3.create_outlet("outlet", f"127.0.0.1:{target_port}")
        n1 = self.make_node("n1")
        inlet = await n1.create_inlet("127.0.0.1:0", f"/ip4/127.0.0.1/tcp/{listener.port}/service/outlet")
        return inlet, outlet, int(inlet.socket_address.rsplit(":", 1)[1])

    async def _topology(self, target_port: int, relay: bool, secure: bool = False):
        if relay:
            t = await self.topology(target_port)
            if secure:
                # n1 -> n2 (relay) -> n3, end to end in a secure channel.
                inlet = await t.n1.create_inlet(
                    "127.0.0.1:0", f"{t.at}/service/forward_to_n3/secure/api/service/outlet"
                )
                return inlet, t.outlet, int(inlet.socket_address.rsplit(":", 1)[1])
            return t.inlet, t.outlet, t.inlet_port
        return await self._direct(target_port)

    async def _ended(self, inlet, outlet) -> None:
        await wait_until(
            lambda: not inlet.portals and not outlet.portals and not stream_timers(),
            5,
            "portals gone and their timers too",
        )

    async def _request_reply(self, relay: bool, secure: bool = False):
        size = 1_000_000
        targets, target_port = await self.start_target(lambda: AnswerTarget(size, seed=42))
        inlet, outlet, inlet_port = await self._topology(target_port, relay, secure)
        client = await self.connect_client(inlet_port, RequestClient(self.REQUEST))
        [target] = await targets.accepted(1, 10, "the target connection")
        await target.when_lost(10, "the target answered and closed")
        self.assertTrue(target.got_eof)
        self.assertEqual(bytes(target.data), self.REQUEST)
        await client.when_lost(10, "the client read the answer to its end")
        self.assertEqual(len(client.data), 20 + size)
        self.assertEqual(bytes(client.data), answer(self.REQUEST, size, 42))
        self.assertTrue(client.got_eof)
        if secure:
            self.assertEqual(len(inlet.node.secure_channels), 1)
        await self._ended(inlet, outlet)

    @async_test
    async def test_request_shutdown_reply_through_relay(self):
        await self._request_reply(relay=True)

    @async_test
    async def test_request_shutdown_reply_direct(self):
        await self._request_reply(relay=False)

    @async_test
    async def test_request_shutdown_reply_through_secure_channel(self):
        await self._request_reply(relay=True, secure=True)

    async def _target_first(self, relay: bool, secure: bool = False):
        greeting = random.Random(43).randbytes(500_000)
        reply = random.Random(44).randbytes(300_000)
        targets, target_port = await self.start_target(lambda: GreeterTarget(greeting))
        inlet, outlet, inlet_port = await self._topology(target_port, relay, secure)
        client = await self.connect_client(inlet_port, ReplyAfterEofClient(reply))
        [target] = await targets.accepted(1, 10, "the target connection")
        await target.when_lost(10, "the target read the client's reply to its end")
        self.assertTrue(target.got_eof)
        self.assertEqual(len(target.data), len(reply))
        self.assertEqual(bytes(target.data), reply)
        await client.when_lost(10, "the client closed")
        self.assertTrue(client.got_eof)
        self.assertEqual(bytes(client.data), greeting)
        await self._ended(inlet, outlet)

    @async_test
    async def test_target_shuts_down_first_through_relay(self):
        await self._target_first(relay=True)

    @async_test
    async def test_target_shuts_down_first_direct(self):
        await self._target_first(relay=False)

    @async_test
    async def test_target_shuts_down_first_through_secure_channel(self):
        await self._target_first(relay=True, secure=True)

    @async_test
    async def test_many_half_closed_streams(self):
        """
        Fifty clients at once, each request, shutdown, answer: every answer
        whole, nothing left behind.
        """
        n = 50
        targets, target_port = await self.start_target(lambda: AnswerTarget(100_000, seed=45))
        inlet, outlet, inlet_port = await self._topology(target_port, relay=True)
        clients = [
            await self.connect_client(inlet_port, RequestClient(b"request %d" % i)) for i in range(n)
        ]
        for i, c in enumerate(clients):
            await c.when_lost(20, f"client {i} read its answer")
            self.assertEqual(bytes(c.data), answer(b"request %d" % i, 100_000, 45))
        await self._ended(inlet, outlet)

    @async_test
    async def test_disconnect_while_half_closed(self):
        """
        The client shut down its write side and the target never answers;
        deleting the outlet still closes both sockets (Disconnect), and
        the inlet's close fires.
        """
        targets, target_port = await self.start_target(Collector)
        inlet, outlet, inlet_port = await self._topology(target_port, relay=False)
        client = await self.connect_client(inlet_port, RequestClient(b"hello?"))
        [target] = await targets.accepted(1, 10, "the target connection")
        await target.received(6, 5, "the request at the target")
        [inl] = inlet.portals
        await wait_until(lambda: inl.read_done, 5, "the inlet saw the client's end of file")
        self.assertFalse(inl.finished)
        await self.within(fresh_from(outlet.close()), 5, "Outlet.close()")
        await target.when_lost(5, "the target closed")
        await client.when_lost(5, "the client closed after Disconnect")
        self.assertEqual(bytes(client.data), b"")
        await self._ended(inlet, outlet)


# --- 2b. with an Ockam 0.83 peer: a read EOF is a Disconnect ---------------------------------------


class Ockam083HalfCloseTests(PortalTestCase):
    timeout = 30

    @async_test
    async def test_outlet_without_flow_control(self):
        """
        An outlet that does not offer C{.fc1} (as Ockam's): the client's
        shutdown closes the whole stream, as in 0.83; the request still
        arrives, the answer does not.
        """
        targets, target_port = await self.start_target(lambda: AnswerTarget(1000, seed=46))
        t = await self.topology(target_port, outlet=False)
        t.outlet = await t.n3.create_outlet("outlet", t.target, flow_control=False)
        client = await self.connect_client(t.inlet_port, RequestClient(b"request"))
        [target] = await targets.accepted(1, 10, "the target connection")
        await client.when_lost(5, "the client closed at once")
        self.assertEqual(bytes(client.data), b"")
        await target.when_lost(5, "the target closed")
        self.assertEqual(bytes(target.data), b"request")
        await self.no_portals_left(t)

    async def _open_raw(self, mark: bool, client=None):
        """
        An inlet to a raw peer that plays an outlet node, with (ockamtw) or
        without (Ockam 0.83) the C{.fc1} mark; a client (by default one
        that writes C{request} and shuts down its write side).
        """
        n1, conn, peer, inlet = await self.inlet_to_raw_peer()
        if client is None:
            client = RequestClient(b"request")
        client = await self.connect_client(int(inlet.socket_address.rsplit(":", 1)[1]), client)
        [ping] = await peer.frames_arrived(1)
        inl = r_frame(ping)[1][0][2:]
        self.assertTrue(inl.endswith(FLOW_MARK))
        out = "8" * 32 + (FLOW_MARK if mark else "")
        del peer.frames[:]
        peer.send([f"0#{inl}"], [f"0#{out}"], b"\x01")  # Pong
        return n1, peer, inlet, client, inl, out

    async def _nothing_more(self, peer: RawPeer) -> None:
        """
        Whatever n1 sent before now has arrived: the echo's reply is next.
        """
        before = len(peer.frames)
        peer.send(["0#echo"], ["0#" + "3" * 32], b"sync")
        frames = await peer.frames_arrived(before + 1)
        self.assertEqual(len(frames), before + 1, [f[:40].hex() for f in frames[before:]])
        self.assertEqual(r_frame(frames[-1])[2], b"sync")
        del peer.frames[before:]

    @async_test
    async def test_raw_ockam_outlet_peer_gets_disconnect(self):
        """
        To an Ockam 0.83 outlet: the request, then Disconnect (02); the
        client's socket is closed at once.
        """
        n1, peer, inlet, client, inl, out = await self._open_raw(mark=False)
        frames = await peer.frames_arrived(2)
        self.assertEqual(
            frames,
            [
                h_frame(h_message([f"0#{out}"], [f"0#{inl}"], h_payload(b"request"))),
                h_frame(h_message([f"0#{out}"], [f"0#{inl}"], b"\x02")),
            ],
        )
        await client.when_lost(5, "the client closed")
        self.assertEqual(bytes(client.data), b"")
        await wait_until(lambda: not inlet.portals, 5, "the inlet portal gone")
        await self._nothing_more(peer)
        self.assertEqual(len(peer.frames), 2)

    @async_test
    async def test_raw_ockamtw_outlet_peer_gets_eof(self):
        """
        To an outlet that offers C{.fc1}: the request, then Eof (05); the
        client keeps reading.  The peer's answer and Eof reach the client,
        which sees its end of file; the portal ends without Disconnect.
        """
        n1, peer, inlet, client, inl, out = await self._open_raw(mark=True)
        frames = await peer.frames_arrived(2)
        self.assertEqual(
            frames,
            [
                h_frame(h_message([f"0#{out}"], [f"0#{inl}"], h_payload(b"request"))),
                h_frame(h_message([f"0#{out}"], [f"0#{inl}"], b"\x05")),
            ],
        )
        # The documented bytes (docs/protocol.md, 6.2): 0054 01 | 01 00 24
        # OUT | 01 00 27 INL | 01 05.
        self.assertEqual(
            frames[1],
            bytes.fromhex("0054" "01" "01" "00" "24") + out.encode() + bytes.fromhex("01" "00" "27") + inl.encode()
            + bytes.fromhex("01" "05"),
        )
        [portal] = inlet.portals
        self.assertTrue(portal.read_done)
        self.assertFalse(portal.finished)
        self.assertTrue(client.connected_now)
        peer.send([f"0#{inl}"], [f"0#{out}"], h_payload(b"answer"))
        peer.send([f"0#{inl}"], [f"0#{out}"], b"\x05")
        await client.when_lost(5, "the client read the answer to its end")
        self.assertEqual(bytes(client.data), b"answer")
        self.assertTrue(client.got_eof)
        await wait_until(lambda: not inlet.portals and not stream_timers(), 5, "the inlet portal gone")
        await self._nothing_more(peer)
        self.assertEqual(len(peer.frames), 2)  # no Disconnect

    @async_test
    async def test_eof_from_a_peer_without_the_mark_is_dropped(self):
        """
        Eof is an ockamtw extension: from a portal without C{.fc1} it is an
        unknown message and changes nothing.
        """
        n1, peer, inlet, client, inl, out = await self._open_raw(mark=False, client=Collector())
        [portal] = inlet.portals
        await wait_until(lambda: portal.remote_route is not None, 5, "the Pong at the inlet")
        self.assertFalse(portal.flow)
        peer.send([f"0#{inl}"], [f"0#{out}"], b"\x05")
        peer.send([f"0#{inl}"], [f"0#{out}"], h_payload(b"still open"))
        await client.received(10, 5, "a Payload after the ignored Eof")
        self.assertEqual(bytes(client.data), b"still open")
        self.assertTrue(client.connected_now)
        self.assertFalse(portal.finished)

    @async_test
    async def test_raw_ockam_inlet_peer_at_outlet(self):
        """
        An Ockam 0.83 inlet (plain address) at an outlet whose target shuts
        down its write side: the greeting, then Disconnect (02).  With
        C{.fc1}: the greeting, then Eof (05), and the peer may still send.
        """
        greeting = b"greeting"
        for mark in (False, True):
            targets, target_port = await self.start_target(lambda: GreeterTarget(greeting))
            n3, listener = await self.listening_node("n3%s" % ("m" if mark else ""))
            outlet = await n3.create_outlet("outlet", f"127.0.0.1:{target_port}")
            peer = await self.connect_client(listener.port, RawPeer())
            inl = "6" * 32 + (FLOW_MARK if mark else "")
            peer.send(["0#outlet"], [f"0#{inl}"], b"\x00")
            frames = await peer.frames_arrived(3)
            onward, ret, payload = r_frame(frames[0])
            self.assertEqual(payload, b"\x01")
            out = ret[0][2:]
            self.assertEqual(out.endswith(FLOW_MARK), mark)
            if not mark:
                self.assertRegex(out.encode(), HEX32)
            self.assertEqual(
                frames[1:3],
                [
                    h_frame(h_message([f"0#{inl}"], [f"0#{out}"], h_payload(greeting))),
                    h_frame(h_message([f"0#{inl}"], [f"0#{out}"], b"\x05" if mark else b"\x02")),
                ],
            )
            [target] = targets.protocols
            if mark:
                self.assertEqual(len(outlet.portals), 1)
                peer.send([f"0#{out}"], [f"0#{inl}"], h_payload(b"thanks"))
                peer.send([f"0#{out}"], [f"0#{inl}"], b"\x05")
                await target.when_lost(5, "the target read the peer's bytes to their end")
                self.assertEqual(bytes(target.data), b"thanks")
                self.assertTrue(target.got_eof)
            else:
                await target.when_lost(5, "the target closed on the outlet's Disconnect")
                self.assertEqual(bytes(target.data), b"")
            await wait_until(lambda: not outlet.portals and not stream_timers(), 5, "the outlet portal gone")


# --- 3. nothing left behind ----------------------------------------------------------------------------


class CloseWaitsTests(PortalTestCase):
    """
    Issue #10, item 3: a portal whose stream has ended but whose socket is
    still flushing to a slow client belongs to its inlet until the socket
    is closed: C{Inlet.close()} (here C{delete_inlet}) closes it too,
    within its C{close_grace}, and fires only once it is closed.
    """

    timeout = 40

    async def _close_while_flushing(self, flow_control: bool):
        if flow_control:
            # Request, shutdown, answer and close: the stream ends at the
            # inlet with both ends of file.
            make_target = lambda: AnswerTarget(800_000, seed=52)
            client_proto = SlowRequestClient(b"request", 300_000)
        else:
            # As with Ockam peers: the target's close is a Disconnect.
            make_target = lambda: WriterTarget(800_000, seed=51, close=True, small_sndbuf=True)
            client_proto = SteadyReader(300_000, 10**9)
        targets, target_port = await self.start_target(make_target)
        t = await self.topology(target_port, flow_control=flow_control)
        client = await self.connect_client(t.inlet_port, client_proto)
        await wait_until(lambda: len(t.inlet.portals) == 1, 5, "the inlet's portal")
        [inl] = t.inlet.portals
        small_sndbuf(inl.transport)
        [target] = await targets.accepted(1, 10, "the target connection")
        await target.when_lost(10, "the target wrote everything and closed")
        await wait_until(lambda: inl.finished, 10, "the inlet's portal ended, flushing")
        self.assertIsNotNone(inl.transport)
        self.assertEqual(t.inlet.portals, {inl})
        self.assertFalse(client.lost.called)
        closed = fresh_from(t.n1.delete_inlet(t.inlet.socket_address))
        await self.within(closed, inl.close_grace + 2, "delete_inlet with a socket still flushing")
        self.assertIsNone(inl.transport)
        self.assertEqual(t.inlet.portals, set())
        await client.when_lost(2, "the client's connection closed")
        self.assertEqual(stream_timers(), [])

    @async_test
    async def test_inlet_close_waits_for_a_flushing_socket(self):
        await self._close_while_flushing(True)

    @async_test
    async def test_inlet_close_waits_for_a_flushing_socket_without_credit(self):
        await self._close_while_flushing(False)
