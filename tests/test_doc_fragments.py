"""
The Python fragments of docs/embedding.md (a worker, a feature), which need
a node to run: each is run as printed with C{node} a started L{Node} (and
C{peer} an identifier), and what it claims is checked: the greeter answers
other nodes (and, registered for one peer, only that peer's secure
channel); the notes feature is saved and answers its control routes.
The blocks are marked C{<!-- run by tests/test_doc_fragments.py -->}.
"""

from __future__ import annotations

import os

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from ockamtw import Node, RequestTimeout, decode_string, encode_string
from ockamtw.control import state as st
from ockamtw.control.server import ControlResource, NodeController

from .docblocks import blocks_of
from .helpers import async_test, deadline, stub_call

MARKER = "run by tests/test_doc_fragments.py"


def fragments():
    """
    The marked blocks of docs/embedding.md, by the class each defines.
    """
    out = {}
    for block in blocks_of("docs/embedding.md"):
        if block.marker == MARKER:
            assert block.language == "python", block.where
            name = block.text.split("class ", 1)[1].split("(", 1)[0]
            out[name] = block
    return out


class SelectionTests(SynchronousTestCase):
    def test_the_fragments(self):
        """
        The two fragments are marked (so L{tests.test_doc_commands} counts
        them as run) and found here.
        """
        self.assertEqual(sorted(fragments()), ["Greeter", "Notes"])


class GreeterTests(TestCase):
    timeout = 30

    async def nodes(self):
        n2 = Node(reactor, name="n2")
        n2.startService()
        self.addCleanup(n2.stopService)
        listener = await n2.tcp.listen("tcp:0:interface=127.0.0.1")
        n1 = Node(reactor, name="n1")
        n1.startService()
        self.addCleanup(n1.stopService)
        return n1, n2, f"/ip4/127.0.0.1/tcp/{listener.port}"

    @async_test
    async def test_greeter(self):
        """
        As printed, on n2: n1 (another node, no secure channel) is
        answered.  Registered again as the comment says, for one peer (n1's
        identity): n1 without a channel gets nothing, through a secure
        channel it is answered.
        """
        block = fragments()["Greeter"]
        n1, n2, at = await self.nodes()
        scope = {"node": n2, "peer": n1.identity.identifier}
        exec(compile(block.text, block.where, "exec"), scope)
        reply = await deadline(n1.request(f"{at}/service/greeter", encode_string("alice"), timeout=5), 10, "greeting")
        self.assertEqual(decode_string(reply.payload), "hello, alice")

        [alternative] = [line.split(":", 1)[1].strip() for line in block.text.splitlines()
                         if line.startswith("# or, for one registration:")]
        n2.stop_worker("greeter")
        exec(compile(alternative, block.where, "exec"), scope)
        try:
            await n1.request(f"{at}/service/greeter", encode_string("alice"), timeout=0.5)
        except RequestTimeout:
            pass
        else:
            self.fail("answered a peer without a secure channel")
        reply = await deadline(n1.request(f"{at}/secure/api/service/greeter", encode_string("alice"), timeout=5), 10,
                               "greeting through a secure channel")
        self.assertEqual(decode_string(reply.payload), "hello, alice")


class NotesTests(SynchronousTestCase):
    def test_notes(self):
        """
        As printed, on a node with a state directory: its routes answer
        (400 when C{text} is missing, 409 for a note there already), its
        notes are saved in state.json, and a node made again restores them.
        """
        block = fragments()["Notes"]
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        st.write_state(directory, st.empty_state("n1", None))
        node = Node(MemoryReactorClock(), name="n1")
        scope = {"node": node}
        exec(compile(block.text, block.where, "exec"), scope)
        node.startService()
        self.addCleanup(lambda: node.stopService() if node.running else None)
        stub = StubTreq(ControlResource(NodeController(node, directory)))

        def call(method, path, body=None):
            return stub_call(self, stub, method, "http://n1/" + path, body)

        self.assertEqual(call("GET", "notes"), (200, []))
        self.assertEqual(call("POST", "notes", {"text": "hello"}), (200, ["hello"]))
        self.assertEqual(call("POST", "notes", {"text": "hello"}), (409, {"error": "note 'hello' is there already"}))
        self.assertEqual(call("POST", "notes", {}), (400, {"error": "missing 'text'"}))
        self.assertEqual(st.load_state(directory)["notes"], ["hello"])
        self.successResultOf(node.stopService())

        again = Node(MemoryReactorClock(), name="n1")
        scope = {"node": again}
        exec(compile(block.text, block.where, "exec"), scope)
        NodeController(again, directory)
        self.assertEqual(again.features["notes"].notes, ["hello"])
