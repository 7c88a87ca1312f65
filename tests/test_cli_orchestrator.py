"""
The Orchestrator through the real C{ockam} command (subprocesses in a
temporary C{OCKAM_HOME}, background processes on free ports, everything
stopped at cleanup): the seed's Orchestrator section exactly as its
commands are written, enrollment from another home with a token, the
non-member's one-line errors, membership (one-time codes, members added
directly, revocation) and the credential C{project authenticate} prints,
policies on a node's outlet, credentials, a standalone authority, and the
Orchestrator process itself (start errors, stop, a stale pid file).
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import sys
import time

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol

from ockamtw.project.credentials import Credential, CredentialData, authenticate_output, format_timestamp
from ockamtw.project.projectinfo import ProjectInfo

from .helpers import async_test, spawn
from .cli_harness import CLITestCase, http_head, port_of, process_gone, processes_naming

HEX64 = r"[0-9a-f]{64}"
IDENTIFIER = r"P[0-9a-f]{64}"
TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


class OrchestratorCLITestCase(CLITestCase):
    timeout = 180

    def setUp(self) -> None:
        # Registered first, so it runs last: after the nodes are deleted.
        self.addCleanup(self._stop_orchestrator)
        CLITestCase.setUp(self)
        for key in ("OCKAMTW_ORCHESTRATOR_URL", "OCKAMTW_ORCHESTRATOR_TOKEN"):
            self.env.pop(key, None)

    async def _stop_orchestrator(self) -> None:
        await self.ockam("orchestrator", "stop", check=False, timeout=30)

    async def start_orchestrator(self) -> dict:
        r = await self.ockam("orchestrator", "start", "--http", "tcp:0:interface=127.0.0.1", "--project-ports", "0",
                             "--output", "json")
        info = r.json()
        self.assertEqual(info["status"], "UP", str(r))
        self.assertRegex(info["url"], r"^http://127\.0\.0\.1:\d+$")
        return info

    async def enrolled(self) -> dict:
        """
        An Orchestrator, this home enrolled, and C{project.json} in the
        home (the project's information).
        """
        await self.start_orchestrator()
        await self.ockam("enroll")
        r = await self.ockam("project", "information", "--output", "json")
        self.write("project.json", r.out)
        return json.loads(r.out)

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.home, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    async def other_home(self, name: str = "b") -> str:
        home = os.path.join(self.home, name)
        os.makedirs(home)
        return home

    async def ockam_at(self, home: str, *args: str, **kw):
        """
        C{ockam ARGS} with C{OCKAM_HOME} set to C{home}.
        """
        saved = self.env, self.home
        self.env = dict(self.env, OCKAM_HOME=home)
        self.home = home
        try:
            return await self.ockam(*args, **kw)
        finally:
            self.env, self.home = saved

    async def identifier(self, name: str, home=None) -> str:
        home = home or self.home
        r = await self.ockam_at(home, "identity", "show", name)
        return r.out.strip()

    def assertMode600(self, path: str) -> None:
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, path)


class SeedTests(OrchestratorCLITestCase):
    @async_test
    async def test_orchestrator_section(self):
        """
        The seed's Orchestrator section, with the commands as written (free
        ports for the Orchestrator, the web server and the inlet), then
        everything deleted and stopped.
        """
        await self.start_orchestrator()
        self.assertMode600(os.path.join(self.home, "orchestrator.json"))
        r = await self.ockam("enroll")
        self.assertRegex(
            r.out,
            r"^\nSpace\n  Id: [0-9a-f-]{36}\n  Name: [0-9a-f]{8}\n  Users: P[0-9a-f]{64}\n\n"
            r"Project created!\n"
            r"Establishing connection \(this can take a few minutes\)\.\.\. \u2714\ufe0e\n\n"
            r"Establishing secure channel\.\.\. \u2714\ufe0e\n\n"
            r"Establishing secure channel to authority\.\.\. \u2714\ufe0e\n\n"
            r"Project\n  Id: [0-9a-f-]{36}\n  Name: default\n  Access route: /dnsaddr/127\.0\.0\.1/tcp/\d+/service/api\n"
            r"  Identity identifier: P[0-9a-f]{64}\n$",
        )
        r = await self.ockam("project", "information", "--output", "json")
        info = ProjectInfo.from_json(r.out)
        self.assertEqual(info.to_json(), r.out)  # exactly as Ockam writes project.json
        self.assertEqual(info.name, "default")
        self.write("project.json", r.out)

        r = await self.ockam("node", "create", "n1", "--project", "project.json", "--details")
        self.assertIn("  Project: default\n", r.out)
        await self.ockam("node", "create", "n3", "--project", "project.json")
        r = await self.ockam("forwarder", "create", "n3", "--at", "/project/default", "--to", "/node/n3")
        self.assertEqual(r.out, "/service/forward_to_n3\n", str(r))
        r = await self.ockam("message", "send", "hello", "--to", "/project/default/service/forward_to_n3/service/uppercase")
        self.assertEqual(r.out, "HELLO\n", str(r))

        web = await self.http_server()
        r = await self.ockam("tcp-outlet", "create", "--at", "/node/n3", "--from", "/service/outlet", "--to",
                             f"127.0.0.1:{web}")
        self.assertEqual(r.out, "/service/outlet\n", str(r))
        r = await self.ockam("tcp-inlet", "create", "--at", "/node/n1", "--from", "127.0.0.1:0", "--to",
                             "/project/default/service/forward_to_n3/service/outlet", "--output", "json")
        inlet = port_of(r.json()["listen"])
        self.assertEqual(await self.head_until_ok(inlet, 10), "HTTP/1.0 200 OK")

        pids = self.recorded_pids()
        await self.ockam("node", "delete", "--all")
        r = await self.ockam("orchestrator", "stop")
        self.assertEqual(r.out, "Orchestrator stopped\n")
        self.assertNoNodesLeft(pids)
        r = await self.ockam("orchestrator", "status", "--output", "json")
        self.assertEqual(r.json()["status"], "DOWN")

    @async_test
    async def test_piped_routes(self):
        """
        C{-} in a route is what the previous command printed, also inside a
        C{/project/NAME} route.
        """
        await self.enrolled()
        await self.ockam("node", "create", "n3")  # an enrolled home: its project and identity by default
        r = await self.ockam("forwarder", "create", "n3", "--at", "/project/default", "--to", "n3")
        r = await self.ockam("message", "send", "hi", "--to", "/project/default/-/service/uppercase", stdin=r.out)
        self.assertEqual(r.out, "HI\n", str(r))
        # Another member (a channel to its own identity is refused).
        await self.ockam("identity", "create", "other")
        await self.ockam("project", "enroll", "--member", await self.identifier("other"))
        await self.ockam("node", "create", "n1", "--identity", "other")
        r = await self.ockam("secure-channel", "create", "--from", "n1", "--to",
                             "/project/default/service/forward_to_n3/service/api")
        self.assertRegex(r.out, r"^/service/[0-9a-f]{32}\n$")
        r = await self.ockam("message", "send", "hi", "--from", "n1", "--to", "-/service/uppercase", stdin=r.out)
        self.assertEqual(r.out, "HI\n", str(r))


class RestartTests(OrchestratorCLITestCase):
    @async_test
    async def test_restart_with_background_nodes(self):
        """
        The seed's Orchestrator section with background nodes and every
        interval at its default, plus a nested inlet
        (C{.../secure/api/...}) from a second member; then C{orchestrator
        stop} and C{start}: C{project information --output json} is
        byte-identical, and both inlets answer HEAD again within 15 s of
        the start, with nothing done to the nodes.
        """
        await self.enrolled()
        before = (await self.ockam("project", "information", "--output", "json")).out
        await self.ockam("identity", "create", "other")
        await self.ockam("project", "enroll", "--member", await self.identifier("other"))
        await self.ockam("node", "create", "n3", "--project", "project.json")
        await self.ockam("node", "create", "n1", "--project", "project.json", "--identity", "other")
        await self.ockam("forwarder", "create", "n3", "--at", "/project/default", "--to", "/node/n3")
        web = await self.http_server()
        await self.ockam("tcp-outlet", "create", "--at", "/node/n3", "--from", "/service/outlet", "--to",
                         f"127.0.0.1:{web}")
        inlets = []
        for route in ("/project/default/service/forward_to_n3/service/outlet",
                      "/project/default/service/forward_to_n3/secure/api/service/outlet"):
            r = await self.ockam("tcp-inlet", "create", "--at", "/node/n1", "--from", "127.0.0.1:0", "--to", route,
                                 "--output", "json")
            inlets.append(port_of(r.json()["listen"]))
            self.assertEqual(await self.head_until_ok(inlets[-1], 10), "HTTP/1.0 200 OK")

        await self.ockam("orchestrator", "stop")
        await self.start_orchestrator()
        started = time.monotonic()
        for port in inlets:
            self.assertEqual(await self.head_until_ok(port, 15 - (time.monotonic() - started)), "HTTP/1.0 200 OK")
        self.assertLess(time.monotonic() - started, 15)
        self.assertEqual((await self.ockam("project", "information", "--output", "json")).out, before)
        r = await self.ockam("relay", "list", "--to", "n3", "--output", "json")
        self.assertEqual([(x["alias"], x["status"]) for x in r.json()], [("forward_to_n3", "UP")])


class EnrollTests(OrchestratorCLITestCase):
    @async_test
    async def test_enroll_twice_and_from_another_home(self):
        """
        C{ockam enroll} again gives the same space and project; another
        home enrolls with a token made by C{orchestrator token create}, and
        uses the project; the bootstrap token cannot enroll a second
        identity.
        """
        orchestrator = await self.start_orchestrator()
        first = (await self.ockam("enroll", "--output", "json")).json()
        again = (await self.ockam("enroll", "--output", "json")).json()
        self.assertEqual(first["project"]["id"], again["project"]["id"])
        self.assertEqual(first["space"]["id"], again["space"]["id"])
        with open(os.path.join(self.home, "orchestrator.json")) as f:
            conf = json.load(f)
        self.assertEqual(conf["url"], orchestrator["url"])

        r = await self.ockam("orchestrator", "token", "create", "--label", "laptop", "--output", "json")
        token = r.json()["token"]
        self.assertTrue(token.startswith("otw_"), str(r))
        self.assertEqual(r.json()["label"], "laptop")

        b = await self.other_home()
        r = await self.ockam_at(b, "enroll", "--orchestrator", orchestrator["url"], "--token", token)
        self.assertIn(f"  Id: {first['project']['id']}\n  Name: default\n", r.out)
        self.assertMode600(os.path.join(b, "orchestrator.json"))
        with open(os.path.join(b, "orchestrator.json")) as f:
            self.assertEqual(json.load(f), {"url": orchestrator["url"], "token": token})
        r = await self.ockam_at(b, "enroll", "--output", "json")  # again, with what it kept
        self.assertEqual(r.json()["project"]["id"], first["project"]["id"])
        r = await self.ockam_at(b, "message", "send", "hi", "--to", "/project/default/service/echo")
        self.assertEqual(r.out, "hi\n", str(r))

        # The bootstrap token belongs to the first home's identity.
        c = await self.other_home("c")
        r = await self.ockam_at(c, "enroll", "--orchestrator", orchestrator["url"], "--token", conf["token"], check=False)
        self.assertUserError(r, "this token was used to enroll another identity")
        self.assertFalse(os.path.exists(os.path.join(c, "orchestrator.json")))
        r = await self.ockam_at(c, "enroll", "--orchestrator", orchestrator["url"], "--token", "otw_" + "x" * 43,
                                check=False)
        self.assertUserError(r, "refused the token given with --token (unknown, revoked or expired token)")
        r = await self.ockam_at(c, "enroll", check=False)
        self.assertUserError(r, "no orchestrator known")
        r = await self.ockam_at(c, "enroll", "--token", token, check=False)
        self.assertEqual(r.code, 2, str(r))

    @async_test
    async def test_spaces_and_projects(self):
        """
        Spaces and projects as Ockam 0.83 prints them.
        """
        await self.enrolled()
        r = await self.ockam("space", "create", "s2")
        self.assertRegex(r.out, r"^Space\n  Id: [0-9a-f-]{36}\n  Name: s2\n  Users: \n$")
        r = await self.ockam("space", "list")
        self.assertIn("| Id ", r.out)
        self.assertIn("| s2 ", r.out)
        r = await self.ockam("project", "create", "s2", "p2")
        self.assertIn("Project created!\n", r.out)
        self.assertRegex(r.out, r"Project\n  Id: [0-9a-f-]{36}\n  Name: p2\n")
        r = await self.ockam("project", "list")
        self.assertRegex(r.out, r"\| p2 +\| +\| s2 +\|")
        r = await self.ockam("project", "show", "p2")
        self.assertRegex(r.out, r"^Project\n  Id: [0-9a-f-]{36}\n  Name: p2\n  Access route: /dnsaddr/.*/service/api\n"
                                r"  Identity identifier: P[0-9a-f]{64}\n$")
        r = await self.ockam("project", "information", "p2")
        self.assertRegex(r.out, r"^Project ID: [0-9a-f-]{36}\nProject identity: P[0-9a-f]{64}\n"
                                r"Authority address: /dnsaddr/.*/service/api\nAuthority identity: [0-9a-f]+\n$")
        self.assertTrue(os.path.exists(os.path.join(self.home, "projects", "p2.json")))
        r = await self.ockam("space", "delete", "s2", check=False)
        self.assertUserError(r, "the space still has projects")
        r = await self.ockam("project", "delete", "s2", "default", check=False)
        self.assertUserError(r, "not in space 's2'")
        r = await self.ockam("project", "delete", "s2", "p2")
        self.assertEqual(r.out, "\u2714\ufe0eProject with name 'p2' has been deleted.\n")
        self.assertFalse(os.path.exists(os.path.join(self.home, "projects", "p2.json")))
        r = await self.ockam("space", "delete", "s2", "--output", "json")
        self.assertEqual(r.json(), {"space": {"name": "s2"}})
        r = await self.ockam("project", "show", "p2", check=False)
        self.assertUserError(r, "no project 'p2'")
        r = await self.ockam("orchestrator", "status")
        self.assertRegex(r.out, r"Projects:\n    default [0-9a-f-]{36} /dnsaddr/")


class TwistdTests(OrchestratorCLITestCase):
    @async_test
    async def test_enroll_finds_an_orchestrator_run_with_twistd(self):
        """
        An Orchestrator run directly (C{ockamtw-orchestrator}, the twistd
        plugin's script) with this home's default data directory is found
        by C{ockam enroll}, which keeps its URL and token.
        """
        from .helpers import script_argv

        data = os.path.join(self.home, "orchestrator")
        argv = script_argv("ockamtw-orchestrator", ["-m", "ockamtw.orchestrator"])
        process = spawn(self, argv + ["--data", data, "--http", "tcp:0:interface=127.0.0.1", "--project-ports", "0"],
                        env={"OCKAM_HOME": self.home})
        await process.wait_for(r"serving http://127\.0\.0\.1:\d+", seconds=20)
        r = await self.ockam("enroll")
        self.assertIn("  Name: default\n", r.out)
        with open(os.path.join(data, "http.json")) as f:
            url = json.load(f)["url"]
        with open(os.path.join(self.home, "orchestrator.json")) as f:
            self.assertEqual(json.load(f)["url"], url)


class NonMemberTests(OrchestratorCLITestCase):
    @async_test
    async def test_non_member_errors(self):
        """
        A node of another home (not a member) gets one line and status 1
        from forwarder create, message send (embedded and from the node) and
        tcp-inlet create, and no inlet is left behind.
        """
        await self.enrolled()
        b = await self.other_home()
        project = os.path.join(self.home, "project.json")
        await self.ockam_at(b, "node", "create", "x", "--project", project)
        route = "/project/default/service/echo"
        for args in (
            ("forwarder", "create", "x1", "--at", "/project/default", "--to", "/node/x"),
            ("message", "send", "hi", "--project-path", project, "--to", route),
            ("message", "send", "hi", "--from", "x", "--to", route),
            ("tcp-inlet", "create", "--at", "x", "--from", "127.0.0.1:0", "--to",
             "/project/default/service/forward_to_n3/service/outlet"),
        ):
            r = await self.ockam_at(b, *args, check=False)
            self.assertEqual(r.code, 70, str(r))  # Ockam 0.83's status for a failed command
            self.assertUserError(r, "not a member of project default")
        r = await self.ockam_at(b, "tcp-inlet", "list", "--at", "x", "--output", "json")
        self.assertEqual(r.json(), [])
        r = await self.ockam_at(b, "relay", "list", "--to", "x", "--output", "json")
        self.assertEqual(r.json(), [])
        await self.ockam_at(b, "node", "delete", "--all")


class DefaultIdentityTests(OrchestratorCLITestCase):
    @async_test
    async def test_member_home_sends_as_its_default_identity(self):
        """
        A home that did not enroll, whose default identity the enroller
        made a member: message send without --from or --identity sends as
        that identity, as Ockam 0.83's embedded node does (it used to send
        as a new identity, refused as no member).
        """
        await self.enrolled()
        b = await self.other_home()
        project = os.path.join(self.home, "project.json")
        await self.ockam_at(b, "identity", "create")
        member = (await self.ockam_at(b, "identity", "show")).out.strip()
        await self.ockam("project", "enroll", "--member", member, "--attribute", "role=member")
        r = await self.ockam_at(b, "message", "send", "hi", "--project-path", project, "--to",
                                "/project/default/service/echo")
        self.assertEqual(r.out, "hi\n")

    @async_test
    async def test_revoked_while_its_node_runs(self):
        """
        A member's node has a relay at the project; the member is revoked:
        its next forwarder create says why in one line at once (its channel
        to the project, closed by the project, used to look alive until
        three pings were missed: "no registration reply").
        """
        await self.enrolled()
        b = await self.other_home()
        project = os.path.join(self.home, "project.json")
        await self.ockam_at(b, "identity", "create", "m")
        member = await self.identifier("m", home=b)
        await self.ockam("project", "enroll", "--member", member, "--attribute", "role=member")
        await self.ockam_at(b, "node", "create", "m1", "--project", project, "--identity", "m")
        r = await self.ockam_at(b, "forwarder", "create", "m1", "--at", "/project/default", "--to", "/node/m1")
        self.assertEqual(r.out, "/service/forward_to_m1\n")
        await self.ockam("project", "revoke", "--member", member)
        r = await self.ockam_at(b, "forwarder", "create", "m2", "--at", "/project/default", "--to", "/node/m1",
                                check=False)
        self.assertEqual(r.code, 70, str(r))
        self.assertUserError(r, "project default refused this node's credential: not a member (revoked?)")
        await self.ockam_at(b, "node", "delete", "--all")


class MembershipTests(OrchestratorCLITestCase):
    def assertAuthenticateOutput(self, text: str, subject: str, issuer_identity: str, attributes: dict) -> None:
        """
        C{text} is exactly what 0.83's C{project authenticate} prints for a
        credential to C{subject} with C{attributes}, signed by the
        authority (rebuilt from the printed fields and checked).
        """
        from ockamtw.secure.identity import import_identity

        authority = import_identity(bytes.fromhex(issuer_identity))
        m = re.fullmatch(
            rf"---\nSchema:     1\nSubject:    ({IDENTIFIER})\nIssuer:     ({IDENTIFIER}) \(OCKAM_RK\)\n"
            rf"Created:    ({TIME})\nExpires:    ({TIME})\nAttributes: (\{{.*\}})\nSignature:  ([0-9a-f]{{128}})\n\n---\n",
            text,
        )
        self.assertIsNotNone(m, text)
        self.assertEqual((m.group(1), m.group(2)), (subject, authority.identifier))
        self.assertEqual(json.loads(m.group(5)), attributes)
        import calendar
        import time

        created = calendar.timegm(time.strptime(m.group(3), "%Y-%m-%dT%H:%M:%SZ"))
        expires = calendar.timegm(time.strptime(m.group(4), "%Y-%m-%dT%H:%M:%SZ"))
        self.assertEqual(expires - created, 30 * 86400)
        self.assertEqual(format_timestamp(created), m.group(3))
        data = CredentialData(subject, authority.identifier, {k: v.encode() for k, v in attributes.items()},
                              created, expires).encode()
        signature = bytes.fromhex(m.group(6))
        authority.verify(data, signature)  # the printed fields are the signed ones
        self.assertEqual(authenticate_output(Credential(data, signature)), text)

    @async_test
    async def test_codes_members_authenticate_revoke(self):
        info = await self.enrolled()
        project_id = info["id"]
        # A one-time code (the enroller's project enroll), redeemed by bob.
        r = await self.ockam("project", "enroll", "--attribute", "role=member")
        self.assertRegex(r.out, rf"^{HEX64}\n$")
        code = r.out.strip()
        await self.ockam("identity", "create", "bob")
        bob = await self.identifier("bob")
        r = await self.ockam("project", "authenticate", "--project-path", "project.json", "--identity", "bob",
                             "--token", code)
        self.assertAuthenticateOutput(r.out, bob, info["authority_identity"], {"project_id": project_id, "role": "member"})
        r = await self.ockam("project", "authenticate", "--project-path", "project.json", "--identity", "bob",
                             "--token", code, check=False)
        self.assertUserError(r, "unknown token")
        r = await self.ockam("project", "authenticate", "--identity", "bob", "--token", "12", check=False)
        self.assertUserError(r, "--token", "64 hex")
        # bob is a member, not an enroller.
        r = await self.ockam("project", "enroll", "--identity", "bob", "-a", "role=member", check=False)
        self.assertUserError(r, "refused", "unauthorized member")

        # A member added directly (prints nothing), then revoked.
        await self.ockam("identity", "create", "carol")
        carol = await self.identifier("carol")
        r = await self.ockam("project", "authenticate", "--identity", "carol", check=False)
        self.assertUserError(r, "unauthorized member")
        r = await self.ockam("project", "enroll", "--member", carol, "--attribute", "role=member",
                             "--attribute", "component=edge")
        self.assertEqual((r.out, r.err), ("", ""))
        r = await self.ockam("project", "authenticate", "--identity", "carol")
        self.assertAuthenticateOutput(r.out, carol, info["authority_identity"],
                                      {"component": "edge", "project_id": project_id, "role": "member"})
        r = await self.ockam("project", "revoke", "--member", carol)
        self.assertEqual(r.out, f"\u2714\ufe0eMember {carol} has been revoked from project 'default'.\n")
        r = await self.ockam("project", "authenticate", "--identity", "carol", check=False)
        self.assertUserError(r, "unauthorized member")
        r = await self.ockam("project", "revoke", "--member", carol, check=False)
        self.assertUserError(r, "is not a member of project default")

        # A code for two uses, with a relay name (attribute ockam-relay).
        r = await self.ockam("project", "enroll", "-a", "role=member", "--relay", "n3", "--usage-count", "2",
                             "--expires-in", "60", "--output", "json")
        self.assertEqual(r.json()["attributes"], {"ockam-relay": "n3", "role": "member"})
        code = r.json()["code"]
        for name in ("dave", "erin"):
            await self.ockam("identity", "create", name)
            r = await self.ockam("project", "authenticate", "--identity", name, "--token", code, "--output", "json")
            self.assertEqual(r.json()["attributes"]["ockam-relay"], "n3")
        r = await self.ockam("project", "enroll", "--member", carol, "--relay", "n3", check=False)
        self.assertEqual(r.code, 2, str(r))


class PolicyTests(OrchestratorCLITestCase):
    @async_test
    async def test_policy_on_the_outlet(self):
        """
        A project node's outlet follows 0.83's default policy; a policy that
        denies makes it refuse; policies are kept across a restart and can
        be listed, shown and deleted (no policy: deny).
        """
        await self.enrolled()
        await self.ockam("node", "create", "n1", "--project", "project.json")
        await self.ockam("node", "create", "n3", "--project", "project.json")
        await self.ockam("forwarder", "create", "n3", "--at", "/project/default", "--to", "/node/n3")
        web = await self.http_server()
        await self.ockam("tcp-outlet", "create", "--at", "n3", "--to", f"127.0.0.1:{web}")
        r = await self.ockam("tcp-inlet", "create", "--at", "n1", "--from", "127.0.0.1:0", "--to",
                             "/project/default/service/forward_to_n3/service/outlet", "--output", "json")
        inlet = port_of(r.json()["listen"])
        await self.head_until_ok(inlet, 10)
        r = await self.ockam("policy", "list", "--at", "n3")
        self.assertEqual(r.out, "tcp-outlet/handle_message: (= resource.project_id subject.project_id)\n")

        r = await self.ockam("policy", "set", "--at", "n3", "--resource", "tcp-outlet", "--expression",
                             '(= subject.component "edge")')
        self.assertEqual((r.out, r.err), ("", ""))
        r = await self.ockam("policy", "show", "--at", "n3", "-r", "tcp-outlet")
        self.assertEqual(r.out, '(= subject.component "edge")\n')
        self.assertEqual(await self.head_refused(inlet), True)
        with open(os.path.join(self.nodes_dir, "n3", "state.json")) as f:
            self.assertEqual(json.load(f)["policies"], {"tcp-outlet": '(= subject.component "edge")'})

        # Kept across a restart (and the relay at the project comes back).
        await self.ockam("node", "stop", "n3")
        await self.ockam("node", "start", "n3")
        r = await self.ockam("policy", "get", "--at", "n3", "-r", "tcp-outlet", "-a", "handle_message")
        self.assertEqual(r.out, '(= subject.component "edge")\n')
        r = await self.ockam("relay", "list", "--to", "n3", "--output", "json")
        self.assertEqual([x["alias"] for x in r.json()], ["forward_to_n3"])

        r = await self.ockam("policy", "set", "--at", "n3", "-r", "tcp-outlet", "-e", "(= resource.project_id", check=False)
        self.assertUserError(r, "bad policy expression")
        r = await self.ockam("policy", "set", "--at", "n3", "-r", "tcp-outlet", "-a", "other", "-e", "true", check=False)
        self.assertUserError(r, "only handle_message")
        await self.ockam("policy", "set", "--at", "n3", "-r", "tcp-outlet", "-e", "(= resource.project_id subject.project_id)")
        self.assertEqual(await self.head_until_ok(inlet, 20), "HTTP/1.0 200 OK")
        await self.ockam("policy", "delete", "--at", "n3", "-r", "tcp-outlet", "-a", "handle_message")
        r = await self.ockam("policy", "list", "--at", "n3", "--output", "json")
        self.assertEqual(r.json(), [])
        self.assertEqual(await self.head_refused(inlet), True)
        r = await self.ockam("policy", "show", "--at", "n3", "-r", "tcp-outlet", check=False)
        self.assertUserError(r, "no policy for resource 'tcp-outlet'")

    async def head_refused(self, port: int) -> bool:
        """
        HEAD through the inlet gets no answer (the outlet refuses).
        """
        try:
            line = await http_head(port, seconds=5)
        except Exception:
            return True
        return line == ""


class CredentialTests(OrchestratorCLITestCase):
    @async_test
    async def test_issue_verify_store_show_list(self):
        await self.ockam("identity", "create", "alice")
        await self.ockam("identity", "create", "bob")
        alice = await self.identifier("alice")
        bob = await self.identifier("bob")
        r = await self.ockam("credential", "issue", "--as", "alice", "--for", bob, "-a", "k=v")
        self.assertRegex(r.out, rf"^Subject:    {bob}\nIssuer:     {alice} \(OCKAM_RK\)\nCreated:    {TIME}\n"
                                rf"Expires:    {TIME}\nAttributes: {{\"k\": \"v\"}}\nSignature:  [0-9a-f]{{128}}\n$")
        r = await self.ockam("credential", "issue", "--as", "alice", "--for", bob, "-a", "k=v", "--encoding", "hex")
        self.assertRegex(r.out, r"^[0-9a-f]+$")
        credential = r.out
        path = self.write("cred.hex", credential + "\n")
        r = await self.ockam("credential", "verify", "--issuer", alice, "--credential", credential)
        self.assertEqual(r.out, "\u2714\ufe0e Verified Credential\n")
        r = await self.ockam("credential", "verify", "--issuer", alice, "--credential-path", path)
        self.assertEqual(r.out, "\u2714\ufe0e Verified Credential\n")
        r = await self.ockam("credential", "verify", "--issuer", bob, "--credential", credential, check=False)
        self.assertUserError(r, "not valid", "not a trusted authority")
        r = await self.ockam("credential", "verify", "--issuer", alice, "--credential", "00" + credential[2:],
                             check=False)
        self.assertUserError(r, "not a credential")
        r = await self.ockam("credential", "store", "c1", "--issuer", alice, "--credential", credential)
        self.assertEqual(r.out, "Credential c1 stored\n")
        self.assertMode600(os.path.join(self.home, "credentials", "c1.json"))
        r = await self.ockam("credential", "show", "c1")
        self.assertTrue(r.out.startswith("Credential: c1 \u2714\ufe0e\nSubject:    " + bob), r.out)
        r = await self.ockam("credential", "list", "--output", "json")
        self.assertEqual([(c["name"], c["verified"], c["subject"]) for c in r.json()], [("c1", True, bob)])
        r = await self.ockam("credential", "store", "c1", "--issuer", alice, "--credential", credential, check=False)
        self.assertUserError(r, "already exists")
        r = await self.ockam("credential", "show", "nope", check=False)
        self.assertUserError(r, "no credential named 'nope'")


class AuthorityTests(OrchestratorCLITestCase):
    @async_test
    async def test_standalone_authority(self):
        """
        C{authority create}: a node whose identity is the authority's; a
        pre-trusted enroller makes a code, a member redeems it; members are
        kept across a restart.
        """
        await self.ockam("identity", "create", "admin")
        admin = await self.identifier("admin")
        trusted = json.dumps({admin: {"ockam-role": "enroller"}})
        r = await self.ockam("authority", "create", "--project-identifier", "proj1", "--tcp-listener-address",
                             "127.0.0.1:0", "--trusted-identities", trusted, "--output", "json")
        node = r.json()
        self.assertEqual(node["authority"]["project_identifier"], "proj1")
        self.assertIn("credential_issuer", node["services"])
        authority = (await self.ockam("identity", "show", "--node", "authority", "--full",
                                       "--encoding", "hex")).out.strip()
        port = port_of(node["listener"])
        route = f"/dnsaddr/127.0.0.1/tcp/{port}/service/api"
        project = {"id": "proj1", "name": "p1", "identity": admin, "access_route": route,
                   "authority_access_route": route, "authority_identity": authority}
        self.write("p1.json", json.dumps(project))
        r = await self.ockam("project", "authenticate", "--project-path", "p1.json", "--identity", "admin",
                             "--output", "json")
        self.assertEqual(r.json()["attributes"], {"ockam-role": "enroller", "project_id": "proj1"})
        code = (await self.ockam("project", "enroll", "--project-path", "p1.json", "--identity", "admin",
                                 "-a", "role=member")).out.strip()
        await self.ockam("identity", "create", "m1")
        r = await self.ockam("project", "authenticate", "--project-path", "p1.json", "--identity", "m1",
                             "--token", code, "--output", "json")
        self.assertEqual(r.json()["attributes"], {"project_id": "proj1", "role": "member"})
        await self.ockam("node", "stop", "authority")
        await self.ockam("node", "start", "authority")
        r = await self.ockam("project", "authenticate", "--project-path", "p1.json", "--identity", "m1",
                             "--output", "json")
        self.assertEqual(r.json()["attributes"], {"project_id": "proj1", "role": "member"})
        r = await self.ockam("authority", "create", "a2", "--project-identifier", "proj1", check=False)
        self.assertEqual(r.code, 2, str(r))
        r = await self.ockam("authority", "create", "a2", "--project-identifier", "proj1", "--trusted-identities",
                             "{\"x\": {}}", check=False)
        self.assertUserError(r, "not an identifier")


class ProcessTests(OrchestratorCLITestCase):
    @async_test
    async def test_start_errors_stop_and_stale_pid(self):
        """
        A port in use and bad options are one line; a second start is
        refused; stop when nothing runs is one line; a pid file naming
        another process is not believed, and that process is not signalled.
        """
        busy = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(Factory.forProtocol(Protocol))
        self.addCleanup(busy.stopListening)
        r = await self.ockam("orchestrator", "start", "--http", str(busy.getHost().port), check=False)
        self.assertUserError(r, "cannot serve HTTP", "address already in use")
        r = await self.ockam("orchestrator", "start", "--project-ports", "9-3", check=False)
        self.assertUserError(r, "--project-ports")
        r = await self.ockam("orchestrator", "stop", check=False)
        self.assertUserError(r, "the orchestrator is not running")

        info = await self.start_orchestrator()
        log = os.path.join(self.home, "orchestrator", "orchestrator.log")
        self.assertMode600(log)
        r = await self.ockam("orchestrator", "start", check=False)
        self.assertUserError(r, f"already running (pid {info['pid']}")
        r = await self.ockam("orchestrator", "logs")
        self.assertEqual(r.out, log + "\n")
        r = await self.ockam("orchestrator", "status", "--output", "json")
        self.assertEqual((r.json()["status"], r.json()["pid"], r.json()["url"]), ("UP", info["pid"], info["url"]))
        await self.ockam("enroll")
        r = await self.ockam("orchestrator", "stop")
        self.assertTrue(process_gone(info["pid"]))
        # Started again: the same data (its project), a new URL kept for the CLI.
        again = await self.start_orchestrator()
        with open(os.path.join(self.home, "orchestrator.json")) as f:
            self.assertEqual(json.load(f)["url"], again["url"])
        r = await self.ockam("project", "list", "--output", "json")
        self.assertEqual([p["name"] for p in r.json()], ["default"])
        await self.ockam("orchestrator", "stop")

        # A stale pid file naming another live process.
        sleeper = spawn(self, [sys.executable, "-c", "import time; time.sleep(60)"])
        pid = sleeper.transport.pid
        with open(os.path.join(self.home, "orchestrator", "pid"), "w") as f:
            f.write(f"{pid}\n")
        r = await self.ockam("orchestrator", "status", "--output", "json")
        self.assertEqual(r.json()["status"], "DOWN")
        r = await self.ockam("orchestrator", "stop", check=False)
        self.assertUserError(r, "not running")
        self.assertFalse(process_gone(pid))
        self.assertEqual(processes_naming(os.path.join(self.home, "orchestrator")), [])
        os.kill(pid, signal.SIGKILL)


class OutputJsonTests(OrchestratorCLITestCase):
    timeout = 300

    async def json_of(self, n: int, *args: str):
        """
        C{ockam ARGS} with C{--output json} before the command, after its
        first word, or at the end (by C{n}); what it printed, as JSON.
        """
        where = n % 3
        if where == 0:
            argv = ("--output", "json") + args
        elif where == 1:
            argv = args[:1] + ("--output", "json") + args[1:]
        else:
            argv = args + ("--output", "json")
        r = await self.ockam(*argv)
        try:
            return json.loads(r.out)
        except ValueError:
            self.fail(f"ockam {' '.join(argv)}: not JSON: {r.out!r}")

    @async_test
    async def test_every_orchestrator_command(self):
        """
        Every command of the Orchestrator, its projects, members, policies,
        credentials and authorities prints one JSON document with
        C{--output json}, wherever the option is on the line.
        """
        await self.start_orchestrator()
        n = iter(range(1000))
        j = lambda *args: self.json_of(next(n), *args)  # noqa: E731
        enrolled = await j("enroll")
        self.assertEqual(enrolled["project"]["name"], "default")
        self.assertEqual(enrolled["project"]["space_name"], enrolled["space"]["name"])
        self.assertEqual((await j("enroll"))["project"]["id"], enrolled["project"]["id"])
        self.assertEqual((await j("orchestrator", "status"))["status"], "UP")
        self.assertIn("log", await j("orchestrator", "logs"))
        self.assertTrue((await j("orchestrator", "token", "create", "--label", "x"))["token"].startswith("otw_"))

        self.assertEqual((await j("space", "create", "s2"))["name"], "s2")
        self.assertEqual(len(await j("space", "list")), 2)
        self.assertEqual((await j("space", "show", "s2"))["name"], "s2")
        created = await j("project", "create", "s2", "p2")
        self.assertEqual((created["name"], created["space_name"]), ("p2", "s2"))
        self.assertEqual(sorted(p["name"] for p in await j("project", "list")), ["default", "p2"])
        self.assertEqual((await j("project", "show", "p2"))["id"], created["id"])
        self.assertEqual((await j("project", "information", "p2"))["id"], created["id"])
        self.assertEqual(await j("project", "delete", "s2", "p2"), {"project": {"name": "p2"}})
        self.assertEqual(await j("space", "delete", "s2"), {"space": {"name": "s2"}})

        info = await j("project", "information")
        self.write("project.json", json.dumps(info))
        await self.ockam("identity", "create", "m1")
        await self.ockam("identity", "create", "m2")
        m1, m2 = await self.identifier("m1"), await self.identifier("m2")
        added = await j("project", "enroll", "--member", m1, "--attribute", "role=edge")
        self.assertEqual(added["member"], m1)
        code = (await j("project", "enroll", "--attribute", "role=edge"))["code"]
        self.assertRegex(code, f"^{HEX64}$")
        credential = await j("project", "authenticate", "--identity", "m2", "--token", code)
        self.assertEqual(credential["attributes"], {"project_id": info["id"], "role": "edge"})
        self.assertEqual((await j("project", "revoke", "--member", m1))["revoked"], True)

        await self.ockam("node", "create", "n1", "--project", "project.json")
        policy = await j("policy", "set", "--at", "n1", "--resource", "tcp-outlet", "--expression", '(= subject.role "edge")')
        self.assertEqual(policy["expression"], '(= subject.role "edge")')
        for action in ("show", "get"):
            self.assertEqual(await j("policy", action, "--at", "n1", "--resource", "tcp-outlet"), policy)
        self.assertEqual(await j("policy", "list", "--at", "n1"), [policy])
        self.assertEqual(await j("policy", "delete", "--at", "n1", "--resource", "tcp-outlet"), policy)

        issued = await j("credential", "issue", "--as", "m1", "--for", m2, "--attribute", "a=b")
        self.write("c.hex", issued["credential"])
        self.assertEqual(await j("credential", "verify", "--issuer", m1, "--credential-path", "c.hex"), {"verified": True})
        self.assertEqual((await j("credential", "store", "c1", "--issuer", m1, "--credential-path", "c.hex"))["name"], "c1")
        self.assertEqual((await j("credential", "show", "c1"))["verified"], True)
        self.assertEqual([c["name"] for c in await j("credential", "list")], ["c1"])

        node = await j("authority", "create", "au", "--project-identifier", "p", "--tcp-listener-address", "127.0.0.1:0",
                       "--trusted-identities", json.dumps({m1: {}}))
        self.assertEqual(node["authority"]["project_identifier"], "p")
        await self.ockam("node", "delete", "--all")
        self.assertEqual((await j("orchestrator", "stop"))["status"], "DOWN")
