"""
The Orchestrator's store on SQLite (a file in a temporary directory): the
tests of L{tests.store_harness.StoreTestsMixin}.  PostgreSQL runs the same
tests in L{tests.test_orchestrator_postgres}.
"""

from __future__ import annotations

import os
import sys
import tempfile
import types

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ockamtw.orchestrator.store import Store, StoreUnavailable, _one_line, _Pool

from tests.store_harness import StoreTestsMixin


class SQLiteStoreTests(StoreTestsMixin, TestCase):
    def make_store(self, path=None) -> Store:
        if path is None:
            directory = tempfile.mkdtemp()
            path = os.path.join(directory, "orchestrator.sqlite3")
        return Store(path)


class _DBError(Exception):
    """A DB-API error with a SQLSTATE, as psycopg's errors have."""

    def __init__(self, message: str, sqlstate=None) -> None:
        Exception.__init__(self, message)
        self.sqlstate = sqlstate


class _Cursor:
    def __init__(self, conn) -> None:
        self.conn = conn

    def close(self) -> None:
        pass


class _Connection:
    broken = False
    closed = False

    def __init__(self) -> None:
        self.commits = 0
        self.rollbacks = 0

    def cursor(self):
        return _Cursor(self)

    def commit(self) -> None:
        self.commits += 1

    def rollback(self) -> None:
        self.rollbacks += 1

    def close(self) -> None:
        self.closed = True


class TransactionRollbackTests(SynchronousTestCase):
    """
    An interaction whose transaction the database rolls back for a
    concurrent one (PostgreSQL's SQLSTATE class 40: deadlock detected,
    serialization failure) runs again, a few times, since nothing of it
    was committed; any other error of the database is not retried.
    """

    def setUp(self) -> None:
        module = types.ModuleType("ockamtw_test_dbapi")
        module.Error = _DBError
        self.connections = []

        def connect(*args, **kw):
            conn = _Connection()
            self.connections.append(conn)
            return conn

        module.connect = connect
        sys.modules[module.__name__] = module
        self.addCleanup(sys.modules.pop, module.__name__, None)
        self.pool = _Pool(module.__name__, cp_min=1, cp_max=1, cp_reactor=MemoryReactorClock())
        self.calls = 0

    def interaction(self, failures: int, sqlstate: str):
        def run(cursor):
            self.calls += 1
            if self.calls <= failures:
                raise _DBError("deadlock detected", sqlstate)
            return "done"

        return run

    def test_run_again_after_a_deadlock(self) -> None:
        self.assertEqual(self.pool._runInteraction(self.interaction(2, "40P01")), "done")
        self.assertEqual(self.calls, 3)
        conn = self.connections[-1]
        self.assertEqual((conn.rollbacks, conn.commits), (2, 1))

    def test_gives_up_after_the_attempts(self) -> None:
        with self.assertRaises(StoreUnavailable) as caught:
            self.pool._runInteraction(self.interaction(10, "40001"))
        self.assertEqual(self.calls, _Pool.attempts)
        self.assertIn("gave up the transaction 3 times", str(caught.exception))

    def test_other_errors_are_not_retried(self) -> None:
        with self.assertRaises(_DBError):
            self.pool._runInteraction(self.interaction(1, "23505"))  # unique_violation
        self.assertEqual(self.calls, 1)


class OneLineTests(SynchronousTestCase):
    def test_libpq_lines_joined(self) -> None:
        """
        libpq's reason and its hint on the next line read as two clauses
        on one line, not run together.
        """
        error = Exception('connection to server on socket "/tmp/x/.s.PGSQL.5432" failed: No such file or directory\n'
                          "\tIs the server running locally and accepting connections on that socket?\n")
        self.assertEqual(
            _one_line(error),
            'connection to server on socket "/tmp/x/.s.PGSQL.5432" failed: No such file or directory; '
            "Is the server running locally and accepting connections on that socket?",
        )

    def test_blanks_and_length(self) -> None:
        self.assertEqual(_one_line(Exception("a   b\n\n  c ")), "a b; c")
        self.assertEqual(_one_line(ValueError("")), "ValueError")
        self.assertEqual(len(_one_line(Exception("x" * 500))), 200)
