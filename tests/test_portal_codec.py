"""
The Eof PortalMessage (tag 05, ockamtw's half-close) and the Credit codec
(tag 04): the fast paths in L{ockamtw.wire} equal their construct
declarations.
"""

from __future__ import annotations

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ockamtw import wire
from ockamtw.wire import TransportMessage

from .strategies import routes


class EofCodecTests(SynchronousTestCase):
    """
    Eof (tag 05, nothing after it), declared with construct, and the Credit
    codec: the fast path equals the declaration.
    """

    def test_bytes(self):
        self.assertEqual(wire.EOF_TAG, 5)
        self.assertEqual(wire.encode_eof(), b"\x05")
        self.assertEqual(wire.PORTAL_EOF_STRUCT.build({}), b"\x05")
        wire.decode_eof(b"\x05")
        for bad in (b"", b"\x04", b"\x05\x00", b"\x02", b"\x03\x00"):
            self.assertRaises(wire.WireError, wire.decode_eof, bad)

    @given(st.binary(max_size=4))
    def test_eof_fast_path_equals_construct(self, data):
        try:
            wire.PORTAL_EOF_STRUCT.parse(data)
            declared = True
        except Exception:
            declared = False
        try:
            wire.decode_eof(data)
            fast = True
        except wire.WireError:
            fast = False
        self.assertEqual(fast, declared, data)

    @given(st.integers(0, 2**64 - 1))
    def test_credit_fast_path_equals_construct(self, limit):
        data = wire.encode_credit(limit)
        self.assertEqual(data, wire.PORTAL_CREDIT_STRUCT.build({"limit": limit}))
        self.assertEqual(wire.PORTAL_CREDIT_STRUCT.parse(data).limit, limit)
        self.assertEqual(wire.decode_credit(data), limit)

    @given(st.binary(max_size=12))
    def test_credit_decoded_as_declared(self, data):
        try:
            limit = wire.decode_credit(data)
        except wire.WireError:
            return
        self.assertEqual(wire.PORTAL_CREDIT_STRUCT.parse(data).limit, limit)


class RefuseCodecTests(SynchronousTestCase):
    """
    Refuse (tag 06, then a BARE string), sent only to ockamtw inlets: the
    fast path equals the construct declaration.
    """

    def test_bytes(self):
        self.assertEqual(wire.encode_refuse("no"), b"\x06\x02no")
        self.assertEqual(wire.decode_refuse(b"\x06\x02no"), "no")
        self.assertEqual(len(wire.decode_refuse(wire.encode_refuse("x" * 1000))), wire.MAX_REASON)
        for bad in (b"", b"\x06", b"\x06\x03no", b"\x06\x02no!", b"\x02", b"\x06\x01\xff"):
            self.assertRaises(wire.WireError, wire.decode_refuse, bad)

    @given(st.text(max_size=wire.MAX_REASON))
    def test_fast_path_equals_construct(self, reason):
        data = wire.encode_refuse(reason)
        self.assertEqual(data, wire.PORTAL_REFUSE_STRUCT.build({"reason": reason}))
        self.assertEqual(wire.decode_refuse(data), reason)

    @given(st.binary(max_size=12))
    def test_decoded_as_declared(self, data):
        try:
            reason = wire.decode_refuse(data)
        except wire.WireError:
            self.assertRaises(Exception, wire.PORTAL_REFUSE_STRUCT.parse, data)
            return
        self.assertEqual(wire.PORTAL_REFUSE_STRUCT.parse(data).reason, reason)


class FastPathTests(SynchronousTestCase):
    """
    The codec the fast paths use (headers written before a payload,
    PortalMessage Payload) equals the construct declarations.
    """

    @given(routes, routes, st.binary(max_size=300), st.integers(0, 3))
    def test_headers(self, onward, ret, payload, split):
        m = TransportMessage(onward, ret, payload)
        expected = wire.construct_encode_message(m)
        self.assertEqual(wire.routes_head(onward, ret) + wire.uvarint(len(payload)) + payload, expected)
        split = min(split, len(onward))
        head = wire.encode_header(
            len(onward), [b"".join(a.encode() for a in onward[:split]), *[a.encode() for a in onward[split:]]], ret, len(payload)
        )
        self.assertEqual(head + payload, expected)
        self.assertEqual(head, m.header())

    @given(routes, routes, st.binary(max_size=300), st.integers(0, 2))
    def test_frame_from_head_and_body(self, onward, ret, payload, cut):
        """
        The frame the connections' fast path writes (L{wire.body_frame_parts})
        is the declared frame; one over the limit is refused.
        """
        m = TransportMessage(onward, ret, payload)
        body = wire.construct_encode_message(m)
        cut = min(cut, len(body))
        data = body[cut:]
        parts = wire.body_frame_parts(body[:cut], data)
        self.assertEqual(b"".join(parts), len(body).to_bytes(2, "big") + body)
        self.assertEqual(b"".join(parts), wire.encode_frame(m))
        self.assertIs(parts[1], data)  # not copied
        self.assertRaises(wire.MessageTooLarge, wire.body_frame_parts, body, b"x" * (wire.MAX_FRAME + 1 - len(body)))

    def test_heartbeat(self):
        """
        The heartbeat frame is the declared frame of an empty message.
        """
        empty = TransportMessage(wire.Route(()), wire.Route(()), b"")
        self.assertEqual(wire.HEARTBEAT_FRAME, wire.encode_frame(empty))
        self.assertEqual(wire.HEARTBEAT_FRAME, wire.construct_call(lambda: wire.FRAME_STRUCT.build(
            wire.FRAME_STRUCT.parse(wire.HEARTBEAT_FRAME)), "frame"))

    @given(st.binary(max_size=70000))
    def test_payload(self, data):
        encoded = wire.encode_payload(data)
        self.assertEqual(encoded, wire.PORTAL_MESSAGE_STRUCT.build({"tag": "Payload", "data": data}))
        self.assertEqual(wire.payload_prefix(len(data)) + data, encoded)
        self.assertEqual(wire.decode_payload(encoded), data)

    @given(st.binary(max_size=20))
    def test_payload_decoded_as_declared(self, raw):
        data = b"\x03" + raw
        try:
            got = wire.decode_payload(data)
        except wire.WireError:
            self.assertRaises(Exception, wire.PORTAL_MESSAGE_STRUCT.parse, data)
            return
        self.assertEqual(wire.PORTAL_MESSAGE_STRUCT.parse(data).data, got)

    def test_overlong_length_refused_by_both(self):
        # What hypothesis found: a Payload whose data length is written in
        # two bytes (80 00) where one (00) is its shortest form.
        self.assertRaises(wire.WireError, wire.decode_payload, b"\x03\x80\x00")
        self.assertRaises(Exception, wire.PORTAL_MESSAGE_STRUCT.parse, b"\x03\x80\x00")

    def test_control_messages(self):
        for name, encoded in (("Ping", wire.PING), ("Pong", wire.PONG), ("Disconnect", wire.DISCONNECT)):
            self.assertEqual(wire.PORTAL_MESSAGE_STRUCT.build({"tag": name, "data": None}), encoded)
