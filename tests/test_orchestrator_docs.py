"""
docs/orchestrator-instances.md as printed: its blocks marked C{<!-- run by
tests/test_orchestrator_docs.py -->} are one session (L{tests.docblocks}: a
network and PID namespace of its own, a new C{HOME}), run against this test
process's PostgreSQL server (L{tests.pgserver}), which the session reaches
through libpq's environment (C{PGHOST}: the server's UNIX socket
directory, C{PGUSER}), as the document says a user's commands do.  Two
instances, the seed's portal through a project, a kill -9, the inlet
serving again, C{project.json} unchanged, the first instance back serving
nothing.

The document's systemd unit is not run; its command line is checked: the
options parse as C{twistd ockam-orchestrator}'s.
"""

from __future__ import annotations

import re
import shlex

from twisted.internet import threads
from twisted.trial.unittest import SynchronousTestCase

from ockamtw.orchestrator.tap import Options

from tests import pgserver
from tests.docblocks import NamespaceTestCase, Session, block_commands, blocks_of, run_session
from tests.helpers import async_test

DOCUMENT = "docs/orchestrator-instances.md"
MARKER = "run by tests/test_orchestrator_docs.py"


def marked_session() -> Session:
    blocks = [b for b in blocks_of(DOCUMENT) if b.marker == MARKER]
    commands = [c for b in blocks for c in block_commands(b)]
    return Session(f"{DOCUMENT} (run by this module)", commands, blocks)


class SessionTests(NamespaceTestCase):
    timeout = 240

    @async_test
    async def test_as_printed(self):
        session = marked_session()
        self.assertEqual(len(session.blocks), 4)
        self.assertTrue(any("kill -9" in c.text for c in session.commands))
        server = pgserver.server()

        def drop():
            return threads.deferToThread(server.drop_database, server.dsn("ockam"))

        await drop()
        self.addCleanup(drop)
        status, output = await run_session(
            self, session, 200, env={"PGHOST": server.directory, "PGUSER": "postgres"}
        )
        # The start of the output too: a first try that failed shows there.
        self.assertEqual(status, 0, output[:4000] + "\n...\n" + output[-6000:])
        self.assertIn("@@@ SESSION DONE", output)


def _unit_and_environment():
    """
    The document's systemd unit (the C{ini} block) and its environment
    files (the C{text} block after it, C{# FILE} then C{NAME=VALUE} lines).
    """
    blocks = blocks_of(DOCUMENT)
    [unit] = [b for b in blocks if b.language == "ini"]
    following = blocks[blocks.index(unit) + 1]
    files, current = {}, None
    for line in following.text.splitlines():
        if line.startswith("# /"):
            current = files.setdefault(line[2:].split()[0], {})
        elif "=" in line and current is not None:
            name, _, value = line.partition("=")
            current[name] = value
    return unit.text, files


class SystemdUnitTests(SynchronousTestCase):
    def test_command_line(self):
        """
        The unit's C{ExecStart}, its continuation lines joined and its
        variables set from each instance's environment file, is C{twistd
        -n --pidfile= ockam-orchestrator} with options that parse, and the
        instances of the example get the same database, key file, port
        range and advertised host, and HTTP endpoints of their own.
        """
        unit, files = _unit_and_environment()
        self.assertIn("EnvironmentFile=/etc/ockam-orchestrator/%i.env", unit)
        exec_start = re.search(r"^ExecStart=((?:.*\\\n)*.*)$", unit, re.M).group(1)
        exec_start = exec_start.replace("\\\n", " ")
        seen = {}
        for instance in ("a", "b"):
            env = {**files["/etc/ockam-orchestrator/common.env"], **files[f"/etc/ockam-orchestrator/{instance}.env"]}
            line = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], exec_start.replace("%i", instance))
            argv = shlex.split(line)
            self.assertTrue(argv[0].endswith("/twistd"), argv)
            self.assertEqual(argv[1:4], ["-n", "--pidfile=", "ockam-orchestrator"])
            options = Options()
            options.parseOptions(argv[4:])
            seen[instance] = options
        a, b = seen["a"], seen["b"]
        for key in ("db", "secrets-key-file", "project-ports", "advertise-host", "listen-host"):
            self.assertEqual(a[key], b[key], key)
        self.assertTrue(a["db"].startswith("postgresql://"))
        self.assertNotEqual(a["http"], b["http"])
        self.assertNotEqual(a["data"], b["data"])
        self.assertEqual(a["listen-host"], "0.0.0.0")

