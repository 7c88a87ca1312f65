"""
CBOR as minicbor 0.19 writes and reads it (section 2 of
C{shared/spec/ockam-project-api.md}).

Writing: L{dumps} hands plain values to C{cbor2}, which writes exactly what
minicbor writes for them: definite lengths, shortest integers, C{dict}s in
insertion order (so a caller lists a struct's fields in declaration order
and leaves out the C{None} ones), C{str} as text (major 3), C{bytes} as byte
strings (major 2), C{bool} as C{f4}/C{f5}.  Nothing else is accepted.

Reading: L{CborReader} is a typed cursor in the style of minicbor's
C{Decoder} (C{u32()}, C{text()}, C{map_len()}, C{skip()} ...).  It is
hand-written rather than C{cbor2.loads} because a decoder of these messages
must see the major type of every item: cbor2 turns tagged items into other
values (tag 2 into an integer, tag 55799 into the item itself), which
minicbor would refuse where it expects an integer or a string.  Like
minicbor it accepts definite and indefinite lengths and non-shortest
integer encodings, and skips any well-formed item (tags included) where a
struct has no field.  Every failure is a L{WireError} that says what was
expected and at which offset.

L{loads} decodes one whole item into Python values (for tests, diagnostics
and Elixir's text error bodies); the message codecs use the typed cursor.
"""

from __future__ import annotations

import struct
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Tuple

import cbor2

from ..errors import WireError

__all__ = [
    "U32_MAX",
    "U64_MAX",
    "MAX_DEPTH",
    "CborTag",
    "CborReader",
    "dumps",
    "loads",
    "item_end",
    "split_items",
    "read_struct",
    "decode_whole",
    "UNDEFINED",
]

U32_MAX = 0xFFFFFFFF
U64_MAX = 0xFFFFFFFFFFFFFFFF
#: Nesting deeper than this is refused (no message here nests beyond 4).
MAX_DEPTH = 64

# major types
UINT, NINT, BYTES, TEXT, ARRAY, MAP, TAG, SIMPLE = range(8)
_MAJOR_NAMES = (
    "an unsigned integer",
    "a negative integer",
    "a byte string",
    "a text string",
    "an array",
    "a map",
    "a tag",
    "a simple value or float",
)
_BREAK = 0xFF


def _type_name(initial: int) -> str:
    if initial == _BREAK:
        return "a break"
    if initial in (0xF4, 0xF5):
        return "a bool"
    if initial == 0xF6:
        return "null"
    if initial == 0xF7:
        return "undefined"
    if initial in (0xF9, 0xFA, 0xFB):
        return "a float"
    major, info = initial >> 5, initial & 0x1F
    name = _MAJOR_NAMES[major]
    if info == 31 and major in (BYTES, TEXT, ARRAY, MAP):
        name += " (indefinite length)"
    return name


class CborTag:
    """
    A tagged item as L{loads} returns it (no tag is interpreted).
    """

    __slots__ = ("tag", "value")

    def __init__(self, tag: int, value: Any) -> None:
        self.tag = tag
        self.value = value

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CborTag):
            return (self.tag, self.value) == (other.tag, other.value)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.tag, _hashable(self.value)))

    def __repr__(self) -> str:
        return f"CborTag({self.tag}, {self.value!r})"


class _Undefined:
    __slots__ = ()

    def __repr__(self) -> str:
        return "undefined"


UNDEFINED = _Undefined()


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple((_hashable(k), _hashable(v)) for k, v in value.items())
    return value


# --- writing ------------------------------------------------------------------


def _check_value(value: Any, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise WireError(f"CBOR value nested deeper than {MAX_DEPTH}")
    if value is None or isinstance(value, (bool, str, bytes)):
        return
    if isinstance(value, int):
        if not -(1 << 64) <= value <= U64_MAX:
            raise WireError(f"integer {value} does not fit CBOR's 64-bit major types 0 and 1")
        return
    if isinstance(value, (list, tuple)):
        for v in value:
            _check_value(v, depth + 1)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            _check_value(k, depth + 1)
            _check_value(v, depth + 1)
        return
    raise WireError(f"cannot write {type(value).__name__} as CBOR here (only int, bool, str, bytes, list, dict, None)")


def dumps(value: Any) -> bytes:
    """
    The CBOR of C{value} as minicbor writes it: definite lengths, shortest
    integers, maps in the C{dict}'s order.

    @param value: built only of C{int} (-2**64 to 2**64-1), C{bool},
        C{str}, C{bytes}, C{list}/C{tuple}, C{dict} and C{None} (null).
    @raise WireError: for anything else (a C{bytearray}, a float, an integer
        out of range, a string with lone surrogates).
    """
    _check_value(value)
    try:
        return cbor2.dumps(value)
    except (cbor2.CBOREncodeError, UnicodeEncodeError, ValueError, TypeError) as e:
        raise WireError(f"cannot encode CBOR: {e}") from None


# --- reading ------------------------------------------------------------------


class CborReader:
    """
    A cursor over CBOR bytes with minicbor's typed reads.

    Each read checks the major type and raises L{WireError} naming C{what}
    and the offset when the item is of another type, truncated or malformed.
    """

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, pos: int = 0, end: Optional[int] = None) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise WireError(f"CBOR is bytes, not {type(data).__name__}")
        self.data = bytes(data)
        self.pos = pos
        self.end = len(self.data) if end is None else end

    # --- low level -------------------------------------------------------

    def at_end(self) -> bool:
        return self.pos >= self.end

    def remaining(self) -> int:
        return self.end - self.pos

    def _fail(self, message: str, at: Optional[int] = None) -> WireError:
        return WireError(f"{message} (CBOR offset {self.pos if at is None else at})")

    def peek(self) -> int:
        """
        The initial byte of the next item, not consumed.
        """
        if self.pos >= self.end:
            raise self._fail("truncated CBOR: an item is missing")
        return self.data[self.pos]

    def _take(self, n: int, what: str) -> bytes:
        if n > self.end - self.pos:
            raise self._fail(f"truncated CBOR: {what} needs {n} bytes, {self.end - self.pos} left")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def _argument(self, info: int, at: int) -> Optional[int]:
        """
        The argument of an initial byte with additional information C{info}
        (the byte itself already consumed); C{None} for indefinite (31).
        """
        if info < 24:
            return info
        if info == 24:
            return self._take(1, "an argument")[0]
        if info == 25:
            return struct.unpack(">H", self._take(2, "an argument"))[0]
        if info == 26:
            return struct.unpack(">I", self._take(4, "an argument"))[0]
        if info == 27:
            return struct.unpack(">Q", self._take(8, "an argument"))[0]
        if info == 31:
            return None
        raise self._fail(f"malformed CBOR: reserved additional information {info}", at)

    def _head(self, expected: int, what: str) -> Optional[int]:
        """
        Consume the head of an item of major type C{expected}; return its
        argument (C{None} when indefinite).
        """
        at = self.pos
        initial = self.peek()
        if initial >> 5 != expected or initial == _BREAK:
            raise self._fail(f"{what}: expected {_MAJOR_NAMES[expected]}, found {_type_name(initial)}")
        self.pos += 1
        return self._argument(initial & 0x1F, at)

    # --- typed reads -----------------------------------------------------

    def uint(self, what: str, maximum: int = U64_MAX) -> int:
        """
        An unsigned integer (major 0) no larger than C{maximum}.
        """
        at = self.pos
        value = self._head(UINT, what)
        if value is None:
            raise self._fail(f"{what}: malformed CBOR integer (indefinite length)", at)
        if value > maximum:
            raise self._fail(f"{what}: {value} is larger than {maximum}", at)
        return value

    def u32(self, what: str) -> int:
        return self.uint(what, U32_MAX)

    def u64(self, what: str) -> int:
        return self.uint(what, U64_MAX)

    def boolean(self, what: str) -> bool:
        initial = self.peek()
        if initial == 0xF4:
            self.pos += 1
            return False
        if initial == 0xF5:
            self.pos += 1
            return True
        raise self._fail(f"{what}: expected a bool, found {_type_name(initial)}")

    def is_null(self) -> bool:
        """
        Consume a null (C{f6}) if one is next: minicbor reads it as C{None}
        for an C{Option}.
        """
        if self.pos < self.end and self.data[self.pos] == 0xF6:
            self.pos += 1
            return True
        return False

    def _string(self, major: int, what: str) -> bytes:
        n = self._head(major, what)
        if n is not None:
            return self._take(n, what)
        chunks = []
        while True:
            if self.peek() == _BREAK:
                self.pos += 1
                return b"".join(chunks)
            chunk_at = self.pos
            initial = self.peek()
            if initial >> 5 != major or initial & 0x1F == 31:
                raise self._fail(
                    f"{what}: a chunk of an indefinite {_MAJOR_NAMES[major][2:]} must be a definite "
                    f"{_MAJOR_NAMES[major][2:]}, found {_type_name(initial)}",
                    chunk_at,
                )
            chunks.append(self._string(major, what))

    def bytestring(self, what: str) -> bytes:
        """
        A byte string (major 2), definite or indefinite.
        """
        return self._string(BYTES, what)

    def text(self, what: str) -> str:
        """
        A text string (major 3), definite or indefinite, valid UTF-8.
        """
        at = self.pos
        raw = self._string(TEXT, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self._fail(f"{what}: text string is not UTF-8 ({e.reason})", at) from None

    def _container(self, major: int, what: str) -> Optional[int]:
        at = self.pos
        n = self._head(major, what)
        if n is not None:
            per_entry = 2 if major == MAP else 1
            if n > (self.end - self.pos) // per_entry:
                raise self._fail(
                    f"truncated CBOR: {what} declares {n} entries, only {self.end - self.pos} bytes left", at
                )
        return n

    def map_len(self, what: str) -> Optional[int]:
        """
        The head of a map: its number of entries, or C{None} when it is
        indefinite (then iterate with L{entries}).
        """
        return self._container(MAP, what)

    def array_len(self, what: str) -> Optional[int]:
        """
        The head of an array (see L{map_len}).
        """
        return self._container(ARRAY, what)

    def entries(self, n: Optional[int]) -> Iterator[int]:
        """
        Iterate over the entries of a container whose head gave C{n}: C{n}
        times, or until the break of an indefinite one (consumed).
        """
        if n is not None:
            yield from range(n)
            return
        i = 0
        while True:
            if self.peek() == _BREAK:
                self.pos += 1
                return
            yield i
            i += 1

    def skip(self, depth: int = 0) -> None:
        """
        Skip one well-formed item of any type, tags included.
        """
        if depth > MAX_DEPTH:
            raise self._fail(f"CBOR nested deeper than {MAX_DEPTH}")
        at = self.pos
        initial = self.peek()
        if initial == _BREAK:
            raise self._fail("malformed CBOR: unexpected break")
        major, info = initial >> 5, initial & 0x1F
        self.pos += 1
        if major in (UINT, NINT):
            if self._argument(info, at) is None:
                raise self._fail("malformed CBOR: indefinite-length integer", at)
        elif major in (BYTES, TEXT):
            self.pos = at
            self._string(major, "a skipped string")
        elif major in (ARRAY, MAP):
            self.pos = at
            n = self._container(major, "a skipped container")
            per = 2 if major == MAP else 1
            for _ in self.entries(n):
                for _ in range(per):
                    self.skip(depth + 1)
        elif major == TAG:
            if self._argument(info, at) is None:
                raise self._fail("malformed CBOR: indefinite-length tag", at)
            self.skip(depth + 1)
        else:  # simple values and floats
            if info == 24:
                self._take(1, "a simple value")
            elif info in (25, 26, 27):
                self._take(1 << (info - 24), "a float")
            elif info >= 28:
                raise self._fail(f"malformed CBOR: reserved additional information {info}", at)

    def item(self) -> bytes:
        """
        The bytes of the next item, skipped.
        """
        start = self.pos
        self.skip()
        return self.data[start : self.pos]

    def expect_end(self, what: str) -> None:
        if self.pos != self.end:
            raise self._fail(f"{self.end - self.pos} bytes follow {what}")

    # --- untyped values ----------------------------------------------------

    def value(self, depth: int = 0) -> Any:
        """
        The next item as a Python value: C{int}, C{bytes}, C{str}, C{list},
        C{dict} (keys made hashable: lists become tuples), C{bool}, C{None},
        L{UNDEFINED}, C{float}, L{CborTag}, or C{("simple", n)}.
        """
        if depth > MAX_DEPTH:
            raise self._fail(f"CBOR nested deeper than {MAX_DEPTH}")
        at = self.pos
        initial = self.peek()
        if initial == _BREAK:
            raise self._fail("malformed CBOR: unexpected break")
        major, info = initial >> 5, initial & 0x1F
        if major == UINT:
            return self.uint("an integer")
        if major == NINT:
            self.pos += 1
            n = self._argument(info, at)
            if n is None:
                raise self._fail("malformed CBOR: indefinite-length integer", at)
            return -1 - n
        if major == BYTES:
            return self.bytestring("a byte string")
        if major == TEXT:
            return self.text("a text string")
        if major == ARRAY:
            n = self.array_len("an array")
            return [self.value(depth + 1) for _ in self.entries(n)]
        if major == MAP:
            n = self.map_len("a map")
            out = {}
            for _ in self.entries(n):
                k = _hashable(self.value(depth + 1))
                out[k] = self.value(depth + 1)
            return out
        if major == TAG:
            self.pos += 1
            tag = self._argument(info, at)
            if tag is None:
                raise self._fail("malformed CBOR: indefinite-length tag", at)
            return CborTag(tag, self.value(depth + 1))
        self.pos += 1
        if info == 20:
            return False
        if info == 21:
            return True
        if info == 22:
            return None
        if info == 23:
            return UNDEFINED
        if info < 20:
            return ("simple", info)
        if info == 24:
            return ("simple", self._take(1, "a simple value")[0])
        if info == 25:
            return struct.unpack(">e", self._take(2, "a float"))[0]
        if info == 26:
            return struct.unpack(">f", self._take(4, "a float"))[0]
        if info == 27:
            return struct.unpack(">d", self._take(8, "a float"))[0]
        raise self._fail(f"malformed CBOR: reserved additional information {info}", at)


def loads(data: bytes) -> Any:
    """
    One whole CBOR item as a Python value (see L{CborReader.value}).

    @raise WireError: when C{data} is not exactly one well-formed item.
    """
    r = CborReader(data)
    value = r.value()
    r.expect_end("the CBOR item")
    return value


def item_end(data: bytes, pos: int = 0) -> int:
    """
    The offset just past the well-formed item that starts at C{pos}.
    """
    r = CborReader(data, pos)
    r.skip()
    return r.pos


def split_items(data: bytes) -> Tuple[bytes, ...]:
    """
    C{data} cut into its consecutive well-formed items.
    """
    out = []
    r = CborReader(data)
    while not r.at_end():
        out.append(r.item())
    return tuple(out)


# --- structs as minicbor-derive reads them -------------------------------------

#: A field of a C{#[cbor(map)]} struct: (key, Python name, reader, required);
#: the reader is called with the cursor and a description of the field.
Field = Tuple[int, str, Callable[["CborReader", str], Any], bool]


def read_struct(r: CborReader, what: str, fields: Iterable[Field]) -> Dict[str, Any]:
    """
    Read a map-shaped struct the way minicbor-derive does: keys are unsigned
    integers, unknown keys are skipped, a repeated key overwrites, a
    required field that is absent is an error; an optional field holding
    null reads as absent.
    """
    by_key = {f[0]: f for f in fields}
    n = r.map_len(what)
    out: Dict[str, Any] = {}
    for _ in r.entries(n):
        key = r.u64(f"a key of {what}")
        field = by_key.get(key)
        if field is None:
            r.skip()
            continue
        _, name, read, required = field
        where = f"{what} field {key} ({name})"
        if not required and r.is_null():
            out.pop(name, None)
            continue
        out[name] = read(r, where)
    for key, name, _, required in by_key.values():
        if required and name not in out:
            raise WireError(f"{what} lacks its field {key} ({name})")
    return out


def decode_whole(data, what: str, read: Callable[["CborReader"], Any]):
    """
    C{read} over a cursor on C{data}, which must hold nothing after the
    item it reads.
    """
    r = CborReader(data)
    value = read(r)
    r.expect_end(what)
    return value
