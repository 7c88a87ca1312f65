"""
End to end with the real `ockam` command: identities and a secure channel
between nodes, `message send` and an HTTP portal through it, and the errors
a user sees when a peer is refused.
"""

import json
import os
import re
import stat

from .cli_harness import HEX32, CLITestCase, http_head, port_of
from .helpers import async_test

IDENTIFIER = r"P[0-9a-f]{64}"


class SecureChannelCLITests(CLITestCase):
    timeout = 90

    @async_test
    async def test_channel_message_and_portal(self):
        """
        A channel n1 -> n2's relay -> n3's api: `message send` through it
        answers HELLO (also piped with `-`); an outlet on n3 authorized for
        n1's identity serves HTTP through an inlet whose route ends in
        `/secure/api/service/outlet`, and refuses the same outlet through a
        plain route.
        """
        await self.create_nodes("n2", "n3", "n1")
        r = await self.ockam("forwarder", "create", "n3", "--at", "/node/n2", "--to", "/node/n3")
        self.assertEqual(r.out, "/service/forward_to_n3\n")

        n1_id = (await self.ockam("identity", "show", "--node", "n1")).out.strip()
        n3_id = (await self.ockam("identity", "show", "--node", "n3")).out.strip()
        self.assertRegex(n1_id, f"^{IDENTIFIER}$")
        self.assertNotEqual(n1_id, n3_id)
        identity_file = os.path.join(self.nodes_dir, "n1", "identity.json")
        self.assertEqual(stat.S_IMODE(os.stat(identity_file).st_mode), 0o600)

        r = await self.ockam(
            "secure-channel", "create", "--from", "n1", "--to", "/node/n2/service/forward_to_n3/service/api"
        )
        m = re.fullmatch(rf"(/service/{HEX32})\n", r.out)
        self.assertIsNotNone(m, str(r))
        sc = m.group(1)
        r = await self.ockam("message", "send", "hello", "--from", "n1", "--to", f"{sc}/service/uppercase")
        self.assertEqual(r.out, "HELLO\n")
        r = await self.ockam("message", "send", "hello", "--from", "n1", "--to", "-/service/uppercase", stdin=sc + "\n")
        self.assertEqual(r.out, "HELLO\n")
        channels = (await self.ockam("secure-channel", "list", "--at", "n1", "--output", "json")).json()
        self.assertEqual([(c["encryptor"], c["status"], c["peer"]) for c in channels], [(sc[len("/service/"):], "UP", n3_id)])

        web = await self.http_server()
        await self.ockam("tcp-outlet", "create", "--at", "n3", "--to", f"127.0.0.1:{web}", "--authorized", n1_id)
        r = await self.ockam(
            "tcp-inlet", "create", "--at", "n1", "--from", "127.0.0.1:0",
            "--to", "/node/n2/service/forward_to_n3/secure/api/service/outlet", "--authorized", n3_id,
            "--output", "json",
        )
        secure_port = port_of(r.json()["listen"])
        self.assertTrue((await self.head_until_ok(secure_port, 10)).startswith("HTTP/1.0 200 OK"))

        r = await self.ockam(
            "tcp-inlet", "create", "--at", "n1", "--from", "127.0.0.1:0",
            "--to", "/node/n2/service/forward_to_n3/service/outlet", "--output", "json",
        )
        plain_port = port_of(r.json()["listen"])
        # The inlet accepts the client, the outlet refuses the Ping (not
        # through a secure channel from n1), and the client is closed
        # without an answer; the inlet says why.
        line = await http_head(plain_port, seconds=15)
        self.assertEqual(line, "", "the plain route reached the outlet")
        inlets = json.loads((await self.ockam("tcp-inlet", "list", "--at", "n1", "--output", "json")).out)
        [plain] = [i for i in inlets if i["listen"].endswith(f":{plain_port}")]
        self.assertEqual(plain["last_error"], "refused by the outlet: not authorized")

    @async_test
    async def test_refused_peer_and_timeout(self):
        """
        A channel to a peer that is not the authorized one fails with one
        line naming the refused identity; a channel to nothing times out
        with one line; neither leaves a channel behind.
        """
        await self.create_nodes("n1", "n2")
        n2_id = (await self.ockam("identity", "show", "--node", "n2")).out.strip()
        r = await self.ockam(
            "secure-channel", "create", "--from", "n1", "--to", "/node/n2/service/api",
            "--authorized", "P" + "0" * 64, check=False,
        )
        self.assertUserError(r, n2_id, "not authorized")
        r = await self.ockam(
            "secure-channel", "create", "--from", "n1", "--to", "/node/n2/service/nobody",
            "--timeout", "1", check=False,
        )
        self.assertUserError(r, "did not complete within 1 s")
        channels = (await self.ockam("secure-channel", "list", "--at", "n1", "--output", "json")).json()
        self.assertEqual(channels, [])
        # Nor on the listener's side, whose end of the refused channel waits
        # for an identity that never comes (no row of status M5, peer "-").
        channels = (await self.ockam("secure-channel", "list", "--at", "n2", "--output", "json")).json()
        self.assertEqual(channels, [])
        r = await self.ockam("secure-channel", "list", "--at", "n2", "--table")
        self.assertEqual(len(r.out.splitlines()), 3, r.out)
        r = await self.ockam("secure-channel", "list", "--at", "n2")
        self.assertEqual(r.out, "")

    @async_test
    async def test_named_identity_shared(self):
        """
        `identity create alice` then two nodes created with `--identity
        alice` present the same identifier.
        """
        r = await self.ockam("identity", "create", "alice")
        m = re.fullmatch(rf"Default vault created: [0-9a-f]{{8}}\nIdentity created: ({IDENTIFIER})\n", r.out)
        self.assertIsNotNone(m, str(r))
        alice = m.group(1)
        r = await self.ockam("identity", "create", "alice", check=False)
        self.assertUserError(r, "already exists")
        for name in ("a1", "a2"):
            await self.ockam("node", "create", name, "--identity", "alice")
            self.assertEqual((await self.ockam("identity", "show", "--node", name)).out.strip(), alice)
        listing = (await self.ockam("identity", "list", "--output", "json")).json()
        self.assertEqual([(i["name"], i["identifier"], i["default"]) for i in listing], [("alice", alice, True)])
        r = await self.ockam("node", "create", "b1", "--identity", "bob", check=False)
        self.assertUserError(r, "no identity named 'bob'")
        self.assertFalse(os.path.exists(os.path.join(self.nodes_dir, "b1")))

        # `identity delete` is refused while a node uses the identity.
        r = await self.ockam("identity", "delete", "alice", check=False)
        self.assertUserError(r, "identity 'alice' because is currently in use by node 'a1' (and a2)")
        await self.ockam("node", "delete", "a1")
        await self.ockam("node", "delete", "a2")
        r = await self.ockam("identity", "delete", "alice")
        self.assertEqual(r.out, "Identity 'alice' deleted\n")
        self.assertEqual((await self.ockam("identity", "list", "--output", "json")).json(), [])

    @async_test
    async def test_restricted_api_listener_survives_restart(self):
        """
        `secure-channel-listener create api --authorized ID` restricts the
        node's own api listener (a listener already there is updated, not
        refused), and the restriction is restored by `node start`.
        """
        await self.create_nodes("n1", "n2")
        n1_id = (await self.ockam("identity", "show", "--node", "n1")).out.strip()
        other = "P" + "1" * 64
        r = await self.ockam("secure-channel-listener", "create", "api", "--at", "n2", "--authorized", other)
        self.assertEqual(r.out, "/service/api\n")
        await self.ockam("node", "stop", "n2")
        await self.ockam("node", "start", "n2")
        listeners = (await self.ockam("secure-channel-listener", "list", "--at", "n2", "--output", "json")).json()
        self.assertEqual([(l["address"], l["authorized"]) for l in listeners], [("api", [other])])
        await self.ockam("secure-channel-listener", "create", "api", "--at", "n2", "--authorized", n1_id)
        r = await self.ockam("secure-channel", "create", "--from", "n1", "--to", "/node/n2/service/api")
        sc = r.out.strip()
        r = await self.ockam("message", "send", "hi", "--from", "n1", "--to", f"{sc}/service/uppercase")
        self.assertEqual(r.out, "HI\n")
        r = await self.ockam("secure-channel-listener", "create", "echo", "--at", "n2", check=False)
        self.assertUserError(r, "already taken")
