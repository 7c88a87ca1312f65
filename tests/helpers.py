"""
Shared helpers for every test module: async test methods and deadlines,
waiting for a condition (L{wait_until}), log events (L{LogWatch},
L{captureLogs}), nodes on loopback port 0 with their cleanups, a raw frame
client that uses no ockamtw code, hand-written BARE encoders, and a process
protocol for node subprocesses.

The harness of one kind of test builds on these: L{tests.portal_harness}
(portals, targets, clients, raw peers), L{tests.secure_harness} (secure
channels), L{tests.memory_harness} (nodes on a fake reactor),
L{tests.cli_harness} (the command line), L{tests.vectors} (the vector files)
and L{tests.strategies} (Hypothesis strategies).

Nothing here sleeps: every wait is a Deferred fired by an event, bounded by
a deadline (L{deadline}), or a condition checked until one.
"""

from __future__ import annotations

import functools
import json
import os
import re
import socket
import sys
from typing import Callable, List, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, TimeoutError as DeferredTimeout, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.logger import formatEvent, globalLogPublisher

from ockamtw.errors import WireError

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)


# --- async test methods ------------------------------------------------------


def async_test(f):
    """
    Run an C{async def} test method as a Deferred (works on every Twisted
    trial, whether or not it understands coroutines itself).
    """

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        return Deferred.fromCoroutine(f(*args, **kwargs))

    return wrapper


def deadline(d: Deferred, seconds: float, what: str) -> Deferred:
    """
    Bound C{d} in time: after C{seconds} it fails with an C{AssertionError}
    saying what did not happen.  Not a sleep: C{d} is still an event.
    """

    def translate(f):
        if f.check(DeferredTimeout):
            raise AssertionError(f"{what}: not within {seconds:g} s")
        return f

    d.addTimeout(seconds, reactor)
    d.addErrback(translate)
    return d


# --- waiting ------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], seconds: float, what: str, interval: float = 0.01) -> Deferred:
    """
    Fires once C{predicate()} is true (checked now and every C{interval}
    seconds on the global reactor); fails with an C{AssertionError} after
    C{seconds}.
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
    """
    A new Deferred, appended to C{waiters} (fired by L{fire_all}).
    """
    d: Deferred = Deferred()
    waiters.append(d)
    return d


def fire_all(waiters: list, result=None) -> None:
    """
    Fire (with C{result}) and forget every Deferred of C{waiters} that has
    not fired yet (a deadline may have cancelled one).
    """
    while waiters:
        d = waiters.pop(0)
        if not d.called:
            d.callback(result)


def fresh_from(d: Deferred) -> Deferred:
    """
    A new Deferred that fires (with C{None}) when C{d} has, so that a
    deadline on it does not cancel C{d}.
    """
    out: Deferred = Deferred()

    def fire(result):
        if not out.called:
            out.callback(None)
        return result

    d.addBoth(fire)
    return out


# --- log events -----------------------------------------------------------------


def log_text(event) -> str:
    """
    An event's text as a log file shows it (C{""} when it cannot be
    formatted).
    """
    try:
        return formatEvent(event)
    except Exception:
        return ""


class LogWatch:
    """
    Collects, in C{events}, the log events (of the global log publisher)
    for which C{match(event)} is true, from now until the test's cleanup;
    C{when(n)} fires once C{n} have been seen.  A C{match} that raises
    counts as false.
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

    def texts(self) -> List[str]:
        """
        The events seen so far, as text (L{log_text}).
        """
        return [log_text(e) for e in self.events]

    def when(self, n: int, seconds: Optional[float] = None, what: str = "log events") -> Deferred:
        """
        Fires with the first C{n} events once they have been seen; fails
        after C{seconds} (never, when C{None}).
        """
        if len(self.events) >= n:
            return succeed(self.events[:n])
        d: Deferred = Deferred()
        self._waiting.append((n, d))
        return d if seconds is None else deadline(d, seconds, what)


def captureLogs(testcase, *namespaces: str) -> List[dict]:
    """
    The log events of C{namespaces}, collected for the rest of the test
    (a list that grows as they come).
    """
    return LogWatch(testcase, lambda e: e.get("log_namespace") in namespaces).events


def log_watch(testcase, *needles: str) -> LogWatch:
    """
    A L{LogWatch} of the events whose text contains every one of C{needles}.
    """
    return LogWatch(testcase, lambda e: all(n in log_text(e) for n in needles))


def first_log_event(testcase, predicate: Callable[[dict], bool]) -> Deferred:
    """
    A Deferred that fires with the first log event (from now on) for which
    C{predicate(event)} is true.
    """
    return LogWatch(testcase, predicate).when(1).addCallback(lambda events: events[0])


def ipv6_loopback_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        return False
    try:
        s.bind(("::1", 0))
        return True
    except OSError:
        return False
    finally:
        s.close()


def held_port(testcase, host: str = "127.0.0.1") -> int:
    """
    A TCP port on C{host} that refuses connections and that no other
    program can take while the test runs: a socket bound to it (with
    SO_REUSEADDR) that does not listen, closed at cleanup.

    Use it instead of closing a port and reusing its number (another
    program may be given that number meanwhile): connecting to it is
    refused; the test's own listeners (Twisted's set SO_REUSEADDR, as do
    the nodes') may still listen on it and stop again, while a program
    that binds port 0 is never given it (for an automatic port, Linux does
    not share one that a socket is bound to).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, 0))
    except OSError:
        s.close()
        raise
    testcase.addCleanup(s.close)
    return s.getsockname()[1]


# --- assertions -------------------------------------------------------------------


def assert_wire_error(testcase, fn, *args, context=""):
    """
    Assert that C{fn(*args)} raises L{ockamtw.errors.WireError} (and nothing else).
    """
    try:
        result = fn(*args)
    except WireError as e:
        return e
    except Exception as e:  # noqa: BLE001 - the point is to catch the wrong kind
        testcase.fail(f"{context}: expected WireError, got {type(e).__name__}: {e!r}")
    testcase.fail(f"{context}: expected WireError, got a result: {result!r}")


# --- hand-written BARE, independent of ockamtw.wire ------------------------


def uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def h_address(text: str) -> bytes:
    """
    C{"0#echo"} or C{"1#127.0.0.1:4000"} (bare text is type 0) as BARE.
    """
    if "#" in text:
        t, value = text.split("#", 1)
        t = int(t)
    else:
        t, value = 0, text
    raw = value.encode("utf-8")
    return bytes((t,)) + uvarint(len(raw)) + raw


def h_route(*addresses: str) -> bytes:
    return uvarint(len(addresses)) + b"".join(h_address(a) for a in addresses)


def h_message(onward, return_route, payload: bytes) -> bytes:
    """
    A TransportMessage, version 1, from address texts and raw payload bytes.
    """
    return b"\x01" + h_route(*onward) + h_route(*return_route) + uvarint(len(payload)) + payload


def h_frame(body: bytes) -> bytes:
    assert len(body) <= 0xFFFF, len(body)
    return len(body).to_bytes(2, "big") + body


def msg_frame(onward, return_route, payload: bytes) -> bytes:
    """
    A whole frame (length included) of a TransportMessage, from address
    texts and raw payload bytes.
    """
    return h_frame(h_message(onward, return_route, payload))


def h_string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return uvarint(len(raw)) + raw


# --- nodes --------------------------------------------------------------------


async def start_node(testcase, name: str, listen: Optional[str] = None):
    """
    A started L{ockamtw.Node}, stopped at cleanup; with C{listen}, also its
    listener.  Returns C{(node, listener_or_None)}.
    """
    from ockamtw import Node

    node = Node(reactor, name=name)
    node.startService()
    testcase.addCleanup(node.stopService)
    listener = None
    if listen is not None:
        listener = await node.tcp.listen(listen)
    return node, listener


def accepted_connection(node, client_local_address: str):
    """
    The node's accepted connection whose peer is C{client_local_address}
    (C{host:port} as the client sees its own end).
    """
    for c in node.tcp.connections:
        if c.socket_address == client_local_address:
            return c
    raise AssertionError(
        f"{node!r} has no connection from {client_local_address}: "
        f"{[c.socket_address for c in node.tcp.connections]}"
    )


def outbound_buffered(transport) -> int:
    """
    Bytes a Twisted socket transport holds for writing and has not yet
    handed to the kernel (see twisted.internet.abstract.FileDescriptor:
    C{dataBuffer[offset:]} plus the pending C{_tempDataBuffer}, whose total
    length is C{_tempDataLen}).
    """
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


# --- a raw frame client: plain Twisted, no ockamtw code ------------------------


class RawFrameClient(Protocol):
    """
    Splits what it reads into 2-byte-length frames (each kept whole, length
    included, as C{bytes}).  C{frames_arrived(n)} fires once C{n} frames
    have arrived in total (with the first C{n}); C{when_frames(predicate)}
    once C{predicate(frames)} holds (with all of them); C{lost} fires when
    the connection closes.
    """

    def __init__(self) -> None:
        self.buffer = b""
        self.frames: List[bytes] = []
        self.lost: Deferred = Deferred()
        self.connected_now = False
        self._waiters: List[tuple] = []

    def connectionMade(self) -> None:
        self.connected_now = True

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 2:
            n = int.from_bytes(self.buffer[:2], "big")
            if len(self.buffer) < 2 + n:
                break
            self.frames.append(self.buffer[: 2 + n])
            self.buffer = self.buffer[2 + n :]
        self._check()

    def _check(self) -> None:
        waiting, self._waiters = self._waiters, []
        for predicate, result, d in waiting:
            if d.called:  # cancelled by a deadline
                continue
            if predicate(self.frames):
                d.callback(result(self.frames))
            else:
                self._waiters.append((predicate, result, d))

    def when_frames(self, predicate, result=list) -> Deferred:
        d: Deferred = Deferred()
        self._waiters.append((predicate, result, d))
        self._check()
        return d

    def frames_arrived(self, n: int) -> Deferred:
        return self.when_frames(lambda fs: len(fs) >= n, lambda fs: fs[:n])

    def connectionLost(self, reason) -> None:
        self.connected_now = False
        waiting, self._waiters = self._waiters, []
        for _, _, d in waiting:
            if not d.called:
                d.errback(AssertionError(f"connection lost with {len(self.frames)} frames"))
        self.lost.callback(None)


async def connect_raw(testcase, port: int, protocol: Protocol, host: str = "127.0.0.1") -> Protocol:
    """
    Connect C{protocol} to C{host:port} with a plain Twisted endpoint; the
    connection is aborted (and its end awaited) at cleanup.
    """
    cls = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
    proto = await connectProtocol(cls(reactor, host, port, timeout=5), protocol)

    def close():
        if not proto.lost.called:
            proto.transport.abortConnection()
        return proto.lost

    testcase.addCleanup(close)
    return proto


# --- node subprocesses ------------------------------------------------------------


def script_argv(name: str, fallback: List[str]) -> List[str]:
    """
    The console script C{name} next to C{sys.executable}, run by that
    interpreter; C{fallback} (arguments after the interpreter) otherwise.
    """
    path = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.exists(path):
        return [sys.executable, path]
    return [sys.executable] + fallback


def twistd_argv() -> List[str]:
    return script_argv("twistd", ["-c", "from twisted.scripts.twistd import run; run()"])


def ockamtw_node_argv() -> List[str]:
    return script_argv("ockamtw-node", ["-m", "ockamtw"])


def ockamtw_orchestrator_argv() -> List[str]:
    return script_argv("ockamtw-orchestrator", ["-m", "ockamtw.orchestrator"])


def stub_call(testcase, stub, method: str, url: str, body=None):
    """
    C{(status, JSON body)} of a request through C{stub} (a L{StubTreq} of
    a resource that answers at once), its body given as JSON.
    """
    d = stub.request(method, url, data=json.dumps(body).encode() if body else None)
    stub.flush()
    response = testcase.successResultOf(d)
    content = stub.content(response)
    stub.flush()
    return response.code, json.loads(testcase.successResultOf(content))


def subprocess_env() -> dict:
    """
    The environment for a node subprocess: this checkout first on the path
    (an editable install does not put C{twisted/plugins/} of the checkout on
    C{twisted.plugins.__path__}), unbuffered output.
    """
    env = dict(os.environ)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + old if old else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class NodeProcess(ProcessProtocol):
    """
    Collects a subprocess's output; C{wait_for(regex)} fires with the first
    match in its combined output, C{ended} with C{(exit_code, signal)}.
    """

    def __init__(self) -> None:
        self.stdout = b""
        self.stderr = b""
        self.output = b""
        self.ended: Deferred = Deferred()
        self.exit = None
        self._waiters: List[tuple] = []

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    def outReceived(self, data: bytes) -> None:
        self.stdout += data
        self._got(data)

    def errReceived(self, data: bytes) -> None:
        self.stderr += data
        self._got(data)

    def _got(self, data: bytes) -> None:
        self.output += data
        waiting, self._waiters = self._waiters, []
        for pattern, d in waiting:
            m = pattern.search(self.text)
            if m is not None:
                d.callback(m)
            else:
                self._waiters.append((pattern, d))

    def wait_for(self, regex: str, seconds: float = 15) -> Deferred:
        pattern = re.compile(regex)
        m = pattern.search(self.text)
        if m is not None:
            return succeed(m)
        if self.exit is not None:
            raise AssertionError(f"process ended {self.exit} before {regex!r}; output:\n{self.text}")
        d: Deferred = Deferred()
        self._waiters.append((pattern, d))

        def explain(f):
            raise AssertionError(f"{f.getErrorMessage()}; output so far:\n{self.text}")

        return deadline(d, seconds, f"output matching {regex!r}").addErrback(explain)

    def processEnded(self, reason) -> None:
        v = reason.value
        if isinstance(v, ProcessDone):
            self.exit = (0, None)
        elif isinstance(v, ProcessTerminated):
            self.exit = (v.exitCode, v.signal)
        else:
            self.exit = (None, None)
        waiting, self._waiters = self._waiters, []
        for pattern, d in waiting:
            d.errback(
                AssertionError(f"process ended {self.exit} before {pattern.pattern!r}; output:\n{self.text}")
            )
        self.ended.callback(self.exit)

    def wait_ended(self, seconds: float = 15) -> Deferred:
        d: Deferred = Deferred()

        def done(result):
            if not d.called:
                d.callback(result)
            return result

        if self.exit is not None:
            return succeed(self.exit)
        self.ended.addBoth(done)
        return deadline(d, seconds, "process exit")


def spawn(testcase, argv: List[str], cwd: Optional[str] = None, env: Optional[dict] = None) -> NodeProcess:
    """
    Start C{argv} (with L{subprocess_env} updated by C{env}); at cleanup
    the process is killed (if still running) and reaped.
    """
    proto = NodeProcess()
    if cwd is None:
        cwd = testcase.mktemp()
        os.makedirs(cwd)
    environment = subprocess_env()
    environment.update(env or {})
    transport = reactor.spawnProcess(proto, argv[0], argv, env=environment, path=cwd)

    def cleanup():
        if proto.exit is None:
            try:
                transport.signalProcess("KILL")
            except Exception:
                pass
        return proto.ended

    testcase.addCleanup(cleanup)
    return proto
