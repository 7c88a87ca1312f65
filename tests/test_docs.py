"""
The documentation's programs are the ones the tests run.
"""

import os
import re
import shutil
import sys

from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

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
            self.assertIn("relay forward_to_n3 is UP", text)
            self.assertIn("HELLO", text)
            self.assertIn("hello from behind the relay", text)

        return d.addCallback(check)


class TableTests(SynchronousTestCase):
    def test_tablesAreWhole(self):
        """
        Every table of the docs starts with its header and separator rows:
        rows after a blank line inside a table start a new "table" without
        a header, which renders as raw C{|} text.
        """
        from .docblocks import DOCUMENTS

        for document in DOCUMENTS:
            lines = _read(document).split("\n")
            fenced = False
            for i, line in enumerate(lines):
                if line.startswith("```"):
                    fenced = not fenced
                if fenced or not line.startswith("|"):
                    continue
                if i > 0 and lines[i - 1].startswith("|"):
                    continue  # inside a table
                self.assertRegex(
                    lines[i + 1] if i + 1 < len(lines) else "",
                    r"^\|(\s*:?-+:?\s*\|)+\s*$",
                    f"{document}:{i + 1}: a table without a header (a blank line splitting a table?)",
                )


class ExamplesRunTests(SynchronousTestCase):
    def test_everyExampleIsRun(self):
        """
        Each program in examples/ is run by a test, or by a documented
        command that the tests run.
        """
        from .docblocks import all_blocks

        run_text = "".join(
            _read("tests", name) for name in os.listdir(os.path.join(REPO, "tests")) if name.startswith("test_")
        )
        run_text += "".join(b.text for b in all_blocks() if b.kind in ("run", "continues", "run after", "each line"))
        for name in sorted(os.listdir(os.path.join(REPO, "examples"))):
            if name.endswith(".py"):
                self.assertTrue(
                    f"examples/{name}" in run_text or f'"examples", "{name}"' in run_text,
                    f"examples/{name} is run by no test",
                )


class DocsBuildTests(TestCase):
    """
    The README's command that builds the docs, as printed, in a copy of
    docs/ (and the README, which the quick start includes): Sphinx with -W (a warning fails the build), and no table that
    renders as raw text.
    """

    timeout = 120

    def test_build(self):
        from .docblocks import all_blocks, shell_commands

        blocks = [b for b in all_blocks() if b.marker == "run by tests/test_docs.py"]
        self.assertEqual([b.document for b in blocks], ["README.md"])
        [command] = shell_commands(blocks[0])
        self.assertTrue(command.text.startswith("python -m sphinx -W docs "), command.text)
        import importlib

        try:
            for module in ("myst_parser", "sphinx"):
                importlib.import_module(module)
        except ImportError as e:
            raise SkipTest(f"Sphinx and myst-parser are not installed (pip install '.[docs]'): {e}")
        if shutil.which("dot") is None:
            self.fail("the docs' diagrams need Graphviz's dot: install it (apt-get install graphviz)")
        import shlex
        import tempfile

        work = tempfile.mkdtemp(prefix="ockdocs-")
        self.addCleanup(shutil.rmtree, work, True)
        shutil.copytree(os.path.join(REPO, "docs"), os.path.join(work, "docs"), ignore=shutil.ignore_patterns("_build"))
        shutil.copy(os.path.join(REPO, "README.md"), work)  # the quick start includes its walkthrough
        argv = shlex.split(command.text, comments=True)
        self.assertEqual(argv[0], "python")
        out_dir = os.path.join(work, argv[-1])
        d = getProcessOutputAndValue(sys.executable, argv[1:], env=dict(os.environ), path=work)

        def check(result):
            out, err, code = result
            self.assertEqual(code, 0, (out + err).decode()[-3000:])
            pages = [name for name in os.listdir(out_dir) if name.endswith(".html")]
            for page in ("quickstart", "concepts", "running", "embedding", "cli", "control-api", "orchestrator",
                         "protocol", "security", "performance", "api", "changelog"):
                self.assertIn(f"{page}.html", pages)
            with open(os.path.join(out_dir, "concepts.html"), encoding="utf-8") as f:
                self.assertGreaterEqual(f.read().count(".svg"), 6, "the concepts' diagrams")
            with open(os.path.join(out_dir, "api.html"), encoding="utf-8") as f:
                api = f.read()
            for name in ("ockamtw.api.Node", "ockamtw.portal.endpoints.OckamClientEndpoint", "ockamtw.routing.Route"):
                self.assertIn(f'id="{name}"', api, "autodoc documents it")
            self.assertNotIn("C{", api, "epytext markup left in the API reference")
            with open(os.path.join(out_dir, "quickstart.html"), encoding="utf-8") as f:
                self.assertIn("The walkthrough with the", f.read(), "the README's walkthrough is included")
            for name in pages:
                with open(os.path.join(out_dir, name), encoding="utf-8") as f:
                    self.assertNotIn("<p>|", f.read(), f"{name}: a table rendered as text")

        return d.addCallback(check)


class EpytextTests(SynchronousTestCase):
    """
    docs/_ext/epytext.py turns the docstrings' epytext into reST for
    autodoc.
    """

    def convert(self, text: str) -> str:
        import importlib.util

        spec = importlib.util.spec_from_file_location("epytext", os.path.join(REPO, "docs", "_ext", "epytext.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        lines = text.split("\n")
        module.convert(lines)
        return "\n".join(lines)

    def test_inline(self):
        self.assertEqual(self.convert("C{x = {1: 2}} and I{this} B{that}"), "``x = {1: 2}`` and *this* **that**")
        self.assertEqual(self.convert("L{Address}es in L{ockamtw.api.Node}"),
                         ":py:obj:`Address`\\ es in :py:obj:`ockamtw.api.Node`")

    def test_fields(self):
        self.assertEqual(
            self.convert("Text.\n@param route: where\n    it goes.\n@return: a Deferred.\n@raise KeyError: if not."),
            "Text.\n\n:param route: where\n    it goes.\n:return: a Deferred.\n:raises KeyError: if not.",
        )
