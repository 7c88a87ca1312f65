"""
What the control API gained for Ockam 0.83's command line (docs/cli.md),
in memory: a node on a L{ListeningReactor} whose L{ControlResource} is
called with L{treq.testing.StubTreq}, with its state directory at
C{HOME/nodes/n1}: inlet and outlet aliases (kept in C{state.json} and
given back by a new controller), services started at other addresses,
the worker list, TCP listeners, a secure channel listener presenting a
named identity of the home, and a node with a named identity accepting
peers that present it.
"""

from __future__ import annotations

import json
import os
from urllib.parse import quote

from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from ockamtw import Node
from ockamtw.control import state as st
from ockamtw.control.server import ControlResource, NodeController
from ockamtw.secure.identity import LocalIdentity
from ockamtw.services import Uppercase

from .memory_harness import ListeningReactor


class OckamRoutesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.home = os.path.abspath(self.mktemp())
        self.directory = os.path.join(self.home, "nodes", "n1")
        os.makedirs(self.directory)
        st.write_state(self.directory, st.empty_state("n1", None))
        self.start()

    def start(self, state=None) -> None:
        """
        A node C{n1} and a new controller on the state directory (written
        with C{state} first, when given).
        """
        if state is not None:
            st.write_state(self.directory, state)
        self.reactor = ListeningReactor()
        self.node = Node(self.reactor, name="n1")
        self.controller = NodeController(self.node, self.directory, pid=4242)
        self.node.startService()
        self.addCleanup(lambda node=self.node: self.successResultOf(node.stopService()))
        self.stub = StubTreq(ControlResource(self.controller))

    def call(self, method: str, *path: str, body=None):
        url = "http://n1/" + "/".join(quote(p, safe="") for p in path)
        d = self.stub.request(method, url, data=json.dumps(body).encode() if body is not None else None)
        self.stub.flush()
        response = self.successResultOf(d)
        content = self.stub.content(response)
        self.stub.flush()
        return response.code, json.loads(self.successResultOf(content))

    def ok(self, method: str, *path: str, body=None):
        code, answer = self.call(method, *path, body=body)
        self.assertEqual(code, 200, answer)
        return answer

    def refused(self, status: int, method: str, *path: str, body=None) -> str:
        code, answer = self.call(method, *path, body=body)
        self.assertEqual((code, list(answer)), (status, ["error"]), answer)
        return answer["error"]

    def saved(self) -> dict:
        with open(os.path.join(self.directory, st.STATE)) as f:
            return json.load(f)

    def test_aliases_restored(self):
        """
        Aliases are kept in C{state.json}; a new controller on it restores
        the outlet under its alias.
        """
        self.ok("POST", "outlets", body={"address": "o1", "to": "127.0.0.1:9", "alias": "web"})
        state = self.saved()
        self.successResultOf(self.node.stopService())
        self.start(state)
        self.assertEqual(list(self.node.outlets), ["o1"])
        self.assertEqual(self.ok("GET", "outlets", "web")["address"], "o1")
        self.assertEqual(self.ok("DELETE", "outlets", "web")["alias"], "web")
        self.assertEqual(self.saved()["outlets"], [])
        self.assertEqual(self.refused(404, "GET", "outlets", "web"), "no outlet 'web' on node n1")

    def test_services_and_workers(self):
        """
        C{GET /services} lists the default services as Ockam does; C{POST
        /services} starts another at an address (kept in C{state.json},
        started again by a new controller); a taken address is 409, an
        unknown type 400; C{GET /workers} lists every worker.
        """
        self.assertEqual(
            self.ok("GET", "services"),
            [{"address": a, "type": a} for a in ("uppercase", "echo", "hop", "credentials")],
        )
        made = self.ok("POST", "services", body={"type": "uppercase", "address": "up2"})
        self.assertEqual(made, {"address": "up2", "type": "uppercase"})
        self.assertIsInstance(self.node.worker_at("up2"), Uppercase)
        self.assertEqual(self.saved()["services"], [made])
        self.assertIn("already taken", self.refused(409, "POST", "services", body={"type": "echo", "address": "up2"}))
        self.assertIn("unknown service", self.refused(400, "POST", "services", body={"type": "vault", "address": "v"}))
        self.assertIn("0#up2", self.ok("GET", "workers"))
        state = self.saved()
        self.successResultOf(self.node.stopService())
        self.start(state)
        self.assertIsInstance(self.node.worker_at("up2"), Uppercase)
        self.assertIn(made, self.ok("GET", "services"))

    def test_tcp_listeners(self):
        made = self.ok("POST", "tcp-listeners", body={"address": "127.0.0.1:4100"})
        self.assertEqual((made["mode"], made["socket_address"]), ("Listening", "127.0.0.1:4100"))
        self.assertIn(4100, self.reactor.listening)
        self.assertIn(made, self.ok("GET", "tcp"))
        self.assertEqual(self.ok("DELETE", "tcp-listeners", made["transport_id"]), made)
        self.assertNotIn(4100, self.reactor.listening)
        self.refused(404, "DELETE", "tcp-listeners", made["transport_id"])
        self.refused(400, "POST", "tcp-listeners", body={"address": "no way"})

    def test_listener_with_a_named_identity(self):
        """
        A listener created with C{identity} presents that identity of the
        home and accepts a peer presenting it; it is kept in C{state.json}
        and made again by a new controller; a missing identity is 404; the
        node's own api listener keeps the node's identity (409).
        """
        identity = LocalIdentity.create()
        st.secure_identities_dir(self.home)
        identity.save(st.identity_path(self.home, "i1"))
        made = self.ok("POST", "secure-channel-listeners", body={"address": "l1", "identity": "i1"})
        self.assertEqual((made["identity"], made["identifier"]), ("i1", identity.identifier))
        listener = self.node.secure_listeners["l1"]
        self.assertEqual(listener.identity.identifier, identity.identifier)
        listener.trust.check(identity.identifier, identity.identifier)  # a peer with it: accepted
        self.assertEqual(self.saved()["secure_listeners"], [{"address": "l1", "authorized": None, "identity": "i1"}])
        self.assertIn("no identity named 'nobody'",
                      self.refused(404, "POST", "secure-channel-listeners", body={"address": "l2", "identity": "nobody"}))
        self.refused(409, "POST", "secure-channel-listeners", body={"address": "api", "identity": "i1"})
        state = self.saved()
        self.successResultOf(self.node.stopService())
        self.start(state)
        self.assertEqual(self.node.secure_listeners["l1"].identity.identifier, identity.identifier)

    def test_shared_identity(self):
        """
        A node whose state names an identity (other nodes may have it)
        accepts a peer presenting its own identity, on its listeners and
        on the channels it starts; a node with its own identity does not.
        """
        from ockamtw.secure.errors import SecureChannelError

        own = self.node.identity.identifier
        self.assertRaises(SecureChannelError, self.node.secure_listeners["api"].trust.check, own, own)
        self.assertFalse(self.node.shared_identity)
        state = self.saved()
        state["identity"] = "alice"
        self.successResultOf(self.node.stopService())
        self.start(state)
        own = self.node.identity.identifier
        self.assertTrue(self.node.shared_identity)
        self.node.secure_listeners["api"].trust.check(own, own)
        self.ok("POST", "secure-channel-listeners", body={"address": "l2"})
        self.node.secure_listeners["l2"].trust.check(own, own)
