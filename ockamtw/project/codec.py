"""
The messages of Ockam 0.83's project API, as bytes (sections 1, 3, 6, 8 and
9 of C{shared/spec/ockam-project-api.md}).

  - The request/response framing: an API message is a BARE C{Vec<u8>}
    (uvarint length ++ buffer) whose buffer is a CBOR header item, followed
    by one CBOR body item when the header's C{has_body} is true.
    L{RequestHeader}, L{ResponseHeader}, L{Request}, L{Response},
    L{request}, L{response}, L{parse_request}, L{parse_response}.
  - The C{Error} body: L{ErrorBody}.
  - The authority's bodies: L{AddMember}, L{CreateToken}, L{OneTimeCode}.
  - The Medic ping (a CBOR array sent as is, not BARE-wrapped):
    L{MedicPing}.
  - The relay registration (a BARE string): L{encode_relay_registration},
    L{decode_relay_registration}, L{relay_reply_name}.

Encoding writes exactly what minicbor writes (L{ockamtw.project.cbor.dumps}:
definite lengths, shortest integers, fields in declaration order, C{None}
fields left out).  Decoding accepts what a Rust 0.83 client accepts
(indefinite lengths, unknown keys skipped, maps in any order, non-shortest
integers) and refuses, with L{WireError}, a missing required field, a wrong
major type, an identifier that is not C{P} + 64 lowercase hex, and bytes
after the last item.  The credential (C{Credential}) is in
L{ockamtw.project.credentials}.

Nothing here needs Twisted.
"""

from __future__ import annotations

import enum
import re
import secrets
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Union

from ..errors import WireError
from ..wire import encode_data, encode_string, read_uvarint
from ..wire import decode_string as _decode_bare_string
from .cbor import U32_MAX, U64_MAX, CborReader, decode_whole, dumps, read_struct

__all__ = [
    # services, paths, texts, timings
    "CREDENTIAL_ISSUER",
    "DIRECT_AUTHENTICATOR",
    "ENROLLMENT_TOKEN_ISSUER",
    "ENROLLMENT_TOKEN_ACCEPTOR",
    "CREDENTIALS",
    "PRESENT_PATH",
    "PRESENT_MUTUAL_PATH",
    "ECHO",
    "STATIC_FORWARDING_SERVICE",
    "FORWARDER_PREFIX",
    "PING_COLLECTOR",
    "RELAY_ATTRIBUTE",
    "API_TIMEOUT",
    "ENROLL_TIMEOUT",
    "TOKEN_LIFETIME",
    "TOKEN_TABLE_SIZE",
    "RELAY_HEARTBEAT",
    "MEDIC_INTERVAL",
    "MEDIC_MAX_OUTSTANDING",
    "MEDIC_KEY_LEN",
    "ONE_TIME_CODE_LEN",
    # enums and framing
    "Method",
    "Status",
    "RequestHeader",
    "ResponseHeader",
    "Request",
    "Response",
    "ErrorBody",
    "new_request_id",
    "request",
    "response",
    "parse_request",
    "parse_response",
    "parse_request_message",
    "parse_response_message",
    "wrap_message",
    "unwrap_message",
    "encode_text",
    "decode_text",
    # bodies
    "AddMember",
    "CreateToken",
    "OneTimeCode",
    "MedicPing",
    "encode_relay_registration",
    "decode_relay_registration",
    "relay_reply_name",
    "forwarder_address",
    # identifiers
    "IDENTIFIER_RE",
    "is_identifier",
    "check_identifier",
    "read_identifier",
]

# --- names, texts and timings of the spec --------------------------------------

CREDENTIAL_ISSUER = "credential_issuer"
DIRECT_AUTHENTICATOR = "direct_authenticator"
ENROLLMENT_TOKEN_ISSUER = "enrollment_token_issuer"
ENROLLMENT_TOKEN_ACCEPTOR = "enrollment_token_acceptor"
#: The project node's credential presentation service (7.2).
CREDENTIALS = "credentials"
PRESENT_PATH = "actions/present"
PRESENT_MUTUAL_PATH = "actions/present_mutual"
ECHO = "echo"
STATIC_FORWARDING_SERVICE = "static_forwarding_service"
FORWARDER_PREFIX = "forward_to_"
#: The return address of Medic pings (9).
PING_COLLECTOR = "ockam.ping.collector"
#: The attribute that names the relay a one-time code allows (ockamtw's
#: C{--relay NAME}; later Ockam CLIs use the same attribute).
RELAY_ATTRIBUTE = "ockam-relay"

#: Seconds a Rust client waits for an API answer; C{project enroll} waits longer.
API_TIMEOUT = 30.0
ENROLL_TIMEOUT = 180.0
#: A one-time code older than this many seconds is refused (strictly older).
TOKEN_LIFETIME = 600
#: 0.83 keeps this many one-time codes (LRU).
TOKEN_TABLE_SIZE = 128
RELAY_HEARTBEAT = 5.0
MEDIC_INTERVAL = 3.0
MEDIC_MAX_OUTSTANDING = 3
MEDIC_KEY_LEN = 24
ONE_TIME_CODE_LEN = 32

# Error texts of the Rust authority and nodes (3.3, 6.x).
UNKNOWN_PATH = "unknown path"
UNAUTHORIZED_MEMBER = "unauthorized member"
UNKNOWN_TOKEN = "unknown token"
EXPIRED_TOKEN = "expired token"
SECURE_CHANNEL_REQUIRED = "secure channel required"


# --- identifiers -----------------------------------------------------------------

IDENTIFIER_RE = re.compile(r"P[0-9a-f]{64}\Z")


def is_identifier(value: Any) -> bool:
    """
    True for C{"P"} followed by 64 lowercase hex characters.
    """
    return isinstance(value, str) and IDENTIFIER_RE.match(value) is not None


def check_identifier(value: Any, what: str) -> str:
    """
    C{value} if it is an identifier.

    @raise WireError: naming C{what} otherwise.
    """
    if not is_identifier(value):
        shown = repr(value) if not isinstance(value, str) or len(value) <= 80 else repr(value[:77] + "...")
        raise WireError(f"{what} is not an identifier ('P' + 64 lowercase hex): {shown}")
    return value


# --- enums --------------------------------------------------------------------------


class Method(enum.IntEnum):
    """
    The request methods (C{index_only}: written as their number).
    """

    GET = 0
    POST = 1
    PUT = 2
    DELETE = 3
    PATCH = 4


class Status(enum.IntEnum):
    """
    The response statuses; any other number decodes as no status.
    """

    OK = 200
    BAD_REQUEST = 400
    UNAUTHORIZED = 401
    FORBIDDEN = 403
    NOT_FOUND = 404
    METHOD_NOT_ALLOWED = 405
    CONFLICT = 409
    INTERNAL_SERVER_ERROR = 500
    NOT_IMPLEMENTED = 501


def _enum_or_none(enum_cls, value: int):
    try:
        return enum_cls(value)
    except ValueError:
        return None


def _check_enum(enum_cls, value, what: str):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise WireError(f"{what} must be a {enum_cls.__name__} or None, not {value!r}")
    try:
        return enum_cls(value)
    except ValueError:
        raise WireError(f"{what} {value} is not one of {', '.join(str(int(v)) for v in enum_cls)}") from None


def _check_int(value, what: str, maximum: int, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise WireError(f"{what} must be an integer {minimum} to {maximum}, not {value!r}")
    return value


def _check_text(value, what: str) -> str:
    if not isinstance(value, str):
        raise WireError(f"{what} must be text, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise WireError(f"{what} is not encodable as UTF-8 (lone surrogate)") from None
    return value


def _check_bytes(value, what: str) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise WireError(f"{what} must be bytes, not {type(value).__name__}")
    return bytes(value)


# --- reading struct maps ------------------------------------------------------------


def _read_u32(r: CborReader, what: str) -> int:
    return r.u32(what)


def _read_u64(r: CborReader, what: str) -> int:
    return r.u64(what)


def _read_text(r: CborReader, what: str) -> str:
    return r.text(what)


def _read_bool(r: CborReader, what: str) -> bool:
    return r.boolean(what)


def read_identifier(r: CborReader, what: str) -> str:
    """
    A text string that must be an identifier (see L{check_identifier}).
    """
    return check_identifier(r.text(what), what)


def _read_enum(enum_cls):
    def read(r: CborReader, what: str):
        # an Option<enum> holding an unknown number is None
        return _enum_or_none(enum_cls, r.u64(what))

    return read


def _read_text_map(r: CborReader, what: str) -> Dict[str, str]:
    n = r.map_len(what)
    out: Dict[str, str] = {}
    for _ in r.entries(n):
        k = r.text(f"a key of {what}")
        out[k] = r.text(f"the value of {what}[{k!r}]")
    return out


def encode_text(text: str) -> bytes:
    """
    A CBOR text string (the error bodies of Elixir services and of a Rust
    node's unknown path).
    """
    return dumps(_check_text(text, "text"))


def decode_text(data: bytes) -> str:
    """
    A body that is one CBOR text string.
    """
    return decode_whole(data, "a text body", lambda r: r.text("a text body"))


# --- headers ----------------------------------------------------------------------


class RequestHeader(NamedTuple):
    """
    C{Request = map {1: id (u32), 2: path, 3: method (optional), 4: has_body}}.
    """

    id: int
    path: str
    method: Optional[Method]
    has_body: bool

    def encode(self) -> bytes:
        _check_int(self.id, "request id", U32_MAX)
        m: Dict[int, Any] = {1: self.id, 2: _check_text(self.path, "request path")}
        method = _check_enum(Method, self.method, "request method")
        if method is not None:
            m[3] = int(method)
        m[4] = bool(self.has_body)
        return dumps(m)

    @classmethod
    def read(cls, r: CborReader) -> "RequestHeader":
        f = read_struct(
            r,
            "the request header",
            (
                (1, "id", _read_u32, True),
                (2, "path", _read_text, True),
                (3, "method", _read_enum(Method), False),
                (4, "has_body", _read_bool, True),
            ),
        )
        return cls(f["id"], f["path"], f.get("method"), f["has_body"])


class ResponseHeader(NamedTuple):
    """
    C{Response = map {1: id (u32), 2: re (u32), 3: status (optional), 4: has_body}}.
    """

    id: int
    re: int
    status: Optional[Status]
    has_body: bool

    def encode(self) -> bytes:
        _check_int(self.id, "response id", U32_MAX)
        _check_int(self.re, "response re", U32_MAX)
        m: Dict[int, Any] = {1: self.id, 2: self.re}
        status = _check_enum(Status, self.status, "response status")
        if status is not None:
            m[3] = int(status)
        m[4] = bool(self.has_body)
        return dumps(m)

    @classmethod
    def read(cls, r: CborReader) -> "ResponseHeader":
        f = read_struct(
            r,
            "the response header",
            (
                (1, "id", _read_u32, True),
                (2, "re", _read_u32, True),
                (3, "status", _read_enum(Status), False),
                (4, "has_body", _read_bool, True),
            ),
        )
        return cls(f["id"], f["re"], f.get("status"), f["has_body"])


class ErrorBody(NamedTuple):
    """
    C{Error = map {1: path, 2: method, 3: message}}, every field optional.
    """

    path: Optional[str] = None
    method: Optional[Method] = None
    message: Optional[str] = None

    def encode(self) -> bytes:
        m: Dict[int, Any] = {}
        if self.path is not None:
            m[1] = _check_text(self.path, "error path")
        method = _check_enum(Method, self.method, "error method")
        if method is not None:
            m[2] = int(method)
        if self.message is not None:
            m[3] = _check_text(self.message, "error message")
        return dumps(m)

    @classmethod
    def read(cls, r: CborReader) -> "ErrorBody":
        f = read_struct(
            r,
            "an Error body",
            (
                (1, "path", _read_text, False),
                (2, "method", _read_enum(Method), False),
                (3, "message", _read_text, False),
            ),
        )
        return cls(f.get("path"), f.get("method"), f.get("message"))

    @classmethod
    def decode(cls, data: bytes) -> "ErrorBody":
        return decode_whole(data, "an Error body", cls.read)


# --- the API message ----------------------------------------------------------------

#: What a body argument may be: the CBOR of one item, text (sent as a CBOR
#: text string), or an object with C{encode()} giving the CBOR of one item.
Body = Union[bytes, str, Any, None]


def _body_bytes(body: Body) -> Optional[bytes]:
    if body is None:
        return None
    if isinstance(body, str):
        return encode_text(body)
    if isinstance(body, (bytes, bytearray, memoryview)):
        raw = bytes(body)
        decode_whole(raw, "a body", lambda r: r.skip())  # exactly one well-formed item
        return raw
    encode = getattr(body, "encode", None)
    if encode is None:
        raise WireError(f"a body is CBOR bytes, text or an encodable message, not {type(body).__name__}")
    return encode()


def wrap_message(buffer: bytes) -> bytes:
    """
    The message bytes of an API buffer: a BARE C{Vec<u8>}.
    """
    return encode_data(buffer)


def unwrap_message(message: bytes) -> bytes:
    """
    The buffer of a BARE C{Vec<u8>} message (no trailing bytes).
    """
    message = _check_bytes(message, "an API message")
    n, pos = read_uvarint(message, 0, len(message))
    if pos + n != len(message):
        raise WireError(f"an API message declares {n} bytes but {len(message) - pos} follow its length")
    return message[pos:]


def _split(buffer: bytes, what: str, read_header):
    buffer = _check_bytes(buffer, what)
    r = CborReader(buffer)
    header = read_header(r)
    if header.has_body:
        if r.at_end():
            raise WireError(f"{what} says it has a body, but none follows its header")
        start = r.pos
        r.skip()
        body = buffer[start : r.pos]
    else:
        body = None
    r.expect_end(f"{what} (header{' and body' if body is not None else ''})")
    return header, body


class _Message:
    __slots__ = ()

    def encode(self) -> bytes:
        """
        The buffer: header ++ body.

        @raise WireError: when the header's C{has_body} and the body
            disagree.
        """
        if bool(self.header.has_body) != (self.body is not None):
            raise WireError(
                f"the header says has_body={bool(self.header.has_body)} but the body is "
                f"{'absent' if self.body is None else 'present'}"
            )
        head = self.header.encode()
        return head if self.body is None else head + self.body

    def message(self) -> bytes:
        """
        The message bytes (a TransportMessage's payload): BARE C{Vec<u8>} of
        L{encode}.
        """
        return wrap_message(self.encode())

    def decode_body(self, decoder: Callable[[bytes], Any]) -> Any:
        """
        C{decoder(body)}; L{WireError} when there is no body.
        """
        if self.body is None:
            raise WireError(f"{type(self).__name__.lower()} has no body")
        return decoder(self.body)


class Request(_Message, NamedTuple("_Request", [("header", RequestHeader), ("body", Optional[bytes])])):
    """
    A request: its header and the CBOR of its body item (or C{None}).
    """

    __slots__ = ()

    @property
    def id(self) -> int:
        return self.header.id

    @property
    def path(self) -> str:
        return self.header.path

    @property
    def method(self) -> Optional[Method]:
        return self.header.method


class Response(_Message, NamedTuple("_Response", [("header", ResponseHeader), ("body", Optional[bytes])])):
    """
    A response: its header and the CBOR of its body item (or C{None}).
    """

    __slots__ = ()

    @property
    def id(self) -> int:
        return self.header.id

    @property
    def re(self) -> int:
        return self.header.re

    @property
    def status(self) -> Optional[Status]:
        return self.header.status

    @property
    def ok(self) -> bool:
        """
        What a Rust client counts as success: status 200 (and nothing else).
        """
        return self.header.status == Status.OK

    def error_body(self) -> Optional[ErrorBody]:
        """
        The body as an C{Error} map, or C{None} when there is no body or it
        is not one.
        """
        if self.body is None:
            return None
        try:
            return ErrorBody.decode(self.body)
        except WireError:
            return None

    def error_message(self) -> Optional[str]:
        """
        What a failed response says: the C{message} of an C{Error} body, the
        text of a text body (Elixir), or C{None}.
        """
        err = self.error_body()
        if err is not None:
            return err.message
        if self.body is not None:
            try:
                return decode_text(self.body)
            except WireError:
                return None
        return None


def new_request_id() -> int:
    """
    A random non-zero u32.
    """
    return secrets.randbelow(U32_MAX) + 1


def request(method: Optional[Method], path: str, body: Body = None, id: Optional[int] = None) -> Request:
    """
    A request for C{path} (e.g. C{"/"}, C{"actions/present"}).

    @param body: the body (see L{Body}), or C{None}.
    @param id: the request id (random and non-zero when C{None}).
    """
    raw = _body_bytes(body)
    header = RequestHeader(new_request_id() if id is None else id, path, method, raw is not None)
    header.encode()  # check the values now
    return Request(header, raw)


def response(re: int, status: Optional[Status], body: Body = None, id: Optional[int] = None) -> Response:
    """
    A response to the request whose id is C{re}.
    """
    raw = _body_bytes(body)
    header = ResponseHeader(new_request_id() if id is None else id, re, status, raw is not None)
    header.encode()
    return Response(header, raw)


def parse_request(buffer: bytes) -> Request:
    """
    A request buffer (header ++ optional body, no BARE prefix).

    @raise WireError: for a header that does not decode, a body missing or
        present against C{has_body}, or trailing bytes.
    """
    return Request(*_split(buffer, "a request", RequestHeader.read))


def parse_response(buffer: bytes) -> Response:
    """
    A response buffer (header ++ optional body, no BARE prefix).
    """
    return Response(*_split(buffer, "a response", ResponseHeader.read))


def parse_request_message(message: bytes) -> Request:
    """
    A request as a TransportMessage payload carries it (BARE-wrapped).
    """
    return parse_request(unwrap_message(message))


def parse_response_message(message: bytes) -> Response:
    """
    A response as a TransportMessage payload carries it (BARE-wrapped).
    """
    return parse_response(unwrap_message(message))


# --- the authority's bodies -----------------------------------------------------------


def _check_text_map(attributes, what: str) -> Dict[str, str]:
    if not isinstance(attributes, Mapping):
        raise WireError(f"{what} must be a mapping of text to text, not {type(attributes).__name__}")
    out = {}
    for k, v in attributes.items():
        _check_text(k, f"a key of {what}")
        _check_text(v, f"{what}[{k!r}]")
        out[k] = v
    return out


def _sorted_map(m: Mapping[str, Any]) -> Dict[str, Any]:
    # Rust's BTreeMap<String, _> order is bytewise by UTF-8, which is the
    # code point order Python sorts str by.
    return {k: m[k] for k in sorted(m)}


class AddMember(NamedTuple):
    """
    C{AddMember = map {1: member (identifier), 2: attributes (text => text)}}.

    Rust writes the attributes in a C{HashMap}'s random order; we write them
    sorted (one valid order, the vectors' order) and read any order.
    """

    member: str
    attributes: Mapping[str, str]

    def encode(self) -> bytes:
        check_identifier(self.member, "AddMember member")
        attrs = _check_text_map(self.attributes, "AddMember attributes")
        return dumps({1: self.member, 2: _sorted_map(attrs)})

    @classmethod
    def read(cls, r: CborReader) -> "AddMember":
        f = read_struct(
            r,
            "AddMember",
            ((1, "member", read_identifier, True), (2, "attributes", _read_text_map, True)),
        )
        return cls(f["member"], f["attributes"])

    @classmethod
    def decode(cls, data: bytes) -> "AddMember":
        return decode_whole(data, "AddMember", cls.read)


class CreateToken(NamedTuple):
    """
    C{CreateToken = map {1: attributes (text => text), 2: expires_in
    (u64 seconds, optional), 3: usage_count (u64, optional)}}.

    Keys 2 and 3 are ockamtw's extensions (C{project enroll --expires-in},
    C{--usage-count}); they have the numbers, types and meaning of later
    Ockam CLIs' C{ttl_secs} and C{ttl_count}.  A 0.83 authority skips them
    as unknown keys, so they are written only when set, and a body without
    them is byte for byte what 0.83 writes.  C{--relay NAME} is not a key:
    it is the attribute L{RELAY_ATTRIBUTE} (see L{with_relay}).
    """

    attributes: Mapping[str, str]
    expires_in: Optional[int] = None
    usage_count: Optional[int] = None

    def encode(self) -> bytes:
        attrs = _check_text_map(self.attributes, "CreateToken attributes")
        m: Dict[int, Any] = {1: _sorted_map(attrs)}
        if self.expires_in is not None:
            m[2] = _check_int(self.expires_in, "CreateToken expires_in", U64_MAX, 1)
        if self.usage_count is not None:
            m[3] = _check_int(self.usage_count, "CreateToken usage_count", U64_MAX, 1)
        return dumps(m)

    def with_relay(self, name: str) -> "CreateToken":
        """
        This request with the attribute C{ockam-relay = name}.
        """
        attrs = dict(self.attributes)
        attrs[RELAY_ATTRIBUTE] = _check_text(name, "relay name")
        return self._replace(attributes=attrs)

    @property
    def relay(self) -> Optional[str]:
        return self.attributes.get(RELAY_ATTRIBUTE)

    @classmethod
    def read(cls, r: CborReader) -> "CreateToken":
        f = read_struct(
            r,
            "CreateToken",
            (
                (1, "attributes", _read_text_map, True),
                (2, "expires_in", _read_u64, False),
                (3, "usage_count", _read_u64, False),
            ),
        )
        return cls(f["attributes"], f.get("expires_in"), f.get("usage_count"))

    @classmethod
    def decode(cls, data: bytes) -> "CreateToken":
        return decode_whole(data, "CreateToken", cls.read)


_HEX64_RE = re.compile(r"[0-9a-fA-F]{64}\Z")


class OneTimeCode(NamedTuple):
    """
    C{OneTimeCode = map {1: code (bytes, exactly 32)}}.

    C{str()} and L{hex} give the 64 lowercase hex characters; L{printed} is
    what C{ockam project enroll} prints (with a newline); L{parse} reads
    what C{--token} takes (64 hex characters of either case).
    """

    code: bytes

    @classmethod
    def random(cls) -> "OneTimeCode":
        return cls(secrets.token_bytes(ONE_TIME_CODE_LEN))

    def _checked(self) -> bytes:
        code = _check_bytes(self.code, "a one-time code")
        if len(code) != ONE_TIME_CODE_LEN:
            raise WireError(f"a one-time code is {ONE_TIME_CODE_LEN} bytes, not {len(code)}")
        return code

    def encode(self) -> bytes:
        return dumps({1: self._checked()})

    def hex(self) -> str:
        return self._checked().hex()

    def printed(self) -> str:
        return self.hex() + "\n"

    def __str__(self) -> str:
        return self.hex()

    def __repr__(self) -> str:
        return "OneTimeCode(<secret>)"

    @classmethod
    def parse(cls, text: str) -> "OneTimeCode":
        """
        @raise WireError: unless C{text} is exactly 64 hex characters.
        """
        if not isinstance(text, str) or not _HEX64_RE.match(text):
            raise WireError("a one-time code is 64 hex characters")
        return cls(bytes.fromhex(text))

    @classmethod
    def read(cls, r: CborReader) -> "OneTimeCode":
        def read_code(r: CborReader, what: str) -> bytes:
            at = r.pos
            code = r.bytestring(what)
            if len(code) != ONE_TIME_CODE_LEN:
                raise WireError(f"{what} is {len(code)} bytes, not {ONE_TIME_CODE_LEN} (CBOR offset {at})")
            return code

        f = read_struct(r, "OneTimeCode", ((1, "code", read_code, True),))
        return cls(f["code"])

    @classmethod
    def decode(cls, data: bytes) -> "OneTimeCode":
        return decode_whole(data, "OneTimeCode", cls.read)


# --- Medic ------------------------------------------------------------------------------


class MedicPing(NamedTuple):
    """
    The Medic's ping: C{[[key (bytes, 24)], ping (u64)]}, a CBOR array
    (struct not marked C{map}) sent as the message bytes themselves, with no
    BARE prefix.  Decoding skips extra array elements, as minicbor-derive
    does, and needs the first ones.
    """

    key: bytes
    ping: int

    def encode(self) -> bytes:
        key = _check_bytes(self.key, "a Medic key")
        if len(key) != MEDIC_KEY_LEN:
            raise WireError(f"a Medic key is {MEDIC_KEY_LEN} bytes, not {len(key)}")
        return dumps([[key], _check_int(self.ping, "a Medic ping", U64_MAX)])

    @classmethod
    def read(cls, r: CborReader) -> "MedicPing":
        values = _read_array_struct(r, "a Medic ping", (_read_medic_key, _read_u64))
        return cls(*values)

    @classmethod
    def decode(cls, data: bytes) -> "MedicPing":
        return decode_whole(data, "a Medic ping", cls.read)


def _read_array_struct(r: CborReader, what: str, readers) -> list:
    n = r.array_len(what)
    out = []
    for i in r.entries(n):
        if i < len(readers):
            out.append(readers[i](r, f"{what} element {i}"))
        else:
            r.skip()
    if len(out) < len(readers):
        raise WireError(f"{what} has {len(out)} elements; it needs {len(readers)}")
    return out


def _read_medic_key(r: CborReader, what: str) -> bytes:
    def read_bytes(r: CborReader, what: str) -> bytes:
        at = r.pos
        key = r.bytestring(what)
        if len(key) != MEDIC_KEY_LEN:
            raise WireError(f"{what} is {len(key)} bytes, not {MEDIC_KEY_LEN} (CBOR offset {at})")
        return key

    return _read_array_struct(r, what, (read_bytes,))[0]


# --- relays -------------------------------------------------------------------------------


def forwarder_address(name: str) -> str:
    """
    The address of the relay registered as C{name} at a project.
    """
    return FORWARDER_PREFIX + _check_text(name, "relay name")


def encode_relay_registration(name: str) -> bytes:
    """
    The registration message (and the project node's reply): BARE string
    C{name}.
    """
    return encode_string(_check_text(name, "relay name"))


def decode_relay_registration(payload: bytes) -> str:
    """
    What the project node reads: exactly one BARE string, UTF-8, no
    trailing bytes.
    """
    return _decode_bare_string(_check_bytes(payload, "a relay registration"))


def relay_reply_name(payload: bytes) -> bytes:
    """
    What a Rust client reads from a registration reply: a BARE byte string
    at the start (trailing bytes ignored); it accepts the reply when this
    equals its NAME as UTF-8.
    """
    payload = _check_bytes(payload, "a relay reply")
    n, pos = read_uvarint(payload, 0, len(payload))
    if pos + n > len(payload):
        raise WireError(f"a relay reply declares {n} bytes but {len(payload) - pos} follow its length")
    return payload[pos : pos + n]
