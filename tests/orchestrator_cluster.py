"""
Helpers for the tests of several Orchestrator instances on one PostgreSQL
database (L{tests.pgserver}): instances in this process (L{ClusterTestCase})
or as processes (L{InstancesCLITestCase}), their HTTP API, member nodes embedded in the test,
an echo server and client for portals, and a range of loopback ports held
for the test.

Nothing here sleeps: waits poll with a bound (L{poll}) or wait for events.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import uuid
from typing import Callable, List, Optional

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from ockamtw import Node
from ockamtw.orchestrator.secrets import load_or_create_key
from ockamtw.orchestrator.service import ENROLL_CONTEXT, Orchestrator, Settings
from ockamtw.project.projectinfo import ProjectInfo
from ockamtw.secure.identity import LocalIdentity

from tests import pgserver
from tests.cli_harness import CLITestCase
from tests.helpers import deadline, spawn, twistd_argv


async def poll(predicate: Callable[[], object], seconds: float, what: str, every: float = 0.05):
    """
    Call C{predicate} (a value, a Deferred or a coroutine) until it gives
    something true, which is returned; fail after C{seconds}.
    """
    started = reactor.seconds()
    while True:
        value = predicate()
        if hasattr(value, "__await__"):
            value = await value
        if value:
            return value
        if reactor.seconds() - started > seconds:
            raise AssertionError(f"{what}: not within {seconds:g} s")
        await deferLater(reactor, every, lambda: None)


def held_range(testcase: TestCase, count: int, host: str = "127.0.0.1") -> tuple:
    """
    C{count} consecutive TCP ports on C{host}, held for the test by sockets
    bound to them (with SO_REUSEADDR, not listening): no other program is
    given them, while listeners of the test (Twisted's set SO_REUSEADDR)
    may listen on them.  Returns C{(first, last)}.
    """
    for _ in range(50):
        first = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        first.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        first.bind((host, 0))
        base = first.getsockname()[1]
        held = [first]
        try:
            for port in range(base + 1, base + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                held.append(s)
                s.bind((host, port))
        except OSError:
            for s in held:
                s.close()
            continue
        for s in held:
            testcase.addCleanup(s.close)
        return base, base + count - 1
    raise AssertionError(f"no {count} consecutive free ports")


# --- an echo server and a client for portals ---------------------------------------------------------


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class EchoServer(Factory):
    protocol = _Echo
    noisy = False


class Client(Protocol):
    """
    Collects what it reads; L{received} fires once C{n} bytes have come.
    """

    def __init__(self) -> None:
        self.data = b""
        self.lost: Deferred = Deferred()
        self._waiting: List[tuple] = []

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        for n, d in list(self._waiting):
            if len(self.data) >= n:
                self._waiting.remove((n, d))
                d.callback(self.data)

    def connectionLost(self, reason) -> None:
        for n, d in self._waiting:
            d.errback(AssertionError(f"connection closed with {len(self.data)} of {n} bytes"))
        self._waiting = []
        self.lost.callback(None)

    def received(self, n: int, seconds: float, what: str) -> Deferred:
        if len(self.data) >= n:
            return Deferred.fromCoroutine(_value(self.data))
        d: Deferred = Deferred()
        self._waiting.append((n, d))
        return deadline(d, seconds, what)


async def _value(v):
    return v


async def echo_server(testcase: TestCase) -> int:
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(EchoServer())
    testcase.addCleanup(port.stopListening)
    return port.getHost().port


async def echo_through(testcase: TestCase, port: int, token: bytes, seconds: float = 5.0) -> bytes:
    """
    A new connection to C{port} (an inlet), C{token} sent and echoed back.
    """
    client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5), Client())

    def close():
        if not client.lost.called:
            client.transport.abortConnection()
        return client.lost

    testcase.addCleanup(close)
    client.transport.write(token)
    try:
        data = await client.received(len(token), seconds, f"the echo of {token!r}")
    finally:
        client.transport.loseConnection()
    return data


class ApiRefusal(Exception):
    """
    An HTTP answer other than 200 (L{ClusterTestCase.api} with
    C{expect=None}).
    """


# --- instances in this process ---------------------------------------------------------------------------


class ClusterTestCase(TestCase):
    """
    Orchestrator instances in this process, each with its own data
    directory, sharing one database and one secrets key file; short lease
    times.
    """

    timeout = 60
    lease = 1.5
    tick = 0.25
    refresh = 0.2

    def setUp(self):
        self.db = pgserver.database(self)
        self.key_file = os.path.join(tempfile.mkdtemp(), "secrets.key")
        load_or_create_key(self.key_file)
        self.token: Optional[str] = None
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = treq.client.HTTPClient(treq.api.Agent(reactor, pool=pool))
        self.addCleanup(pool.closeCachedConnections)

    def settings(self, data: Optional[str] = None, **kw) -> Settings:
        kw.setdefault("http", "tcp:0:interface=127.0.0.1")
        kw.setdefault("project_ports", None)
        kw.setdefault("lease", self.lease)
        kw.setdefault("tick", self.tick)
        kw.setdefault("refresh", self.refresh)
        kw.setdefault("secrets_key_file", self.key_file)
        return Settings(data or tempfile.mkdtemp(), db=self.db, **kw)

    def instance(self, name: str, **kw) -> Orchestrator:
        """
        An instance, started (see L{started}) and stopped at cleanup.
        """
        o = Orchestrator(reactor, self.settings(**kw), instance_id=f"{name}-{uuid.uuid4().hex[:6]}")
        o.startService()

        def stop():
            if o.running:
                return o.stopService()

        self.addCleanup(stop)
        return o

    async def started(self, o: Orchestrator) -> Orchestrator:
        await deadline(o.ready, 20, f"instance {o.instance_id} started")
        path = os.path.join(o.settings.data, "admin.token")
        if os.path.exists(path):
            with open(path) as f:
                self.token = f.read().strip()
        return o

    async def start(self, name: str, **kw) -> Orchestrator:
        return await self.started(self.instance(name, **kw))

    async def crash(self, o: Orchestrator) -> None:
        """
        Stop C{o} as a crash would: nothing more from it, its leases kept
        (they run out).
        """
        o.give_up_leases = False
        await o.stopService()

    async def api(self, o: Orchestrator, method: str, path: str, body=None, expect=200, token=True):
        """
        One HTTP request to instance C{o}; its JSON answer.  The status must
        be C{expect}; with C{expect=None}, any status but 200 raises
        L{ApiRefusal} (with the error's message).
        """
        headers = {b"authorization": [f"Bearer {self.token}".encode()]} if token else {}
        data = json.dumps(body).encode() if body is not None else None
        response = await self.http.request(method, o.url + path, data=data, headers=headers)
        result = json.loads(await response.content())
        if expect is None:
            if response.code != 200:
                raise ApiRefusal(result["error"]["message"])
            return result
        self.assertEqual(response.code, expect, result)
        return result

    async def enroll(self, o: Orchestrator, identity: LocalIdentity, expect=200):
        challenge = (await self.api(o, "GET", "/v0/enroll/challenge"))["challenge"]
        signature = identity.sign(ENROLL_CONTEXT + bytes.fromhex(challenge))
        return await self.api(
            o, "POST", "/v0/enroll",
            {"identity": identity.export().hex(), "challenge": challenge, "signature": signature.hex()},
            expect=expect,
        )

    async def information(self, o: Orchestrator, project_id: str) -> ProjectInfo:
        info = await self.api(o, "GET", f"/v0/projects/{project_id}/information")
        return ProjectInfo.from_json(json.dumps(info, indent=2))

    async def six_projects(self):
        """
        Three instances A, B and C, and six projects made through them in
        turn (the enrollment's own project deleted), so that each serves
        two: C{(a, b, c, {project id: (instance made through, ProjectInfo)})}.
        """
        a, b, c = [await self.start(n) for n in "ABC"]
        self.admin = LocalIdentity.create()
        self.space = (await self.enroll(a, self.admin))["space"]["id"]
        await self.api(a, "DELETE", f"/v0/projects/{(await self.api(a, 'GET', '/v0/projects'))[0]['id']}")
        infos = {}
        for i, o in enumerate([a, b, c, a, b, c]):
            info = await self.project(o, f"p{i}")
            infos[info.id] = (o, info)
        return a, b, c, infos

    async def project(self, via: Orchestrator, name: Optional[str] = None) -> ProjectInfo:
        """
        Enroll an administrator (the first time) and make a project; its
        ProjectInfo.
        """
        if not hasattr(self, "admin"):
            self.admin = LocalIdentity.create()
            enrolled = await self.enroll(via, self.admin)
            if name is None:
                return await self.information(via, enrolled["project"]["id"])
            self.space = enrolled["space"]["id"]
        made = await self.api(via, "POST", f"/v0/spaces/{self.space}/projects", {"name": name})
        return await self.information(via, made["id"])

    def node(self, name: str, info: Optional[ProjectInfo] = None, identity=None) -> Node:
        node = Node(reactor, name=name, identity=identity)
        node.startService()
        self.addCleanup(node.stopService)
        if info is not None:
            node.add_project(info)
        return node

    def serving(self, instances, project_id: str) -> List[Orchestrator]:
        """
        The instances among C{instances} that serve C{project_id} now.
        """
        return [o for o in instances if o.running and project_id in o.runtimes]


# --- instances as processes --------------------------------------------------------------------------


class InstancesCLITestCase(CLITestCase):
    """
    Orchestrator instances as processes on one PostgreSQL database (a
    database of L{tests.pgserver} per test), sharing one secrets key file
    and one range of project ports (held for the test, L{held_range}):
    started with C{ockam orchestrator start} in an C{OCKAM_HOME} of their
    own (L{start_cli}) or with C{twistd -n ockam-orchestrator}
    (L{start_twistd}); short lease times.  The test's own C{OCKAM_HOME}
    (L{CLITestCase}) holds the nodes.
    """

    timeout = 180
    lease = 2.0
    tick = 0.5

    def setUp(self) -> None:
        CLITestCase.setUp(self)
        for key in ("OCKAMTW_ORCHESTRATOR_URL", "OCKAMTW_ORCHESTRATOR_TOKEN"):
            self.env.pop(key, None)
        self.db = pgserver.database(self)
        self.key_file = os.path.join(self.home, "secrets.key")
        load_or_create_key(self.key_file)
        self.ports = held_range(self, 8)
        self.token: Optional[str] = None
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = treq.client.HTTPClient(treq.api.Agent(reactor, pool=pool))
        self.addCleanup(pool.closeCachedConnections)

    def options(self) -> List[str]:
        return [
            "--http", "tcp:0:interface=127.0.0.1", "--db", self.db, "--secrets-key-file", self.key_file,
            "--project-ports", f"{self.ports[0]}-{self.ports[1]}", "--lease-ttl", str(self.lease),
            "--tick", str(self.tick), "--refresh", str(self.tick),
        ]

    def instance_home(self, name: str) -> str:
        home = os.path.join(self.home, name)
        os.makedirs(home, exist_ok=True)
        return home

    async def ockam_at(self, home: str, *args: str, **kw):
        """
        C{ockam ARGS} with C{OCKAM_HOME} set to C{home}.
        """
        saved = self.env
        self.env = dict(self.env, OCKAM_HOME=home)
        try:
            return await self.ockam(*args, **kw)
        finally:
            self.env = saved

    async def start_cli(self, name: str) -> dict:
        """
        C{ockam orchestrator start ... --output json} in the home C{name}
        (its data in C{NAME/orchestrator}); stopped at cleanup.  Its
        printed information (C{pid}, C{url}, C{data}).
        """
        home = self.instance_home(name)

        async def stop():
            await self.ockam_at(home, "orchestrator", "stop", check=False, timeout=30)

        self.addCleanup(stop)
        r = await self.ockam_at(home, "orchestrator", "start", *self.options(), "--output", "json", timeout=60)
        info = r.json()
        self.assertEqual(info["status"], "UP", str(r))
        self._read_token(info["data"])
        return info

    async def start_twistd(self, name: str) -> dict:
        """
        C{twistd -n ockam-orchestrator --data NAME ...} (killed at
        cleanup), once it serves: C{{"pid", "url", "data", "process"}}.
        """
        data = os.path.join(self.home, name)
        argv = twistd_argv() + ["-n", "--pidfile=", "ockam-orchestrator", "--data", data] + self.options()
        process = spawn(self, argv, cwd=self.instance_home(name + "-cwd"))
        match = await process.wait_for(r"orchestrator \S+ serving (http://[0-9.:]+)", seconds=60)
        self._read_token(data)
        return {"pid": process.transport.pid, "url": match.group(1), "data": data, "process": process}

    def _read_token(self, data: str) -> None:
        path = os.path.join(data, "admin.token")
        if self.token is None and os.path.exists(path):
            with open(path) as f:
                self.token = f.read().strip()

    async def api(self, url: str, method: str, path: str, body=None, expect=200):
        headers = {b"authorization": [f"Bearer {self.token}".encode()]}
        data = json.dumps(body).encode() if body is not None else None
        response = await self.http.request(method, url + path, data=data, headers=headers)
        result = json.loads(await response.content())
        self.assertEqual(response.code, expect, result)
        return result

    async def instances(self, url: str) -> dict:
        """
        C{GET /v0/instances} through C{url}, by instance id.
        """
        return {i["id"]: i for i in await self.api(url, "GET", "/v0/instances")}
