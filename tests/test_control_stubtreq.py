"""
The control API's HTTP face (L{ControlResource}) in one process and in
memory: requests made with L{treq.testing.StubTreq} to a resource around a
L{NodeController} of a node on a L{ListeningReactor} (a
L{MemoryReactorClock} whose TCP ports behave as the kernel's), with a state
directory in the test's temporary directory.  No socket is opened and no
time passes.

Each test checks what a client sees (the status, the JSON answer, an error
as C{{"error": "one line"}}) and what the node and its C{state.json} hold
afterwards: outlets, inlets and secure channel listeners are listed, shown,
created and deleted; an unknown one is 404, a taken address 409, a bad body
400; a change that cannot be saved is undone (507).  L{tests.test_control_api}
calls the same API over its UNIX socket with the command line's client.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from urllib.parse import quote

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from ockamtw import Node
from ockamtw.control import state as st
from ockamtw.control.server import ControlError, ControlResource, NodeController
from ockamtw.portal.outlet import Outlet
from ockamtw.secure.channel import SecureChannelListener

from .memory_harness import ListeningReactor

#: An identifier of nobody on these nodes.
OTHER = "P" + "1" * 64
#: What a bad C{authorized} gets.
BAD_AUTHORIZED = "authorized must be a list of identifiers (P + 64 lowercase hex)"


def not_an_identifier(text: str) -> str:
    return f"authorized: not an identifier (P + 64 lowercase hex): {text!r}"


class ControlResourceTestCase(SynchronousTestCase):
    """
    A started node C{n1} on a L{ListeningReactor} (C{self.node},
    C{self.reactor}), its controller with a state directory
    (C{self.directory}), and C{self.call} to make requests to its
    L{ControlResource} through L{StubTreq}.
    """

    def setUp(self) -> None:
        self.reactor = ListeningReactor()
        self.node = Node(self.reactor, name="n1")
        self.node.startService()
        self.addCleanup(self._stop_node)
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        st.write_state(self.directory, st.empty_state("n1", None))
        self.controller = NodeController(self.node, self.directory, pid=4242)
        self.stub = StubTreq(ControlResource(self.controller))

    def _stop_node(self) -> None:
        self.successResultOf(self.node.stopService())

    def call(self, method: str, *path: str, body=None, raw=None):
        """
        C{METHOD /PATH} with C{body} as JSON (or the bytes C{raw}); each
        part of C{path} is one URL segment (quoted).  Returns the status
        and the decoded JSON answer, after checking its content type.
        """
        url = "http://n1/" + "/".join(quote(p, safe="") for p in path)
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        d = self.stub.request(method, url, data=data)
        self.stub.flush()
        response = self.successResultOf(d)
        content = self.stub.content(response)
        self.stub.flush()
        text = self.successResultOf(content)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"], text)
        return response.code, json.loads(text)

    def ok(self, method: str, *path: str, body=None):
        """
        L{call} that must answer 200; returns the JSON answer.
        """
        code, answer = self.call(method, *path, body=body)
        self.assertEqual(code, 200, answer)
        return answer

    def refused(self, status: int, method: str, *path: str, body=None, raw=None) -> str:
        """
        L{call} that must answer C{status} with C{{"error": TEXT}} and
        nothing else; returns TEXT.
        """
        code, answer = self.call(method, *path, body=body, raw=raw)
        self.assertEqual(code, status, answer)
        self.assertEqual(list(answer), ["error"], answer)
        self.assertIsInstance(answer["error"], str)
        self.assertNotIn("\n", answer["error"])
        return answer["error"]

    def saved(self) -> dict:
        """
        The node's C{state.json}, as the node process would read it back.
        """
        return st.load_state(self.directory)


class OutletTests(ControlResourceTestCase):
    def test_create_list_show_delete(self):
        """
        An outlet is created, listed, shown by its alias, its name or
        printed address, and deleted: the node's workers and C{state.json}
        follow.
        """
        self.assertEqual(self.ok("GET", "outlets"), [])
        made = self.ok("POST", "outlets", body={"address": "/service/o1", "to": "127.0.0.1:9", "alias": "web"})
        self.assertEqual(
            made,
            {"address": "o1", "target": "127.0.0.1:9", "connections": 0, "refused": 0, "authorized": None,
             "alias": "web"},
        )
        self.assertIsInstance(self.node.worker_at("o1"), Outlet)
        self.assertEqual(list(self.node.outlets), ["o1"])
        self.assertEqual(self.saved()["outlets"],
                         [{"address": "o1", "to": "127.0.0.1:9", "authorized": None, "alias": "web"}])
        self.assertEqual(self.ok("GET", "outlets"), [made])
        self.refused(409, "POST", "outlets", body={"address": "o2", "to": "127.0.0.1:9", "alias": "web"})
        self.refused(400, "POST", "outlets", body={"address": "o2", "to": "127.0.0.1:9", "alias": "a:b"})
        for key in ("web", "o1", "/service/o1"):
            self.assertEqual(self.ok("GET", "outlets", key), made, key)
        self.assertEqual(self.ok("GET", "outlets", "service", "o1"), made)

        self.assertEqual(self.ok("DELETE", "outlets", "/service/o1"), made)
        self.assertEqual(self.node.outlets, {})
        self.assertIsNone(self.node.worker_at("o1"))
        self.assertEqual(self.saved()["outlets"], [])
        self.assertEqual(self.ok("GET", "outlets"), [])

    def test_authorized(self):
        """
        C{authorized} (one identifier or a list) is kept on the outlet and
        in C{state.json}.
        """
        made = self.ok("POST", "outlets", body={"address": "o1", "to": "127.0.0.1:9", "authorized": OTHER})
        self.assertEqual(made["authorized"], [OTHER])
        self.assertEqual(self.node.outlets["o1"].authorized, {OTHER})
        self.assertEqual(self.saved()["outlets"][0]["authorized"], [OTHER])

    def test_unknown_is_404(self):
        message = self.refused(404, "GET", "outlets", "nope")
        self.assertEqual(message, "no outlet 'nope' on node n1")
        message = self.refused(404, "DELETE", "outlets", "/service/nope")
        self.assertEqual(message, "no outlet 'nope' on node n1")

    def test_taken_address_is_409(self):
        """
        An address where a worker already is (an outlet, a service, a
        secure channel listener) is refused, and that worker stays.
        """
        self.ok("POST", "outlets", body={"address": "o1", "to": "127.0.0.1:9"})
        echo = self.node.worker_at("echo")
        api = self.node.worker_at("api")
        for address in ("o1", "echo", "api"):
            message = self.refused(409, "POST", "outlets", body={"address": address, "to": "127.0.0.1:10"})
            self.assertEqual(message, f"address {address!r} is already taken on node n1")
        self.assertEqual(self.node.outlets["o1"].target, "127.0.0.1:9")
        self.assertIs(self.node.worker_at("echo"), echo)
        self.assertIs(self.node.worker_at("api"), api)
        self.assertEqual([o["address"] for o in self.saved()["outlets"]], ["o1"])

    def test_bad_body_is_400(self):
        """
        A body that is not JSON, a missing or empty field, a bad
        C{authorized} or an address that is not one worker's: 400, and
        nothing is created.
        """
        cases = [
            (b"{nope", "the request body is not JSON"),
            (b"", "missing 'address'"),
            (json.dumps({"address": "o1"}).encode(), "missing 'to'"),
            (json.dumps({"address": "", "to": "127.0.0.1:9"}).encode(), "missing 'address'"),
            (json.dumps({"address": 7, "to": "127.0.0.1:9"}).encode(), "missing 'address'"),
            (json.dumps({"address": "o1", "to": "127.0.0.1:9", "authorized": ["me"]}).encode(), not_an_identifier("me")),
            (json.dumps({"address": "o1", "to": "127.0.0.1:9", "authorized": {"P": 1}}).encode(), BAD_AUTHORIZED),
        ]
        for raw, expected in cases:
            self.assertEqual(self.refused(400, "POST", "outlets", raw=raw), expected, raw)
        message = self.refused(400, "POST", "outlets", body={"address": "/service/a/service/b", "to": "127.0.0.1:9"})
        self.assertEqual(message, "expected NAME or /service/NAME, got '/service/a/service/b'")
        self.assertEqual(self.node.outlets, {})
        self.assertIsNone(self.node.worker_at("o1"))
        self.assertEqual(self.saved()["outlets"], [])

    def test_json_array_body_is_400(self):
        """
        A body that is JSON but not an object is a bad request, answered
        with a JSON error like every other.
        """
        d = self.stub.request("POST", "http://n1/outlets", data=b"[1]")
        self.stub.flush()
        response = self.successResultOf(d)
        content = self.stub.content(response)
        self.stub.flush()
        text = self.successResultOf(content)
        self.flushLoggedErrors(ControlError)
        self.assertEqual(response.code, 400, text)
        self.assertEqual(json.loads(text), {"error": "the request body must be a JSON object"})
        self.assertEqual(self.node.outlets, {})


class InletTests(ControlResourceTestCase):
    def setUp(self) -> None:
        ControlResourceTestCase.setUp(self)
        self.ok("POST", "outlets", body={"address": "o1", "to": "127.0.0.1:9"})

    def test_create_list_show_delete(self):
        """
        An inlet listens where it is asked (a port of the reactor), is
        listed and shown by its address, and deleted: it stops listening,
        and C{state.json} follows.
        """
        self.assertEqual(self.ok("GET", "inlets"), [])
        made = self.ok("POST", "inlets", body={"listen": "127.0.0.1:4001", "to": "/service/o1"})
        alias = made.pop("alias")
        self.assertRegex(alias, "^[0-9a-f]{32}$")  # none given: a random one, as Ockam's
        self.assertEqual(
            made,
            {
                "listen": "127.0.0.1:4001",
                "route": "/service/o1",
                "status": "UP",
                "connections": 0,
                "last_error": None,
                "refusals": 0,
                "authorized": None,
            },
        )
        made["alias"] = alias
        self.assertEqual(list(self.node.inlets), ["127.0.0.1:4001"])
        self.assertIn(4001, self.reactor.listening)
        self.assertEqual(
            self.saved()["inlets"],
            [{"listen": "127.0.0.1:4001", "to": "/service/o1", "authorized": None, "alias": alias}],
        )
        self.assertEqual(self.ok("GET", "inlets"), [made])
        self.assertEqual(self.ok("GET", "inlets", "127.0.0.1:4001"), made)
        self.assertEqual(self.ok("GET", "inlets", alias), made)

        self.assertEqual(self.ok("DELETE", "inlets", "127.0.0.1:4001"), made)
        self.assertEqual(self.node.inlets, {})
        self.assertNotIn(4001, self.reactor.listening)
        self.assertEqual(self.saved()["inlets"], [])
        self.assertEqual(self.ok("GET", "inlets"), [])

    def test_port_zero(self):
        """
        C{HOST:0} listens on the port it is given; the inlet is known by
        that address, as C{state.json} keeps it (so that a restart uses the
        same port).
        """
        made = self.ok("POST", "inlets", body={"listen": "127.0.0.1:0", "to": "/service/o1"})
        port = ListeningReactor.FIRST_FREE
        self.assertEqual(made["listen"], f"127.0.0.1:{port}")
        self.assertIn(port, self.reactor.listening)
        self.assertEqual(self.ok("GET", "inlets", f"127.0.0.1:{port}")["listen"], f"127.0.0.1:{port}")
        self.assertEqual(self.saved()["inlets"][0]["listen"], f"127.0.0.1:{port}")

    def test_down_until_its_outlet_exists(self):
        """
        An inlet whose outlet is not there is created, C{DOWN}, with the
        reason.
        """
        made = self.ok("POST", "inlets", body={"listen": "127.0.0.1:4001", "to": "/service/o2"})
        self.assertEqual((made["status"], made["last_error"]), ("DOWN", "no worker at /service/o2 on node n1"))

    def test_unknown_is_404(self):
        self.ok("POST", "inlets", body={"listen": "127.0.0.1:4001", "to": "/service/o1"})
        for method in ("GET", "DELETE"):
            message = self.refused(404, method, "inlets", "127.0.0.1:4002")
            self.assertEqual(message, "no inlet '127.0.0.1:4002' on node n1")
        self.assertEqual(list(self.node.inlets), ["127.0.0.1:4001"])

    def test_taken_port_is_409(self):
        """
        A port that is already listened on is refused with the system's
        reason; the inlet there stays.
        """
        first = self.ok("POST", "inlets", body={"listen": "127.0.0.1:4001", "to": "/service/o1"})
        message = self.refused(409, "POST", "inlets", body={"listen": "127.0.0.1:4001", "to": "/service/o2"})
        self.assertEqual(message, "cannot listen on 127.0.0.1:4001: Address already in use")
        self.assertEqual(self.ok("GET", "inlets"), [first])
        self.assertEqual([i["to"] for i in self.saved()["inlets"]], ["/service/o1"])

    def test_bad_body_is_400(self):
        """
        Missing fields, a route that is not one, an address that is not
        one, a bad C{authorized}: 400, and nothing listens.
        """
        cases = [
            ({"to": "/service/o1"}, "missing 'listen'"),
            ({"listen": "127.0.0.1:4001"}, "missing 'to'"),
            ({"listen": "127.0.0.1:4001", "to": "/ip4/127.0.0.1/tcp/x"}, "bad TCP port 'x' in '/ip4/127.0.0.1/tcp/x'"),
            ({"listen": "nonsense", "to": "/service/o1"}, "not a port, host:port or endpoint string: 'nonsense'"),
            ({"listen": "127.0.0.1:4001", "to": "/service/o1", "authorized": [OTHER, "x"]}, not_an_identifier("x")),
        ]
        for body, expected in cases:
            self.assertEqual(self.refused(400, "POST", "inlets", body=body), expected, body)
        self.assertEqual(self.node.inlets, {})
        self.assertEqual(self.reactor.listening, {})
        self.assertEqual(self.saved()["inlets"], [])


class SecureChannelListenerTests(ControlResourceTestCase):
    def test_every_node_has_api(self):
        (api,) = self.ok("GET", "secure-channel-listeners")
        self.assertEqual((api["address"], api["authorized"], api["channels"]), ("api", None, 0))
        self.assertEqual(api["handshakes"]["half_open"], 0)
        self.assertEqual(self.ok("GET", "secure-channel-listeners", "/service/api"), api)

    def test_create_list_show_delete(self):
        made = self.ok("POST", "secure-channel-listeners", body={"address": "/service/l1", "authorized": [OTHER]})
        self.assertEqual((made["address"], made["authorized"], made["channels"]), ("l1", [OTHER], 0))
        self.assertIsInstance(self.node.worker_at("l1"), SecureChannelListener)
        self.assertEqual(self.node.secure_listeners["l1"].trust.authorized, {OTHER})
        self.assertEqual(self.saved()["secure_listeners"], [{"address": "l1", "authorized": [OTHER]}])
        self.assertEqual([l["address"] for l in self.ok("GET", "secure-channel-listeners")], ["api", "l1"])
        for key in ("l1", "/service/l1"):
            self.assertEqual(self.ok("GET", "secure-channel-listeners", key), made, key)
        self.assertIn("l1", self.ok("GET", "node")["services"])

        self.assertEqual(self.ok("DELETE", "secure-channel-listeners", "/service/l1"), made)
        self.assertNotIn("l1", self.node.secure_listeners)
        self.assertIsNone(self.node.worker_at("l1"))
        self.assertEqual(self.saved()["secure_listeners"], [])
        self.assertEqual([l["address"] for l in self.ok("GET", "secure-channel-listeners")], ["api"])

    def test_restrict_api(self):
        """
        C{api}, the node's own listener, is not refused as taken: its
        policy is replaced, and saved.
        """
        api = self.node.secure_listeners["api"]
        made = self.ok("POST", "secure-channel-listeners", body={"address": "api", "authorized": [OTHER]})
        self.assertEqual(made["authorized"], [OTHER])
        self.assertIs(self.node.secure_listeners["api"], api)
        self.assertEqual(api.trust.authorized, {OTHER})
        self.assertEqual(self.saved()["secure_listeners"], [{"address": "api", "authorized": [OTHER]}])

    def test_unknown_is_404(self):
        for method in ("GET", "DELETE"):
            message = self.refused(404, method, "secure-channel-listeners", "nope")
            self.assertEqual(message, "no secure channel listener 'nope' on node n1")

    def test_taken_address_is_409(self):
        self.ok("POST", "secure-channel-listeners", body={"address": "l1"})
        self.ok("POST", "outlets", body={"address": "o1", "to": "127.0.0.1:9"})
        for address in ("l1", "o1", "uppercase"):
            message = self.refused(409, "POST", "secure-channel-listeners", body={"address": address})
            self.assertEqual(message, f"address {address!r} is already taken on node n1")
        self.assertEqual(sorted(self.node.secure_listeners), ["api", "l1"])
        self.assertIsInstance(self.node.worker_at("o1"), Outlet)

    def test_api_cannot_be_deleted(self):
        message = self.refused(409, "DELETE", "secure-channel-listeners", "api")
        self.assertEqual(message, "the node's own secure channel listener 'api' cannot be deleted")
        self.assertIsInstance(self.node.worker_at("api"), SecureChannelListener)

    def test_bad_body_is_400(self):
        for body, expected in (
            ({}, "missing 'address'"),
            ({"address": "l1", "authorized": "me"}, not_an_identifier("me")),
            ({"address": "/nonsense/x"}, "expected NAME or /service/NAME, got '/nonsense/x'"),
        ):
            self.assertEqual(self.refused(400, "POST", "secure-channel-listeners", body=body), expected, body)
        self.assertEqual(list(self.node.secure_listeners), ["api"])


class EndpointTests(ControlResourceTestCase):
    def test_unknown_endpoint_is_404(self):
        for method, path in (("GET", ("nope",)), ("PUT", ("outlets",)), ("POST", ("outlets", "o1")), ("GET", ())):
            message = self.refused(404, method, *path)
            self.assertEqual(message, f"no such endpoint: {method} /{'/'.join(path)}")

    def test_node(self):
        info = self.ok("GET", "node")
        self.assertEqual((info["name"], info["status"], info["pid"]), ("n1", "UP", 4242))
        self.assertEqual(info["identity"], self.node.identity.identifier)
        self.assertIn("api", info["services"])

    def test_client_gone(self):
        """
        An answer that is ready after its client went away is not written
        (the request says so through C{notifyFinish}); a client that waits
        gets it.
        """
        resource = ControlResource(self.controller)
        answers = {}
        resource._route = lambda method, parts, body: answers.setdefault(parts[0], Deferred())
        gone, waiting = DummyRequest([b"gone"]), DummyRequest([b"waiting"])
        for request in (gone, waiting):
            request.content = io.BytesIO(b"")
            self.assertEqual(resource.render(request), NOT_DONE_YET)
        gone.processingFailed(Failure(ConnectionDone()))
        answers["gone"].callback({"late": True})
        answers["waiting"].callback({"late": False})
        self.assertEqual((gone.written, gone.finished), ([], 0))
        self.assertEqual((json.loads(b"".join(waiting.written)), waiting.finished), ({"late": False}, 1))


class UnsavedChangeTests(ControlResourceTestCase):
    """
    The node's directory is gone (removed under the running node), so its
    state cannot be written: a create is undone and refused with 507, a
    delete holds and says so.
    """

    def lose_directory(self) -> str:
        path = os.path.join(self.directory, st.STATE)
        shutil.rmtree(self.directory)
        return f"cannot save node n1's state to {path}: No such file or directory"

    def test_creates_undone(self):
        problem = self.lose_directory()
        for endpoint, body in (
            ("outlets", {"address": "o1", "to": "127.0.0.1:9"}),
            ("inlets", {"listen": "127.0.0.1:4001", "to": "/service/echo"}),
            ("secure-channel-listeners", {"address": "l1"}),
        ):
            message = self.refused(507, "POST", endpoint, body=body)
            self.assertEqual(message, f"{problem} (nothing was changed)", endpoint)
        self.assertEqual((self.node.outlets, self.node.inlets), ({}, {}))
        self.assertIsNone(self.node.worker_at("o1"))
        self.assertEqual(self.reactor.listening, {})
        self.assertNotIn("l1", self.node.secure_listeners)
        self.assertIsNone(self.node.worker_at("l1"))
        self.assertEqual((self.ok("GET", "outlets"), self.ok("GET", "inlets")), ([], []))

    def test_api_policy_restored(self):
        """
        Restricting C{api} when that cannot be saved leaves its policy as
        it was.
        """
        self.ok("POST", "secure-channel-listeners", body={"address": "api", "authorized": [OTHER]})
        problem = self.lose_directory()
        message = self.refused(507, "POST", "secure-channel-listeners", body={"address": "api", "authorized": []})
        self.assertEqual(message, f"{problem} (nothing was changed)")
        self.assertEqual(self.node.secure_listeners["api"].trust.authorized, {OTHER})
        self.assertEqual(self.ok("GET", "secure-channel-listeners", "api")["authorized"], [OTHER])

    def test_delete_holds(self):
        self.ok("POST", "outlets", body={"address": "o1", "to": "127.0.0.1:9"})
        self.ok("POST", "inlets", body={"listen": "127.0.0.1:4001", "to": "/service/o1"})
        problem = self.lose_directory()
        for endpoint, key in (("outlets", "o1"), ("inlets", "127.0.0.1:4001")):
            message = self.refused(507, "DELETE", endpoint, key)
            self.assertEqual(message, f"{problem} (the change holds until the node stops)", endpoint)
        self.assertEqual((self.node.outlets, self.node.inlets), ({}, {}))
        self.assertEqual(self.reactor.listening, {})
