"""
The forwarders of C{python -m benchmarks.floor} (the least a CPython
process, and a Twisted one, does per message) carry bytes both ways, in a
chain of two, as the floor's measurement uses them; a large write (more
than the kernel takes at once) arrives whole.
"""

from __future__ import annotations

import json
import sys

from twisted.trial.unittest import TestCase

from .helpers import REPO_ROOT, async_test, spawn
from .orchestrator_cluster import echo_server, echo_through


class FloorForwarderTests(TestCase):
    timeout = 60

    async def chain(self, kind: str, target: int, hops: int) -> int:
        port = target
        for _ in range(hops):
            proc = spawn(self, [sys.executable, "-m", "benchmarks.floor", kind, "--target", str(port)], cwd=REPO_ROOT)
            m = await proc.wait_for(r"PORTS (\{.*\})")
            port = json.loads(m.group(1))["echo"]
        return port

    @async_test
    async def test_raw_forwarder(self):
        port = await self.chain("forward", await echo_server(self), 2)
        self.assertEqual(await echo_through(self, port, b"x" * 64), b"x" * 64)
        big = bytes(range(256)) * 49152  # 12 MiB: more than the socket buffers hold
        self.assertEqual(await echo_through(self, port, big, seconds=20), big)

    @async_test
    async def test_twisted_forwarder(self):
        port = await self.chain("twisted-forward", await echo_server(self), 2)
        for i in range(3):  # one connection after another
            token = b"%d" % i * 64
            self.assertEqual(await echo_through(self, port, token), token)
