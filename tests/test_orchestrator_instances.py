"""
Several Orchestrator instances on one PostgreSQL database, in this process
(L{tests.orchestrator_cluster}): any instance answers any request, each
project is served by exactly one of them, a crashed instance's projects
move within a lease time and a tick, deletion reaches the serving instance,
a restarted database is survived.  The kill -9 failover of twistd
processes is in L{tests.test_orchestrator_failover}.
"""

from __future__ import annotations

import json
import os

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Protocol

from ockamtw import Route, decode_string, encode_string
from ockamtw.project import codec
from ockamtw.project.codec import OneTimeCode
from ockamtw.project.service import ApiError, call
from ockamtw.project.codec import Method
from ockamtw.secure.identity import LocalIdentity, import_identity
from ockamtw.status import UP

from tests import pgserver
from tests.helpers import async_test, deadline
from tests.orchestrator_cluster import ApiRefusal, ClusterTestCase, poll


async def refused(port: int) -> bool:
    """
    Whether a connection to C{port} on loopback is refused (nothing listens).
    """
    try:
        p = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=2), Protocol())
    except ConnectionRefusedError:
        return True
    p.transport.abortConnection()
    return False


class SharedTests(ClusterTestCase):
    @async_test
    async def test_two_instances_one_database(self):
        """
        A project made through A is listed, shown and described alike by B;
        exactly one instance serves it; members, tickets and relays written
        through one are read through the other; a ticket made through B is
        redeemed at the project's authority (served by A).
        """
        a = await self.start("A")
        b = await self.start("B")
        admin = LocalIdentity.create()
        enrolled = await self.enroll(a, admin)
        project_id = enrolled["project"]["id"]
        self.assertEqual([p["id"] for p in await self.api(b, "GET", "/v0/projects")], [project_id])
        shown = [await self.api(o, "GET", f"/v0/projects/{project_id}") for o in (a, b)]
        self.assertEqual(shown[0], shown[1])
        self.assertEqual(shown[0]["served_by"], a.instance_id)
        self.assertEqual(self.serving([a, b], project_id), [a])
        info_a = await self.information(a, project_id)
        self.assertEqual((await self.information(b, project_id)).to_json(), info_a.to_json())
        instances = await self.api(b, "GET", "/v0/instances")
        self.assertEqual(
            sorted((i["id"], i["alive"], i["projects"]) for i in instances),
            sorted([(a.instance_id, True, 1), (b.instance_id, True, 0)]),
        )

        # A member added through B; a ticket made through B, redeemed at A.
        member = LocalIdentity.create()
        await self.api(b, "POST", f"/v0/projects/{project_id}/members", {"identifier": member.identifier,
                                                                           "attributes": {"role": "x"}})
        listed = await self.api(a, "GET", f"/v0/projects/{project_id}/members")
        self.assertIn(member.identifier, [m["identifier"] for m in listed])
        ticket = await self.api(b, "POST", f"/v0/projects/{project_id}/tickets",
                                {"attributes": {"role": "member"}, "relay": "r1"})
        decoded = json.loads(bytes.fromhex(ticket["ticket"]))
        self.assertEqual(decoded["project"]["access_route"], info_a.access_route)
        newcomer = self.node("newcomer")
        authority = import_identity(bytes.fromhex(info_a.authority_identity))
        enc = await deadline(
            newcomer.create_secure_channel(info_a.authority_access_route, authorized=[authority.identifier],
                                           timeout=5), 6, "a channel to the authority",
        )
        code = OneTimeCode(bytes.fromhex(ticket["one_time_code"]))
        await call(newcomer, Route([enc, codec.ENROLLMENT_TOKEN_ACCEPTOR]), Method.POST, "/", code)
        listed = await self.api(b, "GET", f"/v0/projects/{project_id}/members")
        entry = [m for m in listed if m["identifier"] == newcomer.identity.identifier]
        self.assertEqual(entry[0]["attributes"]["ockam-relay"], "r1")
        with self.assertRaises(ApiError):
            await call(newcomer, Route([enc, codec.ENROLLMENT_TOKEN_ACCEPTOR]), Method.POST, "/", code, timeout=5)

    @async_test
    async def test_first_start_together(self):
        """
        Three instances started at once on an empty database: the schema
        is made once, each comes up, one administrator's token is made
        (in one data directory) and works on every instance.
        """
        instances = [self.instance(name) for name in "ABC"]
        await gatherResults([deadline(o.ready, 20, "started") for o in instances])
        tokens = [o for o in instances if os.path.exists(os.path.join(o.settings.data, "admin.token"))]
        self.assertEqual(len(tokens), 1)
        await self.started(tokens[0])
        rows = await instances[0].store.query("SELECT version FROM schema_version")
        self.assertEqual(len(rows), 1)
        for o in instances:
            self.assertEqual(await self.api(o, "GET", "/v0/projects"), [])
        self.assertEqual(len(await instances[1].store.query("SELECT token_hash FROM tokens")), 1)

    @async_test
    async def test_redeemed_at_once_through_two_instances(self):
        """
        The administrator's token, enrolled with two identities at once
        through two instances: exactly one identity wins.  A one-time code
        of one use, redeemed at once by two nodes: exactly one becomes a
        member.
        """
        a = await self.start("A")
        b = await self.start("B")
        one, two = LocalIdentity.create(), LocalIdentity.create()
        results = await gatherResults([
            Deferred.fromCoroutine(self.enroll(a, one, expect=None)).addErrback(lambda f: f.trap(ApiRefusal) and f.value),
            Deferred.fromCoroutine(self.enroll(b, two, expect=None)).addErrback(lambda f: f.trap(ApiRefusal) and f.value),
        ])
        refusals = [r for r in results if isinstance(r, ApiRefusal)]
        self.assertEqual(len(refusals), 1, results)
        self.assertIn("this token was used to enroll another identity", str(refusals[0]))
        winner = two if isinstance(results[0], ApiRefusal) else one
        rows = await a.store.query("SELECT identifier FROM tokens")
        self.assertEqual(rows, [(winner.identifier,)])

        projects = await self.api(a, "GET", "/v0/projects")
        info = await self.information(b, projects[0]["id"])
        ticket = await self.api(b, "POST", f"/v0/projects/{info.id}/tickets", {"usage_count": 1})
        code = OneTimeCode(bytes.fromhex(ticket["one_time_code"]))
        authority = import_identity(bytes.fromhex(info.authority_identity))

        async def redeem(name):
            node = self.node(name)
            enc = await deadline(node.create_secure_channel(info.authority_access_route,
                                                            authorized=[authority.identifier], timeout=5), 6, name)
            try:
                await call(node, Route([enc, codec.ENROLLMENT_TOKEN_ACCEPTOR]), Method.POST, "/", code, timeout=5)
                return node.identity.identifier
            except ApiError:
                return None

        redeemed = await gatherResults([Deferred.fromCoroutine(redeem("x")), Deferred.fromCoroutine(redeem("y"))])
        self.assertEqual(len([r for r in redeemed if r]), 1, redeemed)
        members = await self.api(a, "GET", f"/v0/projects/{info.id}/members")
        self.assertEqual([m["identifier"] for m in members], [r for r in redeemed if r])



class ServingTests(ClusterTestCase):
    @async_test
    async def test_three_instances_crash_and_takeover(self):
        """
        Six projects made through three instances (two each, served where
        made); B crashes: A and C take B's projects within a lease time
        and a tick, each with the same identity and access route; at no
        moment does a project have two servers; B's successor takes none
        while the leases are held.
        """
        a, b, c, infos = await self.six_projects()
        for project_id, (o, _) in infos.items():
            self.assertEqual(self.serving([a, b, c], project_id), [o])
        b_projects = [p for p, (o, _) in infos.items() if o is b]
        routes = {p: info.to_json() for p, (_, info) in infos.items()}

        def once_each():
            for project_id in infos:
                self.assertLessEqual(len(self.serving([a, b, c], project_id)), 1, project_id)
            return all(len(self.serving([a, c], p)) == 1 for p in b_projects)

        crashed = reactor.seconds()
        await self.crash(b)
        await poll(once_each, self.lease + 3 * self.tick + 1.0, "B's projects served again", every=0.02)
        took = reactor.seconds() - crashed
        self.assertLess(took, self.lease + self.tick + 0.5)
        for project_id in infos:
            self.assertEqual((await self.information(a, project_id)).to_json(), routes[project_id])
            self.assertEqual(len(self.serving([a, c], project_id)), 1)
        # B again (a new instance): it takes nothing from A and C.
        b2 = await self.start("B2")
        await poll(lambda: b2.leases.turns >= 3, 5, "three turns of B2")
        self.assertEqual(b2.runtimes, {})
        held = await self.api(b2, "GET", "/v0/instances")
        self.assertEqual({i["id"]: i["projects"] for i in held if i["alive"]},
                         {a.instance_id: len(a.runtimes), c.instance_id: len(c.runtimes), b2.instance_id: 0})

    @async_test
    async def test_delete_through_another_instance(self):
        """
        A project served by A, deleted through B: A stops it within a tick
        (its ports close) and the project is gone.
        """
        a = await self.start("A")
        b = await self.start("B")
        info = await self.project(a)
        port = int(info.access_route.split("/")[4])
        self.assertFalse(await refused(port))
        answer = await self.api(b, "DELETE", f"/v0/projects/{info.id}")
        self.assertEqual(answer["project"]["state"], "deleting")
        deleted = reactor.seconds()
        await poll(lambda: info.id not in a.runtimes, 3 * self.tick + 1.0, "A stopped the project")
        self.assertLess(reactor.seconds() - deleted, 2 * self.tick + 0.5)
        self.assertTrue(await refused(port))
        await poll(lambda: Deferred.fromCoroutine(self.api(b, "GET", "/v0/projects")).addCallback(lambda ps: ps == []),
                   3, "the project gone")
        self.assertEqual(await b.store.query("SELECT COUNT(*) FROM project_owner"), [(0,)])


class StopTests(ClusterTestCase):
    """
    An instance that stops (SIGTERM, C{ockam orchestrator stop}, an
    upgrade): a lease time much longer than a tick, so that a project moved
    at the others' next turn is told apart from one moved when the lease
    would have run out.
    """

    lease = 6.0
    tick = 0.25

    @async_test
    async def test_stopped_instance_projects_move_at_the_next_tick(self):
        """
        Six projects served two by each of three instances; B stops: A and
        C serve B's projects within a couple of ticks (B gave its leases
        up and is no longer counted among the live instances, so the
        others' fair share takes them), not when its lease would have run
        out; B is no longer listed as alive.
        """
        a, b, c, infos = await self.six_projects()
        b_projects = [p for p, (o, _) in infos.items() if o is b]
        self.assertEqual(sorted(b.runtimes), sorted(b_projects))
        stopped = reactor.seconds()
        await b.stopService()
        await poll(lambda: all(len(self.serving([a, c], p)) == 1 for p in b_projects), self.lease + 2,
                   "B's projects served again")
        took = reactor.seconds() - stopped
        self.assertLess(took, self.lease / 3, f"B's projects moved after {took:.2f} s")
        alive = {i["id"] for i in await self.api(a, "GET", "/v0/instances") if i["alive"]}
        self.assertEqual(alive, {a.instance_id, c.instance_id})


class DatabaseRestartTests(ClusterTestCase):
    lease = 2.0
    tick = 0.25

    @async_test
    async def test_database_restart_and_outage(self):
        """
        The database restarts: HTTP through either instance answers at the
        first call, the relay stays.  Then it stays away for longer than a
        lease: the instance stops serving before its lease runs out
        (nothing answers on the project's port), HTTP says 503 in one line;
        once it is back, the project is served again and the relay at it
        comes back, with the same name.
        """
        a = await self.start("A")
        b = await self.start("B")
        admin = LocalIdentity.create()
        project_id = (await self.enroll(a, admin))["project"]["id"]
        info = await self.information(a, project_id)
        port = int(info.access_route.split("/")[4])
        n3 = self.node("n3", info, identity=admin)
        n1 = self.node("n1", info, identity=admin)
        n3.membership.medic.interval = 0.2
        relay = await deadline(
            n3.create_relay("/project/default", name="n3", service=codec.STATIC_FORWARDING_SERVICE, refresh=0.3,
                            timeout=0.5), 10, "the relay",
        )
        relay.retry_policy = lambda attempt: 0.1

        async def hello(text):
            reply = await deadline(
                n1.request("/project/default/service/forward_to_n3/service/uppercase", encode_string(text), timeout=3),
                4, text,
            )
            return decode_string(reply.payload)

        self.assertEqual(await hello("before"), "BEFORE")
        server = pgserver.server()
        await server.stop_in_thread()
        await server.start_in_thread()
        for o in (a, b, a, b):
            self.assertEqual(len(await self.api(o, "GET", "/v0/projects")), 1)
        self.assertEqual(await hello("after a restart"), "AFTER A RESTART")

        # A longer outage.
        await server.stop_in_thread()
        try:
            stopped = reactor.seconds()
            await poll(lambda: project_id not in a.runtimes, self.lease + 1, "A stopped serving")
            self.assertLess(reactor.seconds() - stopped, self.lease)
            self.assertTrue(await refused(port))
            answer = await self.api(b, "GET", "/v0/projects", expect=503)
            self.assertEqual(answer["error"]["code"], "database_unavailable")
            self.assertNotIn("\n", answer["error"]["message"])
            health = await self.api(a, "GET", "/v0/health", token=False)
            self.assertEqual(health["database"], "unreachable")
        finally:
            await server.start_in_thread()
        await poll(lambda: self.serving([a, b], project_id), self.lease + 2, "the project served again")
        self.assertEqual(len(self.serving([a, b], project_id)), 1)
        await poll(lambda: relay.status == UP, 10, "the relay back")
        self.assertEqual(await hello("back"), "BACK")
