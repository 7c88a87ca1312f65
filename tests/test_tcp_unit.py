"""
In-memory tests of L{ockamtw.transport.tcp}: connections built from the
transport's own protocol factory on L{StringTransport}s, listeners and
outgoing connections on a L{MemoryReactorClock}.  No real sockets.
"""

from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.internet.error import ConnectionDone
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from ockamtw import (
    Address,
    FunctionWorker,
    MessageTooLarge,
    Node,
    Route,
    TransportError,
    TransportMessage,
    WireError,
    encode_string,
)
from ockamtw.access import ANYONE
from ockamtw.interfaces import IConnection, IFlowSource, ILinkWorker, ITcpConnection, ITcpListener, IWorker
from ockamtw.transport.tcp import (
    MODE_ACCEPTED,
    MODE_LISTENING,
    MODE_OUTGOING,
    TcpConnection,
    TcpListener,
    _FrameFactory,
)
from ockamtw.endpoints import client_target, server_description
from ockamtw.wire import MAX_FRAME, encode_frame

from .helpers import captureLogs

#: The stand-in address "A" of the conformance vectors.
A = "0123456789abcdef0123456789abcdef"

#: From tests/data/vectors.json: "uppercase request as a TCP frame".
UPPERCASE_REQUEST_FRAME = bytes.fromhex(
    "0037"
    "01"
    "0100097570706572636173650"
    "100203031323334353637383961626364656630313233343536373839616263646566"
    "060568656c6c6f"
)
#: From vectors.json: "uppercase reply 'HELLO'", framed (55 = 0x37 bytes).
UPPERCASE_REPLY_FRAME = bytes.fromhex(
    "0037"
    "01"
    "0100203031323334353637383961626364656630313233343536373839616263646566"
    "010009757070657263617365"
    "060548454c4c4f"
)
#: From vectors.json: "echo raw bytes" (payload 000102), framed.
ECHO_REQUEST_FRAME = bytes.fromhex(
    "002f"
    "01"
    "0100046563686f"
    "0100203031323334353637383961626364656630313233343536373839616263646566"
    "03000102"
)
#: From vectors.json: "heartbeat frame".
HEARTBEAT_FRAME = bytes.fromhex("000401000000")


@implementer(IWorker)
class Recorder:
    access = ANYONE

    def __init__(self):
        self.received = []

    def started(self, node, address):
        pass

    def receive(self, message):
        self.received.append(message)

    def stopped(self):
        pass


class SocketOptionsTransport(StringTransport):
    """
    A L{StringTransport} that records the TCP socket options set on it.
    """

    def __init__(self, *a, **kw):
        StringTransport.__init__(self, *a, **kw)
        self.noDelay = []
        self.keepAlive = []

    def setTcpNoDelay(self, enabled):
        self.noDelay.append(enabled)

    def setTcpKeepAlive(self, enabled):
        self.keepAlive.append(enabled)


def frame(onward, ret, payload):
    return encode_frame(TransportMessage(Route(onward), Route(ret), payload))


class TcpTestMixin:
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.node = Node(self.reactor, name="n1")

    def connect(self, mode=MODE_ACCEPTED, port=5555, transportClass=StringTransport):
        """
        A connection of C{self.node} on a fresh in-memory transport.

        @return: (protocol, transport, connection)
        """
        proto = _FrameFactory(self.node.tcp, mode).buildProtocol(None)
        t = transportClass(
            peerAddress=IPv4Address("TCP", "127.0.0.1", port),
            hostAddress=IPv4Address("TCP", "127.0.0.1", 7000),
        )
        proto.makeConnection(t)
        return proto, t, proto.connection

    def lose(self, proto):
        proto.connectionLost(Failure(ConnectionDone()))

    def recorder(self, name):
        r = Recorder()
        self.node.start_worker(name, r)
        return r


class ConnectionTests(TcpTestMixin, SynchronousTestCase):
    """
    A connection's identity and what happens to bytes it receives.
    """

    def test_interfaces(self):
        proto, t, conn = self.connect()
        self.assertIsInstance(conn, TcpConnection)
        verifyObject(ITcpConnection, conn)
        verifyObject(IWorker, conn)
        verifyObject(IFlowSource, conn)
        verifyObject(IConnection, conn)
        verifyObject(ILinkWorker, conn)
        self.assertIs(self.node.link_of(conn.address), conn)

    def test_identity(self):
        """
        A new connection is a worker at a random local address, listed by
        the transport, with its peer as socket address.
        """
        proto, t, conn = self.connect()
        self.assertEqual(conn.address.type, 0)
        self.assertRegex(conn.address.value, r"^[0-9a-f]{32}$")
        self.assertRegex(conn.transport_id, r"^[0-9a-f]{32}$")
        self.assertNotEqual(conn.transport_id, conn.address.value)
        self.assertEqual(conn.mode, MODE_ACCEPTED)
        self.assertEqual(conn.socket_address, "127.0.0.1:5555")
        self.assertIs(self.node.worker_at(conn.address), conn)
        self.assertEqual(self.node.tcp.connections, [conn])
        self.assertEqual(self.node.tcp.list(), [conn])
        self.assertIsNotNone(t.producer)  # registered...
        self.assertTrue(t.streaming)  # ...as a streaming producer
        self.assertEqual(t.value(), b"")

    def test_returnRoutePrepended(self):
        """
        A message read from the socket gets the connection's address
        prepended to its return route and is delivered by its onward
        route, with the connection as its flow source.
        """
        sink = self.recorder("sink")
        proto, t, conn = self.connect()
        proto.dataReceived(frame(["sink", "next"], [A, "x"], b"pay"))
        self.assertEqual(len(sink.received), 1)
        m = sink.received[0]
        self.assertEqual(m.onward_route, Route(["sink", "next"]))
        self.assertEqual(m.return_route, Route([conn.address, Address.local(A), "x"]))
        self.assertEqual(m.payload, b"pay")
        self.assertIs(m.source, conn)
        self.assertEqual(conn.messages_in, 1)

    def test_echoReply(self):
        """
        An echo request is answered on the same connection with the exact
        frame: onward = the peer's return route, return = [echo].
        """
        proto, t, conn = self.connect()
        proto.dataReceived(ECHO_REQUEST_FRAME)
        expected = encode_frame(TransportMessage(Route([A]), Route(["echo"]), b"\x00\x01\x02"))
        self.assertEqual(t.value(), expected)
        self.assertEqual(
            t.value(),
            bytes.fromhex(
                "002f"
                "01"
                "0100203031323334353637383961626364656630313233343536373839616263646566"
                "0100046563686f"
                "03000102"
            ),
        )
        self.assertFalse(t.disconnecting)
        self.assertEqual(conn.messages_out, 1)

    def test_uppercaseVector(self):
        """
        The conformance vector "uppercase request as a TCP frame" is
        answered with the vector "uppercase reply 'HELLO'" framed: the
        connection's address was added on the way in and removed on the way
        out.
        """
        proto, t, conn = self.connect()
        proto.dataReceived(UPPERCASE_REQUEST_FRAME)
        self.assertEqual(t.value(), UPPERCASE_REPLY_FRAME)
        self.assertEqual(
            t.value(),
            encode_frame(TransportMessage(Route([A]), Route(["uppercase"]), encode_string("HELLO"))),
        )

    def test_replyThroughHop(self):
        """
        The reply to a request through C{hop} carries hop in its return
        route.
        """
        proto, t, conn = self.connect()
        proto.dataReceived(frame(["hop", "echo"], [A], b"x"))
        self.assertEqual(t.value(), frame([A], ["hop", "echo"], b"x"))

    def test_trailingBytesIgnored(self):
        """
        Bytes after the TransportMessage inside a frame are ignored.
        """
        proto, t, conn = self.connect()
        body = UPPERCASE_REQUEST_FRAME[2:] + b"\xde\xad"
        proto.dataReceived(len(body).to_bytes(2, "big") + body)
        self.assertEqual(t.value(), UPPERCASE_REPLY_FRAME)

    def test_splitAtEveryByte(self):
        """
        A frame split in two at any byte boundary is answered once, when
        its last byte arrives.
        """
        proto, t, conn = self.connect()
        data = UPPERCASE_REQUEST_FRAME
        for i in range(1, len(data)):
            proto.dataReceived(data[:i])
            self.assertEqual(t.value(), b"", f"answered after {i} bytes")
            proto.dataReceived(data[i:])
            self.assertEqual(t.value(), UPPERCASE_REPLY_FRAME, f"split at {i}")
            t.clear()

    def test_byteByByte(self):
        """
        Several frames fed one byte at a time are answered in order.
        """
        proto, t, conn = self.connect()
        requests = [frame(["echo"], [A], bytes([i]) * i) for i in range(1, 4)]
        for b in b"".join(requests):
            proto.dataReceived(bytes([b]))
        self.assertEqual(
            t.value(), b"".join(frame([A], ["echo"], bytes([i]) * i) for i in range(1, 4))
        )

    def test_manyFramesInOneChunk(self):
        """
        Many frames in one chunk are all handled, in order.
        """
        sink = self.recorder("sink")
        proto, t, conn = self.connect()
        chunk = b"".join(
            frame(["echo" if i % 2 else "sink"], [A], i.to_bytes(2, "big")) for i in range(200)
        )
        proto.dataReceived(chunk)
        self.assertEqual(
            [m.payload for m in sink.received], [i.to_bytes(2, "big") for i in range(0, 200, 2)]
        )
        self.assertEqual(
            t.value(),
            b"".join(frame([A], ["echo"], i.to_bytes(2, "big")) for i in range(1, 200, 2)),
        )
        self.assertEqual(conn.messages_in, 200)

    def test_undecodableFrameDropped(self):
        """
        A frame that does not decode (a bad version, a truncated route,
        an empty body) is logged and dropped; the connection stays open and
        the next frame is answered.
        """
        events = captureLogs(self, "ockamtw.transport.tcp")
        proto, t, conn = self.connect()
        del events[:]
        bad = [
            bytes.fromhex("000402000000"),  # version 2
            bytes.fromhex("0003010500"),  # route of 5 addresses in 2 bytes
            bytes.fromhex("0000"),  # empty body
            bytes.fromhex("00050101000106"),  # no return route
        ]
        for b in bad:
            proto.dataReceived(b)
        self.assertEqual(t.value(), b"")
        self.assertFalse(t.disconnecting)
        self.assertTrue(conn.connected)
        self.assertEqual(len(events), 4)
        for event in events:
            self.assertEqual(event["log_level"], LogLevel.warn)
            self.assertIn("undecodable frame from 127.0.0.1:5555", formatEvent(event))
        proto.dataReceived(UPPERCASE_REQUEST_FRAME)
        self.assertEqual(t.value(), UPPERCASE_REPLY_FRAME)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_undecodableBetweenGoodFrames(self):
        """
        A bad frame in the middle of a chunk does not desynchronise the
        stream.
        """
        proto, t, conn = self.connect()
        proto.dataReceived(
            UPPERCASE_REQUEST_FRAME + bytes.fromhex("000402000000") + ECHO_REQUEST_FRAME
        )
        self.assertEqual(
            t.value(),
            UPPERCASE_REPLY_FRAME + frame([A], ["echo"], b"\x00\x01\x02"),
        )

    def test_heartbeat(self):
        """
        The heartbeat frame C{000401000000} is dropped silently: nothing
        written, nothing logged, the connection open.
        """
        events = captureLogs(self, "ockamtw.transport.tcp", "ockamtw.node", "ockamtw.services")
        proto, t, conn = self.connect()
        del events[:]
        proto.dataReceived(HEARTBEAT_FRAME * 3)
        self.assertEqual(t.value(), b"")
        self.assertEqual(events, [])
        self.assertFalse(t.disconnecting)
        self.assertEqual(conn.messages_in, 0)
        self.assertEqual(self.flushLoggedErrors(), [])
        proto.dataReceived(HEARTBEAT_FRAME + UPPERCASE_REQUEST_FRAME)
        self.assertEqual(t.value(), UPPERCASE_REPLY_FRAME)

    def test_unknownDestination(self):
        """
        A frame for an address with no worker is dropped; nothing is sent
        back and the connection stays open.
        """
        proto, t, conn = self.connect()
        proto.dataReceived(frame(["nobody"], [A], b"x") + ECHO_REQUEST_FRAME)
        self.assertEqual(t.value(), frame([A], ["echo"], b"\x00\x01\x02"))
        self.assertFalse(t.disconnecting)

    def test_maximumSizeEcho(self):
        """
        An echo request in a frame of exactly 65535 bytes is answered with
        a frame of exactly 65535 bytes: the reply's onward route starts with
        the connection's address, which is removed before writing, so the
        reply fits.
        """
        proto, t, conn = self.connect()
        overhead = len(frame(["echo"], [A], b"")) - 2 - 1
        n = MAX_FRAME - overhead - 3  # a 3-byte uvarint length for n
        request = frame(["echo"], [A], b"e" * n)
        self.assertEqual(len(request), 2 + MAX_FRAME)
        proto.dataReceived(request)
        self.flushLoggedErrors(MessageTooLarge)
        self.assertEqual(t.value(), frame([A], ["echo"], b"e" * n))


class SendToConnectionTests(TcpTestMixin, SynchronousTestCase):
    """
    Messages sent to a connection's worker address are written to its socket.
    """

    def test_written(self):
        """
        The message is written with the connection's address removed from
        the onward route.
        """
        proto, t, conn = self.connect()
        self.node.send([conn.address, "remote", "service"], b"data", sender="me")
        self.assertEqual(t.value(), frame(["remote", "service"], ["me"], b"data"))
        self.assertEqual(conn.messages_out, 1)

    def test_writtenByText(self):
        """
        Sent from the vectors' address A along route text, the uppercase
        request leaves as the conformance vector itself.
        """
        proto, t, conn = self.connect()
        self.node.send(f"{conn.address} => 0#uppercase", encode_string("hello"), sender=A)
        self.assertEqual(t.value(), UPPERCASE_REQUEST_FRAME)

    def test_emptyRemainder(self):
        """
        A message whose onward route ends at the connection is written with
        an empty onward route.
        """
        proto, t, conn = self.connect()
        self.node.send([conn.address], b"z", sender="me")
        self.assertEqual(t.value(), frame([], ["me"], b"z"))

    def test_tooLargeNotWritten(self):
        """
        A message that does not fit in a frame is not written, and the
        error does not escape delivery; the connection carries on.
        """
        events = captureLogs(self, "ockamtw.transport.tcp")
        proto, t, conn = self.connect()
        del events[:]
        self.node.send([conn.address], b"x" * 70000, sender="me")
        self.assertEqual(t.value(), b"")
        self.assertEqual(conn.messages_out, 0)
        self.assertEqual(len(events), 1)
        self.assertIn("65535", formatEvent(events[0]))
        self.assertFalse(t.disconnecting)
        self.node.send([conn.address, "r"], b"ok", sender="me")
        self.assertEqual(t.value(), frame(["r"], ["me"], b"ok"))

    def test_tooLargeFromWorker(self):
        """
        A worker sending a too-large message to a connection as the last
        hop raises nothing out of delivery.
        """
        proto, t, conn = self.connect()

        def big(worker, message):
            worker.node.send([conn.address], b"x" * 70000)
            worker.send(message.return_route, b"after")

        self.node.start_worker("big", FunctionWorker(big, access=ANYONE))
        proto.dataReceived(frame(["big"], [A], b""))
        self.assertEqual(t.value(), frame([A], ["big"], b"after"))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_largestFrameWritten(self):
        """
        A message that is exactly 65535 bytes once the connection's address
        is removed is written; one byte more is refused.
        """
        proto, t, conn = self.connect()
        out_overhead = len(frame(["r"], ["me"], b"")) - 2 - 1
        n = MAX_FRAME - out_overhead - 3
        expected = frame(["r"], ["me"], b"y" * n)
        self.assertEqual(len(expected), 2 + MAX_FRAME)
        self.assertRaises(
            MessageTooLarge, self.node.send, [conn.address, "r"], b"y" * (n + 1), sender="me"
        )
        self.assertEqual(t.value(), b"")
        self.node.send([conn.address, "r"], b"y" * n, sender="me")
        self.assertEqual(t.value(), expected)

    def test_bridging(self):
        """
        A frame on one connection routed through another connection's
        address leaves on the other with both return hops.
        """
        pa, ta, a = self.connect(port=1)
        pc, tc, c = self.connect(port=2)
        pa.dataReceived(frame([c.address, "echo"], [A], b"b"))
        self.assertEqual(ta.value(), b"")
        self.assertEqual(tc.value(), frame(["echo"], [a.address, A], b"b"))
        # The far side's echo reply comes back on c and goes out on a.
        pc.dataReceived(frame([a.address, A], ["echo"], b"b"))
        self.assertEqual(ta.value(), frame([A], [c.address, "echo"], b"b"))


class SocketOptionTests(TcpTestMixin, SynchronousTestCase):
    """
    TCP_NODELAY and keepalive everywhere.
    """

    def test_accepted(self):
        proto, t, conn = self.connect(MODE_ACCEPTED, transportClass=SocketOptionsTransport)
        self.assertEqual(t.noDelay, [True])
        self.assertEqual(t.keepAlive, [True])

    def test_outgoing(self):
        proto, t, conn = self.connect(MODE_OUTGOING, transportClass=SocketOptionsTransport)
        self.assertEqual(conn.mode, MODE_OUTGOING)
        self.assertEqual(t.noDelay, [True])
        self.assertEqual(t.keepAlive, [True])

    def test_withoutOptions(self):
        """
        A transport without socket options still makes a working
        connection.
        """
        proto, t, conn = self.connect(MODE_OUTGOING)
        proto.dataReceived(UPPERCASE_REQUEST_FRAME)
        self.assertEqual(t.value(), UPPERCASE_REPLY_FRAME)


class FlowControlTests(TcpTestMixin, SynchronousTestCase):
    """
    A congested connection pauses the source of what it is asked to write.
    """

    def setUp(self):
        TcpTestMixin.setUp(self)
        self.pa, self.ta, self.a = self.connect(port=1)
        self.pc, self.tc, self.c = self.connect(port=2)

    def toC(self, payload):
        return frame([self.c.address, "far"], [A], payload)

    def test_congestedPausesSource(self):
        """
        A message from A written to a congested C pauses A's socket; A
        processes nothing more until C drains, then carries on.
        """
        self.assertEqual(self.ta.producerState, "producing")
        self.tc.producer.pauseProducing()
        self.assertTrue(self.c.congested)
        self.pa.dataReceived(self.toC(b"1") + self.toC(b"2"))
        self.assertEqual(self.ta.producerState, "paused")
        self.assertTrue(self.a.paused)
        self.assertEqual(self.tc.value(), frame(["far"], [self.a.address, A], b"1"))
        # More data while paused is buffered, not processed.
        self.pa.dataReceived(self.toC(b"3"))
        self.assertEqual(self.tc.value(), frame(["far"], [self.a.address, A], b"1"))

        self.tc.producer.resumeProducing()
        self.assertFalse(self.c.congested)
        self.assertEqual(self.ta.producerState, "producing")
        self.assertFalse(self.a.paused)
        self.assertEqual(
            self.tc.value(),
            b"".join(frame(["far"], [self.a.address, A], p) for p in [b"1", b"2", b"3"]),
        )

    def test_uncongestedDoesNotPause(self):
        self.pa.dataReceived(self.toC(b"1") + self.toC(b"2"))
        self.assertEqual(self.ta.producerState, "producing")
        self.assertEqual(
            self.tc.value(),
            frame(["far"], [self.a.address, A], b"1") + frame(["far"], [self.a.address, A], b"2"),
        )

    def test_pausedOncePerCongestion(self):
        """
        Several messages from the same source to a congested connection
        pause it once; one drain resumes it.
        """
        seen = []

        def twice(worker, message):
            seen.append(message.payload)
            worker.node.send([self.c.address, "far"], b"x")
            worker.node.send([self.c.address, "far"], b"y")

        self.node.start_worker("twice", FunctionWorker(twice, access=ANYONE))
        self.tc.producer.pauseProducing()
        self.pa.dataReceived(frame(["twice"], [A], b"1") + frame(["twice"], [A], b"2"))
        self.assertEqual(seen, [b"1"])
        self.assertEqual(self.ta.producerState, "paused")
        self.tc.producer.resumeProducing()
        self.assertEqual(self.ta.producerState, "producing")
        self.assertEqual(seen, [b"1", b"2"])

    def test_ownOutboundCongested(self):
        """
        Echo requests arriving on A while A's own outbound buffer is full
        pause A itself (the replies go out on A); A drains, resumes and
        answers the rest.
        """
        self.ta.producer.pauseProducing()
        self.pa.dataReceived(ECHO_REQUEST_FRAME + UPPERCASE_REQUEST_FRAME)
        reply = frame([A], ["echo"], b"\x00\x01\x02")
        self.assertEqual(self.ta.value(), reply)
        self.assertEqual(self.ta.producerState, "paused")
        self.ta.producer.resumeProducing()
        self.assertEqual(self.ta.producerState, "producing")
        self.assertEqual(self.ta.value(), reply + UPPERCASE_REPLY_FRAME)

    def test_nestedPauses(self):
        """
        A source paused by two congested connections reads again only after
        both drain.
        """
        pd, td, d = self.connect(port=3)

        def fanout(worker, message):
            worker.node.send([self.c.address, "far"], message.payload)
            worker.node.send([d.address, "far"], message.payload)

        self.node.start_worker("fanout", FunctionWorker(fanout, access=ANYONE))
        self.tc.producer.pauseProducing()
        td.producer.pauseProducing()
        self.pa.dataReceived(frame(["fanout"], [A], b"1") + frame(["fanout"], [A], b"2"))
        self.assertEqual(self.ta.producerState, "paused")
        self.assertEqual(self.tc.value(), frame(["far"], [], b"1"))
        self.assertEqual(td.value(), frame(["far"], [], b"1"))

        self.tc.producer.resumeProducing()
        self.assertEqual(self.ta.producerState, "paused")
        self.assertTrue(self.a.paused)
        self.assertEqual(self.tc.value(), frame(["far"], [], b"1"))

        td.producer.resumeProducing()
        self.assertEqual(self.ta.producerState, "producing")
        self.assertEqual(self.tc.value(), frame(["far"], [], b"1") + frame(["far"], [], b"2"))
        self.assertEqual(td.value(), frame(["far"], [], b"1") + frame(["far"], [], b"2"))

    def test_pauseFlowNests(self):
        """
        L{TcpConnection.pause_flow} nests; extra resumes do nothing.
        """
        self.a.pause_flow()
        self.a.pause_flow()
        self.pa.dataReceived(ECHO_REQUEST_FRAME)
        self.assertEqual(self.ta.value(), b"")
        self.a.resume_flow()
        self.assertEqual(self.ta.producerState, "paused")
        self.assertEqual(self.ta.value(), b"")
        self.a.resume_flow()
        self.assertEqual(self.ta.producerState, "producing")
        self.assertEqual(self.ta.value(), frame([A], ["echo"], b"\x00\x01\x02"))
        self.a.resume_flow()
        self.a.pause_flow()
        self.assertEqual(self.ta.producerState, "paused")

    def test_localMessagesNotPaused(self):
        """
        Messages with no source (sent by local code) are written to a
        congested connection and pause nothing.
        """
        self.tc.producer.pauseProducing()
        self.node.send([self.c.address, "far"], b"local")
        self.assertEqual(self.tc.value(), frame(["far"], [], b"local"))
        self.assertEqual(self.ta.producerState, "producing")
        self.assertEqual(self.tc.producerState, "producing")

    def test_lostConnectionResumesSources(self):
        """
        When a congested connection is lost, the sources it paused resume.
        """
        self.tc.producer.pauseProducing()
        self.pa.dataReceived(self.toC(b"1") + frame(["echo"], [A], b"after"))
        self.assertEqual(self.ta.producerState, "paused")
        self.lose(self.pc)
        self.assertEqual(self.ta.producerState, "producing")
        self.assertFalse(self.a.paused)
        self.assertEqual(self.ta.value(), frame([A], ["echo"], b"after"))

    def test_lostSourceThenDrain(self):
        """
        A paused source that has gone away is left alone when the
        congested connection drains.
        """
        self.tc.producer.pauseProducing()
        self.pa.dataReceived(self.toC(b"1") + self.toC(b"2"))
        self.lose(self.pa)
        self.tc.producer.resumeProducing()
        self.assertEqual(self.tc.value(), frame(["far"], [self.a.address, A], b"1"))
        self.assertEqual(self.flushLoggedErrors(), [])


class ConnectionLostTests(TcpTestMixin, SynchronousTestCase):
    """
    Closing and losing connections.
    """

    def test_lost(self):
        """
        A lost connection's worker is unregistered and the transport no
        longer lists it; messages to its address are dropped.
        """
        proto, t, conn = self.connect()
        other = self.connect(port=6666)[2]
        address = conn.address
        self.lose(proto)
        self.assertFalse(conn.connected)
        self.assertIsNone(self.node.worker_at(address))
        self.assertNotIn(address, self.node.worker_addresses())
        self.assertEqual(self.node.tcp.connections, [other])
        self.assertIsNone(self.node.tcp.find(address.value))
        self.node.send([address, "x"], b"lost")
        self.assertEqual(t.value(), b"")

    def test_close(self):
        """
        C{close} loses the connection; its Deferred fires when the
        connection is gone.  Calls before then fire too, calls after fire at
        once.
        """
        proto, t, conn = self.connect()
        d1 = conn.close()
        self.assertTrue(t.disconnecting)
        d2 = conn.close()
        self.assertIsInstance(d1, Deferred)
        self.assertNoResult(d1)
        self.assertNoResult(d2)
        self.lose(proto)
        self.assertIsNone(self.successResultOf(d1))
        self.assertIsNone(self.successResultOf(d2))
        self.assertIsNone(self.successResultOf(conn.close()))
        self.assertEqual(self.node.tcp.connections, [])
        self.lose(proto)  # a second connectionLost does nothing
        self.assertEqual(self.node.tcp.connections, [])

    def test_stopWorkerClosesSocket(self):
        """
        Stopping the connection's worker closes its socket.
        """
        proto, t, conn = self.connect()
        self.node.stop_worker(conn.address)
        self.assertTrue(t.disconnecting)
        self.lose(proto)
        self.assertEqual(self.node.tcp.connections, [])

    def test_abort(self):
        proto, t, conn = self.connect()
        d = conn.abort()
        self.assertTrue(t.disconnecting)
        self.lose(proto)
        self.successResultOf(d)

    def test_stopServiceClosesConnections(self):
        """
        The node's C{stopService} closes its connections and fires once
        they are gone.
        """
        self.node.startService()
        proto, t, conn = self.connect()
        d = self.node.stopService()
        self.assertTrue(t.disconnecting)
        self.assertNoResult(d)
        self.lose(proto)
        self.successResultOf(d)
        self.assertEqual(self.node.worker_addresses(), [])
        self.assertEqual(self.node.tcp.list(), [])

    def test_lostBeforeData(self):
        """
        Data buffered from a peer that has gone is not delivered.
        """
        sink = self.recorder("sink")
        proto, t, conn = self.connect()
        conn.pause_flow()
        proto.dataReceived(frame(["sink"], [A], b"x"))
        self.lose(proto)
        conn.resume_flow()
        self.assertEqual(sink.received, [])


class DescriptionTests(SynchronousTestCase):
    """
    L{server_description} and L{client_target}.
    """

    def test_serverBarePort(self):
        self.assertEqual(server_description("7000"), "tcp:7000:interface=127.0.0.1:backlog=1024")
        self.assertEqual(server_description(7000), "tcp:7000:interface=127.0.0.1:backlog=1024")
        self.assertEqual(server_description(" 0 "), "tcp:0:interface=127.0.0.1:backlog=1024")

    def test_serverHostPort(self):
        self.assertEqual(server_description("127.0.0.1:7000"), "tcp:7000:interface=127.0.0.1:backlog=1024")
        self.assertEqual(server_description("0.0.0.0:7000"), "tcp:7000:interface=0.0.0.0:backlog=1024")
        self.assertEqual(server_description("localhost:7000"), "tcp:7000:interface=localhost:backlog=1024")

    def test_serverIPv6(self):
        self.assertEqual(server_description("[::1]:7000"), r"tcp6:7000:interface=\:\:1:backlog=1024")
        self.assertEqual(server_description("[::]:7000"), r"tcp6:7000:interface=\:\::backlog=1024")

    def test_serverEndpointPassedThrough(self):
        for text in [
            "tcp:7000:interface=0.0.0.0",
            "tcp:7000",
            "tcp6:7000:interface=\\:\\:1",
            "unix:/tmp/ockam.sock",
            "systemd:domain=INET:index=0",
        ]:
            self.assertEqual(server_description(text), text)

    def test_serverGarbage(self):
        for text in ["", "hello", "127.0.0.1:70000", "[::1]:99999"]:
            self.assertRaises(WireError, server_description, text)

    def test_clientHostPort(self):
        self.assertEqual(client_target("127.0.0.1:7000"), ("hostport", "127.0.0.1", 7000))
        self.assertEqual(client_target("1#127.0.0.1:7000"), ("hostport", "127.0.0.1", 7000))
        self.assertEqual(client_target("localhost:7000"), ("hostport", "localhost", 7000))
        self.assertEqual(client_target("example.com:443"), ("hostport", "example.com", 443))
        self.assertEqual(client_target("myhost:7000"), ("hostport", "myhost", 7000))
        self.assertEqual(client_target("[::1]:7000"), ("hostport", "::1", 7000))

    def test_clientHyphenatedHost(self):
        """
        A single-label host name with a hyphen (C{ockam-node:4000}, common
        in containers) is a host:port like any other.
        """
        self.assertEqual(client_target("my-host:7000"), ("hostport", "my-host", 7000))
        self.assertEqual(client_target("1#ockam-relay:4000"), ("hostport", "ockam-relay", 4000))

    def test_clientEndpoint(self):
        for text in ["tcp:host=127.0.0.1:port=7000", "tcp:7000", "unix:/tmp/ockam.sock"]:
            self.assertEqual(client_target(text), ("endpoint", text))

    def test_clientGarbage(self):
        for text in ["", "hello", "127.0.0.1:70000", "1#"]:
            self.assertRaises(WireError, client_target, text)


class ListenerTests(TcpTestMixin, SynchronousTestCase):
    """
    C{node.tcp.listen}, C{list} and C{find} on a L{MemoryReactorClock}.
    """

    def listen(self, description="7000"):
        return self.successResultOf(self.node.tcp.listen(description))

    def test_listen(self):
        """
        C{listen} binds through the reactor and fires with a L{TcpListener}
        that C{tcp.list} shows.
        """
        listener = self.listen("7000")
        self.assertIsInstance(listener, TcpListener)
        verifyObject(ITcpListener, listener)
        self.assertEqual(listener.mode, MODE_LISTENING)
        self.assertEqual(listener.mode, "Listening")
        self.assertEqual(listener.port, 7000)
        self.assertEqual(listener.socket_address, f"{listener.host}:7000")
        self.assertRegex(listener.transport_id, r"^[0-9a-f]{32}$")
        self.assertEqual(listener.description, "tcp:7000:interface=127.0.0.1:backlog=1024")
        [(port, factory, backlog, interface)] = self.reactor.tcpServers
        self.assertEqual((port, interface), (7000, "127.0.0.1"))
        self.assertEqual(self.node.tcp.list(), [listener])
        self.assertEqual(self.node.tcp.listeners, [listener])

    def test_listenIPv6(self):
        listener = self.listen("[::1]:7001")
        [(port, factory, backlog, interface)] = self.reactor.tcpServers
        self.assertEqual((port, interface), (7001, "::1"))
        self.assertEqual(listener.host, "::1")
        self.assertEqual(listener.socket_address, "[::1]:7001")

    def test_listenBad(self):
        """
        A bad listen address fails with L{TransportError}.
        """
        for text in ["hello", "nosuchplugin:foo"]:
            f = self.failureResultOf(self.node.tcp.listen(text), TransportError)
            self.assertIn(text, f.getErrorMessage())
        self.assertEqual(self.reactor.tcpServers, [])
        self.assertEqual(self.node.tcp.list(), [])

    def test_accepted(self):
        """
        A peer accepted by the listener's factory becomes a connection
        that answers requests; C{list} shows the listener first.
        """
        listener = self.listen()
        factory = self.reactor.tcpServers[0][1]
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
        t = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5555))
        proto.makeConnection(t)
        conn = proto.connection
        self.assertEqual(conn.mode, MODE_ACCEPTED)
        self.assertEqual(self.node.tcp.list(), [listener, conn])
        proto.dataReceived(UPPERCASE_REQUEST_FRAME)
        self.assertEqual(t.value(), UPPERCASE_REPLY_FRAME)

    def test_find(self):
        """
        C{find} looks listeners and connections up by worker address (text,
        bare value or L{Address}), transport id or socket address.
        """
        listener = self.listen()
        proto, t, conn = self.connect(port=5555)
        tcp = self.node.tcp
        self.assertIs(tcp.find(listener.transport_id), listener)
        self.assertIs(tcp.find(str(listener.address)), listener)
        self.assertIs(tcp.find(conn.address.value), conn)
        self.assertIs(tcp.find(str(conn.address)), conn)
        self.assertIs(tcp.find(conn.address), conn)
        self.assertIs(tcp.find(conn.transport_id), conn)
        self.assertIs(tcp.find("127.0.0.1:5555"), conn)
        self.assertIsNone(tcp.find("nothing"))
        self.assertIsNone(tcp.find("0" * 32))

    def test_closeListener(self):
        """
        C{close} stops listening; its Deferred fires and the listener is no
        longer listed.  Closing again is harmless.
        """
        listener = self.listen()
        d = listener.close()
        self.assertIsInstance(d, Deferred)
        self.successResultOf(d)
        self.assertEqual(self.node.tcp.list(), [])
        self.successResultOf(listener.close())

    def test_stopServiceWithListener(self):
        """
        The node's C{stopService} closes its listeners and fires.
        """
        self.node.startService()
        self.listen()
        d = self.node.stopService()
        self.successResultOf(d)
        self.assertEqual(self.node.tcp.list(), [])
        self.assertEqual(self.node.worker_addresses(), [])


class ConnectTests(TcpTestMixin, SynchronousTestCase):
    """
    C{node.tcp.connect} on a L{MemoryReactorClock}.
    """

    def complete(self, index=-1):
        """
        Let the reactor's recorded connection attempt succeed.

        @return: (protocol, transport)
        """
        host, port, factory, timeout, bind = self.reactor.tcpClients[index]
        proto = factory.buildProtocol(IPv4Address("TCP", host, port))
        t = SocketOptionsTransport(peerAddress=IPv4Address("TCP", host, port))
        proto.makeConnection(t)
        return proto, t

    def test_connectHostPort(self):
        """
        C{connect("host:port")} fires with an outgoing connection once the
        socket connects; C{connection_to} finds it afterwards.
        """
        d = self.node.tcp.connect("127.0.0.1:7001")
        self.assertNoResult(d)
        [(host, port, *_)] = self.reactor.tcpClients
        self.assertEqual((host, port), ("127.0.0.1", 7001))
        proto, t = self.complete()
        conn = self.successResultOf(d)
        self.assertEqual(conn.mode, MODE_OUTGOING)
        self.assertEqual(t.keepAlive, [True])
        self.assertIs(self.node.tcp.connection_to("127.0.0.1:7001"), conn)
        self.assertIs(self.node.tcp.connection_to("1#127.0.0.1:7001"), conn)
        self.assertIsNone(self.node.tcp.connection_to("127.0.0.1:7002"))
        # A connection that stays silent writes a heartbeat after a second
        # (so that the peer's first-frame timeout keeps it), and only one.
        self.assertEqual(t.value(), b"")
        self.reactor.advance(1)
        self.assertEqual(t.value(), HEARTBEAT_FRAME)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_connectCancelled(self):
        """
        A connection attempt its caller cancels fails with C{CancelledError},
        as any cancelled Deferred, not as a target that cannot be reached
        (Twisted's endpoint says C{ConnectingCancelledError}); the attempt
        is stopped.
        """
        d = self.node.tcp.connect("127.0.0.1:7001")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertTrue(self.reactor.connectors[-1].stoppedConnecting)
        self.assertEqual(self.node.tcp.connections, [])

    def test_connectEndpoint(self):
        d = self.node.tcp.connect("tcp:host=127.0.0.1:port=7002")
        self.complete()
        conn = self.successResultOf(d)
        self.assertEqual(conn.mode, MODE_OUTGOING)
        self.assertEqual(conn.socket_address, "127.0.0.1:7002")

    def test_connectGarbage(self):
        """
        A target that is neither host:port nor an endpoint string fails the
        Deferred; C{connect} does not raise.
        """
        self.failureResultOf(self.node.tcp.connect("hello"), WireError)
        d = self.node.tcp.connect("nosuchplugin:foo=1")
        f = self.failureResultOf(d, WireError, TransportError)
        self.assertIn("nosuchplugin", f.getErrorMessage())
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(self.node.tcp.connections, [])

    def test_sendViaTcpAddress(self):
        """
        A route starting with C{1#host:port} connects, then sends through
        the connection; a second message reuses it.
        """
        self.node.send(["1#127.0.0.1:7001", "echo"], b"one", sender="me")
        proto, t = self.complete()
        conn = self.node.tcp.connection_to("127.0.0.1:7001")
        self.assertEqual(t.value(), frame(["echo"], ["me"], b"one"))
        self.node.send(["1#127.0.0.1:7001", "echo"], b"two", sender="me")
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(
            t.value(), frame(["echo"], ["me"], b"one") + frame(["echo"], ["me"], b"two")
        )
        self.assertEqual(self.node.tcp.connections, [conn])

    def test_requestViaNodeResolver(self):
        """
        C{/node/NAME} is resolved by C{node_resolver}, connected to, and the
        reply comes back through the connection.
        """
        self.node.node_resolver = {"n2": "127.0.0.1:7002"}.__getitem__
        d = self.node.request("/node/n2/service/uppercase", encode_string("hi"), timeout=5)
        proto, t = self.complete()
        self.assertNoResult(d)
        conn = self.node.tcp.connection_to("127.0.0.1:7002")
        self.assertIsNotNone(conn)
        request = TransportMessage.decode(t.value()[2:])
        self.assertEqual(request.onward_route, Route(["uppercase"]))
        self.assertEqual(request.payload, b"\x02hi")
        [temp] = request.return_route
        self.assertIsNotNone(self.node.worker_at(temp))
        proto.dataReceived(frame([temp], ["uppercase"], b"\x02HI"))
        reply = self.successResultOf(d)
        self.assertEqual(reply.payload, b"\x02HI")
        self.assertEqual(reply.return_route, Route([conn.address, "uppercase"]))
        self.assertIsNone(self.node.worker_at(temp))
        sent = t.value()
        self.reactor.advance(1)  # the connection was not silent: no heartbeat
        self.assertEqual(t.value(), sent)
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class ConnectSharedTests(SynchronousTestCase):
    """
    C{connect_shared}: concurrent callers share one connection attempt,
    and a failure that happens at once still reaches every caller.
    """

    def test_synchronousFailureReachesCaller(self):
        node = Node(MemoryReactorClock(), name="n")
        d = node.tcp.connect_shared("not a target")
        self.failureResultOf(d, WireError)

    def test_concurrentCallersShareOneAttempt(self):
        reactor = MemoryReactorClock()
        node = Node(reactor, name="n")
        d1 = node.tcp.connect_shared("127.0.0.1:7000")
        d2 = node.tcp.connect_shared("127.0.0.1:7000")
        self.assertEqual(len(reactor.tcpClients), 1)
        self.assertNoResult(d1)
        self.assertNoResult(d2)


class BufferedTransport(StringTransport):
    """
    A StringTransport that says how much it holds unsent, as Twisted's TCP
    transports do (L{ockamtw.flow.unsent}); C{take(n)} is the kernel taking
    C{n} bytes.
    """

    offset = 0
    _tempDataLen = 0

    @property
    def dataBuffer(self):
        return self.io.getvalue()

    def take(self, n: int) -> None:
        rest = self.io.getvalue()[n:]
        self.clear()
        self.io.write(rest)


class CreditStreamTests(TcpTestMixin, SynchronousTestCase):
    """
    Between two connections of a relay node: while the way out is
    congested but its peer takes data, the connection the data came in on
    is paused (ordinary back pressure).  Once the peer takes next to
    nothing (a I{slow} link: under 64 KiB in two quarter-second checks),
    traffic of portal streams whose both ends speak per-stream credit
    (their routes end with C{.fc1} addresses) no longer pauses it, within
    the buffer limits; other traffic still does.  A peer that takes nothing
    for C{stall_timeout} is disconnected.
    """

    def setUp(self):
        TcpTestMixin.setUp(self)
        self.node.tcp.guard.limits.first_frame_timeout = None
        self.pa, self.ta, self.a = self.connect(port=1)
        self.pc, self.tc, self.c = self.connect(port=2, transportClass=BufferedTransport)
        self.tc.producer.pauseProducing()

    def credit(self, to, n):
        return frame([to.address, "b" * 32 + ".fc1"], ["a" * 32 + ".fc1"], b"x" * n)

    def make_slow(self):
        # C is congested since setUp (its peer reads nothing): its watch
        # calls it slow after two checks.
        self.reactor.pump([0.25] * 3)
        self.assertIn(self.c, self.node.tcp._slow)

    def test_movingLinkPausesEvenCreditStreams(self):
        """
        A congested link whose peer takes data keeps ordinary back pressure.
        """
        for _ in range(4):
            self.pa.dataReceived(self.credit(self.c, 50_000))
        self.assertEqual(self.ta.producerState, "paused")
        for _ in range(2):
            self.node.send([self.c.address, "far"], b"y" * 60_000)
        for _ in range(6):
            self.tc.take(120_000)
            for _ in range(2):
                self.node.send([self.c.address, "far"], b"y" * 60_000)
            self.reactor.advance(0.25)
        self.assertNotIn(self.c, self.node.tcp._slow)
        self.assertEqual(self.ta.producerState, "paused")

    def test_slowLinkReleasesAndExemptsCreditStreams(self):
        self.pa.dataReceived(self.credit(self.c, 100))
        self.assertEqual(self.ta.producerState, "paused")
        self.reactor.pump([0.25] * 3)
        self.assertEqual(self.ta.producerState, "producing")
        self.pa.dataReceived(self.credit(self.c, 100))
        self.assertEqual(self.ta.producerState, "producing")
        self.assertFalse(self.a.paused)

    def test_otherTrafficPausesSource(self):
        self.make_slow()
        self.pa.dataReceived(frame([self.c.address, "b" * 32], ["a" * 32 + ".fc1"], b"x"))
        self.assertEqual(self.ta.producerState, "paused")

    def test_overTheLinkLimitPausesSource(self):
        self.make_slow()
        self.node.tcp.link_credit_buffer = 1000
        self.pa.dataReceived(self.credit(self.c, 500))
        self.assertEqual(self.ta.producerState, "producing")
        self.pa.dataReceived(self.credit(self.c, 600))
        self.assertEqual(self.ta.producerState, "paused")

    def test_overTheNodeLimitPausesSource(self):
        pd, td, d = self.connect(port=3, transportClass=BufferedTransport)
        td.producer.pauseProducing()
        self.make_slow()
        self.assertIn(d, self.node.tcp._slow)
        # Each credit frame below is 719 bytes: the first fits, the second not.
        self.node.tcp.node_credit_buffer = self.c.unsent() + d.unsent() + 1000
        self.pa.dataReceived(self.credit(d, 600))
        self.assertEqual(self.ta.producerState, "producing")
        self.pa.dataReceived(self.credit(self.c, 600))
        self.assertEqual(self.ta.producerState, "paused")

    def test_stalledPeerDisconnected(self):
        """
        A congested connection whose peer takes nothing for stall_timeout
        seconds is aborted; progress restarts the count.
        """
        timeout = self.node.tcp.stall_timeout
        self.pa.dataReceived(frame([self.c.address, "far"], [A], b"x" * 100))
        self.reactor.pump([0.25] * int(timeout * 0.75 * 4))
        self.tc.take(10)  # progress
        self.reactor.pump([0.25] * int(timeout * 0.9 * 4))
        self.assertFalse(self.tc.disconnected)
        self.reactor.pump([0.25] * int(timeout * 0.2 * 4))
        self.assertTrue(self.tc.disconnected)

    def test_drainedConnectionNotWatched(self):
        """
        The watch stops at its first check after the link drained.
        """
        self.pa.dataReceived(frame([self.c.address, "far"], [A], b"x" * 100))
        self.tc.take(10_000)
        self.tc.producer.resumeProducing()
        self.reactor.pump([0.25] * 2)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.reactor.pump([1] * int(self.node.tcp.stall_timeout * 3))
        self.assertFalse(self.tc.disconnected)
