"""
The vector files under C{tests/data/} are what C{tests/data/README.md} says
they are: every file is listed there with its source, and its SHA-256 is
the one recorded when it was taken (so nothing the tests need lives outside
the repository, and a changed copy is noticed).
"""

from __future__ import annotations

import hashlib
import os
import re

from twisted.trial.unittest import SynchronousTestCase

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def recorded() -> dict:
    """
    C{{path: sha256}} from the table of C{tests/data/README.md}.
    """
    with open(os.path.join(DATA, "README.md"), encoding="utf-8") as f:
        text = f.read()
    return dict(re.findall(r"^\| `([^`]+)` \| `([0-9a-f]{64})` \|", text, re.M))


class DataFileTests(SynchronousTestCase):
    def test_every_file_is_listed(self):
        files = set()
        for directory, _, names in os.walk(DATA):
            for name in names:
                path = os.path.relpath(os.path.join(directory, name), DATA).replace(os.sep, "/")
                if path != "README.md" and "__pycache__" not in path:
                    files.add(path)
        self.assertEqual(files, set(recorded()))

    def test_sums(self):
        sums = recorded()
        self.assertGreaterEqual(len(sums), 3)
        for path, expected in sums.items():
            with open(os.path.join(DATA, path), "rb") as f:
                self.assertEqual(hashlib.sha256(f.read()).hexdigest(), expected, f"tests/data/{path} changed")
