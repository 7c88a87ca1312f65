"""
What remote peers can make a node hold through its TCP listeners, and how
long: accepted connections (in all and per peer address), the time to a
connection's first complete frame, the time a partial frame may wait
without any frame completing, the memory of partial frames in all; and TCP
keepalive timings, so that a peer that vanished without a FIN is noticed.

L{ConnectionLimits} holds the numbers; L{ConnectionGuard} (one per node,
C{node.tcp.guard}) applies them to accepted connections and counts what it
refused and closed.  The TCP transport calls it; see
L{ockamtw.transport.tcp}.  Outgoing connections (made by this node) are not
limited; they get the same keepalive, and one that stays silent writes a
heartbeat after L{HELLO_DELAY} seconds.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Dict, Optional

#: Accepted connections a node holds at most (C{--max-connections}), unless
#: half the process's open-file limit is lower (L{default_max_connections}).
MAX_CONNECTIONS = 4096
#: Accepted connections from one peer address (C{--max-connections-per-peer}):
#: an IPv4 address, or an IPv6 /64 (one host usually has a whole /64).
MAX_CONNECTIONS_PER_PEER = 256
#: Seconds from accept to the first complete frame (C{--first-frame-timeout}).
FIRST_FRAME_TIMEOUT = 30.0
#: Seconds a partial frame may wait while no frame completes on its
#: connection (C{--frame-timeout}).
FRAME_TIMEOUT = 30.0
#: Bytes of partial frames all accepted connections may hold together
#: (C{--partial-frame-budget}): 1024 frames of 64 KiB.
PARTIAL_FRAME_BUDGET = 64 * 1024 * 1024
#: TCP keepalive: the first probe after this many idle seconds, then one
#: every L{KEEPALIVE_INTERVAL} seconds; L{KEEPALIVE_COUNT} unanswered probes
#: close the connection: a vanished peer is noticed within 20 + 5 * 4 = 40 s.
KEEPALIVE_IDLE = 20
KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 4

#: Seconds after which an outgoing connection on which this node has
#: written nothing writes one heartbeat frame (L{ockamtw.wire.HEARTBEAT_FRAME}), so that a
#: peer's first-frame timeout does not close an idle link this node keeps
#: (an inlet connects early, C{ockam tcp-connection create} keeps one).
HELLO_DELAY = 1.0

#: L{ConnectionLimits}' C{max_connections} by default: see
#: L{default_max_connections}.
AUTO = "auto"

#: Reasons an accepted connection is refused, and why one is closed.
REFUSED_TOTAL = "max_connections"
REFUSED_PER_PEER = "max_connections_per_peer"
CLOSED_FIRST_FRAME = "first_frame_timeout"
CLOSED_FRAME = "frame_timeout"
CLOSED_BUDGET = "partial_frame_budget"


def half_open_files(most: int) -> int:
    """
    Half the process's soft limit on open files (at least 64), at most
    C{most} (C{most} without a limit): a limit on what holds descriptors
    must be reached before the process runs out of them, and the other
    half is left for everything else the node opens.
    """
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY or soft <= 0:
            return most
    except (ImportError, ValueError, OSError, AttributeError):
        return most
    return max(64, min(most, soft // 2))


def default_max_connections() -> int:
    """
    L{MAX_CONNECTIONS}, or half the soft limit on open files if that is
    lower (L{half_open_files}): the other half is left for what the node
    opens itself (outlets' and inlets' sockets, outgoing connections,
    files).
    """
    return half_open_files(MAX_CONNECTIONS)


class ConnectionLimits:
    """
    The limits on accepted connections; C{None} turns one off.

    @ivar max_connections: accepted connections in all.
    @ivar max_per_peer: accepted connections from one peer address.
    @ivar first_frame_timeout: seconds from accept to the first complete
        frame.
    @ivar frame_timeout: seconds a partial frame may wait while no frame
        completes (time this node itself paused reading does not count).
    @ivar partial_frame_budget: bytes of partial frames that all accepted
        connections may hold together.
    @ivar keepalive: (idle, interval, count) for TCP keepalive on every
        connection, or C{None} for the system's defaults.
    """

    def __init__(
        self,
        max_connections=AUTO,
        max_per_peer: Optional[int] = MAX_CONNECTIONS_PER_PEER,
        first_frame_timeout: Optional[float] = FIRST_FRAME_TIMEOUT,
        frame_timeout: Optional[float] = FRAME_TIMEOUT,
        partial_frame_budget: Optional[int] = PARTIAL_FRAME_BUDGET,
        keepalive=(KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT),
    ) -> None:
        self.max_connections = default_max_connections() if max_connections == AUTO else max_connections
        self.max_per_peer = max_per_peer
        self.first_frame_timeout = first_frame_timeout
        self.frame_timeout = frame_timeout
        self.partial_frame_budget = partial_frame_budget
        self.keepalive = keepalive

    def to_dict(self) -> dict:
        idle, interval, count = self.keepalive or (None, None, None)
        return {
            "max_connections": self.max_connections,
            "max_connections_per_peer": self.max_per_peer,
            "first_frame_timeout": self.first_frame_timeout,
            "frame_timeout": self.frame_timeout,
            "partial_frame_budget": self.partial_frame_budget,
            "keepalive_idle": idle,
            "keepalive_interval": interval,
            "keepalive_count": count,
        }


class Refused(Exception):
    """
    An accepted connection over a limit; C{reason} is one of the
    C{REFUSED_*} names, C{text} says it for a log line.
    """

    def __init__(self, reason: str, text: str) -> None:
        Exception.__init__(self, text)
        self.reason = reason
        self.text = text


def peer_key(addr) -> Optional[str]:
    """
    The address that C{--max-connections-per-peer} counts by: the IP of an
    IPv4 (or IPv4-mapped) peer, the /64 of an IPv6 one; C{None} for peers
    without an IP (a UNIX socket), which only the total limit counts.
    """
    host = getattr(addr, "host", None)
    if not isinstance(host, str) or not host:
        return None
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class ConnectionGuard:
    """
    Applies L{ConnectionLimits} to a node's accepted connections and counts
    what it refused and closed.  Assign C{limits} to change them; they
    apply to connections accepted from then on (and the budget and
    timeouts to all).
    """

    def __init__(self, limits: Optional[ConnectionLimits] = None) -> None:
        self.limits = limits if limits is not None else ConnectionLimits()
        #: accepted connections open now
        self.accepted = 0
        self._per_peer: Dict[Optional[str], int] = {}
        #: bytes of partial frames held by accepted connections now
        self.partial_bytes = 0
        self.refused: Dict[str, int] = {REFUSED_TOTAL: 0, REFUSED_PER_PEER: 0}
        self.closed: Dict[str, int] = {CLOSED_FIRST_FRAME: 0, CLOSED_FRAME: 0, CLOSED_BUDGET: 0}

    def admit(self, addr) -> Optional[str]:
        """
        Count a new accepted connection from C{addr}; returns the key to
        give L{release} when it closes.

        @raise Refused: when a limit is reached (nothing is counted but
            the refusal).
        """
        limits = self.limits
        key = peer_key(addr)
        if limits.max_connections is not None and self.accepted >= limits.max_connections:
            self.refused[REFUSED_TOTAL] += 1
            raise Refused(REFUSED_TOTAL, f"this node holds {self.accepted} accepted connections (--max-connections)")
        held = self._per_peer.get(key, 0)
        if key is not None and limits.max_per_peer is not None and held >= limits.max_per_peer:
            self.refused[REFUSED_PER_PEER] += 1
            raise Refused(
                REFUSED_PER_PEER, f"{held} connections from {key} are open (--max-connections-per-peer)"
            )
        self.accepted += 1
        self._per_peer[key] = held + 1
        return key

    def release(self, key: Optional[str]) -> None:
        """
        An admitted connection (C{key} from L{admit}) has closed.
        """
        self.accepted -= 1
        held = self._per_peer.get(key, 0) - 1
        if held > 0:
            self._per_peer[key] = held
        else:
            self._per_peer.pop(key, None)

    def connections_from(self, addr) -> int:
        """
        Accepted connections open now from C{addr}'s peer address.
        """
        return self._per_peer.get(peer_key(addr), 0)

    def over_budget(self) -> bool:
        budget = self.limits.partial_frame_budget
        return budget is not None and self.partial_bytes > budget

    def to_dict(self) -> dict:
        return {
            "accepted": self.accepted,
            "peers": len(self._per_peer) - (None in self._per_peer),
            "partial_frame_bytes": self.partial_bytes,
        }


def set_keepalive(transport, keepalive) -> bool:
    """
    Turn TCP keepalive on for C{transport} with C{keepalive} = (idle,
    interval, count) seconds and probes (C{None}: the system's timings).
    The timings are set where the platform has the options (Linux and
    others: C{TCP_KEEPIDLE}, C{TCP_KEEPINTVL}, C{TCP_KEEPCNT}; macOS:
    C{TCP_KEEPALIVE} for the idle time; Windows without them:
    C{SIO_KEEPALIVE_VALS}); elsewhere the system's own apply.  Returns
    whether keepalive is on.
    """
    try:
        transport.setTcpKeepAlive(True)
    except (AttributeError, OSError):
        return False
    if keepalive is None:
        return True
    try:
        sock = transport.getHandle()
    except AttributeError:
        return True
    if not isinstance(sock, socket.socket):
        return True
    idle, interval, count = keepalive
    idle_option = getattr(socket, "TCP_KEEPIDLE", None)
    if idle_option is None:
        idle_option = getattr(socket, "TCP_KEEPALIVE", None)  # macOS
    options = [(idle_option, idle), (getattr(socket, "TCP_KEEPINTVL", None), interval),
               (getattr(socket, "TCP_KEEPCNT", None), count)]
    if idle_option is None and hasattr(socket, "SIO_KEEPALIVE_VALS"):
        try:
            sock.ioctl(socket.SIO_KEEPALIVE_VALS, (1, int(idle * 1000), int(interval * 1000)))
        except (OSError, ValueError):
            pass
    for option, value in options:
        if option is None:
            continue
        try:
            sock.setsockopt(socket.IPPROTO_TCP, option, int(value))
        except OSError:
            pass
    return True
