"""
Tests of the secure channel listener's handshake limits (issue #10 item
11): a flood of first handshake messages (M1) must not take the node.

In memory, on a L{Clock} (a node that is never started, M1 delivered with
the origin a connection would give it):

  - random early drop (C{max_startups start:rate:full}) at start, middle
    and full, measured with a seeded random;
  - half-open handshakes capped per peer, connections of one host (and
    one IPv6 /64) counting together; this node's own M1 not limited;
  - the token buckets, per peer and in all; the remembered peers bounded;
  - the grace: a half-open handshake is freed after it, and when the
    connection its M1 came through closes; neither logs a line each;
  - refusals counted by reason and logged through the node's throttle.

On real loopback sockets: raw M1 frames (built with ockamtw's Noise and
codec, as L{tests.test_secure_channel.ManualInitiator} does) written as fast
as the node reads them, from one connection and from several, while another
peer's echo round trips are timed, an established channel keeps working, a
well-behaved initiator sets up a new channel, and the half-open handshakes
and workers stay under the caps.

Nothing sleeps: waits are events, or conditions checked until a deadline.
"""

from __future__ import annotations

import random
import socket
import statistics
import time

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from zope.interface import implementer

from ockamtw import Address, Node, Route, Worker
from ockamtw.access import ANYONE, Relayed
from ockamtw.flow import CloseNotifier
from ockamtw.secure.channel import (
    REFUSAL_REASONS,
    HandshakeLimits,
    SecureChannelListener,
    early_drop_probability,
    host_block,
)
from ockamtw.secure.codec import CreateResponderChannelMessage
from ockamtw.secure.identity import LocalIdentity
from ockamtw.secure.noise import HandshakeState
from ockamtw.wire import TransportMessage
from ockamtw.interfaces import IOrigin

from .helpers import LogWatch, async_test, h_frame, h_message, log_text, wait_until
from .portal_harness import r_frame
from .secure_harness import SecureTestCase

log = Logger(namespace="tests.test_handshake_limits")

#: One M1 payload: a responder does not notice that it is always the same.
M1_PAYLOAD = CreateResponderChannelMessage.for_initiator(
    HandshakeState(True).write_message(b""), Address.local("b" * 32)
).encode()

#: Limits under which only the limit a test is about can refuse.
OPEN = dict(
    max_startups=(10**6, 30, 10**6), per_peer=10**6, peer_rate=1e9, peer_burst=10**9, rate=1e9, burst=10**9, grace=3600.0
)


@implementer(IOrigin)
class Peer(CloseNotifier):
    """
    The origin of an M1 as a TCP connection from C{socket_address} gives it.
    """

    identity = None

    def __init__(self, socket_address: str) -> None:
        self.socket_address = socket_address
        self.connected = True

    def close(self) -> None:
        self.connected = False
        self._notify_closed()


class Sink(Worker):
    """
    Where the in-memory M1s come from: it receives the M2 answers.
    """

    access = ANYONE

    def __init__(self) -> None:
        self.messages = []

    def receive(self, message) -> None:
        self.messages.append(message)


def secure_log_lines(testcase, needle: str) -> LogWatch:
    """
    The log events of the secure channel code whose text holds C{needle}.
    """
    return LogWatch(testcase, lambda e: e.get("log_namespace") == "ockamtw.secure" and needle in log_text(e))


# --- in memory --------------------------------------------------------------------------------------


class ListenerInMemory(SynchronousTestCase):
    def listener(self, limits=None, **kwargs):
        """
        A node on a Clock with a listener at C{api} and a sink; returns
        the listener (C{self.node}, C{self.clock}, C{self.sink} set).
        """
        self.clock = Clock()
        self.clock.advance(1000)
        self.node = Node(self.clock, name="mem", services=False, identity=IDENTITY)
        self.sink = Sink()
        self.node.start_worker("sink", self.sink)
        if limits is not None:
            kwargs["limits"] = limits
        listener = SecureChannelListener(IDENTITY, **kwargs)
        self.node.start_worker("api", listener)
        self.base_workers = len(self.node.worker_addresses())
        return listener

    def m1(self, origin, n: int = 1) -> None:
        for _ in range(n):
            message = TransportMessage(Route([Address.local("api")]), Route([Address.local("sink")]), M1_PAYLOAD)
            message.origin = origin
            self.node.deliver(message)

    def half_open(self, listener) -> int:
        return sum(1 for e in listener.channels if e.state != "up")

    def assertNoExtraState(self, listener) -> None:
        """
        Every half-open handshake has its three workers and nothing else:
        refused M1s left nothing behind.
        """
        self.assertEqual(len(self.node.worker_addresses()), self.base_workers + 3 * len(listener.channels))
        self.assertEqual(listener.stats()["half_open"], self.half_open(listener))


IDENTITY = LocalIdentity.create()


class EarlyDropTests(ListenerInMemory):
    def test_probability(self):
        """
        0 below start, rate% at start, linear to 1 at full.
        """
        self.assertEqual(early_drop_probability(9, 10, 30, 100), 0.0)
        self.assertAlmostEqual(early_drop_probability(10, 10, 30, 100), 0.30)
        self.assertAlmostEqual(early_drop_probability(55, 10, 30, 100), 0.65)
        self.assertAlmostEqual(early_drop_probability(99, 10, 30, 100), 0.3 + 0.7 * 89 / 90)
        self.assertEqual(early_drop_probability(100, 10, 30, 100), 1.0)
        self.assertEqual(early_drop_probability(500, 10, 30, 100), 1.0)
        # start == full: a hard limit.
        self.assertEqual(early_drop_probability(19, 20, 100, 20), 0.0)
        self.assertEqual(early_drop_probability(20, 20, 100, 20), 1.0)

    def _refused_fraction(self, listener, trials: int) -> float:
        """
        C{trials} M1 from new peers with the half-open count held where it
        is (each accepted end is closed at once).
        """
        refused = sum(listener.refused.values())
        answered = len(self.sink.messages)
        for i in range(trials):
            before = set(listener.channels)
            self.m1(Peer(f"10.1.{i // 250}.{i % 250}:1"))
            for end in listener.channels - before:
                end.close()
        refused = sum(listener.refused.values()) - refused
        # Every M1 was answered with M2 or refused, never both.
        self.assertEqual(len(self.sink.messages) - answered, trials - refused)
        return refused / trials

    def _fill(self, listener, n: int) -> list:
        peers = []
        i = 0
        while len(listener.channels) < n:
            peer = Peer(f"10.2.{i // 250}.{i % 250}:1")
            i += 1
            self.m1(peer)
            peers.append(peer)
        self.assertEqual(len(listener.channels), n)
        return peers

    def test_measured(self):
        """
        With a seeded random, the share of M1 refused (each from a new
        peer) is 0 below start, about 30% at start (10 half-open), about
        65% half way (55), and all of them at full (100), where no random
        number is drawn; refused M1 leave no state.
        """
        draws = []
        seeded = random.Random(20240611)

        def rnd():
            draws.append(1)
            return seeded.random()

        listener = self.listener(HandshakeLimits(**dict(OPEN, max_startups=(10, 30, 100))), random=rnd)
        self._fill(listener, 9)
        self.assertEqual(self._refused_fraction(listener, 200), 0.0)
        self.assertEqual(draws, [])
        self._fill(listener, 10)
        at_start = self._refused_fraction(listener, 1500)
        self.assertLess(abs(at_start - 0.30), 0.05, at_start)
        self._fill(listener, 55)
        middle = self._refused_fraction(listener, 1500)
        self.assertLess(abs(middle - 0.65), 0.05, middle)
        self.assertNoExtraState(listener)
        # Fill to full: the last ones only with some refused on the way.
        self._fill(listener, 100)
        drawn = len(draws)
        self.assertEqual(self._refused_fraction(listener, 300), 1.0)
        self.assertEqual(len(draws), drawn)
        self.assertEqual(listener.refused["full"], 300)
        self.assertEqual(listener.stats()["half_open"], 100)
        self.assertNoExtraState(listener)
        self.assertEqual(sum(listener.refused.values()), listener.refused["early_drop"] + listener.refused["full"])


class PerPeerTests(ListenerInMemory):
    def test_hostsCountTogether(self):
        """
        Connections from one host share one per-peer cap; another host has
        its own; IPv6 addresses count by /64; this node's own M1 is not
        counted against any peer.
        """
        listener = self.listener(HandshakeLimits(**dict(OPEN, per_peer=5)))
        a1, a2, b = Peer("10.0.0.1:1000"), Peer("10.0.0.1:2000"), Peer("10.0.0.2:1000")
        self.m1(a1, 4)
        self.m1(a2, 4)
        self.assertEqual(len(listener.channels), 5)
        self.assertEqual(listener.refused["per_peer"], 3)
        self.m1(b, 8)
        self.assertEqual(len(listener.channels), 10)
        self.assertEqual(listener.refused["per_peer"], 6)
        v6a, v6b, v6c = Peer("[2001:db8::1]:1"), Peer("[2001:db8::ffff:2]:2"), Peer("[2001:db8:0:1::1]:3")
        self.m1(v6a, 3)
        self.m1(v6b, 3)
        self.m1(v6c, 3)
        self.assertEqual(len(listener.channels), 18)
        self.m1(None, 8)
        self.assertEqual(len(listener.channels), 26)
        self.assertEqual(len(self.sink.messages), 26)
        stats = listener.stats()
        self.assertEqual(stats["refused"]["per_peer"], 7)
        self.assertEqual((stats["half_open"], stats["accepted"], stats["peers"]), (26, 26, 4))
        self.assertNoExtraState(listener)

    def test_identitiesAndRelays(self):
        """
        M1 through outer secure channels count by the channel's peer
        identity; through a relay's forwarder, by the party it relays for.
        """
        listener = self.listener(HandshakeLimits(**dict(OPEN, per_peer=2)))
        first, second, other = Peer("10.0.0.1:1"), Peer("10.0.0.2:1"), Peer("10.0.0.1:2")
        first.identity = second.identity = "P" + "1" * 64
        other.identity = "P" + "2" * 64
        self.m1(first, 2)
        self.m1(second, 2)
        self.m1(other, 2)
        self.assertEqual(len(listener.channels), 4)
        owner = Peer("10.0.0.9:1")
        self.m1(Relayed(owner), 3)
        self.m1(Relayed(owner), 1)
        self.assertEqual(len(listener.channels), 6)
        self.assertEqual(listener.refused["per_peer"], 4)
        self.assertNoExtraState(listener)

    def test_hostBlock(self):
        self.assertEqual(host_block("10.0.0.1:5"), "10.0.0.1")
        self.assertEqual(host_block("[2001:db8::1]:5"), "2001:db8::/64")
        self.assertEqual(host_block("[::ffff:10.0.0.1]:5"), "10.0.0.1")
        self.assertEqual(host_block("[::1]:5"), "::/64")

    def test_tokenBuckets(self):
        """
        A peer starts C{peer_burst} handshakes at once and C{peer_rate} a
        second after; all peers together C{burst}, then C{rate}.
        """
        listener = self.listener(HandshakeLimits(**dict(OPEN, peer_rate=2, peer_burst=3, rate=4, burst=6)))
        a, b, c = Peer("10.0.0.1:1"), Peer("10.0.0.2:1"), Peer("10.0.0.3:1")
        self.m1(a, 5)
        self.m1(b, 5)
        self.assertEqual(len(listener.channels), 6)
        self.assertEqual(listener.refused["peer_rate"], 4)
        self.m1(c, 2)
        self.assertEqual(len(listener.channels), 6)
        self.assertEqual(listener.refused["rate"], 2)
        # Half a second: a and b have one token each, the listener two.
        self.clock.advance(0.5)
        self.m1(a, 2)
        self.m1(b, 2)
        self.m1(c, 1)
        self.assertEqual(len(listener.channels), 8)
        self.assertEqual(listener.refused, dict(listener.refused, peer_rate=6, rate=3))
        # Later, bursts again.
        self.clock.advance(60)
        self.m1(c, 4)
        self.assertEqual(len(listener.channels), 11)
        self.assertEqual(len(self.sink.messages), 11)
        self.assertNoExtraState(listener)

    def test_peersRemembered(self):
        """
        The rates of at most C{max_peers} peers are kept: a flood from many
        addresses does not grow the listener.
        """
        listener = self.listener(HandshakeLimits(**dict(OPEN, peer_rate=1, peer_burst=1, max_peers=50)))
        for i in range(2000):
            peer = Peer(f"10.3.{i // 250}.{i % 250}:1")
            self.m1(peer)
            for end in list(listener.channels):
                end.close()
        self.assertLessEqual(len(listener._peer_buckets), 50)
        self.assertEqual(listener.stats()["accepted"], 2000)

    def test_limitsValidated(self):
        self.assertEqual(HandshakeLimits.parse_max_startups("10:30:100"), (10, 30, 100))
        self.assertEqual(HandshakeLimits.parse_max_startups("20"), (20, 100, 20))
        for bad in ("10:30", "a:b:c", "10:130:100", "50:30:10", "0:30:100"):
            self.assertRaises(ValueError, HandshakeLimits.parse_max_startups, bad)
        self.assertEqual(HandshakeLimits.parse_rate("100/50"), (100.0, 50))
        self.assertEqual(HandshakeLimits.parse_rate("0.5"), (0.5, 1))
        for bad in ("", "x", "0", "10/0", "-1/3"):
            self.assertRaises(ValueError, HandshakeLimits.parse_rate, bad)
        self.assertRaises(ValueError, HandshakeLimits, max_startups=(10, 30, 5))
        self.assertRaises(ValueError, HandshakeLimits, per_peer=0)
        self.assertRaises(ValueError, HandshakeLimits, grace=0)

    def test_nodeOption(self):
        """
        The node's C{handshake_limits} apply to its listeners, unless a
        listener is given its own.
        """
        limits, other = HandshakeLimits(per_peer=2), HandshakeLimits(per_peer=3, grace=2.5)
        node = Node(Clock(), name="opt", identity=IDENTITY, handshake_limits=limits)
        self.assertIs(node.secure_listeners["api"].limits, limits)
        self.assertIs(node.create_secure_channel_listener("second").limits, limits)
        third = node.create_secure_channel_listener("third", limits=other)
        self.assertEqual((third.limits, third.timeout), (other, 2.5))
        node.create_secure_channel_listener("api", limits=other)
        self.assertIs(node.secure_listeners["api"].limits, other)
        self.assertEqual(Node(Clock(), name="def", identity=IDENTITY).secure_listeners["api"].limits, HandshakeLimits())


class GraceTests(ListenerInMemory):
    def test_freedAfterGrace(self):
        """
        Half-open handshakes end C{grace} seconds after their M1 (10 s by
        default), their workers gone, their peer's slots free again; 25 of
        them ending at once do not log a line each.
        """
        lines = secure_log_lines(self, "did not complete")
        listener = self.listener()
        self.assertEqual(listener.timeout, 10.0)
        peers = [Peer(f"10.0.0.{i}:1") for i in range(5)]
        for peer in peers:
            self.m1(peer, 5)
            self.clock.advance(0.5)
        # 5 peers x 5 at once is past start (10): some were dropped early.
        held = len(listener.channels)
        self.assertGreaterEqual(held, 10)
        self.assertEqual(len(self.sink.messages), held)
        self.clock.advance(10.0 - 2.5 - 0.01)
        self.assertEqual(len(listener.channels), held)
        self.clock.advance(2.5)
        self.assertEqual(listener.channels, set())
        self.assertEqual(len(self.node.worker_addresses()), self.base_workers)
        self.assertLessEqual(len(lines.events), 5)
        self.assertGreaterEqual(len(lines.events), 1)
        stats = listener.stats()
        self.assertEqual((stats["half_open"], stats["peers"], stats["timed_out"]), (0, 0, held))
        self.m1(peers[0], 5)
        self.assertEqual(len(listener.channels), 5)

    def test_freedWhenOriginCloses(self):
        """
        The half-open handshakes of a connection end when it closes, at
        once, and connections closing together do not log a line each; an
        M1 from a closed connection is refused before any work.
        """
        lines = secure_log_lines(self, "closed during the handshake")
        listener = self.listener()
        a1, a2, b, c = Peer("10.0.0.1:1"), Peer("10.0.0.1:2"), Peer("10.0.0.2:1"), Peer("10.0.0.3:1")
        self.m1(a1, 3)
        self.m1(a2, 2)
        self.m1(b, 2)
        self.m1(c, 2)
        self.assertEqual(len(listener.channels), 9)
        a1.close()
        self.assertEqual(len(listener.channels), 6)
        self.assertEqual(len(self.node.worker_addresses()), self.base_workers + 3 * 6)
        for peer in (a2, b, c):
            peer.close()
        self.assertEqual(listener.channels, set())
        self.assertEqual(len(self.node.worker_addresses()), self.base_workers)
        self.assertLessEqual(len(lines.events), 5)
        stats = listener.stats()
        self.assertEqual((stats["half_open"], stats["peers"], stats["failed"]), (0, 0, 9))
        self.m1(b)
        self.assertEqual(listener.channels, set())
        self.assertEqual(listener.refused["malformed"], 1)
        # Another connection of the same host starts afresh.
        self.m1(Peer("10.0.0.1:3"), 5)
        self.assertEqual(len(listener.channels), 5)


class RefusalLogTests(ListenerInMemory):
    def test_throttled(self):
        """
        A thousand refusals log a few lines; the next period's first line
        says how many were held back.
        """
        lines = secure_log_lines(self, "refused (per_peer")
        listener = self.listener(timeout=60.0)
        peer = Peer("10.0.0.1:1")
        self.m1(peer, 1005)
        self.assertEqual(len(lines.events), 5)
        self.assertEqual(listener.refused["per_peer"], 1000)
        self.assertIn("10.0.0.1:1", log_text(lines.events[0]))
        self.clock.advance(10)
        self.m1(peer)
        self.assertEqual(len(lines.events), 6)
        self.assertEqual(lines.events[-1]["suppressed"], 995)
        self.assertEqual(set(listener.stats()["refused"]), set(REFUSAL_REASONS))


# --- a flood on real sockets ---------------------------------------------------------------------------


class Flooder(Protocol):
    """
    Writes M1 frames to C{api} as fast as the connection takes them (a
    pull producer: a new chunk each time the transport's buffer is
    empty); ignores what it reads.
    """

    CHUNK = 256

    def __init__(self, answer: bool = False) -> None:
        body = h_message(["0#api"], ["0#" + "c" * 32], M1_PAYLOAD)
        self.chunk = h_frame(body) * self.CHUNK
        self.frames = 0
        #: M2 received (each a handshake the node took on)
        self.answered = 0
        self._answer = answer
        self._buffer = b""

    def connectionMade(self) -> None:
        self.transport.registerProducer(self, False)

    def resumeProducing(self) -> None:
        self.transport.write(self.chunk)
        self.frames += self.CHUNK

    def stopProducing(self) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        """
        Count M2; with C{answer}, send each a bad M3 at once, which ends
        the handshake and frees its slot (so only the rates bind).
        """
        buffer = self._buffer + data
        while len(buffer) >= 2 and len(buffer) >= 2 + int.from_bytes(buffer[:2], "big"):
            n = int.from_bytes(buffer[:2], "big")
            frame, buffer = buffer[: 2 + n], buffer[2 + n :]
            self.answered += 1
            if self._answer:
                _, ret, _ = r_frame(frame)
                self.transport.write(h_frame(h_message(ret[:1], ["0#" + "c" * 32], b"\x40" + bytes(64))))
        self._buffer = buffer


def can_bind(host: str) -> bool:
    s = socket.socket()
    try:
        s.bind((host, 0))
        return True
    except OSError:
        return False
    finally:
        s.close()


class FloodTests(SecureTestCase):
    timeout = 60

    #: Echo round trips timed during the flood, and the median we accept.
    ROUND_TRIPS = 15
    MEDIAN_BOUND = 0.200

    async def flood(self, port: int, connections: int, source: str = "127.0.0.1", answer: bool = False):
        flooders = []
        for _ in range(connections):
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5, bindAddress=(source, 0))
            proto = await connectProtocol(endpoint, Flooder(answer))
            self.addCleanup(proto.transport.abortConnection)
            flooders.append(proto)
        return flooders

    def half_open(self, listener) -> int:
        return sum(1 for e in listener.channels if e.state != "up")

    async def flood_scenario(self, n2, at: str, flood_from: str, connections: int, cap: int, answer: bool = False):
        """
        n1 opens a channel to n2; the flood starts; n1's echo round trips
        are timed, as are requests through the channel; n1 then opens a
        new channel.  Half-open handshakes and n2's workers stay bounded
        throughout; closing the flood's connections frees what they held.
        """
        listener = n2.secure_listeners["api"]
        n1 = self.make_node("n1")
        conn = await self.connection(n1, at)
        enc = await self.within(n1.create_secure_channel(conn + ["api"], timeout=5), 6, "the channel before the flood")
        base_workers = len(n2.worker_addresses())
        port = int(at.rsplit("/", 1)[1])
        flood_started = time.monotonic()
        flooders = await self.flood(port, connections, flood_from, answer)
        sources = {f"{h.host}:{h.port}" for h in (f.transport.getHost() for f in flooders)}

        def flooded():
            return sum(c.messages_in for c in n2.tcp.connections if c.socket_address in sources)

        await wait_until(lambda: flooded() > 3000 * connections, 10, "the flood under way")
        most_half_open = most_workers = 0
        echo, through = [], []
        for i in range(self.ROUND_TRIPS):
            started = time.monotonic()
            reply = await self.within(n1.request(conn + ["echo"], b"e%d" % i, 5), 6, f"echo {i} during the flood")
            echo.append(time.monotonic() - started)
            self.assertEqual(reply.payload, b"e%d" % i)
            started = time.monotonic()
            reply = await self.within(
                n1.request(Route([enc, Address.local("echo")]), b"c%d" % i, 5), 6, f"request {i} through the channel"
            )
            through.append(time.monotonic() - started)
            self.assertEqual(reply.payload, b"c%d" % i)
            most_half_open = max(most_half_open, self.half_open(listener))
            most_workers = max(most_workers, len(n2.worker_addresses()))
        frames = sum(f.frames for f in flooders)
        answered, elapsed = sum(f.answered for f in flooders), time.monotonic() - flood_started
        # A new channel from a well-behaved peer, the flood still on.
        started = time.monotonic()
        enc2 = await self.within(n1.create_secure_channel(conn + ["api"], timeout=5), 6, "a channel during the flood")
        setup = time.monotonic() - started
        self.assertEqual(await self.round_trip(n1, enc2, "new"), "NEW")
        self.assertGreater(sum(f.frames for f in flooders), frames, "the flood stopped before the end")
        log.info(
            "{n} flooding connection(s), {m1} M1 read: echo median {echo:.1f} ms (max {max:.1f}), through the "
            "channel {through:.1f} ms, new channel {setup:.1f} ms, half-open <= {half_open}, refused {refused}",
            n=connections,
            m1=flooded(),
            echo=statistics.median(echo) * 1e3,
            max=max(echo) * 1e3,
            through=statistics.median(through) * 1e3,
            setup=setup * 1e3,
            half_open=most_half_open,
            refused=getattr(listener, "refused", None),
        )
        log.info("the flood was answered {answered} M2 in {elapsed:.2f} s", answered=answered, elapsed=elapsed)
        self.assertLessEqual(most_half_open, cap)
        self.assertLessEqual(most_workers, base_workers + connections + 3 * cap)
        self.assertLess(statistics.median(echo), self.MEDIAN_BOUND)
        self.assertLess(statistics.median(through), self.MEDIAN_BOUND)
        # The node took on at most one peer's burst and rate of handshakes
        # (HandshakeLimits().peer_burst, peer_rate: 20, then 10 a second).
        self.assertLessEqual(answered, 20 + 10 * elapsed + 1)
        if answer:
            # More than the half-open cap: handshakes ended as fast as they
            # started, and the rate was what bound.
            self.assertGreaterEqual(answered, 20)
        # The flood's connections close: what they held is freed.
        for f in flooders:
            f.transport.abortConnection()
        await wait_until(lambda: self.half_open(listener) == 0, 5, "the flood's half-open handshakes freed")
        await wait_until(
            lambda: not any(c.socket_address in sources for c in n2.tcp.connections), 5, "the flood's connections closed"
        )
        self.assertEqual(len(n2.worker_addresses()), base_workers + 3)

    @async_test
    async def test_floodFromOneConnection(self):
        """
        One connection floods; the listener counts each connection as a
        peer (an injected grouping: all loopback is one host), so a second
        connection from the same host still gets through.  At most
        C{per_peer} (5) handshakes are half-open.
        """
        n2, l2 = await self.listening_node("n2")
        n2.secure_listeners["api"].peer_of = lambda origin: origin
        await self.flood_scenario(n2, f"/ip4/127.0.0.1/tcp/{l2.port}", "127.0.0.1", 1, cap=5)

    @async_test
    async def test_floodFromSeveralConnections(self):
        """
        Three connections from 127.0.0.2 flood, counted as one host (the
        default grouping); n1, at 127.0.0.1, is another host.
        """
        if not can_bind("127.0.0.2"):
            raise SkipTest("127.0.0.2 is not a loopback address here")
        n2, l2 = await self.listening_node("n2")
        await self.flood_scenario(n2, f"/ip4/127.0.0.1/tcp/{l2.port}", "127.0.0.2", 3, cap=5)

    @async_test
    async def test_floodThatFreesItsSlots(self):
        """
        Two connections from 127.0.0.2 answer every M2 with a bad M3 at
        once, so their handshakes end as fast as they start and the
        half-open cap alone would let them go on: the peer's token bucket
        stops them.  The node answers at most a burst of 20, then 10 M1 a
        second.
        """
        if not can_bind("127.0.0.2"):
            raise SkipTest("127.0.0.2 is not a loopback address here")
        n2, l2 = await self.listening_node("n2")
        await self.flood_scenario(n2, f"/ip4/127.0.0.1/tcp/{l2.port}", "127.0.0.2", 2, cap=5, answer=True)


class TwistdOptionTests(SynchronousTestCase):
    """
    The handshake limits as twistd options, and in the node's status.
    """

    def make(self, *args):
        from twisted.internet.testing import MemoryReactorClock

        from ockamtw.tap import Options, makeService

        options = Options()
        options.parseOptions(list(args))
        return makeService(options, MemoryReactorClock())

    def test_optionsReachTheListener(self):
        node = self.make("--max-startups", "5:50:20", "--handshake-per-peer", "2",
                         "--handshake-peer-rate", "3/6", "--handshake-rate", "40/80", "--handshake-grace", "4")
        limits = node.secure_listeners["api"].limits
        self.assertEqual(
            (limits.max_startups, limits.per_peer, limits.peer_rate, limits.peer_burst, limits.rate, limits.burst, limits.grace),
            ((5, 50, 20), 2, 3.0, 6, 40.0, 80, 4.0),
        )

    def test_statusShowsLimitsAndCounts(self):
        from ockamtw.control.server import NodeController

        node = self.make("--max-startups", "7")
        status = NodeController(node).limits()
        self.assertEqual(status["limits"]["max_startups"], "7:100:7")
        self.assertEqual(status["limits"]["handshake_per_peer"], 5)
        self.assertEqual(status["handshakes"]["api"]["half_open"], 0)
        self.assertEqual(status["refused"]["messages"], 0)

    def test_badValuesAreUsageErrors(self):
        from twisted.python.usage import UsageError

        from ockamtw.tap import Options

        for args in (["--max-startups", "x"], ["--max-startups", "9:30:3"], ["--handshake-rate", "0/5"],
                     ["--handshake-per-peer", "0"], ["--handshake-grace", "-1"]):
            e = self.assertRaises(UsageError, Options().parseOptions, args)
            self.assertIn(args[0], str(e))
