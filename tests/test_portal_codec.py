"""
The Eof PortalMessage (tag 05, ockamtw's half-close) and the Credit codec
(tag 04): the fast paths in L{ockamtw.wire} equal their construct
declarations.
"""

from __future__ import annotations

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from ockamtw import wire


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
