"""
How large a portal's Payload messages are (docs/protocol.md, "Larger
chunks between ockamtw portals"): up to 60 KiB (L{FLOW_CHUNK}) when both
ends are ockamtw portals and such a message fits a frame on the way, 48
KiB (L{MAX_CHUNK}, as Ockam 0.83 sends) otherwise; and the size a secure
channel end says its bodies may have (L{ChannelEnd.body_limit}) is what
fits a frame once encrypted.

In-process nodes on real loopback sockets, port 0, bounded waits.
"""

from __future__ import annotations

import hashlib
import os

from ockamtw import Address, Route, Worker
from ockamtw.access import ANYONE
from ockamtw.errors import MessageTooLarge
from ockamtw.portal import FLOW_CHUNK, MAX_CHUNK
from ockamtw.routing import uvarint
from ockamtw.wire import MAX_FRAME, decode_payload

from .helpers import async_test, wait_until
from .portal_harness import MIB, Collector, PortalTestCase, StreamWriter
from .secure_harness import Inbox, SecureTestCase


class ChunkSizeTests(PortalTestCase):
    timeout = 30
    SIZE = 4 * MIB

    async def carry(self, flow_control: bool):
        """
        4 MiB from a client to the target through the seed's topology:
        (the sizes of the Payloads the outlet's portal took, the inlet's
        portal).
        """
        targets, target_port = await self.start_target(lambda: Collector(keep=False))
        t = await self.topology(target_port, flow_control=flow_control)
        client = await self.connect_client(t.inlet_port, Collector(keep=False))
        await wait_until(lambda: t.outlet.portals, 5, "the outlet's portal")
        [out] = t.outlet.portals
        sizes = []
        take = out._payload

        def recording(payload, source):
            sizes.append(len(decode_payload(payload)))
            return take(payload, source)

        out._payload = recording
        writer = StreamWriter(client.transport, self.SIZE, seed=7, chunk=4 * FLOW_CHUNK)
        writer.start()
        await wait_until(lambda: targets.protocols and targets.protocols[0].count == self.SIZE, 20, "4 MiB at the target")
        self.assertEqual(targets.protocols[0].digest.hexdigest(), writer.digest.hexdigest())
        [inl] = t.inlet.portals
        return sizes, inl, out

    @async_test
    async def test_between_ockamtw_portals(self):
        sizes, inl, out = await self.carry(flow_control=True)
        self.assertEqual((inl.chunk, out.chunk), (FLOW_CHUNK, FLOW_CHUNK))
        self.assertEqual(max(sizes), FLOW_CHUNK)
        self.assertEqual(sum(sizes), self.SIZE)

    @async_test
    async def test_with_a_portal_that_does_not_offer_flow_control(self):
        # As with Ockam's Rust portals: 48 KiB at most, as they send.
        sizes, inl, out = await self.carry(flow_control=False)
        self.assertEqual((inl.chunk, out.chunk), (MAX_CHUNK, MAX_CHUNK))
        self.assertEqual(max(sizes), MAX_CHUNK)
        self.assertEqual(sum(sizes), self.SIZE)

    @async_test
    async def test_long_route_keeps_48k(self):
        """
        A route whose header leaves no room for 60 KiB in a frame: the
        stream sends 48 KiB chunks (and everything arrives).
        """
        targets, target_port = await self.start_target(lambda: Collector(keep=False))
        t = await self.topology(target_port, outlet=False)
        # Forwarding hops on the outlet's node that lengthen every header
        # by more than a frame's room above 60 KiB.
        names = ["h%02d" % i + "x" * 250 for i in range(20)]
        for name in names:
            t.n3.start_worker(name, _Hop())
        hops = "".join(f"/service/{name}" for name in names)
        await t.n3.create_outlet("outlet", t.target)
        inlet = await t.n1.create_inlet("127.0.0.1:0", f"{t.at}/service/forward_to_n3{hops}/service/outlet")
        port = int(inlet.socket_address.rsplit(":", 1)[1])
        client = await self.connect_client(port, Collector(keep=False))
        data = os.urandom(MIB)
        client.transport.write(data)
        await wait_until(lambda: targets.protocols and targets.protocols[0].count == MIB, 20, "1 MiB at the target")
        self.assertEqual(targets.protocols[0].digest.hexdigest(), hashlib.sha1(data).hexdigest())
        [inl] = inlet.portals
        self.assertTrue(inl.flow)
        self.assertEqual(inl.chunk, MAX_CHUNK)


class _Hop(Worker):
    """
    A worker that passes every message on (a hop of the long route).
    """

    access = ANYONE

    def receive(self, message):
        self.node.forward(message, message.onward_route.step(), message.return_route.prepend(self.address))


class ChannelBodyLimitTests(SecureTestCase):
    @async_test
    async def test_body_limit_fits_a_frame(self):
        n1, n2, at = await self.pair()
        inbox = Inbox()
        n2.start_worker("inbox", inbox)
        enc = await self.within(n1.create_secure_channel(f"{at}/service/api", timeout=5), 6, "the channel")
        end = n1.secure_channels[enc.value]
        await wait_until(lambda: self.responder(n2).state == "up", 5, "the responder up")
        limit = end.body_limit()
        self.assertGreater(limit, FLOW_CHUNK)
        self.assertLess(limit, MAX_FRAME)
        head = end.head_for(Route([Address.local("inbox")]), Route([Address.local("me")]))

        def body(size):
            # a payload whose message body (head, length, payload) is size bytes
            n = size - len(head) - 3
            self.assertEqual(len(uvarint(n)), 3)
            return head + uvarint(n), b"p" * n

        end.write_body(*body(limit))
        messages = await inbox.when(1, 5, "the largest body")
        self.assertEqual(len(messages[0].payload), limit - len(head) - 3)
        self.assertRaises(MessageTooLarge, end.write_body, *body(limit + 1))
