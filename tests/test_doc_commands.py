"""
Every command of the README and the docs runs as printed (issue #11 item 1):
L{tests.docblocks} finds the blocks and runs each session in a network and
PID namespace of its own, where the docs' fixed ports (7000, 9000, 6000) are
free and nothing the commands start outlives the session.

The namespace needs C{unshare} (util-linux) and either root or unprivileged
user namespaces; where it cannot be made, these tests fail and say why.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from . import docblocks
from .docblocks import (
    REPO,
    Command,
    NamespaceTestCase,
    Session,
    all_blocks,
    block_commands,
    blocks_of,
    run_session,
    sessions_of,
)
from .helpers import async_test


class BlockTests(SynchronousTestCase):
    def test_every_block_is_run_or_marked(self):
        """
        Each block of L{docblocks.DOCUMENTS} is run by L{DocCommandTests}, or
        marked: not run (with a reason), run by a test module that selects
        it by that marker, an example file it is a copy of, or a directive.
        """
        seen = 0
        for block in all_blocks():
            seen += 1
            kind, where = block.kind, block.where
            self.assertIn(
                kind,
                ("run", "continues", "each line", "run after", "not run", "run by", "example", "directive"),
                f"{where}: a {block.language or 'plain'} block with marker {block.marker!r}: run it, or mark it",
            )
            if kind == "not run":
                self.assertTrue(block.argument, f"{where}: say why it is not run")
            if kind == "run by":
                path = os.path.join(REPO, block.argument)
                self.assertTrue(os.path.isfile(path), f"{where}: no test module {block.argument}")
                with open(path, encoding="utf-8") as f:
                    self.assertIn(f"run by {block.argument}", f.read(), f"{where}: {block.argument} does not select it")
            if kind == "example":
                with open(os.path.join(REPO, block.argument), encoding="utf-8") as f:
                    self.assertEqual(block.text, f.read(), f"{where}: the copy of {block.argument} is stale")
            if kind in ("run", "continues", "each line", "run after"):
                self.assertIn(block.language, docblocks.RUN_LANGUAGES, where)
                commands = block_commands(block)
                self.assertTrue(commands, f"{where}: no command")
                if kind == "each line":
                    for command in commands:
                        self.assertTrue(command.promises, f"{command.where}: say what it prints (# prints TEXT)")
        self.assertGreater(seen, 10)

    def test_commands_and_promises(self):
        """
        Continuation lines make one command; comment lines are none; C{#
        prints TEXT} is a promise where C{<word>} is any text without
        spaces.
        """
        block = docblocks.Block(
            "x.md", 1, "sh",
            "# a comment\nfirst --a \\\n    --b   # prints HTTP/1.0 200 OK\n\nsecond   # a remark\n"
            "c=$(third)   # prints /service/<hex>...\n",
        )
        commands = block_commands(block)
        self.assertEqual(
            [(c.text, c.promises, c.where) for c in commands],
            [
                ("first --a \\\n    --b   # prints HTTP/1.0 200 OK", [r"HTTP/1\.0 200 OK"], "x.md:3"),
                ("second   # a remark", [], "x.md:6"),
                ("c=$(third)   # prints /service/<hex>...", ["/service/[^[:space:]]+"], "x.md:7"),
            ],
        )

    def test_sessions(self):
        """
        The README's walkthrough and its secure channel block are one
        session; each line of "Run a node" is a session of its own.
        """
        sessions = sessions_of("README.md")
        walkthrough = [s for s in sessions if any("ockam node create n2" in c.text for c in s.commands)]
        self.assertEqual(len(walkthrough), 1)
        self.assertEqual(len(walkthrough[0].blocks), 2)
        self.assertIn("ockam node delete --all", walkthrough[0].commands[-1].text)
        servers = [s for s in sessions if s.commands[0].server]
        self.assertGreaterEqual(len(servers), 3)
        for s in servers:
            self.assertEqual(len(s.commands), 1)

    def test_working_directory_is_a_clean_clone(self):
        """
        A session's working directory links what git tracks at the top of
        the checkout, not what a user's own run of the docs left there (a
        twistd.pid made the session's twistd refuse to start).
        """
        import shutil
        import subprocess
        import tempfile

        if shutil.which("git") is None:
            self.skipTest("no git")
        repo = tempfile.mkdtemp(prefix="ockrepo-")
        self.addCleanup(shutil.rmtree, repo, True)
        os.makedirs(os.path.join(repo, "examples"))
        for name in ("README.md", "examples/demo.py", "twistd.pid", "project.json"):
            with open(os.path.join(repo, name), "w") as f:
                f.write("x\n")
        subprocess.run(["git", "-C", repo, "init", "-q"], check=True)
        subprocess.run(["git", "-C", repo, "add", "README.md", "examples/demo.py"], check=True)
        parent = tempfile.mkdtemp(prefix="ockwork-")
        self.addCleanup(shutil.rmtree, parent, True)
        work = docblocks.working_directory(parent, repo)
        self.assertEqual(sorted(os.listdir(work)), ["README.md", "examples"])


class RunnerTests(NamespaceTestCase):
    """
    The runner fails a session whose command fails or does not print what
    it promises, and leaves nothing running.
    """

    timeout = 60

    @async_test
    async def test_failing_command(self):
        session = Session("t", [Command("true", where="t:1"), Command("false", where="t:2"),
                                Command("echo never", where="t:3")], [])
        status, output = await run_session(self, session)
        self.assertEqual(status, 1, output)
        self.assertIn("@@@ FAILED t:2: status 1", output)
        self.assertNotIn("never", output.replace("echo never", ""))

    @async_test
    async def test_promise_not_kept(self):
        session = Session("t", [Command("echo hello   # prints bye", [docblocks.promise_pattern("bye")], where="t:1")],
                          [], promise_seconds=1)
        status, output = await run_session(self, session)
        self.assertEqual(status, 1, output)
        self.assertIn("@@@ FAILED t:1: status 0; not within 1 s: bye", output)

    @async_test
    async def test_promise_kept_after_retries(self):
        """
        A command whose promise is not kept at first is retried: here until
        a background job has made the file it reads.
        """
        session = Session("t", [
            Command("(sleep 0.5; echo ready > flag) &", where="t:1"),
            Command("cat flag   # prints ready", [docblocks.promise_pattern("ready")], where="t:2"),
        ], [])
        status, output = await run_session(self, session)
        self.assertEqual(status, 0, output)
        self.assertIn("@@@ SESSION DONE", output)

    @async_test
    async def test_fixed_ports_and_nothing_left(self):
        """
        A session has its own loopback (a fixed port is free there, and
        answers), and what it left running in the background is gone when
        it ends.
        """
        token = f"docblocks-{os.getpid()}-{id(self)}"
        session = Session("t", [
            Command(f"python3 -m http.server --bind 127.0.0.1 6000 & sh -c 'sleep 1000; : {token}' &", where="t:1"),
            Command("curl --head 127.0.0.1:6000   # prints HTTP/1.0 200 OK",
                    [docblocks.promise_pattern("HTTP/1.0 200 OK")], where="t:2"),
        ], [])
        status, output = await run_session(self, session)
        self.assertEqual(status, 0, output)
        left = []
        for pid in os.listdir("/proc"):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if token.encode() in f.read():
                        left.append(pid)
            except OSError:
                pass
        self.assertEqual(left, [])

    @async_test
    async def test_server_line(self):
        """
        A program that runs until stopped passes once it prints its
        promise; one that ends first fails.
        """
        ok = Session("t", [Command("sh -c 'echo up; exec sleep 1000'   # prints up", ["up"], server=True, where="t:1")], [])
        status, output = await run_session(self, ok)
        self.assertEqual(status, 0, output)
        ended = Session("t", [Command("echo down   # prints up", ["up"], server=True, where="t:1")], [],
                        promise_seconds=1)
        status, output = await run_session(self, ended)
        self.assertEqual(status, 1, output)


class DocCommandTests(NamespaceTestCase):
    """
    One test per document: its sessions, one after the other.
    """

    timeout = 600

    async def run_document(self, document: str):
        sessions = sessions_of(document)
        self.assertTrue(sessions, f"{document}: nothing to run")
        for session in sessions:
            status, output = await run_session(self, session)
            self.assertEqual(status, 0, f"{session.name}:\n{output[-8000:]}")
            self.assertIn("@@@ SESSION DONE", output, session.name)


def _add_document_tests():
    for document in docblocks.DOCUMENTS:
        if not sessions_of(document):
            continue
        name = "test_" + document.replace("/", "_").replace(".", "_").replace("-", "_")

        def test(self, document=document):
            return async_test(DocCommandTests.run_document)(self, document)

        test.__name__ = name
        test.__doc__ = f"The commands of {document}, as printed."
        setattr(DocCommandTests, name, test)


_add_document_tests()


#: The README's first two commands: each makes a virtualenv and installs
#: into it (which needs the package index), then runs the demo or the tests.
#: .ci/run runs both exactly as printed, on a clean clone; here the part
#: after the install is run as printed, in a namespace as the other blocks.
_INSTALL = "python3 -m venv .venv && . .venv/bin/activate && pip install "


class QuickStartTests(NamespaceTestCase):
    timeout = 180

    def quick_start(self):
        blocks = [b for b in blocks_of("README.md") if b.kind == "run by" and b.argument == ".ci/run"]
        self.assertEqual(len(blocks), 2, "README.md: the two first commands are marked 'run by .ci/run'")
        commands = [block_commands(b) for b in blocks]
        self.assertEqual([len(c) for c in commands], [1, 1])
        return commands[0][0], commands[1][0]

    def test_shape(self):
        """
        The README starts with the two commands: install and run the demo,
        install and run the tests (the command .ci/run and CI run).
        """
        demo, tests = self.quick_start()
        self.assertTrue(demo.text.startswith(_INSTALL + ". && python examples/seed_demo.py"), demo.text)
        self.assertTrue(demo.promises, "the demo's command says what it prints")
        self.assertEqual(tests.text, _INSTALL + "'.[test,docs]' && python -m twisted.trial -j2 tests")
        with open(os.path.join(docblocks.REPO, ".ci", "run"), encoding="utf-8") as f:
            self.assertIn('bash -c "${commands[1]}"', f.read(), ".ci/run runs the README's test command")

    @async_test
    async def test_demo(self):
        """
        The demo, the first command's end, prints what the README says.
        """
        demo, _ = self.quick_start()
        text = demo.text[len(_INSTALL + ". && "):]
        session = Session(demo.where, [Command(text, demo.promises, where=demo.where)], [])
        status, output = await run_session(self, session, 150)
        self.assertEqual(status, 0, output[-8000:])
        self.assertIn("@@@ SESSION DONE", output)
