"""
A background node's files under attack (issue #10): a pid file naming
someone else's process, a broken C{state.json}, loose permissions, two
commands creating the same node at once, and a log that grows without bound.

Unit tests work on a temporary C{OCKAM_HOME} in this process; the end-to-end
ones run the C{ockam} command line (L{tests.cli_harness.CLITestCase}).  Every
process a test starts is killed at cleanup; every wait is polling with a
deadline.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from ockamtw import tap
from ockamtw.cli.nodes import CLIError, Nodes
from ockamtw.control import state as st

from .cli_harness import OCKAM_ARGV, CLITestCase, port_of, process_gone, processes_naming
from .helpers import NodeProcess, async_test, ockamtw_node_argv, spawn

#: Broken state files, and the words the one-line error must contain.
BROKEN_STATES = [
    (b"", ["state.json", "empty"]),
    (b'{"name": "n1", "listen": "127.0.0.1:0", "outl', ["state.json", "json"]),
    (b"[]", ["state.json", "object", "list"]),
    (b'{"name": "n1", "listen": "127.0.0.1:0", "outlets": null}', ["state.json", "outlets", "list", "null"]),
    (b'{"name": "n1", "listen": "127.0.0.1:0", "outlets": [{"address": "o"}]}', ["state.json", "outlets[0]", '"to"']),
    (b'{"name": "n1", "listen": "127.0.0.1:0", "relays": [{"name": "r", "at": "/bogus/x"}]}', ["relays[0].at", "bogus"]),
]


def mode_of(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def unrelated_process(testcase) -> subprocess.Popen:
    """
    A long-running process that is not a node (killed at cleanup).
    """
    proc = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL)

    def end():
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    testcase.addCleanup(end)
    return proc


def wait_until(predicate, seconds: float, what: str) -> None:
    """
    Poll C{predicate} (synchronously) until it holds, for at most C{seconds}.
    """
    end = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {seconds:g} s")
        time.sleep(0.02)


# --- 1. pid files --------------------------------------------------------------------


class PidFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.home = os.path.abspath(self.mktemp())
        self.nodes = Nodes(self.home)
        self.dir = os.path.join(self.home, "nodes", "n1")
        os.makedirs(self.dir)
        with open(os.path.join(self.dir, "state.json"), "w") as f:
            json.dump(st.empty_state("n1", "127.0.0.1:0"), f)

    def write_pid(self, pid: int) -> None:
        with open(os.path.join(self.dir, st.PIDFILE), "w") as f:
            f.write(str(pid))
        # What a node killed with -9 leaves behind.
        with open(os.path.join(self.dir, st.SOCKET), "w"):
            pass

    def test_reused_pid_is_not_the_node(self):
        """
        A pid file naming a live process that is not this node's is stale:
        the node is not running, and stopping it signals nobody.
        """
        other = unrelated_process(self)
        self.write_pid(other.pid)
        self.assertIsNone(self.nodes.pid("n1"))
        self.assertFalse(self.nodes.running("n1"))
        self.assertFalse(self.nodes.stop("n1", timeout=1))
        self.assertIsNone(other.poll(), "the unrelated process was signalled")
        self.nodes.delete("n1")
        self.assertIsNone(other.poll(), "the unrelated process was signalled")
        self.assertFalse(os.path.exists(self.dir))

    def test_the_node_process_is_recognised(self):
        """
        A process whose command line is C{... ockam --state DIR} for this
        node's directory is the node: it is running and C{stop} ends it; the
        same command line for another directory is not.
        """
        script = "import time; time.sleep(60)"
        other_dir = os.path.join(self.home, "nodes", "n2")
        os.makedirs(other_dir)
        impostor = subprocess.Popen([sys.executable, "-c", script, "ockam", "--state", other_dir])
        node = subprocess.Popen([sys.executable, "-c", script, "-n", "ockam", "--state", self.dir])
        for p in (impostor, node):
            self.addCleanup(lambda p=p: (p.poll() is None and p.kill(), p.wait()))
        wait_until(lambda: st.command_line(node.pid) and "--state" in st.command_line(node.pid), 10, "exec")
        wait_until(lambda: st.command_line(impostor.pid) and "--state" in st.command_line(impostor.pid), 10, "exec")

        self.write_pid(impostor.pid)
        self.assertFalse(self.nodes.running("n1"))
        self.write_pid(node.pid)
        self.assertEqual(self.nodes.pid("n1"), node.pid)
        self.assertTrue(self.nodes.stop("n1", timeout=5))
        node.wait(5)  # (stop reaped it already: its status is lost to Popen)
        self.assertTrue(process_gone(node.pid))
        self.assertIsNone(impostor.poll())
        self.assertFalse(os.path.exists(os.path.join(self.dir, st.PIDFILE)))

    def test_stale_files_cleared(self):
        other = unrelated_process(self)
        self.write_pid(other.pid)
        self.nodes.clear_stale("n1")
        self.assertFalse(os.path.exists(os.path.join(self.dir, st.PIDFILE)))
        self.assertFalse(os.path.exists(os.path.join(self.dir, st.SOCKET)))
        self.assertIsNone(other.poll())


# --- 2. state.json ----------------------------------------------------------------------


class StateFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.home = os.path.abspath(self.mktemp())
        self.dir = st.make_node_dir(self.home, "n1")

    def write(self, raw: bytes) -> None:
        with open(os.path.join(self.dir, st.STATE), "wb") as f:
            f.write(raw)

    def test_broken_state_says_what_is_wrong(self):
        for raw, words in BROKEN_STATES:
            self.write(raw)
            with self.assertRaises(st.StateError, msg=raw) as caught:
                st.read_state(self.dir)
            text = str(caught.exception)
            self.assertEqual(len(text.splitlines()), 1, text)
            self.assertTrue(text.startswith("node n1: state.json: "), text)
            for word in words:
                self.assertIn(word.lower(), text.lower(), raw)

    def test_missing_state(self):
        self.assertIsNone(st.read_state(self.dir))
        with self.assertRaises(st.StateError) as caught:
            st.load_state(self.dir)
        self.assertEqual(str(caught.exception), "node n1: state.json: missing")

    def test_older_state_is_completed(self):
        """
        A state written by an older version (no connections, no secure
        listeners, no authorized lists) is read, with the lists filled in
        and unknown keys kept.
        """
        old = {
            "name": "n1",
            "listen": "127.0.0.1:4000",
            "outlets": [{"address": "outlet", "to": "127.0.0.1:9000"}],
            "inlets": [{"listen": "127.0.0.1:6000", "to": "/service/x/service/outlet"}],
            "relays": [{"name": "n1", "at": "/node/n2"}],
            "future": {"kept": True},
        }
        self.write(json.dumps(old).encode())
        state = st.read_state(self.dir)
        self.assertEqual(state["connections"], [])
        self.assertEqual(state["secure_listeners"], [])
        self.assertEqual(state["outlets"], old["outlets"])
        self.assertEqual(state["future"], {"kept": True})

    def test_write_state(self):
        """
        The state is written 0600, atomically (no temporary file is left),
        and reads back.
        """
        state = st.empty_state("n1", "127.0.0.1:0")
        st.write_state(self.dir, state)
        st.write_state(self.dir, state)
        self.assertEqual(os.listdir(self.dir), [st.STATE])
        self.assertEqual(mode_of(os.path.join(self.dir, st.STATE)), 0o600)
        self.assertEqual(st.read_state(self.dir)["name"], "n1")


# --- 3. permissions and 4. creation -------------------------------------------------------


class NodeDirectoryTests(SynchronousTestCase):
    def test_created_private_and_exclusive(self):
        home = os.path.abspath(self.mktemp())
        nodes = Nodes(home)
        d = nodes.make_dir("n1")
        self.assertEqual(mode_of(home), 0o700)
        self.assertEqual(mode_of(st.nodes_dir(home)), 0o700)
        self.assertEqual(mode_of(d), 0o700)
        with self.assertRaises(CLIError) as caught:
            nodes.make_dir("n1")
        self.assertIn("already exists", str(caught.exception))

    def test_older_node_secured(self):
        home = os.path.abspath(self.mktemp())
        d = st.make_node_dir(home, "n1")
        for f in (st.STATE, st.LOGFILE, st.LOGFILE + ".1", st.IDENTITY):
            with open(os.path.join(d, f), "w"):
                pass
            os.chmod(os.path.join(d, f), 0o644)
        os.symlink("/etc/hostname", os.path.join(d, "link"))
        os.chmod(d, 0o755)
        st.secure_node_dir(d)
        self.assertEqual(mode_of(d), 0o700)
        for f in (st.STATE, st.LOGFILE, st.LOGFILE + ".1", st.IDENTITY):
            self.assertEqual(mode_of(os.path.join(d, f)), 0o600, f)
        self.assertEqual(mode_of("/etc/hostname") & 0o044, 0o044, "a symbolic link was followed")

    def test_lock_is_exclusive(self):
        home = os.path.abspath(self.mktemp())
        nodes = Nodes(home)
        nodes.make_dir("n1")
        with nodes.lock("n1"):
            with self.assertRaises(CLIError) as caught:
                with nodes.lock("n1", timeout=0.1):
                    pass
            self.assertIn("busy", str(caught.exception))
        with nodes.lock("n1", timeout=0.1):
            pass
        self.assertEqual(mode_of(os.path.join(nodes.dir("n1"), st.LOCK)), 0o600)


# --- 5. the log ----------------------------------------------------------------------------


class LogOptionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.addCleanup(setattr, tap, "_node_log", tap._node_log)

    def parse(self, *args: str):
        from twisted.scripts.twistd import ServerOptions

        config = ServerOptions()
        config.parseOptions(list(args))
        return config

    def test_log_file_rotated(self):
        """
        With C{--logfile}, the node logs through a L{tap.NodeLog}: rotated at
        C{--log-max-size}, at most C{--log-max-files} old files, mode 0600.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "node.log")
        config = self.parse("-n", "--logfile", path, "ockam", "--log-max-size", "1k", "--log-max-files", "2")
        self.assertIs(config["logger"], tap.logObserver)
        observer = config["logger"]()
        for i in range(200):
            observer({"log_format": "event {i} {pad}", "i": i, "pad": "x" * 50, "log_time": time.time()})
        self.assertEqual(sorted(os.listdir(directory)), ["node.log", "node.log.1", "node.log.2"])
        for name in os.listdir(directory):
            self.assertLessEqual(os.path.getsize(os.path.join(directory, name)), 1024 + 200, name)
            self.assertEqual(mode_of(os.path.join(directory, name)), 0o600, name)
        with open(path) as f:
            self.assertIn("event 199 ", f.read())

    def test_defaults(self):
        config = self.parse("-n", "--logfile", os.path.abspath(self.mktemp()), "ockam")
        self.assertEqual(
            (tap._node_log.max_size, tap._node_log.max_files), (10 * 1000 * 1000, 5)
        )
        self.assertEqual((config.subOptions["log-max-size"], config.subOptions["log-max-files"]), (10 * 1000 * 1000, 5))

    def test_foreground_logs_to_stdout(self):
        """
        C{twistd -n ockam} without C{--logfile} still logs to standard
        output, as twistd does.
        """
        tap._node_log = None
        config = self.parse("-n", "ockam", "--log-max-size", "5M")
        self.assertIsNone(config["logger"])
        self.assertIsNone(tap._node_log)

    def test_bad_values(self):
        for args in (["--log-max-size", "ten"], ["--log-max-size", "0"], ["--log-max-files", "-1"], ["--log-max-files", "0"]):
            options = tap.Options()
            self.assertRaises(usage.UsageError, options.parseOptions, args)
        self.assertEqual(tap.parse_size("10M"), 10 * 1000 * 1000)
        self.assertEqual(tap.parse_size("512k"), 512 * 1000)


# --- end to end, with the command line ------------------------------------------------------


class NodeFilesCLITests(CLITestCase):
    timeout = 120

    async def kill9(self, name: str) -> int:
        pid = self.recorded_pids()[name]
        os.kill(pid, signal.SIGKILL)
        end = time.monotonic() + 10
        while not process_gone(pid):
            self.assertLess(time.monotonic(), end, f"{name} (pid {pid}) did not die")
            await deferLater(reactor, 0.05, lambda: None)
        return pid

    def write_pid(self, name: str, pid: int) -> None:
        with open(os.path.join(self.nodes_dir, name, "pid"), "w") as f:
            f.write(str(pid))

    @async_test
    async def test_reused_pid(self):
        """
        After kill -9, the pid in the node's pid file belongs to an unrelated
        process: C{node list} and C{show} say the node is down, C{stop} says
        it is not running, C{start} starts it and C{delete} deletes it; the
        unrelated process is never signalled.
        """
        await self.create_nodes("n1")
        await self.kill9("n1")
        other = unrelated_process(self)
        self.write_pid("n1", other.pid)

        listed = (await self.ockam("node", "list", "--output", "json")).json()
        self.assertEqual([(n["name"], n["status"], n["pid"]) for n in listed], [("n1", "DOWN", None)])
        self.assertEqual((await self.show("n1"))["status"], "DOWN")
        r = await self.ockam("node", "stop", "n1", "--output", "json")  # as Ockam 0.83: not an error
        self.assertEqual(r.json()["was_running"], False)
        self.assertIsNone(other.poll(), "node stop signalled an unrelated process")

        self.write_pid("n1", other.pid)
        r = await self.ockam("node", "start", "n1", "--output", "json")
        info = r.json()
        self.assertEqual(info["status"], "UP")
        self.assertNotEqual(info["pid"], other.pid)
        self.assertEqual(self.recorded_pids()["n1"], info["pid"])
        self.assertIsNone(other.poll(), "node start signalled an unrelated process")

        await self.kill9("n1")
        self.write_pid("n1", other.pid)
        await self.ockam("node", "delete", "n1")
        self.assertIsNone(other.poll(), "node delete signalled an unrelated process")
        self.assertFalse(os.path.exists(os.path.join(self.nodes_dir, "n1")))

    @async_test
    async def test_list_does_not_hang_on_a_stuck_node(self):
        """
        A node process that runs but does not answer (here: stopped with
        SIGSTOP) is shown as UNRESPONSIVE, with its pid, within seconds.
        """
        infos = await self.create_nodes("n1", "n2")
        pid = infos["n1"]["pid"]
        os.kill(pid, signal.SIGSTOP)
        self.addCleanup(lambda: process_gone(pid) or os.kill(pid, signal.SIGCONT))
        started = time.monotonic()
        listed = (await self.ockam("node", "list", "--output", "json", timeout=20)).json()
        self.assertLess(time.monotonic() - started, 15)
        self.assertEqual(
            [(n["name"], n["status"], n["pid"]) for n in listed],
            [("n1", "UNRESPONSIVE", pid), ("n2", "UP", infos["n2"]["pid"])],
        )
        r = await self.ockam("node", "start", "n1")
        self.assertEqual(r.out, "Restart aborted, node: n1 already running\n")
        os.kill(pid, signal.SIGCONT)

    @async_test
    async def test_broken_state(self):
        """
        A broken state.json: C{node start}, C{show} and C{create} say which
        field is wrong in one line and exit 1; C{node list} lists the other
        nodes and shows the broken one with its problem; the identity is
        never touched; C{node delete} still deletes it.
        """
        await self.create_nodes("n1", "n2")
        await self.ockam("node", "stop", "n1")
        d = os.path.join(self.nodes_dir, "n1")
        with open(os.path.join(d, "identity.json"), "rb") as f:
            identity = f.read()
        for raw, words in BROKEN_STATES + [(None, ["state.json", "missing"])]:
            if raw is None:
                os.unlink(os.path.join(d, "state.json"))
            else:
                with open(os.path.join(d, "state.json"), "wb") as f:
                    f.write(raw)
            r = await self.ockam("node", "start", "n1", check=False)
            self.assertUserError(r, "node n1", *words)
            self.assertEqual(processes_naming(d), [], "a node process was started")
            r = await self.ockam("node", "show", "n1", check=False)
            self.assertUserError(r, "node n1", *words)
            r = await self.ockam("node", "create", "n1", check=False)
            self.assertUserError(r, "already exists")

            r = await self.ockam("node", "list", "--table", check=False)
            self.assertEqual(r.code, 0, str(r))
            self.assertNotIn("Traceback", r.out + r.err)
            self.assertRegex(r.out, r"\| n1 +\| BROKEN +\|")
            self.assertRegex(r.out, r"\| n2 +\| UP +\|")
            self.assertEqual(len(r.err.splitlines()), 1, str(r))
            self.assertTrue(r.err.startswith("ockam: node n1: state.json: "), str(r))
            listed = (await self.ockam("node", "list", "--output", "json")).json()
            self.assertEqual([(n["name"], n["status"]) for n in listed], [("n1", "BROKEN"), ("n2", "UP")])
            self.assertTrue(listed[0]["problem"].startswith("state.json: "), listed[0])

            with open(os.path.join(d, "identity.json"), "rb") as f:
                self.assertEqual(f.read(), identity, "the identity was changed")
            if raw is None:
                self.assertFalse(os.path.exists(os.path.join(d, "state.json")), "the missing state was recreated")
            else:
                with open(os.path.join(d, "state.json"), "rb") as f:
                    self.assertEqual(f.read(), raw, "the broken state was rewritten")

        await self.ockam("node", "delete", "n1")
        listed = (await self.ockam("node", "list", "--output", "json")).json()
        self.assertEqual([n["name"] for n in listed], ["n2"])

    @async_test
    async def test_permissions(self):
        """
        Node directories are 0700 and their files 0600, for a new node and,
        after C{node start}, for one an older version made 0755 and 0644;
        the identities directory is 0700.
        """
        await self.create_nodes("n1")
        d = os.path.join(self.nodes_dir, "n1")

        def assertPrivate():
            self.assertEqual(mode_of(self.nodes_dir), 0o700)
            self.assertEqual(mode_of(d), 0o700)
            names = set(os.listdir(d))
            self.assertTrue({"state.json", "node.log", "pid", "identity.json", "control.sock"} <= names, names)
            for name in names:
                self.assertEqual(mode_of(os.path.join(d, name)), 0o600, name)

        assertPrivate()
        await self.ockam("node", "stop", "n1")
        os.chmod(self.nodes_dir, 0o755)
        os.chmod(d, 0o755)
        for name in os.listdir(d):
            os.chmod(os.path.join(d, name), 0o644)
        await self.ockam("node", "start", "n1")
        assertPrivate()

        await self.ockam("identity", "create", "alice")
        identities = os.path.join(self.home, "identities")
        self.assertEqual(mode_of(identities), 0o700)
        self.assertEqual(mode_of(os.path.join(identities, "alice.json")), 0o600)

    @async_test
    async def test_racing_creates(self):
        """
        Of several C{node create n1} at once, exactly one succeeds; the
        others say the node exists; one node process runs.
        """
        results = await gatherResults(
            [Deferred.fromCoroutine(self.ockam("node", "create", "n1", "--output", "json", check=False)) for _ in range(4)]
        )
        ok = [r for r in results if r.code == 0]
        self.assertEqual(len(ok), 1, "\n".join(str(r) for r in results))
        for r in results:
            if r.code != 0:
                self.assertUserError(r, "n1", "already exists")
        self.assertEqual(processes_naming(os.path.join(self.nodes_dir, "n1")), [ok[0].json()["pid"]])
        self.assertEqual((await self.show("n1"))["pid"], ok[0].json()["pid"])

    @async_test
    async def test_create_after_the_check_of_another(self):
        """
        The race made certain: a second C{node create n1} whose check that
        n1 does not exist ran before the first command created it (so it
        passed) still fails with "already exists", and leaves the first
        node, its state and its identity alone.
        """
        import argparse

        from ockamtw.cli.main import Commands

        first = (await self.create_nodes("n1"))["n1"]
        d = os.path.join(self.nodes_dir, "n1")
        before = {f: open(os.path.join(d, f), "rb").read() for f in ("state.json", "identity.json")}

        nodes = Nodes(self.home)
        nodes.exists = lambda name: False  # what the second command saw
        args = argparse.Namespace(
            name="n1", tcp_listener_address="127.0.0.1:0", identity=None, foreground=False, output="json"
        )
        commands = Commands(reactor, args, nodes)
        try:
            with self.assertRaises(CLIError) as caught:
                await commands.node_create()
        finally:
            await commands.close()
        self.assertIn("already exists", str(caught.exception))
        self.assertEqual(processes_naming(d), [first["pid"]])
        after = await self.show("n1")
        self.assertEqual((after["status"], after["pid"]), ("UP", first["pid"]))
        for f, content in before.items():
            with open(os.path.join(d, f), "rb") as fh:
                self.assertEqual(fh.read(), content, f)

    @async_test
    async def test_node_writes_its_own_log(self):
        """
        The node process writes node.log itself (its standard output and
        error are not the log); a node that cannot start says why on the
        command line and in its log.
        """
        infos = await self.create_nodes("n1")
        pid = infos["n1"]["pid"]
        log = os.path.join(self.nodes_dir, "n1", "node.log")
        for fd in (1, 2):
            self.assertNotEqual(os.path.realpath(f"/proc/{pid}/fd/{fd}"), log, f"fd {fd} is node.log")
        with open(log) as f:
            self.assertIn("node n1 starting", f.read())
        r = await self.ockam("node", "logs", "n1")
        self.assertEqual(r.out, log + "\n")

        port = port_of(infos["n1"]["listener"])
        await self.ockam("node", "stop", "n1")
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", port))
        taken.listen(1)
        r = await self.ockam("node", "start", "n1", check=False)
        self.assertUserError(r, "n1", "in use")
        with open(log) as f:
            self.assertIn("ockam: node n1: listener:", f.read())

    @async_test
    async def test_node_log_rotates(self):
        """
        A node run with twistd's C{--logfile} and a small C{--log-max-size}
        rotates its log at start already, keeping C{--log-max-files}.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        log = os.path.join(directory, "n.log")
        argv = ockamtw_node_argv() + [
            "-n", "--pidfile=", "--logfile", log,
            "ockam", "--name", "rot", "--listen", "tcp:0:interface=127.0.0.1",
            "--log-max-size", "100", "--log-max-files", "1",
        ]  # fmt: skip
        process = spawn(self, argv)

        def logged() -> str:
            text = ""
            for name in (log + ".1", log):
                try:
                    with open(name) as f:
                        text += f.read()
                except FileNotFoundError:
                    pass
            return text

        end = time.monotonic() + 15
        while "listening on" not in logged():
            self.assertIsNone(process.exit, process.text)
            self.assertLess(time.monotonic(), end, f"no 'listening on' in the log: {logged()!r}")
            await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(sorted(os.listdir(directory)), ["n.log", "n.log.1"])
        self.assertEqual(process.text, "", "the node wrote to its standard output or error")
        process.transport.signalProcess("TERM")
        self.assertEqual(await process.wait_ended(15), (0, None))

    @async_test
    async def test_foreground_node_is_recognised(self):
        """
        C{node create --foreground} runs the node in the command's process,
        which C{node list} and C{node stop} recognise as the node.
        """
        process = NodeProcess()
        argv = OCKAM_ARGV + ["node", "create", "fg", "--foreground"]
        transport = reactor.spawnProcess(process, argv[0], argv, env=self.env, path=self.home)

        def kill():
            if process.exit is None:
                transport.signalProcess("KILL")
            return process.ended

        self.addCleanup(kill)
        end = time.monotonic() + 20
        while True:
            listed = (await self.ockam("node", "list", "--output", "json")).json()
            if listed and listed[0]["status"] == "UP":
                break
            self.assertIsNone(process.exit, process.text)
            self.assertLess(time.monotonic(), end, f"the foreground node is not UP: {listed}")
            await deferLater(reactor, 0.1, lambda: None)
        self.assertEqual(listed[0]["pid"], transport.pid)
        await self.ockam("node", "stop", "fg")
        self.assertEqual(await process.wait_ended(15), (0, None))
