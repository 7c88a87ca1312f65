"""
The Orchestrator's store on SQLite (a file in a temporary directory): the
tests of L{tests.store_harness.StoreTestsMixin}.  PostgreSQL runs the same
tests in L{tests.test_orchestrator_postgres}.
"""

from __future__ import annotations

import os
import tempfile

from twisted.trial.unittest import TestCase

from ockamtw.orchestrator.store import Store

from tests.store_harness import StoreTestsMixin


class SQLiteStoreTests(StoreTestsMixin, TestCase):
    def make_store(self, path=None) -> Store:
        if path is None:
            directory = tempfile.mkdtemp()
            path = os.path.join(directory, "orchestrator.sqlite3")
        return Store(path)
