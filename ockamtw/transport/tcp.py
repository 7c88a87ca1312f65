"""
The TCP transport: listeners and connections speaking 2-byte-length frames
of TransportMessages.

Each connection is a worker at a random local address.  Sending to it
writes the message (minus that address) to the socket; a message read from
the socket gets the address prepended to its return route and is routed by
the node.

Flow control: each connection watches its own outbound buffer (it is the
streaming producer registered with its transport).  When the buffer passes
the transport's high-water mark, the connection is congested, and the
source of every message written meanwhile (the connection or socket that
read it in) is paused until the buffer drains.

Limits (L{ockamtw.transport.limits}): accepted connections are counted in
all and per peer address, and one over a limit is closed at once; an
accepted connection must complete its first frame within a timeout, and
while it holds a partial frame, some frame must complete within another;
partial frames of all accepted connections share a memory budget.  Every
connection has TCP keepalive with short timings.
"""

from __future__ import annotations

import os
from time import monotonic_ns
from typing import Dict, List, Optional, Union

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import endpoints
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..access import ANYONE
from ..endpoints import cancelled, client_endpoint, client_target, reason, server_description
from ..errors import OckamError, TransportError, WireError
from ..feature import ControlError, Feature, worker_key
from ..flow import (
    SEND_NOW_FROM,
    SMALL_SEND_GAP_NS,
    BackPressure,
    CloseNotifier,
    Closer,
    LinkWatch,
    PauseCounter,
    credit_stream,
    idle_socket,
    kernel_unsent,
    send_direct,
    tune,
    unsent,
)
from ..interfaces import IConnection, IFlowSource, ILinkWorker, ITcpConnection, ITcpListener, ITransport
from ..logs import short
from ..deferred import InFlight, gather
from ..routing import TCP, Address
from ..wire import (
    HEARTBEAT_FRAME,
    FrameDecoder,
    MessageTooLarge,
    TransportMessage,
    MAX_FRAME,
    address_of,
    body_frame_parts,
    decode_body,
    first_hop,
    frame_parts,
    hop_body,
    payload_of,
    routes_head,
)
from .limits import (
    CLOSED_BUDGET,
    CLOSED_FIRST_FRAME,
    CLOSED_FRAME,
    HELLO_DELAY,
    ConnectionGuard,
    Refused,
    set_keepalive,
)

log = Logger(namespace="ockamtw.transport.tcp")

MODE_LISTENING = "Listening"
MODE_OUTGOING = "Remote connection"
MODE_ACCEPTED = "Accepted"

def _peer_text(addr) -> str:
    host = getattr(addr, "host", None)
    port = getattr(addr, "port", None)
    if host is None:
        return str(addr)
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


class _FrameProtocol(Protocol):
    """
    Thin: hands socket events to its L{TcpConnection}.  An accepted
    connection over a limit of the node's L{ConnectionGuard} is closed at
    once, and no L{TcpConnection} is made for it.
    """

    connection: Optional["TcpConnection"] = None
    #: Whether the guard counted this connection (see L{ConnectionGuard.admit}).
    _admitted = False
    _peer_key: Optional[str] = None

    def __init__(self, tcp: "TcpTransport", mode: str, address: Optional[Address] = None) -> None:
        self._tcp = tcp
        self._mode = mode
        self._address = address

    def connectionMade(self) -> None:
        guarded = self._mode == MODE_ACCEPTED
        if guarded:
            tcp = self._tcp
            try:
                self._peer_key = tcp.guard.admit(self.transport.getPeer())
            except Refused as e:
                tcp.node.throttle.log(
                    log,
                    "warn",
                    ("connection refused", e.reason),
                    "connection from {peer} refused: {reason}",
                    peer=short(_peer_text(self.transport.getPeer())),
                    reason=e.text,
                    limit=e.reason,
                    node=tcp.node.name,
                )
                self.transport.abortConnection()
                return
            self._admitted = True
        self.connection = TcpConnection(self._tcp, self.transport, self._mode, guarded)
        self.connection._made(self._address)

    def dataReceived(self, data: bytes) -> None:
        if self.connection is not None:
            self.connection._data_received(data)

    def connectionLost(self, reason) -> None:
        if self._admitted:  # first: the slot is free when the close is announced
            self._admitted = False
            self._tcp.guard.release(self._peer_key)
        if self.connection is not None:
            self.connection._lost(reason)


class _FrameFactory(Factory):
    noisy = False

    def __init__(self, tcp: "TcpTransport", mode: str, address: Optional[Address] = None) -> None:
        self._tcp = tcp
        self._mode = mode
        self._address = address

    def buildProtocol(self, addr):
        p = _FrameProtocol(self._tcp, self._mode, self._address)
        p.factory = self
        return p


#: A burst of small frames gathered on one link (L{TcpConnection._write})
#: leaves once it holds this many, without waiting for the end of the
#: reactor round: the next node then works on the first frames while this
#: one handles the rest, instead of every node on a path waiting for the
#: whole burst in turn.  Through a relay under HTTP load (32 connections),
#: 8 moved about 18% more requests than gathering a whole round (6 to 16
#: measured about the same; docs/performance.md, "Round two, second pass").
GATHER_FRAMES = 8
#: ... but only frames that are small (requests and replies, not bulk:
#: together less than L{GATHER_EARLY_BYTES}), and only while the kernel
#: holds less than L{GATHER_EARLY_BELOW} bytes the peer has not
#: acknowledged.  Otherwise the whole round's frames leave in one write:
#: a reader with a small receive buffer (16 KiB) sent 1 KiB frames eight at
#: a time got them from Linux a window at a time about every 200 ms from
#: then on (tests/test_integration.py's slow reader: 20,000 replies took
#: minutes instead of seconds), even when the early writes stopped once 64
#: KiB were unacknowledged.
GATHER_EARLY_BYTES = 4096
GATHER_EARLY_BELOW = 65536


@implementer(ITcpConnection, IConnection, ILinkWorker, IFlowSource)
class TcpConnection(CloseNotifier):
    """
    One TCP connection: a worker at C{address} that writes what it is sent
    to the socket, a flow source for what it reads, and the origin of the
    messages it reads (a peer that has proved nothing: C{identity} is
    C{None}).

    Anyone may send to it (it is how messages leave the node), except that
    a connection of this node to itself (a loop) carries only this node's
    own messages.
    """

    access = ANYONE
    identity = None
    #: The other end of this connection when the node is connected to
    #: itself, else C{None}.
    loop = None

    def __init__(self, tcp: "TcpTransport", transport, mode: str, guarded: bool = False) -> None:
        self._tcp = tcp
        self._node = tcp.node
        self.transport = transport
        self.mode = mode
        self.transport_id = os.urandom(16).hex()
        self.address: Optional[Address] = None
        self.socket_address = _peer_text(transport.getPeer())
        self.local_address = _peer_text(transport.getHost())
        self.connected = True
        self.backpressure = BackPressure(on_pause=self._congested)
        self._watch_link = LinkWatch(
            tcp.reactor, self._taken, lambda: self.backpressure.congested, self._slow, self._stalled,
            stall_timeout=tcp.stall_timeout,
        )
        #: Bytes of frames written (to the kernel or the transport's buffer).
        self.bytes_out = 0
        self._decoder = FrameDecoder()
        #: Small frames gathered for one C{sendmsg} at the end of this
        #: reactor round (see L{_write}), and their size; C{None} when none.
        self._gathered: Optional[list] = None
        self._gathered_bytes = 0
        self._gathered_frames = 0
        #: When the last small frame was written (C{monotonic_ns}).
        self._small_sent = 0
        self._reading = PauseCounter(transport, on_resume=self._resumed)
        self._processing = False
        self._closer = Closer(tcp.reactor)
        self.messages_in = 0
        self.messages_out = 0
        #: Complete frames read (messages, heartbeats, undecodable ones).
        self.frames_in = 0
        #: The node's L{ConnectionGuard} when its limits apply (accepted
        #: connections), else C{None}.
        self._guard = tcp.guard if guarded else None
        #: Bytes of a partial frame counted in the guard's budget.
        self._held = 0
        #: The progress check (see L{_check_progress}) and what it compares.
        self._watch = None
        self._watch_due = 0.0
        self._watch_frames = 0
        self._was_paused = False

    # --- lifecycle -----------------------------------------------------------

    def _made(self, address: Optional[Address] = None) -> None:
        t = self.transport
        try:
            t.setTcpNoDelay(True)
        except (AttributeError, OSError):
            pass
        set_keepalive(t, self._tcp.guard.limits.keepalive)
        tune(t)
        self.backpressure.attach(t)
        try:
            self.address = self._node.start_worker(address, self)
        except Exception:
            log.failure("cannot register connection {peer}", peer=self.socket_address)
            self.connected = False
            t.abortConnection()
            return
        self._tcp._add(self)
        self._tcp._find_loop(self)
        if self._guard is not None:
            timeout = self._guard.limits.first_frame_timeout
            if timeout is not None:
                self._arm(timeout)
        elif self.mode == MODE_OUTGOING and self._tcp.hello_delay is not None:
            self._watch = self._tcp.reactor.callLater(self._tcp.hello_delay, self._hello)
        self._note("TCP connection {mode} {peer} as {address}", mode=self.mode)

    def _lost(self, reason) -> None:
        if not self.connected:
            return
        self.connected = False
        self._reading.active = False
        self._disarm()
        if self._guard is not None:
            self._guard.partial_bytes -= self._held
            self._held = 0
        self._tcp._remove(self)
        if self.address is not None:
            self._node.stop_worker(self.address)
        self.backpressure.stopProducing()
        self._watch_link.stop()
        self._note("TCP connection {address} to {peer} closed")
        self._closer.closed()
        self._notify_closed()

    def _note(self, format: str, **kw) -> None:
        """
        Log an event of this connection; for accepted ones, rate-limited per
        peer host (a peer can open and close any number).
        """
        kw.update(peer=self.socket_address, address=str(self.address), node=self._node.name)
        if self.mode == MODE_ACCEPTED:
            host = self.socket_address.rsplit(":", 1)[0]
            self._node.throttle.log(log, "info", ("connection", host), format, **kw)
        else:
            log.info(format, **kw)

    def when_closed(self) -> Deferred:
        """
        A new Deferred that fires (with C{None}) once the connection is
        closed; at once if it already is.
        """
        if not self.connected:
            return succeed(None)
        d: Deferred = Deferred()
        self.on_close(lambda _: d.callback(None))
        return d

    #: Seconds a closing connection may take to flush before it is aborted.
    close_grace = 2.0

    def close(self) -> Deferred:
        """
        Close the connection, flushing what is buffered (for at most
        L{close_grace} seconds); the Deferred fires once it is closed.
        """
        d = self.when_closed()
        if self.connected:
            self.flush()
            self._closer.close(self.transport, self.close_grace)
        return d

    def abort(self) -> Deferred:
        """
        Drop the connection without flushing; the Deferred fires once closed.
        """
        d = self.when_closed()
        if self.connected:
            self.transport.abortConnection()
        return d

    # --- IWorker: messages to write -------------------------------------------

    def started(self, node, address) -> None:
        pass

    def stopped(self) -> None:
        if self.connected:
            self.flush()
            self._closer.close(self.transport, self.close_grace)

    def receive(self, message: TransportMessage) -> None:
        if not self.connected:
            return
        if self.loop is not None and message.origin is not None:
            # A peer's message would come straight back into this node.
            self._node.dropped += 1
            self._node.throttle.log(
                log,
                "warn",
                ("loop", message.origin),
                "connection {address} leads back to this node: a message from a peer would loop; dropped",
                address=str(self.address),
                node=self._node.name,
            )
            return
        out = message.with_routes(message.onward_route.step(), message.return_route)
        try:
            parts = frame_parts(out)
        except MessageTooLarge as e:
            log.error("{address}: {error}; dropped", address=str(self.address), error=str(e))
            return
        size = sum(map(len, parts))
        self._write(parts, size)
        self.messages_out += 1
        self.bytes_out += size
        source = message.source
        if source is not None and self.backpressure.congested:
            self._pause_source(source, credit_stream(message))

    def head_for(self, onward, return_route) -> bytes:
        """
        The start of a frame's body for L{write_body} (L{IBodyLink}): the
        connection writes the routes as they are.
        """
        return routes_head(onward, return_route)

    def body_limit(self) -> int:
        """
        (L{IBodyLink}) A body fills at most one frame.
        """
        return MAX_FRAME

    def _relay(self, parts: list, raw: tuple, source: "TcpConnection") -> bool:
        """
        Write the body C{parts} of a message that C{source} read in
        (L{ockamtw.wire.hop_body} of its frame C{raw}), as L{receive} would
        write the decoded message; C{False} (nothing written) when it does
        not fit a frame (the caller then decodes it, and L{receive} drops
        it with its error).
        """
        size = len(parts[0]) + len(parts[1])
        if size > MAX_FRAME:
            return False
        parts[0] = size.to_bytes(2, "big") + parts[0]
        self._write(parts, size + 2)
        self.messages_out += 1
        self.bytes_out += size + 2
        if self.backpressure.congested:
            self._pause_source(source, credit_stream(decode_body(*raw)))
        return True

    def write_body(self, head: bytes, data: bytes, source=None, credit: bool = False) -> None:
        """
        Write one frame whose body is C{head + data} (an encoded
        TransportMessage whose onward route no longer holds this
        connection), as L{receive} would for the decoded message.  The fast
        path for portals and relays, which know their header in advance.
        C{credit} says that the message belongs to a stream under
        per-stream flow control (L{ockamtw.flow.credit_stream}).

        @raise MessageTooLarge: when the body exceeds a frame.
        """
        parts = body_frame_parts(head, data)
        if not self.connected:
            return
        size = len(head) + len(data)
        self._write(parts, size + 2)
        self.messages_out += 1
        self.bytes_out += size + 2
        if source is not None and self.backpressure.congested:
            self._pause_source(source, credit)

    def _write(self, parts: list, size: int) -> None:
        """
        Write one frame (C{parts}, C{size} bytes).  A large frame, or a
        lone small one (none in the last L{SMALL_SEND_GAP_NS}), goes to the
        kernel at once (L{send_direct}).  Small frames that come in a burst
        are gathered instead, and leave together with one C{sendmsg} once
        the reactor has handled every event of this round
        (L{TcpTransport._gather}): a relay that reads many frames at once,
        or an inlet whose clients all wrote in the same round, makes one
        system call per link and round, not one per frame, and adds no
        reactor round trip (Twisted's own buffer would wait for the socket
        to be reported writable).  Every L{GATHER_FRAMES} gathered frames
        leave at once, so that the next node starts on a long burst while
        this one still works through it, when the frames are small and
        the peer keeps up (see L{GATHER_EARLY_BELOW}).  Transports without
        a socket of their own (tests' C{StringTransport}s, TLS) take the
        frame as before.
        """
        gathered = self._gathered
        if gathered is not None:
            gathered.extend(parts)
            self._gathered_bytes += size
            self._gathered_frames += 1
            if self._gathered_frames >= GATHER_FRAMES and self._gathered_bytes < GATHER_EARLY_BYTES:
                backlog = kernel_unsent(self.transport)
                if backlog is not None and backlog < GATHER_EARLY_BELOW:
                    self.flush()
                    # The rest of the burst goes on gathering: this round's
                    # flush (L{TcpTransport._gather}) is still due.
                    self._gathered = []
                else:
                    self._gathered_frames = 0  # look again after as many more
            return
        if size < SEND_NOW_FROM:
            now = monotonic_ns()
            last, self._small_sent = self._small_sent, now
            if now - last < SMALL_SEND_GAP_NS:
                if idle_socket(self.transport) is not None:
                    self._gathered = list(parts)
                    self._gathered_bytes = size
                    self._gathered_frames = 1
                    self._tcp._gather(self)
                else:
                    self.transport.writeSequence([p if p.__class__ is bytes else bytes(p) for p in parts])
                return
        send_direct(self.transport, parts)

    def flush(self) -> None:
        """
        Write what L{_write} gathered, at once.
        """
        gathered, self._gathered = self._gathered, None
        self._gathered_bytes = 0
        self._gathered_frames = 0
        if gathered and self.connected:
            # Into Twisted's buffer if the kernel does not take it all: a
            # congested transport then pauses the sources of the next
            # frames written to it, as for any other write.
            send_direct(self.transport, gathered)

    def _pause_source(self, source, credit: bool) -> None:
        """
        This connection is congested after writing a message that C{source}
        read in: pause C{source} until it drains.  Except when the
        connection is I{slow} (its peer takes next to nothing: see
        L{LinkWatch}) and the message belongs to a stream under per-stream
        credit (its ends bound what it sends), within the buffer limits
        (L{TcpTransport.may_buffer}): then pausing the source, a connection
        shared by other streams, would only stall them (head-of-line
        blocking), for as long as this peer likes.  A link that moves keeps
        ordinary back pressure, which costs nothing and keeps the queue
        where the data comes from.
        """
        if credit and self._watch_link.slow and self._tcp.may_buffer(self):
            return
        self.backpressure.wrote(source)

    # --- a peer that reads little or nothing ----------------------------------------

    def unsent(self) -> int:
        """
        Bytes written and not yet taken by the kernel.
        """
        pending = unsent(self.transport)
        return self._gathered_bytes + (0 if pending is None else pending)

    def _taken(self) -> int:
        return self.bytes_out - self.unsent()

    def _congested(self) -> None:
        if self.connected:
            self._watch_link.start()

    def _slow(self, slow: bool) -> None:
        if slow:
            self._tcp._slow.add(self)
            # Let the sources paused for this link go: streams under credit
            # go on (bounded by credit and may_buffer), the others are
            # paused again by their next message.
            self.backpressure.release()
        else:
            self._tcp._slow.discard(self)

    def _stalled(self) -> None:
        self._node.throttle.log(
            log,
            "warn",
            ("stalled", self.socket_address),
            "TCP connection {address} to {peer}: the peer read nothing for {seconds:g} s with {unsent} bytes waiting; closed",
            address=str(self.address),
            peer=self.socket_address,
            seconds=self._watch_link.stall_timeout,
            unsent=self.unsent(),
            node=self._node.name,
        )
        self.abort()

    @property
    def congested(self) -> bool:
        """
        Whether the outbound buffer is over its high-water mark.
        """
        return self.backpressure.congested

    @property
    def leads_to(self):
        """
        A route through this worker leaves the node through this connection.
        """
        return self

    # --- IFlowSource: messages read ---------------------------------------------

    def pause_flow(self) -> None:
        self._was_paused = True
        self._reading.pause()

    def resume_flow(self) -> None:
        self._reading.resume()

    @property
    def paused(self) -> bool:
        return self._reading.count > 0

    def _data_received(self, data: bytes) -> None:
        self._decoder.feed(data)
        self._process()
        if self._guard is not None and self.connected:
            self._account()

    def _resumed(self) -> None:
        self._process()
        if self._guard is not None and self.connected:
            self._account()

    # --- limits on accepted connections ------------------------------------------

    def _account(self) -> None:
        """
        After a read: count the partial frame this connection holds in the
        node's budget (closing it if that goes over), and make sure a
        progress check is due while it holds one, and none once it has
        completed a frame and holds nothing.  While this node has
        paused reading, what is buffered may be whole frames waiting: the
        count is left as it was.
        """
        if self._reading.count:
            return
        held = self._decoder.buffered()
        guard = self._guard
        if held != self._held:
            guard.partial_bytes += held - self._held
            grew = held > self._held
            self._held = held
            if grew and guard.over_budget():
                self._close_for(
                    CLOSED_BUDGET,
                    "partial frames of all accepted connections exceed {limit} bytes (--partial-frame-budget)",
                    guard.limits.partial_frame_budget,
                )
                return
        if held and self._watch is None:
            timeout = guard.limits.frame_timeout
            if timeout is not None:
                self._arm(timeout)
        # A check already due is left to run (and to lapse if nothing
        # waits then): cancelling it whenever a read ends on a frame
        # boundary and arming another at the next partial read cost a timer
        # per read on a busy connection.

    def _arm(self, delay: float) -> None:
        reactor = self._tcp.reactor
        self._watch_due = reactor.seconds() + delay
        self._watch_frames = self.frames_in
        self._was_paused = self._reading.count > 0
        self._watch = reactor.callLater(delay, self._check_progress)

    def _disarm(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None and watch.active():
            watch.cancel()

    def _check_progress(self) -> None:
        """
        The progress check of an accepted connection: it is closed if it
        has completed no frame since it was accepted (C{first_frame_timeout}),
        or holds a partial frame and completed none since the last check
        while this node was reading from it (C{frame_timeout}).  A check
        that runs late (the event loop was held up, and reads with it)
        judges nothing and looks again a quarter of a timeout later.
        """
        self._watch = None
        if not self.connected:
            return
        limits = self._guard.limits
        first, per_frame = limits.first_frame_timeout, limits.frame_timeout
        late = self._tcp.reactor.seconds() - self._watch_due
        partial = self._decoder.buffered() > 0
        if self.frames_in == 0 and first is not None:
            if late <= first / 4:
                self._close_for(
                    CLOSED_FIRST_FRAME, "no complete frame within {limit:g} s of connecting (--first-frame-timeout)", first
                )
            else:
                self._arm(first / 4)
            return
        if not partial or per_frame is None:
            return  # nothing waits: the next partial frame arms a new check
        stalled = self.frames_in == self._watch_frames and not self._was_paused and self._reading.count == 0
        if stalled and late <= per_frame / 4:
            self._close_for(
                CLOSED_FRAME, "a partial frame waited {limit:g} s with no frame completing (--frame-timeout)", per_frame
            )
            return
        self._arm(per_frame / 4 if stalled else per_frame)

    def _hello(self) -> None:
        """
        An outgoing connection still silent: complete a frame (a heartbeat)
        so that the peer's first-frame timeout keeps it.
        """
        self._watch = None
        if self.connected and self.messages_out == 0:
            self.transport.write(HEARTBEAT_FRAME)

    def _close_for(self, reason: str, text: str, limit) -> None:
        """
        Drop this accepted connection for going over a limit, counted
        under C{reason}, with a rate-limited warning.
        """
        self._guard.closed[reason] += 1
        node = self._node
        node.throttle.log(
            log,
            "warn",
            ("connection closed", reason),
            "connection {address} from {peer} closed: " + text,
            address=str(self.address),
            peer=short(self.socket_address),
            limit=limit,
            reason=reason,
            node=node.name,
        )
        self._disarm()
        self.transport.abortConnection()

    def _process(self) -> None:
        if self._processing:
            return
        self._processing = True
        decoder = self._decoder
        node = self._node
        me = self.address
        frames = 0
        me_encoded = me.encode()
        try:
            reading = self._reading
            while reading.count == 0 and self.connected:
                try:
                    raw = decoder.next_raw()
                    if raw is None:
                        break
                    frames += 1
                    first = first_hop(*raw)
                    if first is not None:
                        address = address_of(first)
                        out = node.open_worker(address, self)
                        if out is None:
                            pass
                        elif out.__class__ is TcpConnection:
                            if out.connected and out.loop is None:
                                # A message on its way through this node to
                                # another connection (a relay's traffic): its
                                # routes are changed in place, not decoded.
                                parts = hop_body(*raw, first, me_encoded)
                                if node.hand(address, self, out._relay, parts, raw, self) is not False:
                                    self.messages_in += 1
                                    continue
                        else:
                            take = getattr(out, "receive_payload", None)
                            # Data for a worker that needs no more than the
                            # payload (a portal's stream): the routes are
                            # not decoded.
                            if take is not None and node.hand(address, self, take, payload_of(*raw), self) is not False:
                                self.messages_in += 1
                                continue
                    message = decode_body(*raw)
                except WireError as e:
                    node.dropped += 1
                    node.throttle.log(
                        log,
                        "warn",
                        ("undecodable", self.socket_address),
                        "undecodable frame from {peer} dropped: {error}",
                        peer=self.socket_address,
                        error=short(str(e)),
                        node=node.name,
                    )
                    continue
                if not message.onward_route:
                    continue  # heartbeat
                self.messages_in += 1
                message.return_route = message.return_route.prepend(me)
                message.source = self
                message.origin = self
                node.deliver(message)
        finally:
            self._processing = False
            self.frames_in += frames

    def __repr__(self) -> str:
        return f"<TcpConnection {self.mode} {self.socket_address} {self.address}>"


@implementer(ITcpListener)
class TcpListener:
    """
    A listening port of the TCP transport.
    """

    mode = MODE_LISTENING

    def __init__(self, tcp: "TcpTransport", port, description: str) -> None:
        self._tcp = tcp
        self.port_object = port
        self.description = description
        self.transport_id = os.urandom(16).hex()
        self.address = Address.random_local()
        h = port.getHost()
        self.host = h.host
        self.port = h.port
        self.socket_address = _peer_text(h)
        self.listening = True

    def close(self) -> Deferred:
        if not self.listening:
            return succeed(None)
        self.listening = False
        self._tcp._listeners.remove(self)
        return maybeDeferred(self.port_object.stopListening)

    def __repr__(self) -> str:
        return f"<TcpListener {self.socket_address}>"


class _KeptEndpoint:
    """
    The endpoint of a L{KeptConnection}'s C{ClientService}: the target's
    client endpoint, whose failures the keeper notes (for its log line);
    the first attempt of a keeper that must connect once (C{keep} with
    C{wait}) decides its fate instead of being retried.
    """

    def __init__(self, keeper: "KeptConnection", endpoint) -> None:
        self._keeper = keeper
        self._endpoint = endpoint

    def connect(self, factory) -> Deferred:
        keeper = self._keeper
        d = self._endpoint.connect(factory)
        first, keeper._first = keeper._first, None
        if first is None:
            return d.addErrback(keeper._failed)
        # keep(wait=True): this attempt's failure fails keep(), which stops
        # the keeper (cancelling the Deferred held here); its success is
        # the keeper's first connection.
        # Stopping the keeper (forget(), or keep() failing) cancels what
        # it waits for: the attempt itself, so that it cannot connect late.
        held: Deferred = Deferred(lambda _: d.cancel())
        inside = [True]

        def connected(protocol):
            held.callback(protocol)
            conn = keeper.connection
            if conn is not None:
                first.callback(conn)
            else:
                first.errback(TransportError(f"connection to {keeper.target} closed at once"))

        def failed(f):
            keeper._failed(f)
            error = Failure(CancelledError()) if cancelled(f) else Failure(TransportError(keeper._reason))
            if inside[0]:  # failed at once, within the service's own step
                keeper._tcp.reactor.callLater(0, first.errback, error)
            else:
                first.errback(error)

        d.addCallbacks(connected, failed)
        inside[0] = False
        return held

    def __repr__(self) -> str:
        return f"<endpoint of kept connection {self._keeper.address} to {self._keeper.target}>"


class KeptConnection(ClientService):
    """
    An outgoing connection that comes back: a Twisted C{ClientService}
    that makes it again whenever it closes (same target, same worker
    address, so routes through it stay valid), with exponential backoff,
    until it is stopped (the TCP transport's L{TcpTransport.forget}).
    """

    #: Seconds to wait before retry number N: from 0.1 s, doubling, up to 5 s.
    retry_policy = staticmethod(backoffPolicy(0.1, 5.0, 2.0, jitter=lambda: 0.0))

    def __init__(self, tcp: "TcpTransport", target: str, address: Address, first: Optional[Deferred] = None) -> None:
        self._tcp = tcp
        self.target = target
        self.address = address
        #: the open connection, if any
        self.connection: Optional[TcpConnection] = None
        self._first = first
        self._reason = "connection closed"
        endpoint, self._key = client_endpoint(tcp.reactor, target, tcp.connect_timeout)
        ClientService.__init__(
            self,
            _KeptEndpoint(self, endpoint),
            _FrameFactory(tcp, MODE_OUTGOING, address),
            retryPolicy=self._delay,
            clock=tcp.reactor,
            prepareConnection=self._prepare,
        )

    def startService(self) -> None:
        if not self.running:  # started at once by keep(), and again with its parent
            ClientService.startService(self)

    def stopService(self) -> Deferred:
        """
        Stop reconnecting and close the connection (flushing it for at most
        L{TcpConnection.close_grace} seconds); fires once it is closed.
        """
        conn = self.connection
        closing = conn.close() if conn is not None else succeed(None)
        stopped = ClientService.stopService(self)
        return gather([closing, stopped])

    def _prepare(self, protocol) -> None:
        conn = protocol.connection
        if conn is None or not conn.connected or conn.address is None:
            return  # closed at once: its loss brings the next attempt
        conn.target = self._key
        self.connection = conn
        conn.when_closed().addCallback(lambda _: self._lost(conn))

    def _lost(self, conn: TcpConnection) -> None:
        if conn is self.connection:
            self.connection = None
            self._reason = "connection closed"

    def _failed(self, f):
        if not cancelled(f):
            self._reason = f"cannot connect to {self.target}: {reason(f)}"
        return f

    def _delay(self, attempt: int) -> float:
        # ClientService counts from 1: the first retry waits retry_policy(0).
        delay = self.retry_policy(max(0, attempt - 1))
        log.info(
            "connection {address} to {target}: {reason}; reconnecting in {delay:.1f} s",
            address=str(self.address),
            target=self.target,
            reason=self._reason,
            delay=delay,
        )
        return delay


def connection_dict(item) -> dict:
    """
    A listener or connection as the control API shows it.
    """
    return {
        "transport_id": item.transport_id,
        "transport_type": "TCP",
        "mode": item.mode,
        "socket_address": item.socket_address,
        "worker_address": str(item.address),
    }


@implementer(ITransport)
class TcpTransport(Feature):
    """
    A node's TCP transport: C{node.tcp}, registered with the node for TCP
    addresses (C{1#host:port}).  It is a feature of the node too
    (L{ockamtw.feature}): its kept connections (L{KeptConnection}) are its
    child services and C{state.json}'s C{connections}, and it answers the
    control API's C{/tcp}.
    """

    name = "tcp"
    state_keys = ("connections",)
    routes = {
        ("GET", "tcp", False): "list_route",
        ("POST", "tcp", False): "create_route",
        ("GET", "tcp", True): "show_route",
        ("DELETE", "tcp", True): "delete_route",
        ("POST", "tcp-listeners", False): "listener_create_route",
        ("DELETE", "tcp-listeners", True): "listener_delete_route",
    }

    address_type = TCP

    #: Seconds to wait for an outgoing connection.
    connect_timeout = 10.0
    #: Seconds after which a silent outgoing connection writes a heartbeat
    #: (C{None}: never); see L{ockamtw.transport.limits.HELLO_DELAY}.
    hello_delay = HELLO_DELAY
    #: Seconds a congested connection's peer may read nothing before the
    #: connection is closed (C{None}: never).
    stall_timeout: Optional[float] = 60.0
    #: Bytes one congested connection may hold unsent for streams under
    #: per-stream credit before it pauses their sources after all, and the
    #: same for all congested connections of the node together.
    link_credit_buffer = 32 * 1024 * 1024
    node_credit_buffer = 256 * 1024 * 1024

    def __init__(self, node, reactor=None) -> None:
        Feature.__init__(self, node)
        self.reactor = node.reactor if reactor is None else reactor
        #: Connections holding gathered frames, and the call that writes
        #: them at the end of this reactor round.
        self._gathering: List[TcpConnection] = []
        self._gather_call = None
        self._listeners: List[TcpListener] = []
        self._connections: Dict[Address, TcpConnection] = {}
        self._connecting = InFlight()
        #: address -> L{KeptConnection}
        self.kept: Dict[Address, KeptConnection] = {}
        #: The limits on accepted connections, and what they refused and
        #: closed (set C{guard.limits} to change them).
        self.guard = ConnectionGuard()
        #: congested connections whose peers take next to nothing
        self._slow: set = set()
        #: kept connections restored before the node started: (target, address)
        self._restoring: List[tuple] = []

    def _gather(self, conn: "TcpConnection") -> None:
        """
        C{conn} holds gathered frames: write them once the reactor has
        handled this round's events (C{callLater(0)} runs before the
        reactor waits again).
        """
        self._gathering.append(conn)
        if self._gather_call is None:
            self._gather_call = self.reactor.callLater(0, self.flush)

    def flush(self) -> None:
        """
        Write the frames every connection gathered (L{TcpConnection._write}).
        """
        call, self._gather_call = self._gather_call, None
        if call is not None and call.active():
            call.cancel()
        gathering, self._gathering = self._gathering, []
        for conn in gathering:
            conn.flush()

    def may_buffer(self, conn: "TcpConnection") -> bool:
        """
        Whether C{conn} may take more for credit streams without pausing
        their sources (see L{TcpConnection._pause_source}).
        """
        if conn.unsent() >= self.link_credit_buffer:
            return False
        return sum(c.unsent() for c in self._slow) < self.node_credit_buffer

    # --- listening -------------------------------------------------------------

    def listen(self, description: Union[str, int] = "tcp:0:interface=127.0.0.1") -> Deferred:
        """
        Listen on an endpoint string (a bare port means loopback, as does
        C{host:port}).  Fires with a L{TcpListener}; fails with
        L{TransportError} when the address cannot be bound.
        """
        try:
            desc = server_description(description)
            ep = endpoints.serverFromString(self.reactor, desc)
        except (ValueError, TypeError, KeyError) as e:
            return fail(TransportError(f"bad listen address {description!r}: {e}"))
        d = ep.listen(_FrameFactory(self, MODE_ACCEPTED))

        def listening(port):
            listener = TcpListener(self, port, desc)
            self._listeners.append(listener)
            self._announce(listener)
            return listener

        def failed(f):
            raise TransportError(f"cannot listen on {description}: {reason(f)}")

        return d.addCallbacks(listening, failed)

    def _announce(self, listener: "TcpListener") -> None:
        """
        Log that the node listens: a supervisor takes this line as the
        node's readiness, and may signal it from then on.  Bound before the
        reactor runs (C{twistd} binds in C{privilegedStartService}), the
        line waits until the reactor has started, which is when C{twistd}'s
        signal handlers are in place; otherwise it is logged at once.
        """

        def announce():
            log.info(
                "node {node} listening on {address}",
                node=self.node.name,
                address=listener.socket_address,
            )

        if getattr(self.reactor, "running", True) or not hasattr(self.reactor, "callWhenRunning"):
            announce()
        else:
            self.reactor.callWhenRunning(announce)

    # --- connecting -------------------------------------------------------------

    def connect(self, target: str, timeout: Optional[float] = None, address: Optional[Address] = None) -> Deferred:
        """
        Connect to C{host:port} (or C{1#host:port}, or a client endpoint
        string).  Fires with the L{TcpConnection} once connected; fails with
        L{TransportError}.  C{address} fixes the connection worker's address
        (random by default).
        """
        t = self.connect_timeout if timeout is None else timeout
        try:
            ep, key = client_endpoint(self.reactor, target, t)
        except WireError as e:
            return fail(e)
        if address is not None and not isinstance(address, Address):
            address = Address.parse(address)
        if address is not None and self.node.worker_at(address) is not None:
            return fail(TransportError(f"address {address} is already taken on node {self.node.name}"))
        d = ep.connect(_FrameFactory(self, MODE_OUTGOING, address))

        def connected(proto):
            conn = proto.connection
            if not conn.connected or conn.address is None:
                raise TransportError(f"connection to {target} closed at once")
            conn.target = key
            return conn

        def failed(f):
            if cancelled(f):
                # Cancelled by the caller: as any Deferred cancelled.
                return Failure(CancelledError())
            if f.check(TransportError):
                return f
            raise TransportError(f"cannot connect to {target}: {reason(f)}")

        return d.addCallbacks(connected, failed)

    def connection(self, address: Union[Address, str]) -> Optional[TcpConnection]:
        """
        The open connection whose worker address is C{address}, if any.
        """
        if not isinstance(address, Address):
            address = Address.parse(address)
        return self._connections.get(address)

    def keep(self, target: str, address: Union[Address, str, None] = None, wait: bool = True) -> Deferred:
        """
        Connect to C{target} and keep the connection: it is made again with
        the same worker address whenever it closes (see L{KeptConnection}).
        With C{wait}, fires with the first L{TcpConnection} (and fails,
        keeping nothing, if it cannot be made); else fires at once with the
        L{KeptConnection}, which keeps trying.
        """
        if address is None:
            address = Address.random_local()
        elif not isinstance(address, Address):
            address = Address.parse(address)
        if address in self.kept or self.node.worker_at(address) is not None:
            return fail(TransportError(f"address {address} is already taken on node {self.node.name}"))
        first: Optional[Deferred] = Deferred() if wait else None
        try:
            keeper = KeptConnection(self, target, address, first)
        except WireError as e:
            return fail(e)
        self.kept[address] = keeper
        keeper.setServiceParent(self)
        keeper.startService()  # at once, even before the node starts
        if first is None:
            return succeed(keeper)

        def failed(f):
            # (Not when forget() dropped it: its stopping failed this.)
            if self.kept.get(address) is keeper:
                del self.kept[address]
                self._drop(keeper)
            return f

        return first.addErrback(failed)

    def forget(self, address: Union[Address, str]) -> Deferred:
        """
        Stop keeping the connection at C{address} and close it.
        """
        if not isinstance(address, Address):
            address = Address.parse(address)
        keeper = self.kept.pop(address, None)
        if keeper is None:
            return succeed(None)
        return self._drop(keeper)

    def _drop(self, keeper: KeptConnection) -> Deferred:
        if keeper.parent is not None:
            keeper.disownServiceParent()  # stops it if this transport runs
        if keeper.running:
            return keeper.stopService()
        conn = keeper.connection
        return conn.close() if conn is not None else succeed(None)

    def connect_shared(self, target: str, route_hop: bool = False) -> Deferred:
        """
        An open outgoing connection to C{target} if there is one, else the
        one being made to it, else a new one: concurrent callers share one
        connection.  With C{route_hop} (a TCP hop named in a route), the
        target must be C{host:port}: endpoint strings such as C{unix:/path}
        are refused.

        @raise WireError: for a C{route_hop} that is not C{host:port}.
        """
        if route_hop:
            client_target(target, hostport_only=True)
        conn = self.connection_to(target)
        if conn is not None:
            return succeed(conn)
        key = target[2:] if target.startswith("1#") else target
        return self._connecting.wait(key, lambda: self.connect(target))

    def connect_hop(self, value: str) -> Deferred:
        """
        ITransport: the connection for C{1#value} named in a route (C{value}
        is C{host:port}; endpoint strings are refused): see
        L{connect_shared}.
        """
        try:
            return self.connect_shared(value, route_hop=True)
        except WireError as e:
            return fail(e)

    def connection_to(self, target: str) -> Optional[TcpConnection]:
        """
        An open outgoing connection made to C{target} (C{host:port}), if any.
        """
        if target.startswith("1#"):
            target = target[2:]
        for conn in self._connections.values():
            if conn.mode == MODE_OUTGOING and getattr(conn, "target", None) == target:
                return conn
        return None

    # --- bookkeeping --------------------------------------------------------------

    def _add(self, conn: TcpConnection) -> None:
        self._connections[conn.address] = conn

    def _remove(self, conn: TcpConnection) -> None:
        self._connections.pop(conn.address, None)
        other = conn.loop
        if other is not None:
            conn.loop = None
            if other.loop is conn:
                other.loop = None

    def _find_loop(self, conn: TcpConnection) -> None:
        """
        Pair C{conn} with the other end of the same socket if this node is
        connected to itself (the one's local address is the other's peer).
        """
        want_mode = MODE_ACCEPTED if conn.mode == MODE_OUTGOING else MODE_OUTGOING
        for other in self._connections.values():
            if (
                other is not conn
                and other.mode == want_mode
                and other.socket_address == conn.local_address
                and other.local_address == conn.socket_address
            ):
                conn.loop = other
                other.loop = conn
                log.info(
                    "connections {a} and {b} of node {node} are a loop to itself",
                    a=str(conn.address),
                    b=str(other.address),
                    node=self.node.name,
                )
                return

    @property
    def connections(self) -> List[TcpConnection]:
        return list(self._connections.values())

    @property
    def listeners(self) -> List[TcpListener]:
        return list(self._listeners)

    def list(self) -> list:
        """
        Listeners and connections, as C{tcp-connection list} shows them.
        """
        return list(self._listeners) + list(self._connections.values())

    def find(self, key: Union[Address, str]):
        """
        A listener or connection by worker address (C{0#hex} or bare hex),
        transport id, or socket address.
        """
        text = str(key)
        for item in self.list():
            if text in (str(item.address), item.address.value, item.transport_id, item.socket_address):
                return item
        return None

    def close_all(self) -> Deferred:
        """
        Stop every listener and close every connection; fires when done.
        """
        self.flush()
        ds = [self.forget(a) for a in list(self.kept)]
        ds += [l.close() for l in list(self._listeners)]
        ds += [c.close() for c in list(self._connections.values())]
        return gather(ds)

    # --- the feature: life, state, control routes ----------------------------------------------

    def startService(self) -> None:
        Feature.startService(self)
        self._keep_restored()

    def _keep_restored(self) -> None:
        restoring, self._restoring = self._restoring, []
        for target, address in restoring:
            self.keep(target, address, wait=False).addErrback(
                lambda f, a=address: log.error("connection {a} not restored: {r}", a=a, r=f.getErrorMessage())
            )

    def stopService(self) -> Deferred:
        """
        Stop keeping connections and close them (the node closes the rest:
        L{close_all}).
        """
        self._restoring = []
        return Feature.stopService(self)

    def save(self) -> dict:
        return {"connections": [{"to": k.target, "address": k.address.value} for k in self.kept.values()]}

    def restore(self, state: dict) -> None:
        waiting = {address for _, address in self._restoring}
        for item in state.get("connections", []):
            address = Address.parse(item["address"])
            if address in self.kept or address in waiting:
                continue
            waiting.add(address)
            self._restoring.append((item["to"], address))
        if self.running:
            self._keep_restored()

    def list_route(self, call) -> list:
        return [connection_dict(i) for i in self.list()]

    def _item(self, key: str):
        item = self.find(worker_key(key))
        if item is None:
            item = self.find(key)
        if item is None:
            raise ControlError(404, f"no TCP connection or listener {key!r} on node {self.node.name}")
        return item

    def show_route(self, call) -> dict:
        return connection_dict(self._item(call.key))

    async def create_route(self, call) -> dict:
        conn = await self.keep(call.need("to"))

        async def undo():
            await self.forget(conn.address)
            await conn.close()

        await call.saved(undo=undo)
        return connection_dict(conn)

    async def listener_create_route(self, call) -> dict:
        """
        Another TCP listener (C{ockam tcp-listener create}); it lasts until
        the node stops.
        """
        address = call.need("address")
        try:
            description = server_description(address)
        except (OckamError, ValueError) as e:
            raise ControlError(400, f"not a listener address: {address!r} ({e})") from None
        listener = await self.listen(description)
        return connection_dict(listener)

    async def listener_delete_route(self, call) -> dict:
        item = self._item(call.key)
        if item.mode != MODE_LISTENING:
            raise ControlError(404, f"no TCP listener {call.key!r} on node {self.node.name} (a connection: see tcp-connection)")
        if item is call.listener:
            raise ControlError(409, "the node's own listener cannot be deleted")
        info = connection_dict(item)
        await item.close()
        return info

    async def delete_route(self, call) -> dict:
        item = self._item(call.key)
        if item is call.listener:
            raise ControlError(409, "the node's own listener cannot be deleted")
        info = connection_dict(item)
        kept = item.address in self.kept
        if kept:
            await self.forget(item.address)
        await item.close()
        if kept:
            await call.saved()
        return info
