"""
TCP portals in the seed's topology (a client connects to n1's inlet, whose
route goes through the relay C{forward_to_n3} at n2 to n3's outlet, which
connects to the target): an HTTP C{HEAD} through the portal to a
twisted.web server and to a real C{python -m http.server}.

In-process nodes on the global reactor, real loopback sockets on port 0
(L{tests.portal_harness}).  Nothing sleeps.
"""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.web import resource as web_resource, server as web_server, static as web_static

from ockamtw.relay import Forwarder

from .helpers import async_test, spawn
from .portal_harness import LOOPBACK, Collector, PortalTestCase, head_request


# --- the seed's topology ---------------------------------------------------------


class SeedTopologyTests(PortalTestCase):
    timeout = 30

    async def _head_through_portal(self, target_port: int) -> bytes:
        t = await self.topology(target_port)
        client = await self.connect_client(t.inlet_port, Collector())
        head_request(client)
        await client.when_lost(10, "the HTTP response and close through the portal")
        response = bytes(client.data)
        # The relay carried the Ping; the portal is up and then gone.
        forwarder = t.n2.worker_at("forward_to_n3")
        self.assertIsInstance(forwarder, Forwarder)
        self.assertGreaterEqual(forwarder.forwarded, 1)
        self.assertEqual(t.inlet.accepted, 1)
        self.assertEqual(t.outlet.accepted, 1)
        self.assertEqual(t.inlet.status, "UP")
        await self.no_portals_left(t)
        return response

    @async_test
    async def test_head_twisted_web(self):
        root = web_resource.Resource()
        root.putChild(b"", web_static.Data(b"hello", "text/plain"))
        site = web_server.Site(root)
        port = await serverFromString(reactor, LOOPBACK).listen(site)
        self.addCleanup(port.stopListening)
        response = await self._head_through_portal(port.getHost().port)
        self.assertTrue(response.startswith(b"HTTP/1.0 200 OK\r\n"), response)
        self.assertIn(b"\r\nContent-Length: 5\r\n", response)
        self.assertIn(b"\r\nContent-Type: text/plain\r\n", response)
        self.assertTrue(response.endswith(b"\r\n\r\n"), response)  # HEAD: no body

    @async_test
    async def test_head_python_http_server(self):
        """
        A real C{python -m http.server} on port 0 (it prints the port it
        got), as in the seed.
        """
        proc = spawn(self, [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "0"])
        m = await proc.wait_for(r"Serving HTTP on 127\.0\.0\.1 port (\d+) ", seconds=15)
        port = int(m.group(1))
        self.assertNotEqual(port, 0)
        response = await self._head_through_portal(port)
        self.assertTrue(response.startswith(b"HTTP/1.0 200 OK\r\n"), response)
        self.assertIn(b"\r\nServer: SimpleHTTP/", response)
        self.assertTrue(response.endswith(b"\r\n\r\n"), response)
        # The server logged the request it got through the portal.
        await proc.wait_for(r'"HEAD / HTTP/1\.0" 200', seconds=5)
