"""
Attacks from issue #10, each performed as an attacker would: raw frames on
real loopback sockets (or a second node) against real nodes, asserting on
what the nodes do (what reaches a target, which connections exist, which
relay gets the traffic), never on how they decide.

  1. plaintext to a secure channel's encryptor (speaking as the node);
  2. C{hop} as an open proxy (SSRF, unix sockets, loops);
  3. relay name takeover;
  4. what a peer creates outliving the peer;
  8. a relay owner that never reads stalling other streams.
"""

from __future__ import annotations

import os
import socket
import tempfile

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol

from ockamtw import Address, FunctionWorker, RequestTimeout, Route, decode_string, encode_string
from ockamtw.portal import stream_limits
from ockamtw.wire import DISCONNECT, PING, PONG

from tests.helpers import LogWatch, async_test, connect_raw, deadline, h_string, wait_until
from tests.portal_harness import Collector, EchoTarget, PortalTestCase, RawPeer, StreamWriter, figure, r_frame

LOOPBACK = "tcp:0:interface=127.0.0.1"


class Counting(Factory):
    """
    A TCP server that counts the connections it accepts (and keeps them).
    """

    noisy = False

    def __init__(self) -> None:
        self.accepted = []

    def buildProtocol(self, addr):
        p = Protocol()
        self.accepted.append(p)
        return p


class AttackTestCase(PortalTestCase):
    timeout = 60

    async def counting_server(self):
        factory = Counting()
        port = await serverFromString(reactor, LOOPBACK).listen(factory)

        def close():
            for p in factory.accepted:
                if p.transport is not None:
                    p.transport.abortConnection()
            return port.stopListening()

        self.addCleanup(close)
        return factory, port.getHost().port

    async def raw(self, port: int) -> RawPeer:
        return await connect_raw(self, port, RawPeer())

    async def processed(self, peer: RawPeer, what: str) -> None:
        """
        Send an echo request and wait for its answer: the node has handled
        everything the peer sent before it (one connection, in order).
        """
        before = len(peer.frames)
        token = os.urandom(8)
        peer.send(["echo"], ["probe"], token)
        frames = await peer.until(lambda fs: len(fs) > before and fs[-1].endswith(token), 5, what)
        self.assertTrue(frames[-1].endswith(token))


# --- 1. the encryptor speaks only for its own node ---------------------------------------------


class EncryptorTests(AttackTestCase):
    """
    n1 has a secure channel to n3, whose outlet serves n1's identity only.
    Nobody but n1 itself may send through n1's encryptor.
    """

    async def setup(self):
        self.targets, target_port = await self.start_target(EchoTarget)
        self.n3, l3 = await self.listening_node("n3")
        self.n1, self.l1 = await self.listening_node("n1")
        at3 = f"/ip4/127.0.0.1/tcp/{l3.port}"
        self.outlet = await self.n3.create_outlet(
            "private", f"127.0.0.1:{target_port}", authorized=[self.n1.identity.identifier]
        )
        self.enc = await self.within(self.n1.create_secure_channel(f"{at3}/service/api"), 5, "the channel")
        # The owner's own use works.
        inlet = await self.n1.create_inlet("127.0.0.1:0", Route([self.enc, Address.local("private")]))
        port = int(inlet.socket_address.rsplit(":", 1)[1])
        client = await self.connect_client(port, Collector())
        client.transport.write(b"mine")
        await client.received(4, 5, "n1's own stream through its channel")
        self.assertEqual(self.outlet.accepted, 1)

    @async_test
    async def test_plaintext_from_a_connection(self):
        """
        A stranger connected to n1's listener sends a Ping to
        [encryptor, private], directly and through n1's C{hop}: nothing is
        encrypted, n3's outlet opens nothing, no target connection is made.
        """
        await self.setup()
        peer = await self.raw(self.l1.port)
        peer.send([self.enc.value, "private"], ["evil"], PING)
        peer.send(["hop", self.enc.value, "private"], ["evil"], PING)
        peer.send(["hop", "hop", self.enc.value, "private"], ["evil"], PING)
        await self.processed(peer, "n1 handled the attacker's frames")
        # Whatever n1 would have encrypted would be at n3 by the time a
        # round trip through the same channel comes back.
        reply = await self.within(
            self.n1.request(Route([self.enc, Address.local("echo")]), b"after", timeout=5), 6, "echo through the channel"
        )
        self.assertEqual(reply.payload, b"after")
        self.assertEqual(self.outlet.accepted, 1)
        self.assertEqual(len(self.targets.protocols), 1)
        self.assertEqual([f for f in peer.frames if r_frame(f)[2] == PONG], [])
        self.assertGreaterEqual(self.n1.refused, 3)

    @async_test
    async def test_plaintext_from_another_channel(self):
        """
        A stranger with a secure channel of its own to n1 (n1's api listener
        accepts everyone) sends a Ping to [n1's encryptor to n3, private]
        inside that channel: refused too (it would speak to n3 as n1).
        """
        await self.setup()
        evil = self.make_node("evil")
        enc4 = await self.within(
            evil.create_secure_channel(f"/ip4/127.0.0.1/tcp/{self.l1.port}/service/api"), 5, "the stranger's channel"
        )
        evil.send(Route([enc4, self.enc, Address.local("private")]), PING, sender="x")
        reply = await self.within(
            evil.request(Route([enc4, Address.local("echo")]), b"probe", timeout=5), 6, "echo after the attempt"
        )
        self.assertEqual(reply.payload, b"probe")
        reply = await self.within(
            self.n1.request(Route([self.enc, Address.local("echo")]), b"after", timeout=5), 6, "echo through n1's channel"
        )
        self.assertEqual(self.outlet.accepted, 1)
        self.assertEqual(len(self.targets.protocols), 1)


# --- 2. hop is no open proxy ---------------------------------------------------------------------


class HopTests(AttackTestCase):
    @async_test
    async def test_no_dialing_for_a_peer(self):
        """
        [hop, 1#127.0.0.1:PORT, ...] from a peer makes the node connect
        nowhere (the server at PORT accepts nothing), for any number of
        hops, and the node opens no connection; with C{dial_for_remote}
        the same frame does connect (so this test can fail).
        """
        victim, victim_port = await self.counting_server()
        n2, l2 = await self.listening_node("n2")
        peer = await self.raw(l2.port)
        target = f"1#127.0.0.1:{victim_port}"
        peer.send(["hop", target, "echo"], ["evil"], b"ssrf")
        peer.send(["hop", "hop", target, "echo"], ["evil"], b"ssrf")
        await self.processed(peer, "n2 handled the frames")
        self.assertEqual([c for c in n2.tcp.connections if c.mode == "Remote connection"], [])
        self.assertEqual(victim.accepted, [])
        self.assertGreaterEqual(n2.dropped, 2)

        n2.dial_for_remote = True
        peer.send(["hop", target, "echo"], ["evil"], b"allowed")
        await wait_until(lambda: len(victim.accepted) == 1, 5, "the allowed connection")

    @async_test
    async def test_no_unix_sockets(self):
        """
        C{1#unix:/path} in a route is never connected to, not even for the
        node's own messages.
        """
        directory = tempfile.mkdtemp()
        self.addCleanup(lambda: os.path.exists(path) and os.unlink(path))
        path = os.path.join(directory, "s")
        victim = Counting()
        port = await serverFromString(reactor, f"unix:{path}").listen(victim)
        self.addCleanup(port.stopListening)
        n2, l2 = await self.listening_node("n2")
        n2.dial_for_remote = True
        peer = await self.raw(l2.port)
        peer.send(["hop", f"1#unix:{path}", "echo"], ["evil"], b"x")
        await self.processed(peer, "n2 handled the frame")
        n2.send(Route([Address(1, f"unix:{path}"), Address.local("echo")]), b"mine")
        await self.processed(peer, "n2 handled its own")
        self.assertEqual(victim.accepted, [])
        self.assertEqual(n2.tcp.connections[1:], [])

    @async_test
    async def test_loop_through_a_connection_to_itself(self):
        """
        A node connected to its own listener: its own messages may use the
        loop, a peer's message routed into it is dropped.
        """
        n2, l2 = await self.listening_node("n2")
        loop = await n2.tcp.connect(f"127.0.0.1:{l2.port}")
        await wait_until(lambda: loop.loop is not None, 5, "the loop noticed")
        reply = await self.within(n2.request(Route([loop.address, Address.local("echo")]), b"own", 5), 6, "own")
        self.assertEqual(reply.payload, b"own")
        peer = await self.raw(l2.port)
        before = n2.dropped
        peer.send([str(loop.address), "echo"], ["evil"], b"loop")
        peer.send(["hop", str(loop.address), "hop", str(loop.address), "echo"], ["evil"], b"loop")
        await self.processed(peer, "n2 handled the frames")
        self.assertEqual(n2.dropped - before, 2)
        self.assertEqual(len(peer.frames), 1)  # the probe's answer only


# --- 3. relay names cannot be taken over -------------------------------------------------------


class TakeoverTests(AttackTestCase):
    @async_test
    async def test_one_hop_owner_route(self):
        """
        An owner registers with a one-hop route (its connection only). A
        client learns that connection's address from an answer's return
        route and registers the name with a route ending in it: refused;
        traffic still reaches the owner.
        """
        n2, l2 = await self.listening_node("n2")
        owner = await self.raw(l2.port)
        owner.send(["forwarding_service"], [], h_string("forward_to_victim"))
        await owner.frames_arrived(1)
        evil = await self.raw(l2.port)
        evil.send(["forward_to_victim", "svc"], ["evil"], b"hello")
        _, ret, _ = r_frame((await owner.frames_arrived(2))[1])
        # The owner answers along the return route; the answer tells evil
        # the owner's connection at n2.
        owner.send(ret, ["svc"], b"hi")
        frames = await evil.frames_arrived(1)
        _, seen, _ = r_frame(frames[0])
        owner_conn = seen[0]
        evil.send(["forwarding_service"], [owner_conn], h_string("forward_to_victim"))
        evil.send(["hop", "forwarding_service"], [owner_conn], h_string("forward_to_victim"))
        await self.processed(evil, "n2 handled the registrations")
        self.assertEqual(len(evil.frames), 2)  # the answer and the probe: no registration reply
        evil.send(["forward_to_victim", "svc"], ["evil"], b"again")
        await owner.frames_arrived(3)
        self.assertEqual(r_frame(owner.frames[2])[2], b"again")


# --- 4. what a peer creates dies with it -------------------------------------------------------------


class OwnershipTests(AttackTestCase):
    @async_test
    async def test_channel_through_hop_dies_with_its_connection(self):
        """
        A secure channel set up through n2's C{hop} ends when the initiator's
        connection closes.
        """
        n2, l2 = await self.listening_node("n2")
        n1 = self.make_node("n1")
        at = f"/ip4/127.0.0.1/tcp/{l2.port}"
        await self.within(n1.create_secure_channel(f"{at}/service/hop/service/api"), 5, "channel through hop")
        await wait_until(lambda: len(n2.secure_listeners["api"].channels) == 1, 5, "responder up")
        before = len(n2.worker_addresses())
        for c in n1.tcp.connections:
            c.abort()
        await wait_until(lambda: not n2.secure_listeners["api"].channels, 5, "the responder gone")
        self.assertEqual(len(n2.worker_addresses()), before - 3 - 1)  # its three workers and the connection

    @async_test
    async def test_established_channels_bounded(self):
        """
        A peer cannot close a channel (0.83 has no message for it), so
        channels it opens would add up: past channels_per_peer, the least
        recently active one of that peer is closed, and a channel in use
        survives.
        """
        from ockamtw.secure.channel import HandshakeLimits

        n2, l2 = await self.listening_node("n2")
        n2.create_secure_channel_listener("api", limits=HandshakeLimits(channels_per_peer=3))
        n1 = self.make_node("n1")
        at = f"/ip4/127.0.0.1/tcp/{l2.port}/service/api"
        used = await self.within(n1.create_secure_channel(at), 5, "the channel in use")
        for i in range(5):
            await self.within(n1.create_secure_channel(at), 5, f"channel {i}")
            reply = await self.within(n1.request(Route([used, Address.local("echo")]), b"still", 5), 6, "echo")
            self.assertEqual(reply.payload, b"still")
        listener = n2.secure_listeners["api"]
        await wait_until(lambda: listener.stats()["channels"] == 3, 5, "three channels kept")
        self.assertEqual(listener.stats()["evicted"], 3)
        reply = await self.within(n1.request(Route([used, Address.local("echo")]), b"kept", 5), 6, "echo")
        self.assertEqual(reply.payload, b"kept")

    @async_test
    async def test_relay_through_hop_dies_with_its_connection(self):
        """
        A relay name registered through n2's C{hop} is freed when the
        registering connection closes.
        """
        n2, l2 = await self.listening_node("n2")
        peer = await self.raw(l2.port)
        peer.send(["hop", "forwarding_service"], ["m"], h_string("forward_to_gone"))
        await peer.frames_arrived(1)
        self.assertIsNotNone(n2.worker_at("forward_to_gone"))
        peer.transport.abortConnection()
        await wait_until(lambda: n2.worker_at("forward_to_gone") is None, 5, "the forwarder removed")

    @async_test
    async def test_pings_from_a_peer_that_left(self):
        """
        A peer sends 20 Pings straight to an outlet, gets 20 Pongs (20
        target connections), and leaves: every portal and target socket
        closes.
        """
        targets, target_port = await self.start_target(Collector)
        n3, l3 = await self.listening_node("n3")
        outlet = await n3.create_outlet("outlet", f"127.0.0.1:{target_port}")
        peer = await self.raw(l3.port)
        for i in range(20):
            peer.send(["outlet"], [f"p{i}"], PING)
        await peer.frames_arrived(20, 10)
        await targets.accepted(20, 5, "20 target connections")
        self.assertEqual(len(outlet.portals), 20)
        peer.transport.abortConnection()
        await wait_until(lambda: not outlet.portals and not targets.open, 5, "portals and targets closed")


class LivenessTests(AttackTestCase):
    """
    Behind a relay, an outlet's node cannot see the inlet's node go: the
    connection it has is to the relay node.  Streams notice by themselves.
    """

    @async_test
    async def test_inlet_node_killed(self):
        """
        n1 (inlet) -> n2 (relay) -> n3 (outlet): five open streams; n1's
        link drops without a word (as if n1 were killed): n3's portals and
        target sockets close after a few heartbeats.
        """
        targets, target_port = await self.start_target(EchoTarget)
        n2, l2 = await self.listening_node("n2")
        at = f"/ip4/127.0.0.1/tcp/{l2.port}"
        n3 = self.make_node("n3")
        await n3.create_relay(at, name="n3")
        outlet = await n3.create_outlet("outlet", f"127.0.0.1:{target_port}", heartbeat=0.2)
        n1 = self.make_node("n1")
        inlet = await n1.create_inlet("127.0.0.1:0", f"{at}/service/forward_to_n3/service/outlet", heartbeat=0.2)
        port = int(inlet.socket_address.rsplit(":", 1)[1])
        for i in range(5):
            c = await self.connect_client(port, Collector())
            c.transport.write(b"hi")
            await c.received(2, 5, "echo")
        # Idle but alive streams stay up across several heartbeats.
        await wait_until(lambda: min(p.heard for p in outlet.portals) >= 3, 5, "keepalives heard")
        self.assertEqual(len(outlet.portals), 5)
        for c in n1.tcp.connections:
            c.transport.abortConnection()
        await wait_until(lambda: not outlet.portals and not targets.open, 5, "n3's portals closed")

    @async_test
    async def test_pings_from_a_peer_that_left_behind_a_relay(self):
        """
        A raw peer (no flow control, as an Ockam 0.83 inlet) opens 20
        streams to an outlet behind a relay and leaves: after the outlet's
        idle timeout they are all closed.
        """
        targets, target_port = await self.start_target(Collector)
        n2, l2 = await self.listening_node("n2")
        n3 = self.make_node("n3")
        await n3.create_relay(f"/ip4/127.0.0.1/tcp/{l2.port}", name="n3")
        outlet = await n3.create_outlet("outlet", f"127.0.0.1:{target_port}", idle_timeout=1.0)
        peer = await self.raw(l2.port)
        for i in range(20):
            peer.send(["forward_to_n3", "outlet"], [f"p{i}"], PING)
        await peer.frames_arrived(20, 10)
        await targets.accepted(20, 5, "20 target connections")
        peer.transport.abortConnection()
        self.assertEqual(len(outlet.portals), 20)
        await wait_until(lambda: not outlet.portals and not targets.open, 5, "portals and targets closed")


# --- streams an outlet holds ------------------------------------------------------------------------------------


class StreamLimitTests(AttackTestCase):
    """
    Each stream an outlet opens holds a socket to its target, and anyone
    the outlet lets send Ping opens one: the node's outlets hold at most
    C{max_streams} together; a Ping past it is refused and answered.
    """

    @async_test
    async def test_pings_past_the_limit_are_refused(self):
        """
        A raw peer behind a relay (an Ockam 0.83 inlet's addresses) sends
        30 Pings to an outlet whose node holds at most 10 streams: the
        target sees 10 connections, the other 20 Pings are answered with
        Disconnect; once the streams end, new ones open again.
        """
        targets, target_port = await self.start_target(Collector)
        n2, l2 = await self.listening_node("n2")
        n3 = self.make_node("n3")
        stream_limits(n3).max_streams = 10
        await n3.create_relay(f"/ip4/127.0.0.1/tcp/{l2.port}", name="n3")
        outlet = await n3.create_outlet("outlet", f"127.0.0.1:{target_port}", idle_timeout=1.0)
        peer = await self.raw(l2.port)
        for i in range(30):
            peer.send(["forward_to_n3", "outlet"], [f"p{i}"], PING)
        frames = await peer.frames_arrived(30, 10)
        payloads = [r_frame(f)[2] for f in frames[:30]]
        self.assertEqual((payloads.count(PONG), payloads.count(DISCONNECT)), (10, 20))
        await targets.accepted(10, 5, "10 target connections")
        await self.processed(peer, "the Pings handled")
        self.assertEqual(len(targets.open), 10)
        self.assertEqual((len(outlet.portals), stream_limits(n3).held, stream_limits(n3).refused), (10, 10, 20))
        # The streams end (idle timeout): their places are free again.
        await wait_until(lambda: not outlet.portals, 5, "the idle streams closed")
        self.assertEqual(stream_limits(n3).held, 0)
        peer.send(["forward_to_n3", "outlet"], ["again"], PING)

        def to_again(frames):
            return [f for f in frames if r_frame(f)[0] == ["0#again"]]

        frames = await peer.until(to_again, 5, "an answer to the new Ping")
        self.assertEqual([r_frame(f)[2] for f in to_again(frames)], [PONG])

    @async_test
    async def test_an_inlet_is_told(self):
        """
        Through an ockamtw inlet: the stream past the limit closes its
        client at once and the inlet says why.
        """
        t = await self.topology((await self.start_target(EchoTarget))[1])
        stream_limits(t.n3).max_streams = 1
        first = await self.echo_round_trip(t, b"first")
        second = await self.connect_client(t.inlet_port, Collector())
        await second.when_lost(5, "the second client closed")
        self.assertEqual(bytes(second.data), b"")
        self.assertEqual(t.inlet.last_error, "refused by the outlet: the outlet's node holds too many streams")
        self.assertEqual(stream_limits(t.n3).refused, 1)
        first.transport.loseConnection()
        await wait_until(lambda: stream_limits(t.n3).held == 0, 5, "the first stream ended")
        await self.echo_round_trip(t, b"third")


    @async_test
    async def test_an_inlet_closes_clients_past_the_limit(self):
        """
        An inlet's port is open to whoever reaches it: the inlet's node
        holds at most C{max_streams} streams, and a client past it is
        closed at once, before any Ping; once a stream ends, a new client
        is served.
        """
        t = await self.topology((await self.start_target(EchoTarget))[1])
        stream_limits(t.n1).max_streams = 1
        first = await self.echo_round_trip(t, b"first")
        accepted = t.outlet.accepted
        second = await self.connect_client(t.inlet_port, Collector())
        await second.when_lost(5, "the second client closed")
        self.assertEqual((stream_limits(t.n1).refused, t.outlet.accepted), (1, accepted))
        first.transport.loseConnection()
        await wait_until(lambda: stream_limits(t.n1).held == 0, 5, "the first stream ended")
        await self.echo_round_trip(t, b"third")


# --- 10. the log is no amplifier ------------------------------------------------------------------------------


class LogAmplificationTests(AttackTestCase):
    def log_bytes(self) -> LogWatch:
        """
        The log events of ockamtw code from now on.
        """
        return LogWatch(self, lambda e: str(e.get("log_namespace", "")).startswith("ockamtw"))

    @async_test
    async def test_bad_frames_long_names_unknown_addresses(self):
        """
        300 KB of 3-byte undecodable frames, 20 relay registrations with
        60,000-character names, 2,000 messages to addresses that do not
        exist and 2,000 refused by a worker's policy: the node logs a few
        KB, not megabytes.
        """
        logged = self.log_bytes()
        n2, l2 = await self.listening_node("n2")
        peer = await self.raw(l2.port)
        peer.transport.write(b"\x00\x01\x02" * 100_000)
        for i in range(20):
            peer.send(["static_forwarding_service"], ["m"], h_string(str(i) + "x" * 60_000))
        for i in range(2000):
            peer.send([f"nobody{i}"], ["m"], b"x")
        got = []
        n2.start_worker("private", FunctionWorker(lambda w, m: got.append(m)))  # this node only, by default
        for i in range(2000):
            peer.send(["private"], ["m"], b"x")
        await self.processed(peer, "n2 handled it all")
        sizes = [len(text) for text in logged.texts()]
        total = sum(sizes)
        figure(f"log amplification: {len(sizes)} events, {total} bytes for ~1.5 MB of attack")
        self.assertLess(total, 20_000)
        self.assertLess(max(sizes), 400)
        self.assertEqual(got, [])
        self.assertGreaterEqual(n2.dropped, 100_000 + 2000)
        self.assertEqual(n2.refused, 2000)


# --- 13. smaller -----------------------------------------------------------------------------------------------


class SmallerTests(AttackTestCase):
    @async_test
    async def test_uppercase_answer_too_large(self):
        """
        A string whose upper case no longer fits in a frame ('ŉ' is 2 bytes,
        its upper case 3): one warning line, no traceback, and the service
        goes on answering.
        """
        from twisted.logger import LogLevel, formatEvent

        events = LogWatch(self, lambda e: True).events
        n2, l2 = await self.listening_node("n2")
        n1 = self.make_node("n1")
        at = f"/ip4/127.0.0.1/tcp/{l2.port}/service/uppercase"
        d = n1.request(at, encode_string("\u0149" * 21840), timeout=0.5)
        await self.assertFailure(d, RequestTimeout)
        reply = await self.within(n1.request(at, encode_string("still here"), timeout=5), 6, "the next answer")
        self.assertEqual(decode_string(reply.payload), "STILL HERE")
        self.assertEqual(self.flushLoggedErrors(), [])
        loud = [e for e in events if e.get("log_level") in (LogLevel.critical, LogLevel.error)]
        self.assertEqual(loud, [])
        warned = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn and e.get("node") == "n2"]
        self.assertEqual(len(warned), 1, warned)
        self.assertIn("65535", warned[0])

    def test_m1_without_return_route(self):
        """
        A first handshake message with no return route (nobody to answer)
        leaves no half-open channel behind.
        """
        from ockamtw import Node
        from ockamtw.secure.codec import CreateResponderChannelMessage
        from ockamtw.secure.noise import HandshakeState

        node = Node(reactor, name="n")
        before = len(node.worker_addresses())
        m1 = CreateResponderChannelMessage.for_initiator(HandshakeState(True).write_message(b""), Address.local("b" * 32))
        node.send(Route(["api"]), m1.encode())
        self.assertEqual(len(node.secure_listeners["api"].channels), 0)
        self.assertEqual(len(node.worker_addresses()), before)


# --- 8. a relay owner that never reads -----------------------------------------------------------------


class SlowOwnerTests(AttackTestCase):
    timeout = 90

    @async_test
    async def test_owner_that_never_reads(self):
        """
        Through relay node n2: a malicious owner "evil" answers four Pings
        (as an ockamtw outlet would, with flow control) and then reads
        nothing; n1's clients push 8 MiB into each of those streams.
        Meanwhile another client of n1, to the healthy owner n3 through the
        same n2, moves 4 MiB back and forth: it must not stall.
        """
        targets, target_port = await self.start_target(EchoTarget)
        n2, l2 = await self.listening_node("n2")
        at = f"/ip4/127.0.0.1/tcp/{l2.port}"
        n3 = self.make_node("n3")
        await n3.create_relay(at, name="n3")
        await n3.create_outlet("outlet", f"127.0.0.1:{target_port}")
        n1 = self.make_node("n1")

        evil = EvilOwner(4)
        await connect_raw(self, l2.port, evil)
        evil.register("evil")
        await evil.registered

        bad = await n1.create_inlet("127.0.0.1:0", f"{at}/service/forward_to_evil/service/outlet")
        good = await n1.create_inlet("127.0.0.1:0", f"{at}/service/forward_to_n3/service/outlet")
        bad_port = int(bad.socket_address.rsplit(":", 1)[1])
        good_port = int(good.socket_address.rsplit(":", 1)[1])
        writers = []
        for i in range(4):
            c = await self.connect_client(bad_port, Collector(keep=False))
            writers.append(c)
        await deadline(evil.all_ponged, 10, "evil answered the four Pings")
        for i, c in enumerate(writers):
            StreamWriter(c.transport, 8 * 1024 * 1024, seed=i).start()
        # Wait until n2's link to evil is full, i.e. the attack is on.
        evil_link = [c for c in n2.tcp.connections if c.socket_address == evil.local][0]
        await wait_until(lambda: evil_link.congested, 10, "n2's link to evil congested")

        client = await self.connect_client(good_port, Collector(keep=False))
        size = 4 * 1024 * 1024
        StreamWriter(client.transport, size, seed=99).start()
        await client.received(size, 15, "the healthy stream's 4 MiB echoed while evil stalls")
        # The attack was on all along: n2 holds megabytes for evil.
        self.assertTrue(evil_link.connected)
        self.assertGreater(evil_link.unsent(), 1024 * 1024)
        figure(f"slow owner: n2 holds {evil_link.unsent()} bytes for evil; the neighbour moved {size} bytes")


class EvilOwner(RawPeer):
    """
    Registers a relay, answers the first C{n} Pings with Pongs from
    flow-control portal addresses, then stops reading its socket.
    """

    def __init__(self, n: int) -> None:
        RawPeer.__init__(self)
        self.n = n
        self.ponged = 0
        self.registered: Deferred = Deferred()
        self.all_ponged: Deferred = Deferred()

    def connectionMade(self) -> None:
        RawPeer.connectionMade(self)
        h = self.transport.getHost()
        self.local = f"{h.host}:{h.port}"

    def register(self, name: str) -> None:
        self.send(["static_forwarding_service"], ["m"], h_string(name))

    def dataReceived(self, data: bytes) -> None:
        RawPeer.dataReceived(self, data)
        while self.frames:
            frame = self.frames.pop(0)
            onward, ret, payload = r_frame(frame)
            if not self.registered.called:
                self.registered.callback(None)
                continue
            if payload == PING and self.ponged < self.n:
                self.ponged += 1
                self.send(ret, [os.urandom(16).hex() + ".fc1"], PONG)
                if self.ponged == self.n:
                    self.transport.pauseProducing()
                    self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    self.all_ponged.callback(None)
