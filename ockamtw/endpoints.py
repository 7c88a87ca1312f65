"""
Endpoint strings from what users type: a bare port, C{host:port},
C{[v6]:port}, C{1#host:port}, or a Twisted endpoint string
(C{tcp:7000:interface=0.0.0.0}, C{unix:/path}).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
from typing import Union

from .errors import WireError

# Twisted's endpoints module (and through it TLS and cryptography) is
# imported by the functions that need it: the command line splits host and
# port with this module and starts without Twisted.

#: Endpoint-string prefixes that are not endpoint plugins but host names.
_HOSTPORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.\-_]+)):(?P<port>\d{1,5})$")


def split_hostport(text: str):
    """
    C{"host:port"} or C{"[v6]:port"} to (host, port), or C{None} when the
    text is not of that shape.
    """
    m = _HOSTPORT.match(text.strip())
    if m is None:
        return None
    port = int(m.group("port"))
    if port > 65535:
        raise WireError(f"port {port} in {text!r} is above 65535")
    return (m.group("v6") or m.group("host"), port)


#: The listen backlog of listeners given as a port or host:port (Twisted's
#: default of 50 drops bursts of new connections).
LISTEN_BACKLOG = 1024

#: Endpoint types that "NAME:PORT" could mean; any other NAME is a host.
_ENDPOINT_TYPES = frozenset(["tcp", "tcp6", "unix", "ssl", "tls", "systemd", "onion", "tor", "le", "lets"])


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def server_description(text: Union[str, int]) -> str:
    """
    A server endpoint string for what a user typed: a bare port means
    loopback (C{7000} -> C{tcp:7000:interface=127.0.0.1:backlog=1024}), C{host:port}
    binds that host, anything else is an endpoint string already.
    """
    text = str(text).strip()
    if text.isascii() and text.isdigit():
        if int(text) > 65535:
            raise WireError(f"port {text} is above 65535")
        return f"tcp:{int(text)}:interface=127.0.0.1:backlog={LISTEN_BACKLOG}"
    hp = split_hostport(text)
    if hp is not None and (text.startswith("[") or hp[0] not in _ENDPOINT_TYPES):
        host, port = hp
        kind = "tcp6" if ":" in host else "tcp"
        return f"{kind}:{port}:interface={_escape(host)}:backlog={LISTEN_BACKLOG}"
    if ":" not in text:
        raise WireError(f"not a port, host:port or endpoint string: {text!r}")
    return text


def client_target(text: str, hostport_only: bool = False):
    """
    Parse a connect target: C{host:port}, C{[v6]:port}, C{1#host:port} or a
    client endpoint string.  Returns C{("hostport", host, port)} or
    C{("endpoint", description)}.

    With C{hostport_only} (a TCP hop named in a route), endpoint strings
    (C{unix:/path}, ...) are refused.
    """
    text = text.strip()
    if text.startswith("1#"):
        text = text[2:]
    hp = split_hostport(text)
    if hp is not None and (text.startswith("[") or hp[0] not in _ENDPOINT_TYPES):
        if hp[1] == 0:
            raise WireError(f"port 0 in {text!r} is not a port to connect to")
        return ("hostport", hp[0], hp[1])
    if hostport_only:
        raise WireError(f"a TCP address in a route is HOST:PORT, not {text!r}")
    if ":" not in text:
        raise WireError(f"not host:port or an endpoint string: {text!r}")
    return ("endpoint", text)


def client_endpoint(reactor, target: str, timeout: float = 10.0, hostport_only: bool = False):
    """
    A client endpoint for C{target} (see L{client_target}) and the
    C{host:port} key it is known by.

    @raise WireError: for a target that is neither.
    """
    from twisted.internet import endpoints

    kind = client_target(target, hostport_only)
    if kind[0] == "hostport":
        _, host, port = kind
        key = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        # An IP literal needs no name resolution (HostnameEndpoint would
        # still run getaddrinfo on a thread, and wait 0.3 s between
        # attempts at a refused address).
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            return endpoints.HostnameEndpoint(reactor, host, port, timeout=timeout), key
        cls = endpoints.TCP6ClientEndpoint if literal.version == 6 else endpoints.TCP4ClientEndpoint
        return cls(reactor, host, port, timeout=timeout), key
    try:
        return endpoints.clientFromString(reactor, kind[1]), kind[1]
    except (ValueError, TypeError, KeyError) as e:
        raise WireError(f"bad endpoint {target!r}: {e}") from None


def cancelled(failure) -> bool:
    """
    Whether a connection attempt failed because it was cancelled: with
    Deferred's C{CancelledError}, or with the C{ConnectingCancelledError}
    that a Twisted client endpoint's C{connect()} fails with when it is
    cancelled (not a C{CancelledError}).
    """
    from twisted.internet.defer import CancelledError
    from twisted.internet.error import ConnectingCancelledError

    return failure.check(CancelledError, ConnectingCancelledError) is not None


def reason(failure_or_error) -> str:
    """
    Why a listen or a connection failed, as a user reads it: the system's
    words for the error (C{Address already in use}, C{Connection refused})
    without Twisted's wrapping, which repeats the address the caller
    already names (C{Couldn't listen on 127.0.0.1:7000: [Errno 98] ...}).
    """
    from twisted.internet import error

    e = getattr(failure_or_error, "value", failure_or_error)
    if isinstance(e, error.CannotListenError):
        inner = e.socketError
        if isinstance(inner, OSError) and inner.strerror:
            return inner.strerror
        return str(inner) if inner is not None else "cannot listen"
    if isinstance(e, error.DNSLookupError):
        return "no such host"
    if isinstance(e, error.TimeoutError):
        return "timed out"
    if isinstance(e, error.ConnectError):
        text = e.args[0] if e.args else ""
        if text:
            return str(text).rstrip(".")
        code = e.osError
        if isinstance(code, int) and code in errno.errorcode:
            return os.strerror(code)
        return getattr(e, "MESSAGE", "") or type(e).__name__
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__
