"""
The harness of the portal tests (L{tests.test_portal_seed},
L{tests.test_portal_bulk}, L{tests.test_portal_backpressure},
L{tests.test_portal_lifecycle}, L{tests.test_portal_raw}) and of the other
modules that run real portals, relays or secure channels on loopback:

  - streams: L{StreamWriter} (a producer of pseudo-random bytes that keeps
    their digest), L{Collector} (a client or target that counts and digests
    what it reads), L{EchoTarget}, L{Pacer} and L{SlowCollector} (slow
    readers), L{WriterTarget}, L{SteadyReader}, and L{TargetFactory};
  - frames read by hand, independent of C{ockamtw.wire} (L{r_frame},
    L{r_portal_payload}, ...), and L{RawPeer}, a peer that writes
    hand-made frames, with its L{RawPeerFactory};
  - what a node holds in memory (L{node_buffered}), the process's RSS;
  - L{PortalTestCase}: in-process nodes on the global reactor, targets,
    clients and raw peers on 127.0.0.1 port 0, all closed at cleanup, and
    the seed's topology (L{PortalTestCase.topology}, a L{Topology});
  - L{figure}: a measured figure, printed on a line starting C{FIGURE:}.

Nothing sleeps: waits are Deferreds fired by events, or conditions checked
until a deadline (L{tests.helpers.wait_until}).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import socket
import time
from typing import Callable, List, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from ockamtw import Address, Node, Route

from .helpers import (
    RawFrameClient,
    deadline,
    fire_all,
    fresh,
    fresh_from,
    h_frame,
    h_message,
    outbound_buffered,
    uvarint,
    wait_until,
)

log = Logger(namespace="tests.portal_harness")

LOOPBACK = "tcp:0:interface=127.0.0.1"
#: Targets accept bursts of connections (the outlet connects once per client).
TARGET_LISTEN = "tcp:0:interface=127.0.0.1:backlog=1024"
HEX32 = re.compile(rb"^[0-9a-f]{32}$")
#: An ockamtw inlet portal's address: it offers per-stream flow control.
HEX32_FC = re.compile(rb"^[0-9a-f]{32}\.fc1$")
#: A TCP inlet's portal address: it also takes an early Pong.
HEX32_EP_FC = re.compile(rb"^[0-9a-f]{32}\.ep\.fc1$")
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


class SteadyReader(SlowCollector):
    """
    A L{SlowCollector} that reads at most 4 KiB at a time, so that it stops
    as soon as it is ahead of its pace and the sender sees progress every
    pacing tick or so, not in 64 KiB bursts far apart (which a short test
    grace would take for a stall).  Its kernel receive buffer stays 64 KiB
    (a window far below loopback's 64 KiB segments stalls the sender).
    """

    def connectionMade(self) -> None:
        self.transport.bufferSize = 4096
        SlowCollector.connectionMade(self)


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
    """
    The BARE uvarint at C{buf[pos:]}: C{(value, position after it)}.
    """
    n = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, pos
        shift += 7


def r_route(buf: bytes, pos: int):
    """
    The BARE route at C{buf[pos:]}: C{(["type#value", ...], position after
    it)}.
    """
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
    """
    Builds L{RawPeer}s for a listening port and remembers them;
    C{first_peer()} fires with the first one once it is connected.
    """

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
    """
    Every portal (one per tunnelled connection) of a node's inlets and
    outlets.
    """
    return [p for i in node.inlets.values() for p in i.portals] + [
        p for o in node.outlets.values() for p in o.portals
    ]


def node_buffered(node) -> dict:
    """
    What a node holds in memory for its streams right now: each TCP
    connection's outbound buffer and frame decoder, each portal socket's
    outbound buffer and what waits in the portal for it.
    """
    out = dec = portal = 0
    for c in node.tcp.connections:
        out += outbound_buffered(c.transport)
        dec += c._decoder.buffered()
    for p in portals_of(node):
        if p.transport is not None:
            portal += outbound_buffered(p.transport)
        portal += p.backlog_bytes  # what waits in the portal for its socket
    return {"connections": out, "decoders": dec, "portals": portal, "total": out + dec + portal}


def rss_bytes() -> int:
    """
    This process's resident set size, in bytes (Linux: /proc/self/statm).
    """
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def is_ockamtw_call(dc) -> bool:
    """
    Whether the delayed call C{dc} was scheduled by ockamtw code (its
    function, or the object whose method it is, comes from C{ockamtw}).
    """
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
        """
        A started L{Node} on the global reactor, stopped at cleanup (a
        stop that hangs fails the test after its connections are aborted).
        """
        node = Node(reactor, name=name, identity=identity)
        node.startService()
        self._stops = getattr(self, "_stops", {})
        self.addCleanup(lambda: Deferred.fromCoroutine(self._stop_node_at_cleanup(node)))
        return node

    async def listening_node(self, name: str, listen: str = LOOPBACK, identity=None):
        """
        L{make_node} listening at C{listen}: C{(node, listener)}.
        """
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
        """
        A target server on 127.0.0.1 port 0 whose protocols C{make()}
        builds: C{(its TargetFactory, its port)}; at cleanup it stops
        listening and its connections are aborted.
        """
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
        """
        C{proto} (a L{Collector} or L{RawPeer}) connected to 127.0.0.1:C{port};
        aborted, and its end awaited, at cleanup.
        """
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
        """
        Wait until the topology's inlet and outlet have no portal left.
        """
        await wait_until(
            lambda: not t.inlet.portals and not (t.outlet and t.outlet.portals),
            seconds,
            f"portals closed (inlet {len(t.inlet.portals)}, outlet {len(t.outlet.portals) if t.outlet else 0})",
        )


class Topology:
    """
    The seed's topology, as L{PortalTestCase.topology} builds it: nodes n1
    (inlet), n2 (relay node, its C{listener} at C{at}), n3 (the C{relay}
    and the C{outlet} to C{target}), and the inlet's port.
    """

    n1 = n2 = n3 = listener = relay = outlet = inlet = None
    at = target = ""
    inlet_port = 0


def head_request(client: Collector) -> None:
    """
    Write an HTTP/1.0 C{HEAD /} request on a connected client.
    """
    client.transport.write(b"HEAD / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
