"""
The harness of the command line tests (L{tests.test_cli},
L{tests.test_cli_errors}, L{tests.test_cli_printed}, L{tests.test_cli_secure},
L{tests.test_node_files}): L{CLITestCase} runs the real C{ockam} console
script (or C{python -m ockamtw.cli}) as a subprocess in a fresh
C{OCKAM_HOME} per test, bounded in time, and kills every node process left
at cleanup; plain TCP clients (L{http_head}), and what C{/proc} says about
processes, their listening ports and their UNIX sockets.

Nothing sleeps except bounded polling for a subprocess or a route to become
ready (L{CLITestCase.head_until_ok}).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from typing import Dict, List, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from .helpers import deadline, script_argv, spawn, subprocess_env

#: How to run the command line: the console script next to this interpreter,
#: or the package's module.
OCKAM_ARGV = script_argv("ockam", ["-m", "ockamtw.cli"])

#: A node name and the control socket in its directory must fit in a UNIX
#: socket path (sun_path is 108 bytes on Linux; keep a margin).
MAX_SOCKET_PATH = 100

HEX32 = r"[0-9a-f]{32}"


# --- running commands ------------------------------------------------------------------


class Result:
    """
    What a finished command did.
    """

    def __init__(self, argv: List[str], code: Optional[int], sig, out: bytes, err: bytes) -> None:
        self.argv = argv
        self.code = code
        self.signal = sig
        self.out = out.decode("utf-8", "replace")
        self.err = err.decode("utf-8", "replace")

    def json(self):
        try:
            return json.loads(self.out)
        except ValueError as e:
            raise AssertionError(f"not JSON ({e}):\n{self}") from None

    def __str__(self) -> str:
        cmd = " ".join(["ockam"] + self.argv)
        return f"$ {cmd}\n  exit: {self.code} signal: {self.signal}\n  stdout: {self.out!r}\n  stderr: {self.err!r}"


class CommandProcess(ProcessProtocol):
    """
    One command run to its end: writes C{stdin} (if any) and closes it,
    keeps its output; C{ended} fires with C{(exit code, signal)}.
    """

    def __init__(self, stdin: Optional[bytes]) -> None:
        self.stdin = stdin
        self.out = b""
        self.err = b""
        self.ended: Deferred = Deferred()

    def connectionMade(self) -> None:
        if self.stdin is not None:
            self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason) -> None:
        v = reason.value
        self.ended.callback((getattr(v, "exitCode", None), getattr(v, "signal", None)))


# --- plain TCP / UNIX clients (no ockamtw code) ------------------------------------------


class _OneShot(Protocol):
    """
    Writes C{request} on connect; C{done} fires with everything read once
    the other side closes.
    """

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.data = b""
        self.done: Deferred = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason) -> None:
        if not self.done.called:
            self.done.callback(self.data)


async def one_shot(endpoint, request: bytes, seconds: float) -> bytes:
    """
    Connect to C{endpoint}, write C{request}, and return everything read
    until the other side closes (each step bounded by C{seconds}).
    """
    proto = await deadline(connectProtocol(endpoint, _OneShot(request)), seconds, "connect")
    try:
        return await deadline(proto.done, seconds, "the answer")
    except AssertionError:
        proto.transport.abortConnection()
        raise


async def http_head(port: int, seconds: float = 3.0) -> str:
    """
    The status line of C{HEAD /} on 127.0.0.1:PORT (or C{""} when the
    connection closes without an answer).
    """
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=seconds)
    data = await one_shot(endpoint, b"HEAD / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", seconds)
    return data.split(b"\r\n", 1)[0].decode("latin-1")


def connection_refused(port: int) -> bool:
    """
    Whether a connection to 127.0.0.1:C{port} is refused right now.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(("127.0.0.1", port))
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        s.close()
    return False


# --- processes ------------------------------------------------------------------------------


def process_gone(pid: int) -> bool:
    """
    Whether C{pid} has exited (a zombie counts as exited).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] == "Z"
    except OSError:
        return True


def processes_naming(text: str) -> List[int]:
    """
    Pids of live processes whose command line contains C{text}.
    """
    found = []
    if not os.path.isdir("/proc"):
        return found
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if text in cmdline and not process_gone(int(entry)):
            found.append(int(entry))
    return found


def socket_inodes(pid: int) -> set:
    """
    The inodes of the sockets C{pid} has open (from /proc/PID/fd).
    """
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        m = re.fullmatch(r"socket:\[(\d+)\]", target)
        if m:
            inodes.add(m.group(1))
    return inodes


def tcp_listening_ports(pid: int) -> set:
    """
    The TCP ports C{pid} listens on (state 0A in /proc/PID/net/tcp{,6}
    whose socket inode is one of the process's descriptors).
    """
    inodes = socket_inodes(pid)
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "0A" and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def unix_socket_paths(pid: int) -> set:
    """
    The paths of the UNIX sockets C{pid} has open (from /proc/PID/net/unix).
    """
    inodes = socket_inodes(pid)
    paths = set()
    with open(f"/proc/{pid}/net/unix") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 8 and fields[6] in inodes:
                paths.add(fields[7])
    return paths


def port_of(hostport: str) -> int:
    """
    The port of C{host:port}.
    """
    return int(hostport.rsplit(":", 1)[1])


# --- the base test case -------------------------------------------------------------------


class CLITestCase(TestCase):
    """
    A fresh C{OCKAM_HOME} per test (short enough for the nodes' control
    sockets), commands run in it (L{ockam}), and at cleanup C{ockam node
    delete --all} and then SIGKILL for every node process still recorded
    or naming this C{OCKAM_HOME}.
    """

    timeout = 60

    def setUp(self) -> None:
        home = os.path.abspath(self.mktemp())
        longest = os.path.join(home, "nodes", "n" * 12, "control.sock")
        if len(longest.encode()) > MAX_SOCKET_PATH:
            home = tempfile.mkdtemp(prefix="ock", dir="/tmp")
            self.addCleanup(shutil.rmtree, home, True)
        else:
            os.makedirs(home)
        self.home = home
        self.nodes_dir = os.path.join(home, "nodes")
        env = subprocess_env()
        env["OCKAM_HOME"] = home
        env.setdefault("PATH", os.defpath)
        self.env = env
        self.addCleanup(lambda: Deferred.fromCoroutine(self._cleanup()))

    async def _cleanup(self) -> None:
        pids = self.recorded_pids()
        try:
            await self.ockam("node", "delete", "--all", check=False, timeout=30)
        finally:
            for pid in set(pids.values()) | set(processes_naming(self.home)):
                if not process_gone(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

    # --- commands ----------------------------------------------------------------

    async def ockam(self, *args: str, stdin: Optional[str] = None, timeout: float = 30.0, check: bool = True) -> Result:
        """
        Run C{ockam ARGS} in this test's OCKAM_HOME; with C{check}, fail
        unless it exits with status 0.
        """
        argv = OCKAM_ARGV + list(args)
        proto = CommandProcess(stdin.encode() if stdin is not None else None)
        transport = reactor.spawnProcess(proto, argv[0], argv, env=self.env, path=self.home)
        timed_out = []

        def kill():
            timed_out.append(True)
            try:
                transport.signalProcess("KILL")
            except ProcessExitedAlready:
                pass

        call = reactor.callLater(timeout, kill)
        code, sig = await proto.ended
        if call.active():
            call.cancel()
        result = Result(list(args), code, sig, proto.out, proto.err)
        if timed_out:
            self.fail(f"command did not end within {timeout:g} s:\n{result}")
        if check and code != 0:
            self.fail(f"command failed:\n{result}")
        return result

    async def create_nodes(self, *names: str) -> Dict[str, dict]:
        """
        C{ockam node create NAME --output json} for each name (at once);
        returns each node's info.
        """
        results = await gatherResults(
            [Deferred.fromCoroutine(self.ockam("node", "create", n, "--output", "json")) for n in names],
            consumeErrors=True,
        )
        infos = {}
        for name, r in zip(names, results):
            info = r.json()
            self.assertEqual((info["name"], info["status"]), (name, "UP"), str(r))
            infos[name] = info
        return infos

    async def show(self, name: str) -> dict:
        return (await self.ockam("node", "show", name, "--output", "json")).json()

    async def listener(self, name: str) -> str:
        listener = (await self.show(name))["listener"]
        self.assertRegex(listener, r"^127\.0\.0\.1:\d+$")
        self.assertNotEqual(port_of(listener), 0)
        return listener

    async def relay_setup(self) -> dict:
        """
        n2 and n3, relay n3 at n2, n1 connected to n2 (the seed's relay
        section).  Returns n2's listener and n1's worker address to n2.
        """
        await self.create_nodes("n2", "n3", "n1")
        r = await self.ockam("forwarder", "create", "n3", "--at", "/node/n2", "--to", "/node/n3")
        self.assertEqual(r.out, "/service/forward_to_n3\n", str(r))
        n2 = await self.listener("n2")
        r = await self.ockam("tcp-connection", "create", "--from", "n1", "--to", n2, "--print-address")
        m = re.fullmatch(rf"/service/({HEX32})\n", r.out)
        self.assertIsNotNone(m, str(r))
        return {"n2": n2, "worker": m.group(1), "service": f"/service/{m.group(1)}"}

    # --- files and processes ------------------------------------------------------

    def recorded_pids(self) -> Dict[str, int]:
        pids = {}
        try:
            names = os.listdir(self.nodes_dir)
        except FileNotFoundError:
            return pids
        for name in names:
            try:
                with open(os.path.join(self.nodes_dir, name, "pid")) as f:
                    pids[name] = int(f.read().strip())
            except (OSError, ValueError):
                pass
        return pids

    def assertNoNodesLeft(self, pids: Dict[str, int]) -> None:
        alive = {n: p for n, p in pids.items() if not process_gone(p)}
        self.assertEqual(alive, {}, "node processes still running after `node delete --all`")
        self.assertEqual(processes_naming(self.home), [], "processes still name OCKAM_HOME")
        left = os.listdir(self.nodes_dir) if os.path.exists(self.nodes_dir) else []
        self.assertEqual(left, [], f"{self.nodes_dir} is not empty")

    def assertUserError(self, r: Result, *fragments: str) -> None:
        """
        Exit status 1, exactly one line on stderr starting C{ockam: } (and
        containing each fragment), no traceback anywhere.
        """
        self.assertNotIn("Traceback", r.out + r.err, str(r))
        self.assertIsNone(r.signal, str(r))
        self.assertNotEqual(r.code, 0, str(r))
        lines = r.err.splitlines()
        self.assertEqual(len(lines), 1, f"expected one line on stderr:\n{r}")
        self.assertTrue(lines[0].startswith("ockam: "), str(r))
        self.assertTrue(r.err.endswith("\n"), str(r))
        for fragment in fragments:
            self.assertIn(fragment.lower(), lines[0].lower(), str(r))

    # --- an HTTP server and HEAD through inlets -------------------------------------

    async def http_server(self) -> int:
        """
        C{python -u -m http.server --bind 127.0.0.1 0}; its port (killed at
        cleanup).
        """
        process = spawn(self, [sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1", "0"])
        match = await process.wait_for(r"port (\d+)", seconds=15)
        port = int(match.group(1))
        self.assertNotEqual(port, 0)
        return port

    async def head_until_ok(self, port: int, seconds: float) -> str:
        """
        HEAD / through 127.0.0.1:PORT until it answers 200 (bounded polling:
        a route may take a moment to come back after a restart).
        """
        end = time.monotonic() + seconds
        seen = []
        while True:
            try:
                line = await http_head(port)
            except Exception as e:  # refused, reset, timed out: try again
                line = f"<{type(e).__name__}: {e}>"
            if line.startswith("HTTP/1.0 200 OK"):
                return line
            seen.append(line)
            if time.monotonic() > end:
                self.fail(f"HEAD via 127.0.0.1:{port}: no 200 OK within {seconds:g} s; got {seen[-5:]}")
            await deferLater(reactor, 0.2, lambda: None)
