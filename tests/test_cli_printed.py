"""
What the C{ockam} command prints is accepted back wherever that kind of
thing is an argument: node names as C{/node/N}, listener addresses (also as
the C{/ip4/...} route C{node show} prints, or a bare port), TCP connections
by C{/service/HEX}, C{0#HEX} or transport id, outlets, relays, secure
channels and listeners by their C{/service/...} address, inlets by the
address C{tcp-inlet create} printed.  With real nodes, through the real
command.
"""

from __future__ import annotations

import re
import socket

from .cli_harness import HEX32, CLITestCase, port_of
from .helpers import async_test


def free_port() -> int:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def verbose_route(node_show: str) -> str:
    m = re.search(r"^    Verbose: (/(?:ip4|dnsaddr)/\S+)$", node_show, re.M)
    assert m, node_show
    return m.group(1)


class PrintedValuesTests(CLITestCase):
    timeout = 90

    @async_test
    async def test_listener_address_forms(self):
        """
        C{--tcp-listener-address} takes a bare port (as twistd's C{--listen}
        does) and the C{/ip4/...} route C{node show} prints; C{node show}
        lists the secure channel listener C{api} among the services.
        """
        port = free_port()
        r = await self.ockam("node", "create", "n2", f"--tcp-listener-address={port}", "--output", "json")
        self.assertEqual(r.json()["listener"], f"127.0.0.1:{port}")
        self.assertIn("api", r.json()["services"])
        r = await self.ockam("node", "show", "/node/n2", "--details")
        self.assertIn("    api\n", r.out)
        route = verbose_route(r.out)
        self.assertEqual(route, f"/ip4/127.0.0.1/tcp/{port}")
        r = await self.ockam("node", "show", "/node/n2")
        self.assertIn("  Secure Channel Listeners:\n    Listener:\n      Address: /service/api\n", r.out)
        self.assertEqual(verbose_route(r.out), f"/dnsaddr/localhost/tcp/{port}")

        other = free_port()
        r = await self.ockam("node", "create", "n3", "--tcp-listener-address", f"/ip4/127.0.0.1/tcp/{other}", "--output", "json")
        self.assertEqual(r.json()["listener"], f"127.0.0.1:{other}")
        r = await self.ockam("node", "create", "n4", "--tcp-listener-address", "/ip4/127.0.0.1/service/x", check=False)
        self.assertUserError(r, "--tcp-listener-address")

    @async_test
    async def test_tcp_connection_by_what_was_printed(self):
        """
        A connection made to the route C{node show} printed, then shown and
        deleted by what create and list printed.
        """
        await self.create_nodes("n1", "n2")
        route = verbose_route((await self.ockam("node", "show", "n2")).out)
        r = await self.ockam("tcp-connection", "create", "--from", "/node/n1", "--to", route, "--print-address")
        m = re.fullmatch(rf"(/service/({HEX32}))\n", r.out)
        self.assertIsNotNone(m, str(r))
        printed, hex_ = m.groups()
        (conn,) = (await self.ockam("tcp-connection", "list", "--node", "/node/n1", "--output", "json")).json()
        for key in (printed, conn["worker_address"], conn["transport_id"]):
            r = await self.ockam("tcp-connection", "show", key, "--node", "n1", "--output", "json")
            self.assertEqual(r.json(), conn, key)
        r = await self.ockam("tcp-connection", "show", printed, "--node", "n1")
        self.assertIn(f"  Worker address: 0#{hex_}\n", r.out)
        r = await self.ockam("tcp-connection", "delete", printed, "--node", "n1")
        self.assertEqual(r.out, f"Tcp connection `{printed}` successfully deleted\n")

    @async_test
    async def test_outlet_inlet_relay_by_what_was_printed(self):
        await self.create_nodes("n1", "n2")
        r = await self.ockam("tcp-outlet", "create", "--at", "/node/n1", "--from", "/service/outlet2", "--to", "9")
        self.assertEqual(r.out, "/service/outlet2\n")
        r = await self.ockam("tcp-outlet", "show", "/service/outlet2", "--at", "n1", "--output", "json")
        self.assertEqual(r.json()["target"], "127.0.0.1:9")
        r = await self.ockam("tcp-outlet", "delete", "/service/outlet2", "--at", "n1")
        self.assertEqual(r.out, "/service/outlet2\n")  # Ockam's machine output: the alias given

        r = await self.ockam("tcp-inlet", "create", "--at", "n1", "--from", "127.0.0.1:0", "--to", "/node/n2/service/outlet",
                             "--output", "json")
        listen = r.json()["listen"]
        for key in (listen, str(port_of(listen))):
            r = await self.ockam("tcp-inlet", "show", key, "--at", "n1", "--output", "json")
            self.assertEqual(r.json()["listen"], listen, key)
        r = await self.ockam("tcp-inlet", "delete", listen, "--at", "n1")
        self.assertEqual(r.out, f"{listen}\n")

        r = await self.ockam("relay", "create", "r1", "--at", "n2", "--to", "/node/n1")
        self.assertEqual(r.out, "/service/forward_to_r1\n")
        r = await self.ockam("relay", "show", "/service/forward_to_r1", "--to", "n1", "--output", "json")
        self.assertEqual((r.json()["name"], r.json()["at"], r.json()["status"]), ("r1", "/node/n2", "UP"))
        r = await self.ockam("relay", "delete", "/service/forward_to_r1", "--to", "n1")
        self.assertEqual(r.out, "Relay r1 deleted\n")

    @async_test
    async def test_secure_channel_and_listener_by_what_was_printed(self):
        """
        C{secure-channel show/delete /service/HEX} as create printed it; a
        listener created twice is refused as an outlet is; deleted by its
        printed address; the node's own C{api} is not deleted.
        """
        infos = await self.create_nodes("n1", "n2")
        r = await self.ockam("secure-channel", "create", "--from", "n1", "--to", "/node/n2/service/api")
        sc = r.out.strip()
        self.assertRegex(sc, rf"^/service/{HEX32}$")
        r = await self.ockam("secure-channel", "show", sc, "--at", "n1", "--details")
        self.assertEqual(r.out.splitlines()[:4], [
            f"Secure channel: {sc}", "  Role: initiator", "  Status: UP", f"  Peer: {infos['n2']['identity']}",
        ])
        r = await self.ockam("secure-channel", "delete", sc, "--at", "n1")
        self.assertEqual(r.out, f"{sc}\n")
        self.assertEqual((await self.ockam("secure-channel", "list", "--at", "n1", "--output", "json")).json(), [])

        r = await self.ockam("secure-channel-listener", "create", "/service/l1", "--at", "n1")
        self.assertEqual(r.out, "/service/l1\n")
        r = await self.ockam("secure-channel-listener", "create", "l1", "--at", "n1", check=False)
        self.assertUserError(r, "address 'l1' is already taken on node n1")
        r = await self.ockam("secure-channel-listener", "delete", "/service/l1", "--at", "n1")
        self.assertEqual(r.out, "Deleted secure-channel listener with address '/service/l1' on node 'n1'\n")
        r = await self.ockam("secure-channel-listener", "delete", "/service/api", "--at", "n1", check=False)
        self.assertUserError(r, "'api' cannot be deleted")
        listeners = (await self.ockam("secure-channel-listener", "list", "--at", "n1", "--output", "json")).json()
        self.assertEqual([l["address"] for l in listeners], ["api"])
