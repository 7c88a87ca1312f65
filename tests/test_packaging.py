"""
The package as it ships: the source distribution holds every file of the
checkout a user or a test needs (the docs, the examples, the tests with
their data, the benchmarks the tests run), and the version is written once.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

from twisted.trial.unittest import TestCase

import ockamtw

from .helpers import REPO_ROOT

#: Files of the checkout that are not part of the distribution, by design.
NOT_SHIPPED = re.compile(r"^(\.ci/|\.gitignore$|.*/\.gitignore$)")


class SourceDistributionTests(TestCase):
    timeout = 120

    def tracked(self) -> set:
        # A clone has a .git directory; a worktree (git worktree add) a .git file.
        if not os.path.exists(os.path.join(REPO_ROOT, ".git")):
            raise self.skipTest("not a git checkout (run from an unpacked distribution?): no list of files to check")
        out = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
        return {line for line in out.splitlines() if line and not NOT_SHIPPED.match(line)}

    def test_sdist_holds_every_file(self):
        """
        C{setup.py sdist} (what C{pip} and C{build} make from the checkout)
        leaves out no tracked file: MANIFEST.in is complete.  The build
        runs in a copy, so that the checkout gains no C{*.egg-info}.
        """
        expected = self.tracked()
        work = tempfile.mkdtemp(prefix="sdist")
        self.addCleanup(shutil.rmtree, work, True)
        copy = os.path.join(work, "src")
        os.makedirs(copy)
        for name in expected | {"setup.py", "MANIFEST.in"}:
            os.makedirs(os.path.dirname(os.path.join(copy, name)), exist_ok=True)
            shutil.copy2(os.path.join(REPO_ROOT, name), os.path.join(copy, name))
        r = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", os.path.join(work, "dist")],
                           cwd=copy, capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        (archive,) = os.listdir(os.path.join(work, "dist"))
        self.assertEqual(archive, f"ockamtw-{ockamtw.__version__}.tar.gz")
        with tarfile.open(os.path.join(work, "dist", archive)) as tar:
            shipped = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        self.assertEqual(sorted(expected - shipped), [], "tracked files missing from the sdist (MANIFEST.in)")

    def test_one_version(self):
        """
        The version is written once, in C{ockamtw/__init__.py}; setup.py
        reads it and the command line prints it.
        """
        with open(os.path.join(REPO_ROOT, "setup.py")) as f:
            setup = f.read()
        self.assertNotRegex(setup, r"version\s*=\s*['\"]")
        r = subprocess.run([sys.executable, "setup.py", "--version"], cwd=REPO_ROOT, capture_output=True, text=True)
        self.assertEqual(r.stdout.strip().splitlines()[-1], ockamtw.__version__, r.stderr[-1000:])
        r = subprocess.run([sys.executable, "-m", "ockamtw.cli", "--version"], capture_output=True, text=True,
                           cwd=REPO_ROOT)
        self.assertEqual(r.stdout, f"ockam {ockamtw.__version__} (ockamtw)\n", r.stderr)
