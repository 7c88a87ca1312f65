"""
The documentation's programs are the ones the tests run.
"""

import os
import re
import sys

from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*parts):
    with open(os.path.join(REPO, *parts), encoding="utf-8") as f:
        return f.read()


class EmbeddedExampleTests(SynchronousTestCase):
    def test_embeddingDocShowsTheExample(self):
        """
        Each code block announced with C{<!-- example: PATH -->} in the docs
        is that file, to the byte, so the program the docs show is the one
        the suite runs.
        """
        doc = _read("docs", "embedding.md")
        blocks = re.findall(r"<!-- example: (\S+) -->\n```python\n(.*?)```", doc, re.S)
        self.assertEqual([path for path, _ in blocks], ["examples/portal.py"])
        for path, code in blocks:
            self.assertEqual(code, _read(path), f"docs/embedding.md's copy of {path} is stale")


class ExampleRunTests(TestCase):
    timeout = 60

    def test_portalExample(self):
        """
        examples/portal.py runs and gets the web page through inlet, relay
        and outlet.
        """
        d = getProcessOutputAndValue(
            sys.executable, [os.path.join(REPO, "examples", "portal.py")], env=dict(os.environ), path=REPO
        )

        def check(result):
            out, err, code = result
            text = out.decode()
            self.assertEqual(code, 0, err.decode()[-2000:])
            self.assertIn("relay forward_to_n3 is Up", text)
            self.assertIn("HELLO", text)
            self.assertIn("hello from behind the relay", text)

        return d.addCallback(check)
