"""
Failover between Orchestrator processes on one PostgreSQL database: the
instance serving a project is killed with SIGKILL while a relay is
registered at the project and a connection through an inlet carries
traffic; another instance serves the project within a lease time and a
tick, on the same ports with the same identities (C{project.json} is
unchanged), and the nodes made with C{ockam node create --project} get
their relay back under the same name and their inlet serves new
connections, with nothing done to them.  The killed instance, started
again, takes nothing back while the lease is held; C{ockam orchestrator
status} shows the instances, the project each serves and its lease's age.

The instances: one started with C{ockam orchestrator start}, one with
C{twistd -n ockam-orchestrator}, the same C{--db}, C{--secrets-key-file}
and C{--project-ports} range.  (Several instances in one process, the
database's restart, deletion and concurrent redemption:
L{tests.test_orchestrator_instances}.)
"""

from __future__ import annotations

import json
import os
import re
import signal

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from ockamtw.orchestrator.service import ephemeral_ports
from ockamtw.project.projectinfo import ProjectInfo

from tests.cli_harness import port_of, process_gone
from tests.helpers import async_test
from tests.orchestrator_cluster import Client, InstancesCLITestCase, echo_server, echo_through, poll


class FailoverTests(InstancesCLITestCase):
    @async_test
    async def test_kill_9_failover(self):
        a = await self.start_cli("a")
        b = await self.start_twistd("b")
        await self.ockam("enroll", "--orchestrator", a["url"], "--token", self.token)
        text = (await self.ockam("project", "information", "--output", "json")).out
        with open(os.path.join(self.home, "project.json"), "w") as f:
            f.write(text)
        info = ProjectInfo.from_json(text)
        port = int(info.access_route.split("/")[4])
        self.assertTrue(self.ports[0] <= port <= self.ports[1], (port, self.ports))
        held = await self.instances(b["url"])
        [a_id] = [i for i, v in held.items() if v["http_url"] == a["url"]]
        [b_id] = [i for i, v in held.items() if v["http_url"] == b["url"]]
        self.assertEqual((held[a_id]["projects"], held[b_id]["projects"]), (1, 0))

        # The seed's nodes, relay and portal, through the project.
        await self.ockam("node", "create", "n1", "--project", "project.json")
        await self.ockam("node", "create", "n3", "--project", "project.json")
        r = await self.ockam("forwarder", "create", "n3", "--at", "/project/default", "--to", "/node/n3")
        self.assertEqual(r.out, "/service/forward_to_n3\n", str(r))
        target = await echo_server(self)
        await self.ockam("tcp-outlet", "create", "--at", "/node/n3", "--from", "/service/outlet", "--to",
                         f"127.0.0.1:{target}")
        r = await self.ockam("tcp-inlet", "create", "--at", "/node/n1", "--from", "127.0.0.1:0", "--to",
                             "/project/default/service/forward_to_n3/service/outlet", "--output", "json")
        inlet = port_of(r.json()["listen"])
        self.assertEqual(await echo_through(self, inlet, b"before", seconds=10), b"before")
        live = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", inlet, timeout=5), Client())

        def close():
            if not live.lost.called:
                live.transport.abortConnection()
            return live.lost

        self.addCleanup(close)
        live.transport.write(b"traffic at the kill")
        await live.received(19, 10, "traffic through the inlet")

        # A dies.
        os.kill(a["pid"], signal.SIGKILL)
        killed = reactor.seconds()
        await poll(lambda: process_gone(a["pid"]), 5, "A gone")

        async def served_by_b():
            shown = await self.api(b["url"], "GET", f"/v0/projects/{info.id}")
            return shown["served_by"] == b_id

        await poll(served_by_b, self.lease + self.tick + 2, "B serves the project", every=0.05)
        took_over = reactor.seconds() - killed
        self.assertLess(took_over, self.lease + self.tick + 0.5)
        # The connection that went through A was closed, not left hanging.
        await poll(lambda: live.lost.called, 15, "the connection through the killed instance closed")

        async def new_connection():
            try:
                return await echo_through(self, inlet, b"after", seconds=2) == b"after"
            except Exception:
                return False

        await poll(new_connection, 20, "a new connection through the inlet", every=0.1)
        self.assertLess(reactor.seconds() - killed, 20)

        # Same route, same identities: project.json unchanged; the relay,
        # with the same name and owner, and messages through it.
        after = await self.api(b["url"], "GET", f"/v0/projects/{info.id}/information")
        self.assertEqual(ProjectInfo.from_json(json.dumps(after, indent=2)).to_json(), text)
        relays = await self.api(b["url"], "GET", f"/v0/projects/{info.id}/relays")
        admin = (await self.ockam("identity", "show", "default")).out.strip()
        self.assertEqual([(r["name"], r["owner"]) for r in relays], [("n3", admin)])
        r = await self.ockam("message", "send", "hello", "--to",
                             "/project/default/service/forward_to_n3/service/uppercase")
        self.assertEqual(r.out, "HELLO\n", str(r))

        # A again (the same data, a new instance): it takes nothing back.
        again = await self.start_cli("a")
        self.assertNotEqual(again["pid"], a["pid"])

        async def a_ran_ticks():
            view = await self.instances(b["url"])
            mine = [v for v in view.values() if v["http_url"] == again["url"]]
            return mine and mine[0]["now"] - mine[0]["started_at"] > 4 * self.tick and view

        view = await poll(a_ran_ticks, 10, "four ticks of the restarted A")
        [a2_id] = [i for i, v in view.items() if v["http_url"] == again["url"]]
        self.assertEqual((view[a2_id]["projects"], view[b_id]["projects"]), (0, 1))
        self.assertFalse(view[a_id]["alive"] and view[a_id]["projects"])

        # The status: instances, what each serves, the lease's age.
        r = await self.ockam_at(self.instance_home("a"), "orchestrator", "status", "--output", "json")
        status = r.json()
        self.assertEqual(status["instance"], a2_id)
        by_id = {i["id"]: i for i in status["instances"]}
        self.assertEqual([x["name"] for x in by_id[b_id]["leases"]], ["default"])
        lease = by_id[b_id]["leases"][0]
        self.assertLess(lease["age"], self.tick + 0.5)
        self.assertGreater(lease["held"], 0)
        self.assertEqual(by_id[a2_id]["leases"], [])
        r = await self.ockam_at(self.instance_home("a"), "orchestrator", "status")
        self.assertRegex(r.out, rf"\n    {re.escape(b_id)} {b['url']} alive, seen \d+\.\d s ago, serves 1\n"
                                rf"      default {info.id} held \d+\.\d s, renewed \d+\.\d s ago, \d+\.\d s left\n")
        self.assertRegex(r.out, rf"\n    {re.escape(a2_id)} \(this one\) {again['url']} alive, seen \d+\.\d s ago, serves 0\n")
        self.assertEqual(await echo_through(self, inlet, b"still", seconds=10), b"still")


class StartWarningTests(InstancesCLITestCase):
    @async_test
    async def test_ephemeral_ports_warned_at_start(self):
        """
        C{ockam orchestrator start} prints what the instance warned of as it
        started (from its log): here C{--project-ports} among the ephemeral
        ports, which the document says every instance on PostgreSQL warns
        of (and C{"warnings"} with C{--output json}).
        """
        low, high = ephemeral_ports()
        wanted = f"{low}-{low + 9}"
        options = self.options()
        options[options.index("--project-ports") + 1] = wanted
        home = self.instance_home("w")
        self.addCleanup(lambda: self.ockam_at(home, "orchestrator", "stop", check=False, timeout=30))
        r = await self.ockam_at(home, "orchestrator", "start", *options, timeout=60)
        self.assertIn(f"\n  Warning: --project-ports {wanted} overlaps the ephemeral ports ({low}-{high}): ", r.out)
        await self.ockam_at(home, "orchestrator", "stop", timeout=30)
        r = await self.ockam_at(home, "orchestrator", "start", *options, "--output", "json", timeout=60)
        [warning] = r.json()["warnings"]
        self.assertTrue(warning.startswith(f"--project-ports {wanted} overlaps the ephemeral ports"), warning)
