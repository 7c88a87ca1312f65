"""
The Orchestrator in-process on loopback: its HTTP API (tokens, enrollment,
spaces, projects, members), its project authority and project node as an
Ockam 0.83 client reaches them (secure channels pinned to their identities,
the API framing of shared/spec/ockam-project-api.md), and what survives a
restart.
"""

from __future__ import annotations

import json

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString

from ockamtw import Address, Route, encode_string, decode_string
from ockamtw.orchestrator.service import ENROLL_CONTEXT
from ockamtw.project import codec
from ockamtw.project.codec import CreateToken, Method, OneTimeCode
from ockamtw.project.credentials import Credential, verify
from ockamtw.project.projectinfo import ProjectInfo
from ockamtw.project.service import ApiError, call
from ockamtw.secure.identity import LocalIdentity, import_identity
from ockamtw.status import CLOSED, DOWN, UP

from .helpers import async_test, deadline, wait_until
from .orchestrator_harness import FreezingProxy, OrchestratorTestCase, ProjectTestCase
from .portal_harness import Collector, EchoTarget, TargetFactory


class ApiTests(OrchestratorTestCase):
    @async_test
    async def test_tokens_required(self):
        await self.start()
        await self.api("GET", "/v0/health", token=False)
        r = await self.api("GET", "/v0/projects", token=False, expect=401)
        self.assertEqual(r["error"]["code"], "unauthorized")
        self.token = "otw_" + "x" * 43
        await self.api("GET", "/v0/projects", expect=401)

    @async_test
    async def test_enroll_is_idempotent_and_proved(self):
        await self.start()
        admin = LocalIdentity.create()
        first = await self.enroll(admin)
        self.assertEqual(first["project"]["name"], "default")
        second = await self.enroll(admin)
        self.assertEqual(second["project"]["id"], first["project"]["id"])
        self.assertEqual(second["space"]["id"], first["space"]["id"])
        # A signature that does not prove the identity.
        challenge = (await self.api("GET", "/v0/enroll/challenge"))["challenge"]
        other = LocalIdentity.create()
        r = await self.api(
            "POST", "/v0/enroll",
            {"identity": admin.export().hex(), "challenge": challenge, "signature": other.sign(b"x").hex()},
            expect=403,
        )
        self.assertEqual(r["error"]["code"], "forbidden")
        # The token is bound to the first identity.
        r = await self.enroll_expect(other, 403)

    async def enroll_expect(self, identity, status):
        challenge = (await self.api("GET", "/v0/enroll/challenge"))["challenge"]
        signature = identity.sign(ENROLL_CONTEXT + bytes.fromhex(challenge))
        return await self.api(
            "POST", "/v0/enroll",
            {"identity": identity.export().hex(), "challenge": challenge, "signature": signature.hex()},
            expect=status,
        )

    @async_test
    async def test_errors_are_json(self):
        await self.start()
        r = await self.api("GET", "/v0/projects/nothing", expect=404)
        self.assertEqual(r["error"]["code"], "not_found")
        r = await self.api("POST", "/v0/spaces", {"name": "bad name!"}, expect=400)
        self.assertEqual(r["error"]["code"], "bad_request")
        r = await self.api("DELETE", "/v0/health", expect=405)
        await self.api("POST", "/v0/spaces", {"name": "s1"})
        r = await self.api("POST", "/v0/spaces", {"name": "s1"}, expect=409)
        self.assertEqual(r["error"]["code"], "conflict")


    @async_test
    async def test_numbers_and_attributes_checked(self):
        """
        A token's lifetime is a finite number of seconds (NaN, Infinity,
        true or a lifetime of ages are refused, not stored: a NaN expiry
        would never pass, and neither NaN nor Infinity is JSON to answer
        with); attributes are an object, whatever else is given.
        """
        await self.start()
        for expires_in in (float("nan"), float("inf"), True, 1e300, 0, -1, "60"):
            r = await self.api("POST", "/v0/tokens", {"expires_in": expires_in}, expect=400)
            self.assertEqual(r["error"]["code"], "bad_request", expires_in)
        r = await self.api("POST", "/v0/tokens", {"expires_in": 60.5})
        self.assertIsInstance(r["expires_at"], float)
        project = (await self.enroll(LocalIdentity.create()))["project"]["id"]
        member = LocalIdentity.create().identifier
        for attributes in ([], "", 0, False, ["role", "x"]):
            r = await self.api("POST", f"/v0/projects/{project}/members",
                               {"identifier": member, "attributes": attributes}, expect=400)
            self.assertEqual(r["error"]["message"], "attributes must map text to text", attributes)
            await self.api("POST", f"/v0/projects/{project}/tickets", {"attributes": attributes}, expect=400)
        self.assertEqual(await self.api("GET", f"/v0/projects/{project}/members"), [])
        for body in ({"expires_in": float("nan")}, {"expires_in": 366 * 86400 + 1}, {"usage_count": 1001}):
            await self.api("POST", f"/v0/projects/{project}/tickets", body, expect=400)
        await self.api("POST", f"/v0/projects/{project}/members", {"identifier": member, "attributes": None})


class ProjectTests(OrchestratorTestCase):
    async def enrolled(self):
        await self.start()
        self.admin = LocalIdentity.create()
        enrolled = await self.enroll(self.admin)
        info = await self.api("GET", f"/v0/projects/{enrolled['project']['id']}/information")
        self.info = ProjectInfo.from_json(json.dumps(info, indent=2))
        return info

    @async_test
    async def test_information_and_authority(self):
        """
        project.json has Ockam's shape; the authority issues the admin a
        credential (pre-trusted enroller) that verifies against the
        authority identity in project.json.
        """
        info = await self.enrolled()
        self.assertEqual(list(info), ["id", "name", "identity", "access_route", "authority_access_route", "authority_identity"])
        authority = import_identity(bytes.fromhex(info["authority_identity"]))
        node = self.node("admin", identity=self.admin)
        enc = await self.channel(node, info["authority_access_route"], authority.identifier)
        resp = await call(node, Route([enc, codec.CREDENTIAL_ISSUER]), Method.POST, "/")
        credential = resp.decode_body(Credential.decode)
        data = verify(credential, [authority], self.admin.identifier, int(reactor.seconds()))
        self.assertEqual(data.attribute_text("project_id"), info["id"])
        self.assertEqual(data.attribute_text("ockam-role"), "enroller")

    @async_test
    async def test_stranger_refused_with_403(self):
        info = await self.enrolled()
        authority = import_identity(bytes.fromhex(info["authority_access_route"] and info["authority_identity"]))
        stranger = self.node("stranger")
        enc = await self.channel(stranger, info["authority_access_route"], authority.identifier)
        with self.assertRaises(ApiError) as e:
            await call(stranger, Route([enc, codec.CREDENTIAL_ISSUER]), Method.POST, "/", timeout=5)
        self.assertEqual(int(e.exception.status), 403)

    @async_test
    async def test_enrollment_code_once(self):
        """
        The admin makes a one-time code; a new identity redeems it and gets
        a credential; the code does not work a second time.
        """
        info = await self.enrolled()
        authority = import_identity(bytes.fromhex(info["authority_identity"]))
        admin = self.node("admin", identity=self.admin)
        enc = await self.channel(admin, info["authority_access_route"], authority.identifier)
        resp = await call(admin, Route([enc, codec.ENROLLMENT_TOKEN_ISSUER]), Method.POST, "/",
                          CreateToken({"role": "member"}))
        code = resp.decode_body(OneTimeCode.decode)
        member = self.node("member")
        enc2 = await self.channel(member, info["authority_access_route"], authority.identifier)
        await call(member, Route([enc2, codec.ENROLLMENT_TOKEN_ACCEPTOR]), Method.POST, "/", code)
        resp = await call(member, Route([enc2, codec.CREDENTIAL_ISSUER]), Method.POST, "/")
        data = verify(resp.decode_body(Credential.decode), [authority], member.identity.identifier, int(reactor.seconds()))
        self.assertEqual(data.attribute_text("role"), "member")
        other = self.node("other")
        enc3 = await self.channel(other, info["authority_access_route"], authority.identifier)
        with self.assertRaises(ApiError) as e:
            await call(other, Route([enc3, codec.ENROLLMENT_TOKEN_ACCEPTOR]), Method.POST, "/", code, timeout=5)
        self.assertEqual(e.exception.message, "unknown token")

    @async_test
    async def test_enrollment_code_limits(self):
        """
        A one-time code asked for more uses or a longer life than the
        Orchestrator keeps (ockamtw's CreateToken keys take any u64) is
        refused with 400 at once; it used to fail in the database and
        leave the enroller waiting for an answer that never came.
        """
        info = await self.enrolled()
        authority = import_identity(bytes.fromhex(info["authority_identity"]))
        admin = self.node("admin", identity=self.admin)
        enc = await self.channel(admin, info["authority_access_route"], authority.identifier)
        route = Route([enc, codec.ENROLLMENT_TOKEN_ISSUER])
        for expires_in, usage_count, text in (
            (None, 2 ** 64 - 1, "usage_count is at most 1000"),
            (None, 1001, "usage_count is at most 1000"),
            (2 ** 64 - 1, None, "expires_in is at most 31622400 seconds (a year)"),
        ):
            with self.assertRaises(ApiError) as e:
                await call(admin, route, Method.POST, "/", CreateToken({"role": "x"}, expires_in, usage_count), timeout=5)
            self.assertEqual((int(e.exception.status), e.exception.message), (400, text))
        resp = await call(admin, route, Method.POST, "/", CreateToken({"role": "x"}, 366 * 86400, 1000), timeout=5)
        resp.decode_body(OneTimeCode.decode)

    @async_test
    async def test_authority_fault_answered(self):
        """
        A fault in an authority's service (here the database raising
        what it should not) is answered 500 at once and logged, not left
        unanswered until the caller's time-out.
        """
        info = await self.enrolled()
        authority = import_identity(bytes.fromhex(info["authority_identity"]))
        admin = self.node("admin", identity=self.admin)
        enc = await self.channel(admin, info["authority_access_route"], authority.identifier)
        runtime = self.o.runtimes[info["id"]]

        def broken(*args, **kw):
            raise RuntimeError("a fault")

        runtime.store.add_ticket = broken
        with self.assertRaises(ApiError) as e:
            await call(admin, Route([enc, codec.ENROLLMENT_TOKEN_ISSUER]), Method.POST, "/",
                       CreateToken({"role": "x"}), timeout=5)
        self.assertEqual((int(e.exception.status), e.exception.message), (500, "internal error (see the log)"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @async_test
    async def test_project_node_admits_members_only(self):
        """
        Through the project node: without a credential, echo and relay
        registration are refused; after presenting one, both work, and the
        relay is owned (another member cannot take it).
        """
        info = await self.enrolled()
        authority = import_identity(bytes.fromhex(info["authority_identity"]))
        n3 = self.node("n3", identity=self.admin)
        penc = await self.channel(n3, info["access_route"], info["identity"])
        # Not presented yet: refused.
        with self.assertRaises(Exception):
            await deadline(n3.request(Route([penc, "echo"]), b"x", timeout=0.5), 2, "refused echo")
        aenc = await self.channel(n3, info["authority_access_route"], authority.identifier)
        credential = (await call(n3, Route([aenc, codec.CREDENTIAL_ISSUER]), Method.POST, "/")).decode_body(Credential.decode)
        await call(n3, Route([penc, codec.CREDENTIALS]), Method.POST, codec.PRESENT_PATH, credential)
        reply = await deadline(n3.request(Route([penc, "echo"]), b"hello", timeout=5), 6, "echo")
        self.assertEqual(reply.payload, b"hello")
        relay = await deadline(
            n3.create_relay(Route([penc]), name="n3", service=codec.STATIC_FORWARDING_SERVICE), 6, "relay"
        )
        self.assertEqual(relay.remote_address, Address.local("forward_to_n3"))
        relays = await self.api("GET", f"/v0/projects/{info['id']}/relays")
        self.assertEqual([(r["name"], r["owner"]) for r in relays], [("n3", self.admin.identifier)])


class SeedTests(ProjectTestCase):
    """
    The seed's Orchestrator section with embedded nodes: relay at
    /project/default, a message through it, a portal through it; a
    non-member is refused at once with a sentence.
    """

    @async_test
    async def test_relay_message_and_portal(self):
        info = await self.project()
        n3 = self.member_node("n3", info)
        n1 = self.member_node("n1", info)
        relay = await deadline(
            n3.create_relay("/project/default", name="n3", service=codec.STATIC_FORWARDING_SERVICE), 10, "the relay"
        )
        self.assertEqual(relay.remote_address, Address.local("forward_to_n3"))
        reply = await deadline(
            n1.request("/project/default/service/forward_to_n3/service/uppercase", encode_string("hello"), timeout=10),
            11, "HELLO",
        )
        self.assertEqual(decode_string(reply.payload), "HELLO")

        targets = TargetFactory(EchoTarget)
        from twisted.internet.endpoints import serverFromString

        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(targets)
        self.addCleanup(port.stopListening)
        await n3.create_outlet("outlet", f"127.0.0.1:{port.getHost().port}")
        inlet = await n1.create_inlet("127.0.0.1:0", "/project/default/service/forward_to_n3/service/outlet")
        client = await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", int(inlet.socket_address.rsplit(":", 1)[1])), Collector()
        )
        self.addCleanup(client.transport.abortConnection)
        client.transport.write(b"through the project")
        await client.received(19, 10, "the echo through the project")
        self.assertEqual(bytes(client.data), b"through the project")

    @async_test
    async def test_non_member_refused_at_once(self):
        info = await self.project()
        x = self.member_node("x", info, identity=LocalIdentity.create())
        started = reactor.seconds()
        with self.assertRaises(Exception) as e:
            await deadline(x.create_relay("/project/default", name="x1", service=codec.STATIC_FORWARDING_SERVICE), 10, "refusal")
        self.assertIn("not a member of project default", str(e.exception))
        self.assertLess(reactor.seconds() - started, 5)
        with self.assertRaises(Exception) as e:
            await deadline(x.request("/project/default/service/echo", b"x", timeout=10), 11, "refusal")
        self.assertIn("not a member of project default", str(e.exception))
        relays = await self.api("GET", f"/v0/projects/{info.id}/relays")
        self.assertEqual(relays, [])


class RestartTests(ProjectTestCase):
    """
    Restart the Orchestrator: projects, identities, ports, members and relay
    owners are unchanged, project.json is byte-identical, and live relays
    and inlets come back on their own.
    """

    @async_test
    async def test_restart(self):
        info = await self.project()
        before_json = info.to_json()
        n3 = self.member_node("n3", info)
        n1 = self.member_node("n1", info)
        relay = await deadline(
            n3.create_relay("/project/default", name="n3", service=codec.STATIC_FORWARDING_SERVICE, refresh=0.5,
                            timeout=1.0),
            10, "the relay",
        )
        targets = TargetFactory(EchoTarget)
        from twisted.internet.endpoints import serverFromString

        port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(targets)
        self.addCleanup(port.stopListening)
        await n3.create_outlet("outlet", f"127.0.0.1:{port.getHost().port}")
        inlet = await n1.create_inlet("127.0.0.1:0", "/project/default/service/forward_to_n3/service/outlet")
        inlet_port = int(inlet.socket_address.rsplit(":", 1)[1])

        async def echo(token: bytes):
            client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", inlet_port), Collector())
            self.addCleanup(client.transport.abortConnection)
            client.transport.write(token)
            await client.received(len(token), 10, f"echo of {token!r}")
            self.assertEqual(bytes(client.data), token)
            client.transport.loseConnection()

        await echo(b"before")
        member = await self.new_member(info, {"role": "edge"})
        revoked = await self.new_member(info)
        await self.api("DELETE", f"/v0/projects/{info.id}/members/{revoked.identifier}")
        members = await self.api("GET", f"/v0/projects/{info.id}/members")
        self.assertEqual(sorted((m["identifier"], m["revoked_at"] is None) for m in members),
                         sorted([(member.identifier, True), (revoked.identifier, False)]))
        projects = await self.api("GET", "/v0/projects")

        # Stop the orchestrator and start a new one on the same data.
        await self.o.stopService()
        await wait_until(lambda: relay.status == DOWN, 10, "the relay down")
        await self.start()
        after = await self.api("GET", f"/v0/projects/{info.id}/information")
        self.assertEqual(ProjectInfo.from_json(json.dumps(after, indent=2)).to_json(), before_json)
        def kept(rows):  # which instance serves a project is this process's own id
            return [{k: v for k, v in row.items() if k != "served_by"} for row in rows]

        self.assertEqual(kept(await self.api("GET", "/v0/projects")), kept(projects))  # identities, ports, routes
        self.assertEqual(await self.api("GET", f"/v0/projects/{info.id}/members"), members)
        relays = await self.api("GET", f"/v0/projects/{info.id}/relays")
        self.assertEqual([(r["name"], r["owner"]) for r in relays], [("n3", self.admin.identifier)])
        try:
            await wait_until(lambda: relay.status == UP, 15, "the relay back")
        except AssertionError:
            self.fail(f"the relay did not come back: {relay.last_error}")
        reply = await deadline(
            n1.request("/project/default/service/forward_to_n3/service/uppercase", encode_string("again"), timeout=10),
            11, "AGAIN",
        )
        self.assertEqual(decode_string(reply.payload), "AGAIN")
        await echo(b"after the restart")


class StopTests(ProjectTestCase):
    @async_test
    async def test_stop_waits_for_a_refresh_in_flight(self):
        """
        A project's refresh of its members that is reading the database
        when the Orchestrator stops ends before the database is closed (it
        used to fail on the closed database and log a traceback).
        """
        await self.project()
        (runtime,) = self.o.runtimes.values()
        store = self.o.store
        gate, entered = Deferred(), []
        real = store.members_served_by

        def members_served_by(instance_id):
            entered.append(instance_id)
            return gate.addCallback(lambda _: real(instance_id))

        store.members_served_by = members_served_by
        await wait_until(lambda: entered, 5, "a refresh reading the members")
        stopped = self.o.stopService()
        try:
            await wait_until(lambda: store.pool is None, 1, "the database closed")
        except AssertionError:
            pass  # it waits for the refresh: good
        gate.callback(None)
        await deadline(stopped, 10, "the orchestrator stopped")
        self.assertIsNone(store.pool)


class HealingTests(ProjectTestCase):
    @async_test
    async def test_relay_heals_after_silence(self):
        """
        The path to the project node goes silent without closing (a proxy
        that stops passing bytes): the Medic, pinging every 100 ms, closes
        the channel after three unanswered pings; the relay then resolves
        /project/default again (a new connection, channel and presented
        credential) and registers the same name; messages through it work
        again.
        """
        info = await self.project()
        host, port = info.access_route.split("/")[2], int(info.access_route.split("/")[4])
        self.assertEqual(host, "127.0.0.1")
        proxy = FreezingProxy(port)
        listening = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(proxy)
        self.addCleanup(listening.stopListening)
        self.addCleanup(lambda: [p.transport.abortConnection() for p in proxy.pipes if p.transport])
        proxied = info._replace(access_route=f"/dnsaddr/127.0.0.1/tcp/{listening.getHost().port}/service/api")
        n3 = self.member_node("n3", proxied)
        n3.membership.medic.interval = 0.1
        n1 = self.member_node("n1", info)
        relay = await deadline(
            n3.create_relay("/project/default", name="n3", service=codec.STATIC_FORWARDING_SERVICE, refresh=0.3,
                            timeout=0.5),
            10, "the relay",
        )

        async def hello(text):
            reply = await deadline(
                n1.request("/project/default/service/forward_to_n3/service/uppercase", encode_string(text), timeout=5),
                6, text,
            )
            return decode_string(reply.payload)

        self.assertEqual(await hello("before"), "BEFORE")
        first_channel = n3.membership.project_channel("default")
        self.assertEqual(proxy.freeze(), 2)
        await wait_until(lambda: first_channel.status == CLOSED, 5, "the silent channel closed by the Medic")
        self.assertEqual(n3.membership.medic.closed, 1)
        await wait_until(lambda: relay.status == UP and relay.route[0] != first_channel.encryptor, 10,
                         "the relay registered again through a new channel")
        self.assertEqual(relay.remote_address, Address.local("forward_to_n3"))
        self.assertEqual(await hello("after"), "AFTER")
        relays = await self.api("GET", f"/v0/projects/{info.id}/relays")
        self.assertEqual([(r["name"], r["owner"]) for r in relays], [("n3", self.admin.identifier)])


PLAIN = "/project/default/service/forward_to_n3/service/outlet"
NESTED = "/project/default/service/forward_to_n3/secure/api/service/outlet"


class InletHealingTests(ProjectTestCase):
    """
    Inlets to C{/project/...} routes, plain and nested (a secure channel
    to n3 through its relay at the project, C{.../secure/api/...}), come
    back on their own after the Orchestrator restarts and after a path to
    the project goes silent, on n1's side or on n3's side.
    """

    async def portal(self, route: str, info=None, n1_info=None, n3_info=None, refresh=0.3, timeout=0.5, medic=0.1,
                     ping_timeout=2.0):
        """
        n3 (the admin) with a relay at the project and an outlet to an echo
        server; n1 (another member) with an inlet to C{route}; returns the
        relay and the inlet's port, once a byte went through.
        """
        n1_identity = await self.new_member(info)
        n3 = self.member_node("n3", n3_info or info)
        n1 = self.member_node("n1", n1_info or info, identity=n1_identity)
        self.n1, self.n3 = n1, n3
        if medic is not None:
            for node in (n1, n3):
                node.membership.medic.interval = medic
        relay = await deadline(
            n3.create_relay("/project/default", name="n3", service=codec.STATIC_FORWARDING_SERVICE, refresh=refresh,
                            timeout=timeout),
            10, "the relay",
        )
        await n3.create_outlet("outlet", f"127.0.0.1:{await self.echo_target()}")
        inlet = await n1.create_inlet("127.0.0.1:0", route, ping_timeout=ping_timeout)
        port = int(inlet.socket_address.rsplit(":", 1)[1])
        await self.echo_through(port, b"before")
        return relay, inlet, port

    async def restart(self, route: str) -> None:
        info = await self.project()
        relay, inlet, port = await self.portal(route, info)
        await self.o.stopService()
        await wait_until(lambda: relay.status == DOWN, 10, "the relay down")
        await self.start()
        await wait_until(lambda: relay.status == UP, 15, "the relay back")
        failed = await self.echo_until(port, b"after the restart", 15)
        self.assertEqual(failed, 0, "the first connection after the relay came back failed")

    @async_test
    async def test_default_intervals(self):
        """
        With the default intervals (relay refresh 5 s, Medic 3 s, inlet
        Pong timeout 10 s), the relay and both inlets, plain and nested,
        work again within 15 s of the restart.
        """
        info = await self.project()
        relay, _, plain = await self.portal(PLAIN, info, refresh=5.0, timeout=5.0, medic=None, ping_timeout=10.0)
        nested = await self.n1.create_inlet("127.0.0.1:0", NESTED)
        nested = int(nested.socket_address.rsplit(":", 1)[1])
        await self.echo_through(nested, b"nested before")
        await self.o.stopService()
        await wait_until(lambda: relay.status == DOWN, 10, "the relay down")
        await self.start()
        restarted = reactor.seconds()
        await wait_until(lambda: relay.status == UP, 15, "the relay back")
        await self.echo_until(plain, b"plain after", 15 - (reactor.seconds() - restarted))
        await self.echo_until(nested, b"nested after", 15 - (reactor.seconds() - restarted))
        self.assertLess(reactor.seconds() - restarted, 15)

    @async_test
    async def test_plain_inlet_after_restart(self):
        await self.restart(PLAIN)

    @async_test
    async def test_nested_inlet_after_restart(self):
        await self.restart(NESTED)

    async def silence(self, route: str, side: str) -> None:
        """
        The path of C{side} (n1 or n3) to the project node goes silent
        (a proxy stops passing bytes, the connections stay open); the
        Medic of that node closes its channel; the inlet works again.
        """
        info = await self.project()
        host, port = info.access_route.split("/")[2], int(info.access_route.split("/")[4])
        proxy = FreezingProxy(port)
        listening = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(proxy)
        self.addCleanup(listening.stopListening)
        self.addCleanup(lambda: [p.transport.abortConnection() for p in proxy.pipes if p.transport])
        proxied = info._replace(access_route=f"/dnsaddr/{host}/tcp/{listening.getHost().port}/service/api")
        kw = {"n1_info": proxied} if side == "n1" else {"n3_info": proxied}
        relay, inlet, inlet_port = await self.portal(route, info, **kw)
        silent = self.n1 if side == "n1" else self.n3
        channel = silent.membership.project_channel("default")
        self.assertGreater(proxy.freeze(), 0)
        await wait_until(lambda: channel.status == CLOSED, 5, "the silent channel closed by the Medic")
        if side == "n3":
            await wait_until(lambda: relay.status == UP and relay.route[0] != channel.encryptor, 10,
                             "the relay registered again through a new channel")
        await self.echo_until(inlet_port, b"after the silence", 15)

    @async_test
    async def test_plain_inlet_after_silence_at_n1(self):
        await self.silence(PLAIN, "n1")

    @async_test
    async def test_plain_inlet_after_silence_at_n3(self):
        await self.silence(PLAIN, "n3")

    @async_test
    async def test_nested_inlet_after_silence_at_n1(self):
        await self.silence(NESTED, "n1")

    @async_test
    async def test_nested_inlet_after_silence_at_n3(self):
        await self.silence(NESTED, "n3")


class NestedChannelTests(ProjectTestCase):
    @async_test
    async def test_credentials_both_ways_and_a_policy_on_the_member(self):
        """
        Through C{.../forward_to_n3/secure/api/...} n1 and n3 present their
        credentials to each other: each holds the other's attributes, so a
        policy on n3's outlet about n1's own attribute admits n1's stream;
        the plain route through the project, where n3 sees only the
        project's identity, is refused by that policy.
        """
        info = await self.project()
        edge = await self.new_member(info, {"role": "edge"})
        n3 = self.member_node("n3", info)
        n1 = self.member_node("n1", info, identity=edge)
        await wait_until(lambda: edge.identifier in self.o.runtimes[info.id].members, 5, "n1 a member")
        await deadline(n3.create_relay("/project/default", name="n3", service=codec.STATIC_FORWARDING_SERVICE), 10,
                       "the relay")
        await n3.create_outlet("outlet", f"127.0.0.1:{await self.echo_target()}")
        n3.membership.set_policy("tcp-outlet", '(= subject.role "edge")')
        nested = await n1.create_inlet("127.0.0.1:0", NESTED, ping_timeout=2.0)
        await self.echo_through(int(nested.socket_address.rsplit(":", 1)[1]), b"as edge")
        self.assertEqual(n3.membership.attributes_of(edge.identifier)["role"], b"edge")
        self.assertEqual(n1.membership.attributes_of(self.admin.identifier)["project_id"], info.id.encode())
        plain = await n1.create_inlet("127.0.0.1:0", PLAIN, ping_timeout=2.0)
        with self.assertRaises(AssertionError):
            await self.echo_through(int(plain.socket_address.rsplit(":", 1)[1]), b"as the project", 5)
