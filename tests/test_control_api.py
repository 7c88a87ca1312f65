"""
The control API in one process: a L{NodeController} served on a UNIX socket
by L{ControlService} and called with the command line's own L{ControlClient}
(its URL quoting, the server's parsing), for nodes on loopback port 0.

What the command line prints (C{/service/NAME}, C{0#HEX}, a transport id, a
relay's address) is accepted back as a key; every status is spelled one
way; a secure channel that is not up is not listed; a change that cannot be
saved is undone and refused in one line.
"""

from __future__ import annotations

import errno
import os

from ockamtw.control import server
from ockamtw.status import CLOSED, DOWN, UP

from .control_harness import ControlAPITestCase
from .helpers import async_test, wait_until

OTHER = "P" + "1" * 64


class PrintedKeysTests(ControlAPITestCase):
    @async_test
    async def test_outlet_by_printed_address(self):
        """
        C{/service/outlet2} (as C{tcp-outlet create} prints it) names the
        outlet in show and delete, as one URL segment or as a path.
        """
        node, _, _, client = await self.serve()
        o = await client.call("POST", "outlets", {"address": "/service/outlet2", "to": "127.0.0.1:9"})
        self.assertEqual(o["address"], "outlet2")
        for key in (("outlets", "/service/outlet2"), ("outlets", "outlet2"), "outlets/service/outlet2"):
            self.assertEqual((await client.call("GET", key))["address"], "outlet2", key)
        deleted = await client.call("DELETE", ("outlets", "/service/outlet2"))
        self.assertEqual(deleted["address"], "outlet2")
        self.assertEqual(node.outlets, {})
        message = await self.refused(client, "GET", ("outlets", "/service/outlet2"))
        self.assertEqual(message, "no outlet 'outlet2' on node n1")
        message = await self.refused(client, "GET", ("outlets", "/service/a/service/b"))
        self.assertIn("expected NAME or /service/NAME", message)

    @async_test
    async def test_tcp_connection_by_printed_forms(self):
        """
        A TCP connection is found by what create prints (C{/service/HEX}),
        what list prints (C{0#HEX}, the transport id, the socket address).
        """
        n1, _, _, client = await self.serve()
        _, l2 = await self.listening_node("n2")
        conn = await client.call("POST", "tcp", {"to": l2.socket_address})
        hex_ = conn["worker_address"].split("#", 1)[1]
        for key in (f"/service/{hex_}", f"0#{hex_}", hex_, conn["transport_id"]):
            shown = await client.call("GET", ("tcp", key))
            self.assertEqual(shown, conn, key)
        deleted = await client.call("DELETE", ("tcp", f"/service/{hex_}"))
        self.assertEqual(deleted["transport_id"], conn["transport_id"])
        self.assertEqual([c for c in await client.call("GET", "tcp") if c["mode"] != "Listening"], [])

    @async_test
    async def test_relay_by_name_or_address(self):
        """
        A relay is found by its name (C{r1}) or its address as printed
        (C{/service/forward_to_r1}, C{forward_to_r1}); its status is C{UP}.
        """
        _, _, _, client = await self.serve()
        _, l2 = await self.listening_node("n2")
        host, port = l2.socket_address.rsplit(":", 1)
        relay = await client.call("POST", "relays", {"name": "r1", "at": f"/ip4/{host}/tcp/{port}"})
        self.assertEqual((relay["alias"], relay["status"]), ("forward_to_r1", "UP"))
        for key in ("r1", "forward_to_r1", "/service/forward_to_r1"):
            self.assertEqual((await client.call("GET", ("relays", key)))["name"], "r1", key)
        await client.call("DELETE", ("relays", "/service/forward_to_r1"))
        self.assertEqual(await client.call("GET", "relays"), [])

    @async_test
    async def test_secure_channel_by_printed_address(self):
        """
        C{/service/HEX} (as C{secure-channel create} prints it) shows and
        closes the channel; so does its bare hex.
        """
        n1, _, _, client = await self.serve()
        _, l2 = await self.listening_node("n2")
        host, port = l2.socket_address.rsplit(":", 1)
        sc = await client.call("POST", "secure-channels", {"to": f"/ip4/{host}/tcp/{port}/service/api", "timeout": 5})
        self.assertEqual(sc["status"], "UP")
        printed = f"/service/{sc['encryptor']}"
        for key in (printed, sc["encryptor"]):
            self.assertEqual(await client.call("GET", ("secure-channels", key)), sc, key)
        closed = await client.call("DELETE", ("secure-channels", printed))
        self.assertEqual((closed["encryptor"], closed["status"]), (sc["encryptor"], "CLOSED"))
        self.assertEqual(await client.call("GET", "secure-channels"), [])
        self.assertEqual(n1.secure_channels, {})


class SecureChannelListTests(ControlAPITestCase):
    @async_test
    async def test_refused_channel_leaves_no_row(self):
        """
        When the initiator refuses the listener's identity, the listener's
        end waits for an identity that never comes: it is not listed (it
        is a half-open handshake in the status), and it cannot be shown as
        a channel of status M5 and no peer.
        """
        n2, l2, controller, client = await self.serve("n2")
        n1 = self.make_node("n1")
        host, port = l2.socket_address.rsplit(":", 1)
        d = n1.create_secure_channel(f"/ip4/{host}/tcp/{port}/service/api", authorized=[OTHER], timeout=5)
        with self.assertRaises(Exception):
            await self.within(d, 5, "the refusal")
        listener = n2.secure_listeners["api"]
        await wait_until(lambda: len(listener.channels) == 1, 5, "the responder end")
        (end,) = listener.channels
        self.assertNotEqual(end.status, UP)
        self.assertEqual(await client.call("GET", "secure-channels"), [])
        info = await client.call("GET", "node")
        self.assertEqual(info["handshakes"]["api"]["half_open"], 1)

    @async_test
    async def test_both_ends_listed_up(self):
        """
        An established channel is listed on both nodes, status C{UP}, with
        the peer's identifier.
        """
        n2, l2, _, client2 = await self.serve("n2")
        n1 = self.make_node("n1")
        host, port = l2.socket_address.rsplit(":", 1)
        await self.within(n1.create_secure_channel(f"/ip4/{host}/tcp/{port}/service/api", timeout=5), 5, "channel")
        await wait_until(lambda: any(e.status == UP for e in n2.secure_listeners["api"].channels), 5, "up")
        (row,) = await client2.call("GET", "secure-channels")
        self.assertEqual((row["role"], row["status"], row["peer"]), ("responder", "UP", n1.identity.identifier))
        shown = await client2.call("GET", ("secure-channels", f"/service/{row['encryptor']}"))
        self.assertEqual(shown, row)


class StatusSpellingTests(ControlAPITestCase):
    @async_test
    async def test_every_status_in_capitals(self):
        """
        The node, an inlet (up and down), a relay and a secure channel
        spell their status the same way: C{UP}, C{DOWN}.
        """
        n1, _, controller, client = await self.serve()
        _, l2 = await self.listening_node("n2")
        host, port = l2.socket_address.rsplit(":", 1)
        route = f"/ip4/{host}/tcp/{port}"
        await client.call("POST", "relays", {"name": "r1", "at": route})
        await client.call("POST", "secure-channels", {"to": f"{route}/service/api"})
        await client.call("POST", "inlets", {"listen": "127.0.0.1:0", "to": f"{route}/service/outlet"})
        down = await client.call("POST", "inlets", {"listen": "127.0.0.1:0", "to": "/ip4/127.0.0.1/tcp/1/service/outlet"})
        await wait_until(lambda: n1.inlets[down["listen"]].status == DOWN, 5, "the inlet to nothing down")
        info = await client.call("GET", "node")
        statuses = {
            "node": info["status"],
            "relay": [r["status"] for r in info["relays"]],
            "inlets": sorted(i["status"] for i in await client.call("GET", "inlets")),
            "channels": [c["status"] for c in await client.call("GET", "secure-channels")],
        }
        self.assertEqual(
            statuses, {"node": "UP", "relay": ["UP"], "inlets": ["DOWN", "UP"], "channels": ["UP"]}
        )
        self.assertEqual((await client.call("GET", ("inlets", down["listen"])))["status"], "DOWN")


class ListenerTests(ControlAPITestCase):
    @async_test
    async def test_listener_twice_refused_as_an_outlet_is(self):
        """
        Creating a listener where one is refused with the words an outlet
        gets; C{api} (the node's own) is restricted instead; a listener is
        deleted by its printed address, C{api} is not deleted.
        """
        node, _, _, client = await self.serve()
        made = await client.call("POST", "secure-channel-listeners", {"address": "/service/l1"})
        self.assertEqual(made["address"], "l1")
        message = await self.refused(client, "POST", "secure-channel-listeners", {"address": "l1"})
        self.assertEqual(message, "address 'l1' is already taken on node n1")
        await client.call("POST", "outlets", {"address": "o1", "to": "127.0.0.1:9"})
        message = await self.refused(client, "POST", "outlets", {"address": "l1", "to": "127.0.0.1:9"})
        self.assertEqual(message, "address 'l1' is already taken on node n1")
        message = await self.refused(client, "POST", "secure-channel-listeners", {"address": "o1"})
        self.assertEqual(message, "address 'o1' is already taken on node n1")

        api = await client.call("POST", "secure-channel-listeners", {"address": "api", "authorized": [OTHER]})
        self.assertEqual(api["authorized"], [OTHER])
        self.assertEqual((await client.call("GET", ("secure-channel-listeners", "/service/api")))["authorized"], [OTHER])

        info = await client.call("GET", "node")
        self.assertIn("api", info["services"])
        self.assertIn("l1", info["services"])

        deleted = await client.call("DELETE", ("secure-channel-listeners", "/service/l1"))
        self.assertEqual(deleted["address"], "l1")
        self.assertNotIn("l1", node.secure_listeners)
        self.assertIsNone(node.worker_at("l1"))
        self.assertNotIn("l1", (await client.call("GET", "node"))["services"])
        message = await self.refused(client, "DELETE", ("secure-channel-listeners", "api"))
        self.assertEqual(message, "the node's own secure channel listener 'api' cannot be deleted")
        message = await self.refused(client, "DELETE", ("secure-channel-listeners", "l1"))
        self.assertEqual(message, "no secure channel listener 'l1' on node n1")

    @async_test
    async def test_deleting_a_listener_closes_its_channels(self):
        n2, l2, _, client = await self.serve("n2")
        await client.call("POST", "secure-channel-listeners", {"address": "l2"})
        n1 = self.make_node("n1")
        host, port = l2.socket_address.rsplit(":", 1)
        enc = await self.within(n1.create_secure_channel(f"/ip4/{host}/tcp/{port}/service/l2", timeout=5), 5, "channel")
        await wait_until(lambda: len(n2.secure_listeners["l2"].channels) == 1, 5, "the responder")
        (end,) = n2.secure_listeners["l2"].channels
        await client.call("DELETE", ("secure-channel-listeners", "l2"))
        self.assertEqual(end.status, CLOSED)
        self.assertIsNone(n2.worker_at(end.decryptor))
        self.assertIn(enc.value, n1.secure_channels)  # (the initiator is not told)


class UnsavedChangeTests(ControlAPITestCase):
    def full_disk(self):
        def write_state(directory, state):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        self.patch(server.st, "write_state", write_state)

    @async_test
    async def test_create_undone_when_state_cannot_be_saved(self):
        """
        A create whose state cannot be written (a full disk) is undone and
        refused in one line naming the file.
        """
        node, _, controller, client = await self.serve()
        path = os.path.join(controller.directory, "state.json")
        self.full_disk()
        for endpoint, body in (
            ("outlets", {"address": "o1", "to": "127.0.0.1:9"}),
            ("inlets", {"listen": "127.0.0.1:0", "to": "/service/o1"}),
            ("secure-channel-listeners", {"address": "l1"}),
        ):
            message = await self.refused(client, "POST", endpoint, body)
            self.assertEqual(
                message, f"cannot save node n1's state to {path}: No space left on device (nothing was changed)", endpoint
            )
        self.assertEqual((node.outlets, node.inlets), ({}, {}))
        self.assertNotIn("l1", node.secure_listeners)
        self.assertIsNone(node.worker_at("o1"))

    @async_test
    async def test_delete_says_it_is_not_saved(self):
        node, _, controller, client = await self.serve()
        await client.call("POST", "outlets", {"address": "o1", "to": "127.0.0.1:9"})
        self.full_disk()
        message = await self.refused(client, "DELETE", ("outlets", "o1"))
        self.assertIn("No space left on device (the change holds until the node stops)", message)
