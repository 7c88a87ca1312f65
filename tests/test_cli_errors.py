"""
The C{ockam} command as a user meets it when things go wrong: wrong input,
a node that is stopped, killed, stuck or has lost its control socket,
Ctrl-C during a slow call, an OCKAM_HOME that cannot be used.  Every answer
is one line starting C{ockam: } with a non-zero exit status (2 for a usage
mistake, 130 after Ctrl-C); no traceback.

Most cases need no real node: a I{stand-in} is a node directory whose
process is a sleeping Python (its command line names the directory, as a
node's does) and whose control socket this test serves, answering nothing
or closing at once.
"""

from __future__ import annotations

import os
import socket
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import Factory, Protocol

import ockamtw
from ockamtw.control import state as st

from .cli_harness import OCKAM_ARGV, CLITestCase, CommandProcess, Result, processes_naming
from .helpers import async_test, deadline, spawn, wait_until


class _Silent(Protocol):
    """
    A control socket's client that is never answered (a stuck node), or
    closed at once (a node that dies in the middle of a call).
    """

    def connectionMade(self) -> None:
        self.factory.connected.append(self)
        if self.factory.close_at_once:
            self.transport.loseConnection()
        waiting, self.factory.waiting = self.factory.waiting, []
        for d in waiting:
            d.callback(self)

    def connectionLost(self, reason) -> None:
        if self in self.factory.connected:
            self.factory.connected.remove(self)


class _SilentFactory(Factory):
    protocol = _Silent

    def __init__(self, close_at_once: bool = False) -> None:
        self.close_at_once = close_at_once
        self.connected = []
        self.waiting = []

    def next_connection(self) -> Deferred:
        d = Deferred()
        self.waiting.append(d)
        return d


class _Quiet(Protocol):
    """
    A TCP peer that reads and never answers.
    """

    def dataReceived(self, data: bytes) -> None:
        waiting, self.factory.waiting = self.factory.waiting, []
        for d in waiting:
            d.callback(data)


class _QuietFactory(Factory):
    protocol = _Quiet

    def __init__(self) -> None:
        self.waiting = []


class ErrorCaseTestCase(CLITestCase):
    timeout = 60

    def assertInterrupted(self, r: Result) -> None:
        """
        Exit status 130, exactly C{ockam: interrupted} on stderr.
        """
        self.assertNotIn("Traceback", r.out + r.err, str(r))
        self.assertEqual((r.code, r.signal, r.err), (130, None, "ockam: interrupted\n"), str(r))

    def assertUsageError(self, r: Result, fragment: str) -> None:
        self.assertNotIn("Traceback", r.out + r.err, str(r))
        self.assertEqual(r.code, 2, str(r))
        # One line, as every error: what is wrong and where the help is.
        self.assertEqual(len(r.err.splitlines()), 1, str(r))
        self.assertTrue(r.err.startswith("ockam") and r.err.endswith(" --help)\n"), str(r))
        self.assertIn(fragment, r.err, str(r))

    async def interrupted(self, *args: str, when: Deferred, seconds: float = 15) -> Result:
        """
        Run C{ockam ARGS}, send it SIGINT (Ctrl-C) once C{when} fires, and
        return what it did.
        """
        argv = OCKAM_ARGV + list(args)
        proto = CommandProcess(None)
        transport = reactor.spawnProcess(proto, argv[0], argv, env=self.env, path=self.home)

        def kill():
            try:
                transport.signalProcess("KILL")
            except ProcessExitedAlready:
                pass

        try:
            await deadline(when, seconds, f"ockam {' '.join(args)} reaching the slow call")
        except BaseException:
            kill()
            await proto.ended
            raise
        transport.signalProcess("INT")
        call = reactor.callLater(seconds, kill)
        code, sig = await proto.ended
        if call.active():
            call.cancel()
        return Result(list(args), code, sig, proto.out, proto.err)

    # --- stand-ins for nodes -------------------------------------------------------

    async def stand_in(self, name: str = "n1", socket_mode: str = "silent"):
        """
        Node C{name}: a directory with a state, a pid file naming a process
        that is taken for the node, and (unless C{socket_mode} is
        C{"none"}) a control socket served here: C{"silent"} never answers,
        C{"close"} closes each connection at once.  Returns the factory
        serving the socket (or C{None}).
        """
        d = os.path.join(self.nodes_dir, name)
        os.makedirs(d, mode=0o700)
        st.write_state(d, st.empty_state(name, "127.0.0.1:1"))
        process = spawn(self, [sys.executable, "-c", "import time; time.sleep(120)", "ockam", "--state", d])
        pid = _pid_of(process)
        with open(os.path.join(d, st.PIDFILE), "w") as f:
            f.write(f"{pid}\n")
        await wait_until(lambda: st.node_pid(d) == pid, 10, "the stand-in taken for node " + name)
        if socket_mode == "none":
            return None
        factory = _SilentFactory(close_at_once=(socket_mode == "close"))
        port = reactor.listenUNIX(os.path.join(d, st.SOCKET), factory)

        def close():
            for p in list(factory.connected):
                p.transport.abortConnection()
            return port.stopListening()

        self.addCleanup(close)
        return factory


def _pid_of(process) -> int:
    return process.transport.pid


class InterruptTests(ErrorCaseTestCase):
    @async_test
    async def test_ctrl_c_during_a_call_to_a_node(self):
        """
        Ctrl-C while the node has not answered yet (listing, creating a
        secure channel, sending through a node): one line, status 130.
        """
        factory = await self.stand_in("n1")
        for args in (
            ["tcp-outlet", "list", "--at", "n1"],
            ["secure-channel", "create", "--from", "n1", "--to", "/service/api"],
            ["message", "send", "hi", "--from", "n1", "--to", "/service/echo"],
            ["node", "show", "n1"],
        ):
            r = await self.interrupted(*args, when=factory.next_connection())
            self.assertInterrupted(r)

    @async_test
    async def test_ctrl_c_during_message_send_without_a_node(self):
        """
        Ctrl-C while C{message send} (from a temporary node) waits for a
        reply: one line, status 130.
        """
        factory = _QuietFactory()
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        data = Deferred()
        factory.waiting.append(data)
        route = f"/ip4/127.0.0.1/tcp/{port.getHost().port}/service/echo"
        r = await self.interrupted("message", "send", "hi", "--to", route, when=data)
        self.assertInterrupted(r)

    @async_test
    async def test_ctrl_c_while_a_node_is_created(self):
        """
        Ctrl-C while C{node create} waits for its new node to answer: one
        line, status 130, and the half-made node is gone (its process
        ended, its directory removed).
        """
        state = os.path.join(self.nodes_dir, "n1", st.STATE)
        made = wait_until(lambda: os.path.exists(state), 20, "node create writing the state of n1")
        r = await self.interrupted("node", "create", "n1", when=made)
        self.assertInterrupted(r)
        self.assertFalse(os.path.exists(os.path.join(self.nodes_dir, "n1")))
        await wait_until(lambda: not processes_naming(os.path.join(self.nodes_dir, "n1")), 10, "n1's process ending")

    @async_test
    async def test_ctrl_c_while_the_command_line_loads(self):
        """
        Ctrl-C before the command line has finished importing (the signal
        is sent from an import hook the moment C{ockamtw.cli.main} starts
        loading): one line, status 130, as later on.  The console script
        and C{python -m ockamtw.cli} both start there.
        """
        code = (
            "import os, signal, sys\n"
            "class Hook:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'ockamtw.cli.main':\n"
            "            os.kill(os.getpid(), signal.SIGINT)\n"
            "        return None\n"
            "sys.meta_path.insert(0, Hook())\n"
            "import runpy\n"
            "sys.argv = ['ockam', 'node', 'list']\n"
            "runpy.run_module('ockamtw.cli', run_name='__main__')\n"
        )
        p = spawn(self, [sys.executable, "-c", code], env=self.env)
        code_, sig = await p.wait_ended(30)
        self.assertEqual((code_, sig, p.stdout, p.stderr), (130, None, b"", b"ockam: interrupted\n"), p.text)
        from importlib.metadata import entry_points

        scripts = {e.name: e.value for e in entry_points(group="console_scripts") if e.name == "ockam"}
        self.assertEqual(scripts, {"ockam": "ockamtw.cli.entry:main"})


    @async_test
    async def test_ctrl_c_inside_a_finalizer(self):
        """
        Ctrl-C whose handler runs inside a weakref callback (or any
        finalizer), while the command line loads or before the command
        waits: Python only prints an exception raised there ("Exception
        ignored") and goes on, so the command would run on as if nothing
        had been pressed.  It is noted instead: one line, status 130.
        """
        factory = _QuietFactory()
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        route = f"/ip4/127.0.0.1/tcp/{port.getHost().port}/service/echo"
        finalizer = (
            "import os, signal, sys, weakref\n"
            "class Thing:\n"
            "    pass\n"
            "def press(ref):\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    for i in range(1000):\n"  # the handler runs in this loop
            "        pass\n"
            "def collect():\n"
            "    thing = Thing()\n"
            "    ref = weakref.ref(thing, press)\n"
            "    del thing\n"
        )
        while_loading = finalizer + (
            "class Hook:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'ockamtw.cli.main':\n"
            "            collect()\n"
            "        return None\n"
            "sys.meta_path.insert(0, Hook())\n"
            "from ockamtw.cli.entry import main\n"
            "sys.argv = ['ockam', 'node', 'list']\n"
            "main()\n"
        )
        before_waiting = finalizer + (
            "from ockamtw.cli import main as cli\n"
            "parser = cli.parser\n"
            "def slow_parser():\n"
            "    collect()\n"
            "    return parser()\n"
            "cli.parser = slow_parser\n"
            f"cli.main(['message', 'send', 'hi', '--to', {route!r}])\n"
        )
        for code in (while_loading, before_waiting):
            p = spawn(self, [sys.executable, "-c", code], env=self.env)
            code_, sig = await p.wait_ended(30)
            self.assertEqual((code_, sig, p.stdout, p.stderr), (130, None, b"", b"ockam: interrupted\n"), p.text)


class NodeGoneTests(ErrorCaseTestCase):
    @async_test
    async def test_node_closes_without_answering(self):
        """
        A node that closes the control connection without an answer (it
        died during the call): one line saying so.
        """
        await self.stand_in("n1", socket_mode="close")
        r = await self.ockam("tcp-outlet", "list", "--at", "n1", check=False)
        self.assertUserError(r, "node n1 closed the connection without answering")

    @async_test
    async def test_control_socket_removed(self):
        """
        A node whose process runs but whose control socket is gone: one
        line naming the socket and how to get it back.
        """
        await self.stand_in("n1", socket_mode="none")
        sock = os.path.join(self.nodes_dir, "n1", "control.sock")
        r = await self.ockam("tcp-inlet", "list", "--at", "n1", check=False)
        self.assertUserError(r, "node n1", "lost its control socket", sock, "ockam node stop n1 && ockam node start n1")

    @async_test
    async def test_node_killed(self):
        """
        A node killed with SIGKILL (its pid file and control socket left
        behind): one line saying it is not running.
        """
        d = os.path.join(self.nodes_dir, "n1")
        os.makedirs(d, mode=0o700)
        st.write_state(d, st.empty_state("n1", "127.0.0.1:1"))
        process = spawn(self, [sys.executable, "-c", "pass"])
        await process.ended
        with open(os.path.join(d, st.PIDFILE), "w") as f:
            f.write(f"{_pid_of(process)}\n")
        left = socket.socket(socket.AF_UNIX)
        left.bind(os.path.join(d, st.SOCKET))
        left.close()
        for args in (["relay", "list", "--to", "n1"], ["message", "send", "x", "--from", "n1", "--to", "/service/echo"]):
            r = await self.ockam(*args, check=False)
            self.assertUserError(r, "node n1 is not running (start it with: ockam node start n1)")
        r = await self.ockam("message", "send", "x", "--to", "/node/n1/service/echo", check=False)
        self.assertUserError(r, "node n1 is not running (start it with: ockam node start n1)")
        self.assertNotIn("cannot connect", r.err)

    @async_test
    async def test_unknown_node_in_a_route_said_one_way(self):
        """
        A route through a node that does not exist gets the words of every
        other command, whether a node or the command line resolves it.
        """
        await self.stand_in("n1", socket_mode="close")
        expected = "ockam: no node named 'nX' (see: ockam node list)\n"
        for args in (
            ["message", "send", "x", "--from", "n1", "--to", "/node/nX/service/echo"],
            ["message", "send", "x", "--to", "/node/nX/service/echo"],
            ["secure-channel", "create", "--from", "n1", "--to", "/node/nX/service/api"],
            ["relay", "create", "r", "--at", "/node/nX", "--to", "n1"],
            ["tcp-outlet", "list", "--at", "nX"],
        ):
            r = await self.ockam(*args, check=False)
            self.assertUserError(r)
            self.assertEqual(r.err, expected, str(r))


class HomeTests(ErrorCaseTestCase):
    @async_test
    async def test_home_not_a_directory(self):
        """
        An OCKAM_HOME under a file: one line with the path, status 1.
        """
        a_file = os.path.join(self.home, "file")
        with open(a_file, "w") as f:
            f.write("x")
        for home in ("/dev/null/x", a_file):
            self.env["OCKAM_HOME"] = home
            r = await self.ockam("node", "create", "q", check=False)
            self.assertUserError(r, "cannot create node q", home, "Not a directory")
            r = await self.ockam("identity", "create", "alice", check=False)
            self.assertUserError(r, "cannot create identity alice", home, "Not a directory")
            r = await self.ockam("node", "list", check=False)
            self.assertUserError(r, "cannot list nodes", home, "Not a directory")
        self.env["OCKAM_HOME"] = self.home


class UsageTests(ErrorCaseTestCase):
    @async_test
    async def test_version(self):
        r = await self.ockam("--version")
        self.assertEqual(r.out, f"ockam {ockamtw.__version__} (ockamtw)\n")

    @async_test
    async def test_output_before_or_after_the_command(self):
        """
        C{--output json} is taken wherever C{--help} shows it.
        """
        for args in (
            ["--output", "json", "node", "list"],
            ["node", "--output", "json", "list"],
            ["node", "list", "--output", "json"],
            ["--output=json", "identity", "list"],
            ["identity", "--output=json", "list"],
        ):
            r = await self.ockam(*args)
            self.assertEqual(r.out, "[]\n", str(r))
        r = await self.ockam("--output", "json", "node", "list", "--output", "plain", check=False)
        self.assertUserError(r, "No nodes registered on this system!")
        self.assertEqual(r.code, 74, str(r))

    @async_test
    async def test_empty_names(self):
        """
        An empty node name is a wrong name, not "pick one for me".
        """
        r = await self.ockam("node", "create", "", check=False)
        self.assertUserError(r, "not a node name: ''")
        r = await self.ockam("tcp-outlet", "list", "--at", "", check=False)
        self.assertUserError(r, "not a node name: ''")
        self.assertFalse(os.path.exists(self.nodes_dir) and os.listdir(self.nodes_dir))

    @async_test
    async def test_node_delete_needs_a_name_or_all(self):
        # Without a name: the default node, and there is none.
        r = await self.ockam("node", "delete", check=False)
        self.assertUserError(r, "there is no node yet")
        r = await self.ockam("node", "delete", "n1", "--all", check=False)
        self.assertUsageError(r, "name a node, or use --all")

    @async_test
    async def test_unknown_option_named_with_its_command(self):
        """
        An option the command does not take is said with that command's
        usage (what it does take), wherever on the line it was typed.
        """
        for args in (["relay", "list", "--bogus"], ["--bogus", "relay", "list"], ["relay", "--bogus", "list"]):
            r = await self.ockam(*args, check=False)
            self.assertUsageError(r, "ockam relay list: unrecognized arguments: --bogus")
            self.assertEqual(r.err, "ockam relay list: unrecognized arguments: --bogus (see: ockam relay list --help)\n")

    @async_test
    async def test_values_that_cannot_work(self):
        """
        Values of the right shape that cannot work are refused before
        anything is made: an identifier that is not one (C{--authorized}),
        port 0 as a place to connect to.  A listener address that is taken
        is said as it was typed.
        """
        for args in (
            ["tcp-outlet", "create", "--at", "n1", "--to", "127.0.0.1:9", "--authorized", "Pnothex"],
            ["secure-channel-listener", "create", "l1", "--at", "n1", "--authorized", "P" + "A" * 64],
        ):
            r = await self.ockam(*args, check=False)
            # (named "--authorized" or, where Ockam has the short flag too, "--authorized/-a")
            self.assertUsageError(r, "--authorized")
            self.assertIn(": not an identifier (P + 64 lowercase hex)", r.err)
        await self.ockam("node", "create", "n1")
        for args in (
            ["tcp-outlet", "create", "--at", "n1", "--to", "127.0.0.1:0"],
            ["tcp-connection", "create", "--from", "n1", "--to", "127.0.0.1:0"],
            ["message", "send", "hi", "--from", "n1", "--to", "/ip4/127.0.0.1/tcp/0/service/echo"],
        ):
            r = await self.ockam(*args, check=False)
            self.assertUserError(r, "port 0 in '127.0.0.1:0' is not a port to connect to")
        r = await self.ockam("tcp-outlet", "list", "--at", "n1", "--output", "json")
        self.assertEqual(r.out, "[]\n", str(r))
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = await self.ockam("node", "create", "n2", "--tcp-listener-address", f"127.0.0.1:{port}", check=False)
        self.assertUserError(r, f"cannot listen on 127.0.0.1:{port}: Address already in use")

    @async_test
    async def test_bad_timeout(self):
        for value in ("0", "-1", "soon", "nan"):
            r = await self.ockam("message", "send", "x", "--to", "/service/echo", "--timeout", value, check=False)
            self.assertUsageError(r, "--timeout")


class IdentityDeleteTests(ErrorCaseTestCase):
    @async_test
    async def test_identity_delete(self):
        """
        C{identity delete NAME}: refused while a node's state names the
        identity, done once none does; the identity is gone after.
        """
        alice = (await self.ockam("identity", "create", "alice")).out.strip().rsplit(" ", 1)[1]
        d = os.path.join(self.nodes_dir, "a1")
        os.makedirs(d, mode=0o700)
        state = st.empty_state("a1", "127.0.0.1:0")
        state["identity"] = "alice"
        st.write_state(d, state)
        r = await self.ockam("identity", "delete", "alice", check=False)
        self.assertUserError(r, "Can't delete identity 'alice' because is currently in use by node 'a1'")
        self.assertEqual((await self.ockam("identity", "show", "alice")).out.strip(), alice)
        await self.ockam("node", "delete", "a1")
        r = await self.ockam("identity", "delete", "alice", "--output", "json")
        self.assertEqual(r.json(), {"name": "alice", "identifier": alice})
        self.assertEqual((await self.ockam("identity", "list", "--output", "json")).json(), [])
        r = await self.ockam("identity", "delete", "alice", check=False)
        self.assertUserError(r, "Identity 'alice' not found")
        r = await self.ockam("identity", "delete", "../x", check=False)
        self.assertUserError(r, "not an identity name")
