"""
Integration tests of the daemon: C{twistd ockam} and C{ockamtw-node} run as
subprocesses, listening on port 0 (the bound port is read from the node's
log line C{node NAME listening on 127.0.0.1:PORT}).

Every process is killed (if still running) and reaped at cleanup; waits are
on process output and exit, each bounded by a deadline.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import TestCase

from ockamtw import Address, Route

from .helpers import async_test, ockamtw_node_argv, spawn, start_node, twistd_argv

LOOPBACK = "tcp:0:interface=127.0.0.1"


def listening_line(name: str) -> str:
    return rf"node {name} listening on 127\.0\.0\.1:(\d+)"


class TwistdTests(TestCase):
    timeout = 60

    def start(self, name: str, *extra: str, listen: str = LOOPBACK):
        """
        Spawn C{twistd -n --pidfile= ockam --name NAME --listen LISTEN ...}.
        """
        argv = twistd_argv() + ["-n", "--pidfile=", "ockam", "--name", name, "--listen", listen]
        return spawn(self, argv + list(extra))

    async def start_listening(self, name: str, *extra: str):
        """
        Spawn a node and wait until it listens; returns C{(process, port)}.
        """
        process = self.start(name, *extra)
        match = await process.wait_for(listening_line(name))
        port = int(match.group(1))
        self.assertNotEqual(port, 0)
        return process, port

    @async_test
    async def test_route_across_two_processes(self):
        """
        Two C{twistd ockam} processes: A is started with C{--connect} to B.
        The test's node sends along [its connection to A, A's connection to
        B, uppercase]: B answers, and the reply comes back through A.

        (Needs C{--connect HOST:PORT}, which makes the node log
        C{TCP connection Remote connection HOST:PORT as 0#<hex>}.)
        """
        b, port_b = await self.start_listening("nB")
        a, port_a = await self.start_listening("nA", "--connect", f"127.0.0.1:{port_b}")
        match = await a.wait_for(
            rf"TCP connection Remote connection 127\.0\.0\.1:{port_b} as 0#([0-9a-f]{{32}})"
        )
        a_to_b = Address.local(match.group(1))
        # B saw A's connection arrive.
        await b.wait_for(r"TCP connection Accepted 127\.0\.0\.1:\d+ as 0#[0-9a-f]{32}")

        t, _ = await start_node(self, "t")
        conn = await t.tcp.connect(f"127.0.0.1:{port_a}")
        route = Route([conn.address, a_to_b, Address.local("uppercase")])
        reply = await t.request(route, b"\x05hello", timeout=10)
        self.assertEqual(reply.payload, b"\x05HELLO")
        # The reply came in from B over A's connection to B.
        self.assertEqual(reply.return_route, route)

        # And through B's hop back to B's echo, to show the route is B's.
        route = Route([conn.address, a_to_b, Address.local("hop"), Address.local("echo")])
        reply = await t.request(route, b"\x00\x01", timeout=10)
        self.assertEqual(reply.payload, b"\x00\x01")
        self.assertEqual(
            reply.return_route, Route([conn.address, a_to_b, Address.local("hop"), Address.local("echo")])
        )
        self.assertNotIn("Traceback", a.text + b.text)

    @async_test
    async def test_request_to_a_twistd_node(self):
        process, port = await self.start_listening("solo")
        t, _ = await start_node(self, "t")
        reply = await t.request(f"/ip4/127.0.0.1/tcp/{port}/service/uppercase", b"\x05hello", timeout=10)
        self.assertEqual(reply.payload, b"\x05HELLO")
        reply = await t.request(f"/ip4/127.0.0.1/tcp/{port}/service/echo", b"\xff\x00", timeout=10)
        self.assertEqual(reply.payload, b"\xff\x00")

    @async_test
    async def test_port_in_use(self):
        """
        A second node on the port of the first exits with status 1 at once,
        with one line saying why, and no traceback.
        """
        first, port = await self.start_listening("first")
        second = self.start("second", listen=f"tcp:{port}:interface=127.0.0.1")
        code, signal = await second.wait_ended(10)
        self.assertEqual((code, signal), (1, None), second.text)
        lines = [line for line in second.text.splitlines() if "already in use" in line]
        self.assertEqual(len(lines), 1, second.text)
        self.assertIn(f"127.0.0.1:{port}", lines[0])
        self.assertNotIn("Traceback", second.text)
        # The reason is on stderr, on one line.
        err_lines = [line for line in second.stderr.decode().splitlines() if line.strip()]
        self.assertEqual(err_lines, lines, second.text)
        # The first node is unharmed.
        t, _ = await start_node(self, "t")
        reply = await t.request(f"/ip4/127.0.0.1/tcp/{port}/service/echo", b"still", timeout=10)
        self.assertEqual(reply.payload, b"still")

    @async_test
    async def test_sigterm(self):
        """
        A running node (it has served a request) stops on SIGTERM with
        status 0 and no traceback.
        """
        process, port = await self.start_listening("term")
        t, _ = await start_node(self, "t")
        reply = await t.request(f"/ip4/127.0.0.1/tcp/{port}/service/echo", b"up?", timeout=10)
        self.assertEqual(reply.payload, b"up?")
        process.transport.signalProcess("TERM")
        code, signal = await process.wait_ended(15)
        self.assertEqual((code, signal), (0, None), process.text)
        self.assertNotIn("Traceback", process.text)
        self.assertIn("SIGTERM: node stopped", process.text)

    @async_test
    async def test_sigterm_as_soon_as_listening(self):
        """
        SIGTERM sent the moment the node logs that it listens also ends it
        with status 0: "listening" is the node's readiness announcement, so
        a supervisor may stop it from then on.
        """
        process, port = await self.start_listening("early")
        process.transport.signalProcess("TERM")
        code, signal = await process.wait_ended(15)
        self.assertEqual((code, signal), (0, None), process.text)
        self.assertNotIn("Traceback", process.text)

    @async_test
    async def test_ockamtw_node_bad_listen(self):
        """
        C{ockamtw-node --listen 'bad value'}: a usage error on one line (after
        the usage text), a non-zero exit, no traceback.
        """
        process = spawn(self, ockamtw_node_argv() + ["--listen", "bad value"])
        code, signal = await process.wait_ended(15)
        self.assertIsNone(signal)
        self.assertNotEqual(code, 0, process.text)
        self.assertNotIn("Traceback", process.text)
        self.assertEqual(process.stdout, b"")
        error_lines = [line for line in process.text.splitlines() if "bad value" in line]
        self.assertEqual(len(error_lines), 1, process.text)
        self.assertIn("--listen", error_lines[0])
        self.assertEqual(process.stderr.decode().rstrip("\n").splitlines()[-1], error_lines[0])

    @async_test
    async def test_ockamtw_node_runs(self):
        """
        The console script runs a node too (without plugin discovery).
        """
        process = spawn(self, ockamtw_node_argv() + ["--name", "script", "--listen", LOOPBACK])
        match = await process.wait_for(listening_line("script"))
        t, _ = await start_node(self, "t")
        reply = await t.request(
            f"/ip4/127.0.0.1/tcp/{int(match.group(1))}/service/uppercase", b"\x02ok", timeout=10
        )
        self.assertEqual(reply.payload, b"\x02OK")
        process.transport.signalProcess("TERM")
        code, signal = await process.wait_ended(15)
        self.assertEqual((code, signal), (0, None), process.text)


class SeedPortalWithTwistdTests(TestCase):
    """
    The seed's portal with three C{twistd ockam} commands (issue: relays and
    portals, item 7): n2 listens; n3 has the outlet and registers its relay
    at n2; n1 has the inlet whose route goes through n2's relay.
    """

    timeout = 60

    @async_test
    async def test_three_twistd_commands(self):
        from twisted.internet import endpoints, reactor
        from twisted.web import resource, server, static

        from .helpers import connect_raw, deadline

        root = resource.Resource()
        root.putChild(b"", static.Data(b"behind n3\n", "text/plain"))
        web = await endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(server.Site(root))
        self.addCleanup(web.stopListening)
        target = f"127.0.0.1:{web.getHost().port}"

        def node(name, *extra):
            return spawn(self, twistd_argv() + ["-n", "--pidfile=", "ockam", "--name", name, *extra])

        n2 = node("n2", "--listen", LOOPBACK)
        port = int((await n2.wait_for(listening_line("n2"))).group(1))
        at = f"/ip4/127.0.0.1/tcp/{port}"
        n3 = node("n3", "--outlet", f"outlet={target}", "--relay", f"n3@{at}")
        n1 = node("n1", "--inlet", f"127.0.0.1:0={at}/service/forward_to_n3/service/outlet")
        await n2.wait_for(r"relay forward_to_n3 registered")
        inlet_port = int((await n1.wait_for(r"inlet listening on 127\.0\.0\.1:(\d+)")).group(1))

        client = await connect_raw(self, inlet_port, RawBytes())
        client.transport.write(b"HEAD / HTTP/1.0\r\n\r\n")
        await deadline(client.lost, 15, "the HTTP answer through inlet, relay and outlet")
        self.assertTrue(bytes(client.data).startswith(b"HTTP/1.0 200 OK"), bytes(client.data)[:200])
        for p in (n1, n2, n3):
            self.assertNotIn("Traceback", p.text)

    @async_test
    async def test_bad_values_are_usage_errors(self):
        """
        Bad --outlet, --inlet and --relay values end twistd at once with a
        one-line reason and no traceback.
        """
        for args, expected in [
            (["--outlet", "outlet"], "--outlet: expected ADDRESS=HOST:PORT"),
            (["--outlet", "outlet=nowhere"], "--outlet:"),
            (["--inlet", "127.0.0.1:6000"], "--inlet: expected LISTEN=/ROUTE"),
            (["--inlet", "127.0.0.1:6000=/bogus/x"], "--inlet: unknown protocol 'bogus'"),
            (["--relay", "n3"], "--relay: expected NAME@ROUTE"),
            (["--relay", "n3@/ip4/1.2.3/tcp/1"], "--relay: bad IPv4 address"),
            (["--outlet", "echo=127.0.0.1:9000"], "outlet echo: address 'echo' is already taken"),
        ]:
            p = spawn(self, twistd_argv() + ["-n", "--pidfile=", "ockam", "--name", "bad", *args])
            code = await p.wait_ended()
            self.assertNotEqual(code, 0, args)
            self.assertIn(expected, p.text, args)
            self.assertNotIn("Traceback", p.text, args)


class RawBytes(Protocol):
    """
    Collects everything until the connection closes.
    """

    def __init__(self) -> None:
        self.data = bytearray()
        self.lost = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason) -> None:
        self.lost.callback(None)
