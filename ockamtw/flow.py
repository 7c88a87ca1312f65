"""
Flow control between whatever reads messages in and whatever writes them
out.

A L{BackPressure} is registered as the streaming producer of an outbound
transport (a node's TCP connection, a portal's client socket).  Twisted
calls its C{pauseProducing} when the transport's buffer passes its
high-water mark and C{resumeProducing} once it has drained.  While the
transport is congested, the source of every message written to it (an
L{ockamtw.interfaces.IFlowSource}: the connection or socket that read the
message in) is paused; all of them resume when it drains.
"""

from __future__ import annotations

import socket as _socket
import struct as _struct
from time import monotonic_ns
from typing import Optional

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from .twisted_internals import idle_socket, unsent  # noqa: F401 (unsent: re-exported)

log = Logger(namespace="ockamtw.flow")


#: The credit window of ockamtw's per-stream flow control (docs/protocol.md):
#: a portal accepts this many bytes beyond what its socket has handed to the
#: kernel.  It bounds what a stalled stream holds on the receiving node, and
#: must cover a credit round trip at full speed: on a busy 2-core host,
#: relay throughput was 69% of the link-pausing figure with 1 MiB, 79% with
#: 2 MiB, 90% with 4 MiB (benchmark harness, same run); with L{send_now},
#: 1, 2, 4 and 8 MiB gave 5.5, 6.2, 6.7 and 6.4 Gbit/s (medians of three).
STREAM_WINDOW = 4 * 1024 * 1024

#: The end of an ockamtw portal worker's address when it speaks per-stream
#: flow control (Credit messages); not hex, so no Ockam address has it.
FLOW_MARK = ".fc1"
#: Before L{FLOW_MARK}: the portal (a TCP inlet's) takes the outlet's Pong
#: before the outlet's target is connected, and a Refuse from the portal
#: that sent it if that target then cannot be reached (docs/protocol.md).
EARLY_MARK = ".ep"


def credit_stream(message) -> bool:
    """
    Whether C{message} belongs to a portal stream whose two ends both
    speak per-stream flow control (its onward and return routes both end
    at a L{FLOW_MARK} address): each end then bounds what it sends by the
    other's credit, so a node relaying it need not pause the connection it
    came in on when the way out is congested.
    """
    onward = message.onward_route
    ret = message.return_route
    return bool(onward) and bool(ret) and onward[-1].value.endswith(FLOW_MARK) and ret[-1].value.endswith(FLOW_MARK)


#: Bytes a transport reads at once, and its outbound high-water mark: five
#: full portal chunks of 48 KiB, or four of 60 KiB (L{ockamtw.portal.MAX_CHUNK},
#: L{ockamtw.portal.FLOW_CHUNK}); Twisted uses one attribute, C{bufferSize},
#: for both, and its default of 64 KiB splits reads into one 48 KiB chunk
#: and a small one.
TRANSPORT_BUFFER = 245760


#: Writes at least this large go to the kernel at once (L{send_now}).
SEND_NOW_FROM = 16384
#: A smaller write goes at once only if the transport's last one went more
#: than this many nanoseconds ago: a lone message (a request, a reply) saves
#: a reactor round, while a burst of small messages waits in the transport's
#: buffer and leaves in one segment rather than one each (one segment per
#: small message stalled a reader with a 16 KiB receive buffer on loopback).
SMALL_SEND_GAP_NS = 200_000


#: Platforms without C{sendmsg} write through the transport only.
_HAVE_SENDMSG = hasattr(_socket.socket, "sendmsg")


def send_now(transport, parts, size: int) -> None:
    """
    Write C{parts} (a list of C{bytes}, C{size} bytes in all) to a
    transport.  When the transport is a plain Twisted TCP transport holding
    nothing else, and the write is large (at least L{SEND_NOW_FROM}) or a
    lone small one (none in the last L{SMALL_SEND_GAP_NS} on that
    transport), the parts go to the kernel at once with one C{sendmsg} (no
    joining of buffers, no reactor round trip).  What the kernel does not
    take, and everything in any other case, goes through the transport's
    own buffer (and so its flow control) as usual.  Order is kept: the
    direct send happens only when nothing is buffered.
    """
    if size < SEND_NOW_FROM:
        now = monotonic_ns()
        if now - getattr(transport, "_ockamtw_small_sent", 0) < SMALL_SEND_GAP_NS:
            transport.writeSequence([p if p.__class__ is bytes else bytes(p) for p in parts])
            return
        try:
            transport._ockamtw_small_sent = now
        except AttributeError:
            pass
    send_direct(transport, parts)


#: At most this many buffers go to one C{sendmsg} (Linux's C{IOV_MAX} is
#: 1024); longer lists are joined first.
MAX_PARTS = 512


def send_direct(transport, parts) -> None:
    """
    Write C{parts} to a transport: straight to the kernel with one
    C{sendmsg} when it is a plain Twisted TCP transport holding nothing
    unsent, and what the kernel does not take (or everything, for any
    other transport) through the transport's own buffer.  A part may be
    a C{memoryview} (the kernel takes it as it is; the transport's buffer,
    which takes only C{bytes}, gets a copy of what is left of it).
    """
    sock = idle_socket(transport) if _HAVE_SENDMSG else None
    if sock is not None:
        if len(parts) > MAX_PARTS:
            parts = [b"".join(parts)]
        try:
            sent = sock.sendmsg(parts) if len(parts) > 1 else sock.send(parts[0])
        except OSError:
            # Would block, or a broken connection that the transport's own
            # write will find and report.
            sent = 0
        if sent:
            rest = []
            for part in parts:
                n = len(part)
                if sent >= n:
                    sent -= n
                    continue
                rest.append(part[sent:] if sent else part)
                sent = 0
            if not rest:
                return
            parts = rest
    transport.writeSequence([p if p.__class__ is bytes else bytes(p) for p in parts])


try:
    from fcntl import ioctl as _ioctl
    from termios import TIOCOUTQ as _OUTQ  # SIOCOUTQ on Linux
except ImportError:  # pragma: no cover (not Linux)
    _ioctl = _OUTQ = None
_INT = _struct.Struct("i")
_INT_ZERO = _INT.pack(0)


def kernel_unsent(transport) -> Optional[int]:
    """
    Bytes the kernel holds in C{transport}'s socket that its peer has not
    acknowledged yet (Linux's C{SIOCOUTQ}); C{None} when that cannot be
    known (another platform, another kind of transport, a closed socket).
    """
    if _OUTQ is None:
        return None
    try:
        return _INT.unpack(_ioctl(transport.socket.fileno(), _OUTQ, _INT_ZERO))[0]
    except (AttributeError, OSError, ValueError):
        return None


def tune(transport) -> None:
    """
    Read (and buffer before pausing) L{TRANSPORT_BUFFER} bytes at a time.
    """
    try:
        transport.bufferSize = TRANSPORT_BUFFER
    except AttributeError:
        pass


@implementer(IPushProducer)
class BackPressure:
    """
    Pauses the sources feeding a congested transport.

    @ivar congested: whether the transport's buffer is over its high-water
        mark right now.
    """

    def __init__(self, on_drain=None, on_pause=None) -> None:
        self.congested = False
        self._paused: set = set()
        self._on_drain = on_drain
        self._on_pause = on_pause

    def attach(self, transport) -> None:
        """
        Watch C{transport}'s outbound buffer.
        """
        transport.registerProducer(self, True)

    def wrote(self, source) -> None:
        """
        Call after writing a message read in by C{source} (or C{None}): if
        the transport is congested, C{source} is paused until it drains.
        """
        if self.congested and source is not None and source not in self._paused:
            self._paused.add(source)
            source.pause_flow()

    @property
    def paused_sources(self) -> int:
        return len(self._paused)

    def release(self) -> None:
        """
        Resume every source paused so far (the transport drained or closed).
        """
        sources, self._paused = self._paused, set()
        for source in sources:
            try:
                source.resume_flow()
            except Exception:
                log.failure("resuming a flow source failed")

    # IPushProducer, called by the transport

    def pauseProducing(self) -> None:
        self.congested = True
        if self._on_pause is not None:
            self._on_pause()

    def resumeProducing(self) -> None:
        self.congested = False
        self.release()
        if self._on_drain is not None:
            self._on_drain()

    def stopProducing(self) -> None:
        self.congested = False
        self.release()


class LinkWatch:
    """
    Watches a congested outbound link (a TCP connection over its high-water
    mark) every C{interval} seconds, by what the kernel took of what was
    written (C{taken()}, a count that only grows):

      - a link that took less than C{slow_bytes} in each of two intervals
        in a row is I{slow} (C{on_slow(True)}), until it takes that much in
        one (C{on_slow(False)});
      - a link that took nothing at all for C{stall_timeout} seconds is
        I{stalled} (C{on_stall()}).

    It runs while C{congested()} holds and stops by itself at the first
    check after it does not (so a link that is congested many times a
    second costs one timer, not one per episode).  A check that runs late
    (the event loop was held up, not the peer) never judges.
    """

    def __init__(self, clock, taken, congested, on_slow, on_stall,
                 interval: float = 0.25, slow_bytes: int = 65536, stall_timeout: Optional[float] = 60.0) -> None:
        self._clock = clock
        self._taken = taken
        self._congested = congested
        self._on_slow = on_slow
        self._on_stall = on_stall
        self.interval = interval
        self.slow_bytes = slow_bytes
        self.stall_timeout = stall_timeout
        self.slow = False
        self._watching = False
        self._timer = None
        self._last = 0
        self._progress_at = 0.0
        self._slow_checks = 0
        self._due = 0.0

    @property
    def active(self) -> bool:
        return self._watching

    def start(self) -> None:
        """
        The link is congested: watch it (no-op while watching).
        """
        if self._watching or self._clock is None:
            return
        self._watching = True
        now = self._clock.seconds()
        self._last = self._taken()
        self._progress_at = now
        self._slow_checks = 0
        self._schedule(now)

    def stop(self) -> None:
        self._watching = False
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        self._set_slow(False)

    def _schedule(self, now: float) -> None:
        self._due = now + self.interval
        self._timer = self._clock.callLater(self.interval, self._check)

    def _set_slow(self, slow: bool) -> None:
        if slow != self.slow:
            self.slow = slow
            self._on_slow(slow)

    def _check(self) -> None:
        # Stays "watching" throughout: what the callbacks below cause (a
        # source resumed writes here and congests the link again) must not
        # start a second timer.
        self._timer = None
        now = self._clock.seconds()
        taken = self._taken()
        delta = taken - self._last
        self._last = taken
        if delta:
            self._progress_at = now
        if now - self._due > self.interval:
            # Late: the event loop, not the peer, held things up.
            self._progress_at = max(self._progress_at, now - self.interval)
            self._schedule(now)
            return
        if not self._congested():
            self._watching = False
            self._set_slow(False)
            return
        if delta < self.slow_bytes:
            self._slow_checks += 1
            if self._slow_checks >= 2:
                self._set_slow(True)
        else:
            self._slow_checks = 0
            self._set_slow(False)
        if self.stall_timeout is not None and now - self._progress_at >= self.stall_timeout:
            self._watching = False
            self._on_stall()
            return
        if self._watching and self._timer is None:
            self._schedule(now)


class PauseCounter:
    """
    The nesting L{ockamtw.interfaces.IFlowSource} behaviour for a transport
    that reads: the first pause stops reading, the last resume restarts it
    and calls C{on_resume}.
    """

    def __init__(self, transport, on_resume=None) -> None:
        self.transport = transport
        self.count = 0
        self.active = True
        self._on_resume = on_resume

    def pause(self) -> None:
        self.count += 1
        if self.count == 1 and self.active:
            self.transport.pauseProducing()

    def resume(self) -> None:
        if self.count == 0:
            return
        self.count -= 1
        if self.count == 0 and self.active:
            self.transport.resumeProducing()
            if self._on_resume is not None:
                self._on_resume()


class Closer:
    """
    Closes a transport, flushing what it holds, and makes sure the close
    ends.

    Twisted's C{loseConnection} waits for a registered producer to
    unregister, so the producer is unregistered first.  The transport then
    writes out its buffer and closes.  It is aborted only when its peer has
    stopped reading: after C{grace} seconds in which the kernel took none of
    its unsent bytes (L{unsent}), never while bytes still move.  Progress is
    checked L{CHECKS} times per C{grace}, so an abort comes between C{grace}
    and C{grace * (1 + 1/CHECKS)} seconds after the last progress; a check
    that runs late (the event loop itself was held up, so the reader could
    not be served) only takes a sample and never aborts.  A
    C{limit} bounds the whole close (an explicit close that must end soon).
    A transport that does not tell its unsent bytes is aborted C{grace}
    seconds after the close.
    """

    #: How often per grace period progress is checked.
    CHECKS = 4

    def __init__(self, reactor) -> None:
        self._reactor = reactor
        self._timer = None
        self._started = False
        self._transport = None
        self._grace: Optional[float] = None
        self._deadline: Optional[float] = None
        self._unsent: Optional[int] = None
        self._progress_at = 0.0
        self._due = 0.0

    def close(self, transport, grace: Optional[float], limit: Optional[float] = None) -> None:
        """
        Close C{transport} after flushing it; abort it after C{grace}
        seconds without progress (C{None}: never), or C{limit} seconds from
        now in any case (C{None}: no bound).  A second call while it is
        closing can only shorten both; after it is closed, nothing.
        """
        reactor = self._reactor
        now = reactor.seconds() if reactor is not None else 0.0
        deadline = None if limit is None else now + limit
        if self._started:
            if self._transport is None:
                return  # closed or aborted already
            if grace is not None and (self._grace is None or grace < self._grace):
                self._grace = grace
            if deadline is not None and (self._deadline is None or deadline < self._deadline):
                self._deadline = deadline
        else:
            self._started = True
            self._transport = transport
            self._grace = grace
            self._deadline = deadline
            self._unsent = unsent(transport)
            self._progress_at = now
            try:
                transport.unregisterProducer()
            except Exception:
                pass
            transport.loseConnection()  # may close it (and call closed()) at once
        if reactor is not None:
            self._schedule(now)

    def _schedule(self, now: float) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._transport is None:  # closed during loseConnection
            return
        grace, deadline = self._grace, self._deadline
        if grace is None and deadline is None:
            return
        when = []
        if grace is not None:
            idle_end = self._progress_at + grace
            if self._unsent is None:
                when.append(idle_end)  # cannot tell progress: abort then
            else:
                when.append(min(idle_end, now + grace / self.CHECKS))
        if deadline is not None:
            when.append(deadline)
        self._due = max(now, min(when))
        self._timer = self._reactor.callLater(self._due - now, self._check)

    def _check(self) -> None:
        self._timer = None
        transport = self._transport
        if transport is None:
            return
        now = self._reactor.seconds()
        pending = unsent(transport) if self._unsent is not None else None
        if pending is not None and pending < self._unsent:
            self._progress_at = now  # the kernel took bytes since the last check
        self._unsent = pending
        stalled = self._grace is not None and now - self._progress_at >= self._grace
        if stalled and pending is not None and now - self._due > self._grace / self.CHECKS:
            # This check ran late: what looks like no progress may be the
            # event loop's own delay.  Judge at the next check, on time
            # (one interval from now).
            self._progress_at = max(self._progress_at, now - self._grace * (1 - 1 / self.CHECKS))
            stalled = False
        over = self._deadline is not None and now >= self._deadline
        if stalled or over:
            self._transport = None
            transport.abortConnection()
            return
        self._schedule(now)

    def closed(self) -> None:
        """
        The transport is closed: forget it and the abort timer.
        """
        self._transport = None
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None


class CloseNotifier:
    """
    Withdrawable close callbacks: C{on_close(f)} returns a key that
    C{cancel_on_close(key)} withdraws, so short-lived watchers of a
    long-lived connection or channel leave nothing behind.  The owner calls
    L{_notify_closed} once, when it closes.
    """

    _close_callbacks: dict

    def on_close(self, f) -> int:
        """
        Call C{f(self)} once this is closed; returns a key for
        L{cancel_on_close}.
        """
        callbacks = self.__dict__.setdefault("_close_callbacks", {})
        key = id(f)
        while key in callbacks:
            key += 1
        callbacks[key] = f
        return key

    def cancel_on_close(self, key: int) -> None:
        self.__dict__.get("_close_callbacks", {}).pop(key, None)

    def _notify_closed(self) -> None:
        callbacks = self.__dict__.pop("_close_callbacks", {})
        for f in callbacks.values():
            try:
                f(self)
            except Exception:
                log.failure("close callback failed")
