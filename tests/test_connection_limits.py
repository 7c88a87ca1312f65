"""
Limits on accepted connections (L{ockamtw.transport.limits}): how many in
all and per peer address, how long until the first complete frame, how
long a partial frame may wait, how much partial frames may take together;
TCP keepalive on every connection; the limits and counters in the node's
status and the twistd options that set them.

In memory (a L{MemoryReactorClock} and the listener's own factory on
L{StringTransport}s) where a clock suffices, real loopback sockets (port 0)
where the socket itself matters.
"""

from __future__ import annotations

import io
import json
import socket

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from ockamtw import Node
from ockamtw.control.server import ControlResource, NodeController
from ockamtw.portal import MAX_STREAMS, default_max_streams
from ockamtw.tap import Options, makeService
from ockamtw.transport.tcp import MODE_ACCEPTED, MODE_OUTGOING
from ockamtw.wire import MAX_FRAME

from .helpers import LogWatch, RawFrameClient, accepted_connection, async_test, connect_raw, deadline, start_node

# From tests/data/vectors.json: "uppercase request as a TCP
# frame" and its reply (as in tests.test_tcp_unit).
UPPERCASE_REQUEST_FRAME = bytes.fromhex(
    "0037010100097570706572636173650100203031323334353637383961626364656630313233343536373839616263646566060568656c6c6f"
)
UPPERCASE_REPLY_FRAME = bytes.fromhex(
    "0037010100203031323334353637383961626364656630313233343536373839616263646566010009757070657263617365060548454c4c4f"
)
#: A heartbeat: empty routes, empty payload.
HEARTBEAT_FRAME = bytes.fromhex("000401000000")
#: The 2-byte header of a frame of the largest size, and a body for it.
BIG_HEADER = MAX_FRAME.to_bytes(2, "big")


def captured_warnings(testcase) -> LogWatch:
    """
    The warnings of the TCP transport from now on.
    """
    from twisted.logger import LogLevel

    return LogWatch(
        testcase, lambda e: e.get("log_namespace") == "ockamtw.transport.tcp" and e.get("log_level") == LogLevel.warn
    )


class Peer:
    """
    One accepted connection in memory: the listener's factory built its
    protocol for C{host:port}, on a L{StringTransport}.
    """

    def __init__(self, factory, host: str, port: int) -> None:
        cls = IPv6Address if ":" in host else IPv4Address
        addr = cls("TCP", host, port)
        self.transport = StringTransport(peerAddress=addr, hostAddress=IPv4Address("TCP", "127.0.0.1", 7000))
        self.protocol = factory.buildProtocol(addr)
        self.protocol.makeConnection(self.transport)
        self.connection = getattr(self.protocol, "connection", None)

    @property
    def closed_by_node(self) -> bool:
        return self.transport.disconnecting

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def lose(self) -> None:
        """
        The socket is gone (after the node closed it, or the peer did).
        """
        self.protocol.connectionLost(Failure(ConnectionDone()))

    def answers(self) -> bool:
        """
        Whether an uppercase request on this connection is answered.
        """
        self.transport.clear()
        self.send(UPPERCASE_REQUEST_FRAME)
        return self.transport.value() == UPPERCASE_REPLY_FRAME


class InMemory:
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.node = Node(self.reactor, name="n1")
        self.successResultOf(self.node.tcp.listen("7000"))
        self.factory = self.reactor.tcpServers[0][1]

    @property
    def limits(self):
        return self.node.tcp.guard.limits

    def peer(self, host="10.0.0.1", port=None) -> Peer:
        self._port = getattr(self, "_port", 40000) + 1
        return Peer(self.factory, host, port or self._port)

    def status(self) -> dict:
        return NodeController(self.node).show()

    def tick(self, seconds: float, step: float = 1.0) -> None:
        """
        Let C{seconds} pass, C{step} at a time (as a running reactor would:
        one jump would make every check run late).
        """
        while seconds > 1e-9:
            self.reactor.advance(min(step, seconds))
            seconds -= step

    def outgoing(self, target: str) -> Peer:
        """
        An outgoing connection of the node to C{target}, made.
        """
        d = self.node.tcp.connect(target)
        host, port, factory = self.reactor.tcpClients[-1][:3]
        p = Peer(factory, host, port)
        p.connection = self.successResultOf(d)
        return p


class AdmissionTests(InMemory, SynchronousTestCase):
    """
    Accepted connections, per peer address and in all: one over a limit
    is closed at once; the others work; a slot freed is taken again.
    """

    def test_per_peer(self):
        self.limits.max_per_peer = 3
        peers = [self.peer("10.0.0.1") for _ in range(3)]
        extra = self.peer("10.0.0.1")
        self.assertTrue(extra.closed_by_node)
        self.assertIsNone(extra.connection)
        self.assertEqual(len(self.node.tcp.connections), 3)
        for p in peers:
            self.assertFalse(p.closed_by_node)
            self.assertTrue(p.answers())
        other = self.peer("10.0.0.2")
        self.assertFalse(other.closed_by_node)
        self.assertTrue(other.answers())
        extra.lose()  # the refused socket goes: nothing to count
        self.assertEqual(self.node.tcp.guard.accepted, 4)

        peers[0].connection.close()
        peers[0].lose()
        again = self.peer("10.0.0.1")
        self.assertFalse(again.closed_by_node)
        self.assertTrue(again.answers())
        self.assertTrue(self.peer("10.0.0.1").closed_by_node)
        self.assertEqual(self.status()["refused"]["max_connections_per_peer"], 2)

    def test_per_peer_default(self):
        """
        By default, 256 connections from one address are accepted and the
        257th is not.
        """
        peers = [self.peer("10.0.0.1") for _ in range(256)]
        self.assertFalse(any(p.closed_by_node for p in peers))
        self.assertTrue(self.peer("10.0.0.1").closed_by_node)
        self.assertTrue(peers[-1].answers())

    def test_total(self):
        self.limits.max_connections = 3
        peers = [self.peer(f"10.0.0.{i}") for i in range(1, 4)]
        extra = self.peer("10.0.0.9")
        self.assertTrue(extra.closed_by_node)
        self.assertTrue(all(p.answers() for p in peers))
        peers[1].lose()
        again = self.peer("10.0.0.9")
        self.assertFalse(again.closed_by_node)
        self.assertTrue(again.answers())
        self.assertTrue(self.peer("10.0.0.10").closed_by_node)
        self.assertEqual(self.status()["refused"]["max_connections"], 2)

    def test_outgoing_not_counted(self):
        """
        Connections this node makes count towards no limit.
        """
        self.limits.max_connections = 1
        self.limits.max_per_peer = 1
        for i in range(3):
            p = self.outgoing(f"10.0.0.1:{7001 + i}")
            self.assertFalse(p.closed_by_node)
            self.assertEqual(p.connection.mode, MODE_OUTGOING)
        accepted = self.peer("10.0.0.1")
        self.assertFalse(accepted.closed_by_node)
        self.assertTrue(accepted.answers())

    def test_refusals_logged_at_a_bounded_rate(self):
        """
        Refusals are warned about, a few per period, and all counted.
        """
        warnings = captured_warnings(self)
        self.limits.max_per_peer = 1
        self.peer("10.0.0.1")
        for _ in range(50):
            self.assertTrue(self.peer("10.0.0.1").closed_by_node)
        self.assertEqual(self.status()["refused"]["max_connections_per_peer"], 50)
        warnings = warnings.texts()
        self.assertTrue(1 <= len(warnings) <= 10, warnings)
        self.assertIn("10.0.0.1", warnings[0])
        self.assertIn("--max-connections-per-peer", warnings[0])

    def test_ipv6_counted_by_64(self):
        """
        IPv6 peers count by /64 (a host has a whole /64 to pick addresses
        from); an IPv4-mapped address counts as its IPv4 address.
        """
        self.limits.max_per_peer = 2
        self.assertFalse(self.peer("2001:db8:1:2::1").closed_by_node)
        self.assertFalse(self.peer("2001:db8:1:2:ffff::9").closed_by_node)
        self.assertTrue(self.peer("2001:db8:1:2::77").closed_by_node)
        self.assertFalse(self.peer("2001:db8:1:3::1").closed_by_node)
        self.assertFalse(self.peer("192.0.2.1").closed_by_node)
        self.assertFalse(self.peer("::ffff:192.0.2.1").closed_by_node)
        self.assertTrue(self.peer("192.0.2.1").closed_by_node)

    def test_peer_key(self):
        from ockamtw.transport import limits as L

        self.assertEqual(L.peer_key(IPv4Address("TCP", "10.1.2.3", 5)), "10.1.2.3")
        self.assertEqual(L.peer_key(IPv6Address("TCP", "fe80::1%eth0", 5)), "fe80::/64")
        self.assertIsNone(L.peer_key(UNIXAddress("/tmp/x")))

    def test_unix_peers_only_in_total(self):
        """
        Peers without an IP address (a UNIX socket listener) count only
        towards the total.
        """
        self.limits.max_per_peer = 1
        self.limits.max_connections = 3
        peers = []
        for _ in range(4):
            t = StringTransport(peerAddress=UNIXAddress(None), hostAddress=UNIXAddress("/tmp/node"))
            proto = self.factory.buildProtocol(None)
            proto.makeConnection(t)
            peers.append(t)
        self.assertEqual([t.disconnecting for t in peers], [False, False, False, True])


class FirstFrameTests(InMemory, SynchronousTestCase):
    """
    An accepted connection that completes no frame is closed after
    C{first_frame_timeout} (30 s by default); one that does is kept.
    """

    def test_silent(self):
        p = self.peer()
        self.reactor.advance(29.9)
        self.assertFalse(p.closed_by_node)
        self.reactor.advance(0.2)
        self.assertTrue(p.closed_by_node)
        p.lose()
        self.assertEqual(self.node.tcp.connections, [])
        self.assertEqual(self.status()["closed"]["first_frame_timeout"], 1)

    def test_half_a_frame(self):
        p = self.peer()
        p.send(UPPERCASE_REQUEST_FRAME[:20])
        self.reactor.advance(30.1)
        self.assertTrue(p.closed_by_node)

    def test_one_byte_a_second(self):
        """
        Bytes that never complete a frame do not count as progress.
        """
        p = self.peer()
        for i in range(31):
            p.send(BIG_HEADER[:1] if i == 0 else b"\x00")
            self.reactor.advance(1)
        self.assertTrue(p.closed_by_node)

    def test_complete_frame_kept(self):
        p = self.peer()
        calls = len(self.reactor.getDelayedCalls())
        self.reactor.advance(10)
        self.assertTrue(p.answers())
        self.reactor.advance(1000)
        self.assertFalse(p.closed_by_node)
        self.assertTrue(p.answers())
        # Once its check has seen the frame, an idle connection has no timer.
        self.assertEqual(len(self.reactor.getDelayedCalls()), calls - 1)

    def test_heartbeat_counts(self):
        """
        A heartbeat is a complete frame; the connection beside it that sent
        nothing is closed.
        """
        p, silent = self.peer(), self.peer()
        p.send(HEARTBEAT_FRAME)
        self.tick(100, 5)
        self.assertFalse(p.closed_by_node)
        self.assertTrue(silent.closed_by_node)

    def test_configured(self):
        self.limits.first_frame_timeout = 5.0
        p = self.peer()
        self.reactor.advance(5.1)
        self.assertTrue(p.closed_by_node)

    def test_off(self):
        self.limits.first_frame_timeout = None
        p = self.peer()
        self.reactor.advance(1000)
        self.assertFalse(p.closed_by_node)

    def test_outgoing_not_timed(self):
        """
        A connection this node made may stay silent (it writes a
        heartbeat, but needs to read nothing); an accepted one beside it is
        closed.
        """
        p = self.outgoing("10.0.0.1:7001")
        accepted = self.peer()
        self.tick(1000, 10)
        self.assertFalse(p.closed_by_node)
        self.assertTrue(accepted.closed_by_node)

    def test_timer_cancelled_on_close(self):
        """
        A connection that closes leaves no timer behind.
        """
        before = len(self.reactor.getDelayedCalls())
        p = self.peer()
        p.send(UPPERCASE_REQUEST_FRAME[:10])
        self.assertEqual(len(self.reactor.getDelayedCalls()), before + 1)
        p.lose()
        self.assertEqual(len(self.reactor.getDelayedCalls()), before)
        self.reactor.advance(1000)
        self.assertEqual(self.status()["closed"], {"first_frame_timeout": 0, "frame_timeout": 0, "partial_frame_budget": 0})

    def test_late_check_judges_nothing(self):
        """
        A check that runs long after it was due (the event loop was held
        up, so reads waited too) does not close: it looks again a quarter
        of a timeout later.
        """
        p = self.peer()
        self.reactor.advance(100)  # one jump: the check runs 70 s late
        self.assertFalse(p.closed_by_node)
        p.send(HEARTBEAT_FRAME)  # the read that waited behind it
        self.reactor.advance(10)
        self.assertFalse(p.closed_by_node)
        q = self.peer()
        self.reactor.advance(100)
        self.reactor.advance(7.6)
        self.assertTrue(q.closed_by_node)


class HelloTests(InMemory, SynchronousTestCase):
    """
    A silent outgoing connection writes one heartbeat after a second, so
    that an ockamtw client that connects early (an inlet, a kept
    connection) is not closed by the peer's first-frame timeout.
    """

    def test_silent_client_kept(self):
        client_node = Node(self.reactor, name="client")
        client_node.tcp.connect("127.0.0.1:7000")
        host, port, factory = self.reactor.tcpClients[-1][:3]
        client = Peer(factory, host, port)
        server = self.peer("127.0.0.1", port=50000)
        self.tick(1)
        self.assertEqual(client.transport.value(), HEARTBEAT_FRAME)
        server.send(client.transport.value())
        self.tick(100, 5)
        self.assertFalse(server.closed_by_node)
        self.assertEqual(client.transport.value(), HEARTBEAT_FRAME)  # only one

    def test_only_when_silent(self):
        """
        Only an outgoing connection on which this node wrote nothing writes
        the heartbeat: not one that carried a message, not an accepted one.
        """
        written = self.outgoing("10.0.0.1:7001")
        self.node.send([written.connection.address, "echo"], b"x")
        sent = written.transport.value()
        silent = self.outgoing("10.0.0.1:7002")
        accepted = self.peer()
        self.tick(5)
        self.assertEqual(written.transport.value(), sent)
        self.assertEqual(silent.transport.value(), HEARTBEAT_FRAME)
        self.assertEqual(accepted.transport.value(), b"")


class UndecodableTests(InMemory, SynchronousTestCase):
    def test_warnings_bounded(self):
        """
        A peer sending undecodable frames gets a few warnings logged, not
        one per frame; they count as frames (the stream is in sync).
        """
        lines = captured_warnings(self)
        p = self.peer()
        p.send(b"\x00\x01\xff" * 200)
        self.assertTrue(1 <= len(lines.events) <= 10, len(lines.events))
        self.assertEqual(p.connection.frames_in, 200)
        self.assertTrue(p.answers())


class PartialFrameTests(InMemory, SynchronousTestCase):
    """
    A partial frame waits at most about C{frame_timeout} (30 s) with no
    frame completing while this node reads; partial frames of all accepted
    connections share a budget.
    """

    def test_stalled_after_a_frame(self):
        p = self.peer()
        p.send(HEARTBEAT_FRAME + UPPERCASE_REQUEST_FRAME[:30])
        self.tick(30)
        self.assertFalse(p.closed_by_node)
        self.tick(30.1)  # within two timeouts
        self.assertTrue(p.closed_by_node)
        self.assertEqual(self.status()["closed"]["frame_timeout"], 1)

    def test_trickled_frame(self):
        """
        A 64 KiB frame sent one byte a second is closed long before it
        could hold its 64 KiB.
        """
        p = self.peer()
        p.send(HEARTBEAT_FRAME + BIG_HEADER)
        for _ in range(61):
            if p.closed_by_node:
                break
            p.send(b"\x00")
            self.reactor.advance(1)
        self.assertTrue(p.closed_by_node)

    def test_steady_stream_kept(self):
        """
        A connection whose frames keep completing is kept, even though a
        partial one is nearly always waiting.
        """
        p, stuck = self.peer(), self.peer()
        stuck.send(HEARTBEAT_FRAME + UPPERCASE_REQUEST_FRAME[:50])
        stream = UPPERCASE_REQUEST_FRAME * 400
        for i in range(0, len(stream), 50):  # never on a frame boundary
            p.send(stream[i : i + 50])
            self.reactor.advance(0.5)
        self.assertFalse(p.closed_by_node)
        self.assertEqual(p.connection.messages_in, 400)
        self.assertTrue(stuck.closed_by_node)

    def test_paused_by_this_node_not_counted(self):
        """
        While this node has paused reading (back pressure), a partial
        frame cannot progress: that time does not count.
        """
        p = self.peer()
        p.send(HEARTBEAT_FRAME)
        p.connection.pause_flow()
        p.send(UPPERCASE_REQUEST_FRAME[:30])
        self.tick(200)
        self.assertFalse(p.closed_by_node)
        p.connection.resume_flow()
        self.tick(61)
        self.assertTrue(p.closed_by_node)

    def test_budget(self):
        self.limits.partial_frame_budget = 100_000
        a, b = self.peer("10.0.0.1"), self.peer("10.0.0.2")
        a.send(HEARTBEAT_FRAME + BIG_HEADER + b"\x00" * 60_000)
        self.assertEqual(self.status()["connections"]["partial_frame_bytes"], 60_002)
        b.send(HEARTBEAT_FRAME + BIG_HEADER + b"\x00" * 30_000)
        self.assertFalse(b.closed_by_node)
        b.send(b"\x00" * 20_000)
        self.assertTrue(b.closed_by_node)
        self.assertFalse(a.closed_by_node)
        b.lose()
        self.assertEqual(self.status()["connections"]["partial_frame_bytes"], 60_002)
        a.send(b"\x00" * (MAX_FRAME - 60_000))  # the frame completes
        self.assertEqual(self.status()["connections"]["partial_frame_bytes"], 0)
        self.assertFalse(a.closed_by_node)
        self.assertEqual(self.status()["closed"]["partial_frame_budget"], 1)


class StatusTests(InMemory, SynchronousTestCase):
    """
    The node's status (C{GET /node} of the control API) shows the limits
    and what they refused and closed.
    """

    def get_node(self) -> dict:
        request = DummyRequest([b"node"])
        request.content = io.BytesIO(b"")
        self.assertEqual(ControlResource(NodeController(self.node)).render(request), NOT_DONE_YET)
        self.assertEqual(request.responseCode or 200, 200)
        return json.loads(b"".join(request.written))

    def test_defaults(self):
        from ockamtw.transport import limits as L

        info = self.get_node()
        self.assertEqual(
            info["limits"],
            {
                "max_connections": L.default_max_connections(),
                "max_connections_per_peer": 256,
                "first_frame_timeout": 30.0,
                "frame_timeout": 30.0,
                "partial_frame_budget": 64 * 1024 * 1024,
                "keepalive_idle": 20,
                "keepalive_interval": 5,
                "keepalive_count": 4,
                "relay_names_per_owner": 64,
                "relays_total": 10000,
                "relay_name_length": 128,
                "max_startups": "10:30:100",
                "handshake_per_peer": 5,
                "handshake_peer_rate": "10/20",
                "handshake_rate": "100/100",
                "handshake_grace": 10.0,
                "channels_per_peer": 256,
                "max_channels": 4096,
                "max_streams": default_max_streams(),
            },
        )
        self.assertEqual(
            info["refused"],
            {"max_connections": 0, "max_connections_per_peer": 0, "relay_registrations": 0, "streams": 0, "messages": 0},
        )
        self.assertEqual(info["closed"], {"first_frame_timeout": 0, "frame_timeout": 0, "partial_frame_budget": 0})
        self.assertEqual(info["connections"], {"accepted": 0, "peers": 0, "partial_frame_bytes": 0, "outgoing": 0, "streams": 0})

    def test_default_max_streams(self):
        """
        Half the soft limit on open files, at least 64; L{MAX_STREAMS}
        without a limit.  (The benchmark's 5,000 concurrent streams run
        with the soft limit raised to the hard one, 20,000 here.)
        """
        import resource

        for soft, expected in [(1024, 512), (20000, 10000), (100, 64), (resource.RLIM_INFINITY, MAX_STREAMS)]:
            self.patch(resource, "getrlimit", lambda which, soft=soft: (soft, resource.RLIM_INFINITY))
            self.assertEqual(default_max_streams(), expected, soft)

    def test_counters(self):
        self.limits.max_per_peer = 1
        self.limits.max_connections = 2
        kept = self.peer("10.0.0.1")
        kept.send(HEARTBEAT_FRAME + b"\x00")
        self.peer("10.0.0.1")  # refused: per peer
        self.peer("10.0.0.2")  # times out
        self.peer("10.0.0.3")  # refused: in all
        self.reactor.advance(31)
        info = self.get_node()
        self.assertEqual(info["limits"]["max_connections"], 2)
        self.assertEqual(info["limits"]["max_connections_per_peer"], 1)
        self.assertEqual(info["refused"]["max_connections"], 1)
        self.assertEqual(info["refused"]["max_connections_per_peer"], 1)
        self.assertEqual(info["closed"]["first_frame_timeout"], 1)
        self.assertEqual(info["connections"]["accepted"], 2)  # the timed-out socket is not gone yet
        self.assertEqual(info["connections"]["partial_frame_bytes"], 1)

    def test_no_limit(self):
        self.limits.max_connections = None
        self.limits.first_frame_timeout = None
        info = self.get_node()
        self.assertIsNone(info["limits"]["max_connections"])
        self.assertIsNone(info["limits"]["first_frame_timeout"])


class OptionTests(SynchronousTestCase):
    """
    The twistd options set the node's limits (and its relay services').
    """

    def node_for(self, *argv):
        options = Options()
        options.parseOptions(list(argv))
        return makeService(options, reactor=MemoryReactorClock())

    def test_options(self):
        node = self.node_for(
            "--max-connections", "100",
            "--max-connections-per-peer", "7",
            "--first-frame-timeout", "12.5",
            "--frame-timeout", "0",
            "--partial-frame-budget", "8M",
            "--max-relays-per-connection", "3",
            "--max-relays", "0",
            "--max-streams", "12",
        )
        limits = NodeController(node).show()["limits"]
        self.assertEqual(limits["max_connections"], 100)
        self.assertEqual(limits["max_connections_per_peer"], 7)
        self.assertEqual(limits["first_frame_timeout"], 12.5)
        self.assertIsNone(limits["frame_timeout"])
        self.assertEqual(limits["partial_frame_budget"], 8_000_000)
        self.assertEqual(limits["relay_names_per_owner"], 3)
        self.assertEqual(limits["relays_total"], 0)
        self.assertIs(node.relay_registry.limits, node.relay_limits)
        self.assertEqual(limits["max_streams"], 12)
        self.assertIsNone(self.node_for("--max-streams", "0").stream_limits.max_streams)

    def test_defaults_untouched(self):
        from ockamtw.transport import limits as L

        node = self.node_for("--max-connections-per-peer", "7")
        limits = NodeController(node).show()["limits"]
        self.assertEqual(limits["max_connections"], L.default_max_connections())
        self.assertEqual(limits["first_frame_timeout"], 30.0)
        self.assertEqual(limits["relays_total"], 10000)

    def test_applied(self):
        """
        The options reach the node's listener: the second connection from
        one address is refused.
        """
        node = self.node_for("--max-connections-per-peer", "1")
        reactor = node.reactor
        self.successResultOf(node.tcp.listen("7000"))
        factory = reactor.tcpServers[0][1]
        self.assertFalse(Peer(factory, "10.0.0.1", 1).closed_by_node)
        self.assertTrue(Peer(factory, "10.0.0.1", 2).closed_by_node)

    def test_bad(self):
        Options().parseOptions(["--max-connections", "1", "--first-frame-timeout", "0.5"])  # good ones
        for argv in [
            ["--max-connections", "0"],
            ["--max-connections", "-1"],
            ["--max-connections-per-peer", "x"],
            ["--first-frame-timeout", "-1"],
            ["--first-frame-timeout", "nan"],
            ["--frame-timeout", "inf"],
            ["--partial-frame-budget", "lots"],
            ["--max-relays", "-1"],
            ["--max-streams", "-1"],
            ["--max-streams", "many"],
        ]:
            self.assertRaises(usage.UsageError, Options().parseOptions, argv)


def _keepalive_of(sock: socket.socket) -> dict:
    got = {"on": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0}
    for name in ("TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT"):
        option = getattr(socket, name, None)
        if option is not None:
            got[name] = sock.getsockopt(socket.IPPROTO_TCP, option)
    return got


class SocketTests(TestCase):
    """
    On real loopback sockets.
    """

    timeout = 30

    @async_test
    async def test_keepalive_both_ways(self):
        """
        Accepted and outgoing connections both have keepalive with the
        short timings (read back from their sockets).
        """
        if not hasattr(socket, "TCP_KEEPIDLE"):
            raise SkipTest("no TCP_KEEPIDLE on this platform: only SO_KEEPALIVE is set")
        server, listener = await start_node(self, "ka-server", "tcp:0:interface=127.0.0.1")
        client, _ = await start_node(self, "ka-client")
        outgoing = await client.tcp.connect(f"127.0.0.1:{listener.port}")
        accepted = accepted_connection(server, outgoing.local_address)
        expected = {"on": True, "TCP_KEEPIDLE": 20, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 4}
        self.assertEqual(accepted.mode, MODE_ACCEPTED)
        self.assertEqual(_keepalive_of(accepted.transport.getHandle()), expected)
        self.assertEqual(outgoing.mode, MODE_OUTGOING)
        self.assertEqual(_keepalive_of(outgoing.transport.getHandle()), expected)

    @async_test
    async def test_per_peer_and_total(self):
        """
        Over a real listener: the extra connection from the same address is
        closed, the others keep working, and a closed one frees its slot;
        the total limit likewise.
        """
        node, listener = await start_node(self, "capped", "tcp:0:interface=127.0.0.1")
        limits = node.tcp.guard.limits
        limits.max_per_peer = 2
        ok = [await connect_raw(self, listener.port, RawFrameClient()) for _ in range(2)]
        extra = await connect_raw(self, listener.port, RawFrameClient())
        await deadline(extra.lost, 5, "the extra connection closed")
        for client in ok:
            client.transport.write(UPPERCASE_REQUEST_FRAME)
            [reply] = await deadline(client.frames_arrived(1), 5, "uppercase reply")
            self.assertEqual(reply, UPPERCASE_REPLY_FRAME)
        gone = accepted_connection(node, f"127.0.0.1:{ok[0].transport.getHost().port}")
        ok[0].transport.loseConnection()
        await deadline(gone.when_closed(), 5, "the node saw a client close")
        again = await connect_raw(self, listener.port, RawFrameClient())
        again.transport.write(UPPERCASE_REQUEST_FRAME)
        await deadline(again.frames_arrived(1), 5, "uppercase reply on the new connection")

        limits.max_per_peer = 100
        limits.max_connections = 3
        third = await connect_raw(self, listener.port, RawFrameClient())
        fourth = await connect_raw(self, listener.port, RawFrameClient())
        await deadline(fourth.lost, 5, "the connection over the total closed")
        third.transport.write(UPPERCASE_REQUEST_FRAME)
        await deadline(third.frames_arrived(1), 5, "uppercase reply within the total")
        self.assertEqual(node.tcp.guard.refused, {"max_connections": 1, "max_connections_per_peer": 1})

    @async_test
    async def test_silent_client_closed(self):
        """
        A real client that sends half a frame is disconnected after the
        first-frame timeout.
        """
        node, listener = await start_node(self, "impatient", "tcp:0:interface=127.0.0.1")
        node.tcp.guard.limits.first_frame_timeout = 0.2
        client = await connect_raw(self, listener.port, RawFrameClient())
        client.transport.write(UPPERCASE_REQUEST_FRAME[:5])
        await deadline(client.lost, 5, "the half-sent frame's connection closed")
        self.assertEqual(node.tcp.guard.closed["first_frame_timeout"], 1)

