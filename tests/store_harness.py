"""
The tests of the Orchestrator's store that every engine passes
(L{StoreTestsMixin}): migrations, and the operations whose atomicity
matters (one-time codes, relay owners, ports, leases), through one instance
and through two or three at once.  L{tests.test_orchestrator_store} runs
them on SQLite, L{tests.test_orchestrator_postgres} on PostgreSQL.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults

from ockamtw.orchestrator.store import MIGRATIONS, Conflict, NoFreePorts, Store

from tests.helpers import async_test, deadline


class StoreTestsMixin:
    def make_store(self) -> Store:
        raise NotImplementedError()

    async def open_store(self) -> Store:
        store = self.make_store()
        self.addCleanup(store.close)
        version = await store.open()
        self.assertEqual(version, len(MIGRATIONS))
        return store

    @async_test
    async def test_migrations_once(self):
        store = await self.open_store()
        store.close()
        again = self.make_store(path=store.db)
        self.addCleanup(again.close)
        self.assertEqual(await again.open(), len(MIGRATIONS))
        rows = await again.query("SELECT version FROM schema_version")
        self.assertEqual(rows, [(len(MIGRATIONS),)])

    @async_test
    async def test_ticket_redeemed_once_each_use(self):
        store = await self.open_store()
        await store.add_ticket("h", "p1", {"role": "member"}, uses=3, expires_at=store.now() + 600, created_by="Pa")
        results = await gatherResults([store.redeem_ticket("h", "p1") for _ in range(10)])
        self.assertEqual(sum(1 for r in results if r is not None), 3)
        self.assertEqual([r for r in results if r is not None][0], ({"role": "member"}, "Pa"))
        self.assertIsNone(await store.redeem_ticket("h", "p1"))

    @async_test
    async def test_ticket_other_project_or_expired(self):
        store = await self.open_store()
        await store.add_ticket("h", "p1", {}, uses=1, expires_at=store.now() - 1, created_by=None)
        self.assertIsNone(await store.redeem_ticket("h", "p1"))
        await store.add_ticket("g", "p1", {}, uses=1, expires_at=store.now() + 60, created_by=None)
        self.assertIsNone(await store.redeem_ticket("g", "p2"))
        self.assertIsNotNone(await store.redeem_ticket("g", "p1"))

    @async_test
    async def test_relay_owner(self):
        store = await self.open_store()
        self.assertEqual(await store.claim_relay("p", "n3", "Pa"), "Pa")
        self.assertEqual(await store.claim_relay("p", "n3", "Pb"), "Pa")
        self.assertEqual(await store.claim_relay("p", "n3", "Pa"), "Pa")
        await store.give_relay("p", "n3", "Pb")
        self.assertEqual(await store.claim_relay("p", "n3", "Pa"), "Pb")
        self.assertEqual([r["owner"] for r in await store.relays("p")], ["Pb"])

    @async_test
    async def test_members(self):
        store = await self.open_store()
        await store.put_member("p", "Pa", {"role": "member"}, "Padmin")
        self.assertEqual(await store.member("p", "Pa"), {"role": "member"})
        self.assertTrue(await store.revoke_member("p", "Pa"))
        self.assertIsNone(await store.member("p", "Pa"))
        self.assertFalse(await store.revoke_member("p", "Pa"))
        await store.put_member("p", "Pa", {"role": "x"}, "Padmin")
        self.assertEqual(await store.member("p", "Pa"), {"role": "x"})

    @async_test
    async def test_unique_names(self):
        store = await self.open_store()
        await store.add_space("s1", "space", [])
        with self.assertRaises(Conflict):
            await store.add_space("s2", "space", [])

    @async_test
    async def test_challenge_used_once(self):
        store = await self.open_store()
        await store.add_challenge("n", 60)
        self.assertTrue(await store.take_challenge("n"))
        self.assertFalse(await store.take_challenge("n"))

    async def second_store(self, store: Store) -> Store:
        """
        Another store (its own pool) on the same database: another instance.
        """
        other = self.make_store(path=store.db)
        self.addCleanup(other.close)
        await other.open()
        return other

    @async_test
    async def test_ticket_redeemed_through_two_instances(self):
        """
        Redemptions of one code through two instances at once count once
        each use.
        """
        a = await self.open_store()
        b = await self.second_store(a)
        await a.add_ticket("h", "p1", {"role": "member"}, uses=3, expires_at=a.now() + 600, created_by="Pa")
        results = await gatherResults([s.redeem_ticket("h", "p1") for _ in range(8) for s in (a, b)])
        self.assertEqual(sum(1 for r in results if r is not None), 3)
        rows = await b.query("SELECT uses_left FROM tickets WHERE code_hash = ?", "h")
        self.assertEqual(rows, [(0,)])

    @async_test
    async def test_timestamps_keep_their_fraction(self):
        """
        Epoch seconds are stored whole (PostgreSQL's REAL would round them
        to 128 s).
        """
        store = await self.open_store()
        await store.add_ticket("h", "p1", {}, uses=1, expires_at=1700000000.25, created_by=None)
        rows = await store.query("SELECT expires_at FROM tickets")
        self.assertEqual(rows, [(1700000000.25,)])

    async def project(self, store: Store, name: str, ports=None) -> dict:
        row = {
            "id": f"id-{name}", "space_id": "s", "name": name, "project_port": 0, "authority_port": 0,
            "project_identity": b"p", "project_secret": b"s", "authority_identity": b"a", "authority_secret": b"t",
            "state": "ready", "created_at": store.now(),
        }
        return await store.add_project(row, ports)

    @async_test
    async def test_ports_chosen_once_each(self):
        """
        Projects made at once through two instances get distinct ports of
        the range; when it is full, a clear refusal.
        """
        a = await self.open_store()
        b = await self.second_store(a)
        rows = await gatherResults(
            [Deferred.fromCoroutine(self.project(s, n, (5000, 5007)))
             for s, n in ((a, "p1"), (b, "p2"), (a, "p3"), (b, "p4"))]
        )
        ports = [p for r in rows for p in (r["project_port"], r["authority_port"])]
        self.assertEqual(sorted(ports), list(range(5000, 5008)))
        with self.assertRaises(NoFreePorts) as e:
            await self.project(b, "p5", (5000, 5007))
        self.assertEqual(str(e.exception), "no free ports left in --project-ports 5000-5007")

    @async_test
    async def test_project_names_unique_across_instances(self):
        a = await self.open_store()
        b = await self.second_store(a)
        results = await gatherResults(
            [Deferred.fromCoroutine(self.project(s, "same")).addErrback(lambda f: f.trap(Conflict) and None)
             for s in (a, b, a, b)]
        )
        self.assertEqual(sum(1 for r in results if r is not None), 1)

    @async_test
    async def test_leases(self):
        """
        A claims; B is refused while A holds; A renews; once A's lease runs
        out (not renewed), B takes it and A cannot renew it.
        """
        a = await self.open_store()
        b = await self.second_store(a)
        await self.project(a, "p1")
        self.assertEqual(await a.claim("A", ["id-p1"], 0.6), {"id-p1"})
        self.assertEqual(await b.claim("B", ["id-p1"], 0.6), set())
        view = await a.lease_tick("A", "http://a", "h", 0.6)
        self.assertEqual(view.renewed, {"id-p1"})
        self.assertEqual([(r.id, r.owner) for r in view.projects], [("id-p1", "A")])
        self.assertEqual(view.live, 1)
        started = reactor.seconds()
        while not await b.claim("B", ["id-p1"], 5):
            self.assertLess(reactor.seconds() - started, 5, "B never took the lease")
            await deadline(_later(0.05), 1, "a pause")
        self.assertGreater(reactor.seconds() - started, 0.4)
        self.assertEqual((await a.lease_tick("A", "http://a", "h", 0.6)).renewed, set())
        rows = await a.projects()
        self.assertEqual(rows[0]["served_by"], "B")
        self.assertEqual([(i["id"], i["projects"]) for i in await a.instances(5)], [("A", 0)])
        await b.release("B")
        self.assertIsNone((await a.projects())[0]["served_by"])
        # A project being deleted is not claimed.
        self.assertIsNone(await a.mark_deleting("id-p1"))
        self.assertEqual(await a.claim("A", ["id-p1"], 5), set())

    @async_test
    async def test_leave(self):
        """
        An instance that stops leaves: its leases are free at once, and it
        is no longer counted among the live instances (nor listed); the
        others' leases stay.
        """
        a = await self.open_store()
        b = await self.second_store(a)
        await self.project(a, "p1")
        await self.project(a, "p2")
        await a.lease_tick("A", "http://a", "h", 5)
        await b.lease_tick("B", "http://b", "h", 5)
        self.assertEqual(await a.claim("A", ["id-p1"], 5), {"id-p1"})
        self.assertEqual(await b.claim("B", ["id-p2"], 5), {"id-p2"})
        await a.leave("A")
        view = await b.lease_tick("B", "http://b", "h", 5)
        self.assertEqual(view.live, 1)
        self.assertEqual(view.renewed, {"id-p2"})
        self.assertEqual(sorted((r.id, r.owner) for r in view.projects), [("id-p1", None), ("id-p2", "B")])
        self.assertEqual([i["id"] for i in await b.instances(5)], ["B"])
        self.assertEqual(await b.claim("B", ["id-p1"], 5), {"id-p1"})

    @async_test
    async def test_lease_ages(self):
        """
        The instances' view: each instance's leases with the time it has
        held each (kept across renewals and claims by the same owner, new
        for a new owner), the age of the last renewal and the time left.
        """
        a = await self.open_store()
        await self.project(a, "p1")
        await self.project(a, "p2")
        await a.lease_tick("A", "http://a", "h", 5)
        self.assertEqual(await a.claim("A", ["id-p1", "id-p2"], 5), {"id-p1", "id-p2"})
        await deadline(_later(0.3), 2, "a pause")
        await a.lease_tick("A", "http://a", "h", 5)
        self.assertEqual(await a.claim("A", ["id-p1"], 5), {"id-p1"})
        [view] = await a.instances(5)
        self.assertEqual((view["id"], view["http_url"], view["alive"], view["projects"]), ("A", "http://a", True, 2))
        self.assertEqual([(x["name"], x["project_id"]) for x in view["leases"]], [("p1", "id-p1"), ("p2", "id-p2")])
        for lease in view["leases"]:
            self.assertGreaterEqual(lease["held"], 0.25)
            self.assertLess(lease["age"], 0.25)
            self.assertTrue(4.5 < lease["left"] <= 5, lease)
        await a.release("A", ["id-p1"])
        self.assertEqual(await a.claim("B", ["id-p1"], 5), {"id-p1"})
        held = {v["id"]: v for v in await a.instances(5)}
        self.assertEqual([x["name"] for x in held["A"]["leases"]], ["p2"])
        self.assertNotIn("B", held)  # claims do not make an instance seen
        # B's lease on p1 was taken now: held since its (only) renewal.
        [(since, renewed)] = await a.query("SELECT since, renewed_at FROM project_owner WHERE project_id = 'id-p1'")
        self.assertEqual(since, renewed)

    @async_test
    async def test_concurrent_claims_one_winner(self):
        """
        Three instances claiming the same projects at once: each project
        goes to exactly one.
        """
        a = await self.open_store()
        b = await self.second_store(a)
        c = await self.second_store(a)
        ids = []
        for n in range(12):
            ids.append((await self.project(a, f"p{n}"))["id"])
        won = await gatherResults([s.claim(name, ids[::-1] if name == "B" else ids, 5)
                                   for s, name in ((a, "A"), (b, "B"), (c, "C"))])
        self.assertEqual(sorted(p for w in won for p in w), sorted(ids))
        owners = await a.query("SELECT project_id, owner FROM project_owner")
        self.assertEqual(len(owners), 12)
        for (name, w) in zip("ABC", won):
            self.assertEqual({p for p, o in owners if o == name}, w)


def _later(seconds: float):
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)
