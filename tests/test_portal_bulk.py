"""
Volume through TCP portals in the seed's topology: 50 MiB byte-exact each
way, and a thousand concurrent connections echoed and closed with nothing
left behind on any node.

In-process nodes on the global reactor, real loopback sockets on port 0
(L{tests.portal_harness}).  Nothing sleeps: waits are Deferreds fired by
events, or conditions checked until a deadline.  Measured figures are
printed on lines starting with C{FIGURE:}.
"""

from __future__ import annotations

import os
import time

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial.unittest import SkipTest

from .helpers import async_test, deadline, fresh_from, wait_until
from .portal_harness import (
    MIB,
    Collector,
    EchoTarget,
    PortalTestCase,
    StreamWriter,
    WriterTarget,
    figure,
    is_ockamtw_call,
)


# --- 50 MiB byte-exact, both ways ------------------------------------------------------


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


# --- a thousand at once ---------------------------------------------------------------------


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
