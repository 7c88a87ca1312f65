"""
Integration tests of the daemon: C{twistd ockam} and C{ockamtw-node} run as
subprocesses, listening on port 0 (the bound port is read from the node's
log line C{node NAME listening on 127.0.0.1:PORT}).

Every process is killed (if still running) and reaped at cleanup; waits are
on process output and exit, each bounded by a deadline.
"""

from __future__ import annotations

import os
import re
import signal

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from ockamtw import Address, Route

from .helpers import (
    REPO_ROOT,
    async_test,
    ockamtw_node_argv,
    ockamtw_orchestrator_argv,
    spawn,
    start_node,
    twistd_argv,
)

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
        # What was typed, and the system's reason once.
        self.assertEqual(
            lines[0], f"ockam: node second: listener: cannot listen on tcp:{port}:interface=127.0.0.1: Address already in use"
        )
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
        C{ockamtw-node --listen 'bad value'}: a usage error, two lines on
        stderr naming the program, status 2.
        """
        process = spawn(self, ockamtw_node_argv() + ["--listen", "bad value"])
        self.assertEqual(await process.wait_ended(15), (2, None), process.text)
        self.assertEqual(process.stdout, b"")
        lines = process.stderr.decode().splitlines()
        self.assertEqual(len(lines), 2, process.text)
        self.assertTrue(lines[0].startswith("ockamtw-node: --listen: "), lines)
        self.assertIn("bad value", lines[0])
        self.assertEqual(lines[1], "Run 'ockamtw-node --help' for the options.")

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
        Bad --outlet, --inlet and --relay values are usage errors: twistd
        ends at once with status 2 and two lines on stderr (the reason, and
        where the options are).  An outlet address that is taken is found
        when the node is made: status 1 and the one-line reason.
        """
        for args, expected, status in [
            (["--outlet", "outlet"], "--outlet: expected ADDRESS=HOST:PORT", 2),
            (["--outlet", "outlet=nowhere"], "--outlet:", 2),
            (["--inlet", "127.0.0.1:6000"], "--inlet: expected LISTEN=/ROUTE", 2),
            (["--inlet", "127.0.0.1:6000=/bogus/x"], "--inlet: unknown protocol 'bogus'", 2),
            (["--relay", "n3"], "--relay: expected NAME@ROUTE", 2),
            (["--relay", "n3@/ip4/1.2.3/tcp/1"], "--relay: bad IPv4 address", 2),
            (["--outlet", "echo=127.0.0.1:9000"], "outlet echo: address 'echo' is already taken", 1),
            (["--pidfile=/nonexistent/dir/n.pid"], "--pidfile: no directory /nonexistent/dir", 2),
        ]:
            pidfile = [a for a in args if a.startswith("--pidfile")] or ["--pidfile="]
            args = [a for a in args if not a.startswith("--pidfile")]
            p = spawn(self, twistd_argv() + ["-n", *pidfile, "ockam", "--name", "bad", *args])
            self.assertEqual(await p.wait_ended(), (status, None), (args, p.text))
            self.assertEqual(p.stdout, b"", args)
            lines = p.stderr.decode().splitlines()
            self.assertIn(expected, lines[0], args)
            if status == 2:
                self.assertEqual(lines, [lines[0], "Run 'twistd ockam --help' for the options."], args)
                self.assertTrue(lines[0].startswith("twistd ockam: --"), lines)
            else:
                self.assertEqual(len(lines), 1, (args, lines))


def help_entries(text: str) -> dict:
    """
    The options of a twistd-style C{--help} text with their help, each
    help's wrapped lines joined by single spaces.
    """
    entries: dict = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"^\s+(?:-\w, )?--([\w-]+)=?(?:\s+(.*))?$", line)
        if m:
            current = m.group(1)
            entries[current] = (m.group(2) or "").strip()
        elif current is not None and line.startswith(" ") and line.strip():
            entries[current] = (entries[current] + " " + line.strip()).strip()
        else:
            current = None
    return entries


class UsageTests(TestCase):
    """
    Usage mistakes are short and end with status 2; C{--help} names the
    program, wraps every option's help and leaves none without.
    """

    timeout = 60

    async def run_to_end(self, argv, env=None):
        process = spawn(self, argv, env=env)
        await process.wait_ended(15)
        return process

    @async_test
    async def test_usage_mistakes(self):
        """
        C{twistd ockam --bogus}, C{ockamtw-node --bogus} and the same of the
        Orchestrator's two programs: two lines on stderr naming the
        program, nothing on stdout, status 2; so is a value the
        Orchestrator's checks refuse.
        """
        for argv, program in [
            (twistd_argv() + ["ockam", "--bogus"], "twistd ockam"),
            (ockamtw_node_argv() + ["--bogus"], "ockamtw-node"),
            (twistd_argv() + ["ockam-orchestrator", "--bogus"], "twistd ockam-orchestrator"),
            (ockamtw_orchestrator_argv() + ["--bogus"], "ockamtw-orchestrator"),
        ]:
            p = await self.run_to_end(argv)
            self.assertEqual(p.exit, (2, None), p.text)
            self.assertEqual(p.stdout, b"")
            self.assertEqual(
                p.stderr.decode().splitlines(),
                [f"{program}: option --bogus not recognized", f"Run '{program} --help' for the options."],
            )
        p = await self.run_to_end(twistd_argv() + ["-n", "ockam-orchestrator", "--tick", "9"])
        self.assertEqual(p.exit, (2, None), p.text)
        self.assertEqual(
            p.stderr.decode().splitlines(),
            [
                "twistd ockam-orchestrator: --tick (9) must be under half of --lease-ttl (15)",
                "Run 'twistd ockam-orchestrator --help' for the options.",
            ],
        )

    @async_test
    async def test_help_to_a_reader_that_went_away(self):
        """
        C{--help | head -1}: the reader closes before the help is written;
        each face ends with status 0 and says nothing (Python's
        C{BrokenPipeError} traceback was printed).
        """
        for argv in [
            twistd_argv() + ["ockam", "--help"],
            ockamtw_node_argv() + ["--help"],
            twistd_argv() + ["ockam-orchestrator", "--help"],
            ockamtw_orchestrator_argv() + ["--help"],
        ]:
            p = spawn(self, argv)
            p.transport.closeStdout()
            self.assertEqual(await p.wait_ended(15), (0, None), (argv, p.text))
            self.assertEqual(p.stderr, b"", argv)

    @async_test
    async def test_help(self):
        """
        C{--help} of the four programs (a node's and the Orchestrator's,
        through twistd and as console scripts): their own usage line, lines
        no wider than the terminal (COLUMNS=80), and every option of their
        L{Options} with its whole help text, wrapped at word boundaries.
        """
        from ockamtw.orchestrator.tap import Options as OrchestratorOptions
        from ockamtw.tap import Options

        env = {"COLUMNS": "80"}
        for options, runs in [
            (
                Options(),
                [
                    (twistd_argv() + ["ockam", "--help"], ["Usage: twistd [twistd options] ockam [options]"]),
                    (
                        ockamtw_node_argv() + ["--help"],
                        ["Usage: ockamtw-node [options]", "   or: ockamtw-node [twistd options] ockam [options]"],
                    ),
                ],
            ),
            (
                OrchestratorOptions(),
                [
                    (
                        twistd_argv() + ["ockam-orchestrator", "--help"],
                        ["Usage: twistd [twistd options] ockam-orchestrator [options]"],
                    ),
                    (
                        ockamtw_orchestrator_argv() + ["--help"],
                        [
                            "Usage: ockamtw-orchestrator [options]",
                            "   or: ockamtw-orchestrator [twistd options] ockam-orchestrator [options]",
                        ],
                    ),
                ],
            ),
        ]:
            expected = {}
            for opt in options.longOpt:
                name = opt.rstrip("=")
                doc = " ".join((options.docs.get(name) or "").split())
                self.assertTrue(doc, f"--{name} has no help text")
                default = options.defaults.get(name)
                if opt.endswith("=") and default is not None:
                    self.assertNotIn("[default:", doc, f"--{name} says its default twice")
                    doc += f" [default: {default}]"
                expected[name] = doc
            for argv, usage_lines in runs:
                p = await self.run_to_end(argv, env=env)
                self.assertEqual(p.exit, (0, None), p.text)
                text = p.stdout.decode()
                lines = text.splitlines()
                self.assertEqual(lines[: len(usage_lines)], usage_lines, text)
                for line in lines:
                    self.assertLessEqual(len(line), 80, line)
                self.assertEqual(help_entries(text), expected, text)

    def test_options_documented(self):
        """
        Every option of C{twistd ockam} (but twistd's --help and --version)
        is described in docs/running.md.
        """
        from ockamtw.tap import Options

        with open(os.path.join(REPO_ROOT, "docs", "running.md"), encoding="utf-8") as f:
            doc = f.read()
        names = {opt.rstrip("=") for opt in Options().longOpt} - {"help", "version"}
        self.assertEqual(sorted(name for name in names if f"`--{name}" not in doc), [])


class PidFileTests(TestCase):
    """
    A foreground C{twistd -n ockam} writes no pid file unless one is named,
    so that several nodes start from one directory (the README's three
    commands); a pid file twistd wrote is removed when the start fails; a
    daemon keeps twistd's C{twistd.pid} and a failed daemon start ends its
    parent with status 1 instead of leaving it waiting.
    """

    timeout = 60

    @async_test
    async def test_foreground_nodes_in_one_directory(self):
        cwd = self.mktemp()
        os.makedirs(cwd)
        a = spawn(self, twistd_argv() + ["-n", "ockam", "--name", "a", "--listen", LOOPBACK], cwd=cwd)
        await a.wait_for(listening_line("a"))
        b = spawn(self, twistd_argv() + ["-n", "ockam", "--name", "b", "--listen", LOOPBACK], cwd=cwd)
        await b.wait_for(listening_line("b"))
        self.assertEqual(os.listdir(cwd), [])
        self.assertIsNone(a.exit)

    @async_test
    async def test_named_pid_file_in_the_foreground(self):
        cwd = self.mktemp()
        os.makedirs(cwd)
        p = spawn(self, twistd_argv() + ["-n", "--pidfile", "n.pid", "ockam", "--name", "p", "--listen", LOOPBACK], cwd=cwd)
        await p.wait_for(listening_line("p"))
        with open(os.path.join(cwd, "n.pid")) as f:
            self.assertEqual(int(f.read()), p.transport.pid)

    @async_test
    async def test_failed_start_removes_its_pid_file(self):
        """
        The listener's port is taken: status 1, and the pid file twistd
        wrote for the node is gone.
        """
        busy = await serverFromString(reactor, LOOPBACK).listen(Factory.forProtocol(Protocol))
        self.addCleanup(busy.stopListening)
        cwd = self.mktemp()
        os.makedirs(cwd)
        argv = twistd_argv() + ["-n", "--pidfile", "n.pid", "ockam", "--listen", str(busy.getHost().port)]
        p = spawn(self, argv, cwd=cwd)
        self.assertEqual(await p.wait_ended(15), (1, None), p.text)
        self.assertIn("already in use", p.stderr.decode())
        self.assertEqual(os.listdir(cwd), [])

    @async_test
    async def test_daemon(self):
        """
        Without C{-n}: twistd's parent exits 0 once the node listens, the
        node's pid is in C{twistd.pid} and it logs to C{twistd.log}.
        """
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        p = spawn(self, twistd_argv() + ["ockam", "--name", "d", "--listen", LOOPBACK], cwd=cwd)
        self.addCleanup(kill_pid_in, os.path.join(cwd, "twistd.pid"))
        self.assertEqual(await p.wait_ended(15), (0, None), p.text)
        with open(os.path.join(cwd, "twistd.pid")) as f:
            pid = int(f.read())
        self.assertTrue(os.path.exists(f"/proc/{pid}"), "the daemon is not running")
        log = await wait_until_true(lambda: re.search(listening_line("d"), read(os.path.join(cwd, "twistd.log"))), 10)
        t, _ = await start_node(self, "t")
        reply = await t.request(f"/ip4/127.0.0.1/tcp/{log.group(1)}/service/echo", b"daemon", timeout=10)
        self.assertEqual(reply.payload, b"daemon")

    @async_test
    async def test_failed_daemon_start(self):
        """
        A daemon whose port is taken: twistd's parent exits 1 at once with
        twistd's "An error has occurred" and the start of the reason (the
        whole line is in the log); no pid file is left.
        """
        busy = await serverFromString(reactor, LOOPBACK).listen(Factory.forProtocol(Protocol))
        self.addCleanup(busy.stopListening)
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        self.addCleanup(kill_pid_in, os.path.join(cwd, "twistd.pid"))
        p = spawn(self, twistd_argv() + ["ockam", "--listen", str(busy.getHost().port)], cwd=cwd)
        self.assertEqual(await p.wait_ended(15), (1, None), p.text)
        self.assertIn("An error has occurred: b'ockam: node ", p.stderr.decode())
        self.assertEqual(sorted(os.listdir(cwd)), ["twistd.log"])
        self.assertIn("already in use", read(os.path.join(cwd, "twistd.log")))


def read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


async def wait_until_true(predicate, seconds: float):
    """
    The first true value of C{predicate()}, polled every 50 ms until
    C{seconds} have passed (then an C{AssertionError}).
    """
    from twisted.internet.task import deferLater

    end = reactor.seconds() + seconds
    while True:
        value = predicate()
        if value:
            return value
        if reactor.seconds() > end:
            raise AssertionError(f"not within {seconds:g} s")
        await deferLater(reactor, 0.05, lambda: None)


def kill_pid_in(path: str):
    """
    SIGKILL the process named in the pid file C{path} (a daemon, not our
    child) if there is one, and wait until it is gone.
    """
    try:
        with open(path) as f:
            pid = int(f.read())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return None

    def gone():
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(")")[-1].split()[0] in ("Z", "X")
        except FileNotFoundError:
            return True

    return Deferred.fromCoroutine(wait_until_true(gone, 10))


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
