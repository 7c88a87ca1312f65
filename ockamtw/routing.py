"""
Addresses, routes and the MultiAddr text users type.

An L{Address} is a transport type (0 = local worker, 1 = TCP, ...) and a
value.  A L{Route} is an immutable sequence of addresses.  Their text forms
are C{TYPE#VALUE} and addresses joined by C{" => "}.

A L{MultiAddr} is the route text of the command line and of Ockam's
documentation (C{/ip4/127.0.0.1/tcp/7000/service/echo}); it is parsed into
components here and resolved into a L{Route} by the node, which alone knows
how to reach C{/node/...} or C{/ip4/...}.

Nothing here imports the node or a transport.  Bad input raises
L{ockamtw.errors.WireError}.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Iterable, Iterator, NamedTuple, Union, overload

from .errors import WireError

LOCAL = 0
TCP = 1
UDP = 2
WEBSOCKET = 3
BLE = 4

_MAX_TYPE = 255


def uvarint(n: int) -> bytes:
    """
    The BARE uvarint (unsigned LEB128) of C{n}, unchecked: the one encoder
    of the codec (L{ockamtw.wire} re-exports it and checks ranges in
    L{ockamtw.wire.encode_uvarint}).  It lives here because an
    L{Address} and a L{Route} carry their own BARE encoding.
    """
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class Address:
    """
    One hop of a route: a transport type and a value.

    Equal addresses hash equal; instances are immutable.  C{str()} gives the
    C{TYPE#VALUE} text that L{Address.parse} reads back.

    @ivar type: the transport type, 0 to 255 (L{LOCAL}, L{TCP}, ...).
    @ivar value: the address as text.  Bytes that are not UTF-8 survive a
        decode/encode round trip (they are kept as surrogate escapes).
    """

    __slots__ = ("type", "value", "_encoded", "_hash")

    type: int
    value: str

    def __init__(self, type: int, value: str) -> None:
        if not isinstance(type, int) or not 0 <= type <= _MAX_TYPE:
            raise WireError(f"address type must be an integer 0-255, not {type!r}")
        if isinstance(value, bytes):
            value = value.decode("utf-8", "surrogateescape")
        elif not isinstance(value, str):
            raise WireError(f"address value must be text, not {value!r}")
        try:
            raw = value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise WireError(f"address value {value!r} cannot be encoded (lone surrogate)") from None
        object.__setattr__(self, "type", type)
        object.__setattr__(self, "value", value)
        object.__setattr__(self, "_encoded", bytes((type,)) + uvarint(len(raw)) + raw)
        object.__setattr__(self, "_hash", None)

    @classmethod
    def _from_wire(cls, type: int, value: str, encoded: bytes) -> "Address":
        self = object.__new__(cls)
        object.__setattr__(self, "type", type)
        object.__setattr__(self, "value", value)
        object.__setattr__(self, "_encoded", encoded)
        object.__setattr__(self, "_hash", None)
        return self

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Address is immutable")

    @classmethod
    def local(cls, value: str) -> "Address":
        """
        A local (type 0) address.
        """
        return cls(LOCAL, value)

    @classmethod
    def tcp(cls, host: str, port: int) -> "Address":
        """
        A TCP (type 1) address for C{host:port}; IPv6 hosts are bracketed.
        """
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return cls(TCP, f"{host}:{port}")

    @classmethod
    def random_local(cls) -> "Address":
        """
        A fresh local address: 16 random bytes as 32 lowercase hex characters.
        """
        return cls(LOCAL, os.urandom(16).hex())

    @classmethod
    def parse(cls, text: Union[str, "Address"]) -> "Address":
        """
        Parse C{TYPE#VALUE} text; text without C{#} is a local address.

        @raise WireError: for empty text or a type that is not 0-255.
        """
        if isinstance(text, Address):
            return text
        if not isinstance(text, str):
            raise WireError(f"an address is text, not {text!r}")
        text = text.strip()
        head, sep, tail = text.partition("#")
        if sep and head.isascii() and head.isdigit():
            t = int(head)
            if t > _MAX_TYPE:
                raise WireError(f"address type {t} in {text!r} is not 0-255")
            value = tail
        elif sep and head == "":
            raise WireError(f"address {text!r} has no type before '#'")
        else:
            t, value = LOCAL, text
        if value == "":
            raise WireError(f"address {text!r} has an empty value")
        return cls(t, value)

    def encode(self) -> bytes:
        """
        The BARE encoding: type byte, uvarint length, value bytes.
        """
        enc = self._encoded
        if enc is None:
            raw = self.value.encode("utf-8", "surrogateescape")
            enc = bytes((self.type,)) + uvarint(len(raw)) + raw
            object.__setattr__(self, "_encoded", enc)
        return enc

    def __eq__(self, other: object) -> bool:
        if other.__class__ is Address:
            return self.type == other.type and self.value == other.value  # type: ignore[attr-defined]
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        r = self.__eq__(other)
        return r if r is NotImplemented else not r

    def __hash__(self) -> int:
        h = self._hash
        if h is None:
            h = hash((self.type, self.value))
            object.__setattr__(self, "_hash", h)
        return h

    def __str__(self) -> str:
        return f"{self.type}#{self.value}"

    def __repr__(self) -> str:
        return f"Address({str(self)!r})"

    def __reduce__(self):
        return (Address, (self.type, self.value))


def _as_address(a: Union[Address, str]) -> Address:
    if a.__class__ is Address:
        return a  # type: ignore[return-value]
    if isinstance(a, str):
        return Address.parse(a)
    raise WireError(f"not an address: {a!r}")


class Route(tuple):
    """
    An immutable sequence of L{Address}es.

    C{Route([a, b])} accepts addresses or their text; C{Route.parse} reads
    the C{" => "} text form that C{str()} gives.  Slicing gives a Route.
    """

    __slots__ = ()

    def __new__(cls, addresses: Iterable[Union[Address, str]] = ()) -> "Route":
        if addresses.__class__ is Route:
            return addresses  # type: ignore[return-value]
        if isinstance(addresses, str):
            return cls.parse(addresses)
        if isinstance(addresses, Address):
            return tuple.__new__(cls, (addresses,))
        return tuple.__new__(cls, [_as_address(a) for a in addresses])

    @classmethod
    def _trusted(cls, addresses: Iterable[Address]) -> "Route":
        return tuple.__new__(cls, addresses)

    @classmethod
    def parse(cls, text: Union[str, "Route"]) -> "Route":
        """
        Parse C{"1#127.0.0.1:4000 => 0#printer"}; empty text is the empty
        route.

        @raise WireError: for an empty hop or a bad address.
        """
        if isinstance(text, Route):
            return text
        if not isinstance(text, str):
            raise WireError(f"a route is text, not {text!r}")
        if text.strip() == "":
            return cls._trusted(())
        parts = text.split("=>")
        return cls._trusted([Address.parse(p) for p in parts])

    @overload
    def __getitem__(self, i: int) -> Address: ...

    @overload
    def __getitem__(self, i: slice) -> "Route": ...

    def __getitem__(self, i):
        r = tuple.__getitem__(self, i)
        if isinstance(i, slice):
            return Route._trusted(r)
        return r

    def __add__(self, other: Iterable[Union[Address, str]]) -> "Route":  # type: ignore[override]
        return Route._trusted(tuple.__add__(self, Route(other)))

    def __radd__(self, other: Iterable[Union[Address, str]]) -> "Route":
        return Route._trusted(tuple.__add__(Route(other), self))

    def prepend(self, address: Union[Address, str]) -> "Route":
        """
        A new route with C{address} first.
        """
        if address.__class__ is not Address:
            address = _as_address(address)
        return tuple.__new__(Route, (address, *self))

    def append(self, address: Union[Address, str]) -> "Route":  # type: ignore[override]
        """
        A new route with C{address} last.
        """
        return Route._trusted(tuple(self) + (_as_address(address),))

    def step(self) -> "Route":
        """
        This route without its first address.
        """
        return Route._trusted(tuple.__getitem__(self, slice(1, None)))

    def encode(self) -> bytes:
        """
        The BARE encoding: uvarint count, then each address.
        """
        return uvarint(len(self)) + b"".join([a.encode() for a in self])

    def __str__(self) -> str:
        return " => ".join(str(a) for a in self)

    def __repr__(self) -> str:
        return f"Route({str(self)!r})"

    def __reduce__(self):
        return (Route, (tuple(self),))


# --- MultiAddr ---------------------------------------------------------------

#: Protocols of the MultiAddr text, in Ockam's spelling.
TRANSPORT_HOSTS = ("ip4", "ip6", "dnsaddr")
PROTOCOLS = ("ip4", "ip6", "dnsaddr", "tcp", "service", "worker", "node", "project", "secure")


class Component(NamedTuple):
    """
    One C{/protocol/value} pair of a MultiAddr.
    """

    protocol: str
    value: str

    def __str__(self) -> str:
        return f"/{self.protocol}/{self.value}"


class Hop(NamedTuple):
    """
    One hop of a MultiAddr as later layers resolve it.

    C{kind} is one of C{"tcp"} (C{host}, C{port} set), C{"local"} (C{name}:
    a service or worker address), C{"node"}, C{"project"} or C{"secure"}
    (C{name}).
    """

    kind: str
    name: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.kind == "tcp":
            return f"{self.host}:{self.port}"
        return f"{self.kind}:{self.name}"


def _check_port(text: str, whole: str) -> int:
    if not (text.isascii() and text.isdigit()) or (len(text) > 1 and text[0] == "0"):
        raise WireError(f"bad TCP port {text!r} in {whole!r}")
    port = int(text)
    if port > 65535:
        raise WireError(f"TCP port {port} in {whole!r} is above 65535")
    return port


class MultiAddr:
    """
    Parsed MultiAddr text such as C{/ip4/127.0.0.1/tcp/7000/service/echo}.

    C{str()} prints the text back unchanged.  L{hops} groups the components
    into what a node resolves: TCP hops, local addresses, C{/node/N},
    C{/project/P} and C{/secure/X}.
    """

    __slots__ = ("components", "_hops")

    def __init__(self, components: Iterable[Component]) -> None:
        comps = tuple(Component(*c) for c in components)
        self.components = comps
        self._hops = self._group(comps, self.text_of(comps))

    @staticmethod
    def text_of(components: Iterable[Component]) -> str:
        return "".join(str(c) for c in components)

    @classmethod
    def parse(cls, text: Union[str, "MultiAddr"]) -> "MultiAddr":
        """
        Parse MultiAddr text.

        @raise WireError: for unknown protocols, missing values, a bad IP
            address or port, or a host without its C{/tcp/PORT}.
        """
        if isinstance(text, MultiAddr):
            return text
        if not isinstance(text, str):
            raise WireError(f"a MultiAddr is text, not {text!r}")
        whole = text.strip()
        if not whole.startswith("/"):
            raise WireError(f"a MultiAddr starts with '/': {whole!r}")
        parts = whole[1:].split("/")
        if len(parts) % 2:
            raise WireError(f"MultiAddr {whole!r} has a protocol without a value")
        comps = []
        for i in range(0, len(parts), 2):
            proto, value = parts[i], parts[i + 1]
            if proto not in PROTOCOLS:
                raise WireError(
                    f"unknown protocol {proto!r} in MultiAddr {whole!r} "
                    f"(known: {', '.join(PROTOCOLS)})"
                )
            if value == "":
                raise WireError(f"empty value for /{proto} in MultiAddr {whole!r}")
            comps.append(Component(proto, value))
        return cls(comps)

    @staticmethod
    def _group(comps: tuple, whole: str) -> tuple:
        hops = []
        i = 0
        while i < len(comps):
            proto, value = comps[i]
            if proto in TRANSPORT_HOSTS:
                if i + 1 >= len(comps) or comps[i + 1].protocol != "tcp":
                    raise WireError(f"/{proto}/{value} must be followed by /tcp/PORT in {whole!r}")
                if proto == "ip4":
                    try:
                        ipaddress.IPv4Address(value)
                    except ValueError:
                        raise WireError(f"bad IPv4 address {value!r} in {whole!r}") from None
                elif proto == "ip6":
                    try:
                        ipaddress.IPv6Address(value)
                    except ValueError:
                        raise WireError(f"bad IPv6 address {value!r} in {whole!r}") from None
                port = _check_port(comps[i + 1].value, whole)
                hops.append(Hop("tcp", host=value, port=port))
                i += 2
                continue
            if proto == "tcp":
                raise WireError(f"/tcp/{value} must follow /ip4, /ip6 or /dnsaddr in {whole!r}")
            if proto in ("service", "worker"):
                hops.append(Hop("local", name=value))
            else:
                hops.append(Hop(proto, name=value))
            i += 1
        return tuple(hops)

    @property
    def hops(self) -> tuple:
        """
        The components grouped into L{Hop}s.
        """
        return self._hops

    def is_local_only(self) -> bool:
        """
        True when every hop is a plain local address (C{/service}, C{/worker}).
        """
        return all(h.kind == "local" for h in self._hops)

    def to_route(self) -> Route:
        """
        The route for a MultiAddr of TCP hops and local addresses only.

        TCP hops become C{1#host:port} addresses.

        @raise WireError: when it holds C{/node}, C{/project} or C{/secure},
            which only a node can resolve.
        """
        out = []
        for h in self._hops:
            if h.kind == "local":
                out.append(Address(LOCAL, h.name))
            elif h.kind == "tcp":
                out.append(Address.tcp(h.host, h.port))
            else:
                raise WireError(f"/{h.kind}/{h.name} needs a node to resolve it")
        return Route._trusted(out)

    def __iter__(self) -> Iterator[Component]:
        return iter(self.components)

    def __len__(self) -> int:
        return len(self.components)

    def __add__(self, other: "MultiAddr") -> "MultiAddr":
        return MultiAddr(self.components + MultiAddr.parse(other).components)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, MultiAddr):
            return self.components == other.components
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.components)

    def __str__(self) -> str:
        return self.text_of(self.components)

    def __repr__(self) -> str:
        return f"MultiAddr({str(self)!r})"


def parse_route_text(text: str) -> Union[Route, MultiAddr]:
    """
    Read what a user typed as a route: MultiAddr text when it starts with
    C{/}, else the C{" => "} route text.
    """
    if isinstance(text, (Route, MultiAddr)):
        return text
    if not isinstance(text, str):
        raise WireError(f"a route is text, not {text!r}")
    if text.strip().startswith("/"):
        return MultiAddr.parse(text)
    return Route.parse(text)
