"""
Features plug into a node (L{ockamtw.feature}, issue #12): each is a child
service of the node, owns its part of C{state.json} and its control
routes, and stops what it made when the node stops; the node, the control
API and twistd go through the list.  A feature made here (C{notes}) plugs
in with nothing else changed.  Kept TCP connections reconnect with
Twisted's C{ClientService}.

All in memory: nodes on a L{MemoryReactorClock} (or a L{ListeningReactor},
whose ports listen as the kernel's), connections on L{StringTransport}s.
"""

from __future__ import annotations

import os

from treq.testing import StubTreq
from twisted.application.service import IService
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from ockamtw import Node
from ockamtw.api import FEATURES
from ockamtw.control import state as st
from ockamtw.control.server import ControlResource, NodeController
from ockamtw.errors import TransportError, WireError
from ockamtw.feature import ControlError, Feature
from ockamtw.interfaces import IFeature
from ockamtw.relay import Relay
from ockamtw.routing import Address
from ockamtw.transport.tcp import KeptConnection

from .helpers import stub_call
from .memory_harness import ListeningReactor

OTHER = "P" + "ab" * 32


class Notes(Feature):
    """
    A feature as a new module would write it: notes kept in the node's
    state (C{notes}), listed and added through C{/notes}.
    """

    name = "notes"
    state_keys = ("notes",)
    routes = {("GET", "notes", False): "list_route", ("POST", "notes", False): "add_route"}

    def __init__(self, node) -> None:
        Feature.__init__(self, node)
        self.notes = []
        self.stopped = 0

    def save(self) -> dict:
        return {"notes": list(self.notes)}

    def restore(self, state: dict) -> None:
        for note in state.get("notes", []):
            if note not in self.notes:
                self.notes.append(note)

    def stopService(self):
        Feature.stopService(self)
        self.stopped += 1

    def list_route(self, call) -> list:
        return self.notes

    async def add_route(self, call) -> list:
        text = call.need("text")
        if text in self.notes:
            raise ControlError(409, f"note {text!r} is there already")
        self.notes.append(text)
        await call.saved(undo=lambda: self.notes.remove(text))
        return self.notes


class FeatureTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = ListeningReactor()

    def node(self, name: str = "n1") -> Node:
        node = Node(self.reactor, name=name)
        self.addCleanup(lambda: self.successResultOf(node.stopService()) if node.running else None)
        return node

    def test_children_of_the_node(self):
        """
        The full node's features are its child services, in the order of
        L{FEATURES}; they start and stop with it.
        """
        node = self.node()
        self.assertEqual([type(f) for f in node.features.values()], list(FEATURES))
        for feature in node.features.values():
            verifyObject(IFeature, feature)
            verifyObject(IService, feature)
            self.assertIs(feature.parent, node)
            self.assertIs(node.getServiceNamed(feature.name), feature)
        node.startService()
        self.assertTrue(all(f.running for f in node.features.values()))
        self.successResultOf(node.stopService())
        self.assertFalse(any(f.running for f in node.features.values()))

    def test_add_feature(self):
        node = self.node()
        notes = node.add_feature(Notes(node))
        self.assertIs(node.features["notes"], notes)
        self.assertRaises(RuntimeError, node.add_feature, Notes(node))
        self.assertRaises(TypeError, node.add_feature, object())

    def test_stop_closes_what_they_made(self):
        """
        Stopping the node stops every feature, and each closes what it
        made: outlets, inlets (their ports), relays (their workers and
        timers), kept connections.
        """
        node = self.node()
        node.startService()
        outlet = self.successResultOf(node.create_outlet("o1", "127.0.0.1:9"))
        inlet = self.successResultOf(node.create_inlet("127.0.0.1:6000", "/service/o1"))
        relay = node.add_relay("/ip4/127.0.0.1/tcp/7000", name="r1")
        kept = self.successResultOf(node.tcp.keep("127.0.0.1:7001", wait=False))
        self.assertIsInstance(relay, Relay)
        self.assertIs(relay.parent, node.features["relays"])
        self.assertIs(kept.parent, node.tcp)
        self.assertEqual(len(self.reactor.listening), 1)
        self.successResultOf(node.stopService())
        self.assertTrue(outlet.closed)
        self.assertTrue(inlet.closed)
        self.assertEqual(self.reactor.listening, {})
        self.assertEqual(relay.state, "stopped")
        self.assertFalse(kept.running)
        self.assertEqual(node.worker_addresses(), [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_state_round_trip(self):
        """
        What the features save, a new node restores (twice changes
        nothing), and saves again the same.
        """
        a = self.node("n1")
        a.startService()
        a.membership.set_policy("tcp-outlet", "true")
        self.successResultOf(a.create_outlet("o1", "127.0.0.1:9", authorized=[OTHER]))
        self.successResultOf(a.create_inlet("127.0.0.1:6000", "/ip4/127.0.0.1/tcp/7000/service/o1"))
        a.add_relay("/ip4/127.0.0.1/tcp/7000", name="r1")
        a.create_secure_channel_listener("l1", authorized=[OTHER])
        self.successResultOf(a.tcp.keep("127.0.0.1:7001", Address.local("k1"), wait=False))
        state = a.save_state()
        self.assertEqual(
            sorted(state), ["connections", "inlets", "outlets", "policies", "relays", "secure_listeners"]
        )
        self.successResultOf(a.stopService())

        b = self.node("n1")
        b.restore(state)
        b.restore(state)
        self.assertEqual(b.save_state()["outlets"], state["outlets"])
        self.assertEqual(b.save_state()["secure_listeners"], state["secure_listeners"])
        self.assertEqual(b.membership.policies, {"tcp-outlet": "true"})
        # Inlets listen, relays register and connections are kept once the node runs.
        self.assertEqual((b.inlets, b.relays, b.tcp.kept), ({}, {}, {}))
        b.startService()
        b.restore(state)
        self.assertEqual(b.save_state(), state)
        self.assertEqual(list(self.reactor.listening), [6000])

    def test_inlets_at_port_zero(self):
        """
        A state may name several inlets at port 0 (a hand-written one): each
        is an inlet, and restoring it again makes none more.
        """
        node = self.node()
        state = {"inlets": [{"listen": "127.0.0.1:0", "to": f"/service/o{i}"} for i in range(3)]}
        node.startService()
        node.restore(state)
        node.restore(state)
        self.assertEqual(sorted(i.route_text for i in node.inlets.values()), ["/service/o0", "/service/o1", "/service/o2"])
        self.assertEqual(len(self.reactor.listening), 3)

    def test_a_new_feature_plugs_in(self):
        """
        A feature added to a node is saved, restored and stopped with it,
        and its routes are the control API's, with nothing else changed.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        st.write_state(directory, st.empty_state("n1", None))
        node = self.node()
        notes = node.add_feature(Notes(node))
        node.startService()
        stub = StubTreq(ControlResource(NodeController(node, directory)))

        def call(method, path, body=None):
            return stub_call(self, stub, method, "http://n1/" + path, body)

        self.assertEqual(call("GET", "notes"), (200, []))
        self.assertEqual(call("POST", "notes", {"text": "hello"}), (200, ["hello"]))
        self.assertEqual(call("POST", "notes", {"text": "hello"}), (409, {"error": "note 'hello' is there already"}))
        self.assertEqual(call("POST", "notes", {}), (400, {"error": "missing 'text'"}))
        self.assertEqual(st.load_state(directory)["notes"], ["hello"])
        self.successResultOf(node.stopService())
        self.assertEqual(notes.stopped, 1)

        again = self.node()
        restored = again.add_feature(Notes(again))
        NodeController(again, directory)
        self.assertEqual(restored.notes, ["hello"])


class KeptConnectionTests(SynchronousTestCase):
    """
    A kept connection (L{KeptConnection}, a C{ClientService}) on a
    L{MemoryReactorClock}: its attempts are the reactor's C{tcpClients}.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.node = Node(self.reactor, name="n1")
        self.node.startService()

    def attempts(self) -> int:
        return len(self.reactor.tcpClients)

    def connect(self):
        """
        The last attempt connects; returns its protocol and transport.
        """
        host, port, factory, _, _ = self.reactor.tcpClients[-1]
        proto = factory.buildProtocol(IPv4Address("TCP", host, port))
        t = StringTransport(peerAddress=IPv4Address("TCP", host, port))
        proto.makeConnection(t)
        return proto, t

    def refuse(self) -> None:
        _, _, factory, _, _ = self.reactor.tcpClients[-1]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))

    def delays(self):
        return sorted(round(c.getTime() - self.reactor.seconds(), 3) for c in self.reactor.getDelayedCalls())

    def test_comes_back(self):
        """
        Kept with C{wait}: fires with the first connection; when it closes,
        it is made again after 0.1 s with the same worker address; failures
        double the wait; forgetting it closes it and leaves no timer.
        """
        d = self.node.tcp.keep("127.0.0.1:7000", Address.local("k1"))
        self.assertNoResult(d)
        proto, t = self.connect()
        conn = self.successResultOf(d)
        self.assertEqual((conn.address, conn.target), (Address.local("k1"), "127.0.0.1:7000"))
        keeper = self.node.tcp.kept[Address.local("k1")]
        self.assertIsInstance(keeper, KeptConnection)
        self.assertIs(keeper.connection, conn)
        heartbeat = self.delays()  # the silent connection's heartbeat
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(self.node.worker_at("k1"))
        self.assertEqual(self.delays(), [0.1])
        self.reactor.advance(0.1)
        self.assertEqual(self.attempts(), 2)
        self.refuse()
        self.assertEqual(self.delays(), [0.2])
        self.reactor.advance(0.2)
        self.refuse()
        self.assertEqual(self.delays(), [0.4])
        self.reactor.advance(0.4)
        proto, t = self.connect()
        self.assertIs(self.node.worker_at("k1"), keeper.connection)
        self.assertEqual(self.delays(), heartbeat)
        closed = self.node.tcp.forget("k1")
        self.assertTrue(t.disconnecting)
        proto.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(closed)
        self.assertEqual((self.node.tcp.kept, self.reactor.getDelayedCalls()), ({}, []))
        self.assertIsNone(keeper.parent)

    def test_first_attempt_decides(self):
        """
        Kept with C{wait}, a first attempt that fails fails C{keep} with
        one line, and nothing is kept or retried.
        """
        d = self.node.tcp.keep("127.0.0.1:7000")
        self.refuse()
        f = self.failureResultOf(d, TransportError)
        self.assertTrue(f.getErrorMessage().startswith("cannot connect to 127.0.0.1:7000: "), f.getErrorMessage())
        self.assertEqual((self.node.tcp.kept, self.reactor.getDelayedCalls()), ({}, []))
        self.assertEqual(self.node.tcp.services, [])

    def test_forgotten_while_connecting(self):
        """
        Kept with C{wait} and forgotten before its first connection is made:
        C{keep} fails as cancelled, the attempt itself is stopped (it cannot
        connect late, as a connection nobody keeps), and nothing is left.
        """
        d = self.node.tcp.keep("127.0.0.1:7000", Address.local("k1"))
        self.successResultOf(self.node.tcp.forget(Address.local("k1")))
        self.failureResultOf(d, CancelledError)
        self.assertTrue(self.reactor.connectors[-1].stoppedConnecting)
        self.assertEqual((self.node.tcp.kept, self.node.tcp.services), ({}, []))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_retry_cancelled_is_not_a_failure(self):
        """
        A kept connection stopped while it is connecting again: its last
        reason stays the connection's loss, not "cannot connect".
        """
        keeper = self.successResultOf(self.node.tcp.keep("127.0.0.1:7000", wait=False))
        proto, t = self.connect()
        proto.connectionLost(Failure(ConnectionDone()))
        self.reactor.advance(0.1)  # connecting again
        self.successResultOf(self.node.tcp.forget(keeper.address))
        self.assertTrue(self.reactor.connectors[-1].stoppedConnecting)
        self.assertEqual(keeper._reason, "connection closed")

    def test_without_waiting(self):
        """
        Kept without C{wait}: a failure is retried; the node's stop ends
        it.
        """
        keeper = self.successResultOf(self.node.tcp.keep("127.0.0.1:7000", wait=False))
        self.refuse()
        self.assertEqual(self.delays(), [0.1])
        self.reactor.advance(0.1)
        proto, t = self.connect()
        stopped = self.node.stopService()
        self.assertTrue(t.disconnecting)
        proto.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(stopped)
        self.assertFalse(keeper.running)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_bad_target(self):
        self.failureResultOf(self.node.tcp.keep("nonsense"), WireError)
        self.assertEqual((self.node.tcp.kept, self.node.tcp.services), ({}, []))

