"""
End-to-end tests of the C{ockam} command line: the real console script (or
C{python -m ockamtw.cli}) run as a subprocess in a fresh C{OCKAM_HOME} per
test, with background nodes listening on free ports (read back from
C{ockam node show NAME --output json}).

Every command is bounded in time.  At cleanup C{ockam node delete --all} runs
and, as a backstop, every pid recorded under C{OCKAM_HOME/nodes/*/pid} (and
any process whose command line names this test's C{OCKAM_HOME}) is killed
(L{tests.cli_harness.CLITestCase}).  Nothing sleeps except bounded polling
for a subprocess or a route to become ready.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from typing import List

from twisted.internet import reactor
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest

from .cli_harness import (
    HEX32,
    CLITestCase,
    connection_refused,
    one_shot,
    port_of,
    process_gone,
    processes_naming,
    tcp_listening_ports,
    unix_socket_paths,
)
from .helpers import async_test, held_port

SEED_HEADERS = ["Transport ID", "Transport Type", "Mode", "Socket address", "Worker address"]


# --- 1. the walkthrough ----------------------------------------------------------------------


class WalkthroughTests(CLITestCase):
    def assertSeedTable(self, text: str, rows: int) -> List[List[str]]:
        """
        C{text} is an ASCII table as the seed shows (rules, padded header
        with the seed's column names, C{rows} rows); returns the row cells.
        """
        lines = text.rstrip("\n").split("\n")
        self.assertEqual(len(lines), 4 + rows, text)
        rule = lines[0]
        self.assertRegex(rule, r"^\+(-+\+){5}$")
        self.assertEqual(lines[2], rule, text)
        self.assertEqual(lines[-1], rule, text)
        bars = [i for i, c in enumerate(rule) if c == "+"]
        cells = []
        for line in [lines[1]] + lines[3 : 3 + rows]:
            self.assertEqual(len(line), len(rule), text)
            self.assertEqual([i for i, c in enumerate(line) if c == "|"], bars, f"columns not aligned:\n{text}")
            row = []
            for a, b in zip(bars, bars[1:]):
                cell = line[a + 1 : b]
                self.assertTrue(cell.startswith(" ") and cell.endswith(" "), f"unpadded cell {cell!r}")
                self.assertFalse(cell.startswith("  "), f"cell not left-aligned {cell!r}")
                row.append(cell.strip())
            cells.append(row)
        self.assertEqual(cells[0], SEED_HEADERS, text)
        return cells[1:]

    @async_test
    async def test_walkthrough_end_to_end(self):
        """
        The seed's local relay and portal walkthrough, then restarts of n1
        and n2, then C{node delete --all}.
        """
        # Relay.  n2 listens, and the inlet below is bound, on held ports
        # (see helpers.held_port): the test checks that they refuse
        # connections while their node is stopped, and that the node takes
        # them back when it starts again; no other program gets them
        # meanwhile.
        n2_port = held_port(self)
        r = await self.ockam("node", "create", "n2", "--tcp-listener-address", f"127.0.0.1:{n2_port}")
        self.assertIn("Name: n2", r.out)
        self.assertIn("Status: UP", r.out)
        await self.ockam("node", "create", "n3")
        r = await self.ockam("forwarder", "create", "n3", "--at", "/node/n2", "--to", "/node/n3")
        self.assertEqual(r.out, "/service/forward_to_n3\n", str(r))
        await self.ockam("node", "create", "n1")
        n2 = await self.listener("n2")
        self.assertEqual(n2, f"127.0.0.1:{n2_port}")
        r = await self.ockam("tcp-connection", "create", "--from", "n1", "--to", n2)
        created = re.fullmatch(
            rf"\n  TCP Connection:\n    ID: ({HEX32})\n    From: /node/n1\n    To: {re.escape(n2)} "
            rf"\(/ip4/127\.0\.0\.1/tcp/{n2_port}\)\n",
            r.out,
        )
        self.assertIsNotNone(created, str(r))

        r = await self.ockam("tcp-connection", "list", "--node", "n1")
        (row,) = self.assertSeedTable(r.out, rows=1)
        self.assertRegex(row[0], rf"^{HEX32}$")
        self.assertEqual(row[1:4], ["TCP", "Remote connection", n2])
        self.assertRegex(row[4], rf"^0#{HEX32}$")
        worker = row[4][2:]
        self.assertEqual(row[0], created.group(1), "tcp-connection create printed another connection")

        r = await self.ockam(
            "message", "send", "hello", "--from", "/node/n1",
            "--to", f"/service/{worker}/service/forward_to_n3/service/uppercase",
        )
        self.assertEqual(r.out, "HELLO\n", str(r))
        r = await self.ockam("message", "send", "hello", "--to", "/node/n2/service/forward_to_n3/service/uppercase")
        self.assertEqual(r.out, "HELLO\n", str(r))

        # Portal.
        http_port = await self.http_server()
        r = await self.ockam(
            "tcp-outlet", "create", "--at", "/node/n3", "--from", "/service/outlet", "--to", f"127.0.0.1:{http_port}"
        )
        self.assertEqual(r.out, "/service/outlet\n", str(r))
        inlet_port = held_port(self)
        r = await self.ockam(
            "tcp-inlet", "create", "--at", "/node/n1", "--from", f"127.0.0.1:{inlet_port}",
            "--to", f"/service/{worker}/service/forward_to_n3/service/outlet",
        )
        self.assertEqual(r.out, "", f"tcp-inlet create prints nothing, as Ockam's:\n{r}")
        inlets = (await self.ockam("tcp-inlet", "list", "--at", "n1", "--output", "json")).json()
        self.assertEqual([i["listen"] for i in inlets], [f"127.0.0.1:{inlet_port}"])

        line = await self.head_until_ok(inlet_port, 5)
        self.assertTrue(line.startswith("HTTP/1.0 200 OK"), line)

        # Restart n1: the same inlet port answers again.
        pid_n1 = (await self.show("n1"))["pid"]
        r = await self.ockam("node", "stop", "n1")
        self.assertTrue(process_gone(pid_n1), f"n1 (pid {pid_n1}) still runs after `node stop`")
        self.assertEqual((await self.show("n1"))["status"], "DOWN")
        self.assertTrue(connection_refused(inlet_port), "the inlet port still accepts while n1 is stopped")
        await self.ockam("node", "start", "n1")
        await self.head_until_ok(inlet_port, 10)

        # Restart n2 (the relay node, and the target of n1's kept connection).
        await self.ockam("node", "stop", "n2")
        await self.ockam("node", "start", "n2")
        self.assertEqual(await self.listener("n2"), n2, "n2 came back on another port")
        await self.head_until_ok(inlet_port, 10)
        r = await self.ockam(
            "message", "send", "hello", "--from", "n1",
            "--to", f"/service/{worker}/service/forward_to_n3/service/uppercase",
        )
        self.assertEqual(r.out, "HELLO\n", str(r))

        # Cleanup, as the seed says.
        pids = self.recorded_pids()
        self.assertEqual(sorted(pids), ["n1", "n2", "n3"])
        r = await self.ockam("node", "delete", "--all")
        self.assertEqual((r.out, r.err), ("", ""))  # as Ockam 0.83: nothing to say
        self.assertNoNodesLeft(pids)
        self.assertTrue(connection_refused(inlet_port), "the inlet still listens after node delete --all")
        self.assertTrue(connection_refused(port_of(n2)), "n2's listener still listens after node delete --all")
        r = await self.ockam("node", "list", "--output", "json")
        self.assertEqual(r.json(), [])


# --- 2. piping ------------------------------------------------------------------------------------


class PipeTests(CLITestCase):
    @async_test
    async def test_pipe_connection_into_message_send(self):
        """
        C{ockam tcp-connection create ... | ockam message send hello --from
        n1 --to -/service/forward_to_n3/service/uppercase} (the route's
        C{-} is the piped worker address, as with Ockam's own CLI).
        """
        setup = await self.relay_setup()
        r = await self.ockam(
            "message", "send", "hello", "--from", "n1", "--to", "-/service/forward_to_n3/service/uppercase",
            stdin=setup["service"] + "\n", check=False,
        )
        self.assertEqual((r.code, r.out), (0, "HELLO\n"), str(r))

    @async_test
    async def test_pipe_equals_form(self):
        """
        The same with C{--to=-/...} and with a bare C{--to -}.
        """
        setup = await self.relay_setup()
        r = await self.ockam(
            "message", "send", "hello", "--from", "n1", "--to=-/service/forward_to_n3/service/uppercase",
            stdin=setup["service"] + "\n",
        )
        self.assertEqual(r.out, "HELLO\n", str(r))
        r = await self.ockam(
            "message", "send", "hello", "--from", "n1", "--to", "-",
            stdin=setup["service"] + "/service/forward_to_n3/service/uppercase\n",
        )
        self.assertEqual(r.out, "HELLO\n", str(r))
        r = await self.ockam(
            "message", "send", "hello", "--from", "n1", "--to=-/service/uppercase", stdin="", check=False
        )
        self.assertUserError(r, "standard input is empty")


# --- 3. --output json ---------------------------------------------------------------------------

NODE_FIELDS = {"name", "status", "pid", "route", "listener", "services", "inlets", "outlets", "relays"}
CONNECTION_FIELDS = {"transport_id", "transport_type", "mode", "socket_address", "worker_address"}
RELAY_FIELDS = {"name", "alias", "at", "status"}
OUTLET_FIELDS = {"address", "target", "connections"}
INLET_FIELDS = {"listen", "route", "status", "connections"}


class JSONOutputTests(CLITestCase):
    def assertFields(self, item, fields: set, what: str) -> None:
        self.assertIsInstance(item, dict, what)
        missing = fields - set(item)
        self.assertEqual(missing, set(), f"{what}: missing fields in {item}")

    @async_test
    async def test_json_everywhere(self):
        setup = await self.relay_setup()
        n2 = setup["n2"]
        r = await self.ockam(
            "tcp-outlet", "create", "--at", "n3", "--from", "/service/outlet", "--to", n2, "--output", "json"
        )  # an outlet only connects when a portal opens: its target is just text here
        self.assertEqual(r.json()["address"], "outlet")
        r = await self.ockam(
            "tcp-inlet", "create", "--at", "n1", "--from", "127.0.0.1:0",
            "--to", f"{setup['service']}/service/forward_to_n3/service/outlet", "--output", "json",
        )
        inlet = r.json()
        self.assertFields(inlet, INLET_FIELDS, "tcp-inlet create")
        self.assertRegex(inlet["listen"], r"^127\.0\.0\.1:[1-9]\d*$")

        # node show
        n1 = await self.show("n1")
        self.assertFields(n1, NODE_FIELDS, "node show")
        self.assertEqual((n1["name"], n1["status"], n1["route"]), ("n1", "UP", "/node/n1"))
        self.assertEqual(n1["pid"], self.recorded_pids()["n1"])
        self.assertRegex(n1["listener"], r"^127\.0\.0\.1:[1-9]\d*$")
        self.assertIn("uppercase", n1["services"])
        self.assertIn("echo", n1["services"])
        self.assertEqual([i["listen"] for i in n1["inlets"]], [inlet["listen"]])
        for i in n1["inlets"]:
            self.assertFields(i, INLET_FIELDS - {"connections"}, "node show inlets")
        n3 = await self.show("n3")
        self.assertEqual([o["address"] for o in n3["outlets"]], ["outlet"])
        self.assertEqual([r_["alias"] for r_ in n3["relays"]], ["forward_to_n3"])

        # node list
        nodes = (await self.ockam("node", "list", "--output", "json")).json()
        self.assertIsInstance(nodes, list)
        self.assertEqual(sorted(n["name"] for n in nodes), ["n1", "n2", "n3"])
        for n in nodes:
            self.assertFields(n, NODE_FIELDS, "node list")
            self.assertEqual(n["status"], "UP")
        self.assertEqual({n["name"]: n["listener"] for n in nodes}["n2"], n2)

        # tcp-connection list
        conns = (await self.ockam("tcp-connection", "list", "--node", "n1", "--output", "json")).json()
        self.assertEqual(len(conns), 1, conns)
        (c,) = conns
        self.assertEqual(set(c), CONNECTION_FIELDS)
        self.assertEqual(
            (c["transport_type"], c["mode"], c["socket_address"], c["worker_address"]),
            ("TCP", "Remote connection", n2, "0#" + setup["worker"]),
        )
        self.assertRegex(c["transport_id"], rf"^{HEX32}$")

        # relay list
        relays = (await self.ockam("relay", "list", "--to", "n3", "--output", "json")).json()
        self.assertEqual(len(relays), 1, relays)
        self.assertFields(relays[0], RELAY_FIELDS, "relay list")
        self.assertEqual(
            {k: relays[0][k] for k in RELAY_FIELDS},
            {"name": "n3", "alias": "forward_to_n3", "at": "/node/n2", "status": "UP"},
        )

        # tcp-outlet list
        outlets = (await self.ockam("tcp-outlet", "list", "--at", "n3", "--output", "json")).json()
        self.assertRegex(outlets[0].pop("alias"), rf"^{HEX32}$")
        self.assertEqual(outlets, [{"address": "outlet", "target": n2, "connections": 0, "authorized": None, "refused": 0}])

        # tcp-inlet list
        inlets = (await self.ockam("tcp-inlet", "list", "--at", "n1", "--output", "json")).json()
        self.assertEqual(len(inlets), 1, inlets)
        self.assertFields(inlets[0], INLET_FIELDS, "tcp-inlet list")
        self.assertEqual(
            (inlets[0]["listen"], inlets[0]["route"]),
            (inlet["listen"], f"{setup['service']}/service/forward_to_n3/service/outlet"),
        )

        # message send
        r = await self.ockam(
            "message", "send", "hello", "--from", "n1", "--output", "json",
            "--to", f"{setup['service']}/service/forward_to_n3/service/uppercase",
        )
        reply = r.json()
        self.assertEqual(reply["reply"], "HELLO")
        self.assertEqual(reply["hex"], b"\x05HELLO".hex())
        self.assertIn("return_route", reply)

    @async_test
    async def test_json_node_show_stopped_node_same_fields(self):
        """
        Stable field names: a stopped node is described with the same
        fields as a running one (C{node show} and C{node list}).
        """
        infos = await self.create_nodes("n1")
        up = await self.show("n1")
        self.assertFields(up, NODE_FIELDS, "node show (UP)")
        await self.ockam("node", "stop", "n1")
        down = await self.show("n1")
        self.assertEqual((down["status"], down["pid"]), ("DOWN", None))
        self.assertEqual(down["listener"], infos["n1"]["listener"])
        (listed,) = (await self.ockam("node", "list", "--output", "json")).json()
        self.assertEqual(sorted(down), sorted(up), "node show: a DOWN node has other fields than an UP one")
        self.assertEqual(sorted(listed), sorted(up), "node list: a DOWN node has other fields than an UP one")


# --- 4. errors -----------------------------------------------------------------------------------


class ErrorTests(CLITestCase):
    @async_test
    async def test_listener_address_in_use(self):
        infos = await self.create_nodes("n1")
        r = await self.ockam("node", "create", "n4", "--tcp-listener-address", infos["n1"]["listener"], check=False)
        self.assertUserError(r, "in use")
        self.assertFalse(os.path.exists(os.path.join(self.nodes_dir, "n4")), "n4's directory was left behind")
        self.assertEqual(processes_naming(os.path.join(self.nodes_dir, "n4")), [], "n4's process was left behind")
        nodes = (await self.ockam("node", "list", "--output", "json")).json()
        self.assertEqual([(n["name"], n["status"]) for n in nodes], [("n1", "UP")])

    @async_test
    async def test_duplicate_node_name(self):
        infos = await self.create_nodes("n1")
        r = await self.ockam("node", "create", "n1", check=False)
        self.assertUserError(r, "already exists")
        after = await self.show("n1")
        self.assertEqual(
            (after["status"], after["pid"], after["listener"]),
            ("UP", infos["n1"]["pid"], infos["n1"]["listener"]),
            "the existing node was disturbed",
        )

    @async_test
    async def test_duplicate_outlet_address(self):
        infos = await self.create_nodes("n1", "n2")
        first, second = infos["n1"]["listener"], infos["n2"]["listener"]  # targets: only text here
        await self.ockam("tcp-outlet", "create", "--at", "n1", "--from", "/service/outlet", "--to", first)
        r = await self.ockam("tcp-outlet", "create", "--at", "n1", "--from", "/service/outlet", "--to", second, check=False)
        self.assertUserError(r, "outlet", "already")
        r = await self.ockam("tcp-outlet", "create", "--at", "n1", "--from", "/service/echo", "--to", second, check=False)
        self.assertUserError(r, "echo", "already")
        outlets = (await self.ockam("tcp-outlet", "list", "--at", "n1", "--output", "json")).json()
        self.assertEqual([(o["address"], o["target"]) for o in outlets], [("outlet", first)])

    @async_test
    async def test_inlet_port_in_use(self):
        infos = await self.create_nodes("n1")
        taken = infos["n1"]["listener"]
        r = await self.ockam("tcp-inlet", "create", "--at", "n1", "--from", taken, "--to", "/service/outlet", check=False)
        self.assertUserError(r, "in use")
        inlets = (await self.ockam("tcp-inlet", "list", "--at", "n1", "--output", "json")).json()
        self.assertEqual(inlets, [])
        # A second inlet on the port of the first one.
        r = await self.ockam("tcp-inlet", "create", "--at", "n1", "--from", "127.0.0.1:0", "--to", "/service/outlet",
                             "--output", "json")
        first = r.json()["listen"]
        r = await self.ockam("tcp-inlet", "create", "--at", "n1", "--from", first, "--to", "/service/outlet", check=False)
        self.assertUserError(r)
        inlets = (await self.ockam("tcp-inlet", "list", "--at", "n1", "--output", "json")).json()
        self.assertEqual([i["listen"] for i in inlets], [first])

    @async_test
    async def test_unknown_node(self):
        # One mistake, one message, whoever resolves the name (the command
        # itself, or node n1 for a route it is given).
        await self.create_nodes("n1")
        expected = "ockam: no node named 'nope' (see: ockam node list)\n"
        for args in (
            ["message", "send", "x", "--from", "nope", "--to", "/service/echo"],
            ["message", "send", "x", "--to", "/node/nope/service/echo", "--timeout", "2"],
            ["message", "send", "x", "--from", "n1", "--to", "/node/nope/service/echo", "--timeout", "2"],
        ):
            r = await self.ockam(*args, check=False)
            self.assertUserError(r)
            self.assertEqual(r.err, expected, str(r))
        r = await self.ockam("tcp-outlet", "list", "--at", "nope", check=False)
        self.assertUserError(r, "nope")
        self.assertEqual(os.listdir(self.nodes_dir), ["n1"])

    @async_test
    async def test_node_down(self):
        await self.create_nodes("n1")
        await self.ockam("node", "stop", "n1")
        r = await self.ockam("tcp-outlet", "list", "--at", "n1", check=False)
        self.assertUserError(r, "n1", "not running")
        r = await self.ockam("message", "send", "x", "--from", "n1", "--to", "/service/echo", check=False)
        self.assertUserError(r, "n1", "not running")
        # As Ockam 0.83: stopping a stopped node is not an error.
        r = await self.ockam("node", "stop", "n1")
        self.assertEqual(r.out, "Stopped node 'n1'\n")

    @async_test
    async def test_route_to_a_stopped_node(self):
        """
        A route through a stopped node: one reason, said once, whether
        the command line or another node would resolve it.
        """
        await self.create_nodes("n1", "n5")
        await self.ockam("node", "stop", "n5")
        expected = "ockam: node n5 is not running (start it with: ockam node start n5)\n"
        for args in (
            ["message", "send", "x", "--to", "/node/n5/service/echo"],
            ["message", "send", "x", "--from", "n1", "--to", "/node/n5/service/echo"],
            ["secure-channel", "create", "--from", "n1", "--to", "/node/n5/service/api"],
            ["relay", "create", "r", "--at", "/node/n5", "--to", "n1"],
            ["tcp-connection", "create", "--from", "n1", "--to", "/node/n5"],
        ):
            r = await self.ockam(*args, check=False)
            self.assertUserError(r)
            self.assertEqual(r.err, expected, str(r))

    @async_test
    async def test_route_timed_out(self):
        await self.create_nodes("n1")
        started = time.monotonic()
        r = await self.ockam("message", "send", "x", "--from", "n1", "--to", "/service/nobody", "--timeout", "0.5", check=False)
        self.assertUserError(r, "/service/nobody")
        self.assertLess(time.monotonic() - started, 8, "the 0.5 s timeout was not honoured")
        r = await self.ockam("message", "send", "x", "--from", "n1", "--to", "/service/echo")
        self.assertEqual(r.out, "x\n", "the node is still usable after a timeout")

    @async_test
    async def test_route_unreachable(self):
        await self.create_nodes("n1")
        stopped = f"127.0.0.1:{held_port(self)}"
        await self.ockam("node", "create", "n5", "--tcp-listener-address", stopped)
        await self.ockam("node", "stop", "n5")
        self.assertTrue(connection_refused(port_of(stopped)))
        r = await self.ockam("tcp-connection", "create", "--from", "n1", "--to", stopped, check=False)
        self.assertUserError(r, stopped)
        conns = (await self.ockam("tcp-connection", "list", "--node", "n1", "--output", "json")).json()
        self.assertEqual(conns, [], "a failed connection was kept")
        with open(os.path.join(self.nodes_dir, "n1", "state.json")) as f:
            self.assertEqual(json.load(f).get("connections", []), [])

    @async_test
    async def test_bad_multiaddr(self):
        await self.create_nodes("n1")
        r = await self.ockam("message", "send", "x", "--from", "n1", "--to", "/bogus/x", check=False)
        self.assertUserError(r, "bogus")
        r = await self.ockam("message", "send", "x", "--to", "/bogus/x", check=False)
        self.assertUserError(r, "bogus")
        r = await self.ockam("tcp-inlet", "create", "--at", "n1", "--from", "127.0.0.1:0", "--to", "/bogus/x", check=False)
        self.assertUserError(r, "bogus")
        r = await self.ockam("tcp-inlet", "create", "--at", "n1", "--from", "nonsense", "--to", "/service/outlet", check=False)
        self.assertUserError(r, "--from")
        inlets = (await self.ockam("tcp-inlet", "list", "--at", "n1", "--output", "json")).json()
        self.assertEqual(inlets, [])

    @async_test
    async def test_start_running_node(self):
        infos = await self.create_nodes("n1")
        r = await self.ockam("node", "start", "n1")  # as Ockam 0.83: said, not an error
        self.assertEqual(r.out, "Restart aborted, node: n1 already running\n")
        self.assertEqual((await self.show("n1"))["pid"], infos["n1"]["pid"])

    @async_test
    async def test_socket_path_too_long(self):
        """
        An OCKAM_HOME so long that the control socket cannot be bound is
        refused up front, with one line saying what to do, and nothing is
        created.
        """
        long_home = os.path.join(self.home, "x" * 90)
        self.env["OCKAM_HOME"] = long_home
        r = await self.ockam("node", "create", "n1", check=False)
        self.assertUserError(r, "longer than 107 bytes", "OCKAM_HOME")
        self.assertFalse(os.path.exists(os.path.join(long_home, "nodes", "n1")))
        self.env["OCKAM_HOME"] = self.home

    @async_test
    async def test_usage_errors(self):
        for args in (["frobnicate"], ["node", "frobnicate"], ["message", "send", "x"], ["node", "create", "--bogus"]):
            r = await self.ockam(*args, check=False)
            self.assertEqual(r.code, 2, str(r))
            self.assertNotIn("Traceback", r.out + r.err, str(r))
            self.assertEqual(len(r.err.splitlines()), 1, str(r))
            self.assertIn("(see: ockam", r.err, str(r))
        self.assertFalse(os.path.exists(self.nodes_dir) and os.listdir(self.nodes_dir))


# --- 5. the control plane -----------------------------------------------------------------------


class ControlPlaneTests(CLITestCase):
    @async_test
    async def test_control_socket(self):
        """
        The control API is HTTP+JSON on OCKAM_HOME/nodes/NAME/control.sock,
        a UNIX socket of mode 0600.
        """
        await self.create_nodes("n1")
        path = os.path.join(self.nodes_dir, "n1", "control.sock")
        st = os.stat(path)
        self.assertTrue(stat.S_ISSOCK(st.st_mode), f"{path} is not a socket")
        self.assertEqual(oct(stat.S_IMODE(st.st_mode)), oct(0o600))
        data = await one_shot(
            UNIXClientEndpoint(reactor, path, timeout=5), b"GET /node HTTP/1.0\r\nHost: node\r\n\r\n", 5
        )
        head, _, body = data.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), head)
        self.assertIn(b"application/json", head.lower())
        info = json.loads(body)
        self.assertEqual((info["name"], info["status"]), ("n1", "UP"))

    @async_test
    async def test_no_tcp_listener_but_ockam_ones(self):
        """
        The node process listens on TCP only on its Ockam listener (and on
        its inlets); the control socket is a UNIX socket.
        """
        if not os.path.exists(f"/proc/{os.getpid()}/net/tcp") or not os.path.isdir(f"/proc/{os.getpid()}/fd"):
            raise SkipTest("/proc/PID/net/tcp and /proc/PID/fd are not available: cannot list a process's listeners")
        infos = await self.create_nodes("n1")
        pid, listener = infos["n1"]["pid"], infos["n1"]["listener"]
        self.assertEqual(tcp_listening_ports(pid), {port_of(listener)})
        self.assertIn(os.path.join(self.nodes_dir, "n1", "control.sock"), unix_socket_paths(pid))
        r = await self.ockam("tcp-inlet", "create", "--at", "n1", "--from", "127.0.0.1:0", "--to", "/service/outlet",
                             "--output", "json")
        inlet = r.json()["listen"]
        self.assertEqual(tcp_listening_ports(pid), {port_of(listener), port_of(inlet)})


# --- 6. state survives a restart --------------------------------------------------------------------


class StateTests(CLITestCase):
    @async_test
    async def test_outlet_and_relay_survive_restart(self):
        await self.create_nodes("n2", "n3")
        r = await self.ockam("forwarder", "create", "n3", "--at", "/node/n2", "--to", "/node/n3")
        self.assertEqual(r.out, "/service/forward_to_n3\n", str(r))
        target = await self.listener("n2")  # an outlet only connects when a portal opens
        await self.ockam("tcp-outlet", "create", "--at", "n3", "--from", "/service/outlet", "--to", target)
        old_pid = self.recorded_pids()["n3"]
        await self.ockam("node", "stop", "n3")
        self.assertTrue(process_gone(old_pid))
        r = await self.ockam("node", "start", "n3", "--output", "json")
        self.assertNotEqual(r.json()["pid"], old_pid)

        outlets = (await self.ockam("tcp-outlet", "list", "--at", "n3", "--output", "json")).json()
        self.assertEqual([(o["address"], o["target"]) for o in outlets], [("outlet", target)])

        end = time.monotonic() + 10
        while True:
            relays = (await self.ockam("relay", "list", "--to", "n3", "--output", "json")).json()
            self.assertEqual([(x["name"], x["alias"], x["at"]) for x in relays], [("n3", "forward_to_n3", "/node/n2")])
            if relays[0]["status"] == "UP" or time.monotonic() > end:
                break
            await deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(relays[0]["status"], "UP", relays)
        r = await self.ockam("message", "send", "hello", "--to", "/node/n2/service/forward_to_n3/service/uppercase")
        self.assertEqual(r.out, "HELLO\n", str(r))
        r = await self.ockam("relay", "list", "--to", "n3")
        self.assertIn("| n3    | /service/forward_to_n3 | /node/n2 | UP     |", r.out)
