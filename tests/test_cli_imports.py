"""
The command line answers quickly because a command that only asks a node's
control API, or only reads and writes files, imports nothing it does not
need: not Twisted (its reactor, TLS, treq), not cryptography, construct or
cbor2, not the node, its transports, secure channels, projects or the
Orchestrator.  Importing those took most of the time of C{ockam node list}
(see docs/performance.md, "Command line start-up").

These tests read C{sys.modules} of a real C{ockam} run in a subprocess,
after the command has ended; they time nothing.  The blocking client's HTTP
parsing and the guard that catches a command declared to need no reactor
which waits for one are tested here too.
"""

from __future__ import annotations

import json
import os
import sys

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase

from ockamtw.cli import main as cli
from ockamtw.cli import nodes as cli_nodes
from ockamtw.cli.errors import CLIError
from ockamtw.cli.oneshot import BlockingControlClient, IncompleteAnswer, parse_answer, request_bytes

from .cli_harness import CLITestCase, CommandProcess
from .helpers import async_test

#: Top-level packages a quick command must not import.
HEAVY_PACKAGES = (
    "twisted", "treq", "klein", "cryptography", "OpenSSL", "service_identity",
    "construct", "cbor2", "psycopg", "automat", "hyperlink",
)

#: Modules of ockamtw (with all below them) a quick command must not import.
HEAVY_OCKAMTW = (
    "ockamtw.node", "ockamtw.api", "ockamtw.wire", "ockamtw.transport", "ockamtw.portal", "ockamtw.relay",
    "ockamtw.secure", "ockamtw.project", "ockamtw.orchestrator", "ockamtw.services", "ockamtw.control.server",
    "ockamtw.deferred", "ockamtw.cli.client", "ockamtw.cli.projects", "ockamtw.cli.orchestrator",
)

#: Runs C{ockam ARGS} as the console script does, then writes the exit status
#: and what heavy it imported (packages by their top-level name, ockamtw's
#: modules by theirs) to the file named first.
PROBE = """
import json, sys
report, args = sys.argv[1], sys.argv[2:]
sys.argv = ["ockam"] + args
from ockamtw.cli.entry import main
code = 0
try:
    main()
except SystemExit as e:
    code = e.code
heavy_packages, heavy_ockamtw = HEAVY
loaded = sorted(
    {m.split(".")[0] for m in sys.modules if m.split(".")[0] in heavy_packages}
    | {m for m in sys.modules if any(m == p or m.startswith(p + ".") for p in heavy_ockamtw)}
)
with open(report, "w") as f:
    json.dump({"code": code, "loaded": loaded}, f)
"""


class QuickCommandImportTests(CLITestCase):
    timeout = 120

    async def probe(self, *args: str) -> dict:
        """
        Run C{ockam ARGS} in a subprocess (in this test's OCKAM_HOME) and
        return its exit status and the heavy modules it had imported.
        """
        report = os.path.join(self.home, "probe.json")
        code = PROBE.replace("HEAVY\n", repr((HEAVY_PACKAGES, HEAVY_OCKAMTW)) + "\n")
        argv = [sys.executable, "-c", code, report] + list(args)
        proto = CommandProcess(None)
        transport = reactor.spawnProcess(proto, argv[0], argv, env=self.env, path=self.home)
        call = reactor.callLater(30, transport.signalProcess, "KILL")
        exit_code, sig = await proto.ended
        if call.active():
            call.cancel()
        self.assertEqual((exit_code, sig), (0, None), f"ockam {' '.join(args)}: {proto.out!r} {proto.err!r}")
        with open(report) as f:
            result = json.load(f)
        os.unlink(report)
        result["err"] = proto.err.decode("utf-8", "replace")
        return result

    @async_test
    async def test_parsing_imports_nothing_heavy(self):
        """
        Loading the command line and parsing a command (every group of
        commands is declared, the Orchestrator's included) imports nothing
        heavy.
        """
        for args in (
            ["node", "list"],
            ["tcp-outlet", "create", "--at", "n1", "--to", "127.0.0.1:9000"],
            ["project", "list"],
            ["policy", "list", "--at", "n1"],
        ):
            r = await self.probe(*args, "--test-argument-parser")
            self.assertEqual((r["code"], r["loaded"]), (0, []), (args, r))

    @async_test
    async def test_commands_asking_a_node_import_nothing_heavy(self):
        """
        With a node running, the commands that only ask its control API
        (listing, showing, creating and deleting what it has, sending a
        message from it) and the ones that only read files do their work
        without importing anything heavy; the help and the version too.
        """
        await self.create_nodes("n1")
        for args in (
            ["node", "list"],
            ["node", "list", "--output", "json"],
            ["node", "show", "n1"],
            ["tcp-connection", "list", "--from", "n1"],
            ["tcp-outlet", "create", "--at", "n1", "--to", "127.0.0.1:9", "--alias", "o1"],
            ["tcp-outlet", "list", "--at", "n1"],
            ["tcp-outlet", "show", "o1", "--at", "n1"],
            ["tcp-inlet", "create", "--at", "n1", "--from", "127.0.0.1:0", "--to", "/service/outlet", "--alias", "i1"],
            ["tcp-inlet", "list", "--at", "n1"],
            ["tcp-inlet", "delete", "i1", "--at", "n1"],
            ["tcp-outlet", "delete", "o1", "--at", "n1"],
            ["relay", "list", "--to", "n1"],
            ["forwarder", "list", "--to", "n1"],
            ["secure-channel", "list", "--at", "n1"],
            ["secure-channel-listener", "list", "--at", "n1"],
            ["service", "list", "--node", "n1"],
            ["worker", "list", "--at", "n1"],
            ["policy", "list", "--at", "n1"],
            ["message", "send", "hi", "--from", "n1", "--to", "/service/echo"],
            ["node", "logs", "n1"],
            ["--help"],
            ["--version"],
        ):
            r = await self.probe(*args)
            self.assertEqual((r["code"], r["loaded"]), (0, []), (args, r))

    @async_test
    async def test_a_missing_node_is_said_without_importing_anything_heavy(self):
        """
        The errors of a quick command are said by the quick path too.
        """
        r = await self.probe("tcp-inlet", "list", "--at", "nX")
        self.assertEqual(r["loaded"], [], r)
        self.assertEqual(r["code"], 70, r)
        self.assertEqual(r["err"], "ockam: no node named 'nX' (see: ockam node list)\n")


class DeclarationTests(SynchronousTestCase):
    def leaf_parsers(self):
        """
        Every parser of a command (one with a function to run).
        """
        import argparse

        found, todo = [], [cli.parser()]
        while todo:
            p = todo.pop()
            if p.get_default("func") is not None:
                found.append(p)
            for action in p._actions:
                if isinstance(action, argparse._SubParsersAction):
                    todo.extend(action.choices.values())
        return found

    def test_every_later_command_exists(self):
        """
        Each command whose module is imported only when it runs names a
        function that module has.
        """
        later = [p.get_default("func") for p in self.leaf_parsers()]
        later = [f for f in later if isinstance(f, cli._LaterCommand)]
        self.assertGreater(len(later), 20)
        for f in later:
            self.assertTrue(callable(f.resolve()), f)

    def test_plain_command_that_waits_for_the_reactor(self):
        """
        A command declared without the reactor that waits for a Deferred
        (a mistake of its declaration) fails with one line saying so,
        instead of hanging or printing nothing.
        """
        import argparse

        from twisted.internet.defer import Deferred

        async def waits(commands):
            await Deferred()

        args = argparse.Namespace(func=waits, output="plain", quiet=False)
        said = []
        self.patch(cli, "_say", said.append)
        self.assertEqual(cli._run_plainly(args, cli._Interrupt()), 70)
        self.assertEqual(len(said), 1)
        self.assertIn("needs the reactor", said[0])


class AnswerParsingTests(SynchronousTestCase):
    """
    The blocking client reads a whole answer, then L{parse_answer} takes it
    apart: as Twisted's server sends it (chunked), with a length, or up to
    the end; anything less is not an answer.
    """

    def test_chunked(self):
        raw = (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
            b"5\r\n{\"a\":\r\n3;ext=1\r\n 1}\r\n0\r\n\r\n"
        )
        self.assertEqual(parse_answer(raw), (200, b'{"a": 1}'))

    def test_length_and_to_the_end(self):
        self.assertEqual(parse_answer(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}xx"), (404, b"{}"))
        self.assertEqual(parse_answer(b"HTTP/1.0 200 OK\r\n\r\n[1]"), (200, b"[1]"))

    def test_incomplete(self):
        for raw in (
            b"",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\"",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        ):
            self.assertRaises(IncompleteAnswer, parse_answer, raw)

    def test_request(self):
        self.assertEqual(
            request_bytes("POST", ("outlets", "/service/o1"), b"{}"),
            b"POST /outlets/%2Fservice%2Fo1 HTTP/1.1\r\nHost: node\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        )
        self.assertEqual(request_bytes("GET", "node", None).split(b"\r\n")[0], b"GET /node HTTP/1.1")

    def test_ctrl_c_before_the_call(self):
        """
        Ctrl-C pressed before a call waits (while the command was still
        getting ready) ends the call before it connects.
        """
        client = BlockingControlClient("n1", os.path.join(self.mktemp(), "no.sock"))
        with self.assertRaises(CLIError):
            client.call("GET", "node").send(None)
        self.patch(cli_nodes, "_pressed", [False])
        cli_nodes.press()
        with self.assertRaises(KeyboardInterrupt):
            client.call("GET", "node").send(None)
