"""
Tests for relays (section 5 of the wire spec): the relay service
(C{forwarding_service} and C{static_forwarding_service}) on the relay node,
and the relay client (L{ockamtw.api.Node.create_relay}) that keeps a
registration alive on its own.

The first half runs in memory (a L{MemoryReactorClock} and the TCP
transport's own protocol on L{StringTransport}s) and checks frames byte for
byte against hand-written encodings and the conformance vectors.  The
second half uses real loopback sockets (port 0) on the global reactor: the
seed topology, recovery after the relay node is restarted on the same port,
a refused take-over, and a peer that speaks raw frames with no ockamtw code.
"""

from __future__ import annotations

import re

from twisted.internet import reactor
from twisted.internet.defer import CancelledError
from twisted.logger import LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ockamtw import (
    Address,
    AddressInUse,
    FunctionWorker,
    RequestTimeout,
    Route,
    RouteUnreachable,
    decode_string,
    encode_string,
)
from ockamtw.access import ANYONE
from ockamtw.errors import RelayRefused
from ockamtw.relay import (
    DOWN,
    FORWARDING_SERVICE,
    STATIC_FORWARDING_SERVICE,
    UP,
    Forwarder,
    Relay,
)
from ockamtw.services import Echo

from .helpers import (
    RawFrameClient,
    accepted_connection,
    async_test,
    captureLogs,
    connect_raw,
    deadline,
    first_log_event,
    h_string,
    held_port,
    msg_frame,
    start_node,
)
from .memory_harness import MemoryMixin

LOOPBACK = "tcp:0:interface=127.0.0.1"
HEX32 = re.compile(r"^[0-9a-f]{32}$")

#: Stand-in addresses of the conformance vectors: M is the registering
#: worker, A some requester's reply address.
M = "33333333333333333333333333333333"
A = "0123456789abcdef0123456789abcdef"
#: Another registering worker, for re-registration with a new route.
M2 = "44444444444444444444444444444444"

# Hex copied from tests/data/vectors.json so that these tests do
# not trust the codec under test.
#: "relay registration n3 -> n2": onward [0#forwarding_service], return
#: [0#M], payload the BARE string "forward_to_n3".
REGISTRATION = bytes.fromhex(
    "01010012666f7277617264696e675f7365727669636501002033333333333333333333333333333333"
    "333333333333333333333333333333330e0d666f72776172645f746f5f6e33"
)
#: "relay registration reply n2 -> n3": onward [0#M], return
#: [0#forward_to_n3], the same payload.
REGISTRATION_REPLY = bytes.fromhex(
    "01010020333333333333333333333333333333333333333333333333333333333333333301000d666f72"
    "776172645f746f5f6e330e0d666f72776172645f746f5f6e33"
)
REGISTRATION_FRAME = len(REGISTRATION).to_bytes(2, "big") + REGISTRATION
REGISTRATION_REPLY_FRAME = len(REGISTRATION_REPLY).to_bytes(2, "big") + REGISTRATION_REPLY
#: The payload of both: 0e 0d "forward_to_n3" (data of a BARE string).
ALIAS_PAYLOAD = bytes.fromhex("0d666f72776172645f746f5f6e33")


# --- a hand-written decoder, independent of ockamtw.wire ---------------------


def h_read_uvarint(buf: bytes, i: int):
    n = shift = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def h_read_route(buf: bytes, i: int):
    count, i = h_read_uvarint(buf, i)
    out = []
    for _ in range(count):
        t = buf[i]
        n, i = h_read_uvarint(buf, i + 1)
        out.append(f"{t}#{buf[i:i + n].decode('utf-8')}")
        i += n
    return out, i


def h_decode(body: bytes):
    """
    A TransportMessage body to C{(onward texts, return texts, payload)}.
    """
    assert body[0] == 1, body
    onward, i = h_read_route(body, 1)
    ret, i = h_read_route(body, i)
    n, i = h_read_uvarint(body, i)
    assert len(body) == i + n, (len(body), i, n)
    return onward, ret, body[i:i + n]


def h_split(data: bytes):
    """
    A byte stream of 2-byte-length frames to the list of their bodies.
    """
    out = []
    while data:
        n = int.from_bytes(data[:2], "big")
        assert len(data) >= 2 + n, data
        out.append(data[2:2 + n])
        data = data[2 + n:]
    return out


def who(name: bytes):
    """
    A worker that answers every message with C{name}.
    """
    return FunctionWorker(lambda worker, message: worker.reply(message, name), access=ANYONE)


# --- the relay service, in memory --------------------------------------------


class ForwardingServiceTests(MemoryMixin, SynchronousTestCase):
    """
    C{forwarding_service} and C{static_forwarding_service} on the relay node.
    """

    def test_servicesRunning(self):
        """
        Every node runs both relay services.
        """
        self.assertIsNotNone(self.node.worker_at(FORWARDING_SERVICE))
        self.assertIsNotNone(self.node.worker_at(STATIC_FORWARDING_SERVICE))

    def test_registrationReplyVector(self):
        """
        The registration vector over a connection is answered on that
        connection with exactly the reply vector, and a forwarder lives at
        the alias with forward route [connection, M].
        """
        proto, t, conn = self.connect()
        proto.dataReceived(REGISTRATION_FRAME)
        self.assertEqual(t.value(), REGISTRATION_REPLY_FRAME)
        forwarder = self.node.worker_at("forward_to_n3")
        self.assertIsInstance(forwarder, Forwarder)
        self.assertEqual(forwarder.forward_route, Route([conn.address, Address.local(M)]))
        self.assertFalse(t.disconnecting)

    def test_registrationInPieces(self):
        """
        The registration frame arriving one byte at a time gets the same
        single reply.
        """
        proto, t, conn = self.connect()
        for i in range(len(REGISTRATION_FRAME)):
            proto.dataReceived(REGISTRATION_FRAME[i:i + 1])
        self.assertEqual(t.value(), REGISTRATION_REPLY_FRAME)

    def test_forwarding(self):
        """
        A message for [forward_to_n3, uppercase] arriving on another
        connection leaves on the registering connection with onward
        [M, uppercase] and its return route (the other connection first)
        unchanged; the answer that comes back along that return route is
        written to the requester.
        """
        p1, t1, c1 = self.connect()
        p1.dataReceived(REGISTRATION_FRAME)
        t1.clear()
        p2, t2, c2 = self.connect()
        p2.dataReceived(msg_frame(["0#forward_to_n3", "0#uppercase"], [A], h_string("hello")))
        self.assertEqual(
            t1.value(),
            msg_frame([M, "uppercase"], [self.text(c2), A], h_string("hello")),
        )
        self.assertEqual(t2.value(), b"")
        self.assertEqual(self.node.worker_at("forward_to_n3").forwarded, 1)

        # The registered peer answers along the return route it was given.
        t1.clear()
        p1.dataReceived(msg_frame([self.text(c2), A], ["uppercase"], h_string("HELLO")))
        self.assertEqual(
            t2.value(), msg_frame([A], [self.text(c1), "uppercase"], h_string("HELLO"))
        )
        self.assertEqual(t1.value(), b"")

    def test_forwardingFromThisNode(self):
        """
        A local sender reaches the registered peer through the forwarder as
        well; the return route is the sender's.
        """
        p1, t1, c1 = self.connect()
        p1.dataReceived(REGISTRATION_FRAME)
        t1.clear()
        self.node.send(["forward_to_n3", "echo", "x"], b"raw", sender="me")
        self.assertEqual(t1.value(), msg_frame([M, "echo", "x"], ["me"], b"raw"))

    def test_staticForwardingService(self):
        """
        C{static_forwarding_service} with payload "n3" creates
        forward_to_n3 and answers from it with the payload unchanged, every
        time the same registration comes again; traffic goes to the
        registered route.
        """
        p1, t1, c1 = self.connect()
        p1.dataReceived(msg_frame([STATIC_FORWARDING_SERVICE], [M, "x"], h_string("n3")))
        self.assertEqual(t1.value(), msg_frame([M, "x"], ["forward_to_n3"], h_string("n3")))
        forwarder = self.node.worker_at("forward_to_n3")
        self.assertIsInstance(forwarder, Forwarder)
        self.assertEqual(forwarder.forward_route, Route([c1.address, Address.local(M), Address.local("x")]))
        self.assertIsNone(self.node.worker_at("n3"))

        t1.clear()
        p1.dataReceived(msg_frame([STATIC_FORWARDING_SERVICE], [M, "x"], h_string("n3")))
        self.assertEqual(t1.value(), msg_frame([M, "x"], ["forward_to_n3"], h_string("n3")))
        self.assertIs(self.node.worker_at("forward_to_n3"), forwarder)

        t1.clear()
        p2, t2, c2 = self.connect()
        p2.dataReceived(msg_frame(["forward_to_n3", "outlet"], [A], b"\x00"))
        self.assertEqual(t1.value(), msg_frame([M, "x", "outlet"], [self.text(c2), A], b"\x00"))

    def test_reRegistrationIdempotent(self):
        """
        The same registration three times is answered three times; there is
        still one forwarder, the same one, with the same route.
        """
        proto, t, conn = self.connect()
        before = self.node.worker_addresses()
        proto.dataReceived(REGISTRATION_FRAME)
        forwarder = self.node.worker_at("forward_to_n3")
        proto.dataReceived(REGISTRATION_FRAME + REGISTRATION_FRAME)
        self.assertEqual(t.value(), REGISTRATION_REPLY_FRAME * 3)
        self.assertIs(self.node.worker_at("forward_to_n3"), forwarder)
        self.assertEqual(forwarder.forward_route, Route([conn.address, Address.local(M)]))
        self.assertEqual(self.node.worker_addresses(), before + [Address.local("forward_to_n3")])

    def test_sameConnectionOtherWorkerRefused(self):
        """
        A registration of a live forwarder's alias over the same connection
        but from another worker is refused: two tenants behind one gateway
        node share a connection, and a peer can bounce a registration
        through the owner's node (through its C{hop}) so that it arrives
        over the owner's connection.  Only the very same route refreshes a
        forwarder.
        """
        proto, t, conn = self.connect()
        proto.dataReceived(REGISTRATION_FRAME)
        forwarder = self.node.worker_at("forward_to_n3")
        t.clear()
        proto.dataReceived(msg_frame([FORWARDING_SERVICE], [M2], h_string("forward_to_n3")))
        proto.dataReceived(msg_frame([FORWARDING_SERVICE], ["hop", M], h_string("forward_to_n3")))
        self.assertEqual(t.value(), b"")
        self.assertIs(self.node.worker_at("forward_to_n3"), forwarder)
        self.assertEqual(forwarder.forward_route, Route([conn.address, Address.local(M)]))
        # Traffic still reaches the owner.
        p2, t2, c2 = self.connect()
        p2.dataReceived(msg_frame(["forward_to_n3", "who"], [A], b"q"))
        self.assertEqual(t.value(), msg_frame([M, "who"], [self.text(c2), A], b"q"))

    def test_takeOverRefused(self):
        """
        A registration of a live forwarder's alias from another connection
        is refused: nothing is written back, a warning names the alias, and
        the forwarder still forwards to the first connection.  An unrelated
        connection closing changes nothing; when the first connection
        closes the forwarder is gone at once and the other peer can take
        the name.
        """
        M4 = "44444444444444444444444444444444"
        OTHER_REGISTRATION_FRAME = msg_frame(["forwarding_service"], [M4], ALIAS_PAYLOAD)
        events = captureLogs(self, "ockamtw.relay")
        p1, t1, c1 = self.connect()
        p1.dataReceived(REGISTRATION_FRAME)
        forwarder = self.node.worker_at("forward_to_n3")
        t1.clear()
        del events[:]

        # Another peer: another connection and its own registering worker M4.
        p2, t2, c2 = self.connect()
        p2.dataReceived(OTHER_REGISTRATION_FRAME)
        self.assertEqual(t2.value(), b"")
        self.assertEqual(t1.value(), b"")
        self.assertFalse(t2.disconnecting)
        self.assertIs(self.node.worker_at("forward_to_n3"), forwarder)
        self.assertEqual(forwarder.forward_route, Route([c1.address, Address.local(M)]))
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        self.assertEqual(len(warnings), 1, [formatEvent(e) for e in events])
        self.assertIn("forward_to_n3", formatEvent(warnings[0]))
        self.assertIn("refused", formatEvent(warnings[0]))

        # The first peer still gets the traffic.
        p3, t3, c3 = self.connect()
        p3.dataReceived(msg_frame(["forward_to_n3", "who"], [A], b"q"))
        self.assertEqual(t1.value(), msg_frame([M, "who"], [self.text(c3), A], b"q"))
        self.assertEqual(t2.value(), b"")

        # Another connection closing does not touch the forwarder.
        self.lose(p3)
        self.assertIs(self.node.worker_at("forward_to_n3"), forwarder)

        # The owner's connection closing frees the name at once.
        self.lose(p1)
        self.assertIsNone(self.node.worker_at("forward_to_n3"))
        self.assertNotIn(Address.local("forward_to_n3"), self.node.worker_addresses())

        p2.dataReceived(OTHER_REGISTRATION_FRAME)
        self.assertEqual(t2.value(), msg_frame([M4], ["forward_to_n3"], ALIAS_PAYLOAD))
        taken = self.node.worker_at("forward_to_n3")
        self.assertIsInstance(taken, Forwarder)
        self.assertEqual(taken.forward_route, Route([c2.address, Address.local(M4)]))

        t2.clear()
        p4, t4, c4 = self.connect()
        p4.dataReceived(msg_frame(["forward_to_n3", "who"], [A], b"q"))
        self.assertEqual(t2.value(), msg_frame([M4, "who"], [self.text(c4), A], b"q"))

    def test_sameWorkerOverAnotherConnection(self):
        """
        A registration with the owner's worker address (M) but through
        another connection is refused while the owner's connection lives
        (M is no secret from the relay node's log readers); once that
        connection closes, the name is free and the new one takes it.
        """
        p1, t1, c1 = self.connect()
        p1.dataReceived(REGISTRATION_FRAME)
        forwarder = self.node.worker_at("forward_to_n3")
        p2, t2, c2 = self.connect()
        p2.dataReceived(REGISTRATION_FRAME)
        self.assertEqual(t2.value(), b"")
        self.assertIs(self.node.worker_at("forward_to_n3"), forwarder)
        self.assertEqual(forwarder.forward_route, Route([c1.address, Address.local(M)]))
        self.lose(p1)
        self.assertIsNone(self.node.worker_at("forward_to_n3"))
        p2.dataReceived(REGISTRATION_FRAME)
        self.assertEqual(t2.value(), REGISTRATION_REPLY_FRAME)
        self.assertEqual(self.node.worker_at("forward_to_n3").forward_route, Route([c2.address, Address.local(M)]))
    def test_forwarderDiesWithConnection(self):
        """
        Closing the registering connection removes the forwarder (of both
        services) and nothing else.
        """
        before = self.node.worker_addresses()
        p1, t1, c1 = self.connect()
        p1.dataReceived(REGISTRATION_FRAME)
        p1.dataReceived(msg_frame([STATIC_FORWARDING_SERVICE], [M], h_string("n4")))
        self.assertIsInstance(self.node.worker_at("forward_to_n4"), Forwarder)
        self.lose(p1)
        self.assertIsNone(self.node.worker_at("forward_to_n3"))
        self.assertIsNone(self.node.worker_at("forward_to_n4"))
        self.assertEqual(self.node.worker_addresses(), before)

    def test_nonBarePayloadsDropped(self):
        """
        Registration payloads that are not one BARE string (or an empty
        one) are dropped without a reply and without a new worker; the
        connection stays open and a good registration still works.
        """
        proto, t, conn = self.connect()
        before = self.node.worker_addresses()
        bad = [
            b"",  # no length at all
            b"\x80",  # a truncated uvarint
            b"\x05ab",  # shorter than its length
            b"\x02abc",  # trailing bytes
            b"\x02\xff\xfe",  # not UTF-8
            b"\x00",  # the empty string
        ]
        for payload in bad:
            proto.dataReceived(msg_frame([FORWARDING_SERVICE], [M], payload))
            proto.dataReceived(msg_frame([STATIC_FORWARDING_SERVICE], [M], payload))
        self.assertEqual(t.value(), b"")
        self.assertEqual(self.node.worker_addresses(), before)
        self.assertFalse(t.disconnecting)
        self.assertEqual(self.flushLoggedErrors(), [])
        proto.dataReceived(REGISTRATION_FRAME)
        self.assertEqual(t.value(), REGISTRATION_REPLY_FRAME)

    def test_aliasOfAServiceRefused(self):
        """
        An alias that is the address of another worker (C{echo}, the relay
        service itself) is refused without a reply and logged; echo keeps
        echoing.
        """
        events = captureLogs(self, "ockamtw.relay")
        echo = self.node.worker_at("echo")
        service = self.node.worker_at(FORWARDING_SERVICE)
        proto, t, conn = self.connect()
        proto.dataReceived(msg_frame([FORWARDING_SERVICE], [M], h_string("echo")))
        proto.dataReceived(msg_frame([FORWARDING_SERVICE], [M], h_string(FORWARDING_SERVICE)))
        self.assertEqual(t.value(), b"")
        self.assertIsInstance(echo, Echo)
        self.assertIs(self.node.worker_at("echo"), echo)
        self.assertIs(self.node.worker_at(FORWARDING_SERVICE), service)
        self.assertEqual(
            len([e for e in events if e["log_level"] == LogLevel.warn]),
            2,
            [formatEvent(e) for e in events],
        )
        proto.dataReceived(msg_frame(["echo"], [A], b"\x00\x01\x02"))
        self.assertEqual(t.value(), msg_frame([A], ["echo"], b"\x00\x01\x02"))

    def test_noReturnRouteDropped(self):
        """
        A registration sent locally without a return route creates nothing.
        """
        before = self.node.worker_addresses()
        self.node.send([FORWARDING_SERVICE], encode_string("forward_to_x"))
        self.assertEqual(self.node.worker_addresses(), before)


# --- the relay client, in memory -----------------------------------------------


class RelayClientTests(MemoryMixin, SynchronousTestCase):
    """
    L{Node.create_relay} and L{Relay} against a scripted relay node on a
    L{StringTransport}.
    """

    node_name = "n3"

    def setUp(self):
        MemoryMixin.setUp(self)
        self.proto, self.t, self.conn = self.connect()
        self.before = self.node.worker_addresses()

    def start(self, **kw):
        """
        Start a relay "n3" at the connection; return its Deferred and the
        address of its worker M.
        """
        kw.setdefault("name", "n3")
        d = self.node.create_relay(at=Route([self.conn.address]), **kw)
        new = [a for a in self.node.worker_addresses() if a not in self.before]
        self.assertEqual(len(new), 1, new)
        self.assertRegex(new[0].value, r"^[0-9a-f]{32}\.r1$")
        return d, new[0]

    def registration(self, m, alias="forward_to_n3", service=FORWARDING_SERVICE):
        return msg_frame([service], [str(m)], h_string(alias))

    def reply(self, m, alias="forward_to_n3", payload=None):
        if payload is None:
            payload = h_string(alias)
        return msg_frame([str(m)], [alias], payload)

    def up(self, **kw):
        d, m = self.start(**kw)
        self.proto.dataReceived(self.reply(m))
        relay = self.successResultOf(d)
        self.t.clear()
        return relay, m

    def test_registration(self):
        """
        The relay sends the registration from its worker M; the reply makes
        the Deferred fire with an Up relay that knows its forwarder's
        address and the route to it.
        """
        d, m = self.start()
        self.assertEqual(self.t.value(), self.registration(m))
        self.assertNoResult(d)
        self.assertEqual(self.node.relays["n3"].status, DOWN)
        self.proto.dataReceived(self.reply(m))
        relay = self.successResultOf(d)
        self.assertIsInstance(relay, Relay)
        self.assertEqual(relay.status, UP)
        self.assertEqual(relay.name, "n3")
        self.assertEqual(relay.alias, "forward_to_n3")
        self.assertEqual(relay.remote_address, Address.parse("0#forward_to_n3"))
        self.assertEqual(relay.route, Route([self.conn.address, Address.local("forward_to_n3")]))
        self.assertIs(self.node.relays["n3"], relay)
        self.assertIs(self.successResultOf(relay.when_status(UP)), relay)
        self.assertEqual(relay.to_dict()["status"], "UP")
        self.assertEqual(relay.to_dict()["remote_address"], "0#forward_to_n3")
        # Nothing else was written, and only the refresh timer waits.
        self.assertEqual(self.t.value(), self.registration(m))
        self.assertEqual([c.getTime() for c in self.reactor.getDelayedCalls()], [5.0])

    def test_replyAddressIsLastOfReturnRoute(self):
        """
        The relay's address is the last address of the reply's return route.
        """
        d, m = self.start()
        self.proto.dataReceived(msg_frame([str(m)], ["hop", "forward_to_n3"], h_string("forward_to_n3")))
        relay = self.successResultOf(d)
        self.assertEqual(relay.remote_address, Address.local("forward_to_n3"))
        self.assertEqual(relay.route, Route([self.conn.address, Address.local("forward_to_n3")]))

    def test_wrongReplyIgnored(self):
        """
        A reply with another payload does not bring the relay up.
        """
        d, m = self.start()
        self.proto.dataReceived(self.reply(m, payload=h_string("forward_to_n4")))
        self.assertNoResult(d)
        self.assertEqual(self.node.relays["n3"].status, DOWN)
        self.proto.dataReceived(self.reply(m))
        self.assertEqual(self.successResultOf(d).status, UP)

    def test_staticService(self):
        """
        With C{static_forwarding_service} the registration carries the
        bare name, and the relay's address is what the service answers.
        """
        d, m = self.start(service=STATIC_FORWARDING_SERVICE)
        self.assertEqual(self.t.value(), self.registration(m, "n3", STATIC_FORWARDING_SERVICE))
        self.proto.dataReceived(msg_frame([str(m)], ["forward_to_n3"], h_string("n3")))
        relay = self.successResultOf(d)
        self.assertEqual(relay.status, UP)
        self.assertEqual(relay.remote_address, Address.local("forward_to_n3"))
        self.assertEqual(relay.route, Route([self.conn.address, Address.local("forward_to_n3")]))

    def test_timeout(self):
        """
        Without a reply within C{timeout}, the Deferred fails with
        L{RequestTimeout}; no worker, relay entry or timer is left, and a
        late reply is dropped.
        """
        d, m = self.start(timeout=2.0)
        self.reactor.advance(1.9)
        self.assertNoResult(d)
        self.reactor.advance(0.2)
        self.failureResultOf(d, RequestTimeout)
        self.assertEqual(self.node.worker_addresses(), self.before)
        self.assertNotIn("n3", self.node.relays)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertFalse(self.t.disconnecting)
        self.t.clear()
        self.proto.dataReceived(self.reply(m))
        self.assertEqual(self.t.value(), b"")
        # The name can be used again.
        d2, m2 = self.start()
        self.assertEqual(self.t.value(), self.registration(m2))

    def test_nameTakenLocally(self):
        """
        A second relay of the same name on this node fails with
        L{AddressInUse} and sends nothing.
        """
        relay, m = self.up()
        self.failureResultOf(
            self.node.create_relay(at=Route([self.conn.address]), name="n3"), AddressInUse
        )
        self.assertEqual(self.t.value(), b"")
        self.assertIs(self.node.relays["n3"], relay)

    def test_refresh(self):
        """
        Every C{refresh} seconds the registration is sent again from the
        same worker; answered, the relay stays Up without a status change.
        """
        relay, m = self.up(refresh=3.0, timeout=1.0)
        statuses = []
        relay.on_status(statuses.append)
        self.reactor.advance(2.9)
        self.assertEqual(self.t.value(), b"")
        self.reactor.advance(0.1)
        self.assertEqual(self.t.value(), self.registration(m))
        self.proto.dataReceived(self.reply(m))
        self.reactor.advance(1.0)  # past the timeout: nothing happens
        self.assertEqual(relay.status, UP)
        self.assertEqual(relay.registrations, 2)
        self.t.clear()
        self.reactor.advance(2.0)
        self.assertEqual(self.t.value(), self.registration(m))
        self.assertEqual(statuses, [])

    def test_missingRefreshReplyMarksDown(self):
        """
        A refresh that is not answered within C{timeout} marks the relay
        Down (observers are told once); the link is dropped as dead.
        L{Relay.stop} then leaves no timer and no worker.
        """
        relay, m = self.up(refresh=3.0, timeout=1.0)
        statuses = []
        relay.on_status(statuses.append)
        down = relay.when_status(DOWN)
        self.reactor.advance(3.0)
        self.assertEqual(self.t.value(), self.registration(m))
        self.reactor.advance(0.9)
        self.assertNoResult(down)
        self.assertEqual(relay.status, UP)
        self.reactor.advance(0.1)
        self.assertIs(self.successResultOf(down), relay)
        self.assertEqual(relay.status, DOWN)
        self.assertEqual(statuses, [DOWN])
        self.assertIn("no registration reply", relay.last_error)
        self.assertTrue(self.t.disconnecting)
        self.assertNotEqual(self.reactor.getDelayedCalls(), [])  # a retry is planned

        relay.stop()
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertIsNone(self.node.worker_at(m))
        self.assertEqual(relay.status, DOWN)
        self.assertEqual(statuses, [DOWN])

    def test_linkLostMarksDown(self):
        """
        The relay is Down as soon as its connection closes, before any
        timer runs.
        """
        relay, m = self.up()
        statuses = []
        relay.on_status(statuses.append)
        self.lose(self.proto)
        self.assertEqual(statuses, [DOWN])
        self.assertEqual(relay.status, DOWN)
        relay.stop()
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertIsNone(self.node.worker_at(m))

    def test_stop(self):
        """
        Stopping an Up relay cancels its refresh and removes its worker;
        nothing more is sent.
        """
        relay, m = self.up()
        statuses = []
        relay.on_status(statuses.append)
        relay.stop()
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertIsNone(self.node.worker_at(m))
        self.assertEqual(self.node.worker_addresses(), self.before)
        self.assertEqual(statuses, [DOWN])
        self.reactor.advance(60)
        self.assertEqual(self.t.value(), b"")

    def test_stopWhileRegistering(self):
        """
        Stopping a relay whose first registration is pending fails its
        Deferred with L{CancelledError} and leaves nothing behind.
        """
        d, m = self.start()
        self.node.relays["n3"].stop()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(self.node.worker_addresses(), self.before)
        self.assertNotIn("n3", self.node.relays)

    def test_stopWhileRefreshing(self):
        """
        Stopping a relay while a refresh waits for its reply leaves no
        timer either, and does not mark it Down twice.
        """
        relay, m = self.up(refresh=1.0, timeout=1.0)
        statuses = []
        relay.on_status(statuses.append)
        self.reactor.advance(1.0)
        self.assertEqual(self.t.value(), self.registration(m))
        relay.stop()
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(statuses, [DOWN])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_deleteRelay(self):
        """
        C{delete_relay} stops the relay and frees its name.
        """
        relay, m = self.up()
        self.node.delete_relay("n3")
        self.assertNotIn("n3", self.node.relays)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertIsNone(self.node.worker_at(m))
        self.assertRaises(KeyError, self.node.delete_relay, "n3")

    def test_sameNameAgainFromTheSameWorkerAddress(self):
        """
        A relay deleted and created again under the same name registers
        from the same worker address, so the relay node sees the same
        route and lets its owner take the name back (Ockam 0.83 has no
        message that removes a forwarder; it lives as long as the link).
        Another name gets another address.
        """
        relay, m = self.up()
        self.node.delete_relay("n3")
        d, again = self.start()
        self.assertEqual(again, m)
        self.assertEqual(self.t.value(), self.registration(m))
        self.proto.dataReceived(self.reply(m))
        self.assertEqual(self.successResultOf(d).status, UP)
        self.t.clear()
        self.before = self.node.worker_addresses()
        _, other = self.start(name="n4")
        self.assertNotEqual(other, m)

    def test_relayedTraffic(self):
        """
        A message relayed to M with onward [M, uppercase] is delivered to
        uppercase with its return route unchanged; the answer goes back on
        the connection with onward = that return route, return [uppercase].
        """
        relay, m = self.up()
        c21 = "aa" * 16
        self.proto.dataReceived(msg_frame([str(m), "uppercase"], [c21, A], h_string("hello")))
        self.assertEqual(self.t.value(), msg_frame([c21, A], ["uppercase"], h_string("HELLO")))
        self.assertEqual(relay.status, UP)

    def test_relayedTrafficToLocalWorker(self):
        """
        A local worker receives relayed messages with onward [itself, ...]
        and the return route as it arrived on the connection.
        """
        relay, m = self.up()
        got = []
        self.node.start_worker("sink", FunctionWorker(lambda w, msg: got.append(msg), access=ANYONE))
        self.proto.dataReceived(msg_frame([str(m), "sink", "more"], [A], b"data"))
        self.assertEqual(len(got), 1)
        self.assertEqual(got[0].onward_route, Route(["sink", "more"]))
        self.assertEqual(got[0].return_route, Route([self.conn.address, Address.local(A)]))
        self.assertEqual(got[0].payload, b"data")
        self.assertEqual(self.t.value(), b"")


# --- real sockets ---------------------------------------------------------------------


def at(listener) -> str:
    return f"/ip4/127.0.0.1/tcp/{listener.port}"


class RelaySocketTests(TestCase):
    """
    Relays between in-process nodes over loopback sockets.
    """

    timeout = 20

    async def request_text(self, node, route, text, seconds=5.0):
        reply = await deadline(
            node.request(route, encode_string(text), timeout=seconds), seconds + 1, f"reply from {route}"
        )
        return decode_string(reply.payload)

    @async_test
    async def test_seedTopology(self):
        """
        n3 registers a relay at n2; n1 reaches n3's uppercase through
        forward_to_n3 at n2.
        """
        n2, l2 = await start_node(self, "n2", LOOPBACK)
        n3, _ = await start_node(self, "n3")
        n1, _ = await start_node(self, "n1")
        relay = await deadline(n3.create_relay(at(l2), name="n3"), 5, "relay registration")
        self.assertEqual(relay.status, UP)
        self.assertEqual(relay.remote_address, Address.local("forward_to_n3"))
        [link] = n3.tcp.connections
        self.assertEqual(relay.route, Route([link.address, Address.local("forward_to_n3")]))
        forwarder = n2.worker_at("forward_to_n3")
        self.assertIsInstance(forwarder, Forwarder)
        on_n2 = accepted_connection(n2, link.local_address)
        self.assertEqual(forwarder.forward_route[0], on_n2.address)
        self.assertEqual(len(forwarder.forward_route), 2)

        route = at(l2) + "/service/forward_to_n3/service/uppercase"
        reply = await deadline(n1.request(route, encode_string("hello"), timeout=5), 6, "reply")
        self.assertEqual(reply.payload, b"\x05HELLO")
        self.assertEqual(len(reply.return_route), 3)
        self.assertEqual(reply.return_route[-1], Address.local("uppercase"))
        self.assertEqual(reply.return_route[1], on_n2.address)
        self.assertEqual(forwarder.forwarded, 1)

    @async_test
    async def test_recoveryAfterRelayNodeRestart(self):
        """
        When the relay node stops, the relay goes Down at once; when a new
        node listens on the same port, the relay reconnects and registers
        again on its own, and n1 reaches n3 through it again.  The port is
        held by the test (L{held_port}), so nobody else takes it while no
        node listens there.
        """
        port = held_port(self)
        n2, l2 = await start_node(self, "n2", f"tcp:{port}:interface=127.0.0.1")
        self.assertEqual(l2.port, port)
        n3, _ = await start_node(self, "n3")
        n1, _ = await start_node(self, "n1")
        relay = await deadline(
            n3.create_relay(at(l2), name="n3", refresh=0.5, timeout=1.0), 5, "relay registration"
        )
        route = at(l2) + "/service/forward_to_n3/service/uppercase"
        self.assertEqual(await self.request_text(n1, route, "hello"), "HELLO")
        statuses = []
        relay.on_status(statuses.append)
        [n1_link] = n1.tcp.connections

        refused = first_log_event(
            self,
            lambda e: e.get("log_namespace") == "ockamtw.relay"
            and e.get("name") == "n3"
            and "cannot connect" in str(e.get("reason")),
        )
        started = reactor.seconds()
        await deadline(n2.stopService(), 5, "n2 stopped")
        await deadline(relay.when_status(DOWN), 3, "relay Down after n2 stopped")
        self.assertLess(reactor.seconds() - started, 3)
        await deadline(n1_link.when_closed(), 3, "n1's link to n2 closed")
        self.assertEqual(relay.status, DOWN)

        # While nothing listens, reconnecting fails and is retried.
        await deadline(refused, 3, "a refused reconnect")
        self.assertEqual(relay.status, DOWN)
        self.assertIn("cannot connect", relay.to_dict()["last_error"])

        n2b, l2b = await start_node(self, "n2b", f"tcp:{port}:interface=127.0.0.1")
        self.assertEqual(l2b.port, port)
        await deadline(relay.when_status(UP), 4, "relay Up again at the restarted node")
        self.assertEqual(statuses[:2], [DOWN, UP])
        self.assertIsInstance(n2b.worker_at("forward_to_n3"), Forwarder)
        [link] = n3.tcp.connections
        self.assertEqual(relay.route, Route([link.address, Address.local("forward_to_n3")]))
        self.assertEqual(await self.request_text(n1, route, "again"), "AGAIN")
        self.assertEqual(relay.status, UP)

    @async_test
    async def test_sameNameAfterDelete(self):
        """
        n3 deletes its relay and creates it again under the same name, on
        the same connection: the relay node lets it (before, the
        forwarder left at n2 made the name "taken" for as long as the
        connection lived), and traffic reaches n3 again.
        """
        n2, l2 = await start_node(self, "n2", LOOPBACK)
        n3, _ = await start_node(self, "n3")
        n1, _ = await start_node(self, "n1")
        await deadline(n3.create_relay(at(l2), name="n3"), 5, "relay registration")
        n3.delete_relay("n3")
        relay = await deadline(n3.create_relay(at(l2), name="n3"), 5, "the same name again")
        self.assertEqual(relay.status, UP)
        self.assertEqual(len(n3.tcp.connections), 1)
        route = at(l2) + "/service/forward_to_n3/service/uppercase"
        self.assertEqual(await self.request_text(n1, route, "hello"), "HELLO")

    @async_test
    async def test_unreachable(self):
        """
        A relay at a port where nothing listens fails with
        L{RouteUnreachable} and leaves no relay and no worker behind.
        """
        target = f"/ip4/127.0.0.1/tcp/{held_port(self)}"
        n3, _ = await start_node(self, "n3")
        before = n3.worker_addresses()
        d = n3.create_relay(target, name="n3", timeout=1.0)
        await deadline(self.assertFailure(d, RouteUnreachable), 5, "failure")
        self.assertEqual(n3.relays, {})
        self.assertEqual(n3.worker_addresses(), before)

    @async_test
    async def test_takeOverRefused(self):
        """
        n4 cannot take the name of n3's live relay at n2: its registration
        is refused at once, and the reason reaches n4 (L{RelayRefused});
        requests to forward_to_n3 keep reaching n3.
        """
        events = captureLogs(self, "ockamtw.relay")
        n2, l2 = await start_node(self, "n2", LOOPBACK)
        n3, _ = await start_node(self, "n3")
        n4, _ = await start_node(self, "n4")
        n1, _ = await start_node(self, "n1")
        n3.start_worker("who", who(b"n3"))
        n4.start_worker("who", who(b"n4"))
        r3 = await deadline(n3.create_relay(at(l2), name="n3"), 5, "n3's relay")
        forwarder = n2.worker_at("forward_to_n3")

        d4 = n4.create_relay(at(l2), name="n3", timeout=5)
        e = await deadline(self.assertFailure(d4, RelayRefused), 3, "n4's refusal")
        self.assertIn("forward_to_n3 is taken", str(e))
        self.assertNotIn("n3", n4.relays)
        self.assertIs(n2.worker_at("forward_to_n3"), forwarder)
        refused = [
            e for e in events if e.get("node") == "n2" and e["log_level"] == LogLevel.warn
        ]
        self.assertEqual(len(refused), 1, [formatEvent(e) for e in events])
        self.assertIn("forward_to_n3", formatEvent(refused[0]))

        route = at(l2) + "/service/forward_to_n3/service/who"
        for _ in range(2):
            reply = await deadline(n1.request(route, b"?", timeout=5), 6, "who")
            self.assertEqual(reply.payload, b"n3")
        self.assertEqual(r3.status, UP)

    @async_test
    async def test_rawRelayFrames(self):
        """
        A peer with no ockamtw code registers with the vector frame, gets
        the vector reply, receives relayed traffic with onward [M, rest]
        and answers it along the return route it was given.
        """
        n2, l2 = await start_node(self, "n2", LOOPBACK)
        n1, _ = await start_node(self, "n1")
        raw = await connect_raw(self, l2.port, RawFrameClient())
        raw.transport.write(REGISTRATION_FRAME)
        [reply_frame] = await deadline(raw.frames_arrived(1), 5, "registration reply")
        self.assertEqual(reply_frame, REGISTRATION_REPLY_FRAME)

        route = at(l2) + "/service/forward_to_n3/service/anything"
        d = n1.request(route, b"ping", timeout=5)
        frames = await deadline(raw.frames_arrived(2), 5, "relayed request")
        onward, ret, payload = h_decode(frames[1][2:])
        self.assertEqual(onward, ["0#" + M, "0#anything"])
        self.assertEqual(payload, b"ping")
        [n1_link] = n1.tcp.connections
        n2_to_n1 = accepted_connection(n2, n1_link.local_address)
        self.assertEqual(len(ret), 2)
        self.assertEqual(ret[0], str(n2_to_n1.address))
        self.assertRegex(ret[1], r"^0#[0-9a-f]{32}$")
        self.assertEqual(frames[1], msg_frame(["0#" + M, "0#anything"], ret, b"ping"))

        raw.transport.write(msg_frame(ret, ["0#anything"], b"pong"))
        reply = await deadline(d, 6, "pong")
        self.assertEqual(reply.payload, b"pong")
        raw_host = raw.transport.getHost()
        n2_to_raw = accepted_connection(n2, f"{raw_host.host}:{raw_host.port}")
        self.assertEqual(
            reply.return_route,
            Route([n1_link.address, n2_to_raw.address, Address.local("anything")]),
        )
        self.assertEqual(len(raw.frames), 2)
