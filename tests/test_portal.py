"""
Integration tests of TCP portals (inlets and outlets, section 6 of the wire
spec): in-process nodes on the global reactor, real loopback sockets on port
0, in-process targets and clients written with plain Twisted, and raw-socket
peers that speak the portal and relay frames with hand-written bytes and no
ockamtw code.

The usual topology is the seed's: a client connects to n1's inlet, whose
route goes through the relay C{forward_to_n3} at n2 to n3's outlet, which
connects to the target.

Nothing sleeps.  Waits are Deferreds fired by events, or conditions checked
until a deadline (L{wait_until}); the only timers are the slow readers' pace
(the behaviour under test) and the buffer sampler.  Measured figures are
printed on lines starting with C{FIGURE:}.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import socket
import sys
import time
from typing import Callable, List, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, formatEvent, globalLogPublisher
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web import resource as web_resource, server as web_server, static as web_static
from zope.interface import implementer

from ockamtw import Address, Node, Route
from ockamtw.flow import STREAM_WINDOW
from ockamtw.relay import Forwarder

from .helpers import (
    RawFrameClient,
    async_test,
    deadline,
    h_frame,
    h_message,
    h_string,
    held_port,
    outbound_buffered,
    spawn,
    uvarint,
)

log = Logger(namespace="tests.test_portal")

LOOPBACK = "tcp:0:interface=127.0.0.1"
#: Targets accept bursts of connections (the outlet connects once per client).
TARGET_LISTEN = "tcp:0:interface=127.0.0.1:backlog=1024"
HEX32 = re.compile(rb"^[0-9a-f]{32}$")
#: An ockamtw inlet portal's address: it offers per-stream flow control.
HEX32_FC = re.compile(rb"^[0-9a-f]{32}\.fc1$")
#: The largest Payload data the spec allows (48 KiB).
MAX_CHUNK = 49152
MIB = 1024 * 1024


def figure(text: str) -> None:
    """
    Report a measured figure: on stdout with the C{FIGURE:} prefix, and in
    the test log.
    """
    print(f"FIGURE: {text}", flush=True)
    log.info("FIGURE: {text}", text=text)


# --- waiting --------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], seconds: float, what: str, interval: float = 0.01) -> Deferred:
    """
    Fires once C{predicate()} is true (checked now and every C{interval}
    seconds); fails with an C{AssertionError} after C{seconds}.
    """
    d: Deferred = Deferred()
    pending = [None]

    def check():
        pending[0] = None
        if d.called:
            return
        if predicate():
            d.callback(None)
        else:
            pending[0] = reactor.callLater(interval, check)

    def stop_polling(result):
        if pending[0] is not None and pending[0].active():
            pending[0].cancel()
        pending[0] = None
        return result

    d.addBoth(stop_polling)
    check()
    return deadline(d, seconds, what)


def fresh(waiters: list) -> Deferred:
    d: Deferred = Deferred()
    waiters.append(d)
    return d


def fire_all(waiters: list, result=None) -> None:
    while waiters:
        d = waiters.pop(0)
        if not d.called:
            d.callback(result)


class LogWatch:
    """
    Collects log events that match C{match(event)}; C{when(n)} fires once
    C{n} have been seen.
    """

    def __init__(self, testcase, match: Callable[[dict], bool]) -> None:
        self.match = match
        self.events: List[dict] = []
        self._waiting: List[tuple] = []
        globalLogPublisher.addObserver(self)
        testcase.addCleanup(globalLogPublisher.removeObserver, self)

    def __call__(self, event: dict) -> None:
        try:
            matched = self.match(event)
        except Exception:
            matched = False
        if matched:
            self.events.append(event)
            still = []
            for n, d in self._waiting:
                if len(self.events) >= n and not d.called:
                    d.callback(self.events[:n])
                elif not d.called:
                    still.append((n, d))
            self._waiting = still

    def when(self, n: int, seconds: float, what: str) -> Deferred:
        if len(self.events) >= n:
            return succeed(self.events[:n])
        d: Deferred = Deferred()
        self._waiting.append((n, d))
        return deadline(d, seconds, what)


# --- streams --------------------------------------------------------------------


@implementer(IPushProducer)
class StreamWriter:
    """
    Writes C{total} pseudo-random (non-repeating) bytes to a transport as its
    streaming producer, so the writer itself respects flow control; keeps a
    digest of what it wrote, not the bytes.
    """

    def __init__(self, transport, total: int, seed: int, close: bool = False, chunk: int = 65536) -> None:
        self.transport = transport
        self.total = total
        self.close = close
        self.chunk = chunk
        self.rng = random.Random(seed)
        self.digest = hashlib.sha1()
        self.sent = 0
        self.paused = False
        self.pauses = 0
        self.stopped = False
        self.finished = False
        self.started_at: Optional[float] = None
        self.finished_at: Optional[float] = None

    def start(self) -> None:
        self.started_at = time.monotonic()
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        if self.stopped:
            return
        self.paused = False
        while not self.paused and self.sent < self.total:
            data = self.rng.randbytes(min(self.chunk, self.total - self.sent))
            self.digest.update(data)
            self.sent += len(data)
            self.transport.write(data)
        if self.sent >= self.total and not self.finished:
            self.finished = True
            self.finished_at = time.monotonic()
            self.transport.unregisterProducer()
            if self.close:
                self.transport.loseConnection()

    def pauseProducing(self) -> None:
        if not self.paused:
            self.pauses += 1
        self.paused = True

    def stopProducing(self) -> None:
        self.paused = True
        self.stopped = True


class Collector(Protocol):
    """
    A client or target that records what it reads (the bytes when C{keep},
    always their count and digest).  C{received(n)} fires once C{n} bytes
    have arrived; C{when_lost()} once the connection is closed.
    """

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self.data = bytearray()
        self.count = 0
        self.digest = hashlib.sha1()
        self.connected_now = False
        self.reason = None
        self.made_at: Optional[float] = None
        self.lost_at: Optional[float] = None
        self._made: List[Deferred] = []
        self._lost: List[Deferred] = []
        self._want: List[tuple] = []
        # helpers.connect_raw-style cleanups look for a Deferred "lost".
        self.lost: Deferred = Deferred()

    def connectionMade(self) -> None:
        self.connected_now = True
        self.made_at = time.monotonic()
        factory = getattr(self, "factory", None)
        if factory is not None and hasattr(factory, "_made"):
            factory._made(self)
        fire_all(self._made, self)

    def dataReceived(self, data: bytes) -> None:
        self.count += len(data)
        self.digest.update(data)
        if self.keep:
            self.data += data
        if self._want:
            still = []
            for n, d in self._want:
                if d.called:
                    continue
                if self.count >= n:
                    d.callback(self.count)
                else:
                    still.append((n, d))
            self._want = still

    def connectionLost(self, reason) -> None:
        self.connected_now = False
        self.reason = reason
        self.lost_at = time.monotonic()
        want, self._want = self._want, []
        for n, d in want:
            if not d.called:
                d.errback(AssertionError(f"connection lost after {self.count} of {n} bytes"))
        fire_all(self._lost)
        self.lost.callback(None)

    def received(self, n: int, seconds: float, what: str) -> Deferred:
        if self.count >= n:
            return succeed(self.count)
        if self.lost.called:
            raise AssertionError(f"{what}: connection already lost after {self.count} of {n} bytes")
        d: Deferred = Deferred()
        self._want.append((n, d))
        return deadline(d, seconds, what)

    def when_lost(self, seconds: float, what: str) -> Deferred:
        if self.lost.called:
            return succeed(None)
        return deadline(fresh(self._lost), seconds, what)

    def when_made(self, seconds: float, what: str) -> Deferred:
        if self.made_at is not None:
            return succeed(self)
        return deadline(fresh(self._made), seconds, what)


class EchoTarget(Collector):
    """
    Echoes what it reads; its own transport is its producer, so it stops
    reading while what it echoes cannot be written.
    """

    def __init__(self) -> None:
        Collector.__init__(self, keep=False)

    def connectionMade(self) -> None:
        self.transport.registerProducer(self.transport, True)
        Collector.connectionMade(self)

    def dataReceived(self, data: bytes) -> None:
        Collector.dataReceived(self, data)
        self.transport.write(data)


class Pacer:
    """
    Makes a L{Collector} a slow reader: it reads at most C{rate} bytes per
    second on average, by pausing its transport and resuming it every
    C{tick} seconds.  C{until} is where pacing stops (then it reads freely,
    so that it sees the end of the stream).
    """

    def __init__(self, proto: Collector, rate: float, until: int, tick: float = 0.05, on_tick=None) -> None:
        self.proto = proto
        self.rate = rate
        self.until = until
        self.tick = tick
        self.on_tick = on_tick
        self.paused = False
        self.loop: Optional[LoopingCall] = None

    def start(self) -> None:
        self.t0 = reactor.seconds()
        self._pause()
        self.loop = LoopingCall(self._tick)
        self.loop.clock = reactor
        self.loop.start(self.tick, now=False)

    def _allowed(self) -> float:
        return self.rate * (reactor.seconds() - self.t0)

    def _pause(self) -> None:
        if not self.paused and self.proto.connected_now:
            self.paused = True
            self.proto.transport.pauseProducing()

    def _resume(self) -> None:
        if self.paused and self.proto.connected_now:
            self.paused = False
            self.proto.transport.resumeProducing()

    def _tick(self) -> None:
        if self.on_tick is not None:
            self.on_tick()
        if self.proto.count >= self.until:
            self.stop()
        elif self.proto.count < self._allowed():
            self._resume()

    def data(self) -> None:
        if self.proto.count >= self.until:
            self.stop()
        elif self.proto.count >= self._allowed():
            self._pause()

    def stop(self) -> None:
        if self.loop is not None and self.loop.running:
            self.loop.stop()
        self._resume()


class SlowCollector(Collector):
    """
    A L{Collector} that reads at C{rate} bytes per second (see L{Pacer}),
    with a small kernel receive buffer so the kernel soaks up little.
    """

    def __init__(self, rate: float, until: int, on_tick=None) -> None:
        Collector.__init__(self, keep=False)
        self.pacer = Pacer(self, rate, until, on_tick=on_tick)

    def connectionMade(self) -> None:
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        Collector.connectionMade(self)
        self.pacer.start()

    def dataReceived(self, data: bytes) -> None:
        Collector.dataReceived(self, data)
        self.pacer.data()

    def connectionLost(self, reason) -> None:
        self.pacer.stop()
        Collector.connectionLost(self, reason)


class WriterTarget(Collector):
    """
    A target that writes C{total} bytes (a L{StreamWriter}) as soon as it is
    connected, and closes when done if C{close}.
    """

    def __init__(self, total: int, seed: int, close: bool = True, small_sndbuf: bool = False) -> None:
        Collector.__init__(self, keep=False)
        self.total = total
        self.seed = seed
        self.close = close
        self.small_sndbuf = small_sndbuf
        self.writer: Optional[StreamWriter] = None

    def connectionMade(self) -> None:
        if self.small_sndbuf:
            self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        self.writer = StreamWriter(self.transport, self.total, self.seed, close=self.close)
        Collector.connectionMade(self)
        self.writer.start()


class TargetFactory(Factory):
    """
    Builds target protocols with C{make()} and remembers them.
    """

    noisy = False

    def __init__(self, make: Callable[[], Collector]) -> None:
        self.make = make
        self.protocols: List[Collector] = []
        self._waiting: List[tuple] = []

    def buildProtocol(self, addr):
        p = self.make()
        p.factory = self
        return p

    def _made(self, p) -> None:
        self.protocols.append(p)
        still = []
        for n, d in self._waiting:
            if d.called:
                continue
            if len(self.protocols) >= n:
                d.callback(self.protocols[:n])
            else:
                still.append((n, d))
        self._waiting = still

    def accepted(self, n: int, seconds: float, what: str) -> Deferred:
        if len(self.protocols) >= n:
            return succeed(self.protocols[:n])
        d: Deferred = Deferred()
        self._waiting.append((n, d))
        return deadline(d, seconds, what)

    @property
    def open(self) -> List[Collector]:
        return [p for p in self.protocols if p.connected_now]


# --- BARE, read by hand (independent of ockamtw.wire) -------------------------------


def r_uvarint(buf: bytes, pos: int):
    n = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, pos
        shift += 7


def r_route(buf: bytes, pos: int):
    count, pos = r_uvarint(buf, pos)
    out = []
    for _ in range(count):
        t = buf[pos]
        n, pos = r_uvarint(buf, pos + 1)
        out.append(f"{t}#{bytes(buf[pos:pos + n]).decode()}")
        pos += n
    return out, pos


def r_frame(frame: bytes):
    """
    A whole frame (length included) as C{(onward, return, payload)}, with
    addresses as C{"type#value"} texts; checks the framing exactly.
    """
    n = int.from_bytes(frame[:2], "big")
    assert len(frame) == 2 + n, (len(frame), n)
    body = frame[2:]
    assert body[0] == 1, body[:1]
    onward, pos = r_route(body, 1)
    ret, pos = r_route(body, pos)
    plen, pos = r_uvarint(body, pos)
    assert pos + plen == len(body), (pos, plen, len(body))
    return onward, ret, bytes(body[pos:])


def r_portal_payload(payload: bytes) -> bytes:
    """
    The data of a PortalMessage C{Payload} (tag 03, then BARE data).
    """
    assert payload[:1] == b"\x03", payload[:8]
    n, pos = r_uvarint(payload, 1)
    assert pos + n == len(payload), (pos, n, len(payload))
    return payload[pos:]


def h_payload(data: bytes) -> bytes:
    """
    The PortalMessage C{Payload(data)}, by hand.
    """
    return b"\x03" + uvarint(len(data)) + data


class RawPeer(RawFrameClient):
    """
    A L{RawFrameClient} that also writes hand-made frames, tells its
    factory it is connected, and waits with deadlines (firing with all the
    frames so far).
    """

    def connectionMade(self) -> None:
        RawFrameClient.connectionMade(self)
        factory = getattr(self, "factory", None)
        if factory is not None and hasattr(factory, "_made"):
            factory._made(self)

    def until(self, predicate, seconds: float, what: str) -> Deferred:
        return deadline(self.when_frames(predicate), seconds, what)

    def frames_arrived(self, n: int, seconds: float = 5) -> Deferred:
        return self.until(lambda fs: len(fs) >= n, seconds, f"{n} frames")

    def send(self, onward, ret, payload: bytes) -> None:
        self.transport.write(h_frame(h_message(onward, ret, payload)))


class RawPeerFactory(Factory):
    noisy = False

    def __init__(self) -> None:
        self.peers: List[RawPeer] = []
        self._waiting: List[Deferred] = []

    def buildProtocol(self, addr):
        p = RawPeer()
        p.factory = self
        return p

    def _made(self, p: RawPeer) -> None:
        self.peers.append(p)
        fire_all(self._waiting, p)

    def first_peer(self, seconds: float = 5) -> Deferred:
        if self.peers:
            return succeed(self.peers[0])
        return deadline(fresh(self._waiting), seconds, "the raw peer's connection")


# --- measuring ----------------------------------------------------------------------


def portals_of(node) -> list:
    return [p for i in node.inlets.values() for p in i.portals] + [
        p for o in node.outlets.values() for p in o.portals
    ]


def node_buffered(node) -> dict:
    """
    What a node holds in memory for its streams right now: each TCP
    connection's outbound buffer and frame decoder, each portal socket's
    outbound buffer.
    """
    out = dec = portal = 0
    for c in node.tcp.connections:
        out += outbound_buffered(c.transport)
        dec += c._decoder.buffered()
    for p in portals_of(node):
        if p.transport is not None:
            portal += outbound_buffered(p.transport)
    return {"connections": out, "decoders": dec, "portals": portal, "total": out + dec + portal}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def is_ockamtw_call(dc) -> bool:
    func = dc.func
    owner = getattr(func, "__self__", None)
    modules = [getattr(func, "__module__", None) or "", type(owner).__module__ if owner is not None else ""]
    return any(m.startswith("ockamtw") for m in modules)


# --- the test case base --------------------------------------------------------------


class PortalTestCase(TestCase):
    """
    Nodes, targets and clients with their cleanups.  Cleanups run in reverse:
    clients are aborted first, then targets, then nodes stopped.
    """

    timeout = 60

    async def within(self, d: Deferred, seconds: float, what: str):
        """
        Await C{d} for at most C{seconds}; a timeout is this test's failure.
        """
        try:
            return await deadline(d, seconds, what)
        except AssertionError as e:
            self.fail(str(e))

    def make_node(self, name: str, identity=None) -> Node:
        node = Node(reactor, name=name, identity=identity)
        node.startService()
        self._stops = getattr(self, "_stops", {})
        self.addCleanup(lambda: Deferred.fromCoroutine(self._stop_node_at_cleanup(node)))
        return node

    async def listening_node(self, name: str, listen: str = LOOPBACK, identity=None):
        node = self.make_node(name, identity=identity)
        listener = await node.tcp.listen(listen)
        return node, listener

    def stop_node(self, node) -> Deferred:
        """
        Stop C{node} now (its cleanup then only waits for this).
        """
        d = node.stopService()
        self._stops[node] = d
        out: Deferred = Deferred()

        def done(result):
            if not out.called:
                out.callback(None)
            return result

        d.addBoth(done)
        return out

    async def _stop_node_at_cleanup(self, node) -> None:
        d = self._stops.get(node)
        patience = 1 if d is not None else 8
        if d is None:
            d = node.stopService()
            self._stops[node] = d
        try:
            await deadline(fresh_from(d), patience, f"node {node.name} stopService")
        except AssertionError:
            # A hang is the test's failure; drop what is left so that the
            # suite goes on.
            stuck = [c.socket_address for c in node.tcp.connections]
            for c in node.tcp.connections:
                c.transport.abortConnection()
            for p in portals_of(node):
                if p.transport is not None:
                    p.transport.abortConnection()
            await deadline(fresh_from(d), 5, f"node {node.name} stopService after aborting")
            if patience > 1:  # else the test itself waited for the stop and failed
                raise AssertionError(f"node {node.name}: stopService hung with connections {stuck} open")

    async def start_target(self, make: Callable[[], Collector]):
        factory = TargetFactory(make)
        port = await serverFromString(reactor, TARGET_LISTEN).listen(factory)

        async def close():
            await port.stopListening()
            for p in factory.protocols:
                if not p.lost.called:
                    p.transport.abortConnection()
            for p in factory.protocols:
                await deadline(fresh_from(p.lost), 5, "target connection closed at cleanup")

        self.addCleanup(lambda: Deferred.fromCoroutine(close()))
        return factory, port.getHost().port

    async def raw_peer_server(self):
        """
        A listening L{RawPeerFactory} and its port; its peers are aborted
        (and their end awaited) at cleanup.
        """
        factory = RawPeerFactory()
        port = await serverFromString(reactor, LOOPBACK).listen(factory)
        self.addCleanup(port.stopListening)

        def abort_peers():
            for p in factory.peers:
                if not p.lost.called:
                    p.transport.abortConnection()
            return gatherResults([fresh_from(p.lost) for p in factory.peers])

        self.addCleanup(abort_peers)
        return factory, port.getHost().port

    async def inlet_to_raw_peer(self):
        """
        A node n1 connected to a raw peer, with an inlet whose route is
        [that connection, 0#outlet]: (n1, the connection, the peer, the
        inlet).
        """
        factory, port = await self.raw_peer_server()
        n1 = self.make_node("n1")
        conn = await n1.tcp.connect(f"127.0.0.1:{port}")
        peer = await factory.first_peer()
        inlet = await n1.create_inlet(
            "127.0.0.1:0", Route([conn.address, Address.parse("outlet")]), ping_timeout=10, ping_interval=10
        )
        return n1, conn, peer, inlet

    async def connect_client(self, port: int, proto: Protocol) -> Protocol:
        proto = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5), proto)

        def close():
            if not proto.lost.called:
                proto.transport.abortConnection()
            return deadline(fresh_from(proto.lost), 5, "client closed at cleanup")

        self.addCleanup(close)
        return proto

    async def topology(
        self,
        target_port: int,
        ping_timeout: float = 10.0,
        ping_interval: float = 1.0,
        refresh: float = 5.0,
        timeout: float = 5.0,
        relay: bool = True,
        outlet: bool = True,
        flow_control: bool = True,
        n2_listen: str = LOOPBACK,
    ):
        """
        The seed's topology: n1 (inlet) -> n2 (relay node, listening at
        C{n2_listen}) -> n3 (relay forward_to_n3, outlet to the target).
        """
        t = Topology()
        t.n2, t.listener = await self.listening_node("n2", n2_listen)
        t.n3 = self.make_node("n3")
        t.n1 = self.make_node("n1")
        t.at = f"/ip4/127.0.0.1/tcp/{t.listener.port}"
        t.target = f"127.0.0.1:{target_port}"
        if relay:
            t.relay = await t.n3.create_relay(t.at, name="n3", refresh=refresh, timeout=timeout)
        if outlet:
            t.outlet = await t.n3.create_outlet("outlet", t.target, flow_control=flow_control)
        t.inlet = await t.n1.create_inlet(
            "127.0.0.1:0",
            f"{t.at}/service/forward_to_n3/service/outlet",
            ping_timeout=ping_timeout,
            ping_interval=ping_interval,
            flow_control=flow_control,
        )
        t.inlet_port = int(t.inlet.socket_address.rsplit(":", 1)[1])
        # The inlet connects to n2 at once; let that happen before the test
        # takes baselines.
        await deadline(t.inlet.route(), 5, "the inlet's route resolved")
        self.assertEqual(len(t.n1.tcp.connections), 1)
        return t

    async def echo_round_trip(self, t, token: bytes, seconds: float = 5) -> Collector:
        """
        A client through the inlet gets C{token} echoed; returns it (open).
        """
        client = await self.connect_client(t.inlet_port, Collector())
        client.transport.write(token)
        await client.received(len(token), seconds, f"echo of {token!r}")
        self.assertEqual(bytes(client.data), token)
        return client

    async def no_portals_left(self, t, seconds: float = 5) -> None:
        await wait_until(
            lambda: not t.inlet.portals and not (t.outlet and t.outlet.portals),
            seconds,
            f"portals closed (inlet {len(t.inlet.portals)}, outlet {len(t.outlet.portals) if t.outlet else 0})",
        )


class Topology:
    n1 = n2 = n3 = listener = relay = outlet = inlet = None
    at = target = ""
    inlet_port = 0


def fresh_from(d: Deferred) -> Deferred:
    """
    A new Deferred that fires when C{d} has (so a deadline on it does not
    cancel C{d}).
    """
    out: Deferred = Deferred()

    def fire(result):
        if not out.called:
            out.callback(None)
        return result

    d.addBoth(fire)
    return out


def head_request(client: Collector) -> None:
    client.transport.write(b"HEAD / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")


# --- 1. the seed's topology ---------------------------------------------------------


class SeedTopologyTests(PortalTestCase):
    timeout = 30

    async def _head_through_portal(self, target_port: int) -> bytes:
        t = await self.topology(target_port)
        client = await self.connect_client(t.inlet_port, Collector())
        head_request(client)
        await client.when_lost(10, "the HTTP response and close through the portal")
        response = bytes(client.data)
        # The relay carried the Ping; the portal is up and then gone.
        forwarder = t.n2.worker_at("forward_to_n3")
        self.assertIsInstance(forwarder, Forwarder)
        self.assertGreaterEqual(forwarder.forwarded, 1)
        self.assertEqual(t.inlet.accepted, 1)
        self.assertEqual(t.outlet.accepted, 1)
        self.assertEqual(t.inlet.status, "Up")
        await self.no_portals_left(t)
        return response

    @async_test
    async def test_head_twisted_web(self):
        root = web_resource.Resource()
        root.putChild(b"", web_static.Data(b"hello", "text/plain"))
        site = web_server.Site(root)
        port = await serverFromString(reactor, LOOPBACK).listen(site)
        self.addCleanup(port.stopListening)
        response = await self._head_through_portal(port.getHost().port)
        self.assertTrue(response.startswith(b"HTTP/1.0 200 OK\r\n"), response)
        self.assertIn(b"\r\nContent-Length: 5\r\n", response)
        self.assertIn(b"\r\nContent-Type: text/plain\r\n", response)
        self.assertTrue(response.endswith(b"\r\n\r\n"), response)  # HEAD: no body

    @async_test
    async def test_head_python_http_server(self):
        """
        A real C{python -m http.server} on port 0 (it prints the port it
        got), as in the seed.
        """
        proc = spawn(self, [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "0"])
        m = await proc.wait_for(r"Serving HTTP on 127\.0\.0\.1 port (\d+) ", seconds=15)
        port = int(m.group(1))
        self.assertNotEqual(port, 0)
        response = await self._head_through_portal(port)
        self.assertTrue(response.startswith(b"HTTP/1.0 200 OK\r\n"), response)
        self.assertIn(b"\r\nServer: SimpleHTTP/", response)
        self.assertTrue(response.endswith(b"\r\n\r\n"), response)
        # The server logged the request it got through the portal.
        await proc.wait_for(r'"HEAD / HTTP/1\.0" 200', seconds=5)


# --- 2. 50 MiB byte-exact, both ways ------------------------------------------------------


class BulkTests(PortalTestCase):
    timeout = 60
    SIZE = 50 * MIB

    @async_test
    async def test_echo_50mib(self):
        """
        A client writes 50 MiB (through a producer) and gets exactly the
        same 50 MiB back from an echo target: client -> inlet -> relay ->
        outlet -> target and back.
        """
        targets, target_port = await self.start_target(EchoTarget)
        t = await self.topology(target_port)
        client = await self.connect_client(t.inlet_port, Collector(keep=False))
        writer = StreamWriter(client.transport, self.SIZE, seed=50)
        started = time.monotonic()
        writer.start()
        await client.received(self.SIZE, 50, "50 MiB echoed")
        elapsed = time.monotonic() - started

        self.assertEqual(writer.sent, self.SIZE)
        self.assertEqual(client.count, self.SIZE)
        self.assertEqual(client.digest.hexdigest(), writer.digest.hexdigest())
        [target] = targets.protocols
        self.assertEqual(target.count, self.SIZE)
        self.assertEqual(target.digest.hexdigest(), writer.digest.hexdigest())
        [inl] = t.inlet.portals
        [out] = t.outlet.portals
        self.assertEqual((inl.bytes_in, inl.bytes_out), (self.SIZE, self.SIZE))
        self.assertEqual((out.bytes_in, out.bytes_out), (self.SIZE, self.SIZE))
        figure(
            f"echo 50 MiB client->target->client through inlet->relay->outlet: {elapsed:.2f} s, "
            f"{self.SIZE / MIB / elapsed:.1f} MiB/s each way; client writer paused {writer.pauses} times"
        )

        client.transport.loseConnection()
        await target.when_lost(5, "the target closed after the client")
        await self.no_portals_left(t)

    @async_test
    async def test_target_sends_50mib(self):
        """
        The target writes 50 MiB and closes: the client gets exactly those
        bytes, then its connection closes.
        """
        targets, target_port = await self.start_target(lambda: WriterTarget(self.SIZE, seed=51, close=True))
        t = await self.topology(target_port)
        client = await self.connect_client(t.inlet_port, Collector(keep=False))
        started = time.monotonic()
        await client.when_lost(50, "50 MiB from the target and the close")
        elapsed = time.monotonic() - started
        [target] = targets.protocols
        self.assertEqual(target.writer.sent, self.SIZE)
        self.assertEqual(client.count, self.SIZE)
        self.assertEqual(client.digest.hexdigest(), target.writer.digest.hexdigest())
        figure(
            f"target->client 50 MiB through outlet->relay->inlet: {elapsed:.2f} s, "
            f"{self.SIZE / MIB / elapsed:.1f} MiB/s; target writer paused {target.writer.pauses} times"
        )
        await self.no_portals_left(t)


# --- 3. slow readers: bounded memory --------------------------------------------------------


class SlowReaderTests(PortalTestCase):
    """
    A fast writer and a slow reader at the other end, through inlet ->
    relay -> outlet: every node keeps a bounded amount in memory, the writer
    is held back, and every byte arrives in order.

    The issue's reader reads 1 MB/s; these read 4 MB/s (and move 24 MB) so
    that each test takes about 6 s.  The client's send and the target's
    receive buffers are 64 KiB so that the kernel soaks up less.
    """

    timeout = 60
    RATE = 4_000_000
    SIZE = 24_000_000
    #: The most a node may hold for one stream: the node writing to the slow
    #: socket holds up to one credit window (docs/protocol.md, 6.1), the
    #: others at most their connections' buffers.
    NODE_BOUND = STREAM_WINDOW + MIB

    def _sampler(self, t):
        peaks = {"n1": 0, "n2": 0, "n3": 0, "sum": 0, "rss": 0}
        rss0 = rss_bytes()

        def sample():
            total = 0
            for name, node in (("n1", t.n1), ("n2", t.n2), ("n3", t.n3)):
                b = node_buffered(node)["total"]
                peaks[name] = max(peaks[name], b)
                total += b
            peaks["sum"] = max(peaks["sum"], total)
            peaks["rss"] = max(peaks["rss"], rss_bytes() - rss0)

        return peaks, sample

    async def _check_held_back(self, reader: Collector, writer: StreamWriter, peaks) -> None:
        # Mid-transfer: the reader has a quarter; the writer has been paused
        # and could not push everything into the pipeline.
        await reader.received(self.SIZE // 4, 20, "a quarter of the stream at the slow reader")
        in_flight = writer.sent - reader.count
        figure(
            f"slow reader at {self.RATE / 1e6:g} MB/s, at {reader.count / 1e6:.1f} MB read: "
            f"writer had sent {writer.sent / 1e6:.1f} of {self.SIZE / 1e6:g} MB "
            f"(in flight {in_flight / 1e6:.1f} MB, mostly kernel socket buffers), paused {writer.pauses} times"
        )
        self.assertGreater(writer.pauses, 0)
        self.assertLess(writer.sent, self.SIZE)

    def _check_peaks(self, peaks, direction: str) -> None:
        figure(
            f"slow {direction}: peak buffered in memory n1={peaks['n1'] / 1024:.0f} KiB "
            f"n2={peaks['n2'] / 1024:.0f} KiB n3={peaks['n3'] / 1024:.0f} KiB, "
            f"sum {peaks['sum'] / 1024:.0f} KiB for {self.SIZE / 1e6:g} MB moved; "
            f"process RSS growth {peaks['rss'] / MIB:.1f} MiB"
        )
        for name in ("n1", "n2", "n3"):
            self.assertLess(peaks[name], self.NODE_BOUND, (name, peaks))
        self.assertLess(peaks["sum"], self.NODE_BOUND + MIB, peaks)
        self.assertLess(peaks["rss"], self.SIZE // 2, peaks)
        self.assertGreater(peaks["sum"], 0, peaks)  # the sampler saw the stream

    @async_test
    async def test_slow_target(self):
        targets, target_port = await self.start_target(lambda: SlowCollector(self.RATE, self.SIZE))
        t = await self.topology(target_port)
        peaks, sample = self._sampler(t)
        sampler = LoopingCall(sample)
        sampler.clock = reactor
        sampler.start(0.02)
        self.addCleanup(lambda: sampler.running and sampler.stop())

        client = await self.connect_client(t.inlet_port, Collector(keep=False))
        client.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        writer = StreamWriter(client.transport, self.SIZE, seed=3, close=True)
        started = time.monotonic()
        writer.start()
        [target] = await targets.accepted(1, 10, "the target connection")
        await self._check_held_back(target, writer, peaks)

        await target.received(self.SIZE, 30, "the whole stream at the slow target")
        elapsed = time.monotonic() - started
        sampler.stop()
        self.assertEqual(target.count, self.SIZE)
        self.assertEqual(target.digest.hexdigest(), writer.digest.hexdigest())
        figure(f"slow target: {self.SIZE / 1e6:g} MB in {elapsed:.1f} s")
        self._check_peaks(peaks, "target")
        # The client closed after writing: the close reached the target.
        await target.when_lost(5, "the target closed after the client")
        await client.when_lost(5, "the client closed")
        await self.no_portals_left(t)

    @async_test
    async def test_slow_client(self):
        targets, target_port = await self.start_target(
            lambda: WriterTarget(self.SIZE, seed=4, close=True, small_sndbuf=True)
        )
        t = await self.topology(target_port)
        peaks, sample = self._sampler(t)
        sampler = LoopingCall(sample)
        sampler.clock = reactor
        sampler.start(0.02)
        self.addCleanup(lambda: sampler.running and sampler.stop())

        started = time.monotonic()
        client = await self.connect_client(t.inlet_port, SlowCollector(self.RATE, self.SIZE))
        [target] = await targets.accepted(1, 10, "the target connection")
        await self._check_held_back(client, target.writer, peaks)

        await client.received(self.SIZE, 30, "the whole stream at the slow client")
        elapsed = time.monotonic() - started
        sampler.stop()
        self.assertEqual(client.count, self.SIZE)
        self.assertEqual(client.digest.hexdigest(), target.writer.digest.hexdigest())
        figure(f"slow client: {self.SIZE / 1e6:g} MB in {elapsed:.1f} s")
        self._check_peaks(peaks, "client")
        await client.when_lost(5, "the client closed after the target")
        await self.no_portals_left(t)


class CloseWhileCongestedTests(PortalTestCase):
    """
    Closing a portal (or a node) while its socket has more than the
    high-water mark buffered for a slow reader must still close the socket
    and fire: Twisted keeps a transport open while a paused streaming
    producer is registered with it.
    """

    timeout = 40

    async def _congested(self, portal, what: str) -> None:
        await wait_until(
            lambda: portal.transport is not None and portal.transport.producerPaused,
            10,
            f"{what}'s socket congested",
        )

    def _abort_at_cleanup(self, portal) -> None:
        def abort():
            if portal.transport is not None:
                portal.transport.abortConnection()

        self.addCleanup(abort)

    @async_test
    async def test_delete_outlet_while_target_is_slow(self):
        targets, target_port = await self.start_target(lambda: SlowCollector(1_000_000, 10**9))
        t = await self.topology(target_port)
        client = await self.connect_client(t.inlet_port, Collector(keep=False))
        writer = StreamWriter(client.transport, 64 * MIB, seed=5)
        writer.start()
        [target] = await targets.accepted(1, 10, "the target connection")
        [out] = t.outlet.portals
        self._abort_at_cleanup(out)
        await self._congested(out, "the outlet portal")

        closed = fresh_from(t.n3.delete_outlet("outlet"))
        await self.within(closed, 3, "delete_outlet with a congested target socket")
        await target.when_lost(3, "the target's connection closed by delete_outlet")
        await client.when_lost(5, "the client closed after the outlet was deleted")
        self.assertIsNone(out.transport)
        await wait_until(lambda: not t.inlet.portals, 5, "no inlet portal left")

    @async_test
    async def test_delete_inlet_while_client_is_slow(self):
        targets, target_port = await self.start_target(
            lambda: WriterTarget(64 * MIB, seed=6, close=False, small_sndbuf=True)
        )
        t = await self.topology(target_port)
        client = await self.connect_client(t.inlet_port, SlowCollector(1_000_000, 10**9))
        [target] = await targets.accepted(1, 10, "the target connection")
        await wait_until(lambda: len(t.inlet.portals) == 1, 5, "the inlet portal")
        [inl] = t.inlet.portals
        self._abort_at_cleanup(inl)
        await self._congested(inl, "the inlet portal")

        closed = fresh_from(t.n1.delete_inlet(t.inlet.socket_address))
        await self.within(closed, 3, "delete_inlet with a congested client socket")
        await client.when_lost(3, "the client's connection closed by delete_inlet")
        await target.when_lost(5, "the target closed after the inlet was deleted")
        self.assertIsNone(inl.transport)

    @async_test
    async def test_stop_relay_node_while_congested(self):
        """
        n2's connection to n3 is congested by a slow target: stopping n2
        still closes it, and n2's stopService fires.  (Without per-stream
        credit, as with Ockam peers: with it, one slow stream does not
        congest the link.)
        """
        targets, target_port = await self.start_target(lambda: SlowCollector(1_000_000, 10**9))
        t = await self.topology(target_port, flow_control=False)
        client = await self.connect_client(t.inlet_port, Collector(keep=False))
        writer = StreamWriter(client.transport, 256 * MIB, seed=7)
        writer.start()
        await targets.accepted(1, 10, "the target connection")
        to_n3 = [c for c in t.n2.tcp.connections if c.socket_address == t.n3.tcp.connections[0].local_address]
        self.assertEqual(len(to_n3), 1)
        await wait_until(lambda: to_n3[0].congested, 10, "n2's connection to n3 congested")
        await self.within(self.stop_node(t.n2), 3, "n2 stopService with a congested connection")
        self.assertEqual(t.n2.tcp.connections, [])


# --- 4. a target that refuses ---------------------------------------------------------------


class RefusedTargetTests(PortalTestCase):
    timeout = 30

    @async_test
    async def test_refused_target_closes_client(self):
        # A port nothing listens on, and that nobody else can take.
        dead = held_port(self)

        t = await self.topology(dead, ping_timeout=10)
        base = {n.name: n.worker_addresses() for n in (t.n1, t.n2, t.n3)}
        client = await self.connect_client(t.inlet_port, Collector())
        client.transport.write(b"anyone there?")
        started = time.monotonic()
        await client.when_lost(3, "the client closed after the target refused")
        elapsed = time.monotonic() - started
        figure(f"refused target: client closed {elapsed * 1000:.0f} ms after connecting (ping_timeout 10 s)")
        self.assertLess(elapsed, 3)
        self.assertEqual(bytes(client.data), b"")
        self.assertEqual(t.outlet.refused, 1)
        self.assertEqual(t.outlet.accepted, 1)
        self.assertEqual(t.inlet.timeouts, 0)  # Disconnect, not the Pong timeout
        self.assertEqual(t.inlet.accepted, 0)
        await self.no_portals_left(t)
        for n in (t.n1, t.n2, t.n3):
            self.assertEqual(n.worker_addresses(), base[n.name], n.name)


# --- 5. an inlet created before its outlet or relay -------------------------------------------


def pong_timeout_events(testcase) -> LogWatch:
    return LogWatch(
        testcase,
        lambda e: e.get("log_namespace") == "ockamtw.portal.inlet" and "no Pong" in (e.get("log_format") or ""),
    )


class InletFirstTests(PortalTestCase):
    timeout = 30

    async def _closed_after_timeout(self, t, watch: LogWatch, n: int) -> None:
        """
        A client of an inlet whose outlet cannot be reached is closed after
        about C{ping_timeout} (0.5 s), with a log line.
        """
        client = await self.connect_client(t.inlet_port, Collector())
        client.transport.write(b"early")
        started = time.monotonic()
        await client.when_lost(5, "the client closed after the Pong timeout")
        elapsed = time.monotonic() - started
        figure(f"no outlet yet: client closed after {elapsed:.2f} s (ping_timeout 0.5 s)")
        self.assertGreaterEqual(elapsed, 0.4)
        self.assertLess(elapsed, 2.5)
        self.assertEqual(bytes(client.data), b"")
        self.assertEqual(t.inlet.timeouts, n)
        events = await watch.when(n, 1, "the Pong timeout log line")
        text = formatEvent(events[-1])
        self.assertIn(t.inlet.socket_address, text)
        self.assertIn("0.5 s", text)
        await wait_until(lambda: not t.inlet.portals, 2, "the timed-out inlet portal gone")

    @async_test
    async def test_outlet_created_after_inlet(self):
        targets, target_port = await self.start_target(EchoTarget)
        watch = pong_timeout_events(self)
        t = await self.topology(target_port, ping_timeout=0.5, ping_interval=0.1, outlet=False)
        await self._closed_after_timeout(t, watch, 1)
        self.assertEqual(targets.protocols, [])

        t.outlet = await t.n3.create_outlet("outlet", t.target)
        client = await self.echo_round_trip(t, b"outlet is here now")
        self.assertEqual(t.inlet.timeouts, 1)
        self.assertEqual(t.inlet.status, "Up")
        client.transport.loseConnection()
        await self.no_portals_left(t)

    @async_test
    async def test_relay_and_outlet_created_after_inlet(self):
        targets, target_port = await self.start_target(EchoTarget)
        watch = pong_timeout_events(self)
        t = await self.topology(target_port, ping_timeout=0.5, ping_interval=0.1, relay=False, outlet=False)
        await self._closed_after_timeout(t, watch, 1)
        self.assertIsNone(t.n2.worker_at("forward_to_n3"))

        t.relay = await t.n3.create_relay(t.at, name="n3")
        t.outlet = await t.n3.create_outlet("outlet", t.target)
        await self.echo_round_trip(t, b"relay and outlet are here now")
        self.assertEqual(t.inlet.timeouts, 1)

    @async_test
    async def test_relay_node_listens_after_inlet(self):
        """
        Nothing listens at the relay node's address when the inlet is
        created; once n2 listens there (and n3 registers), a new client of
        the same inlet works.
        """
        p2 = held_port(self)  # refuses until n2 listens there; nobody else can take it
        targets, target_port = await self.start_target(EchoTarget)
        watch = pong_timeout_events(self)
        n1 = self.make_node("n1")
        inlet = await n1.create_inlet(
            "127.0.0.1:0",
            f"/ip4/127.0.0.1/tcp/{p2}/service/forward_to_n3/service/outlet",
            ping_timeout=0.5,
            ping_interval=0.1,
        )
        t = Topology()
        t.n1, t.inlet = n1, inlet
        t.inlet_port = int(inlet.socket_address.rsplit(":", 1)[1])
        await self._closed_after_timeout(t, watch, 1)
        self.assertIsNotNone(inlet.last_error)
        self.assertEqual(inlet.status, "Down")

        t.n2, t.listener = await self.listening_node("n2", f"tcp:{p2}:interface=127.0.0.1")
        t.n3 = self.make_node("n3")
        t.relay = await t.n3.create_relay(f"/ip4/127.0.0.1/tcp/{p2}", name="n3")
        t.outlet = await t.n3.create_outlet("outlet", f"127.0.0.1:{target_port}")
        await self.echo_round_trip(t, b"the relay node is up")
        self.assertEqual(inlet.status, "Up")

    @async_test
    async def test_outlet_appears_while_client_waits(self):
        """
        A client connects (and writes) while there is no outlet; the outlet
        appears within the client's ping_timeout: the client is served.
        """
        targets, target_port = await self.start_target(EchoTarget)
        t = await self.topology(target_port, ping_timeout=5, ping_interval=0.1, outlet=False)
        dropped = LogWatch(
            self,
            lambda e: e.get("node") == "n3" and e.get("address") == "0#outlet" and "no worker" in e.get("log_format", ""),
        )
        client = await self.connect_client(t.inlet_port, Collector())
        client.transport.write(b"written before the outlet existed")
        await dropped.when(2, 5, "two Pings dropped at n3 for lack of an outlet")
        self.assertEqual(client.count, 0)

        t.outlet = await t.n3.create_outlet("outlet", t.target)
        await client.received(33, 4, "the early bytes echoed once the outlet exists")
        self.assertEqual(bytes(client.data), b"written before the outlet existed")
        self.assertEqual(t.inlet.timeouts, 0)
        self.assertEqual(t.inlet.accepted, 1)
        # Repeated Pings may have made more than one outlet portal; the
        # inlet keeps one and the others are told to go.
        await wait_until(lambda: len(t.outlet.portals) == 1, 5, "one outlet portal for one client")
        await wait_until(lambda: len(targets.open) == 1, 5, "one target connection for one client")
        self.assertEqual(sum(p.count for p in targets.protocols), 33)
        client.transport.loseConnection()
        await self.no_portals_left(t)


# --- 6. recovery after the relay node restarts ----------------------------------------------


class RecoveryTests(PortalTestCase):
    timeout = 40

    @async_test
    async def test_relay_node_restarts_on_same_port(self):
        """
        n2 stops and a new n2 listens on its port: the relay registers
        again and the inlet carries traffic again.  The port is held by the
        test (L{held_port}), so nobody else takes it while n2 is down.
        """
        targets, target_port = await self.start_target(EchoTarget)
        held = held_port(self)
        t = await self.topology(
            target_port, ping_timeout=5, ping_interval=0.1, refresh=0.5, timeout=0.5,
            n2_listen=f"tcp:{held}:interface=127.0.0.1",
        )
        first = await self.echo_round_trip(t, b"before the restart")
        self.assertEqual(t.relay.status, "Up")
        port = t.listener.port

        down = t.relay.when_status("Down")
        started = time.monotonic()
        await deadline(self.stop_node(t.n2), 5, "n2 stopped")
        await deadline(down, 5, "the relay Down after n2 stopped")
        await wait_until(lambda: t.inlet.status == "Down", 5, "the inlet Down after n2 stopped")
        # The old client's tunnel ran over the dead links: both of its
        # portals end with them, so the client and the target connection
        # are closed instead of lingering.
        await wait_until(lambda: not first.transport.connected, 5, "the old client closed by n1")
        await wait_until(lambda: not t.outlet.portals, 5, "the old outlet portal gone from n3")
        await wait_until(lambda: not targets.open, 5, "the old target connection closed by n3")
        self.assertEqual(t.inlet.portals, set())

        n2b, listener = await self.listening_node("n2-again", f"tcp:{port}:interface=127.0.0.1")
        self.assertEqual(listener.port, port)
        up = await deadline(t.relay.when_status("Up"), 10, "the relay re-registered at the new n2")
        recovered = time.monotonic() - started
        self.assertIs(up, t.relay)
        self.assertIsInstance(n2b.worker_at("forward_to_n3"), Forwarder)

        second = await self.echo_round_trip(t, b"after the restart", seconds=10)
        figure(f"relay node restart: relay Up again {recovered:.2f} s after n2 stopped; inlet carried traffic again")
        self.assertEqual(t.inlet.status, "Up")
        self.assertEqual(len(t.n1.tcp.connections), 1)
        self.assertEqual(t.n1.tcp.connections[0].socket_address, f"127.0.0.1:{port}")
        self.assertEqual(len(n2b.tcp.connections), 2)  # from n3 and from n1
        second.transport.loseConnection()
        await wait_until(lambda: not t.inlet.portals, 5, "the new client's inlet portal gone")


# --- 7. Disconnect, both ways -----------------------------------------------------------------


class DisconnectTests(PortalTestCase):
    timeout = 30

    async def _baseline(self, t):
        # One round trip first: the inlet's link and the relay are set up.
        c = await self.echo_round_trip(t, b"warm up")
        c.transport.loseConnection()
        await self.no_portals_left(t)
        return {n.name: n.worker_addresses() for n in (t.n1, t.n2, t.n3)}

    def _assert_baseline(self, t, base) -> None:
        for n in (t.n1, t.n2, t.n3):
            self.assertEqual(n.worker_addresses(), base[n.name], n.name)

    @async_test
    async def test_client_closes(self):
        echo, echo_port = await self.start_target(EchoTarget)
        targets, target_port = await self.start_target(lambda: Collector())
        t = await self.topology(echo_port)
        base = await self._baseline(t)
        t.outlet.target = f"127.0.0.1:{target_port}"

        client = await self.connect_client(t.inlet_port, Collector())
        [target] = await targets.accepted(1, 5, "the target connection")
        client.transport.write(b"last words")
        client.transport.loseConnection()
        await target.when_lost(5, "the target closed after the client")
        self.assertEqual(bytes(target.data), b"last words")
        await self.no_portals_left(t)
        self._assert_baseline(t, base)

    @async_test
    async def test_target_closes(self):
        class Goodbye(Collector):
            def connectionMade(self):
                Collector.connectionMade(self)
                self.transport.write(b"goodbye")
                self.transport.loseConnection()

        echo, echo_port = await self.start_target(EchoTarget)
        targets, target_port = await self.start_target(Goodbye)
        t = await self.topology(echo_port)
        base = await self._baseline(t)
        t.outlet.target = f"127.0.0.1:{target_port}"

        client = await self.connect_client(t.inlet_port, Collector())
        await client.when_lost(5, "the client closed after the target")
        self.assertEqual(bytes(client.data), b"goodbye")
        await self.no_portals_left(t)
        self._assert_baseline(t, base)


# --- 8 and 9. raw-socket peers: portal and relay frames by hand -----------------------------


#: The raw outlet's portal worker address.
OUT_RAW = "2" * 32
#: The raw registering node's relay worker address.
M_RAW = "4" * 32
OUT_RAW2 = "5" * 32
INL_RAW = "6" * 32
ECHO_RETURN = "3" * 32


class RawPeerTests(PortalTestCase):
    timeout = 30

    async def _nothing_more(self, peer: RawPeer, conn_route=()) -> None:
        """
        Whatever the node sent before now has arrived: an echo request's
        reply is the next frame.
        """
        before = len(peer.frames)
        peer.send(list(conn_route) + ["0#echo"], [f"0#{ECHO_RETURN}"], b"sync")
        frames = await peer.frames_arrived(before + 1)
        self.assertEqual(len(frames), before + 1, [f[:40].hex() for f in frames[before:]])
        onward, ret, payload = r_frame(frames[-1])
        self.assertEqual((onward, payload), ([f"0#{ECHO_RETURN}"], b"sync"))
        del peer.frames[before:]

    @async_test
    async def test_raw_outlet_peer(self):
        """
        n1 connects to a raw peer that acts as an Ockam outlet node; the
        inlet's route is [that connection, 0#outlet].
        """
        n1, conn, peer, inlet = await self.inlet_to_raw_peer()
        base = n1.worker_addresses()
        inlet_port = int(inlet.socket_address.rsplit(":", 1)[1])

        client = await self.connect_client(inlet_port, Collector())
        sent = random.Random(9).randbytes(MIB)
        client.transport.write(sent)  # read by the inlet only after Pong

        # Ping: onward [0#outlet], return [0#INL], PortalMessage 00.  INL
        # ends with ".fc1": the offer of flow control, which an Ockam
        # outlet does not notice.
        [ping] = await peer.frames_arrived(1)
        inl = ping[15:51]
        self.assertRegex(inl, HEX32_FC)
        self.assertEqual(
            ping,
            bytes.fromhex("0033" "01" "01" "00" "06") + b"outlet" + bytes.fromhex("01" "00" "24") + inl
            + bytes.fromhex("01" "00"),
        )
        [portal] = inlet.portals
        self.assertEqual(portal.address, Address.parse(inl.decode()))
        self.assertEqual(portal.bytes_in, 0)  # nothing read before Pong

        # Pong from 0#2222... to the return route.
        pong = bytes.fromhex("004d" "01" "01" "00" "24") + inl + bytes.fromhex("01" "00" "20") + OUT_RAW.encode() + bytes.fromhex("01" "01")
        self.assertEqual(pong, h_frame(h_message([f"0#{inl.decode()}"], [f"0#{OUT_RAW}"], b"\x01")))
        del peer.frames[:]
        # A second Pong (as for a repeated Ping) from another outlet worker:
        # the inlet keeps the first and sends the second Disconnect.
        peer.transport.write(pong + h_frame(h_message([f"0#{inl.decode()}"], [f"0#{OUT_RAW2}"], b"\x01")))
        extra = await peer.until(
            lambda fs: any(r_frame(f)[0] == [f"0#{OUT_RAW2}"] for f in fs), 5, "Disconnect for the second Pong"
        )
        [disconnect] = [f for f in extra if r_frame(f)[0] == [f"0#{OUT_RAW2}"]]
        self.assertEqual(
            disconnect,
            bytes.fromhex("004d" "01" "01" "00" "20") + OUT_RAW2.encode() + bytes.fromhex("01" "00" "24") + inl
            + bytes.fromhex("01" "02"),
        )
        peer.frames.remove(disconnect)
        self.assertEqual(portal.remote_route, Route([conn.address, Address.parse(OUT_RAW)]))

        # The client's bytes arrive as Payload frames of at most 48 KiB.
        def decode_all(frames):
            chunks = []
            for f in frames:
                onward, ret, payload = r_frame(f)
                self.assertEqual(onward, [f"0#{OUT_RAW}"])
                self.assertEqual(ret, [f"0#{inl.decode()}"])
                chunks.append(r_portal_payload(payload))
            return chunks

        await peer.until(
            lambda fs: sum(len(r_portal_payload(r_frame(f)[2])) for f in fs) >= len(sent), 10, "1 MiB as Payload frames"
        )
        chunks = decode_all(peer.frames)
        sizes = [len(c) for c in chunks]
        figure(f"raw outlet peer: 1 MiB arrived in {len(chunks)} Payload frames, largest {max(sizes)} bytes")
        self.assertEqual(b"".join(chunks), sent)
        self.assertLessEqual(max(sizes), MAX_CHUNK)
        self.assertEqual(max(sizes), MAX_CHUNK)  # reads of 64 KiB were split
        self.assertGreaterEqual(len(chunks), -(-len(sent) // MAX_CHUNK))
        self.assertTrue(all(len(f) <= 2 + 65535 for f in peer.frames))
        # The exact bytes of the first Payload frame.
        first = chunks[0]
        self.assertEqual(
            peer.frames[0],
            h_frame(
                b"\x01" + bytes.fromhex("01" "00" "20") + OUT_RAW.encode() + bytes.fromhex("01" "00" "24") + inl
                + uvarint(1 + len(uvarint(len(first))) + len(first)) + b"\x03" + uvarint(len(first)) + first
            ),
        )
        self.assertEqual(portal.bytes_in, len(sent))
        del peer.frames[:]

        # Payload back to the client, then Disconnect: the client closes.
        back = random.Random(10).randbytes(100_000)
        for i in range(0, len(back), MAX_CHUNK):
            peer.send([f"0#{inl.decode()}"], [f"0#{OUT_RAW}"], h_payload(back[i : i + MAX_CHUNK]))
        await client.received(len(back), 5, "the raw peer's Payload at the client")
        self.assertEqual(bytes(client.data), back)
        peer.transport.write(
            bytes.fromhex("004d" "01" "01" "00" "24") + inl + bytes.fromhex("01" "00" "20") + OUT_RAW.encode() + bytes.fromhex("01" "02")
        )
        await client.when_lost(5, "the client closed on Disconnect")
        self.assertEqual(bytes(client.data), back)
        await wait_until(lambda: not inlet.portals, 5, "the inlet portal gone")
        self.assertEqual(n1.worker_addresses(), base)
        # The inlet did not answer the Disconnect (nor send anything else).
        await self._nothing_more(peer)

    @async_test
    async def test_raw_relay_and_outlet_peer(self):
        """
        A raw peer registers the relay forward_to_raw at n2 with hand-made
        frames and serves as the outlet behind it; n1's inlet goes through
        n2's relay to it.
        """
        n2, listener = await self.listening_node("n2")
        peer = RawPeer()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", listener.port, timeout=5), peer)

        def abort():
            if not peer.lost.called:
                peer.transport.abortConnection()
            return fresh_from(peer.lost)

        self.addCleanup(abort)

        # Registration: onward [0#forwarding_service], return [0#M], the
        # BARE string "forward_to_raw"; the reply comes from the forwarder.
        alias = b"forward_to_raw"
        registration = (
            bytes.fromhex("01" "01" "00" "12") + b"forwarding_service" + bytes.fromhex("01" "00" "20") + M_RAW.encode()
            + bytes.fromhex("0f" "0e") + alias
        )
        self.assertEqual(registration, h_message(["0#forwarding_service"], [f"0#{M_RAW}"], h_string("forward_to_raw")))
        peer.transport.write(h_frame(registration))
        [reply] = await peer.frames_arrived(1)
        self.assertEqual(
            reply,
            h_frame(
                bytes.fromhex("01" "01" "00" "20") + M_RAW.encode() + bytes.fromhex("01" "00" "0e") + alias
                + bytes.fromhex("0f" "0e") + alias
            ),
        )
        del peer.frames[:]

        n1 = self.make_node("n1")
        inlet = await n1.create_inlet(
            "127.0.0.1:0",
            f"/ip4/127.0.0.1/tcp/{listener.port}/service/forward_to_raw/service/outlet",
            ping_timeout=10,
            ping_interval=10,
        )
        client = await self.connect_client(int(inlet.socket_address.rsplit(":", 1)[1]), Collector())
        client.transport.write(b"hello raw")

        # Ping through the forwarder: onward [0#M, 0#outlet], return
        # [0#<n2's connection to n1>, 0#INL].
        [ping] = await peer.frames_arrived(1)
        onward, ret, payload = r_frame(ping)
        self.assertEqual(onward, [f"0#{M_RAW}", "0#outlet"])
        self.assertEqual(payload, b"\x00")
        self.assertEqual(len(ret), 2)
        conn_hex, inl_hex = ret[0][2:], ret[1][2:]
        self.assertRegex(conn_hex.encode(), HEX32)
        self.assertRegex(inl_hex.encode(), HEX32_FC)
        self.assertEqual(ret[0], str(n2.tcp.connections[-1].address))
        [portal] = inlet.portals
        self.assertEqual(str(portal.address), ret[1])
        self.assertEqual(
            ping,
            h_frame(
                bytes.fromhex("01" "02" "00" "20") + M_RAW.encode() + bytes.fromhex("00" "06") + b"outlet"
                + bytes.fromhex("02" "00" "20") + conn_hex.encode() + bytes.fromhex("00" "24") + inl_hex.encode()
                + bytes.fromhex("01" "00")
            ),
        )
        del peer.frames[:]

        # Pong from OUT along the Ping's return route (through n2).
        peer.send(ret, [f"0#{OUT_RAW2}"], b"\x01")
        [data] = await peer.frames_arrived(1)
        onward, ret2, payload = r_frame(data)
        self.assertEqual(onward, [f"0#{OUT_RAW2}"])
        self.assertEqual(ret2, ret)  # n2's connection to n1, then INL
        self.assertEqual(payload, bytes.fromhex("03" "09") + b"hello raw")
        self.assertTrue(data.endswith(bytes.fromhex("0b" "03" "09") + b"hello raw"), data.hex())
        self.assertEqual(r_portal_payload(payload), b"hello raw")

        peer.send(ret, [f"0#{OUT_RAW2}"], h_payload(b"hi client"))
        await client.received(9, 5, "the raw outlet's reply at the client")
        self.assertEqual(bytes(client.data), b"hi client")
        peer.send(ret, [f"0#{OUT_RAW2}"], b"\x02")
        await client.when_lost(5, "the client closed on Disconnect")
        await wait_until(lambda: not inlet.portals, 5, "the inlet portal gone")

    @async_test
    async def test_raw_peer_at_outlet(self):
        """
        A raw peer talks to n3's outlet: only Ping is accepted; each Ping
        makes one portal and one target connection, answered by Pong; target
        bytes come back as Payload frames of at most 48 KiB; Disconnect
        closes the target connection.
        """
        big = random.Random(11).randbytes(300_000)

        class Talker(Collector):
            def connectionMade(self):
                Collector.connectionMade(self)
                self.transport.write(big)

        targets, target_port = await self.start_target(Talker)
        n3, listener = await self.listening_node("n3")
        outlet = await n3.create_outlet("outlet", f"127.0.0.1:{target_port}")
        peer = await self.connect_client(listener.port, RawPeer())

        # Not Ping: dropped, no portal, no target connection.
        for payload in (h_payload(b"x"), b"\x01", b"\x02", b"", b"\x07", b"\x00\x00"):
            peer.send(["0#outlet"], [f"0#{INL_RAW}"], payload)
        await self._nothing_more(peer)
        self.assertEqual((outlet.accepted, len(outlet.portals), targets.protocols), (0, 0, []))

        peer.send(["0#outlet"], [f"0#{INL_RAW}"], b"\x00")
        # The Pong comes first (the target's bytes may arrive in the same read).
        pong = (await peer.frames_arrived(1))[0]
        onward, ret, payload = r_frame(pong)
        self.assertEqual((onward, payload), ([f"0#{INL_RAW}"], b"\x01"))
        self.assertEqual(len(ret), 1)
        out_hex = ret[0][2:].encode()
        self.assertRegex(out_hex, HEX32)
        self.assertEqual(
            pong, bytes.fromhex("0049" "01" "01" "00" "20") + INL_RAW.encode() + bytes.fromhex("01" "00" "20") + out_hex + bytes.fromhex("01" "01")
        )
        [portal] = outlet.portals
        self.assertEqual(str(portal.address), ret[0])
        [target] = await targets.accepted(1, 5, "the target connection")

        await peer.until(
            lambda fs: sum(len(r_portal_payload(r_frame(f)[2])) for f in fs[1:]) >= len(big), 10, "the target's bytes"
        )
        chunks = []
        for f in peer.frames[1:]:
            onward, ret, payload = r_frame(f)
            self.assertEqual(onward, [f"0#{INL_RAW}"])
            self.assertEqual(ret, [f"0#{out_hex.decode()}"])
            chunks.append(r_portal_payload(payload))
        self.assertEqual(b"".join(chunks), big)
        self.assertLessEqual(max(len(c) for c in chunks), MAX_CHUNK)
        self.assertGreaterEqual(len(chunks), -(-len(big) // MAX_CHUNK))

        peer.send([f"0#{out_hex.decode()}"], [f"0#{INL_RAW}"], h_payload(b"hello target"))
        await target.received(12, 5, "the raw peer's Payload at the target")
        self.assertEqual(bytes(target.data), b"hello target")
        peer.send([f"0#{out_hex.decode()}"], [f"0#{INL_RAW}"], b"\x02")
        await target.when_lost(5, "the target closed on Disconnect")
        await wait_until(lambda: not outlet.portals, 5, "the outlet portal gone")
        self.assertEqual(outlet.accepted, 1)
        self.assertEqual(len(targets.protocols), 1)


# --- 10. a thousand at once ---------------------------------------------------------------------


class TokenClient(Collector):
    def __init__(self, token: bytes) -> None:
        Collector.__init__(self)
        self.token = token

    def connectionMade(self) -> None:
        Collector.connectionMade(self)
        self.transport.write(self.token)


class ManyConnectionsTests(PortalTestCase):
    timeout = 60
    N = 1000

    def setUp(self):
        """
        Each connection takes four descriptors in this process (the client,
        the inlet's socket, the outlet's target connection and the target's
        end): raise the soft open-file limit (often 1024) to what the test
        needs, or skip, saying so, when the hard limit does not allow it.
        """
        import resource

        need = 4 * self.N + 512
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < need:
            if hard != resource.RLIM_INFINITY and hard < need:
                raise SkipTest(
                    f"{self.N} connections need {need} open files in this process; the hard limit is {hard} "
                    "(ulimit -Hn)"
                )
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
            self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        return super().setUp()

    @async_test
    async def test_1000_concurrent(self):
        targets, target_port = await self.start_target(EchoTarget)
        t = await self.topology(target_port, ping_timeout=30)
        warm = await self.echo_round_trip(t, b"warm up")
        warm.transport.loseConnection()
        await self.no_portals_left(t)
        await wait_until(lambda: not targets.open, 5, "the warm-up target connection closed")

        base_workers = {n.name: n.worker_addresses() for n in (t.n1, t.n2, t.n3)}
        base_conns = {n.name: len(n.tcp.connections) for n in (t.n1, t.n2, t.n3)}
        self.assertEqual(base_conns, {"n1": 1, "n2": 2, "n3": 1})
        base_calls = set(reactor.getDelayedCalls())
        base_readers = set(reactor.getReaders())
        base_writers = set(reactor.getWriters())
        opened = len(targets.protocols)

        tokens = [f"{i:06d}:".encode() + os.urandom(13).hex().encode() for i in range(self.N)]
        self.assertTrue(all(len(tok) == 33 for tok in tokens))
        clients = [TokenClient(tok) for tok in tokens]

        def abort_all():
            for c in clients:
                if c.transport is not None and not c.lost.called:
                    c.transport.abortConnection()
            return gatherResults([fresh_from(c.lost) for c in clients if c.transport is not None])

        self.addCleanup(abort_all)

        started = time.monotonic()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", t.inlet_port, timeout=20)
        connecting = [connectProtocol(endpoint, c) for c in clients]
        await deadline(gatherResults(connecting), 30, f"{self.N} clients connected")
        connected = time.monotonic() - started
        await deadline(
            gatherResults([c.received(len(tok), 40, "echo") for c, tok in zip(clients, tokens)]),
            40,
            f"{self.N} echoes",
        )
        echoed = time.monotonic() - started
        bad = [i for i, (c, tok) in enumerate(zip(clients, tokens)) if bytes(c.data) != tok]
        self.assertEqual(bad, [])
        self.assertEqual(len(t.inlet.portals), self.N)
        self.assertEqual(t.inlet.timeouts, 0)
        # One outlet portal and one target connection per client (a slow
        # handshake may repeat a Ping; the extra outlet portal is told to go).
        await wait_until(
            lambda: len(t.outlet.portals) == self.N and len(targets.open) == self.N,
            10,
            f"{self.N} outlet portals and target connections",
        )
        figure(
            f"{self.N} concurrent portal connections: all connected in {connected:.2f} s, all echoed in "
            f"{echoed:.2f} s ({echoed / self.N * 1000:.2f} ms per connection); outlet accepted "
            f"{t.outlet.accepted - 1} Pings for {self.N} clients"
        )

        started = time.monotonic()
        for c in clients:
            c.transport.loseConnection()
        await deadline(gatherResults([fresh_from(c.lost) for c in clients]), 20, "all clients closed")
        await wait_until(
            lambda: not t.inlet.portals and not t.outlet.portals and not targets.open,
            20,
            "every portal and target connection closed",
        )
        closed = time.monotonic() - started
        figure(f"{self.N} portal connections closed on every node in {closed:.2f} s")
        self.assertEqual(len(targets.protocols) - opened, t.outlet.accepted - 1)
        for n in (t.n1, t.n2, t.n3):
            self.assertEqual(n.worker_addresses(), base_workers[n.name], n.name)
            self.assertEqual(len(n.tcp.connections), base_conns[n.name], n.name)
        await wait_until(
            lambda: set(reactor.getReaders()) == base_readers and set(reactor.getWriters()) <= base_writers,
            5,
            "no socket left in the reactor",
        )
        left = [
            dc for dc in reactor.getDelayedCalls()
            if dc not in base_calls and is_ockamtw_call(dc) and getattr(dc.func, "__self__", None) is not t.relay
        ]
        self.assertEqual(left, [])
