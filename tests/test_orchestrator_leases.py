"""
The lease loop (L{ockamtw.orchestrator.leases.Leases}) on a
L{twisted.internet.task.Clock}, over a database in memory that keeps the
leases as the store does (one clock for the instances and the database):
fair shares, the stop before a lease can run out when the database is
away, the extra turn when another instance's lease runs out before the
next tick, and deletions.  (On a real PostgreSQL database with instances
in this process and as processes: L{tests.test_orchestrator_instances},
L{tests.test_orchestrator_failover}.)
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Set, Tuple

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from ockamtw.orchestrator.leases import WAKE_AFTER, Leases
from ockamtw.orchestrator.store import LeaseRow, LeaseView, StoreUnavailable


class Database:
    """
    Projects, leases and instances, as L{ockamtw.orchestrator.store.Store}
    keeps them, on C{clock}.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.projects: Dict[str, str] = {}  # id -> state
        self.owners: Dict[str, Tuple[str, float]] = {}  # id -> (owner, lease_until)
        self.seen: Dict[str, float] = {}
        self.down = False
        #: called with the projects an instance claims, before its claim
        #: (another instance claiming at the same moment)
        self.before_claim = None

    def hold(self, project_id: str, owner: str, until: float) -> None:
        self.owners[project_id] = (owner, until)


class FakeStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def _check(self) -> Optional[Deferred]:
        if self.db.down:
            return fail(StoreUnavailable("the database is unreachable: down"))
        return None

    def lease_tick(self, instance_id, url, host, ttl) -> Deferred:
        db = self.db
        now = db.clock.seconds()
        failed = self._check()
        if failed:
            return failed
        db.seen[instance_id] = now
        renewed = set()
        for project_id, (owner, until) in list(db.owners.items()):
            if owner == instance_id and until >= now and db.projects.get(project_id) == "ready":
                db.owners[project_id] = (owner, now + ttl)
                renewed.add(project_id)
        rows = [LeaseRow(p, state, *(db.owners.get(p) or (None, None))) for p, state in sorted(db.projects.items())]
        live = sum(1 for seen in db.seen.values() if seen >= now - ttl)
        return succeed(LeaseView(now, renewed, rows, live))

    def claim(self, instance_id, project_ids, ttl) -> Deferred:
        db = self.db
        failed = self._check()
        if failed:
            return failed
        now = db.clock.seconds()
        if db.before_claim is not None:
            db.before_claim(project_ids)
        won = set()
        for project_id in project_ids:
            held = db.owners.get(project_id)
            if db.projects.get(project_id) == "ready" and (held is None or held[1] < now or held[0] == instance_id):
                db.owners[project_id] = (instance_id, now + ttl)
                won.add(project_id)
        return succeed(won)

    def release(self, instance_id, project_ids=None) -> Deferred:
        for project_id, (owner, _) in list(self.db.owners.items()):
            if owner == instance_id and (project_ids is None or project_id in project_ids):
                del self.db.owners[project_id]
        return succeed(None)

    def delete_project(self, project_id) -> Deferred:
        self.db.projects.pop(project_id, None)
        self.db.owners.pop(project_id, None)
        return succeed(1)


class Settings:
    advertise_host = "127.0.0.1"


class FakeOrchestrator:
    """
    What L{Leases} calls: serving starts and stops at once (the times of
    each are recorded).
    """

    def __init__(self, instance_id: str, db: Database) -> None:
        self.instance_id = instance_id
        self.store = FakeStore(db)
        self.settings = Settings()
        self.url = f"http://{instance_id}"
        self.runtimes: Dict[str, object] = {}
        self.starting: Set[str] = set()
        self.clock = db.clock
        self.events: List[Tuple[float, str, str]] = []

    async def serve_by_id(self, project_id: str) -> None:
        self.runtimes[project_id] = object()
        self.events.append((self.clock.seconds(), "serve", project_id))

    async def unserve(self, project_id: str, why: str) -> None:
        if self.runtimes.pop(project_id, None) is not None:
            self.events.append((self.clock.seconds(), "stop", project_id))
            self.leases.forget(project_id)


class LeaseTests(SynchronousTestCase):
    ttl = 3.0
    tick = 1.0

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.db = Database(self.clock)

    def instance(self, name: str) -> FakeOrchestrator:
        o = FakeOrchestrator(name, self.db)
        o.leases = Leases(o, self.clock, ttl=self.ttl, tick=self.tick)
        o.leases.startService()
        self.addCleanup(o.leases.stopService)
        return o

    def test_fair_share(self):
        """
        With another live instance, an instance claims half the free
        projects (rounded up) and serves them; a project stays where it is.
        """
        for n in range(5):
            self.db.projects[f"p{n}"] = "ready"
        self.db.seen["B"] = self.clock.seconds()
        a = self.instance("A")
        self.assertEqual(len(a.runtimes), math.ceil(5 / 2))
        self.assertEqual({p for p, (o, _) in self.db.owners.items() if o == "A"}, set(a.runtimes))
        b = self.instance("B")
        self.assertEqual(len(b.runtimes), 2)
        self.assertFalse(set(a.runtimes) & set(b.runtimes))
        self.clock.advance(self.tick)
        self.assertEqual((len(a.runtimes), len(b.runtimes)), (3, 2))

    def test_claims_again_when_others_claim_at_once(self):
        """
        Another instance claims the same projects at the same moment and
        wins some: the instance claims others in the same turn, up to its
        share.
        """
        for n in range(8):
            self.db.projects[f"p{n}"] = "ready"
        self.db.seen["B"] = self.clock.seconds()
        stolen = []

        def b_claims(project_ids):
            if not stolen:
                for project_id in sorted(project_ids)[:3]:
                    self.db.hold(project_id, "B", self.clock.seconds() + self.ttl)
                    stolen.append(project_id)

        self.db.before_claim = b_claims
        a = self.instance("A")
        self.assertEqual(len(stolen), 3)
        self.assertEqual(len(a.runtimes), 4)
        self.assertFalse(set(stolen) & set(a.runtimes))

    def test_stops_before_its_lease_runs_out(self):
        """
        The database goes away: the project stops by the local deadline
        (its last renewal's sending time, plus the lease, less a margin),
        before its lease runs out in the database; it is served again once
        the database is back.
        """
        self.db.projects["p"] = "ready"
        a = self.instance("A")
        self.clock.advance(self.tick)  # a renewal
        renewed_until = self.db.owners["p"][1]
        self.db.down = True
        while "p" in a.runtimes:
            self.clock.advance(0.05)
            self.assertLess(self.clock.seconds(), renewed_until, "still served when the lease ran out")
        stopped = a.events[-1]
        self.assertEqual(stopped[1:], ("stop", "p"))
        self.assertLessEqual(stopped[0], renewed_until - a.leases.margin + 0.05)  # the clock's steps
        self.assertFalse(a.leases.healthy)
        self.db.down = False
        self.clock.advance(self.tick)
        self.assertIn("p", a.runtimes)

    def test_extra_turn_when_a_lease_runs_out(self):
        """
        A lease held by another instance, running out before the next tick
        (its owner stopped renewing): the project is claimed just after
        it runs out, not at the next tick.
        """
        self.db.projects["p"] = "ready"
        self.db.hold("p", "B", self.clock.seconds() + 0.3)
        start = self.clock.seconds()
        a = self.instance("A")
        self.assertEqual(a.runtimes, {})
        self.clock.advance(0.3)
        self.assertEqual(a.runtimes, {})
        self.clock.advance(WAKE_AFTER)
        self.assertIn("p", a.runtimes)
        self.assertAlmostEqual(a.events[0][0] - start, 0.3 + WAKE_AFTER)

    def test_no_extra_turn_for_a_live_owner(self):
        """
        A lease just renewed by its owner (running out after the next
        tick): no extra turn.
        """
        self.db.projects["p"] = "ready"
        self.db.hold("p", "B", self.clock.seconds() + self.ttl)
        a = self.instance("A")
        self.assertIsNone(a.leases._wake)
        self.assertEqual(a.runtimes, {})

    def test_deleted_through_another_instance(self):
        """
        A project marked for deletion (through another instance) is stopped
        by the instance serving it at its next turn, and removed.
        """
        self.db.projects["p"] = "ready"
        a = self.instance("A")
        self.assertIn("p", a.runtimes)
        self.db.projects["p"] = "deleting"
        self.clock.advance(self.tick)
        self.assertEqual(a.runtimes, {})
        self.assertNotIn("p", self.db.projects)
        self.assertEqual([e[1] for e in a.events], ["serve", "stop"])


class EphemeralPortsTests(SynchronousTestCase):
    """
    An instance on PostgreSQL says once when its project ports are among
    the ephemeral ones (an outgoing connection may take a project's port
    while the project moves to another instance).
    """

    def test_warnings(self):
        from ockamtw.orchestrator.service import _warn_ephemeral, ephemeral_ports

        self.assertIn("--project-ports 0", _warn_ephemeral(None, (32768, 60999)))
        self.assertIn("overlaps the ephemeral ports (32768-60999)", _warn_ephemeral((32000, 33000), (32768, 60999)))
        self.assertIsNone(_warn_ephemeral((4000, 4099), (32768, 60999)))
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("32768\t60999\n")
        self.assertEqual(ephemeral_ports(path), (32768, 60999))
        self.assertIsNone(ephemeral_ports(path + ".missing"))
