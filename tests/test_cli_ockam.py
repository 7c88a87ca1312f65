"""
The command line as an Ockam 0.83 user types it (issue #15, docs/cli.md):
every command through the real C{ockam} console script, in a fresh
C{OCKAM_HOME}, checking the flags, the output (plain, machine when
standard output is a pipe, C{--output json}) and the exit statuses that
Ockam 0.83's own command line has.

Standard output is a pipe in these tests, so where Ockam prints a bare
value for a pipe (C{node delete}, C{secure-channel create}, ...) that is
what is checked.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import time

from .cli_harness import HEX32, CLITestCase, port_of, process_gone
from .helpers import async_test

IDENTIFIER = r"P[0-9a-f]{64}"


def mode_of(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class OckamCLITestCase(CLITestCase):
    timeout = 120

    def assertExit(self, r, code: int, *fragments: str) -> None:
        """
        A failure said in one line, with Ockam's exit status C{code}.
        """
        self.assertUserError(r, *fragments)
        self.assertEqual(r.code, code, str(r))

    def assertUsage(self, r, *fragments: str) -> None:
        self.assertNotIn("Traceback", r.out + r.err, str(r))
        self.assertEqual(r.code, 2, str(r))
        for fragment in fragments:
            self.assertIn(fragment, r.err, str(r))


# --- nodes ------------------------------------------------------------------------------------------------


class NodeTests(OckamCLITestCase):
    @async_test
    async def test_node_show_as_ockam_prints_it(self):
        """
        C{node create} and C{node show}: Ockam's block, a blank line
        first; the default node says so; the verbose route is the
        C{/dnsaddr/localhost/tcp/PORT} MultiAddr (and works as a route);
        the listener, the api listener, inlets, outlets and services each
        as Ockam prints them, addresses as C{/service/NAME}.
        """
        r = await self.ockam("node", "create", "n1")
        self.assertTrue(r.out.startswith("\nNode:\n  Name: n1 (Default)\n  Status: UP\n"), str(r))
        await self.ockam("node", "create", "n2", "-t", "127.0.0.1:0")
        n2 = (await self.ockam("node", "show", "n2", "--output", "json")).json()
        port = port_of(n2["listener"])
        await self.ockam("tcp-outlet", "create", "--at", "n2", "--from", "/service/outlet", "--to", "127.0.0.1:9",
                         "--alias", "web")
        await self.ockam("tcp-inlet", "create", "--at", "n2", "--from", "127.0.0.1:0", "--to", "/node/n1/service/outlet")
        (inlet,) = (await self.ockam("tcp-inlet", "list", "-n", "n2", "--output", "json")).json()
        (listener,) = [t for t in (await self.ockam("tcp-listener", "list", "-n", "n2", "--output", "json")).json()]
        r = await self.ockam("node", "show", "n2")
        self.assertEqual(r.out, "\n".join([
            "",
            "Node:",
            "  Name: n2",
            "  Status: UP",
            "  Route To Node:",
            "    Short: /node/n2",
            f"    Verbose: /dnsaddr/localhost/tcp/{port}",
            f"  Identity: {n2['identity']}",
            "  Transports:",
            "    Transport:",
            "      Type: TCP",
            "      Mode: Listening",
            f"      Socket: 127.0.0.1:{port}",
            f"      Worker: {listener['worker_address']}",
            "  Secure Channel Listeners:",
            "    Listener:",
            "      Address: /service/api",
            "  Inlets:",
            "    Inlet:",
            f"      Listen Address: {inlet['listen']}",
            "      Route To Outlet: /node/n1/service/outlet",
            "  Outlets:",
            "    Outlet:",
            "      Forward Address: 127.0.0.1:9",
            "      Address: /service/outlet",
            "  Services:",
            "    Service:",
            "      Type: uppercase",
            "      Address: /service/uppercase",
            "    Service:",
            "      Type: echo",
            "      Address: /service/echo",
            "    Service:",
            "      Type: hop",
            "      Address: /service/hop",
            "    Service:",
            "      Type: credentials",
            "      Address: /service/credentials",
            "",
        ]))
        r = await self.ockam("message", "send", "hi", "--to", f"/dnsaddr/localhost/tcp/{port}/service/uppercase")
        self.assertEqual(r.out, "HI\n")
        # Without a name: the default node (the first created).
        r = await self.ockam("node", "show")
        self.assertIn("  Name: n1 (Default)\n", r.out)
        # ockamtw's own view.
        r = await self.ockam("node", "show", "n2", "--details")
        self.assertIn(f"  PID: {n2['pid']}\n", r.out)
        # A stopped node: name, status, routes.
        await self.ockam("node", "stop", "n2")
        r = await self.ockam("node", "show", "n2")
        self.assertEqual(r.out, f"\nNode:\n  Name: n2\n  Status: DOWN\n  Route To Node:\n    Short: /node/n2\n"
                                f"    Verbose: /dnsaddr/localhost/tcp/{port}\n")
        r = await self.ockam("node", "list")
        self.assertEqual(r.out.count("\nNode:\n"), 2, r.out)
        r = await self.ockam("node", "list", "--table")
        self.assertRegex(r.out, r"\| n2 +\| DOWN +\|")
        # node start prints the node's block as node show does, once it is up.
        r = await self.ockam("node", "start", "n2")
        self.assertTrue(r.out.startswith(f"\nNode:\n  Name: n2\n  Status: UP\n  Route To Node:\n    Short: /node/n2\n"
                                         f"    Verbose: /dnsaddr/localhost/tcp/{port}\n  Identity: {n2['identity']}\n"), str(r))
        self.assertIn("      Address: /service/outlet\n", r.out)

    @async_test
    async def test_default_node(self):
        """
        The first node created is the default: commands that name no node
        use it, also when there are several; C{node default NAME} changes
        it; deleting it makes another one the default.
        """
        await self.create_nodes("n1")
        await self.create_nodes("n2", "n3")
        await self.ockam("tcp-outlet", "create", "--to", "127.0.0.1:9", "--alias", "o1")
        r = await self.ockam("tcp-outlet", "show", "o1")
        self.assertIn("  Alias: o1\n", r.out)
        r = await self.ockam("tcp-outlet", "show", "o1", "--node", "n2", check=False)
        self.assertExit(r, 70, "NotFound")
        r = await self.ockam("node", "default", "n1")
        self.assertEqual(r.out, "Already set to default node\n")
        r = await self.ockam("node", "default", "n3")
        self.assertEqual(r.out, "Set node 'n3' as default\n")
        r = await self.ockam("tcp-outlet", "list", check=False)
        self.assertExit(r, 74, "No Outlets found on this system!")
        r = await self.ockam("node", "delete")  # the default node: n3
        self.assertEqual(r.out, "n3\n")
        self.assertEqual(sorted(os.listdir(self.nodes_dir)), ["n1", "n2"])
        r = await self.ockam("node", "show", "--output", "json")
        self.assertIn(r.json()["name"], ("n1", "n2"))

    @async_test
    async def test_delete_all_force_and_stop_start(self):
        """
        C{node delete --all --force} (and C{-a -f}) kills every node with
        SIGKILL and removes them; C{node stop --force}; C{node start} of a
        running node says so and exits 0; C{node logs --err}.
        """
        infos = await self.create_nodes("n1", "n2")
        pids = self.recorded_pids()
        # A node that would not stop on SIGTERM: only SIGKILL ends it.
        os.kill(infos["n1"]["pid"], signal.SIGSTOP)
        r = await self.ockam("node", "start", "n2")
        self.assertEqual(r.out, "Restart aborted, node: n2 already running\n")
        r = await self.ockam("node", "start", "n2", "--force", "--output", "json")
        self.assertTrue(process_gone(infos["n2"]["pid"]), "node start --force left the old process")
        infos["n2"] = r.json()
        pids["n2"] = infos["n2"]["pid"]
        r = await self.ockam("node", "logs", "n2", "--err")
        self.assertEqual(r.out, os.path.join(self.nodes_dir, "n2", "node.log") + "\n")
        r = await self.ockam("node", "stop", "n2", "--force")
        self.assertEqual(r.out, "Stopped node 'n2'\n")
        self.assertTrue(process_gone(infos["n2"]["pid"]))
        r = await self.ockam("node", "start", "n2", "--output", "json")
        pids["n2"] = r.json()["pid"]
        started = time.monotonic()
        r = await self.ockam("node", "delete", "--all", "--force", timeout=20)
        self.assertEqual((r.out, r.err), ("", ""))
        # SIGKILL at once: a stopped process would have had 10 s after SIGTERM.
        self.assertLess(time.monotonic() - started, 9)
        self.assertNoNodesLeft(pids)
        await self.create_nodes("n3")
        pids = self.recorded_pids()
        await self.ockam("node", "delete", "-a", "-f")
        self.assertNoNodesLeft(pids)
        r = await self.ockam("node", "list", check=False)
        self.assertExit(r, 74, "No nodes registered on this system!")
        r = await self.ockam("node", "delete", "n1", "--all", check=False)
        self.assertUsage(r, "name a node, or use --all")

    @async_test
    async def test_reset(self):
        """
        C{reset --yes} deletes every node and ockam's state under
        C{$OCKAM_HOME}, leaving a file it did not make; C{reset} asks, and
        anything but y keeps everything.
        """
        await self.create_nodes("n1")
        await self.ockam("identity", "create", "alice")
        mine = os.path.join(self.home, "mine.txt")
        with open(mine, "w") as f:
            f.write("keep me")
        before = sorted(os.listdir(self.home))
        for answer in ("n\n", "", "N\n", "\n"):
            r = await self.ockam("reset", stdin=answer)
            self.assertEqual(r.out, "Please confirm the you really want a full reset (y/N) ")
            self.assertEqual(sorted(os.listdir(self.home)), before)
        self.assertEqual((await self.show("n1"))["status"], "UP")
        pids = self.recorded_pids()
        r = await self.ockam("reset", "--yes")
        self.assertEqual((r.out, r.err), ("", ""))
        self.assertNoNodesLeft(pids)
        self.assertEqual(os.listdir(self.home), ["mine.txt"])
        r = await self.ockam("identity", "list", check=False)
        self.assertExit(r, 74, "No identities registered")
        os.unlink(mine)
        await self.ockam("reset", "-y")
        self.assertFalse(os.path.exists(self.home), "an empty OCKAM_HOME is removed, as Ockam does")
        os.makedirs(self.home)


# --- TCP ------------------------------------------------------------------------------------------------------


class TcpTests(OckamCLITestCase):
    @async_test
    async def test_tcp_connection_and_listener(self):
        """
        C{tcp-connection create}: Ockam's block; with C{--output json}
        Ockam's list with the connection's route (which works as a route);
        C{-f}/C{-t}; list and delete with C{-n}; C{tcp-listener
        create/list/delete}.
        """
        infos = await self.create_nodes("n1", "n2")
        n1_port, n2 = port_of(infos["n1"]["listener"]), infos["n2"]["listener"]
        r = await self.ockam("tcp-connection", "create", "-f", "n1", "-t", n2)
        m = re.fullmatch(rf"\n  TCP Connection:\n    ID: ({HEX32})\n    From: /node/n1\n"
                         rf"    To: {re.escape(n2)} \(/ip4/127\.0\.0\.1/tcp/{port_of(n2)}\)\n", r.out)
        self.assertIsNotNone(m, str(r))
        r = await self.ockam("tcp-connection", "create", "--from", "n1", "--to", n2, "--output", "json")
        self.assertRegex(r.out, rf'^\[\{{"route":"/dnsaddr/localhost/tcp/{n1_port}/worker/{HEX32}"\}}\]\n$')
        route = r.json()[0]["route"]
        r = await self.ockam("message", "send", "hi", "--to", f"{route}/service/uppercase")
        self.assertEqual(r.out, "HI\n")
        conns = (await self.ockam("tcp-connection", "list", "-n", "n1", "--output", "json")).json()
        self.assertEqual(len(conns), 2)
        r = await self.ockam("tcp-connection", "delete", m.group(1), "-n", "n1")
        self.assertEqual(r.out, f"Tcp connection `{m.group(1)}` successfully deleted\n")

        r = await self.ockam("tcp-listener", "create", "127.0.0.1:0", "--at", "n1")
        m = re.fullmatch(rf"Tcp listener created! You can send messages to it via this route:\n"
                         rf"`/dnsaddr/localhost/tcp/{n1_port}/service/({HEX32})`\n", r.out)
        self.assertIsNotNone(m, str(r))
        r = await self.ockam("tcp-listener", "list", "--node", "n1")
        self.assertIn("| Address bind ", r.out)
        listeners = (await self.ockam("tcp-listener", "list", "-n", "n1", "--output", "json")).json()
        (extra,) = [l for l in listeners if l["socket_address"] != infos["n1"]["listener"]]
        r = await self.ockam("message", "send", "hi", "--to", f"/ip4/127.0.0.1/tcp/{port_of(extra['socket_address'])}/service/echo")
        self.assertEqual(r.out, "hi\n")
        r = await self.ockam("tcp-listener", "delete", extra["transport_id"], "-n", "n1")
        self.assertEqual(r.out, f"Tcp listener `{extra['transport_id']}` successfully deleted\n")
        r = await self.ockam("tcp-listener", "delete", infos["n1"]["listener"], "-n", "n1", check=False)
        self.assertExit(r, 70, "the node's own listener cannot be deleted")


# --- identities and vaults ------------------------------------------------------------------------------


class IdentityVaultTests(OckamCLITestCase):
    @async_test
    async def test_identities(self):
        """
        C{identity create NAME} prints C{Identity created: P...} (and the
        default vault it made); a nameless create picks a random name; the
        first identity is the default; C{show --full} prints the change
        history as Ockam does, C{--full --encoding hex} the export;
        C{list}, C{default}; C{delete} (refused while a node uses it).
        """
        from ockamtw.secure.identity import Identity

        r = await self.ockam("identity", "show", check=False)
        self.assertExit(r, 70, "Default identity not found. Have you run 'ockam identity create'?")
        r = await self.ockam("identity", "create", "alice")
        m = re.fullmatch(rf"Default vault created: ([0-9a-f]{{8}})\nIdentity created: ({IDENTIFIER})\n", r.out)
        self.assertIsNotNone(m, str(r))
        vault, alice = m.groups()
        names = []
        for _ in range(2):
            r = await self.ockam("identity", "create", "--output", "json")
            info = r.json()
            self.assertRegex(info["name"], r"^[0-9a-f]{8}$")
            self.assertEqual(info["vault"], vault)
            names.append(info["name"])
        self.assertNotEqual(names[0], names[1])
        r = await self.ockam("identity", "create", "alice", check=False)
        self.assertExit(r, 70, "already exists")

        self.assertEqual((await self.ockam("identity", "show")).out, f"{alice}\n")
        self.assertEqual((await self.ockam("identity", "show", "alice", "--output", "json")).json(),
                         {"identity_id": alice})
        hexed = (await self.ockam("identity", "show", "alice", "--full", "--encoding", "hex")).out.strip()
        identity = Identity.from_export(bytes.fromhex(hexed))
        self.assertEqual(identity.identifier, alice)
        (change,) = identity.changes
        r = await self.ockam("identity", "show", "alice", "-f")
        self.assertEqual(r.out, "\n".join([
            "Change History:",
            "  Change[0]:",
            f"    identifier: {change.change_id.hex()}",
            "    change:",
            f"      prev_change_identifier: {change.change.data.prev_change_id.hex()}",
            "      label:        OCKAM_RK",
            f"      public_key:   Ed25519 {change.change.data.public_key.hex()}",
            "    signatures:",
            f"      [0]: SelfSign {change.signatures[0].data.hex()}",
            "",
        ]))
        r = await self.ockam("identity", "show", "alice", "--encoding", "hex", check=False)
        self.assertUsage(r, "--encoding requires --full")

        r = await self.ockam("identity", "list")
        blocks = r.out.rstrip("\n").split("\n\n")
        self.assertEqual(len(blocks), 3, r.out)
        (i,) = [n for n, b in enumerate(blocks) if "alice" in b]  # listed by name; the others' are random
        self.assertEqual(blocks[i], f"Identity[{i}]:\n  Name: alice (default)\n  Identifier: {alice}")
        r = await self.ockam("identity", "list", "--full")
        self.assertIn(f"Identity[{i}]:\n  Name: alice (default)\n  Change History:\n  Change[0]:\n"
                      f"    identifier: {change.change_id.hex()}\n", r.out)
        r = await self.ockam("identity", "default", names[0])
        self.assertEqual(r.out, f"Identity '{names[0]}' is now the default\n")
        r = await self.ockam("identity", "default", names[0], check=False)
        self.assertExit(r, 70, "is already the default")
        self.assertEqual((await self.ockam("identity", "show", "--output", "json")).json()["identity_id"],
                         (await self.ockam("identity", "show", names[0])).out.strip())

        await self.ockam("node", "create", "a1", "--identity", "alice")
        r = await self.ockam("identity", "delete", "alice", check=False)
        self.assertExit(r, 70, "Can't delete identity 'alice' because is currently in use by node 'a1'")
        await self.ockam("node", "delete", "a1")
        r = await self.ockam("identity", "delete", "alice")
        self.assertEqual(r.out, "Identity 'alice' deleted\n")
        r = await self.ockam("identity", "show", "alice", check=False)
        self.assertExit(r, 70, "Identity 'alice' not found")

    @async_test
    async def test_vaults(self):
        """
        C{vault create/list/show/default/delete} as Ockam prints them; a
        vault is a file of mode 0600 that keeps the keys of the identities
        created with C{--vault}, which hold none themselves; a node uses
        such an identity; a vault that keeps keys is not deleted.
        """
        r = await self.ockam("vault", "list", check=False)
        self.assertExit(r, 70, "No vaults registered on this system!")
        r = await self.ockam("vault", "create", "v1")
        self.assertEqual(r.out, "Vault created: v1\n")
        r = await self.ockam("vault", "create")
        name = re.fullmatch(r"Vault created: ([0-9a-f]{8})\n", r.out).group(1)
        path = os.path.join(self.home, "vaults", "v1.json")
        self.assertEqual(mode_of(path), 0o600)
        self.assertEqual(mode_of(os.path.dirname(path)), 0o700)
        r = await self.ockam("vault", "list")
        self.assertEqual(r.out, "".join(f"Vault[{i}]:\n  Name: {n}\n  Type: OCKAM\n" for i, n in enumerate(sorted([name, "v1"]))))
        self.assertEqual((await self.ockam("vault", "show")).out, "Vault:\n  Name: v1\n  Type: OCKAM\n")
        self.assertEqual((await self.ockam("vault", "default", name)).out, f"Vault '{name}' is now the default\n")
        self.assertEqual((await self.ockam("vault", "show")).out, f"Vault:\n  Name: {name}\n  Type: OCKAM\n")

        r = await self.ockam("identity", "create", "bob", "--vault", "v1")
        bob = re.fullmatch(rf"Identity created: ({IDENTIFIER})\n", r.out).group(1)
        with open(os.path.join(self.home, "identities", "bob.json")) as f:
            doc = json.load(f)
        self.assertNotIn("secret_key", doc)
        self.assertEqual(doc["vault"], "v1")
        with open(path) as f:
            self.assertIn(doc["key_id"], json.load(f)["secrets"])
        infos = await self.create_nodes("b1")
        self.assertNotEqual(infos["b1"]["identity"], bob)
        r = await self.ockam("node", "create", "b2", "--identity", "bob", "--output", "json")
        self.assertEqual(r.json()["identity"], bob)
        r = await self.ockam("node", "create", "b3", "--vault", "v1", "--output", "json")
        b3 = r.json()["identity"]
        self.assertIn(b3, (await self.ockam("identity", "list")).out)
        # A listener presenting bob, whose key is read from v1; --vault
        # must name the vault that keeps it.
        r = await self.ockam("secure-channel-listener", "create", "lb", "--at", "b1", "--identity", "bob",
                             "--vault", name, check=False)
        self.assertExit(r, 70, "identity 'bob' keeps its key in vault v1")
        r = await self.ockam("secure-channel-listener", "create", "lb", "--at", "b1", "--identity", "bob", "--vault", "v1")
        self.assertEqual(r.out, "/service/lb\n")
        r = await self.ockam("secure-channel", "create", "--from", "b3", "--to", "/node/b1/service/lb", "--authorized", bob)
        r = await self.ockam("message", "send", "hi", "--from", "b3", "--to", "-/service/uppercase", stdin=r.out)
        self.assertEqual(r.out, "HI\n")

        r = await self.ockam("vault", "delete", "v1", check=False)
        self.assertExit(r, 70, "vault 'v1' keeps the keys of identity")
        r = await self.ockam("vault", "delete", "nope", check=False)
        self.assertExit(r, 70, "Vault 'nope' not found")
        r = await self.ockam("vault", "create", "--aws-kms", check=False)
        self.assertExit(r, 70, "AWS KMS")
        r = await self.ockam("vault", "delete", name)
        self.assertEqual(r.out, f"{name}\n")  # Ockam's machine output
        r = await self.ockam("vault", "delete", name, check=False)
        self.assertExit(r, 70, f"Vault '{name}' not found")


# --- piping -------------------------------------------------------------------------------------------------


class PipingTests(OckamCLITestCase):
    @async_test
    async def test_dash_anywhere_and_random_forwarder_names(self):
        """
        C{ockam forwarder create --at /node/n2 --to /node/n1 | ockam message
        send hi --to /node/n2/service/hop/-/service/uppercase}: C{/-} in the
        middle of a route is what was piped; a nameless forwarder gets a
        random name, so a second one works too; two arguments with C{/-}
        read a line each.
        """
        await self.create_nodes("n1", "n2")
        names = set()
        for _ in range(2):
            r = await self.ockam("forwarder", "create", "--at", "/node/n2", "--to", "/node/n1")
            m = re.fullmatch(r"(/service/forward_to_[0-9a-f]{8})\n", r.out)
            self.assertIsNotNone(m, str(r))
            names.add(m.group(1))
            r = await self.ockam("message", "send", "hi", "--to", "/node/n2/service/hop/-/service/uppercase", stdin=r.out)
            self.assertEqual(r.out, "HI\n", str(r))
        self.assertEqual(len(names), 2)
        relay = sorted(names)[0]
        r = await self.ockam("message", "send", "hi", "-f", "/node/-", "-t", "/node/n2/-/service/echo",
                             stdin=f"n1\n{relay}\n")
        self.assertEqual(r.out, "hi\n", str(r))
        r = await self.ockam("message", "send", "hi", "--to", "/node/n2/-/service/echo", check=False)
        self.assertExit(r, 70, "standard input is empty")
        # A name with a dash in it is a name, not a pipe.
        r = await self.ockam("message", "send", "a/-b", "--to", "/node/n1/service/echo")
        self.assertEqual(r.out, "a/-b\n")

    @async_test
    async def test_secure_channel_printed_as_ockam(self):
        """
        C{secure-channel create}: its address on standard output when
        that is a pipe, C{[{"address": ...}]} with C{--output json};
        C{list} prints addresses for a pipe; C{delete} its address.
        """
        await self.create_nodes("n1", "n2")
        r = await self.ockam("secure-channel", "create", "--from", "n1", "--to", "/node/n2/service/api")
        self.assertRegex(r.out, rf"^/service/{HEX32}\n$")
        sc = r.out.strip()
        r = await self.ockam("secure-channel", "create", "--from", "n1", "--to", "/node/n2/service/api", "--output", "json")
        self.assertRegex(r.out, rf'^\[\{{"address":"/service/{HEX32}"\}}\]\n$')
        r = await self.ockam("secure-channel", "list", "--at", "n1")
        listed = r.out.splitlines()
        self.assertEqual(len(listed), 2, r.out)
        self.assertIn(sc, listed)
        for line in listed:
            self.assertRegex(line, rf"^/service/{HEX32}$")
        # Ockam's block: a label, then a space, then the value; the
        # identifiers the channel was created to accept, else "none".
        r = await self.ockam("secure-channel", "show", sc, "--at", "n1")
        self.assertEqual(r.out, f"\n  Secure Channel:\n  \u2022         At:  {sc}\n"
                                "  \u2022         To:  /node/n2/service/api\n  \u2022 Authorized:  none\n")
        n2 = (await self.ockam("identity", "show", "--node", "n2")).out.strip()
        r = await self.ockam("secure-channel", "create", "--from", "n1", "--to", "/node/n2/service/api",
                             "--authorized", n2, "--authorized", "P" + "0" * 64)
        r = await self.ockam("secure-channel", "show", r.out.strip(), "--at", "n1")
        self.assertTrue(r.out.endswith(f"  \u2022 Authorized:  P{'0' * 64}\n\t{n2}\n"), str(r))
        r = await self.ockam("secure-channel", "delete", sc, "--at", "n1")
        self.assertEqual(r.out, f"{sc}\n")


# --- portals ----------------------------------------------------------------------------------------------


class PortalTests(OckamCLITestCase):
    @async_test
    async def test_inlets_and_outlets_by_alias(self):
        """
        C{--alias} on create; C{list}, C{show} and C{delete} with
        C{--node}/C{-n} and by alias, printing Ockam's fields; an unknown
        alias is C{NotFound}; aliases survive a restart; a random alias
        when none is given.
        """
        await self.create_nodes("n1", "n2")
        web = await self.http_server()
        r = await self.ockam("tcp-outlet", "create", "--at", "n2", "--from", "/service/outlet", "--to",
                             f"127.0.0.1:{web}", "--alias", "web")
        self.assertEqual(r.out, "/service/outlet\n")
        r = await self.ockam("tcp-outlet", "create", "--at", "n2", "--from", "o2", "--to", "127.0.0.1:9", "--alias", "a:b",
                             check=False)
        self.assertUsage(r, "an alias must not contain ':' characters")
        r = await self.ockam("tcp-inlet", "create", "--at", "n1", "--from", "127.0.0.1:0", "--to",
                             "/node/n2/service/outlet", "--alias", "webin")
        self.assertEqual(r.out, "")
        r = await self.ockam("tcp-inlet", "show", "webin", "--node", "n1")
        m = re.fullmatch(r"Inlet:\n  Alias: webin\n  TCP Address: (127\.0\.0\.1:\d+)\n"
                         r"  To Outlet Address: /node/n2/service/outlet\n", r.out)
        self.assertIsNotNone(m, str(r))
        listen = m.group(1)
        await self.head_until_ok(port_of(listen), 10)
        r = await self.ockam("tcp-outlet", "show", "web", "-n", "n2")
        self.assertEqual(r.out, f"Outlet:\n  Alias: web\n  From Outlet: /service/outlet\n  To TCP: 127.0.0.1:{web}\n")
        r = await self.ockam("tcp-outlet", "create", "--at", "n2", "--from", "o3", "--to", "127.0.0.1:9")
        r = await self.ockam("tcp-outlet", "list", "--node", "n2")
        blocks = re.findall(r"Outlet:\n  Alias: (\S+)\n  From Outlet: (\S+)\n  To TCP: (\S+)\n", r.out)
        self.assertEqual(len(blocks), 2, r.out)
        self.assertIn(("web", "/service/outlet", f"127.0.0.1:{web}"), blocks)
        (other,) = [b for b in blocks if b[0] != "web"]
        self.assertRegex(other[0], f"^{HEX32}$")
        r = await self.ockam("tcp-inlet", "list", "-n", "n1")
        self.assertEqual(r.out, f"Inlet:\n  Alias: webin\n  TCP Address: {listen}\n  To Outlet Address: /node/n2/service/outlet\n")

        for kind, node in (("tcp-inlet", "n1"), ("tcp-outlet", "n2")):
            for action in ("show", "delete"):
                r = await self.ockam(kind, action, "nope", "--node", node, check=False)
                self.assertExit(r, 70, "Status code: NotFound", "alias nope not found")

        await self.ockam("node", "stop", "n2")
        await self.ockam("node", "start", "n2")
        self.assertEqual((await self.ockam("tcp-outlet", "show", "web", "-n", "n2", "--output", "json")).json()["alias"], "web")
        await self.head_until_ok(port_of(listen), 10)
        r = await self.ockam("tcp-outlet", "delete", "web", "--node", "n2")
        self.assertEqual(r.out, "web\n")
        r = await self.ockam("tcp-inlet", "delete", "webin", "--node", "n1", "--output", "json")
        self.assertEqual(r.json(), {"tcp-inlet": {"alias": "webin", "node": "n1"}})
        r = await self.ockam("tcp-inlet", "list", "--node", "n1", check=False)
        self.assertExit(r, 74, "No Inlets found on this system!")
        r = await self.ockam("tcp-outlet", "delete", other[0], "-n", "n2", "-q")
        self.assertEqual(r.out, "")


# --- secure channels, services, workers ----------------------------------------------------------------


class SecureChannelListenerTests(OckamCLITestCase):
    @async_test
    async def test_listener_with_identity_and_shared_identity(self):
        """
        C{secure-channel-listener create NAME --at NODE --identity I}: the
        listener presents I (a channel that authorizes I is made, one that
        authorizes the node's own identity is refused), and still does
        after a restart; two nodes created with the same identity open a
        secure channel to each other.
        """
        r = await self.ockam("identity", "create", "i1")
        i1 = r.out.strip().rsplit(" ", 1)[1]
        infos = await self.create_nodes("n1", "n2")
        r = await self.ockam("secure-channel-listener", "create", "l1", "--at", "n2", "--identity", "i1")
        self.assertEqual(r.out, "/service/l1\n")
        r = await self.ockam("secure-channel-listener", "create", "l2", "--at", "n2", "--vault", "v", check=False)
        self.assertUsage(r, "--vault requires --identity")
        r = await self.ockam("secure-channel-listener", "create", "l3", "--at", "n2", "--identity", "nobody", check=False)
        self.assertExit(r, 70, "Identity 'nobody' not found")
        r = await self.ockam("secure-channel-listener", "list", "--node", "n2")
        self.assertEqual(r.out, "Secure channel listeners for node `n2`:\n  0#api\n  0#l1\n")
        r = await self.ockam("secure-channel-listener", "show", "l1", "--at", "n2")
        self.assertEqual(r.out, "/service/l1\n")
        for restart in (False, True):
            if restart:
                await self.ockam("node", "stop", "n2")
                await self.ockam("node", "start", "n2")
            r = await self.ockam("secure-channel", "create", "--from", "n1", "--to", "/node/n2/service/l1",
                                 "--authorized", i1)
            sc = r.out.strip()
            r = await self.ockam("message", "send", "hi", "--from", "n1", "--to", f"{sc}/service/uppercase")
            self.assertEqual(r.out, "HI\n")
            r = await self.ockam("secure-channel", "create", "--from", "n1", "--to", "/node/n2/service/l1",
                                 "--authorized", infos["n2"]["identity"], check=False)
            self.assertExit(r, 70, i1, "not authorized")
        r = await self.ockam("secure-channel-listener", "delete", "l1", "--at", "n2")
        self.assertEqual(r.out, "Deleted secure-channel listener with address '/service/l1' on node 'n2'\n")

        await self.ockam("node", "create", "a1", "--identity", "i1")
        await self.ockam("node", "create", "a2", "--identity", "i1")
        for here, there in (("a1", "a2"), ("a2", "a1")):
            r = await self.ockam("secure-channel", "create", "--from", here, "--to", f"/node/{there}/service/api",
                                 "--authorized", i1)
            r = await self.ockam("message", "send", "hi", "--from", here, "--to", "-/service/uppercase", stdin=r.out)
            self.assertEqual(r.out, "HI\n")
        # A node's own identity coming back from a peer is still refused.
        r = await self.ockam("secure-channel", "create", "--from", "n1", "--to", "/node/n1/service/api", check=False)
        self.assertExit(r, 70, "our own identity")


class ServiceWorkerTests(OckamCLITestCase):
    @async_test
    async def test_services_and_workers(self):
        """
        C{service list} as Ockam prints it; C{service start uppercase
        --addr A} starts one more, listed and kept across a restart;
        Ockam's services ockamtw does not have are refused in one line;
        C{worker list}.
        """
        await self.create_nodes("n1")
        r = await self.ockam("service", "list", "-n", "n1")
        self.assertEqual(r.out, "Services:" + "".join(
            f"\n  Service: \n    Type: {t}\n    Address: /service/{t}" for t in ("uppercase", "echo", "hop", "credentials")
        ) + "\n")
        r = await self.ockam("service", "start", "uppercase", "--addr", "up2")
        self.assertEqual(r.out, "Uppercase service started at address: up2\n")
        r = await self.ockam("service", "start", "echo", "--addr", "up2", check=False)
        self.assertExit(r, 70, "already taken")
        r = await self.ockam("service", "start", "vault", check=False)
        self.assertExit(r, 70, "not available in ockamtw")
        await self.ockam("node", "stop", "n1")
        await self.ockam("node", "start", "n1")
        r = await self.ockam("message", "send", "hi", "--to", "/node/n1/service/up2")
        self.assertEqual(r.out, "HI\n")
        services = (await self.ockam("service", "list", "--output", "json")).json()
        self.assertIn({"address": "up2", "type": "uppercase"}, services)
        r = await self.ockam("worker", "list", "--at", "n1")
        lines = r.out.splitlines()
        self.assertEqual(lines[:2], ["Node: n1", "  Workers:"])
        for worker in ("0#uppercase", "0#up2", "0#api", "0#hop"):
            self.assertIn(f"    {worker}", lines)


# --- the command line itself --------------------------------------------------------------------------------


class GlobalTests(OckamCLITestCase):
    @async_test
    async def test_global_flags_and_statuses(self):
        """
        Ockam's global flags are taken anywhere on the line; C{--quiet} and
        C{--verbose} do not go together; usage mistakes exit 2, failures
        70 (Ockam's status), nothing to list 74; C{--test-argument-parser}
        only parses.
        """
        for args in (["-q", "vault", "list", "--output", "json"], ["vault", "list", "-v", "--output", "json"],
                     ["vault", "-vv", "list", "--no-color", "--output", "json"], ["--no-input", "vault", "list", "--output", "json"]):
            r = await self.ockam(*args)
            self.assertEqual(r.out, "[]\n", str(r))
        r = await self.ockam("-q", "-v", "node", "list", check=False)
        self.assertUsage(r, "--quiet and --verbose cannot be used together")
        r = await self.ockam("node", "create", "--test-argument-parser")
        self.assertEqual((r.out, r.err), ("", ""))
        self.assertFalse(os.path.exists(self.nodes_dir) and os.listdir(self.nodes_dir))
        r = await self.ockam("node", "bogus", check=False)
        self.assertUsage(r, "invalid choice")
        r = await self.ockam("node", "show", "nope", check=False)
        self.assertExit(r, 70, "no node named 'nope'")
        r = await self.ockam("node", "list", check=False)
        self.assertExit(r, 74, "No nodes registered on this system!")
        r = await self.ockam("reset", "--no-input")
        self.assertEqual(r.out, "")

    @async_test
    async def test_completion(self):
        """
        C{completion --shell bash|zsh|fish} prints a script; bash's is
        valid bash and completes commands, actions and options.
        """
        r = await self.ockam("completion", "--shell", "bash")
        script = os.path.join(self.home, "ockam.bash")
        with open(script, "w") as f:
            f.write(r.out)
        probe = (
            f"source {script}\n"
            "COMP_WORDS=(ockam tcp-in); COMP_CWORD=1; _ockam; echo ${COMPREPLY[@]}\n"
            "COMP_WORDS=(ockam tcp-inlet s); COMP_CWORD=2; _ockam; echo ${COMPREPLY[@]}\n"
            "COMP_WORDS=(ockam tcp-inlet create --al); COMP_CWORD=3; _ockam; echo ${COMPREPLY[@]}\n"
        )
        out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=20)
        self.assertEqual(out.stdout.splitlines(), ["tcp-inlet", "show", "--alias"], out.stderr)
        for shell, first in (("zsh", "#compdef ockam"), ("fish", "# ockam completion for fish")):
            r = await self.ockam("completion", "-s", shell)
            self.assertTrue(r.out.startswith(first), r.out[:100])
        r = await self.ockam("completion", "--shell", "powershell", check=False)
        self.assertUsage(r, "--shell")
