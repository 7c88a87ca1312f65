"""
The one place where ockamtw reads what Twisted keeps private.

Twisted has no public API for two things the data path needs:

  - how many bytes a socket transport holds and has not handed to the
    kernel yet (L{unsent}: flow control counts them as not consumed);
  - whether a plain TCP transport holds nothing, so that a write can go to
    its socket at once (L{idle_socket}: the send-now fast path).

Each reads C{twisted.internet.abstract.FileDescriptor}'s and
C{twisted.internet.tcp.Connection}'s attributes, and falls back (C{None})
for any transport without them (TLS, StringTransport, another reactor's),
so callers then use the public path.  L{tests.test_twisted_internals}
checks both sides: real Twisted TCP transports give figures, others the
fallback.
"""

from __future__ import annotations

from typing import Optional


def unsent(transport) -> Optional[int]:
    """
    Bytes a Twisted socket transport holds and has not handed to the
    kernel yet (its C{FileDescriptor} write buffers), what an in-process
    stream says in its C{unsent_bytes} (L{ockamtw.portal.pipe}), or C{None}
    for a transport that does not say.
    """
    try:
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    except (AttributeError, TypeError):
        pending = getattr(transport, "unsent_bytes", None)
        return pending if type(pending) is int else None


def idle_socket(transport):
    """
    The socket of a plain Twisted TCP transport (no TLS) that is connected,
    not closing and holds nothing unsent; otherwise C{None}.
    """
    try:
        if (
            transport.TLS is False
            and transport.connected
            and not transport.disconnecting
            and not transport._writeDisconnected
            and unsent(transport) == 0
        ):
            return transport.socket
    except AttributeError:  # another kind of transport
        pass
    return None
