"""
The Ockam 0.83 wire format: BARE values, TransportMessage, PortalMessage and
TCP frames (see docs/protocol.md).

The format is declared once with construct (the C{*_STRUCT} names below).
The data path uses hand-written encoders and decoders for speed; the test
suite holds them equal to the construct declarations with property tests.

Bad bytes raise L{WireError}, never C{IndexError} or a construct error.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import construct as c

from .errors import MessageTooLarge, WireError
from .routing import Address, Route, uvarint

__all__ = [
    "VERSION",
    "MAX_FRAME",
    "TransportMessage",
    "PortalMessage",
    "encode_credit",
    "decode_credit",
    "encode_eof",
    "decode_eof",
    "encode_uvarint",
    "decode_uvarint",
    "encode_data",
    "decode_data",
    "encode_string",
    "decode_string",
    "encode_frame",
    "FrameDecoder",
]

#: The only TransportMessage version of Ockam 0.83.
VERSION = 1
#: The largest TransportMessage one TCP frame can carry.
MAX_FRAME = 0xFFFF
#: The longest uvarint we accept: 64 bits take 10 bytes.
_MAX_UVARINT_BYTES = 10

# --- the declarations -------------------------------------------------------

class _BareUvarint(type(c.VarInt)):
    """
    BARE's uvarint (unsigned LEB128) as Ockam 0.83 writes it: the shortest
    form of a number below 2**64, at most 10 bytes.  Any other form is
    refused, as the fast readers (L{_read_uvarint}) refuse it, so that the
    declarations and the fast paths agree on every input.
    """

    def _parse(self, stream, context, path):
        result = shift = 0
        for count in range(_MAX_UVARINT_BYTES):
            b = c.stream_read(stream, 1, path)[0]
            result |= (b & 0x7F) << shift
            if b < 0x80:
                if count and not b:
                    raise c.IntegerError(f"uvarint {result} is not minimally encoded", path=path)
                if result >> 64:
                    raise c.IntegerError("uvarint above 2**64-1", path=path)
                return result
            shift += 7
        raise c.IntegerError("uvarint longer than 10 bytes", path=path)


#: BARE uvarint (unsigned LEB128, shortest form, below 2**64).
UVARINT = _BareUvarint()
#: BARE data: uvarint length, then the bytes.
DATA_STRUCT = c.Prefixed(UVARINT, c.GreedyBytes)
#: BARE string: uvarint length, then UTF-8.
STRING_STRUCT = c.PascalString(UVARINT, "utf8")
ADDRESS_STRUCT = c.Struct("type" / c.Int8ub, "value" / DATA_STRUCT)
ROUTE_STRUCT = c.PrefixedArray(UVARINT, ADDRESS_STRUCT)
TRANSPORT_MESSAGE_STRUCT = c.Struct(
    "version" / c.Const(VERSION, c.Int8ub),
    "onward_route" / ROUTE_STRUCT,
    "return_route" / ROUTE_STRUCT,
    "payload" / DATA_STRUCT,
)
#: One TCP frame: 2-byte big-endian length, then one TransportMessage.
FRAME_STRUCT = c.Prefixed(c.Int16ub, TRANSPORT_MESSAGE_STRUCT)
PORTAL_MESSAGE_STRUCT = c.Struct(
    "tag" / c.Enum(c.Int8ub, Ping=0, Pong=1, Disconnect=2, Payload=3),
    "data" / c.If(c.this.tag == "Payload", DATA_STRUCT),
)
#: ockamtw's extension, sent only between ockamtw portals (docs/protocol.md,
#: "Per-stream flow control"): Credit, tag 04, then the total number of
#: Payload data bytes the sender of this message accepts (a uvarint).
PORTAL_CREDIT_STRUCT = c.Struct(
    "tag" / c.Const(4, c.Int8ub),
    "limit" / UVARINT,
)
#: ockamtw's extension, sent only between ockamtw portals (docs/protocol.md,
#: "Half-close"): Eof, tag 05 and nothing else: the sender's socket reached
#: end of file, no Payload follows.
PORTAL_EOF_STRUCT = c.Struct(
    "tag" / c.Const(5, c.Int8ub),
    c.Terminated,
)
#: ockamtw's extension, sent only to ockamtw inlets (docs/protocol.md,
#: "Refusal"): Refuse, tag 06, then a BARE string: why the outlet will not
#: open the stream (in place of the Disconnect an Ockam 0.83 inlet gets).
PORTAL_REFUSE_STRUCT = c.Struct(
    "tag" / c.Const(6, c.Int8ub),
    "reason" / c.PascalString(UVARINT, "utf8"),
    c.Terminated,
)


def construct_call(fn, what: str):
    """
    C{fn()}, with construct's errors turned into L{WireError}.
    """
    try:
        return fn()
    except c.ConstructError as e:
        raise WireError(f"bad {what}: {e}") from None


# --- BARE primitives (fast path) -------------------------------------------


def encode_uvarint(n: int) -> bytes:
    """
    Unsigned LEB128.
    """
    if not isinstance(n, int) or n < 0 or n >= 1 << 64:
        raise WireError(f"uvarint must be an integer 0 to 2**64-1, not {n!r}")
    return uvarint(n)


def _read_uvarint(buf, pos: int, end: int) -> Tuple[int, int]:
    if pos >= end:
        raise WireError("truncated uvarint")
    b = buf[pos]
    pos += 1
    if b < 0x80:
        return b, pos
    result = b & 0x7F
    shift = 7
    while True:
        if pos >= end:
            raise WireError("truncated uvarint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            if not b:
                # A last group of zero adds nothing: an overlong form, which
                # no encoder writes (Rust's writes the shortest).  Refused,
                # so that every message has one encoding and a relay that
                # passes bytes on writes what one that re-encodes would.
                raise WireError(f"uvarint {result} is not minimally encoded")
            if result >> 64:
                raise WireError("uvarint above 2**64-1")
            return result, pos
        shift += 7
        if shift >= 7 * _MAX_UVARINT_BYTES:
            raise WireError("uvarint longer than 10 bytes")


#: The fast uvarint reader for codec code that checks its ranges itself
#: (the secure channel and project codecs); L{uvarint} is the encoder.
read_uvarint = _read_uvarint


def decode_uvarint(data: bytes) -> Tuple[int, int]:
    """
    Decode a uvarint at the start of C{data}; return (value, bytes used).
    """
    return _read_uvarint(data, 0, len(data))


def encode_data(b: bytes) -> bytes:
    """
    BARE data: uvarint length, then the bytes.
    """
    return uvarint(len(b)) + bytes(b)


def decode_data(data: bytes) -> Tuple[bytes, int]:
    """
    Decode BARE data at the start of C{data}; return (bytes, bytes used).
    """
    n, pos = _read_uvarint(data, 0, len(data))
    if pos + n > len(data):
        raise WireError(f"data of {n} bytes truncated to {len(data) - pos}")
    return bytes(data[pos : pos + n]), pos + n


def encode_string(s: str) -> bytes:
    """
    BARE string: the payload of C{uppercase} and relay registration.
    """
    if not isinstance(s, str):
        raise WireError(f"a BARE string is text, not {s!r}")
    raw = s.encode("utf-8")
    return uvarint(len(raw)) + raw


def decode_string(data: bytes) -> str:
    """
    Decode a whole payload as one BARE string (trailing bytes are refused).
    """
    n, pos = _read_uvarint(data, 0, len(data))
    if pos + n != len(data):
        raise WireError(f"BARE string of {n} bytes, but {len(data) - pos} follow its length")
    try:
        return bytes(data[pos:]).decode("utf-8")
    except UnicodeDecodeError as e:
        raise WireError(f"BARE string is not UTF-8: {e}") from None


# --- routes ------------------------------------------------------------------


#: Decoded addresses by their encoding: routes repeat (every message of a
#: portal or relay carries the same few addresses), and Addresses are
#: immutable, so a decoded one is reused.  Bounded: cleared when full.
_INTERNED: dict = {}
_INTERN_MAX = 4096


def _read_route(buf, pos: int, end: int) -> Tuple[Route, int]:
    # The count and every address length fit one byte (below 128) in all
    # but contrived routes: read those inline, the rest by _read_uvarint
    # (which also raises the errors of a truncated one).
    if pos < end and buf[pos] < 0x80:
        count = buf[pos]
        pos += 1
    else:
        count, pos = _read_uvarint(buf, pos, end)
    if count > end - pos:  # every address takes at least 2 bytes
        raise WireError(f"route of {count} addresses cannot fit in {end - pos} bytes")
    addrs = []
    interned = _INTERNED
    for _ in range(count):
        start = pos
        if pos >= end:
            raise WireError("truncated address")
        vpos = pos + 2
        if vpos <= end and buf[pos + 1] < 0x80:
            n = buf[pos + 1]
        else:
            n, vpos = _read_uvarint(buf, pos + 1, end)
        pos = vpos + n
        if pos > end:
            raise WireError(f"address value of {n} bytes truncated")
        encoded = buf[start:pos]
        if encoded.__class__ is not bytes:
            encoded = bytes(encoded)
        address = interned.get(encoded)
        if address is None:
            address = Address._from_wire(buf[start], encoded[vpos - start :].decode("utf-8", "surrogateescape"), encoded)
            if len(interned) >= _INTERN_MAX:
                interned.clear()
            interned[encoded] = address
        addrs.append(address)
    return Route._trusted(addrs), pos


def address_of(encoded: bytes) -> Address:
    """
    The L{Address} whose BARE encoding is C{encoded} (a whole address, as
    L{first_hop} gives), from the same table as decoded routes.
    """
    address = _INTERNED.get(encoded)
    if address is None:
        (route, _) = _read_route(b"\x01" + encoded, 0, len(encoded) + 1)
        address = route[0]
    return address


def decode_body(buf, start: int, end: int) -> TransportMessage:
    """
    Decode the message C{buf[start:end]} (a frame's body, as
    L{FrameDecoder.next_raw} gives it).
    """
    return _decode_message(buf, start, end)


def decode_route(data: bytes) -> Route:
    """
    Decode a whole BARE route.
    """
    route, pos = _read_route(data, 0, len(data))
    return route


# --- TransportMessage ------------------------------------------------------


#: How many times workers of one node may forward one message (C{hop},
#: forwarders, relay endpoints): a message that arrives with a route looping
#: through the node's own workers is dropped after this many steps instead
#: of costing CPU in proportion to the square of its route's length.
FORWARD_BUDGET = 32


class TransportMessage:
    """
    The routed message of Ockam 0.83: version, onward route, return route
    and payload.

    C{payload} is the BARE encoding of the application message (bytes).
    C{source}, C{local}, C{origin} and C{budget} are local only (never on
    the wire): C{source} is what read this message from the outside world,
    so that flow control can pause it; C{local} is metadata such as the
    identity of the secure channel peer it came from
    (C{{"identity": "P..."}}), or C{None}; C{origin} is who the message is
    from as far as this node knows (C{None}: this node itself; otherwise an
    L{ockamtw.interfaces.IOrigin}: the transport connection or the secure
    channel it came in through), which access policies check (see
    L{ockamtw.access}); C{budget} is how many more times workers of this
    node may forward it.
    """

    __slots__ = ("version", "onward_route", "return_route", "payload", "source", "local", "origin", "budget")

    def __init__(
        self,
        onward_route: Union[Route, Sequence, str],
        return_route: Union[Route, Sequence, str],
        payload: bytes = b"",
        version: int = VERSION,
        source=None,
    ) -> None:
        self.onward_route = onward_route if onward_route.__class__ is Route else _route_of(onward_route)
        self.return_route = return_route if return_route.__class__ is Route else _route_of(return_route)
        if payload.__class__ is not bytes:
            if not isinstance(payload, (bytes, bytearray, memoryview)):
                raise WireError(f"payload must be bytes, not {type(payload).__name__}")
            payload = bytes(payload)
        self.payload = payload
        self.version = version
        self.source = source
        self.local = None
        self.origin = None
        self.budget = FORWARD_BUDGET

    def header(self) -> bytes:
        """
        Everything before the payload bytes: version, routes, payload length.
        """
        return b"".join(
            (
                b"\x01",
                self.onward_route.encode(),
                self.return_route.encode(),
                uvarint(len(self.payload)),
            )
        )

    def encode(self) -> bytes:
        """
        The BARE encoding of this message (without a frame length).
        """
        if self.version != VERSION:
            raise WireError(f"cannot encode TransportMessage version {self.version}")
        return self.header() + self.payload

    def encoded_size(self) -> int:
        """
        The size of L{encode}'s result, without building it.
        """
        return len(self.header()) + len(self.payload)

    @classmethod
    def decode(cls, data: Union[bytes, bytearray, memoryview]) -> "TransportMessage":
        """
        Decode one message; trailing bytes are ignored, as Rust does.

        @raise WireError: for truncated or malformed bytes, or a version
            other than 1.
        """
        return _decode_message(data, 0, len(data))

    def with_routes(self, onward_route: Route, return_route: Route) -> "TransportMessage":
        """
        A copy with other routes and the same payload and source.
        """
        m = TransportMessage.__new__(TransportMessage)
        m.version = self.version
        m.onward_route = onward_route
        m.return_route = return_route
        m.payload = self.payload
        m.source = self.source
        m.local = self.local
        m.origin = self.origin
        m.budget = self.budget
        return m

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TransportMessage):
            return (self.version, self.onward_route, self.return_route, self.payload) == (
                other.version,
                other.onward_route,
                other.return_route,
                other.payload,
            )
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        p = self.payload
        shown = p[:32].hex() + ("..." if len(p) > 32 else "")
        return (
            f"TransportMessage(onward={str(self.onward_route)!r}, "
            f"return={str(self.return_route)!r}, payload[{len(p)}]={shown})"
        )


def _route_of(r) -> Route:
    if isinstance(r, str):
        return Route.parse(r)
    return Route(r)


def _decode_message(buf, pos: int, end: int) -> TransportMessage:
    if pos >= end:
        raise WireError("empty TransportMessage")
    version = buf[pos]
    if version != VERSION:
        raise WireError(f"TransportMessage version {version} is not 1")
    onward, pos = _read_route(buf, pos + 1, end)
    ret, pos = _read_route(buf, pos, end)
    n, pos = _read_uvarint(buf, pos, end)
    if pos + n > end:
        raise WireError(f"payload of {n} bytes truncated to {end - pos}")
    m = TransportMessage.__new__(TransportMessage)
    m.version = version
    m.onward_route = onward
    m.return_route = ret
    # One copy: a slice of bytes is bytes; of a bytearray (a frame that
    # spanned reads), take it through a view rather than slice and copy.
    m.payload = buf[pos : pos + n] if buf.__class__ is bytes else bytes(memoryview(buf)[pos : pos + n])
    m.source = None
    m.local = None
    m.origin = None
    m.budget = FORWARD_BUDGET
    return m


# --- frames -------------------------------------------------------------------


def frame_parts(message: TransportMessage) -> List[bytes]:
    """
    The frame for C{message} as pieces for C{writeSequence}: the 2-byte
    length with the header, then the payload (not copied).

    @raise MessageTooLarge: when the message exceeds 65535 bytes.
    """
    if message.version != VERSION:
        raise WireError(f"cannot encode TransportMessage version {message.version}")
    head = message.header()
    size = len(head) + len(message.payload)
    if size > MAX_FRAME:
        raise MessageTooLarge(
            f"message of {size} bytes exceeds the {MAX_FRAME}-byte TCP frame limit "
            f"(onward route {message.onward_route})"
        )
    return [size.to_bytes(2, "big") + head, message.payload]


def encode_frame(message: TransportMessage) -> bytes:
    """
    One TCP frame: 2-byte big-endian length, then the message.
    """
    return b"".join(frame_parts(message))


def body_frame_parts(head: bytes, data: bytes) -> List[bytes]:
    """
    The frame whose body is C{head + data} (an encoded TransportMessage
    known in two pieces, e.g. a header prepared once and a payload), as
    pieces for C{writeSequence}; C{data} is not copied.

    @raise MessageTooLarge: when the body exceeds 65535 bytes.
    """
    size = len(head) + len(data)
    if size > MAX_FRAME:
        raise MessageTooLarge(f"message of {size} bytes exceeds the {MAX_FRAME}-byte TCP frame limit")
    return [size.to_bytes(2, "big") + head, data]


#: The heartbeat frame: length 4, then a TransportMessage of version 1 with
#: empty onward and return routes and an empty payload (Ockam 0.83 and
#: ockamtw drop it silently).
HEARTBEAT_FRAME = bytes.fromhex("000401000000")


class FrameDecoder:
    """
    Splits a byte stream into frames and decodes them.

    Feed it with L{feed}; L{next} gives the next message, or C{None} when no
    whole frame is buffered.  A frame that does not decode raises
    L{WireError} from L{next} after being consumed, so the caller can log it
    and go on: the stream stays in sync.

    Whole frames are decoded in place from the bytes fed; only a frame split
    across reads is copied, into a small pending buffer.
    """

    __slots__ = ("_data", "_dpos", "_pending", "_ppos")

    def __init__(self) -> None:
        self._data = b""
        self._dpos = 0
        self._pending = bytearray()
        self._ppos = 0

    def feed(self, data: bytes) -> None:
        if self._dpos < len(self._data):
            # Not all consumed (the reader paused): keep the order.
            self._compact()
            self._pending += memoryview(self._data)[self._dpos :]
        self._data = data
        self._dpos = 0

    def buffered(self) -> int:
        """
        Bytes received and not yet consumed.
        """
        return len(self._pending) - self._ppos + len(self._data) - self._dpos

    def _compact(self) -> None:
        if self._ppos:
            del self._pending[: self._ppos]
            self._ppos = 0

    def _top_up(self, k: int) -> bool:
        """
        Move up to C{k} bytes from the fed data to the pending buffer;
        whether all C{k} were there.
        """
        data = self._data
        dp = self._dpos
        take = min(k, len(data) - dp)
        if take > 0:
            self._pending += memoryview(data)[dp : dp + take]
            self._dpos = dp + take
        return take == k

    def next(self) -> Optional[TransportMessage]:
        raw = self.next_raw()
        if raw is None:
            return None
        return _decode_message(*raw)

    def next_raw(self) -> Optional[Tuple[Union[bytes, bytearray], int, int]]:
        """
        The next whole frame's body, not decoded, as (buffer, start, end),
        valid until the next call; or C{None} when no whole frame is
        buffered.  The frame is consumed.
        """
        p = self._pending
        if self._ppos and self._ppos >= len(p):
            p.clear()
            self._ppos = 0
        if p:
            # A frame began in an earlier read: complete it from the new one.
            if len(p) - self._ppos < 2 and not self._top_up(2 - (len(p) - self._ppos)):
                return None
            pp = self._ppos
            n = (p[pp] << 8) | p[pp + 1]
            need = 2 + n - (len(p) - pp)
            if need > 0 and not self._top_up(need):
                return None
            start = pp + 2
            self._ppos = start + n
            return p, start, start + n
        data = self._data
        dp = self._dpos
        avail = len(data) - dp
        if avail >= 2:
            n = (data[dp] << 8) | data[dp + 1]
            if avail >= 2 + n:
                start = dp + 2
                self._dpos = start + n
                return data, start, start + n
        if avail:
            self._pending += memoryview(data)[dp:]
        self._data = b""
        self._dpos = 0
        return None


# --- PortalMessage ----------------------------------------------------------


class PortalMessage:
    """
    The payload of portal traffic: Ping, Pong, Disconnect or Payload(data).
    """

    PING = 0
    PONG = 1
    DISCONNECT = 2
    PAYLOAD = 3
    _NAMES = {0: "Ping", 1: "Pong", 2: "Disconnect", 3: "Payload"}

    __slots__ = ("tag", "data")

    def __init__(self, tag: int, data: bytes = b"") -> None:
        if tag not in self._NAMES:
            raise WireError(f"unknown PortalMessage tag {tag!r}")
        self.tag = tag
        self.data = data

    @classmethod
    def payload(cls, data: bytes) -> "PortalMessage":
        return cls(cls.PAYLOAD, bytes(data))

    @staticmethod
    def payload_header(length: int) -> bytes:
        """
        The bytes before a chunk of C{length} bytes in a Payload message.
        """
        return b"\x03" + uvarint(length)

    def encode(self) -> bytes:
        if self.tag == self.PAYLOAD:
            return self.payload_header(len(self.data)) + self.data
        return bytes((self.tag,))

    @classmethod
    def decode(cls, data: bytes) -> "PortalMessage":
        """
        @raise WireError: for an unknown tag or truncated Payload.
        """
        if not data:
            raise WireError("empty PortalMessage")
        tag = data[0]
        if tag == cls.PAYLOAD:
            n, pos = _read_uvarint(data, 1, len(data))
            if pos + n > len(data):
                raise WireError(f"portal payload of {n} bytes truncated to {len(data) - pos}")
            return cls(tag, bytes(data[pos : pos + n]))
        if tag not in cls._NAMES:
            raise WireError(f"unknown PortalMessage tag {tag}")
        return cls(tag)

    @property
    def name(self) -> str:
        return self._NAMES[self.tag]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PortalMessage):
            return (self.tag, self.data) == (other.tag, other.data)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        if self.tag == self.PAYLOAD:
            return f"PortalMessage.Payload({len(self.data)} bytes)"
        return f"PortalMessage.{self.name}"


# --- headers, for the fast paths that write a message as header + payload ----------


def _skip_route(buf, pos: int, end: int) -> Tuple[int, int, int]:
    """
    Step over an encoded route without decoding it: (count, position of
    its first address, position after it).

    @raise WireError: as L{_read_route} for a malformed one.
    """
    if pos < end and buf[pos] < 0x80:
        count = buf[pos]
        pos += 1
    else:
        count, pos = _read_uvarint(buf, pos, end)
    first = pos
    for _ in range(count):
        vpos = pos + 2
        if vpos <= end and buf[pos + 1] < 0x80:
            n = buf[pos + 1]
        else:
            n, vpos = _read_uvarint(buf, pos + 1, end)
        pos = vpos + n
        if pos > end:
            raise WireError(f"address value of {n} bytes truncated")
    return count, first, pos


def first_hop(buf, start: int, end: int) -> Optional[bytes]:
    """
    The encoded first address of the onward route of the message
    C{buf[start:end]}, read without decoding the message; C{None} for an
    empty route (a heartbeat) or anything that is not a plain version-1
    message starting with a short address (the caller then decodes it).
    """
    if end - start < 4 or buf[start] != VERSION:
        return None
    count = buf[start + 1]
    if count == 0 or count >= 0x80:
        return None
    n = buf[start + 3]
    stop = start + 4 + n
    if n >= 0x80 or stop > end:
        return None
    encoded = buf[start + 2 : stop]
    return encoded if encoded.__class__ is bytes else bytes(encoded)


def second_hop(buf, start: int, end: int, first: Optional[bytes] = None) -> Optional[bytes]:
    """
    The encoded second address of the onward route of the message
    C{buf[start:end]}, read without decoding it, as L{first_hop} reads the
    first (C{None} where that declines, or for fewer than two addresses or
    a long second one; with C{first}, also when the first address is not
    C{first}): where a message that came through a secure channel goes once
    the channel has stepped past its own address.
    """
    if end - start < 4 or buf[start] != VERSION:
        return None
    count = buf[start + 1]
    if count < 2 or count >= 0x80:
        return None
    n = buf[start + 3]
    pos = start + 4 + n
    if n >= 0x80 or pos + 2 > end:
        return None
    if first is not None and buf[start + 2 : pos] != first:
        return None
    n = buf[pos + 1]
    stop = pos + 2 + n
    if n >= 0x80 or stop > end:
        return None
    encoded = buf[pos:stop]
    return encoded if encoded.__class__ is bytes else bytes(encoded)


def hop_body(buf, start: int, end: int, first: bytes, me: bytes) -> List:
    """
    The body of the message C{buf[start:end]} as it leaves through the link
    at its onward route's first address C{first} (from L{first_hop}): that
    address removed from the onward route, C{me} (the encoded address of
    the link it came in on) put first on its return route, the rest as it
    is (bytes after the payload are left out, as L{TransportMessage.decode}
    does).  As pieces: the new start, then the rest of the bytes unchanged.
    Equal to the body L{TransportMessage.encode} gives after decoding it
    and changing the routes.

    @raise WireError: for a malformed message (the same ones that
        L{TransportMessage.decode} refuses).
    """
    onward_count, _, pos = _skip_route(buf, start + 1, end)
    after_first = start + 2 + len(first)
    ret_count, ret_first, ret_end = _skip_route(buf, pos, end)
    n, ppos = _read_uvarint(buf, ret_end, end)
    if ppos + n > end:
        raise WireError(f"payload of {n} bytes truncated to {end - ppos}")
    stop = ppos + n
    if buf.__class__ is bytes and stop - ret_first < VIEW_FROM:
        rest = buf[ret_first:stop]
        onward_rest = buf[after_first:pos]
    else:
        view = memoryview(buf)
        rest = view[ret_first:stop] if buf.__class__ is bytes else bytes(view[ret_first:stop])
        onward_rest = bytes(view[after_first:pos])
    return [b"\x01" + uvarint(onward_count - 1) + onward_rest + uvarint(ret_count + 1) + me, rest]


def payload_of(buf, start: int, end: int) -> Union[bytes, memoryview]:
    """
    The payload of the message C{buf[start:end]} (one that L{first_hop}
    read), without decoding its routes: C{bytes}, or from L{VIEW_FROM}
    bytes a view into C{buf} when C{buf} is C{bytes} (immutable).

    @raise WireError: for a malformed message (as L{hop_body}).
    """
    _, _, pos = _skip_route(buf, start + 1, end)
    _, _, pos = _skip_route(buf, pos, end)
    n, pos = _read_uvarint(buf, pos, end)
    if pos + n > end:
        raise WireError(f"payload of {n} bytes truncated to {end - pos}")
    if buf.__class__ is bytes:
        return buf[pos : pos + n] if n < VIEW_FROM else memoryview(buf)[pos : pos + n]
    return bytes(memoryview(buf)[pos : pos + n])


def routes_head(onward: Route, return_route: Route) -> bytes:
    """
    The start of an encoded TransportMessage: version and both routes
    (what comes before the payload's length).
    """
    return b"\x01" + onward.encode() + return_route.encode()


def encode_header(onward_count: int, onward_parts: Sequence[bytes], return_route: Route, payload_len: int) -> bytes:
    """
    Everything of an encoded TransportMessage before its payload bytes,
    from parts: C{onward_count} addresses whose encodings are
    C{onward_parts} (joined), the return route, the payload's length.
    Equal to L{TransportMessage.header} of the same message.
    """
    return b"".join(
        [b"\x01", uvarint(onward_count), *onward_parts, return_route.encode(), uvarint(payload_len)]
    )


# --- PortalMessage: the fast path --------------------------------------------------

PING_TAG, PONG_TAG, DISCONNECT_TAG, PAYLOAD_TAG = 0, 1, 2, 3
#: The PortalMessages without data, encoded.
PING = b"\x00"
PONG = b"\x01"
DISCONNECT = b"\x02"

_PAYLOAD_PREFIXES: dict = {}


def payload_prefix(n: int) -> bytes:
    """
    The bytes of a Payload PortalMessage before its C{n} data bytes.
    """
    p = _PAYLOAD_PREFIXES.get(n)
    if p is None:
        p = b"\x03" + uvarint(n)
        if len(_PAYLOAD_PREFIXES) < 1024:
            _PAYLOAD_PREFIXES[n] = p
    return p


def encode_payload(chunk: bytes) -> bytes:
    """
    The PortalMessage C{Payload(chunk)}.
    """
    return b"\x03" + uvarint(len(chunk)) + chunk


#: Payload data of at least this many bytes is given as a view, not copied.
VIEW_FROM = 4096


def decode_payload(payload: bytes) -> Union[bytes, memoryview]:
    """
    The data of a C{Payload} PortalMessage (bytes after its data are
    ignored, as Rust does): C{bytes}, or from L{VIEW_FROM} bytes on a
    C{memoryview} into C{payload} (a portal chunk goes to its socket
    without one more copy; see L{ockamtw.flow.send_direct}).

    @raise WireError: when it is truncated.
    """
    end = len(payload)
    n, pos = _read_uvarint(payload, 1, end)
    if pos + n > end:
        raise WireError(f"portal payload of {n} bytes truncated to {end - pos}")
    if n < VIEW_FROM:
        return payload[pos : pos + n]
    return memoryview(payload)[pos : pos + n]


# --- Credit: ockamtw's per-stream flow control -------------------------------

#: The PortalMessage tag of Credit (an ockamtw extension; Ockam 0.83 has 0-3).
CREDIT_TAG = 4


def encode_credit(limit: int) -> bytes:
    """
    The Credit message granting data bytes up to C{limit} (counted from
    the first Payload of the stream).
    """
    if not 0 <= limit < 1 << 64:
        raise WireError(f"credit limit out of range: {limit!r}")
    return b"\x04" + uvarint(limit)


def decode_credit(data: bytes) -> int:
    """
    The limit of a Credit message.

    @raise WireError: for another tag, a bad uvarint or trailing bytes.
    """
    if not data or data[0] != CREDIT_TAG:
        raise WireError("not a Credit message")
    limit, pos = _read_uvarint(data, 1, len(data))
    if pos != len(data):
        raise WireError(f"{len(data) - pos} bytes after a Credit message")
    return limit


# --- Eof: ockamtw's half-close --------------------------------------------------

#: The PortalMessage tag of Eof (an ockamtw extension, like Credit).
EOF_TAG = 5
_EOF = b"\x05"


def encode_eof() -> bytes:
    """
    The Eof message: the sender's socket reached end of file.
    """
    return _EOF


def decode_eof(data: bytes) -> None:
    """
    Check that C{data} is an Eof message.

    @raise WireError: for another tag or trailing bytes.
    """
    if data != _EOF:
        if not data or data[0] != EOF_TAG:
            raise WireError("not an Eof message")
        raise WireError(f"{len(data) - 1} bytes after an Eof message")


# --- Refuse: why an outlet will not open a stream ----------------------------------

#: The PortalMessage tag of Refuse (an ockamtw extension, like Credit).
REFUSE_TAG = 6
#: Characters of a refusal's reason kept (it is shown to the inlet's owner).
MAX_REASON = 200


def encode_refuse(reason: str) -> bytes:
    """
    The Refuse message with C{reason} (cut to L{MAX_REASON} characters).
    """
    return b"\x06" + encode_string(reason[:MAX_REASON])


def decode_refuse(data: bytes) -> str:
    """
    The reason of a Refuse message.

    @raise WireError: for another tag, a bad string or trailing bytes.
    """
    if not data or data[0] != REFUSE_TAG:
        raise WireError("not a Refuse message")
    return decode_string(data[1:])


# --- the construct path, for proof and for readers ---------------------------


def construct_encode_message(message: TransportMessage) -> bytes:
    """
    L{TransportMessage.encode} by the construct declaration.
    """
    return construct_call(
        lambda: TRANSPORT_MESSAGE_STRUCT.build(
            dict(
                version=VERSION,
                onward_route=[
                    dict(type=a.type, value=a.value.encode("utf-8", "surrogateescape"))
                    for a in message.onward_route
                ],
                return_route=[
                    dict(type=a.type, value=a.value.encode("utf-8", "surrogateescape"))
                    for a in message.return_route
                ],
                payload=message.payload,
            )
        ),
        "TransportMessage",
    )


def construct_decode_message(data: bytes) -> TransportMessage:
    """
    L{TransportMessage.decode} by the construct declaration.
    """
    obj = construct_call(lambda: TRANSPORT_MESSAGE_STRUCT.parse(bytes(data)), "TransportMessage")

    def route(items):
        return Route._trusted([Address(i.type, i.value) for i in items])

    return TransportMessage(route(obj.onward_route), route(obj.return_route), obj.payload)
