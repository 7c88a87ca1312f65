"""
TCP portals (section 6 of docs/protocol.md): an inlet accepts TCP clients
and tunnels each one, as routed messages, to an outlet, which connects to
the real service.

Each tunnelled connection has one L{PortalWorker} on each side; it is a
routed worker and the owner of one socket at once.  Flow control: bytes
read from the socket are sent with the portal as their flow source, so a
congested link downstream pauses the socket; bytes written to the socket
pause the source of the messages that carried them while the socket's
buffer is full.

Between two ockamtw portals, flow control is per stream instead (see
"Per-stream flow control" in docs/protocol.md): each side grants the other
byte credit with Credit messages, a sender out of credit stops reading its
own socket, and a full socket no longer pauses the shared link, so one
stalled stream does not stall its neighbours.  Portal addresses end with
L{FLOW_MARK}, which is how two ockamtw ends recognise each other; with any
other peer (Ockam's Rust nodes) nothing changes on the wire.

Between two ockamtw portals a half-close is carried too ("Half-close" in
docs/protocol.md): a socket's end of file is sent as Eof after its last
Payload, and the other side shuts down the write side of its socket once it
has written everything, while the other direction goes on.  The portal ends
when both directions have ended (or on Disconnect or an error).  With other
peers an end of file is a Disconnect, as in Ockam 0.83.

Ending never cuts bytes that still move: a socket closed because the
stream ended is flushed until its reader stops reading for
L{PortalWorker.flush_grace} seconds (L{ockamtw.flow.Closer}).
"""

from __future__ import annotations

import collections
import os
import typing
from typing import Optional

from automat import TypeMachineBuilder
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from ..machines import indexed, transitions
from ..access import ANYONE, FromOrigin, Identities
from ..errors import MessageTooLarge, WireError
from ..flow import EARLY_MARK, FLOW_MARK, STREAM_WINDOW, TRANSPORT_BUFFER, BackPressure, Closer, PauseCounter, send_now, tune, unsent
from ..interfaces import IBodyLink, IFlowSource, IOrigin
from ..node import Worker
from ..routing import LOCAL, Address, Route
from ..transport.limits import AUTO, half_open_files
from ..wire import (
    CREDIT_TAG,
    DISCONNECT,
    DISCONNECT_TAG,
    EOF_TAG,
    PAYLOAD_TAG,
    REFUSE_TAG,
    decode_credit,
    decode_eof,
    decode_payload,
    encode_credit,
    encode_eof,
    encode_payload,
    payload_prefix,
    uvarint,
)

log = Logger(namespace="ockamtw.portal")

#: Largest chunk of socket bytes in one Payload message (48 KiB), as
#: Ockam 0.83 sends them.
MAX_CHUNK = 49152
#: Largest chunk on a stream whose two ends are ockamtw portals (both
#: offer per-stream flow control) when such a message fits one frame all
#: the way to the other side (L{ockamtw.interfaces.IBodyLink.body_limit}):
#: 60 KiB, a quarter of a socket read (L{TRANSPORT_BUFFER}).  Fewer, larger
#: messages carry a bulk stream for less CPU on every node on the way.
FLOW_CHUNK = 61440

#: A receiver grants more credit once it can move the limit by this much.
GRANT_STEP = STREAM_WINDOW // 4
#: Bytes a sender may run past its limit (what one socket read holds)
#: before its receiver stops trusting it and pauses the link again.
_OVERSHOOT = 2 * TRANSPORT_BUFFER

# No stall: when the sender has used all its credit, the last Payload finds
# at most TRANSPORT_BUFFER bytes unsent on the receiver's socket (more, and
# the transport pauses its producer, so the drain calls _drained), so that
# Payload moves the limit by at least GRANT_STEP and is answered by a Credit.
assert GRANT_STEP + TRANSPORT_BUFFER <= STREAM_WINDOW


def portal_address(flow_control: bool = True, early: bool = False) -> Address:
    """
    A fresh address for a portal worker: 32 random hex characters, then
    L{FLOW_MARK} when it offers per-stream flow control, after
    L{EARLY_MARK} when it also takes an early Pong (C{early}).
    """
    if not flow_control:
        return Address.local(os.urandom(16).hex())
    return Address.local(os.urandom(16).hex() + (EARLY_MARK + FLOW_MARK if early else FLOW_MARK))


def offers_flow_control(address) -> bool:
    """
    Whether a portal worker at C{address} speaks per-stream flow control.
    """
    return address is not None and address.type == LOCAL and address.value.endswith(FLOW_MARK)


def takes_early_pong(address) -> bool:
    """
    Whether a portal worker at C{address} (an inlet's, with flow control)
    takes a Pong sent before the outlet's target is connected.
    """
    return address is not None and address.type == LOCAL and address.value.endswith(EARLY_MARK + FLOW_MARK)


def watched_hop(node, route):
    """
    What a route's first hop depends on, if it can end: the TCP connection
    it names, or the secure channel whose encryptor it names (see
    L{ockamtw.node.BaseNode.link_of}).
    """
    if not route:
        return None
    return node.link_of(route[0])


def authorized_policy(authorized):
    """
    The access policy of an outlet or of an inlet's Pong: everyone, or the
    secure channel peers in C{authorized}.
    """
    return ANYONE if authorized is None else Identities(authorized)


@implementer(IHalfCloseableProtocol)
class _SocketProtocol(Protocol):
    """
    Thin: hands a portal socket's events to its L{PortalWorker}.  Half-close
    aware: an end of file is reported on its own (the socket may still be
    written to), not as the loss of the connection.
    """

    def __init__(self, portal: "PortalWorker") -> None:
        self.portal = portal

    def connectionMade(self) -> None:
        self.portal._socket_made(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.portal._socket_data(data)

    def readConnectionLost(self) -> None:
        self.portal._socket_eof()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason) -> None:
        self.portal._socket_lost(reason)


class _OneProtocolFactory(Factory):
    noisy = False

    def __init__(self, portal: "PortalWorker") -> None:
        self._portal = portal

    def buildProtocol(self, addr):
        return _SocketProtocol(self._portal)


#: The states of a portal, by name (L{PortalWorker.state}).
NEW = "new"
WAITING = "waiting"
CONNECTING = "connecting"
OPEN = "open"
READ_CLOSED = "read closed"
WRITE_CLOSED = "write closed"
FLUSHING = "flushing"
DONE = "done"

#: States in which the other side is not known yet.
_NOT_OPEN = frozenset({NEW, WAITING})
#: States in which the socket is read and what it gives is sent.
_READING = frozenset({OPEN, WRITE_CLOSED})
#: States in which Payloads are written to the socket (and credit granted).
_WRITING = frozenset({OPEN, READ_CLOSED})
#: States in which the stream is over.
_ENDED = frozenset({FLUSHING, DONE})


class _StreamInputs(typing.Protocol):
    """
    What happens to one side of a tunnelled connection: the inputs of its
    machine (L{PortalWorker}).  Data and Credit are not inputs: plain
    methods handle them, checking the state.
    """

    def socket_made(self, transport: object) -> None:
        "The socket is there: the inlet's client accepted, or the outlet's target connected."

    def remote_known(self, route: object, origin: object) -> None:
        "L{PortalWorker.set_remote}: the other side's portal is at the end of C{route}."

    def pong(self, route: object, origin: object) -> None:
        "(An inlet's portal) the outlet's Pong came from the end of C{route}, through C{origin}."

    def refused(self, reason: str) -> None:
        "(An inlet's portal) the outlet will not open the stream (Refuse), for C{reason}."

    def unreachable(self, reason: str) -> None:
        """
        (An inlet's portal) the outlet's portal that answered Pong could not
        connect to its target (Refuse from that portal), for C{reason}.
        """

    def socket_eof(self) -> None:
        "The socket reached end of file; it can still be written to."

    def socket_lost(self, reason: object) -> None:
        "The socket is closed."

    def disconnected(self) -> None:
        "The other side sent Disconnect."

    def peer_eof(self) -> None:
        "The other side sent Eof: no Payload follows."

    def finish(self, notify: bool, grace: object, limit: object, hurry: bool) -> None:
        """
        End the stream here (L{PortalWorker.finish}; L{PortalWorker.close}
        with C{hurry}, which also shortens a flush under way).
        """


_on = transitions("state")


#: L{StreamLimits}' default when the process may open any number of files.
MAX_STREAMS = 65536


def default_max_streams() -> int:
    """
    Half the soft limit on open files (at least 64; L{MAX_STREAMS} without
    one): each stream holds a descriptor (L{half_open_files}).
    """
    return half_open_files(MAX_STREAMS)


class StreamLimits:
    """
    How many streams a node's inlets and outlets hold at once.  Each holds
    a portal worker and a socket (an inlet's client, an outlet's target: a
    file descriptor); anyone an outlet lets send Ping opens one, anyone who
    can reach an inlet's port another: C{max_streams} in all (C{None}: no
    limit), by default half the process's open files
    (L{default_max_streams}).  Past it an outlet refuses the Ping (the
    inlet is told) and an inlet closes the new client at once.

    @ivar held: the streams the node's inlets and outlets hold.
    @ivar refused: streams refused for the limit.
    """

    def __init__(self, max_streams=AUTO) -> None:
        self.max_streams = default_max_streams() if max_streams == AUTO else max_streams
        self.held = 0
        self.refused = 0

    def take(self, node, side: str, where: str) -> bool:
        """
        Count a new stream of C{node}'s inlet or outlet (C{side}) at
        C{where}; C{False} (counted as refused, and logged) when it would
        go over the limit.
        """
        if self.max_streams is not None and self.held >= self.max_streams:
            self.refused += 1
            node.throttle.log(
                log,
                "warn",
                ("streams", id(self)),
                "{side} {where}: the node holds {held} streams (max_streams); a new one is refused",
                side=side,
                where=where,
                held=self.held,
            )
            return False
        self.held += 1
        return True

    def to_dict(self) -> dict:
        return {"max_streams": self.max_streams}


def stream_limits(node) -> StreamLimits:
    """
    The L{StreamLimits} all inlets and outlets of C{node} share (made on first use;
    C{node.stream_limits}).
    """
    limits = getattr(node, "stream_limits", None)
    if limits is None:
        limits = node.stream_limits = StreamLimits()
    return limits


@implementer(IFlowSource)
class PortalWorker(Worker):
    """
    One side of one tunnelled TCP connection.

    A state machine (automat): its state is L{state}.  An inlet's portal
    goes L{NEW}, L{WAITING} (its client accepted), L{OPEN} (the outlet's
    Pong); an outlet's L{NEW}, L{CONNECTING} (a Ping; to an ockamtw TCP
    inlet it answers Pong at once and holds the data that comes before its
    target is connected), L{OPEN} (its target connected); then either,
    possibly through one of the half-closed states (L{READ_CLOSED},
    L{WRITE_CLOSED}), to L{FLUSHING} and L{DONE}
    (straight to L{DONE} when no socket is left).  The data paths (a
    Payload or a Credit received, a socket read) are plain methods that
    check the state, and the counters of flow control plain numbers.

    As automat does, an input given while the machine is busy (by its own
    outputs, or by code they call) is taken once it is done.  The code
    they call back gives this portal no input whose effect it then relies
    on (its L{when_done} Deferreds fire once it is done).

    @ivar state: the name of the machine's state.
    @ivar remote_route: where Payload and Disconnect go (the other side's
        portal worker), once known.
    @ivar bytes_in: bytes read from the socket and sent.
    @ivar bytes_out: bytes received and written to the socket.
    @ivar flow: whether both ends use per-stream flow control (credit).
    @ivar limit: with C{flow}, the total bytes this side may send.
    @ivar granted: with C{flow}, the total bytes the other side may send.
    """

    side = "portal"
    #: (An outlet's portal) whether it sent its Pong.
    ponged = False
    #: The L{StreamLimits} this stream counts in (C{None}: it counts in
    #: none, e.g. an C{ockam:} client endpoint's, which holds no socket).
    stream_limits: Optional[StreamLimits] = None

    def __init__(self, owner) -> None:
        self.owner = owner
        self.state = NEW
        self.remote_route: Optional[Route] = None
        self.transport = None
        self.backpressure = BackPressure(self._drained)
        self._reading: Optional[PauseCounter] = None
        self._waiters = []
        self._closer = None
        self._link = None
        self._link_key = None
        self._origin = None
        self._origin_key = None
        self._head: Optional[bytes] = None
        #: The largest chunk this side sends (L{MAX_CHUNK} or L{FLOW_CHUNK}).
        self.chunk = MAX_CHUNK
        #: (With credit) data for the socket that waits here, not in the
        #: transport's buffer, while that is over its high-water mark
        #: (L{_payload}), and its size in bytes.
        self._backlog: typing.Optional[collections.deque] = None
        self.backlog_bytes = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.dropped = 0
        self.flow = False
        self.limit = STREAM_WINDOW
        self.granted = STREAM_WINDOW
        self.credits_sent = 0
        #: Messages received from, and sent to, the other side (liveness).
        self.heard = 0
        self.said = 0
        self._live_timer = None
        self._marks = (0, 0)
        self._silent = 0
        #: (An outlet's portal that answered Pong before its target was
        #: connected, L{ponged}) the Payloads that came meanwhile, their
        #: bytes, and whether Eof came too.
        self._held = None
        self._held_bytes = 0
        self._held_eof = False
        self._machine = _StreamMachine(self)

    @property
    def finished(self) -> bool:
        """
        Whether the stream is over (L{FLUSHING} or L{DONE}).
        """
        return self.state in _ENDED

    @property
    def read_done(self) -> bool:
        """
        Whether nothing more is read from the socket: it reached end of
        file (with C{flow}, Eof was sent), or the stream is over.
        """
        return self.state == READ_CLOSED or self.state in _ENDED

    @property
    def write_done(self) -> bool:
        """
        Whether nothing more is written to the socket but what it holds:
        the other side sent Eof, or the stream is over.
        """
        return self.state == WRITE_CLOSED or self.state in _ENDED

    @property
    def credit_paused(self) -> bool:
        """
        Whether this side has sent all that its credit allows: it then
        reads nothing from its socket until a Credit raises L{limit}.
        """
        return self.flow and self.bytes_in >= self.limit

    def _note(self, level: str, what: str, format: str, **kw) -> None:
        """
        Log an event of this stream, rate-limited per inlet or outlet (a
        peer can cause any number of them).
        """
        node = self.owner.node
        node.throttle.log(log, level, (what, id(self.owner)), format, side=self.side, address=str(self.address), **kw)

    # --- socket side -------------------------------------------------------------

    def _socket_made(self, transport) -> None:
        self._machine.socket_made(transport)

    def _socket_data(self, data: bytes) -> None:
        if self.state not in _READING:
            return
        route = self.remote_route
        self.said += 1
        size = self.chunk
        if len(data) <= size:
            chunks = (data,)
        else:
            # Views, not copies: the link copies each once anyway (into the
            # kernel, or into the plaintext it encrypts).
            view = memoryview(data)
            chunks = [view[i : i + size] for i in range(0, len(data), size)]
        link = self._link
        try:
            if self._head is not None and link.connected:
                # Fast path: straight to the link, header prepared once.
                head = self._head
                for chunk in chunks:
                    n = len(chunk)
                    inner = payload_prefix(n)
                    link.write_body(head + uvarint(len(inner) + n) + inner, chunk, self)
            else:
                node = self.node
                me = self.address
                for chunk in chunks:
                    node.send(route, encode_payload(chunk), sender=me, source=self)
        except MessageTooLarge as e:
            log.error("{side} {address}: {error}; closing", side=self.side, address=str(self.address), error=str(e))
            self.close()
            return
        before = self.bytes_in
        self.bytes_in = before + len(data)
        if self.flow and self.bytes_in >= self.limit > before:
            # Out of credit: stop reading this socket (only this one).
            self._reading.pause()

    def _socket_eof(self) -> None:
        """
        The socket reached end of file; it can still be written to.
        """
        self._machine.socket_eof()

    def _socket_lost(self, reason) -> None:
        self._machine.socket_lost(reason)

    # --- IFlowSource ---------------------------------------------------------------

    def pause_flow(self) -> None:
        if self._reading is not None:
            self._reading.pause()

    def resume_flow(self) -> None:
        if self._reading is not None:
            self._reading.resume()

    # --- routed side ------------------------------------------------------------------

    def receive(self, message) -> None:
        # Who may send is the node's business (the portal's access policy:
        # once open, only the origin its stream was opened through).
        self.heard += 1
        payload = message.payload
        if not payload:
            self.dropped += 1
            return
        tag = payload[0]
        state = self.state
        if state in _NOT_OPEN and tag > DISCONNECT_TAG and tag != REFUSE_TAG:
            # Not open yet: only the outlet's Pong, or its Disconnect or
            # Refuse (it will not open the stream), may come.
            self.dropped += 1
            return
        if tag == PAYLOAD_TAG:
            if state in _WRITING:
                self._payload(payload, message.source)
            elif state == CONNECTING and self.ponged:
                self._hold(payload, message.source)
            else:
                try:
                    decode_payload(payload)
                except WireError as e:
                    self._note("warn", "bad", "{side} {address}: bad Payload ({error}); dropped", error=str(e))
        elif tag == DISCONNECT_TAG:
            self._machine.disconnected()
        elif tag == EOF_TAG and self.flow:
            try:
                decode_eof(payload)
            except WireError as e:
                self._note("warn", "bad", "{side} {address}: bad Eof ({error}); dropped", error=str(e))
                return
            self._machine.peer_eof()
        elif tag == CREDIT_TAG and self.flow:
            try:
                limit = decode_credit(payload)
            except WireError as e:
                self._note("warn", "bad", "{side} {address}: bad Credit ({error}); dropped", error=str(e))
                return
            if limit > self.limit:
                out_of_credit = self.bytes_in >= self.limit
                self.limit = limit
                if out_of_credit and self.bytes_in < limit:
                    self._reading.resume()
        else:
            self.control(tag, message)

    def receive_payload(self, payload, source) -> bool:
        """
        Take the payload of a message that the node did not decode (see
        L{ockamtw.node.BaseNode.hand}), when it is data for an open stream
        (what L{receive} would do with it); C{False} for anything else,
        which the node then decodes and delivers.
        """
        if payload and payload[0] == PAYLOAD_TAG and self.state in _WRITING:
            self.heard += 1
            self._payload(payload, source)
            return True
        return False

    def _payload(self, payload, source) -> None:
        """
        Data for the socket (a Payload message), while it may be written.
        """
        try:
            data = decode_payload(payload)
        except WireError as e:
            self._note("warn", "bad", "{side} {address}: bad Payload ({error}); dropped", error=str(e))
            return
        bp = self.backpressure
        n = len(data)
        self.bytes_out += n
        if not self.flow:
            send_now(self.transport, [data], n)
            bp.wrote(source)
            return
        if self._backlog is not None or bp.congested:
            # The transport holds a read's worth already: the rest waits
            # here, in the pieces it came in, until it drains (_drained).
            # Twisted joins everything its buffer holds into one string
            # when it next writes, so a window held there would cost
            # twice its size for a while.
            if self._backlog is None:
                self._backlog = collections.deque()
            self._backlog.append(data if data.__class__ is bytes else bytes(data))
            self.backlog_bytes += n
        else:
            send_now(self.transport, [data], n)
        # What the kernel has taken counts as consumed: grant a window
        # beyond it once that moves the limit by a quarter window.
        pending = unsent(self.transport)
        if pending is None:
            pending = TRANSPORT_BUFFER if bp.congested else 0
        pending += self.backlog_bytes
        if self.bytes_out - pending + STREAM_WINDOW - self.granted >= GRANT_STEP:
            self._grant(self.bytes_out - pending)
        elif bp.congested and self.bytes_out > self.granted + _OVERSHOOT:
            # The sender ignores its credit: fall back to pausing the link.
            bp.wrote(source)

    #: Bytes of Payload an outlet's portal holds while its target is being
    #: connected: what the inlet may send on its first credit (one window,
    #: and what one read may add past it).
    HOLD_LIMIT = STREAM_WINDOW + _OVERSHOOT

    def _hold(self, payload, source) -> None:
        """
        Data that came after this (outlet's) portal answered Pong and before
        its target is connected: kept, in order, and written once it is
        (L{_take_second_socket}); a sender that runs past its credit ends
        the stream.
        """
        try:
            decode_payload(payload)
        except WireError as e:
            self._note("warn", "bad", "{side} {address}: bad Payload ({error}); dropped", error=str(e))
            return
        self._held_bytes += len(payload)
        if self._held_bytes > self.HOLD_LIMIT:
            self._note("warn", "overrun", "{side} {address}: the other side sent past its credit before the target "
                       "was connected; portal closed")
            self.finish(notify=True)
            return
        if self._held is None:
            self._held = []
        self._held.append((payload, source))

    def _grant(self, taken: int) -> None:
        """
        Let the other side send L{STREAM_WINDOW} bytes beyond C{taken}, what
        this socket has handed to the kernel so far.
        """
        self.granted = taken + STREAM_WINDOW
        self.credits_sent += 1
        self._send_to_other_side(encode_credit(self.granted))

    def _send_to_other_side(self, message: bytes) -> None:
        """
        Send a portal message (Credit, Eof) the way Payloads go, so that it
        keeps its place after them.
        """
        self.said += 1
        link = self._link
        try:
            if self._head is not None and link is not None and link.connected:
                link.write_body(self._head + uvarint(len(message)), message)
            else:
                self.node.send(self.remote_route, message, sender=self.address)
        except Exception:
            log.failure("sending a portal message failed")

    def _drained(self) -> None:
        # The socket's buffer drained (BackPressure.resumeProducing):
        # everything written to it so far is taken; what waits here goes
        # on until it is over its high-water mark again.
        backlog = self._backlog
        pending = 0
        if backlog is not None:
            transport, bp = self.transport, self.backpressure
            while backlog and not bp.congested:
                data = backlog.popleft()
                self.backlog_bytes -= len(data)
                send_now(transport, [data], len(data))
            if not backlog:
                self._backlog = None
            pending = (unsent(transport) or 0) + self.backlog_bytes
        if (
            self.flow
            and self.state in _WRITING
            and self.bytes_out - pending + STREAM_WINDOW - self.granted >= GRANT_STEP
        ):
            self._grant(self.bytes_out - pending)

    def _write_backlog(self) -> None:
        """
        Hand the transport everything that waits here (the stream's socket
        is being closed or shut down for writing: it flushes its buffer).
        """
        backlog, self._backlog = self._backlog, None
        self.backlog_bytes = 0
        if backlog and self.transport is not None:
            self.transport.writeSequence(list(backlog))

    def disconnected(self) -> None:
        """
        The other side sent Disconnect: the stream is over.
        """
        self._machine.disconnected()

    def control(self, tag: int, message) -> None:
        """
        Ping, Pong and Refuse: the inlet and outlet handle them; here they
        are noise.
        """
        self._note("info", "unexpected", "{side} {address}: unexpected portal message {tag}; dropped", tag=tag)

    # --- ending ----------------------------------------------------------------------------

    #: When the stream ends (Disconnect, or both directions at their end),
    #: the socket is flushed until it makes no progress (its reader takes
    #: nothing) for this many seconds; then it is aborted.
    flush_grace = 30.0
    #: Seconds without progress, and in all, that a socket may take to
    #: flush when the portal is closed here (L{close}, the node stopping)
    #: or its link is lost.
    close_grace = 2.0

    def set_remote(self, route: Route, origin=None) -> None:
        """
        The other side's portal is at the end of C{route}, and its messages
        come from C{origin} (the connection or secure channel the stream was
        opened through; C{None}: this node): from now on the portal accepts
        messages from there only, and ends when it closes.  If the route
        starts with a TCP connection or secure channel of this node, the
        portal ends when that does too: the other side can no longer be
        reached.
        """
        self._machine.remote_known(route, origin)

    # --- is the other side still there? ----------------------------------------------

    #: With per-stream credit, each side sends a keepalive (a Credit that
    #: repeats its limit, which changes nothing) when it has sent nothing
    #: for this many seconds, and ends the stream when it has heard nothing
    #: for L{SILENT_BEATS} of them: the other side is gone (its node died
    #: behind a relay, which no connection of ours would show).
    heartbeat = 30.0
    SILENT_BEATS = 3
    #: Without credit (an Ockam 0.83 peer, which has no keepalive), a stream
    #: with no traffic either way for this many seconds is closed
    #: (C{None}: never).
    idle_timeout: Optional[float] = 3600.0

    def _schedule_liveness(self) -> None:
        owner = self.owner
        if self.flow:
            delay = getattr(owner, "heartbeat", None) or self.heartbeat
        else:
            idle = getattr(owner, "idle_timeout", self.idle_timeout)
            if idle is None:
                return
            delay = idle / 4
        self._live_timer = owner.node.reactor.callLater(delay, self._liveness)

    def _liveness(self) -> None:
        self._live_timer = None
        if self.state in _ENDED:
            return
        marks = (self.heard, self.said)
        heard_nothing = marks[0] == self._marks[0]
        said_nothing = marks[1] == self._marks[1]
        self._silent = self._silent + 1 if (heard_nothing and (self.flow or said_nothing)) else 0
        self._marks = marks
        if self.flow:
            if self._silent >= self.SILENT_BEATS:
                self._note("info", "silent", "{side} {address}: nothing heard from the other side for {n} heartbeats; portal closed", n=self._silent)
                self.finish(notify=False, grace=self.close_grace)
                return
            if said_nothing:
                self._send_to_other_side(encode_credit(self.granted))
                self._marks = (self.heard, self.said)
        elif self._silent >= 4:
            self._note("info", "idle", "{side} {address}: no traffic for {t:g} s; portal closed",
                       t=getattr(self.owner, "idle_timeout", self.idle_timeout))
            self.finish(notify=True)
            return
        self._schedule_liveness()

    def _origin_lost(self, origin) -> None:
        self._origin_key = None
        if self.state not in _ENDED:
            self._note("info", "gone", "{side} {address}: the peer that opened it is gone; portal closed")
            self.finish(notify=False, grace=self.close_grace)

    def _link_lost(self, link) -> None:
        self._link_key = None
        if self.state not in _ENDED:
            self._note("info", "link", "{side} {address}: link to the other side closed; portal closed")
            self.finish(notify=False, grace=self.close_grace)

    def finish(self, notify: bool, grace: Optional[float] = None, limit: Optional[float] = None) -> None:
        """
        End this portal: send Disconnect to the other side (when C{notify}
        and it is known), close the socket (flushing it; aborted after
        C{grace} seconds without progress, by default L{flush_grace} when
        the other side disconnected and L{close_grace} otherwise, or after
        C{limit} seconds in all), and leave the node.
        """
        self._machine.finish(notify, grace, limit, False)

    def close(self) -> Deferred:
        """
        Close this portal now (Disconnect to the other side): its socket
        gets at most L{close_grace} seconds to flush, also if it was
        flushing already.  Fires once the socket is closed.
        """
        d = self.when_done()
        self._machine.finish(True, self.close_grace, self.close_grace, True)
        return d

    def when_done(self) -> Deferred:
        """
        A Deferred that fires once this portal is finished and its socket
        closed.
        """
        if self.state == DONE and self.transport is None:
            return succeed(None)
        d: Deferred = Deferred()
        self._waiters.append(d)
        return d

    def stopped(self) -> None:
        # Ending removes the worker itself; the node removing a portal
        # whose stream is not over (it is stopping) ends it as close() does.
        if self.state not in _ENDED:
            self._machine.finish(True, self.close_grace, self.close_grace, False)

    # --- the machine's outputs ------------------------------------------------------------

    def _take_first_socket(self, transport) -> None:
        self._attach(transport)
        self._accepted()

    def _take_second_socket(self, transport) -> None:
        self._attach(transport)
        self._connected()
        held, self._held = self._held, None
        self._held_bytes = 0
        for payload, source in held or ():
            self._payload(payload, source)
        if self._held_eof:
            # Taken once this transition is done (the stream is open then).
            self._machine.peer_eof()

    def _hold_eof(self) -> None:
        # Eof before the target was connected: after the data held with it.
        if self.ponged:
            self._held_eof = True

    def _close_late_socket(self, transport) -> None:
        # A socket connected after the stream ended: close it at once.
        self._attach(transport)
        self._closer.close(transport, self.close_grace)

    def _open_on_pong(self, route: Route, origin) -> None:
        self._remember_remote(route, origin)
        self._pong_accepted()

    def _turn_away_pong(self, route: Route, origin) -> None:
        if route != self.remote_route:
            # A Pong for a repeated Ping: that outlet portal is not needed.
            self.node.send(route, DISCONNECT, sender=self.address)

    def _end_refused(self, reason: str) -> None:
        self._refused_by_outlet(reason)
        self._ending(False, self.close_grace, None)

    def _end_unreachable(self, reason: str) -> None:
        # Nothing came from the target; what the client sent is lost with it.
        self._stop_reading()
        self._refused_by_outlet(reason)
        self._ending(False, self.close_grace, None)

    def _end_at_eof(self) -> None:
        self._stop_reading()
        self._ending(True, self.flush_grace, None)

    def _read_ended(self) -> None:
        self._stop_reading()
        if not self.flow:
            # As Ockam 0.83: end of file ends the stream (Disconnect); what
            # the socket has still to write is flushed.
            self._machine.finish(True, self.flush_grace, None, False)
            return
        # After the last Payload, on the same path: no more data this way.
        self._send_to_other_side(encode_eof())

    def _end_both_read(self) -> None:
        # Eof came from the other side already: both directions are done.
        self._stop_reading()
        self._send_to_other_side(encode_eof())
        self._ending(False, None, None)

    def _shut_down_writing(self) -> None:
        # Write out what the socket holds, then shut down its write side.
        # Twisted does not shut down a transport whose streaming producer
        # is registered (and paused), and nothing more will be written
        # here: no more flow control to do on this side.
        self._write_backlog()
        transport = self.transport
        try:
            transport.unregisterProducer()
        except Exception:
            pass
        self.backpressure.stopProducing()
        transport.loseWriteConnection()

    def _end_by_peer(self) -> None:
        self._ending(False, None, None)

    def _end_by_peer_at_once(self) -> None:
        self._ending(False, None, None)
        self._report_done()

    def _end_before_open(self) -> None:
        self._disconnected_before_open()
        self._ending(False, None, None)

    def _end(self, notify: bool, grace, limit, hurry: bool) -> None:
        self._ending(notify, grace, limit)

    def _end_at_once(self, notify: bool, grace, limit, hurry: bool) -> None:
        self._ending(notify, grace, limit)
        self._report_done()

    def _hurry(self, notify: bool, grace, limit, hurry: bool) -> None:
        # Closed here (hurry) while flushing: at most that much more.
        if hurry and self.transport is not None:
            self._closer.close(self.transport, grace, limit)

    def _lost_socket(self, reason) -> None:
        self._forget_socket()
        self._ending(True, None, None)
        self._report_done()

    def _socket_closed(self, reason) -> None:
        self._forget_socket()
        self._report_done()

    def _late_socket_closed(self, reason) -> None:
        self._forget_socket()
        self._fire_waiters()

    # --- what the outputs do -------------------------------------------------------------

    def _attach(self, transport) -> None:
        self.transport = transport
        self._closer = Closer(self.owner.node.reactor)
        try:
            transport.setTcpNoDelay(True)
        except (AttributeError, OSError):
            pass
        tune(transport)
        self.backpressure.attach(transport)
        self._reading = PauseCounter(transport)

    def _remember_remote(self, route: Route, origin) -> None:
        self.remote_route = route
        self.node.set_access(self.address, FromOrigin(origin))
        if IOrigin.providedBy(origin) and origin is not self.node.link_of(route[0] if route else None):
            self._origin = origin
            self._origin_key = origin.on_close(self._origin_lost)
        self.flow = bool(route) and offers_flow_control(self.address) and offers_flow_control(route[-1])
        link = watched_hop(self.node, route)
        if link is not None:
            self._link = link
            self._link_key = link.on_close(self._link_lost)
        if IBodyLink.providedBy(link):
            # A TCP connection or a secure channel first: what every Payload
            # message to the other side starts with once the link has
            # stripped itself (version, onward, return route), for the fast
            # path.
            self._head = head = link.head_for(route.step(), Route([self.address]))
            if self.flow and head is not None:
                # Larger chunks when the other side is an ockamtw portal too
                # and such a message fits: the header, the Payload's length
                # (3 bytes) and its tag and chunk length (4).
                limit = link.body_limit()
                if limit is not None and len(head) + 7 + FLOW_CHUNK <= limit:
                    self.chunk = FLOW_CHUNK
        self._schedule_liveness()

    def _ending(self, notify: bool, grace: Optional[float], limit: Optional[float]) -> None:
        """
        End the stream (see L{finish}).
        """
        if self._live_timer is not None:
            if self._live_timer.active():
                self._live_timer.cancel()
            self._live_timer = None
        self._held = None
        if self._link_key is not None:
            self._link.cancel_on_close(self._link_key)
            self._link_key = None
        self._link = None
        if self._origin_key is not None:
            self._origin.cancel_on_close(self._origin_key)
            self._origin_key = None
        self._origin = None
        if notify and self.remote_route is not None and self.node is not None:
            try:
                self.node.send(self.remote_route, DISCONNECT, sender=self.address)
            except Exception:
                log.failure("sending Disconnect failed")
        if self.transport is not None:
            if grace is None:
                grace = self.close_grace if notify else self.flush_grace
            self._write_backlog()
            self._closer.close(self.transport, grace, limit)
        if self.node is not None and self.address is not None:
            self.node.stop_worker(self.address)
        self._ended()

    def _stop_reading(self) -> None:
        if self._reading is not None:
            # Reading has ended: no later pause or resume may restart it.
            self._reading.active = False

    def _forget_socket(self) -> None:
        self.transport = None
        self._backlog = None
        self.backlog_bytes = 0
        if self._closer is not None:
            self._closer.closed()
        if self._reading is not None:
            self._reading.active = False
        self.backpressure.stopProducing()

    def _report_done(self) -> None:
        # The owner keeps a portal until its socket is closed, so that its
        # close() waits for (and hurries) sockets still flushing.
        self.owner._portal_finished(self)
        self._fire_waiters()

    def _fire_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    # What the inlet's and the outlet's portals add (nothing here).

    def _accepted(self) -> None:
        """
        The socket came first (an inlet's client was accepted).
        """

    def _connected(self) -> None:
        """
        The socket came second (an outlet's target connected).
        """

    def _pong_accepted(self) -> None:
        """
        The outlet's Pong opened the stream.
        """

    def _refused_by_outlet(self, reason: str) -> None:
        """
        The outlet refused to open the stream.
        """

    def _disconnected_before_open(self) -> None:
        """
        Disconnect came before the other side was known.
        """

    def _ended(self) -> None:
        """
        The stream ended.
        """


_builder = TypeMachineBuilder(_StreamInputs, PortalWorker)
_new = _builder.state(NEW)
_waiting = _builder.state(WAITING)
_connecting = _builder.state(CONNECTING)
_open = _builder.state(OPEN)
_read_closed = _builder.state(READ_CLOSED)
_write_closed = _builder.state(WRITE_CLOSED)
_flushing = _builder.state(FLUSHING)
_done = _builder.state(DONE)
_S = _StreamInputs

# Opening: the socket and the other side, in either order.
_on(_new, _S.socket_made, _waiting, "_take_first_socket")
_on(_new, _S.remote_known, _connecting, "_remember_remote")
_on(_waiting, _S.remote_known, _open, "_remember_remote")
_on(_connecting, _S.socket_made, _open, "_take_second_socket")
_on(_done, _S.socket_made, _done, "_close_late_socket")
# An inlet's answer from the outlet: Pong opens the stream (a second Pong,
# for a repeated Ping, is turned away), Refuse ends it.
_on(_waiting, _S.pong, _open, "_open_on_pong")
_on(_waiting, _S.refused, _flushing, "_end_refused")
for _state in (_open, _read_closed, _write_closed):
    _on(_state, _S.pong, _state, "_turn_away_pong")
    _on(_state, _S.refused, _state)
    # An outlet answers Pong to an ockamtw inlet before it connects to its
    # target; the portal that answered says so if it then cannot.
    _on(_state, _S.unreachable, _flushing, "_end_unreachable")
for _state in (_flushing, _done):
    _on(_state, _S.unreachable, _state)
# Half-close: end of file read here, Eof from the other side.
_on(_waiting, _S.socket_eof, _flushing, "_end_at_eof")
_on(_open, _S.socket_eof, _read_closed, "_read_ended")
_on(_write_closed, _S.socket_eof, _flushing, "_end_both_read")
for _state in (_read_closed, _flushing, _done):
    _on(_state, _S.socket_eof, _state)
_on(_open, _S.peer_eof, _write_closed, "_shut_down_writing")
_on(_read_closed, _S.peer_eof, _flushing, "_end_by_peer")
_on(_write_closed, _S.peer_eof, _write_closed)
_on(_connecting, _S.peer_eof, _connecting, "_hold_eof")
# Ending: with a socket, it is flushed (then closed); without one, done.
_on(_waiting, _S.disconnected, _flushing, "_end_before_open")
for _state in (_open, _read_closed, _write_closed):
    _on(_state, _S.disconnected, _flushing, "_end_by_peer")
for _state in (_new, _connecting):
    _on(_state, _S.disconnected, _done, "_end_by_peer_at_once")
    _on(_state, _S.finish, _done, "_end_at_once")
for _state in (_waiting, _open, _read_closed, _write_closed):
    _on(_state, _S.finish, _flushing, "_end")
    _on(_state, _S.socket_lost, _done, "_lost_socket")
_on(_flushing, _S.socket_lost, _done, "_socket_closed")
_on(_done, _S.socket_lost, _done, "_late_socket_closed")
for _state in (_flushing, _done):
    _on(_state, _S.finish, _state, "_hurry")

_StreamMachine = indexed(_builder.build())
del _state
