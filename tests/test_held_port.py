"""
L{tests.helpers.held_port}, which tests use instead of closing a port and
reusing its number: checked in a network namespace of its own whose
automatic ports are narrowed to one, so that what another program binding
port 0 would be given is certain.
"""

from __future__ import annotations

import json
import os
import sys

from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from . import docblocks
from .helpers import REPO_ROOT

SCRIPT = r'''
import fcntl, json, socket, struct, sys
sys.path.insert(0, sys.argv[1])
from tests.helpers import held_port

s = socket.socket()
flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, struct.pack("16sH14s", b"lo", 0, bytes(14)))[:18])[1]
fcntl.ioctl(s, 0x8914, struct.pack("16sH14s", b"lo", flags | 1, bytes(14)))  # lo up


def port_range(low, high):
    with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
        f.write(f"{low} {high}")


class Case:
    cleanups = []  # keeps the held socket open

    def addCleanup(self, f, *a):
        self.cleanups.append((f, a))


def autobind():
    """What another program listening on port 0 (with SO_REUSEADDR, as most do) is given."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", 0))
        s.listen()
        return s, s.getsockname()[1]
    except OSError as e:
        s.close()
        return None, e.errno


out = {}
port_range(40000, 40000)
listener, port = autobind()  # a port of ours, closed again: the old way
listener.close()
other, got = autobind()
out["closed_port_given_to_another"] = got == port
other.close()
held = held_port(Case())
other, got = autobind()
out["held_port_given_to_another"] = got == held
if other:
    other.close()
port_range(41000, 41010)
c = socket.socket()
try:
    c.connect(("127.0.0.1", held))
    out["held_port_refuses"] = False
except ConnectionRefusedError:
    out["held_port_refuses"] = True
for _ in range(2):  # a node of the test listens there, and stops again
    own = socket.socket()
    own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    own.bind(("127.0.0.1", held))
    own.listen()
    own.close()
out["own_listener_binds"] = True
print(json.dumps(out))
'''


class HeldPortTests(TestCase):
    timeout = 30

    def test_held_port(self):
        """
        A closed port's number is given to the next program that binds port
        0 (the race of closing a port and reusing its number); a held port
        is not, refuses connections, and the test's own listeners bind it.
        """
        problem = docblocks.namespace_problem()
        if problem:
            self.fail(f"this test needs a network namespace of its own, which cannot be made here: {problem}")
        argv = [a for a in docblocks.unshare_argv() if a in ("unshare", "--net", "--map-root-user")]
        d = getProcessOutputAndValue(
            argv[0], argv[1:] + [sys.executable, "-c", SCRIPT, REPO_ROOT], env=dict(os.environ), path=REPO_ROOT
        )

        def check(result):
            out, err, code = result
            self.assertEqual(code, 0, err.decode()[-3000:])
            self.assertEqual(
                json.loads(out),
                {
                    "closed_port_given_to_another": True,
                    "held_port_given_to_another": False,
                    "held_port_refuses": True,
                    "own_listener_binds": True,
                },
            )

        return d.addCallback(check)
