"""
Integration tests: in-process nodes on the global reactor, talking over real
loopback sockets (port 0 only), and raw sockets that speak the wire format
with hand-written bytes and no ockamtw code.

Every node, listener and socket is closed by a cleanup; nothing sleeps.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys

from twisted.application.service import IService, IServiceMaker
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPullProducer
from twisted.internet.protocol import Protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from ockamtw import Address, MessageTooLarge, RequestTimeout, Route
from ockamtw.services import Echo, Hop, Uppercase
from ockamtw.endpoints import server_description

from .helpers import (
    REPO_ROOT,
    RawFrameClient,
    accepted_connection,
    async_test,
    connect_raw,
    deadline,
    h_frame,
    h_message,
    h_string,
    ipv6_loopback_available,
    outbound_buffered,
    start_node,
    subprocess_env,
    uvarint,
)

LOOPBACK = "tcp:0:interface=127.0.0.1"
HEX32 = re.compile(r"[0-9a-f]{32}")
#: The stand-in return address "A" of the conformance vectors.
A = "0123456789abcdef0123456789abcdef"

# Hex copied from tests/data/vectors.json, so that these tests do
# not trust the codec under test.
#: "uppercase request as a TCP frame": onward [0#uppercase], return [0#A], "hello".
UPPERCASE_REQUEST_FRAME = bytes.fromhex(
    "0037010100097570706572636173650100203031323334353637383961626364656630313233343536373839616263646566060568656c6c6f"
)
#: "uppercase reply 'HELLO'" (a transport_message), with its 2-byte frame length.
UPPERCASE_REPLY_FRAME = bytes.fromhex(
    "0037"
    "010100203031323334353637383961626364656630313233343536373839616263646566010009757070657263617365060548454c4c4f"
)
#: "echo raw bytes": onward [0#echo], return [0#A], payload 00 01 02.
ECHO_REQUEST = bytes.fromhex(
    "010100046563686f010020303132333435363738396162636465663031323334353637383961626364656603000102"
)
#: What echo answers to ECHO_REQUEST: onward [0#A], return [0#echo], 00 01 02.
ECHO_REPLY = bytes.fromhex(
    "010100203031323334353637383961626364656630313233343536373839616263646566"
    "0100046563686f"
    "03000102"
)
#: "heartbeat frame": empty routes, empty payload.
HEARTBEAT_FRAME = bytes.fromhex("000401000000")


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(2, "big") + body


async def round_trip_echo(node, conn, payload: bytes = b"ping") -> None:
    """
    One echo request through C{conn}: when it returns, the far side has
    certainly accepted the connection.
    """
    reply = await node.request(Route([conn.address, Address.local("echo")]), payload, timeout=5)
    assert reply.payload == payload, reply


class BridgingTests(TestCase):
    timeout = 30

    @async_test
    async def test_three_nodes(self):
        """
        n1 and n3 connect to n2; n1 reaches n3's uppercase through n2's
        connection worker for n3.  The reply comes back along the same two
        connections, and its return route is the route that was sent on.
        """
        n2, listener = await start_node(self, "n2", LOOPBACK)
        n1, _ = await start_node(self, "n1")
        n3, _ = await start_node(self, "n3")
        n1_conn = await n1.tcp.connect(listener.socket_address)
        n3_conn = await n3.tcp.connect(listener.socket_address)
        await round_trip_echo(n1, n1_conn)
        await round_trip_echo(n3, n3_conn)
        n2_to_n3 = accepted_connection(n2, n3_conn.local_address)
        n2_to_n1 = accepted_connection(n2, n1_conn.local_address)
        self.assertEqual(len(n2.tcp.connections), 2)
        n3_in = n3_conn.messages_in

        route = Route([n1_conn.address, n2_to_n3.address, Address.local("uppercase")])
        reply = await n1.request(route, h_string("hello"), timeout=5)

        self.assertEqual(reply.payload, b"\x05HELLO")
        self.assertEqual(reply.return_route, route)
        self.assertEqual(len(reply.onward_route), 1)
        self.assertEqual(reply.onward_route[0].type, 0)
        self.assertRegex(reply.onward_route[0].value, HEX32)
        # n3 read the request from its connection to n2; n2 wrote the reply to n1.
        self.assertEqual(n3_conn.messages_in, n3_in + 1)
        self.assertEqual(n2_to_n3.messages_in, 2)  # the echo ping and the reply
        self.assertEqual(n2_to_n1.messages_out, 2)  # the echo reply and the reply

        # The return route is a working route back to n3's uppercase.
        again = await n1.request(reply.return_route, h_string("again"), timeout=5)
        self.assertEqual(again.payload, b"\x05AGAIN")


class MultiAddrTests(TestCase):
    timeout = 30

    @async_test
    async def test_ip4_requests_share_one_connection(self):
        server, listener = await start_node(self, "srv", LOOPBACK)
        client, _ = await start_node(self, "cli")
        port = listener.port
        self.assertNotEqual(port, 0)
        self.assertEqual(listener.socket_address, f"127.0.0.1:{port}")

        reply = await client.request(f"/ip4/127.0.0.1/tcp/{port}/service/echo", b"raw \x00\xff bytes", timeout=5)
        self.assertEqual(reply.payload, b"raw \x00\xff bytes")
        [conn] = client.tcp.connections
        self.assertEqual(conn.mode, "Remote connection")
        self.assertEqual(conn.socket_address, f"127.0.0.1:{port}")
        self.assertEqual(reply.return_route, Route([conn.address, Address.local("echo")]))

        reply = await client.request(
            f"/ip4/127.0.0.1/tcp/{port}/service/hop/service/uppercase", b"\x05hello", timeout=5
        )
        self.assertEqual(reply.payload, b"\x05HELLO")
        self.assertEqual(
            reply.return_route,
            Route([conn.address, Address.local("hop"), Address.local("uppercase")]),
        )
        self.assertEqual(client.tcp.connections, [conn])
        self.assertEqual(len(server.tcp.connections), 1)
        self.assertEqual(conn.messages_out, 2)

    @async_test
    async def test_ip6_request(self):
        if not ipv6_loopback_available():
            raise SkipTest("IPv6 loopback is not available")
        server, listener = await start_node(self, "srv6", "tcp6:0:interface=\\:\\:1")
        client, _ = await start_node(self, "cli6")
        port = listener.port
        self.assertEqual(listener.socket_address, f"[::1]:{port}")
        reply = await client.request(f"/ip6/::1/tcp/{port}/service/echo", b"over v6", timeout=5)
        self.assertEqual(reply.payload, b"over v6")
        [conn] = client.tcp.connections
        self.assertEqual(conn.socket_address, f"[::1]:{port}")
        reply = await client.request(f"/ip6/::1/tcp/{port}/service/uppercase", b"\x02v6", timeout=5)
        self.assertEqual(reply.payload, b"\x02V6")
        self.assertEqual(client.tcp.connections, [conn])


class RawSocketTests(TestCase):
    """
    A plain Twisted protocol writes hand-made frames and checks the bytes
    that come back.
    """

    timeout = 30

    async def _connect(self):
        node, listener = await start_node(self, "raw", LOOPBACK)
        client = await connect_raw(self, listener.port, RawFrameClient())
        return node, client

    @async_test
    async def test_uppercase_vector(self):
        """
        The conformance request frame gets exactly the conformance reply:
        the node's connection address is stripped on the way out.
        """
        node, client = await self._connect()
        client.transport.write(UPPERCASE_REQUEST_FRAME)
        [reply] = await deadline(client.frames_arrived(1), 5, "uppercase reply")
        self.assertEqual(reply, UPPERCASE_REPLY_FRAME)

    @async_test
    async def test_echo_vector(self):
        node, client = await self._connect()
        client.transport.write(frame(ECHO_REQUEST))
        [reply] = await deadline(client.frames_arrived(1), 5, "echo reply")
        self.assertEqual(reply, bytes.fromhex("002f") + ECHO_REPLY)

    @async_test
    async def test_longer_return_route_and_hop(self):
        """
        Return routes of several addresses come back as onward routes;
        C{hop} adds itself to the return route.
        """
        node, client = await self._connect()
        m = "33333333333333333333333333333333"
        request = h_message(["0#hop", "0#echo"], [f"0#{A}", f"0#{m}"], b"\x00\x01\x02")
        client.transport.write(h_frame(request))
        [reply] = await deadline(client.frames_arrived(1), 5, "echo reply")
        self.assertEqual(
            reply, h_frame(h_message([f"0#{A}", f"0#{m}"], ["0#hop", "0#echo"], b"\x00\x01\x02"))
        )
        # The same, spelled out byte by byte.
        self.assertEqual(
            reply,
            bytes.fromhex("0056" "01" "02" "0020") + A.encode() + bytes.fromhex("0020") + m.encode()
            + bytes.fromhex("02" "0003") + b"hop" + bytes.fromhex("0004") + b"echo"
            + bytes.fromhex("03000102"),
        )

    @async_test
    async def test_heartbeat_garbage_and_unknown_get_no_reply(self):
        """
        A heartbeat, undecodable frames and a message to an unknown address
        produce nothing and leave the connection open: the next request's
        reply is the first frame that comes back.
        """
        node, client = await self._connect()
        garbage = [
            frame(b"\xff\xff\xff\xff\xff"),
            frame(b"\x02" + UPPERCASE_REQUEST_FRAME[3:]),  # version 2
            frame(bytes.fromhex("010500")),  # 5 addresses in 1 byte
            frame(bytes.fromhex("0101000a6563686f")),  # truncated address value
            frame(b""),  # empty body
        ]
        nobody = frame(h_message(["0#nobody"], [f"0#{A}"], b"\x05hello"))
        client.transport.write(HEARTBEAT_FRAME + b"".join(garbage) + nobody + HEARTBEAT_FRAME)
        client.transport.write(frame(ECHO_REQUEST))
        [first] = await deadline(client.frames_arrived(1), 5, "echo reply after garbage")
        self.assertEqual(first, bytes.fromhex("002f") + ECHO_REPLY)

        client.transport.write(HEARTBEAT_FRAME + UPPERCASE_REQUEST_FRAME)
        frames = await deadline(client.frames_arrived(2), 5, "uppercase reply after garbage")
        self.assertEqual(frames[1], UPPERCASE_REPLY_FRAME)
        self.assertEqual(len(client.frames), 2)
        self.assertTrue(client.connected_now)
        self.assertEqual(len(node.tcp.connections), 1)
        self.assertEqual(client.buffer, b"")

    @async_test
    async def test_trailing_bytes_ignored(self):
        """
        Bytes after the TransportMessage inside a frame are ignored.
        """
        node, client = await self._connect()
        body = UPPERCASE_REQUEST_FRAME[2:] + b"\xaa\xbb\xcc"
        client.transport.write(frame(body))
        [reply] = await deadline(client.frames_arrived(1), 5, "uppercase reply")
        self.assertEqual(reply, UPPERCASE_REPLY_FRAME)

    @async_test
    async def test_largest_frame_is_answered(self):
        """
        An echo request of exactly 65535 bytes (the largest frame) gets its
        65535-byte reply: the reply on the wire is exactly as big as the
        request, so a Rust node would answer it.
        """
        node, client = await self._connect()
        header = h_message(["0#echo"], [f"0#{A}"], b"")[:-1]  # without the payload length
        size = 65535
        payload_len = size - len(header) - 3  # a 3-byte uvarint length
        self.assertEqual(len(uvarint(payload_len)), 3)
        payload = bytes(range(256)) * (payload_len // 256) + bytes(payload_len % 256)
        request = h_message(["0#echo"], [f"0#{A}"], payload)
        self.assertEqual(len(request), size)
        client.transport.write(h_frame(request))
        client.transport.write(frame(ECHO_REQUEST))  # a small one behind it
        frames = await deadline(client.frames_arrived(2), 5, "replies to a 65535-byte request")
        self.assertEqual(frames[0], h_frame(h_message([f"0#{A}"], ["0#echo"], payload)))
        self.assertEqual(len(frames[0]), 2 + 65535)
        self.assertEqual(frames[1], bytes.fromhex("002f") + ECHO_REPLY)


class TooLargeTests(TestCase):
    timeout = 30

    async def _pair(self):
        server, listener = await start_node(self, "big-srv", LOOPBACK)
        client, _ = await start_node(self, "big-cli")
        conn = await client.tcp.connect(listener.socket_address)
        await round_trip_echo(client, conn)
        return server, listener, client, conn

    @async_test
    async def test_refused_at_sender(self):
        server, listener, client, conn = await self._pair()
        workers = client.worker_addresses()
        served = accepted_connection(server, conn.local_address)
        payload = b"x" * 70000
        route = Route([conn.address, Address.local("echo")])

        self.assertRaises(MessageTooLarge, client.send, route, payload)
        self.assertRaises(MessageTooLarge, client.send, Route(["0#hop", "0#echo"]), payload)
        await self.assertFailure(client.request(route, payload, timeout=5), MessageTooLarge)
        await self.assertFailure(
            client.request(f"/ip4/127.0.0.1/tcp/{listener.port}/service/echo", payload, timeout=5),
            MessageTooLarge,
        )

        # Nothing reached the server, no temporary worker is left behind,
        # and the connection still works.
        self.assertEqual(client.worker_addresses(), workers)
        self.assertEqual(conn.messages_out, 1)
        reply = await client.request(route, b"small", timeout=5)
        self.assertEqual(reply.payload, b"small")
        self.assertEqual(served.messages_in, 2)
        self.assertEqual(client.tcp.connections, [conn])

    @async_test
    async def test_largest_message_through_connection(self):
        """
        A message that is exactly 65535 bytes once the connection worker has
        stripped itself from the onward route fits in a frame and is sent;
        one byte more is refused.
        """
        server, listener, client, conn = await self._pair()
        route = Route([conn.address, Address.local("echo")])
        # On the wire: onward [0#echo], return [0#<32 hex>], payload.
        wire_header = 1 + (1 + 2 + 4) + (1 + 2 + 32) + 3
        payload = b"y" * (65535 - wire_header)
        reply = await client.request(route, payload, timeout=5)
        self.assertEqual(reply.payload, payload)
        await self.assertFailure(client.request(route, payload + b"y", timeout=5), MessageTooLarge)


class UnknownAddressTests(TestCase):
    timeout = 30

    @async_test
    async def test_timeout_and_connection_stays(self):
        server, listener = await start_node(self, "srv", LOOPBACK)
        client, _ = await start_node(self, "cli")
        base = f"/ip4/127.0.0.1/tcp/{listener.port}"
        workers = client.worker_addresses()

        error = await self.assertFailure(
            client.request(f"{base}/service/nobody", b"anyone?", timeout=0.5), RequestTimeout
        )
        self.assertIn("0.5", str(error))
        [conn] = client.tcp.connections
        self.assertTrue(conn.connected)
        self.assertEqual(client.worker_addresses(), workers + [conn.address])

        reply = await client.request(f"{base}/service/echo", b"still here", timeout=5)
        self.assertEqual(reply.payload, b"still here")
        self.assertEqual(client.tcp.connections, [conn])
        [served] = server.tcp.connections
        self.assertEqual(served.messages_in, 2)
        self.assertEqual(served.messages_out, 1)


# --- bounded memory -------------------------------------------------------------

SLOW_ID = "5" * 32
SLOW_PAYLOAD = 1020
SLOW_COUNT = 20000
#: An upper bound on what the node may buffer for one connection.
BOUND = 1024 * 1024
#: Round trips of another client without progress on the slow connection
#: that count as "stalled", and the most round trips to wait for that.
STALLED = 50
MAX_ROUNDS = 20000


def _slow_payload(i: int) -> bytes:
    return i.to_bytes(4, "big") + bytes([i % 251]) * (SLOW_PAYLOAD - 4)


def _slow_request(i: int) -> bytes:
    return h_frame(h_message(["0#echo"], [f"0#{SLOW_ID}"], _slow_payload(i)))


def _slow_reply(i: int) -> bytes:
    return h_frame(h_message([f"0#{SLOW_ID}"], ["0#echo"], _slow_payload(i)))


@implementer(IPullProducer)
class _RequestWriter:
    """
    Writes the requests in batches, only when the client's transport asks
    (a pull producer), so the client itself stays within bounds.
    """

    def __init__(self, client: "SlowClient", count: int, batch: int = 32) -> None:
        self.client = client
        self.count = count
        self.batch = batch
        self.sent = 0

    def resumeProducing(self) -> None:
        end = min(self.sent + self.batch, self.count)
        self.client.transport.writeSequence([_slow_request(i) for i in range(self.sent, end)])
        self.sent = end
        if self.sent == self.count:
            self.client.transport.unregisterProducer()

    def stopProducing(self) -> None:
        pass


class SlowClient(Protocol):
    """
    Sends echo requests 0..N-1 and checks each reply in order, byte for
    byte, without keeping them.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.received = 0
        self.mismatches = []
        self.all_received: Deferred = Deferred()
        self.lost: Deferred = Deferred()
        self._buf = bytearray()

    def connectionMade(self) -> None:
        # A small, fixed receive buffer: the kernel may not soak up the
        # replies the test does not read.
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)

    def dataReceived(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            n = (buf[pos] << 8) | buf[pos + 1]
            if end - pos < 2 + n:
                break
            got = bytes(buf[pos : pos + 2 + n])
            pos += 2 + n
            if got != _slow_reply(self.received) and len(self.mismatches) < 5:
                self.mismatches.append((self.received, got[:48].hex()))
            self.received += 1
        del buf[:pos]
        if self.received >= self.count and not self.all_received.called:
            self.all_received.callback(self.received)

    def connectionLost(self, reason) -> None:
        if not self.all_received.called:
            self.all_received.errback(
                AssertionError(f"connection lost after {self.received} of {self.count} replies")
            )
        self.lost.callback(None)


class BoundedMemoryTests(TestCase):
    timeout = 60

    @async_test
    async def test_slow_reader(self):
        """
        A client that writes 20 MB of echo requests and reads nothing: the
        node stops reading from it, buffers at most a bounded amount for it,
        keeps serving another client, and loses nothing once the slow client
        reads again.
        """
        node, listener = await start_node(self, "bounded", LOOPBACK)
        slow = await connect_raw(self, listener.port, SlowClient(SLOW_COUNT + 1))

        # A first request and its reply: the node has accepted the connection.
        slow.transport.write(_slow_request(0))
        await deadline(self._received(slow, 1), 5, "the first echo reply")
        server_conn = accepted_connection(node, f"127.0.0.1:{slow.transport.getHost().port}")
        t = server_conn.transport

        # Watch the node's side of the slow connection: the most it ever
        # buffers for writing and in its frame decoder, and its pauses.
        watch = {"outbound": 0, "decoder": 0, "pauses": 0}
        original_write_sequence = t.writeSequence

        def write_sequence(parts):
            original_write_sequence(parts)
            watch["outbound"] = max(watch["outbound"], outbound_buffered(t))

        t.writeSequence = write_sequence
        original_pause = server_conn.pause_flow

        def pause_flow():
            original_pause()
            watch["pauses"] += 1

        server_conn.pause_flow = pause_flow
        original_data = server_conn._data_received

        def data_received(data):
            watch["decoder"] = max(watch["decoder"], server_conn._decoder.buffered() + len(data))
            original_data(data)

        server_conn._data_received = data_received

        # The slow client stops reading and starts writing requests 1..N.
        slow.transport.pauseProducing()
        writer = _RequestWriter(slow, SLOW_COUNT + 1)
        writer.sent = 1
        slow.transport.registerProducer(writer, False)

        # Another client is served, round trip after round trip, while the
        # slow connection stalls: its reading stays paused and it makes no
        # progress across STALLED consecutive round trips of the other one.
        other, _ = await start_node(self, "other")
        other_route = f"/ip4/127.0.0.1/tcp/{listener.port}/service/uppercase"
        stalled, last, rounds = 0, None, 0
        while stalled < STALLED:
            rounds += 1
            if rounds > MAX_ROUNDS:
                self.fail(
                    f"the slow connection did not stall within {MAX_ROUNDS} round trips of "
                    f"another client: {watch}, paused={server_conn.paused}, "
                    f"messages_in={server_conn.messages_in}, client wrote {writer.sent}"
                )
            reply = await other.request(other_route, b"\x05hello", timeout=5)
            self.assertEqual(reply.payload, b"\x05HELLO")
            now = server_conn.messages_in
            stalled = stalled + 1 if (server_conn.paused and now == last) else 0
            last = now
        self.assertTrue(server_conn.paused)
        self.assertGreater(watch["pauses"], 0)
        # It stalled with requests unread; the slow client, which is not
        # reading, has seen only the first reply.
        self.assertLess(server_conn.messages_in, SLOW_COUNT + 1)
        self.assertEqual(slow.received, 1)
        self.assertLess(watch["outbound"], BOUND, watch)
        self.assertLess(watch["decoder"], BOUND, watch)

        # The slow client reads again: every reply arrives, in order.
        slow.transport.resumeProducing()
        total = await deadline(slow.all_received, 40, "all replies to the slow client")
        self.assertEqual(total, SLOW_COUNT + 1)
        self.assertEqual(slow.mismatches, [])
        self.assertEqual(writer.sent, SLOW_COUNT + 1)
        self.assertEqual(server_conn.messages_in, SLOW_COUNT + 1)
        self.assertEqual(server_conn.messages_out, SLOW_COUNT + 1)
        self.assertFalse(server_conn.paused)
        self.assertGreater(watch["pauses"], 0)
        self.assertLess(watch["outbound"], BOUND, watch)
        self.assertLess(watch["decoder"], BOUND, watch)

    def _received(self, client: SlowClient, n: int) -> Deferred:
        """
        Fires when C{client} has received C{n} replies (checked on data).
        """
        d: Deferred = Deferred()
        original = client.dataReceived

        def data_received(data):
            original(data)
            if client.received >= n and not d.called:
                client.dataReceived = original
                d.callback(client.received)

        client.dataReceived = data_received
        return d


# --- the example and the plugin ---------------------------------------------------


class ExampleTests(TestCase):
    timeout = 60

    @async_test
    async def test_walkthrough(self):
        script = os.path.join(REPO_ROOT, "examples", "walkthrough.py")
        out, err, code = await deadline(
            getProcessOutputAndValue(sys.executable, [script], env=subprocess_env(), path=REPO_ROOT),
            50,
            "examples/walkthrough.py",
        )
        self.assertEqual(code, 0, (out, err))
        self.assertIn(b"\nHELLO\n", out)
        self.assertRegex(out, rb"n2 listening on 127\.0\.0\.1:\d+")
        self.assertNotIn(b"Traceback", out + err)


class PluginTests(TestCase):
    timeout = 30

    def _maker(self):
        makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
        self.assertIn("ockam", makers)
        return makers["ockam"]

    def test_options(self):
        options = self._maker().options()
        options.parseOptions(["--name", "n2", "--listen", "7000"])
        self.assertEqual(options["name"], "n2")
        # Kept as typed (messages quote it); what it means is checked below.
        self.assertEqual(options["listen"], "7000")
        self.assertEqual(server_description(options["listen"]), "tcp:7000:interface=127.0.0.1:backlog=1024")

    def test_listen_forms(self):
        maker = self._maker()
        for given, expected in [
            ("127.0.0.1:7001", "tcp:7001:interface=127.0.0.1:backlog=1024"),
            ("[::1]:7001", "tcp6:7001:interface=\\:\\:1:backlog=1024"),
            ("tcp:7002:interface=0.0.0.0", "tcp:7002:interface=0.0.0.0"),
        ]:
            options = maker.options()
            options.parseOptions(["--listen", given])
            self.assertEqual(options["listen"], given)
            self.assertEqual(server_description(options["listen"]), expected)

    def test_bad_listen(self):
        maker = self._maker()
        for bad in ["bad value", "127.0.0.1:99999", ""]:
            options = maker.options()
            self.assertRaises(usage.UsageError, options.parseOptions, ["--listen", bad])

    @async_test
    async def test_make_service(self):
        maker = self._maker()
        options = maker.options()
        options.parseOptions(["--name", "svc", "--listen", LOOPBACK])
        service = maker.makeService(options)
        self.assertTrue(verifyObject(IService, service))
        self.assertEqual(service.name, "svc")
        # The service installs its own SIGTERM handler: restore trial's.
        self.addCleanup(signal.signal, signal.SIGTERM, signal.getsignal(signal.SIGTERM))
        service.privilegedStartService()
        service.startService()
        self.addCleanup(service.stopService)

        self.assertIsInstance(service.worker_at("echo"), Echo)
        self.assertIsInstance(service.worker_at("uppercase"), Uppercase)
        self.assertIsInstance(service.worker_at("hop"), Hop)
        [listener] = service.tcp.listeners
        self.assertEqual(listener.host, "127.0.0.1")
        self.assertNotEqual(listener.port, 0)

        client, _ = await start_node(self, "svc-client")
        reply = await client.request(
            f"/ip4/127.0.0.1/tcp/{listener.port}/service/hop/service/uppercase", b"\x03abc", timeout=5
        )
        self.assertEqual(reply.payload, b"\x03ABC")
