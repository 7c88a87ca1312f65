"""
The Orchestrator's store on SQLite (a file in a temporary directory):
migrations, and the operations whose atomicity matters (one-time codes,
relay owners).  PostgreSQL runs the same tests in
L{tests.test_orchestrator_postgres}.
"""

from __future__ import annotations

import os
import tempfile

from twisted.internet.defer import gatherResults
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from ockamtw.orchestrator.store import MIGRATIONS, Conflict, Store

from tests.helpers import async_test


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


class SQLiteStoreTests(StoreTestsMixin, TestCase):
    def make_store(self, path=None) -> Store:
        if path is None:
            directory = tempfile.mkdtemp()
            path = os.path.join(directory, "orchestrator.sqlite3")
        return Store(path)
