"""
Tests for L{ockamtw.wire}: the conformance vectors, property tests that hold
the hand-written fast path equal to the construct declarations, and the error
contract (bad bytes raise L{WireError} and nothing else).

The vectors are read from C{tests/data/vectors.json} (C{tests/data/README.md}
says where it comes from; L{tests.test_data_files} checks it is unchanged).
"""

import json
import os

import construct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ockamtw import wire
from ockamtw.errors import MessageTooLarge, WireError
from ockamtw.routing import Address, MultiAddr, Route
from ockamtw.wire import (
    HEARTBEAT_FRAME,
    MAX_FRAME,
    FrameDecoder,
    PortalMessage,
    TransportMessage,
    construct_decode_message,
    construct_encode_message,
    decode_data,
    decode_route,
    decode_string,
    decode_uvarint,
    encode_data,
    encode_frame,
    encode_string,
    encode_uvarint,
    address_of,
    first_hop,
    second_hop,
    frame_parts,
    hop_body,
    payload_of,
)

from .helpers import assert_wire_error
from .strategies import addresses, messages, portal_messages

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS_COPY = os.path.join(HERE, "data", "vectors.json")

KNOWN_KINDS = frozenset(
    {
        "uvarint",
        "address",
        "route",
        "transport_message",
        "portal_message",
        "frame",
        "multiaddr_text",
    }
)

#: Modest settings so the whole module runs in a few seconds.
PROPERTY = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

_vectors_cache = []


def load_vectors(testcase):
    """
    The parsed vector file; fails (never skips) the calling test when the
    file is missing or unreadable.
    """
    if not _vectors_cache:
        if not os.path.exists(VECTORS_COPY):
            testcase.fail(f"conformance vectors missing: {VECTORS_COPY} (see tests/data/README.md)")
        try:
            with open(VECTORS_COPY, "rb") as f:
                doc = json.loads(f.read().decode("utf-8"))
        except ValueError as e:
            testcase.fail(f"conformance vectors at {VECTORS_COPY} are not valid JSON: {e}")
        _vectors_cache.append(doc)
    return _vectors_cache[0]


def vectors_of(testcase, kind):
    """
    The vectors of one kind; fails when there are none, so that a test
    looping over them cannot pass vacuously.
    """
    found = [v for v in load_vectors(testcase)["vectors"] if v["kind"] == kind]
    testcase.assertGreater(len(found), 0, f"no vectors of kind {kind!r} in {VECTORS_COPY}")
    return found


def drain(decoder):
    """
    Every whole frame buffered in C{decoder}.
    """
    out = []
    while True:
        m = decoder.next()
        if m is None:
            return out
        out.append(m)


# --- the vector file ---------------------------------------------------------


class VectorFileTests(SynchronousTestCase):
    def test_onlyKnownKinds(self):
        """
        Every vector has a kind this module tests, so none is silently ignored.
        """
        vectors = load_vectors(self)["vectors"]
        self.assertGreater(len(vectors), 0)
        kinds = {v["kind"] for v in vectors}
        self.assertEqual(kinds - KNOWN_KINDS, set(), "vector kinds without a test")
        self.assertEqual(KNOWN_KINDS - kinds, set(), "tested kinds without vectors")


# --- the vectors, by kind ----------------------------------------------------


class VectorTests(SynchronousTestCase):
    def test_uvarint(self):
        for v in vectors_of(self, "uvarint"):
            name, raw, value = v["name"], bytes.fromhex(v["hex"]), v["value"]
            self.assertEqual(encode_uvarint(value), raw, name)
            self.assertEqual(decode_uvarint(raw), (value, len(raw)), name)
            self.assertEqual(decode_uvarint(raw + b"\x7f\xff"), (value, len(raw)), name)
            self.assertEqual(wire.UVARINT.build(value), raw, name)

    def test_address(self):
        for v in vectors_of(self, "address"):
            name, raw, text = v["name"], bytes.fromhex(v["hex"]), v["text"]
            a = Address.parse(text)
            self.assertEqual(str(a), text, name)
            self.assertEqual(a.encode(), raw, name)
            type_, _, value = text.partition("#")
            self.assertEqual((a.type, a.value), (int(type_), value), name)
            decoded = decode_route(b"\x01" + raw)
            self.assertEqual(list(decoded), [a], name)
            self.assertEqual(decoded[0].encode(), raw, name)
            self.assertEqual(
                wire.ADDRESS_STRUCT.build(dict(type=a.type, value=value.encode())), raw, name
            )

    def test_route(self):
        for v in vectors_of(self, "route"):
            name, raw, text = v["name"], bytes.fromhex(v["hex"]), v["text"]
            r = Route.parse(text)
            self.assertIsInstance(r, Route, name)
            self.assertEqual(str(r), text, name)
            self.assertEqual(r.encode(), raw, name)
            decoded = decode_route(raw)
            self.assertIsInstance(decoded, Route, name)
            self.assertEqual(decoded, r, name)
            self.assertEqual(str(decoded), text, name)
            self.assertEqual(len(decoded), 0 if text == "" else len(text.split(" => ")), name)
            parsed = wire.ROUTE_STRUCT.parse(raw)
            self.assertEqual(
                [(i.type, i.value) for i in parsed],
                [(a.type, a.value.encode()) for a in r],
                name,
            )

    def test_transportMessage(self):
        for v in vectors_of(self, "transport_message"):
            name, raw = v["name"], bytes.fromhex(v["hex"])
            payload = bytes.fromhex(v["payload_hex"])
            m = TransportMessage.decode(raw)
            self.assertEqual(m.version, 1, name)
            self.assertEqual(str(m.onward_route), v["onward"], name)
            self.assertEqual(str(m.return_route), v["return"], name)
            self.assertEqual(m.onward_route, Route.parse(v["onward"]), name)
            self.assertEqual(m.return_route, Route.parse(v["return"]), name)
            self.assertEqual(m.payload, payload, name)
            self.assertIsNone(m.source, name)
            self.assertEqual(m.encode(), raw, name)
            built = TransportMessage(Route.parse(v["onward"]), Route.parse(v["return"]), payload)
            self.assertEqual(built, m, name)
            self.assertEqual(built.encode(), raw, name)
            self.assertEqual(built.encoded_size(), len(raw), name)
            self.assertEqual(built.header() + payload, raw, name)
            # the same message built from route text
            self.assertEqual(TransportMessage(v["onward"], v["return"], payload).encode(), raw, name)
            # construct agrees both ways
            self.assertEqual(construct_encode_message(m), raw, name)
            self.assertEqual(construct_encode_message(built), raw, name)
            self.assertEqual(construct_decode_message(raw), m, name)

    def test_transportMessageStringPayload(self):
        """
        The uppercase request carries the BARE string 'hello' in its payload.
        """
        v = [
            v
            for v in vectors_of(self, "transport_message")
            if v["name"] == "uppercase request 'hello'"
        ]
        self.assertEqual(len(v), 1)
        m = TransportMessage.decode(bytes.fromhex(v[0]["hex"]))
        self.assertEqual(decode_string(m.payload), "hello")
        self.assertEqual(m.payload, encode_string("hello"))

    def test_portalMessage(self):
        names = {
            "Ping": PortalMessage.PING,
            "Pong": PortalMessage.PONG,
            "Disconnect": PortalMessage.DISCONNECT,
            "Payload": PortalMessage.PAYLOAD,
        }
        prefix_only = 0
        for v in vectors_of(self, "portal_message"):
            name, raw = v["name"], bytes.fromhex(v["hex"])
            if "prefix only" in name:
                prefix_only += 1
                self.assertEqual(PortalMessage.payload_header(49152), raw, name)
                # alone it is a truncated Payload; with its chunk it decodes
                assert_wire_error(self, PortalMessage.decode, raw, context=name)
                chunk = bytes(range(256)) * 192
                self.assertEqual(len(chunk), 49152)
                m = PortalMessage.decode(raw + chunk)
                self.assertEqual((m.tag, m.data), (PortalMessage.PAYLOAD, chunk), name)
                self.assertEqual(PortalMessage.payload(chunk).encode(), raw + chunk, name)
                continue
            tag = names[name.split()[0]]
            m = PortalMessage.decode(raw)
            self.assertEqual(m.tag, tag, name)
            self.assertEqual(m.name, name.split()[0], name)
            if tag == PortalMessage.PAYLOAD:
                expected_data = bytes.fromhex(name.split()[1])
                self.assertEqual(m.data, expected_data, name)
                self.assertEqual(PortalMessage.payload(expected_data), m, name)
            else:
                self.assertEqual(PortalMessage(tag), m, name)
            self.assertEqual(m.encode(), raw, name)
            parsed = wire.PORTAL_MESSAGE_STRUCT.parse(raw)
            self.assertEqual(str(parsed.tag), m.name, name)
        self.assertEqual(prefix_only, 1, "the 'prefix only' portal vector was not found")

    def test_frame(self):
        for v in vectors_of(self, "frame"):
            name, raw = v["name"], bytes.fromhex(v["hex"])
            d = FrameDecoder()
            d.feed(raw)
            m = d.next()
            self.assertIsInstance(m, TransportMessage, name)
            self.assertIsNone(d.next(), name)
            self.assertEqual(d.buffered(), 0, name)
            self.assertEqual(m, TransportMessage.decode(raw[2:]), name)
            self.assertEqual(int.from_bytes(raw[:2], "big"), len(raw) - 2, name)
            self.assertEqual(encode_frame(m), raw, name)
            self.assertEqual(b"".join(frame_parts(m)), raw, name)
            self.assertEqual(frame_parts(m)[1], m.payload, name)
            # byte by byte, the message appears only with the last byte
            d = FrameDecoder()
            for i in range(len(raw)):
                d.feed(raw[i : i + 1])
                got = d.next()
                if i < len(raw) - 1:
                    self.assertIsNone(got, f"{name}: message after {i + 1} bytes")
                else:
                    self.assertEqual(got, m, name)
            self.assertEqual(wire.FRAME_STRUCT.build(wire.FRAME_STRUCT.parse(raw)), raw, name)

    def test_heartbeatFrame(self):
        v = [v for v in vectors_of(self, "frame") if v["name"] == "heartbeat frame"]
        self.assertEqual(len(v), 1)
        d = FrameDecoder()
        d.feed(bytes.fromhex(v[0]["hex"]))
        m = d.next()
        self.assertEqual((tuple(m.onward_route), tuple(m.return_route), m.payload), ((), (), b""))

    def test_multiaddrText(self):
        for v in vectors_of(self, "multiaddr_text"):
            name, text = v["name"], v["text"]
            ma = MultiAddr.parse(text)
            self.assertEqual(str(ma), text, name)
            self.assertEqual(MultiAddr.parse(str(ma)), ma, name)
            self.assertEqual("".join(f"/{p}/{x}" for p, x in ma.components), text, name)


# --- properties: fast path == construct declarations ------------------------


class UvarintPropertyTests(SynchronousTestCase):
    @PROPERTY
    @given(st.integers(0, 2**64 - 1), st.binary(max_size=4))
    def test_roundTrip(self, n, trailing):
        raw = encode_uvarint(n)
        self.assertEqual(raw, wire.UVARINT.build(n))
        self.assertEqual(decode_uvarint(raw), (n, len(raw)))
        self.assertEqual(decode_uvarint(raw + trailing), (n, len(raw)))
        self.assertLessEqual(len(raw), 10)
        self.assertEqual(len(raw), max(1, (n.bit_length() + 6) // 7))

    def test_boundaries(self):
        for n, raw in [
            (0, b"\x00"),
            (127, b"\x7f"),
            (128, b"\x80\x01"),
            (2**14 - 1, b"\xff\x7f"),
            (2**14, b"\x80\x80\x01"),
            (2**64 - 1, b"\xff" * 9 + b"\x01"),
        ]:
            self.assertEqual(encode_uvarint(n), raw, n)
            self.assertEqual(decode_uvarint(raw), (n, len(raw)), n)

    @PROPERTY
    @given(st.integers(0, 2**63), st.integers(1, 3))
    def test_overlongRefused(self, n, extra):
        """
        A uvarint with zero groups added after its last one is refused:
        every number has one encoding.
        """
        raw = encode_uvarint(n)
        padded = raw[:-1] + bytes((raw[-1] | 0x80,)) + b"\x80" * (extra - 1) + b"\x00"
        if len(padded) > 10:
            return
        with self.assertRaises(WireError) as e:
            decode_uvarint(padded)
        self.assertIn("not minimally encoded", str(e.exception))
        self.assertRaises(construct.ConstructError, wire.UVARINT.parse, padded)

    @PROPERTY
    @given(st.binary(min_size=1, max_size=12))
    def test_declarationAgrees(self, raw):
        """
        The declaration (L{wire.UVARINT}, what every codec module's
        declarations use) and the fast reader take and refuse the same
        bytes: shortest forms below 2**64 only.
        """
        try:
            n, used = decode_uvarint(raw)
        except WireError:
            self.assertRaises(construct.ConstructError, wire.UVARINT.parse, raw)
            return
        self.assertEqual(wire.UVARINT.parse(raw[:used]), n)

    def test_declarationRefuses(self):
        for raw in (b"\x80\x00", b"\xff" * 9 + b"\x02", b"\xff" * 10 + b"\x01", b"\x80"):
            self.assertRaises(construct.ConstructError, wire.UVARINT.parse, raw)
            self.assertRaises(WireError, decode_uvarint, raw)

    def test_overlongLengthInMessageRefused(self):
        """
        A message whose payload length or an address length is written in
        more bytes than it needs is refused, by decoding and by the relay's
        in-place hop alike (which would otherwise pass the odd bytes on).
        """
        m = TransportMessage(["0#a", "0#b"], ["0#c"], b"")
        raw = m.encode()
        self.assertEqual(raw[-1:], b"\x00")
        long_payload_len = raw[:-1] + b"\x80\x00"
        i = raw.index(b"\x01b")
        long_address_len = raw[:i] + b"\x81\x00" + raw[i + 1 :]
        for bad in (long_payload_len, long_address_len):
            with self.assertRaises(WireError):
                TransportMessage.decode(bad)
            self.assertIsNone(_hop_in_place(bad, Address.local("me")))
            self.assertIsNone(_hop_by_decoding(bad, Address.local("me")))


class DataAndStringPropertyTests(SynchronousTestCase):
    @PROPERTY
    @given(st.binary(max_size=300))
    def test_dataRoundTrip(self, b):
        raw = encode_data(b)
        self.assertEqual(raw, wire.DATA_STRUCT.build(b))
        self.assertEqual(decode_data(raw + b"tail"), (b, len(raw)))

    @PROPERTY
    @given(st.text(max_size=150))
    def test_stringRoundTrip(self, s):
        raw = encode_string(s)
        self.assertEqual(raw, wire.STRING_STRUCT.build(s))
        self.assertEqual(decode_string(raw), s)
        self.assertEqual(wire.STRING_STRUCT.parse(raw), s)

    def test_stringKnownBytes(self):
        self.assertEqual(encode_string("hello"), bytes.fromhex("0568656c6c6f"))
        self.assertEqual(encode_string(""), b"\x00")
        self.assertEqual(encode_string("\u00e9"), b"\x02\xc3\xa9")
        self.assertEqual(decode_string(b"\x02\xc3\xa9"), "\u00e9")


class AddressPropertyTests(SynchronousTestCase):
    def test_bytesValueAccepted(self):
        a = Address(7, b"\xff\x00a")
        self.assertEqual(a.value, "\udcff\x00a")
        self.assertEqual(a.encode(), b"\x07\x03\xff\x00a")

    @PROPERTY
    @given(st.integers(0, 255), st.binary(max_size=200))
    def test_addressEncoding(self, t, raw):
        a = Address(t, raw)
        self.assertEqual(a.value, raw.decode("utf-8", "surrogateescape"))
        enc = a.encode()
        self.assertEqual(enc, bytes((t,)) + encode_uvarint(len(raw)) + raw)
        self.assertEqual(enc, wire.ADDRESS_STRUCT.build(dict(type=t, value=raw)))

    @PROPERTY
    @given(st.lists(addresses, max_size=5), st.binary(max_size=3))
    def test_routeRoundTrip(self, addrs, trailing):
        r = Route(addrs)
        raw = r.encode()
        self.assertEqual(
            raw,
            wire.ROUTE_STRUCT.build(
                [dict(type=a.type, value=a.value.encode("utf-8", "surrogateescape")) for a in addrs]
            ),
        )
        decoded = decode_route(raw + trailing)
        self.assertIsInstance(decoded, Route)
        self.assertEqual(decoded, r)
        self.assertEqual(list(decoded), addrs)
        self.assertEqual([hash(a) for a in decoded], [hash(a) for a in addrs])
        self.assertEqual(decoded.encode(), raw)
        # encode() of addresses built by hand (not cached from the wire)
        self.assertEqual(Route([Address(a.type, a.value) for a in decoded]).encode(), raw)


class TransportMessagePropertyTests(SynchronousTestCase):
    @PROPERTY
    @given(messages, st.binary(max_size=4))
    def test_roundTrip(self, m, trailing):
        raw = m.encode()
        self.assertEqual(raw, construct_encode_message(m))
        self.assertEqual(m.encoded_size(), len(raw))
        self.assertEqual(m.header() + m.payload, raw)
        fast = TransportMessage.decode(raw + trailing)
        slow = construct_decode_message(raw + trailing)
        self.assertEqual(fast, m)
        self.assertEqual(slow, m)
        self.assertEqual(fast, slow)
        self.assertEqual(fast.encode(), raw)
        self.assertEqual(TransportMessage.decode(memoryview(raw)), m)
        self.assertEqual(TransportMessage.decode(bytearray(raw)), m)

    @PROPERTY
    @given(messages)
    def test_equality(self, m):
        other = TransportMessage(m.onward_route, m.return_route, m.payload + b"x")
        self.assertNotEqual(m, other)
        self.assertEqual(m, m.with_routes(m.onward_route, m.return_route))


def _mutated(m: TransportMessage, data) -> bytes:
    """
    C{m}'s encoding with one byte, drawn from C{data}, set to a drawn value.
    """
    raw = bytearray(m.encode())
    i = data.draw(st.integers(0, len(raw) - 1), label="index")
    raw[i] = data.draw(st.integers(0, 255), label="byte")
    return bytes(raw)


def _assert_fast_agrees(test, raw: bytes):
    """
    C{raw} decodes, or raises WireError, alike by the fast decoder and by
    the construct declaration; except that only the fast one refuses a
    uvarint not in its shortest form (construct's VarInt takes any).
    """
    try:
        fast = TransportMessage.decode(raw)
    except WireError as e:
        if "not minimally encoded" in str(e):
            return
        fast = None
    try:
        slow = construct_decode_message(raw)
    except WireError:
        slow = None
    test.assertEqual(fast, slow)


def _hop_by_decoding(raw: bytes, me: Address):
    """
    What a node that decodes writes on for C{raw} (onward route stepped,
    C{me} first on the return route), or None when it does not decode or
    has no onward address.
    """
    try:
        m = TransportMessage.decode(raw)
    except WireError:
        return None
    if not m.onward_route:
        return None
    return TransportMessage(m.onward_route.step(), m.return_route.prepend(me), m.payload).encode()


def _hop_in_place(raw: bytes, me: Address, view=bytes):
    """
    The same by L{first_hop} and L{hop_body} (None where first_hop declines
    or hop_body refuses); C{view} wraps the buffer (bytes or bytearray, as
    the frame decoder gives them), inside other bytes.
    """
    buf = view(b"ab" + raw + b"cd")
    start, end = 2, 2 + len(raw)
    first = first_hop(buf, start, end)
    if first is None:
        return None
    try:
        parts = hop_body(buf, start, end, first, me.encode())
    except WireError:
        return None
    return b"".join(bytes(p) for p in parts)


class HopBodyPropertyTests(SynchronousTestCase):
    """
    A relay hop that rewrites the routes in place (L{first_hop},
    L{hop_body}) writes the very bytes that decoding, changing the routes
    and encoding again would write, and refuses what decoding refuses.
    """

    @PROPERTY
    @given(messages, addresses, st.binary(max_size=4))
    def test_sameAsDecoding(self, m, me, trailing):
        raw = m.encode() + trailing
        expected = _hop_by_decoding(raw, me)
        for view in (bytes, bytearray):
            got = _hop_in_place(raw, me, view)
            if got is not None:
                self.assertEqual(got, expected)
            else:
                # Declined only for no onward address or a long first one.
                self.assertTrue(
                    not m.onward_route or len(m.onward_route[0].encode()) > 129 or len(m.onward_route) >= 0x80
                )
        if m.onward_route and len(m.onward_route[0].encode()) <= 129:
            self.assertEqual(first_hop(raw, 0, len(raw)), m.onward_route[0].encode())
            self.assertEqual(address_of(first_hop(raw, 0, len(raw))), m.onward_route[0])

    @PROPERTY
    @given(messages, st.binary(max_size=4))
    def test_payloadWithoutDecoding(self, m, trailing):
        raw = m.encode() + trailing
        for view in (bytes, bytearray):
            buf = view(b"ab" + raw + b"cd")
            if first_hop(buf, 2, 2 + len(raw)) is not None:
                self.assertEqual(bytes(payload_of(buf, 2, 2 + len(raw))), m.payload)

    @PROPERTY
    @given(messages, st.data())
    def test_payloadOfMutatedRefusedAsDecoding(self, m, data):
        raw = _mutated(m, data)
        if first_hop(raw, 0, len(raw)) is None:
            return
        try:
            got = bytes(payload_of(raw, 0, len(raw)))
        except WireError:
            got = None
        try:
            expected = TransportMessage.decode(raw).payload
        except WireError:
            expected = None
        self.assertEqual(got, expected)

    def test_largePayloadIsAView(self):
        m = TransportMessage(["0#a", "0#b"], ["0#c"], b"x" * 10000)
        raw = m.encode()
        parts = hop_body(raw, 0, len(raw), first_hop(raw, 0, len(raw)), Address.local("me").encode())
        self.assertIsInstance(parts[1], memoryview)
        self.assertEqual(
            b"".join(bytes(p) for p in parts),
            TransportMessage(["0#b"], ["0#me", "0#c"], b"x" * 10000).encode(),
        )

    def test_heartbeatHasNoHop(self):
        self.assertIsNone(first_hop(HEARTBEAT_FRAME, 2, len(HEARTBEAT_FRAME)))
        self.assertIsNone(second_hop(HEARTBEAT_FRAME, 2, len(HEARTBEAT_FRAME)))

    @PROPERTY
    @given(messages, st.binary(max_size=4))
    def test_secondHop(self, m, trailing):
        """
        L{second_hop} reads the onward route's second address (a secure
        channel's message past the channel's own address), or declines.
        """
        raw = m.encode() + trailing
        for view in (bytes, bytearray):
            buf = view(b"ab" + raw + b"cd")
            got = second_hop(buf, 2, 2 + len(raw))
            if got is None:
                onward = m.onward_route
                self.assertTrue(
                    len(onward) < 2
                    or len(onward) >= 0x80
                    or len(onward[0].value.encode("utf-8", "surrogateescape")) >= 0x80
                    or len(onward[1].value.encode("utf-8", "surrogateescape")) >= 0x80
                )
            else:
                self.assertIs(got.__class__, bytes)
                self.assertEqual(got, m.onward_route[1].encode())
                first = m.onward_route[0].encode()
                self.assertEqual(second_hop(buf, 2, 2 + len(raw), first), got)
                self.assertIsNone(second_hop(buf, 2, 2 + len(raw), first + b"x"))
                other = b"\x00\x03zz!"
                if other != first:
                    self.assertIsNone(second_hop(buf, 2, 2 + len(raw), other))

    @PROPERTY
    @given(messages, st.data())
    def test_secondHopOfMutatedWithinBounds(self, m, data):
        """
        On any bytes, L{second_hop} returns C{None} or whole address bytes
        from inside the message, never reading past its end.
        """
        raw = _mutated(m, data)
        got = second_hop(raw + b"\x05\x7f", 0, len(raw))
        if got is not None:
            self.assertIn(got, raw)
            self.assertEqual(len(got), 2 + got[1])

    @PROPERTY
    @given(messages, st.data())
    def test_mutatedRefusedAsDecoding(self, m, data):
        raw = _mutated(m, data)
        me = Address.local("me")
        got = _hop_in_place(raw, me)
        if got is not None:
            self.assertEqual(got, _hop_by_decoding(raw, me))


class FramePropertyTests(SynchronousTestCase):
    @PROPERTY
    @given(st.lists(messages, min_size=1, max_size=5), st.data())
    def test_splitStream(self, msgs, data):
        stream = b"".join(encode_frame(m) for m in msgs)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8), label="cuts"))
        bounds = [0] + cuts + [len(stream)]
        d = FrameDecoder()
        got = []
        for start, end in zip(bounds, bounds[1:]):
            d.feed(stream[start:end])
            got.extend(drain(d))
        self.assertEqual(got, msgs)
        self.assertEqual(d.buffered(), 0)
        self.assertIsNone(d.next())

    @PROPERTY
    @given(messages)
    def test_frameMatchesConstruct(self, m):
        frame = encode_frame(m)
        self.assertEqual(frame[:2], len(m.encode()).to_bytes(2, "big"))
        self.assertEqual(frame, wire.FRAME_STRUCT.build(wire.TRANSPORT_MESSAGE_STRUCT.parse(m.encode())))


class PortalMessagePropertyTests(SynchronousTestCase):
    @PROPERTY
    @given(portal_messages)
    def test_roundTrip(self, m):
        raw = m.encode()
        data = m.data if m.tag == PortalMessage.PAYLOAD else None
        self.assertEqual(raw, wire.PORTAL_MESSAGE_STRUCT.build(dict(tag=m.name, data=data)))
        self.assertEqual(PortalMessage.decode(raw), m)
        parsed = wire.PORTAL_MESSAGE_STRUCT.parse(raw)
        self.assertEqual(str(parsed.tag), m.name)
        self.assertEqual(parsed.data, data)
        if m.tag == PortalMessage.PAYLOAD:
            self.assertEqual(raw, PortalMessage.payload_header(len(m.data)) + m.data)

    def test_unknownTag(self):
        assert_wire_error(self, PortalMessage.decode, b"\x04", context="tag 4")
        assert_wire_error(self, PortalMessage.decode, b"", context="empty")
        assert_wire_error(self, PortalMessage.decode, b"\x03", context="Payload without length")
        assert_wire_error(self, PortalMessage.decode, b"\x03\x02\x05", context="short Payload")
        assert_wire_error(self, PortalMessage, 9, context="PortalMessage(9)")


# --- errors -------------------------------------------------------------------


class ErrorTests(SynchronousTestCase):
    def test_strictPrefixes(self):
        """
        Every strict prefix of every transport_message vector raises WireError.
        """
        checked = 0
        for v in vectors_of(self, "transport_message"):
            raw = bytes.fromhex(v["hex"])
            for i in range(len(raw)):
                context = f"{v['name']}: prefix of {i} bytes {raw[:i].hex()}"
                assert_wire_error(self, TransportMessage.decode, raw[:i], context=context)
                assert_wire_error(self, construct_decode_message, raw[:i], context=context)
                checked += 1
        self.assertGreater(checked, 100)

    def test_strictPrefixesOfFramesWait(self):
        """
        A FrameDecoder given part of a frame waits for the rest.
        """
        for v in vectors_of(self, "frame"):
            raw = bytes.fromhex(v["hex"])
            for i in range(len(raw)):
                d = FrameDecoder()
                d.feed(raw[:i])
                self.assertIsNone(d.next(), f"{v['name']}: prefix of {i} bytes")
                self.assertEqual(d.buffered(), i)

    @PROPERTY
    @given(
        st.one_of(
            st.binary(max_size=80),
            st.binary(max_size=80).map(lambda b: b"\x01" + b),
        )
    )
    def test_garbageMessage(self, raw):
        """
        Random bytes decode or raise WireError, and the fast path and the
        construct declaration agree on which.
        """
        _assert_fast_agrees(self, raw)

    @PROPERTY
    @given(messages, st.data())
    def test_mutatedMessage(self, m, data):
        """
        A valid encoding with one byte changed decodes or raises WireError,
        in agreement with construct.
        """
        _assert_fast_agrees(self, _mutated(m, data))

    @PROPERTY
    @given(st.binary(max_size=64))
    def test_garbageOthers(self, raw):
        for fn in (decode_route, decode_string, decode_uvarint, decode_data, PortalMessage.decode):
            try:
                fn(raw)
            except WireError:
                pass
        d = FrameDecoder()
        d.feed(raw)
        for _ in range(len(raw) + 1):
            try:
                if d.next() is None:
                    break
            except WireError:
                pass
        else:
            self.fail("FrameDecoder did not consume its input")
        self.assertLess(d.buffered(), len(raw) + 1)

    def test_version(self):
        for version in (0, 2, 255):
            raw = bytes((version,)) + bytes.fromhex("000000")
            assert_wire_error(self, TransportMessage.decode, raw, context=f"version {version}")
            assert_wire_error(self, construct_decode_message, raw, context=f"version {version}")
        m = TransportMessage("0#echo", "0#me", b"x", version=2)
        assert_wire_error(self, m.encode, context="encode version 2")
        assert_wire_error(self, frame_parts, m, context="frame version 2")
        self.assertEqual(TransportMessage.decode(b"\x01\x00\x00\x00").version, 1)

    def test_trailingBytesIgnored(self):
        for v in vectors_of(self, "transport_message"):
            raw = bytes.fromhex(v["hex"])
            m = TransportMessage.decode(raw + b"\xff\x00trailing")
            self.assertEqual(m, TransportMessage.decode(raw), v["name"])
            self.assertEqual(m.encode(), raw, v["name"])
            self.assertEqual(m.payload, bytes.fromhex(v["payload_hex"]), v["name"])

    def _message_of_size(self, size):
        onward, ret = Route.parse("0#echo"), Route.parse("0#" + "a" * 32)
        for n in range(size, size - 200, -1):
            m = TransportMessage(onward, ret, b"\xab" * n)
            if len(m.header()) + n == size:
                return m
        self.fail(f"no message of exactly {size} bytes")

    def test_frameSizeLimit(self):
        largest = self._message_of_size(MAX_FRAME)
        self.assertEqual(MAX_FRAME, 65535)
        self.assertEqual(largest.encoded_size(), 65535)
        frame = encode_frame(largest)
        self.assertEqual(len(frame), 65537)
        self.assertEqual(frame[:2], b"\xff\xff")
        self.assertEqual(frame[2:], largest.encode())
        d = FrameDecoder()
        d.feed(frame)
        self.assertEqual(d.next(), largest)

        too_large = self._message_of_size(MAX_FRAME + 1)
        self.assertEqual(too_large.encoded_size(), 65536)
        self.assertRaises(MessageTooLarge, frame_parts, too_large)
        self.assertRaises(MessageTooLarge, encode_frame, too_large)
        huge = TransportMessage("0#echo", "", b"\x00" * 100000)
        self.assertRaises(MessageTooLarge, encode_frame, huge)
        # the message itself still encodes; only framing refuses it
        self.assertEqual(len(too_large.encode()), 65536)

    def test_frameDecoderStaysInSync(self):
        good = TransportMessage("0#echo", "0#me", b"ping")
        bad_version = b"\x00\x04\x02\x00\x00\x00"
        bad_body = b"\x00\x03\x01\x05\xff"
        empty = b"\x00\x00"
        for bad in (bad_version, bad_body, empty):
            d = FrameDecoder()
            d.feed(bad + encode_frame(good) + bad + encode_frame(good))
            assert_wire_error(self, d.next, context=f"bad frame {bad.hex()}")
            self.assertEqual(d.next(), good, bad.hex())
            assert_wire_error(self, d.next, context=f"second bad frame {bad.hex()}")
            self.assertEqual(d.next(), good, bad.hex())
            self.assertIsNone(d.next())
            self.assertEqual(d.buffered(), 0)

    def test_decodeString(self):
        assert_wire_error(self, decode_string, encode_string("hi") + b"x", context="trailing byte")
        assert_wire_error(self, decode_string, b"\x02\xff\xfe", context="not UTF-8")
        assert_wire_error(self, decode_string, b"\x05ab", context="truncated")
        assert_wire_error(self, decode_string, b"", context="empty")
        assert_wire_error(self, encode_string, b"bytes", context="encode bytes")
        self.assertEqual(decode_string(b"\x00"), "")

    def test_uvarintErrors(self):
        assert_wire_error(self, decode_uvarint, b"\x80" * 10 + b"\x00", context="11 bytes")
        assert_wire_error(self, decode_uvarint, b"\xff" * 11, context="11 bytes of 0xff")
        assert_wire_error(self, decode_uvarint, b"\xff" * 20 + b"\x01", context="21 bytes")
        assert_wire_error(self, decode_uvarint, b"\x80", context="truncated")
        assert_wire_error(self, decode_uvarint, b"", context="empty")
        # ten bytes are allowed
        self.assertEqual(decode_uvarint(b"\x80" * 9 + b"\x01"), (2**63, 10))
        for bad in (-1, 2**64, 1.5, "1", None):
            assert_wire_error(self, encode_uvarint, bad, context=f"encode {bad!r}")
        # an over-long length inside a message
        raw = b"\x01" + b"\x80" * 10 + b"\x01"
        assert_wire_error(self, TransportMessage.decode, raw, context="route count of 11 bytes")

    def test_uvarintAbove64Bits(self):
        """
        A 10-byte uvarint whose value needs more than 64 bits is refused, as
        a Rust (serde_bare u64) decoder does and as encode_uvarint refuses
        to produce it (decode_uvarint(ff*9 + 02) once returned
        (2**64 + 2**63 - 1, 10)).
        """
        assert_wire_error(
            self, decode_uvarint, b"\xff" * 9 + b"\x02", context="10-byte uvarint of 2**64 + 2**63 - 1"
        )
        assert_wire_error(self, decode_uvarint, b"\x80" * 9 + b"\x7f", context="10-byte uvarint of 127 << 63")

    def test_routeErrors(self):
        assert_wire_error(self, decode_route, b"\x02\x00\x01a", context="second address missing")
        assert_wire_error(self, decode_route, b"\x01\x00\x05ab", context="value truncated")
        assert_wire_error(self, decode_route, b"\x05", context="count without addresses")
        assert_wire_error(self, decode_route, b"\xff\xff\xff\x0f", context="huge count")

    def test_payloadMustBeBytes(self):
        assert_wire_error(self, TransportMessage, "0#echo", "", "text", context="str payload")
        m = TransportMessage("0#echo", "", bytearray(b"ab"))
        self.assertEqual(m.payload, b"ab")
        self.assertIs(type(m.payload), bytes)


# --- the package's public names ---------------------------------------------


class PublicNamesTests(SynchronousTestCase):
    def test_importable(self):
        import ockamtw
        from ockamtw import errors, routing

        expected = {
            "Address": routing.Address,
            "Route": routing.Route,
            "MultiAddr": routing.MultiAddr,
            "TransportMessage": wire.TransportMessage,
            "PortalMessage": wire.PortalMessage,
            "WireError": errors.WireError,
            "encode_string": wire.encode_string,
            "decode_string": wire.decode_string,
        }
        for name, obj in expected.items():
            self.assertIs(getattr(ockamtw, name, None), obj, name)
            self.assertIn(name, ockamtw.__all__, name)
        ns = {}
        exec(
            "from ockamtw import Address, Route, MultiAddr, TransportMessage, "
            "PortalMessage, WireError, encode_string, decode_string",
            ns,
        )
        self.assertIs(ns["Route"], routing.Route)
        self.assertTrue(issubclass(ockamtw.WireError, ValueError))
