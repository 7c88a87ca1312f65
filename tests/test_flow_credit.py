"""
Per-stream flow control between ockamtw portals (docs/protocol.md,
"Per-stream flow control"): a stalled stream does not stall the other
streams on its links, memory per stream stays bounded, and peers that do not
offer it (Ockam's Rust nodes) see the bytes they always saw.

Real loopback sockets, port 0, bounded waits.
"""

from __future__ import annotations

import random
import socket
import time


from ockamtw import Address, Route
from ockamtw.flow import STREAM_WINDOW, TRANSPORT_BUFFER
from ockamtw.portal import FLOW_CHUNK, FLOW_MARK, GRANT_STEP, MAX_CHUNK, offers_flow_control, portal_address
from ockamtw.wire import PORTAL_CREDIT_STRUCT, WireError, decode_credit, encode_credit

from .helpers import async_test, h_frame, h_message, outbound_buffered, uvarint, wait_until
from .portal_harness import (
    HEX32_EP_FC,
    HEX32_FC,
    MIB,
    Collector,
    EchoTarget,
    PortalTestCase,
    StreamWriter,
    figure,
    h_payload,
    node_buffered,
    r_frame,
    r_portal_payload,
)
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from ockamtw.node import BaseNode, FunctionWorker
from ockamtw.portal import PortalWorker
from ockamtw.wire import encode_payload



class StallTarget(Collector):
    """
    A target that reads nothing until C{release()} (small kernel receive
    buffer, so the kernel soaks up little).
    """

    def __init__(self) -> None:
        Collector.__init__(self, keep=False)

    def connectionMade(self) -> None:
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        self.transport.pauseProducing()
        Collector.connectionMade(self)

    def release(self) -> None:
        self.transport.resumeProducing()


class CreditCodecTests(SynchronousTestCase):
    """
    The Credit message: tag 04, then a uvarint, as declared with construct.
    """

    def test_bytes(self):
        for limit in (0, 1, 127, 128, STREAM_WINDOW, 2**40, 2**64 - 1):
            data = encode_credit(limit)
            self.assertEqual(data, b"\x04" + uvarint(limit))
            self.assertEqual(PORTAL_CREDIT_STRUCT.build({"limit": limit}), data)
            self.assertEqual(PORTAL_CREDIT_STRUCT.parse(data).limit, limit)
            self.assertEqual(decode_credit(data), limit)

    def test_documented_example(self):
        # docs/protocol.md, "Per-stream flow control".
        self.assertEqual(encode_credit(655360), bytes.fromhex("04 80 80 28"))
        self.assertEqual(STREAM_WINDOW, 4 * MIB)

    def test_bad(self):
        for data in (b"", b"\x03\x01", b"\x04", b"\x04\x80", b"\x04\x01\x00", b"\x04" + b"\xff" * 10 + b"\x01"):
            self.assertRaises(WireError, decode_credit, data)
        self.assertRaises(WireError, encode_credit, -1)
        self.assertRaises(WireError, encode_credit, 2**64)

    def test_mark(self):
        a = portal_address(True)
        self.assertTrue(a.value.endswith(FLOW_MARK))
        self.assertTrue(offers_flow_control(a))
        b = portal_address(False)
        self.assertRegex(b.value, "^[0-9a-f]{32}$")
        self.assertFalse(offers_flow_control(b))
        self.assertFalse(offers_flow_control(Address(1, "127.0.0.1:4000" + FLOW_MARK)))


class _Owner:
    """
    What a portal needs of its inlet or outlet.
    """

    authorized = None

    def __init__(self, node) -> None:
        self.node = node
        self.finished = []

    def _portal_finished(self, portal) -> None:
        self.finished.append(portal)


class CreditInMemoryTests(SynchronousTestCase):
    """
    One portal worker on a node with a fake clock, its socket a
    StringTransport, its other side a worker that records what it gets.
    """

    def setUp(self):
        self.node = BaseNode(MemoryReactorClock(), name="m")
        self.got = []
        self.peer = self.node.start_worker(
            portal_address(True), FunctionWorker(lambda w, m: self.got.append(m.payload))
        )
        self.portal = PortalWorker(_Owner(self.node))
        self.node.start_worker(portal_address(True), self.portal)
        self.transport = StringTransport()
        self.portal._socket_made(self.transport)
        self.portal.set_remote(Route([self.peer]))

    def test_sender_pauses_its_socket_out_of_credit(self):
        portal = self.portal
        self.assertTrue(portal.flow)
        chunk = b"s" * MAX_CHUNK
        while portal.bytes_in < STREAM_WINDOW:
            self.assertEqual(self.transport.producerState, "producing")
            portal._socket_data(chunk)
        self.assertEqual(self.transport.producerState, "paused")
        self.assertTrue(portal.credit_paused)
        self.assertEqual(sum(len(p) for p in self.got), portal.bytes_in + len(self.got) * 4)
        # A Credit that does not raise the limit changes nothing.
        self.node.send(portal.address, encode_credit(STREAM_WINDOW), sender=self.peer)
        self.assertEqual(self.transport.producerState, "paused")
        self.node.send(portal.address, encode_credit(portal.bytes_in + 1), sender=self.peer)
        self.assertEqual(self.transport.producerState, "producing")
        portal._socket_data(b"x")
        self.assertEqual(self.transport.producerState, "paused")

    def test_link_pausing_and_credit_do_not_mix_up(self):
        # Paused by congestion elsewhere and out of credit: reading resumes
        # only when both let go.
        portal = self.portal
        portal.pause_flow()
        for _ in range(STREAM_WINDOW // MAX_CHUNK + 1):
            portal._socket_data(b"s" * MAX_CHUNK)
        self.assertTrue(portal.credit_paused)
        self.node.send(portal.address, encode_credit(2 * STREAM_WINDOW), sender=self.peer)
        self.assertEqual(self.transport.producerState, "paused")
        portal.resume_flow()
        self.assertEqual(self.transport.producerState, "producing")

    def test_receiver_grants_as_its_socket_takes(self):
        portal = self.portal
        data = b"r" * MAX_CHUNK
        n = 0
        while n < 2 * STREAM_WINDOW:
            self.node.send(portal.address, encode_payload(data), sender=self.peer)
            n += len(data)
        self.assertEqual(len(self.transport.value()), n)
        limits = [decode_credit(p) for p in self.got]
        self.assertTrue(limits)
        self.assertEqual(limits, sorted(limits))
        self.assertLessEqual(limits[-1], n + STREAM_WINDOW)
        self.assertGreater(limits[-1], n + STREAM_WINDOW - GRANT_STEP)
        self.assertEqual(self.transport.producerState, "producing")  # the peer's socket is not ours to pause

    def test_no_credit_with_a_peer_that_does_not_offer_it(self):
        plain = self.node.start_worker(portal_address(False), FunctionWorker(lambda w, m: self.got.append(m.payload)))
        portal = PortalWorker(_Owner(self.node))
        self.node.start_worker(portal_address(True), portal)
        transport = StringTransport()
        portal._socket_made(transport)
        portal.set_remote(Route([plain]))
        self.assertFalse(portal.flow)
        for _ in range(2 * STREAM_WINDOW // MAX_CHUNK):
            portal._socket_data(b"s" * MAX_CHUNK)
            self.node.send(portal.address, encode_payload(b"r" * MAX_CHUNK), sender=plain)
        self.assertEqual(transport.producerState, "producing")
        self.assertFalse([p for p in self.got if p[:1] == b"\x04"])


class HeadOfLineTests(PortalTestCase):
    """
    n1 (two inlets) -> n2 (relay) -> n3 (outlet "stall" to a target that
    reads nothing, outlet "outlet" to an echo target): both streams share
    the links n1-n2 and n2-n3.
    """

    timeout = 60
    FLOOD = 64 * MIB

    async def _two_streams(self, flow_control: bool):
        stalls, stall_port = await self.start_target(StallTarget)
        echoes, echo_port = await self.start_target(EchoTarget)
        t = await self.topology(echo_port, relay=True, outlet=False)
        t.outlet = await t.n3.create_outlet("outlet", f"127.0.0.1:{echo_port}", flow_control=flow_control)
        stall_outlet = await t.n3.create_outlet("stall", f"127.0.0.1:{stall_port}", flow_control=flow_control)
        # Two inlets of our own: to "outlet" (echo) and to "stall".
        echo_inlet = await t.n1.create_inlet(
            "127.0.0.1:0", f"{t.at}/service/forward_to_n3/service/outlet", flow_control=flow_control
        )
        t.inlet_port = int(echo_inlet.socket_address.rsplit(":", 1)[1])
        stall_inlet = await t.n1.create_inlet(
            "127.0.0.1:0", f"{t.at}/service/forward_to_n3/service/stall", flow_control=flow_control
        )
        # A neighbour that works before the flood.
        neighbour = await self.echo_round_trip(t, b"before")

        flood = await self.connect_client(int(stall_inlet.socket_address.rsplit(":", 1)[1]), Collector(keep=False))
        flood.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        writer = StreamWriter(flood.transport, self.FLOOD, seed=21)
        writer.start()
        [stalled] = await stalls.accepted(1, 10, "the stalled target's connection")
        return t, stall_inlet, stall_outlet, neighbour, writer, stalled

    async def _ping(self, client: Collector, token: bytes, seconds: float) -> float:
        want = client.count + len(token)
        t0 = time.monotonic()
        client.transport.write(token)
        await client.received(want, seconds, f"echo of {token!r}")
        return time.monotonic() - t0

    @async_test
    async def test_stalled_stream_does_not_stall_neighbours(self):
        t, stall_inlet, stall_outlet, neighbour, writer, stalled = await self._two_streams(True)
        [sender] = stall_inlet.portals
        [receiver] = stall_outlet.portals
        await wait_until(lambda: sender.remote_route is not None, 5, "the Pong at the inlet")
        self.assertEqual((sender.flow, receiver.flow), (True, True), (sender.remote_route, receiver.address))
        self.assertRegex(sender.address.value.encode(), HEX32_EP_FC)
        self.assertRegex(receiver.address.value.encode(), HEX32_FC)

        # The flood runs out of credit: only its own socket stops.
        await wait_until(lambda: sender.credit_paused, 20, "the flood out of credit")
        self.assertLessEqual(sender.bytes_in, sender.limit + TRANSPORT_BUFFER)
        # No link stays paused for it (without credit n3's link to n2 would).
        await wait_until(
            lambda: not any(c.paused for n in (t.n1, t.n2, t.n3) for c in n.tcp.connections), 5, "no link paused"
        )
        self.assertTrue(sender.credit_paused)

        # The neighbour on the same links is answered, again and again.
        rtts = [await self._ping(neighbour, b"ping %03d" % i, 5) for i in range(20)]
        figure(
            f"head-of-line, credit: neighbour round trips while a stream is stalled: "
            f"median {sorted(rtts)[10] * 1e6:.0f} us, max {max(rtts) * 1e6:.0f} us"
        )
        self.assertLess(max(rtts), 2.0)

        # Memory for the stalled stream stays near one window per node.
        held = {n.name: node_buffered(n)["total"] for n in (t.n1, t.n2, t.n3)}
        unconsumed = receiver.bytes_out - (receiver.granted - STREAM_WINDOW)
        figure(
            f"head-of-line, credit: flood held at {writer.sent / MIB:.1f} of {self.FLOOD / MIB:.0f} MiB; "
            f"buffered n1={held['n1'] / 1024:.0f} n2={held['n2'] / 1024:.0f} n3={held['n3'] / 1024:.0f} KiB"
        )
        self.assertLess(writer.sent, self.FLOOD // 4)
        self.assertLessEqual(unconsumed, STREAM_WINDOW + 2 * TRANSPORT_BUFFER)
        self.assertLess(held["n3"], STREAM_WINDOW + 4 * TRANSPORT_BUFFER)
        self.assertLess(held["n1"] + held["n2"], 4 * TRANSPORT_BUFFER)
        # Of what n3 holds for the stalled socket, Twisted's buffer has at
        # most a read's worth and a chunk (it joins all it holds into one
        # string when it writes again); the rest waits in the portal.
        self.assertLessEqual(outbound_buffered(receiver.transport), TRANSPORT_BUFFER + FLOW_CHUNK)
        self.assertGreater(receiver.backlog_bytes, STREAM_WINDOW // 2)

        # Released, the whole flood arrives in order, paced by credit.
        stalled.release()
        await stalled.received(self.FLOOD, 40, "the whole flood at the released target")
        self.assertEqual(stalled.digest.hexdigest(), writer.digest.hexdigest())
        self.assertGreater(receiver.credits_sent, self.FLOOD // STREAM_WINDOW)
        self.assertEqual((receiver.backlog_bytes, receiver._backlog), (0, None))
        await self._ping(neighbour, b"after", 5)

    @async_test
    async def test_without_flow_control_the_link_stalls(self):
        """
        The same with flow control off (as with peers that do not offer it):
        the stalled socket pauses the shared link, so the neighbour waits
        until the target reads again.  This is what the credit avoids.
        """
        t, stall_inlet, stall_outlet, neighbour, writer, stalled = await self._two_streams(False)
        [sender] = stall_inlet.portals
        [receiver] = stall_outlet.portals
        await wait_until(lambda: sender.remote_route is not None, 5, "the Pong at the inlet")
        self.assertFalse(sender.flow or receiver.flow)
        self.assertRegex(receiver.address.value, "^[0-9a-f]{32}$")
        # n3 stops reading its link to n2 for the stalled socket.
        await wait_until(lambda: any(c.paused for c in t.n3.tcp.connections), 20, "n3's link paused")
        token = b"stuck?"
        want = neighbour.count + len(token)
        neighbour.transport.write(token)
        with self.assertRaises(AssertionError):
            await neighbour.received(want, 1.0, "the neighbour's echo while the link is paused")
        stalled.release()
        await neighbour.received(want, 20, "the neighbour's echo once the target reads")
        await stalled.received(self.FLOOD, 40, "the whole flood at the released target")
        self.assertEqual(stalled.digest.hexdigest(), writer.digest.hexdigest())
        self.assertEqual((sender.credits_sent, receiver.credits_sent), (0, 0))

    @async_test
    async def test_one_side_without_flow_control(self):
        """
        An ockamtw inlet with an outlet that does not offer flow control:
        both sides fall back, no Credit is sent, more than a window moves
        each way.
        """
        targets, port = await self.start_target(EchoTarget)
        t = await self.topology(port, outlet=False)
        t.outlet = await t.n3.create_outlet("outlet", f"127.0.0.1:{port}", flow_control=False)
        client = await self.connect_client(t.inlet_port, Collector(keep=False))
        writer = StreamWriter(client.transport, 4 * STREAM_WINDOW, seed=5)
        writer.start()
        await client.received(4 * STREAM_WINDOW, 20, "the echo of four windows")
        self.assertEqual(client.digest.hexdigest(), writer.digest.hexdigest())
        [inl] = t.inlet.portals
        [out] = t.outlet.portals
        self.assertFalse(inl.flow or out.flow)
        self.assertTrue(offers_flow_control(inl.address))
        self.assertEqual((inl.credits_sent, out.credits_sent), (0, 0))


class RawCreditPeerTests(PortalTestCase):
    """
    A raw peer plays an ockamtw outlet node (its portal address ends with
    .fc1): the inlet's Credit messages byte for byte, the inlet honouring
    the peer's credit, and the inlet's fallback when the peer ignores it.
    """

    async def _open(self):
        n1, conn, peer, inlet = await self.inlet_to_raw_peer()
        client = await self.connect_client(int(inlet.socket_address.rsplit(":", 1)[1]), Collector(keep=False))
        [ping] = await peer.frames_arrived(1)
        _, ret, payload = r_frame(ping)
        self.assertEqual(payload, b"\x00")
        inl = ret[0][2:]
        self.assertTrue(inl.endswith(FLOW_MARK))
        out = "7" * 32 + FLOW_MARK
        del peer.frames[:]
        peer.send([f"0#{inl}"], [f"0#{out}"], b"\x01")  # Pong
        [portal] = inlet.portals
        await wait_until(lambda: portal.remote_route is not None, 5, "the Pong at the inlet")
        self.assertTrue(portal.flow)
        return n1, conn, peer, client, portal, inl, out

    @async_test
    async def test_credit_bytes(self):
        n1, conn, peer, client, portal, inl, out = await self._open()
        chunks = 2 * STREAM_WINDOW // MAX_CHUNK
        data = random.Random(3).randbytes(chunks * MAX_CHUNK)
        for i in range(0, len(data), MAX_CHUNK):
            peer.send([f"0#{inl}"], [f"0#{out}"], h_payload(data[i : i + MAX_CHUNK]))
        await client.received(len(data), 10, "two windows at the client")
        await wait_until(lambda: portal.granted >= len(data) + STREAM_WINDOW, 5, "credit for all of it")
        # Every frame back is a Credit, from INL to OUT: tag 04, uvarint
        # limit; limits rise by at least a quarter window and end at what
        # the client took plus the window.
        self.assertEqual(GRANT_STEP, STREAM_WINDOW // 4)
        limits = []
        for frame in peer.frames:
            onward, ret, payload = r_frame(frame)
            limit = decode_credit(payload)
            self.assertEqual(frame, h_frame(h_message([f"0#{out}"], [f"0#{inl}"], b"\x04" + uvarint(limit))))
            limits.append(limit)
        self.assertEqual(limits[-1], len(data) + STREAM_WINDOW)
        self.assertEqual(limits[-1], portal.granted)
        self.assertEqual(len(limits), portal.credits_sent)
        self.assertGreaterEqual(limits[0], STREAM_WINDOW + GRANT_STEP)
        for a, b in zip(limits, limits[1:]):
            self.assertGreaterEqual(b - a, GRANT_STEP)

    @async_test
    async def test_inlet_honours_credit(self):
        n1, conn, peer, client, portal, inl, out = await self._open()
        total = STREAM_WINDOW + 3 * MIB
        writer = StreamWriter(client.transport, total, seed=8)
        writer.start()
        await wait_until(lambda: portal.credit_paused, 10, "the inlet out of credit")

        def payload_bytes():
            return sum(len(r_portal_payload(r_frame(f)[2])) for f in peer.frames)

        await wait_until(lambda: payload_bytes() == portal.bytes_in, 5, "what the inlet sent at the peer")
        first = payload_bytes()
        figure(f"raw credit peer: the inlet sent {first} bytes on a window of {STREAM_WINDOW}")
        self.assertGreaterEqual(first, STREAM_WINDOW)
        self.assertLess(first, STREAM_WINDOW + TRANSPORT_BUFFER + MAX_CHUNK)
        # More credit: the rest comes.
        peer.send([f"0#{inl}"], [f"0#{out}"], b"\x04" + uvarint(total))
        await wait_until(lambda: payload_bytes() == total, 10, "the rest after a Credit")
        got = b"".join(r_portal_payload(r_frame(f)[2]) for f in peer.frames)
        self.assertEqual(len(got), total)
        self.assertEqual(portal.bytes_in, total)
        # A Credit below the limit changes nothing; a bad one is dropped.
        peer.send([f"0#{inl}"], [f"0#{out}"], b"\x04" + uvarint(10))
        peer.send([f"0#{inl}"], [f"0#{out}"], b"\x04\x80")
        peer.send([f"0#{inl}"], [f"0#{out}"], h_payload(b"still here"))
        await client.received(10, 5, "a Payload after bad Credits")
        self.assertEqual(portal.limit, total)

    @async_test
    async def test_peer_ignoring_credit_pauses_the_link(self):
        """
        A sender that goes on past its credit is not trusted: with the
        client not reading, the inlet pauses its link again, as without
        flow control, so memory stays bounded.
        """
        n1, conn, peer, client, portal, inl, out = await self._open()
        client.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        client.transport.pauseProducing()
        chunk = b"x" * MAX_CHUNK
        frame = h_frame(h_message([f"0#{inl}"], [f"0#{out}"], h_payload(chunk)))
        for _ in range(8 * MIB // MAX_CHUNK):
            peer.transport.write(frame)
        await wait_until(lambda: conn.paused, 20, "n1's link paused")
        self.assertGreater(portal.bytes_out, portal.granted)
        self.assertLess(node_buffered(n1)["portals"], STREAM_WINDOW + 4 * TRANSPORT_BUFFER)
        client.transport.resumeProducing()
        await client.received(8 * MIB // MAX_CHUNK * MAX_CHUNK, 20, "everything once the client reads")
