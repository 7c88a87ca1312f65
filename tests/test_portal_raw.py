"""
TCP portals against raw-socket peers that speak the portal and relay frames
with hand-written bytes and no ockamtw code (section 6 of the wire spec): an
inlet to a raw outlet node, a raw node that registers a relay and serves as
the outlet behind it, and a raw peer talking to an outlet.

In-process nodes on the global reactor, real loopback sockets on port 0
(L{tests.portal_harness}).  Nothing sleeps.
"""

from __future__ import annotations

import random

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from ockamtw import Address, Route

from .helpers import async_test, fresh_from, h_frame, h_message, h_string, uvarint, wait_until
from .portal_harness import (
    HEX32,
    HEX32_EP_FC,
    MAX_CHUNK,
    MIB,
    Collector,
    PortalTestCase,
    RawPeer,
    figure,
    h_payload,
    r_frame,
    r_portal_payload,
)


# --- raw-socket peers: portal and relay frames by hand -----------------------------


#: The raw outlet's portal worker address.
OUT_RAW = "2" * 32
#: The raw registering node's relay worker address.
M_RAW = "4" * 32
OUT_RAW2 = "5" * 32
INL_RAW = "6" * 32
ECHO_RETURN = "3" * 32


class RawPeerTests(PortalTestCase):
    timeout = 30

    async def _nothing_more(self, peer: RawPeer, conn_route=()) -> None:
        """
        Whatever the node sent before now has arrived: an echo request's
        reply is the next frame.
        """
        before = len(peer.frames)
        peer.send(list(conn_route) + ["0#echo"], [f"0#{ECHO_RETURN}"], b"sync")
        frames = await peer.frames_arrived(before + 1)
        self.assertEqual(len(frames), before + 1, [f[:40].hex() for f in frames[before:]])
        onward, ret, payload = r_frame(frames[-1])
        self.assertEqual((onward, payload), ([f"0#{ECHO_RETURN}"], b"sync"))
        del peer.frames[before:]

    @async_test
    async def test_raw_outlet_peer(self):
        """
        n1 connects to a raw peer that acts as an Ockam outlet node; the
        inlet's route is [that connection, 0#outlet].
        """
        n1, conn, peer, inlet = await self.inlet_to_raw_peer()
        base = n1.worker_addresses()
        inlet_port = int(inlet.socket_address.rsplit(":", 1)[1])

        client = await self.connect_client(inlet_port, Collector())
        sent = random.Random(9).randbytes(MIB)
        client.transport.write(sent)  # read by the inlet only after Pong

        # Ping: onward [0#outlet], return [0#INL], PortalMessage 00.  INL
        # ends with ".ep.fc1": the offer of flow control and of an early
        # Pong, which an Ockam outlet does not notice.
        [ping] = await peer.frames_arrived(1)
        inl = ping[15:54]
        self.assertRegex(inl, HEX32_EP_FC)
        self.assertEqual(
            ping,
            bytes.fromhex("0036" "01" "01" "00" "06") + b"outlet" + bytes.fromhex("01" "00" "27") + inl
            + bytes.fromhex("01" "00"),
        )
        [portal] = inlet.portals
        self.assertEqual(portal.address, Address.parse(inl.decode()))
        self.assertEqual(portal.bytes_in, 0)  # nothing read before Pong

        # Pong from 0#2222... to the return route.
        pong = bytes.fromhex("0050" "01" "01" "00" "27") + inl + bytes.fromhex("01" "00" "20") + OUT_RAW.encode() + bytes.fromhex("01" "01")
        self.assertEqual(pong, h_frame(h_message([f"0#{inl.decode()}"], [f"0#{OUT_RAW}"], b"\x01")))
        del peer.frames[:]
        # A second Pong (as for a repeated Ping) from another outlet worker:
        # the inlet keeps the first and sends the second Disconnect.
        peer.transport.write(pong + h_frame(h_message([f"0#{inl.decode()}"], [f"0#{OUT_RAW2}"], b"\x01")))
        extra = await peer.until(
            lambda fs: any(r_frame(f)[0] == [f"0#{OUT_RAW2}"] for f in fs), 5, "Disconnect for the second Pong"
        )
        [disconnect] = [f for f in extra if r_frame(f)[0] == [f"0#{OUT_RAW2}"]]
        self.assertEqual(
            disconnect,
            bytes.fromhex("0050" "01" "01" "00" "20") + OUT_RAW2.encode() + bytes.fromhex("01" "00" "27") + inl
            + bytes.fromhex("01" "02"),
        )
        peer.frames.remove(disconnect)
        self.assertEqual(portal.remote_route, Route([conn.address, Address.parse(OUT_RAW)]))

        # The client's bytes arrive as Payload frames of at most 48 KiB.
        def decode_all(frames):
            chunks = []
            for f in frames:
                onward, ret, payload = r_frame(f)
                self.assertEqual(onward, [f"0#{OUT_RAW}"])
                self.assertEqual(ret, [f"0#{inl.decode()}"])
                chunks.append(r_portal_payload(payload))
            return chunks

        await peer.until(
            lambda fs: sum(len(r_portal_payload(r_frame(f)[2])) for f in fs) >= len(sent), 10, "1 MiB as Payload frames"
        )
        chunks = decode_all(peer.frames)
        sizes = [len(c) for c in chunks]
        figure(f"raw outlet peer: 1 MiB arrived in {len(chunks)} Payload frames, largest {max(sizes)} bytes")
        self.assertEqual(b"".join(chunks), sent)
        self.assertLessEqual(max(sizes), MAX_CHUNK)
        self.assertEqual(max(sizes), MAX_CHUNK)  # reads of 64 KiB were split
        self.assertGreaterEqual(len(chunks), -(-len(sent) // MAX_CHUNK))
        self.assertTrue(all(len(f) <= 2 + 65535 for f in peer.frames))
        # The exact bytes of the first Payload frame.
        first = chunks[0]
        self.assertEqual(
            peer.frames[0],
            h_frame(
                b"\x01" + bytes.fromhex("01" "00" "20") + OUT_RAW.encode() + bytes.fromhex("01" "00" "27") + inl
                + uvarint(1 + len(uvarint(len(first))) + len(first)) + b"\x03" + uvarint(len(first)) + first
            ),
        )
        self.assertEqual(portal.bytes_in, len(sent))
        del peer.frames[:]

        # Payload back to the client, then Disconnect: the client closes.
        back = random.Random(10).randbytes(100_000)
        for i in range(0, len(back), MAX_CHUNK):
            peer.send([f"0#{inl.decode()}"], [f"0#{OUT_RAW}"], h_payload(back[i : i + MAX_CHUNK]))
        await client.received(len(back), 5, "the raw peer's Payload at the client")
        self.assertEqual(bytes(client.data), back)
        peer.transport.write(
            bytes.fromhex("0050" "01" "01" "00" "27") + inl + bytes.fromhex("01" "00" "20") + OUT_RAW.encode() + bytes.fromhex("01" "02")
        )
        await client.when_lost(5, "the client closed on Disconnect")
        self.assertEqual(bytes(client.data), back)
        await wait_until(lambda: not inlet.portals, 5, "the inlet portal gone")
        self.assertEqual(n1.worker_addresses(), base)
        # The inlet did not answer the Disconnect (nor send anything else).
        await self._nothing_more(peer)

    @async_test
    async def test_raw_relay_and_outlet_peer(self):
        """
        A raw peer registers the relay forward_to_raw at n2 with hand-made
        frames and serves as the outlet behind it; n1's inlet goes through
        n2's relay to it.
        """
        n2, listener = await self.listening_node("n2")
        peer = RawPeer()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", listener.port, timeout=5), peer)

        def abort():
            if not peer.lost.called:
                peer.transport.abortConnection()
            return fresh_from(peer.lost)

        self.addCleanup(abort)

        # Registration: onward [0#forwarding_service], return [0#M], the
        # BARE string "forward_to_raw"; the reply comes from the forwarder.
        alias = b"forward_to_raw"
        registration = (
            bytes.fromhex("01" "01" "00" "12") + b"forwarding_service" + bytes.fromhex("01" "00" "20") + M_RAW.encode()
            + bytes.fromhex("0f" "0e") + alias
        )
        self.assertEqual(registration, h_message(["0#forwarding_service"], [f"0#{M_RAW}"], h_string("forward_to_raw")))
        peer.transport.write(h_frame(registration))
        [reply] = await peer.frames_arrived(1)
        self.assertEqual(
            reply,
            h_frame(
                bytes.fromhex("01" "01" "00" "20") + M_RAW.encode() + bytes.fromhex("01" "00" "0e") + alias
                + bytes.fromhex("0f" "0e") + alias
            ),
        )
        del peer.frames[:]

        n1 = self.make_node("n1")
        inlet = await n1.create_inlet(
            "127.0.0.1:0",
            f"/ip4/127.0.0.1/tcp/{listener.port}/service/forward_to_raw/service/outlet",
            ping_timeout=10,
            ping_interval=10,
        )
        client = await self.connect_client(int(inlet.socket_address.rsplit(":", 1)[1]), Collector())
        client.transport.write(b"hello raw")

        # Ping through the forwarder: onward [0#M, 0#outlet], return
        # [0#<n2's connection to n1>, 0#INL].
        [ping] = await peer.frames_arrived(1)
        onward, ret, payload = r_frame(ping)
        self.assertEqual(onward, [f"0#{M_RAW}", "0#outlet"])
        self.assertEqual(payload, b"\x00")
        self.assertEqual(len(ret), 2)
        conn_hex, inl_hex = ret[0][2:], ret[1][2:]
        self.assertRegex(conn_hex.encode(), HEX32)
        self.assertRegex(inl_hex.encode(), HEX32_EP_FC)
        self.assertEqual(ret[0], str(n2.tcp.connections[-1].address))
        [portal] = inlet.portals
        self.assertEqual(str(portal.address), ret[1])
        self.assertEqual(
            ping,
            h_frame(
                bytes.fromhex("01" "02" "00" "20") + M_RAW.encode() + bytes.fromhex("00" "06") + b"outlet"
                + bytes.fromhex("02" "00" "20") + conn_hex.encode() + bytes.fromhex("00" "27") + inl_hex.encode()
                + bytes.fromhex("01" "00")
            ),
        )
        del peer.frames[:]

        # Pong from OUT along the Ping's return route (through n2).
        peer.send(ret, [f"0#{OUT_RAW2}"], b"\x01")
        [data] = await peer.frames_arrived(1)
        onward, ret2, payload = r_frame(data)
        self.assertEqual(onward, [f"0#{OUT_RAW2}"])
        self.assertEqual(ret2, ret)  # n2's connection to n1, then INL
        self.assertEqual(payload, bytes.fromhex("03" "09") + b"hello raw")
        self.assertTrue(data.endswith(bytes.fromhex("0b" "03" "09") + b"hello raw"), data.hex())
        self.assertEqual(r_portal_payload(payload), b"hello raw")

        peer.send(ret, [f"0#{OUT_RAW2}"], h_payload(b"hi client"))
        await client.received(9, 5, "the raw outlet's reply at the client")
        self.assertEqual(bytes(client.data), b"hi client")
        peer.send(ret, [f"0#{OUT_RAW2}"], b"\x02")
        await client.when_lost(5, "the client closed on Disconnect")
        await wait_until(lambda: not inlet.portals, 5, "the inlet portal gone")

    @async_test
    async def test_raw_peer_at_outlet(self):
        """
        A raw peer talks to n3's outlet: only Ping is accepted; each Ping
        makes one portal and one target connection, answered by Pong; target
        bytes come back as Payload frames of at most 48 KiB; Disconnect
        closes the target connection.
        """
        big = random.Random(11).randbytes(300_000)

        class Talker(Collector):
            def connectionMade(self):
                Collector.connectionMade(self)
                self.transport.write(big)

        targets, target_port = await self.start_target(Talker)
        n3, listener = await self.listening_node("n3")
        outlet = await n3.create_outlet("outlet", f"127.0.0.1:{target_port}")
        peer = await self.connect_client(listener.port, RawPeer())

        # Not Ping: dropped, no portal, no target connection.
        for payload in (h_payload(b"x"), b"\x01", b"\x02", b"", b"\x07", b"\x00\x00"):
            peer.send(["0#outlet"], [f"0#{INL_RAW}"], payload)
        await self._nothing_more(peer)
        self.assertEqual((outlet.accepted, len(outlet.portals), targets.protocols), (0, 0, []))

        peer.send(["0#outlet"], [f"0#{INL_RAW}"], b"\x00")
        # The Pong comes first (the target's bytes may arrive in the same read).
        pong = (await peer.frames_arrived(1))[0]
        onward, ret, payload = r_frame(pong)
        self.assertEqual((onward, payload), ([f"0#{INL_RAW}"], b"\x01"))
        self.assertEqual(len(ret), 1)
        out_hex = ret[0][2:].encode()
        self.assertRegex(out_hex, HEX32)
        self.assertEqual(
            pong, bytes.fromhex("0049" "01" "01" "00" "20") + INL_RAW.encode() + bytes.fromhex("01" "00" "20") + out_hex + bytes.fromhex("01" "01")
        )
        [portal] = outlet.portals
        self.assertEqual(str(portal.address), ret[0])
        [target] = await targets.accepted(1, 5, "the target connection")

        await peer.until(
            lambda fs: sum(len(r_portal_payload(r_frame(f)[2])) for f in fs[1:]) >= len(big), 10, "the target's bytes"
        )
        chunks = []
        for f in peer.frames[1:]:
            onward, ret, payload = r_frame(f)
            self.assertEqual(onward, [f"0#{INL_RAW}"])
            self.assertEqual(ret, [f"0#{out_hex.decode()}"])
            chunks.append(r_portal_payload(payload))
        self.assertEqual(b"".join(chunks), big)
        self.assertLessEqual(max(len(c) for c in chunks), MAX_CHUNK)
        self.assertGreaterEqual(len(chunks), -(-len(big) // MAX_CHUNK))

        peer.send([f"0#{out_hex.decode()}"], [f"0#{INL_RAW}"], h_payload(b"hello target"))
        await target.received(12, 5, "the raw peer's Payload at the target")
        self.assertEqual(bytes(target.data), b"hello target")
        peer.send([f"0#{out_hex.decode()}"], [f"0#{INL_RAW}"], b"\x02")
        await target.when_lost(5, "the target closed on Disconnect")
        await wait_until(lambda: not outlet.portals, 5, "the outlet portal gone")
        self.assertEqual(outlet.accepted, 1)
        self.assertEqual(len(targets.protocols), 1)
