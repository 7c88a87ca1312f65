"""
Two Twisted transports joined back to back, in one process: what one end's
protocol writes, the other end's protocol reads.  An C{ockam:} endpoint's
connection is one end; the other end's protocol is the portal worker's
(L{ockamtw.portal._SocketProtocol}), so a portal stream serves an ordinary
Twisted protocol with no socket in between (L{ockamtw.portal.endpoints}).

Each end behaves as a Twisted TCP transport does, as far as a protocol can
tell:

  - flow control: an end is an L{IPushProducer} (C{pauseProducing} stops
    delivering to its protocol) and an L{IConsumer}: a producer registered
    with it is paused while more than C{bufferSize} bytes it wrote wait
    unread at the other end, and resumed once they are all read (a pull
    producer is asked for more each time they are);
  - a protocol reads at most C{bufferSize} bytes per C{dataReceived};
  - half-close: C{loseWriteConnection} is an end of file at the other end,
    after the data written before it (C{readConnectionLost} for an
    L{IHalfCloseableProtocol}; any other protocol loses the connection, as
    on a socket), and C{writeConnectionLost} here once it is read;
  - C{loseConnection} closes both ends once the other has read what was
    written (C{ConnectionDone} on both, or the reason the closing end was
    given in L{StreamTransport.close_reason}); C{abortConnection} closes them
    at once (C{ConnectionAborted} here, C{ConnectionLost} there);
  - C{connectionLost} never runs inside the call that caused it.

Data is handed to the other end's protocol during C{write} when that end is
reading (one fewer reactor round than a socket, as in magic-wormhole's
Dilation); a reading end that was paused is served again in a later
reactor round.
"""

from __future__ import annotations

import collections
from typing import Optional

from twisted.internet import error
from twisted.internet.interfaces import IAddress, IConsumer, IHalfCloseableProtocol, IPushProducer, ITransport
from twisted.python.failure import Failure
from twisted.logger import Logger
from zope.interface import implementer

log = Logger(namespace="ockamtw.portal.pipe")


@implementer(IAddress)
class OckamAddress:
    """
    The address of one end of an in-process portal stream: the route its
    other side is reached by (C{getPeer}), or the address it is reached at
    (C{getHost}).

    @ivar route: route text, such as
        C{/ip4/127.0.0.1/tcp/7000/service/forward_to_n3/service/outlet}.
    """

    type = "ockam"

    def __init__(self, route: str) -> None:
        self.route = route

    def __eq__(self, other) -> bool:
        return isinstance(other, OckamAddress) and other.route == self.route

    def __ne__(self, other) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(("ockam", self.route))

    def __repr__(self) -> str:
        return f"OckamAddress({self.route!r})"

    def __str__(self) -> str:
        return f"ockam:{self.route}"


@implementer(ITransport, IConsumer, IPushProducer)
class StreamTransport:
    """
    One end of a L{pipe}.

    @ivar protocol: the protocol it serves (once L{connect}ed).
    @ivar peer: the other end.
    @ivar bufferSize: the most bytes handed to the protocol at once, and
        how many bytes written here may wait unread at the other end before
        a registered streaming producer is paused.
    @ivar close_reason: what the other end's protocol is told when this
        end closes (C{None}: the connection was closed cleanly).
    """

    bufferSize = 65536

    def __init__(self, reactor, host: IAddress, peer_address: IAddress) -> None:
        self.reactor = reactor
        self._host = host
        self._peer_address = peer_address
        self.protocol = None
        self.peer: Optional[StreamTransport] = None
        self.connected = False
        self.disconnecting = False
        self.disconnected = False
        self.close_reason: Optional[Exception] = None
        self.producer = None
        self.streamingProducer = False
        self._producer_paused = False
        self._pull_scheduled = False
        # what was written at the other end and not read here yet
        self._inbox: collections.deque = collections.deque()
        self._inbox_size = 0
        self._offset = 0  # into the first chunk of the inbox
        self._paused = False
        self._pumping = False
        self._scheduled = None
        self._write_closed = False  # loseWriteConnection (or loseConnection) here
        self._write_lost_told = False
        self._eof = False  # the other end's loseWriteConnection, not read yet
        self._read_closed = False
        self._closing = False  # the other end's loseConnection, not acted on yet
        self._lost_with: Optional[Failure] = None

    # --- setting up ---------------------------------------------------------------------------

    def connect(self, protocol) -> None:
        """
        Serve C{protocol} (C{makeConnection}); what the other end wrote
        before is read now.
        """
        self.protocol = protocol
        self.connected = True
        protocol.makeConnection(self)
        if self._inbox or self._eof or self._closing:
            self._schedule()

    @property
    def unsent_bytes(self) -> int:
        """
        Bytes written here that the other end's protocol has not read yet
        (what L{ockamtw.twisted_internals.unsent} reports for this
        transport).
        """
        return self.peer._inbox_size if self.peer is not None else 0

    # --- ITransport --------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not isinstance(data, bytes):
            raise TypeError(f"Data must be bytes, not {type(data).__name__}")
        if not data or self._write_closed or self.disconnected or not self.connected:
            return
        self.peer._take(data)
        self._maybe_pause_producer()

    def writeSequence(self, data) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        if self.disconnecting or self.disconnected:
            return
        self.disconnecting = True
        self._write_closed = True
        # Nothing more is read here; the other end reads what was written,
        # then both ends are closed.
        self._drop_inbox()
        peer = self.peer
        peer._closing = True
        peer._schedule()

    def loseWriteConnection(self) -> None:
        if self._write_closed or self.disconnected:
            return
        self._write_closed = True
        self.peer._eof = True
        self.peer._schedule()

    def abortConnection(self) -> None:
        if self.disconnected or self._lost_with is not None:
            return
        peer = self.peer
        self._lost_with = Failure(error.ConnectionAborted())
        reason = self.close_reason or error.ConnectionLost("the other side aborted the connection")
        if peer._lost_with is None and not peer.disconnected:
            peer._lost_with = Failure(reason)
        self._drop_inbox()
        peer._drop_inbox()
        self._schedule()
        peer._schedule()

    def getHost(self) -> IAddress:
        return self._host

    def getPeer(self) -> IAddress:
        return self._peer_address

    # --- IPushProducer: reading ---------------------------------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        if self._paused:
            self._paused = False
            self._schedule()

    def stopProducing(self) -> None:
        self.loseConnection()

    # --- IConsumer: writing --------------------------------------------------------------------

    def registerProducer(self, producer, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError(f"Cannot register producer {producer!r}, because producer {self.producer!r} "
                               "was never unregistered.")
        if self.disconnected:
            producer.stopProducing()
            return
        self.producer = producer
        self.streamingProducer = streaming
        self._producer_paused = False
        if not streaming:
            producer.resumeProducing()
        else:
            self._maybe_pause_producer()

    def unregisterProducer(self) -> None:
        self.producer = None
        self._producer_paused = False

    def _maybe_pause_producer(self) -> None:
        if (
            self.producer is not None
            and self.streamingProducer
            and not self._producer_paused
            and self.peer._inbox_size > self.bufferSize
        ):
            self._producer_paused = True
            self.producer.pauseProducing()

    def _drained(self) -> None:
        """
        The other end has read everything written here.
        """
        producer = self.producer
        if producer is not None and not self.disconnected:
            if not self.streamingProducer:
                if not self._pull_scheduled:
                    self._pull_scheduled = True
                    self.reactor.callLater(0, self._pull)
            elif self._producer_paused:
                self._producer_paused = False
                producer.resumeProducing()
        if self._write_closed and not self.disconnecting and not self._write_lost_told:
            self._write_lost_told = True
            half = IHalfCloseableProtocol(self.protocol, None)
            if half is not None:
                self._call(half.writeConnectionLost)

    def _pull(self) -> None:
        self._pull_scheduled = False
        producer = self.producer
        if producer is not None and not self.streamingProducer and not self.disconnected and not self._write_closed:
            producer.resumeProducing()

    # --- reading: what the other end wrote ------------------------------------------------------

    def _take(self, data: bytes) -> None:
        if self.disconnecting or self.disconnected or self._read_closed or self._lost_with is not None:
            return  # nobody reads here any more
        self._inbox.append(data)
        self._inbox_size += len(data)
        if self.protocol is not None and not self._paused:
            self._pump()

    def _drop_inbox(self) -> None:
        self._inbox.clear()
        self._inbox_size = 0
        self._offset = 0

    def _schedule(self) -> None:
        if self._scheduled is None and not self.disconnected:
            self._scheduled = self.reactor.callLater(0, self._scheduled_pump)

    def _scheduled_pump(self) -> None:
        self._scheduled = None
        self._pump()

    def _next_chunk(self) -> bytes:
        head = self._inbox[0]
        start = self._offset
        left = len(head) - start
        n = self.bufferSize
        if left <= n:
            self._inbox.popleft()
            self._offset = 0
            chunk = head if start == 0 else head[start:]
        else:
            chunk = head[start : start + n]
            self._offset = start + n
        self._inbox_size -= len(chunk)
        return chunk

    def _pump(self) -> None:
        """
        Hand the protocol what there is to read, then the end of file or
        the close that came after it.
        """
        if self._pumping or self.disconnected:
            return
        if self.protocol is None:
            # Never connected (a stream that ended before it opened).
            if self._closing or self._lost_with is not None:
                self._drop_inbox()
                self._closer_done()
                self._lose(self._lost_with or Failure(error.ConnectionDone()))
            return
        self._pumping = True
        try:
            if self._lost_with is not None:
                self._lose(self._lost_with)
                return
            while self._inbox and not self._paused and not self.disconnecting and self._lost_with is None:
                chunk = self._next_chunk()
                try:
                    self.protocol.dataReceived(chunk)
                except BaseException:
                    log.failure("{protocol} failed in dataReceived", protocol=type(self.protocol).__name__)
                    self._lose_both(Failure(), Failure(error.ConnectionLost("the other side failed")))
                    return
            if self._lost_with is not None:
                self._lose(self._lost_with)
                return
            if self._inbox:
                return
            self.peer._drained()
            if self._inbox:
                # The writer wrote more when told its data was read: read
                # it in a later reactor round.
                self._schedule()
                return
            if self._closing:
                # Everything the closing end wrote is read: it is closed.
                self._closer_done()
            if self._paused and not self.disconnecting:
                return  # not reading: the end of the stream is not seen yet
            if self._closing:
                self._lose(Failure(self.peer.close_reason or error.ConnectionDone()))
            elif self._eof and not self._read_closed:
                self._read_closed = True
                half = IHalfCloseableProtocol(self.protocol, None)
                if half is not None:
                    self._call(half.readConnectionLost)
                else:
                    # As on a socket: a protocol that cannot half-close
                    # loses the connection at end of file.
                    self._lose_both(Failure(error.ConnectionDone()), Failure(error.ConnectionDone()))
        finally:
            self._pumping = False

    def _closer_done(self) -> None:
        """
        The other end closed (C{loseConnection}) and what it wrote is read
        (or dropped): it is closed now, in a later reactor round.
        """
        peer = self.peer
        if peer.disconnecting and not peer.disconnected and peer._lost_with is None:
            peer._lost_with = Failure(error.ConnectionDone())
            peer._schedule()

    def _call(self, f) -> None:
        try:
            f()
        except BaseException:
            log.failure("{protocol} failed", protocol=type(self.protocol).__name__)
            self._lose_both(Failure(), Failure(error.ConnectionLost("the other side failed")))

    # --- the end ------------------------------------------------------------------------------------

    def _lose_both(self, here: Failure, there: Failure) -> None:
        """
        Close this end now with C{here}, and the other end with C{there}
        (in a later reactor round) unless it is closed already.
        """
        peer = self.peer
        if not peer.disconnected and peer._lost_with is None:
            peer._lost_with = there
            peer._drop_inbox()
            peer._schedule()
        self._lose(here)

    def _lose(self, reason: Failure) -> None:
        if self.disconnected:
            return
        self.disconnected = True
        self.connected = False
        self.disconnecting = True
        self._drop_inbox()
        if self._scheduled is not None:
            if self._scheduled.active():
                self._scheduled.cancel()
            self._scheduled = None
        producer, self.producer = self.producer, None
        if producer is not None:
            try:
                producer.stopProducing()
            except Exception:
                log.failure("stopping the producer of a closed stream failed")
        protocol = self.protocol
        if protocol is not None:
            try:
                protocol.connectionLost(reason)
            except Exception:
                log.failure("{protocol} failed in connectionLost", protocol=type(protocol).__name__)
        # The other end is closed too (a later reactor round), unless it
        # still reads what was written here before an end of file.
        peer = self.peer
        if not peer.disconnected and peer._lost_with is None and not peer._closing:
            peer._closing = True
            peer._schedule()


def pipe(reactor, address_a: IAddress, address_b: IAddress):
    """
    Two L{StreamTransport}s joined back to back: C{a}'s host address is
    C{address_a} and its peer's C{address_b}, and the other way round for
    C{b}.  Returns C{(a, b)}; connect each to its protocol with
    L{StreamTransport.connect}.
    """
    a = StreamTransport(reactor, address_a, address_b)
    b = StreamTransport(reactor, address_b, address_a)
    a.peer, b.peer = b, a
    return a, b
