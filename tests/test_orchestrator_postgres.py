"""
The Orchestrator's store on PostgreSQL (the server of L{tests.pgserver}, a
database per test): the SQLite store tests again, migrations run once when
instances start together, and lost connections: what is run again and what
is not.
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.internet.defer import gatherResults
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ockamtw.orchestrator.store import MIGRATIONS, Store, StoreUnavailable

from tests import pgserver
from tests.helpers import REPO_ROOT, async_test
from tests.store_harness import StoreTestsMixin


class PostgresMixin:
    timeout = 60

    def make_store(self, path=None) -> Store:
        if path is None:
            path = pgserver.database(self)
        return Store(path)

    async def open_store(self) -> Store:
        store = self.make_store()
        self.addCleanup(store.close)
        self.assertEqual(await store.open(), len(MIGRATIONS))
        return store


class PostgresStoreTests(PostgresMixin, StoreTestsMixin, TestCase):
    @async_test
    async def test_migrations_at_once(self):
        """
        Instances starting together on an empty database: the migrations
        run once (under an advisory lock), every instance comes up.
        """
        url = pgserver.database(self)
        stores = [Store(url) for _ in range(4)]
        for store in stores:
            self.addCleanup(store.close)
        versions = await gatherResults([store.open() for store in stores])
        self.assertEqual(versions, [len(MIGRATIONS)] * 4)
        self.assertEqual(await stores[0].query("SELECT version FROM schema_version"), [(len(MIGRATIONS),)])

    @async_test
    async def test_timestamps_are_double_precision(self):
        store = await self.open_store()
        rows = await store.query(
            "SELECT DISTINCT data_type FROM information_schema.columns WHERE column_name IN "
            "('expires_at', 'lease_until', 'last_seen', 'created_at')"
        )
        self.assertEqual(rows, [("double precision",)])


class LostConnectionTests(PostgresMixin, TestCase):
    """
    The database restarts, or a connection dies in the middle of a
    transaction.
    """

    @async_test
    async def test_restart(self):
        """
        After a restart every pooled connection is dead: reads and upserts
        succeed at their first call (run again on a new connection), and so
        does a redemption (its connection was found dead before it began),
        counted once.
        """
        store = await self.open_store()
        await store.add_ticket("h", "p1", {}, uses=2, expires_at=store.now() + 600, created_by=None)
        # Several pooled connections.
        await gatherResults([store.query("SELECT pg_sleep(0.05)") for _ in range(4)])
        server = pgserver.server()
        await server.stop_in_thread()
        await server.start_in_thread()
        results = await gatherResults([store.query("SELECT 1") for _ in range(6)])
        self.assertEqual(results, [[(1,)]] * 6)
        await server.stop_in_thread()
        await server.start_in_thread()
        self.assertIsNotNone(await store.redeem_ticket("h", "p1"))
        self.assertEqual(await store.query("SELECT uses_left FROM tickets"), [(1,)])

    @async_test
    async def test_down(self):
        """
        While the database is down, calls fail (after their retries) with
        a one-line L{StoreUnavailable}; they work again once it is back.
        """
        store = await self.open_store()
        store.retry_delays = (0.05, 0.05)
        server = pgserver.server()
        await server.stop_in_thread()
        try:
            with self.assertRaises(StoreUnavailable) as e:
                await store.projects()
            self.assertNotIn("\n", str(e.exception))
            self.assertTrue(str(e.exception).startswith("the database is unreachable: "), str(e.exception))
        finally:
            await server.start_in_thread()
        self.assertEqual(await store.projects(), [])

    @async_test
    async def test_lost_in_the_middle(self):
        """
        A connection that dies while a transaction runs: an idempotent one
        is run again; any other is not (it may have been done), and fails
        with L{StoreUnavailable}.
        """
        store = await self.open_store()
        calls = []

        def dies_first_time(c):
            calls.append(1)
            if len(calls) == 1:
                c.execute("SELECT pg_terminate_backend(pg_backend_pid())")
            c.execute("SELECT 42")
            return c.fetchone()[0]

        self.assertEqual(await store.run(dies_first_time, idempotent=True), 42)
        self.assertEqual(len(calls), 2)
        del calls[:]
        with self.assertRaises(StoreUnavailable) as e:
            await store.run(dies_first_time)
        self.assertTrue(e.exception.sent)
        self.assertEqual(len(calls), 1)
        self.assertEqual(await store.query("SELECT 1"), [(1,)])


class ServerTests(SynchronousTestCase):
    """
    Where the tests find PostgreSQL's server, and what they say when they
    find none (they fail: they never skip).
    """

    def test_missing_server_fails(self):
        empty = self.mktemp()
        os.makedirs(empty)
        self.patch(pgserver.shutil, "which", lambda name: None)
        self.patch(pgserver, "SEARCH", [empty])
        self.patch(pgserver, "DEBIAN", os.path.join(empty, "*", "bin"))
        with self.assertRaises(pgserver.PostgresMissing) as e:
            pgserver.binaries()
        self.assertIsInstance(e.exception, AssertionError)  # a failure, not a skip
        self.assertIn("apt-get install postgresql", str(e.exception))

    def test_ci_asks_the_tests(self):
        """
        C{.ci/run} installs PostgreSQL when C{python3 tests/pgserver.py}
        (standard library only) finds no server where the tests look;
        here it finds the one the tests use.
        """
        with open(os.path.join(REPO_ROOT, ".ci", "run")) as f:
            self.assertIn("python3 tests/pgserver.py >/dev/null 2>&1 || need+=(postgresql)", f.read())
        r = subprocess.run([sys.executable, "-I", os.path.join(REPO_ROOT, "tests", "pgserver.py")],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual((r.returncode, r.stdout.strip()), (0, pgserver.binaries()), r.stderr)
