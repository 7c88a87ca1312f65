"""
The secrets key file (L{ockamtw.orchestrator.secrets}): made once, whole,
when instances starting together on one host find none.
"""

from __future__ import annotations

import errno
import os
import threading

from twisted.trial.unittest import SynchronousTestCase

from ockamtw.orchestrator import secrets
from ockamtw.orchestrator.secrets import KEY_BYTES, SecretsError, load_or_create_key


class KeyFileTests(SynchronousTestCase):
    def path(self) -> str:
        directory = self.mktemp()
        os.makedirs(directory)
        return os.path.join(directory, "secrets.key")

    def test_created_then_read(self):
        path = self.path()
        key = load_or_create_key(path)
        self.assertEqual(len(key), KEY_BYTES)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertEqual(os.listdir(os.path.dirname(path)), ["secrets.key"])
        self.assertEqual(load_or_create_key(path, create=False), key)

    def test_missing_not_created(self):
        with self.assertRaises(SecretsError) as e:
            load_or_create_key(self.path(), create=False)
        self.assertIn("no secrets key file at ", str(e.exception))

    def test_made_by_another_meanwhile(self):
        """
        Another process makes the file after this one found none: this one
        uses that key, and leaves no file of its own.
        """
        path = self.path()
        other = os.urandom(KEY_BYTES)
        link = os.link

        def first_the_other(src, dst):
            with open(dst, "wb") as f:
                f.write(other.hex().encode() + b"\n")
            return link(src, dst)

        self.patch(secrets.os, "link", first_the_other)
        self.assertEqual(load_or_create_key(path), other)
        self.assertEqual(os.listdir(os.path.dirname(path)), ["secrets.key"])

    def test_no_hard_links(self):
        """
        On a file system without hard links the file is made in place.
        """
        path = self.path()

        def refused(src, dst):
            raise OSError(errno.EPERM, "Operation not permitted")

        self.patch(secrets.os, "link", refused)
        key = load_or_create_key(path)
        self.assertEqual(load_or_create_key(path, create=False), key)
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        self.assertEqual(os.listdir(os.path.dirname(path)), ["secrets.key"])

    def test_started_together(self):
        """
        Four instances starting at once with one missing file: every one
        gets the same key, none fails (none reads a file being written, or
        trips over the file the winner made).
        """
        for _ in range(50):
            path = self.path()
            results = []
            barrier = threading.Barrier(4)

            def one():
                barrier.wait()
                try:
                    results.append(load_or_create_key(path))
                except Exception as e:  # collected, then asserted
                    results.append(e)

            threads = [threading.Thread(target=one) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            self.assertEqual([r for r in results if not isinstance(r, bytes)], [])
            self.assertEqual(len(set(results)), 1)
            self.assertEqual(os.listdir(os.path.dirname(path)), ["secrets.key"])
