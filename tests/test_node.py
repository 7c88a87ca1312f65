"""
Tests for L{ockamtw.node} and the default services of L{ockamtw.api.Node}:
the worker registry, routing (section 3 of the wire spec), C{send},
C{request} and C{stopService}.

Everything runs in memory on a L{MemoryReactorClock}; time moves only when
a test calls C{reactor.advance}.
"""

import re
import sys

from twisted.internet.defer import CancelledError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from ockamtw import (
    Address,
    AddressInUse,
    FunctionWorker,
    MessageTooLarge,
    MultiAddr,
    Node,
    RequestTimeout,
    Route,
    RouteUnreachable,
    TransportMessage,
    WireError,
    encode_string,
)
from ockamtw.access import ANYONE
from ockamtw.interfaces import IWorker
from ockamtw.node import BaseNode
from ockamtw.routing import TCP
from ockamtw.services import Echo, Hop, Uppercase
from ockamtw.wire import FORWARD_BUDGET, MAX_FRAME

from .helpers import captureLogs

RANDOM_ADDRESS = re.compile(r"^[0-9a-f]{32}$")


@implementer(IWorker)
class Recorder:
    """
    A worker that keeps what it receives and counts its lifecycle calls.
    Anyone may send to it.
    """

    access = ANYONE

    def __init__(self):
        self.received = []
        self.started_calls = []
        self.stopped_calls = 0

    def started(self, node, address):
        self.started_calls.append((node, address))

    def receive(self, message):
        self.received.append(message)

    def stopped(self):
        self.stopped_calls += 1


@implementer(IWorker)
class Exploding(Recorder):
    """
    A worker whose C{receive} raises after recording the message.
    """

    def receive(self, message):
        Recorder.receive(self, message)
        raise ZeroDivisionError("boom")


@implementer(IWorker)
class BadStart(Recorder):
    """
    A worker that refuses to start.
    """

    def started(self, node, address):
        Recorder.started(self, node, address)
        raise RuntimeError("cannot start")


class FakeSource:
    """
    Stands in for an L{ockamtw.interfaces.IFlowSource}; only its identity
    matters here.
    """

    def pause_flow(self):
        pass

    def resume_flow(self):
        pass


def local(name):
    return Address.local(name)


class NodeTestMixin:
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.node = Node(self.reactor, name="n1")

    def recorder(self, name):
        r = Recorder()
        self.node.start_worker(name, r)
        return r


class WorkerRegistryTests(NodeTestMixin, SynchronousTestCase):
    """
    C{start_worker}, C{stop_worker}, C{worker_at} and C{worker_addresses}.
    """

    def test_startAtName(self):
        """
        A worker started at a name lives at that local address, is told so
        once, and is found by the address, its text or its bare value.
        """
        w = Recorder()
        verifyObject(IWorker, w)
        address = self.node.start_worker("printer", w)
        self.assertEqual(address, Address(0, "printer"))
        self.assertEqual(w.started_calls, [(self.node, Address(0, "printer"))])
        self.assertIs(self.node.worker_at("printer"), w)
        self.assertIs(self.node.worker_at("0#printer"), w)
        self.assertIs(self.node.worker_at(Address(0, "printer")), w)

    def test_startAtAddressObject(self):
        """
        An L{Address} is accepted as well as text.
        """
        w = Recorder()
        self.assertEqual(self.node.start_worker(local("a1"), w), local("a1"))
        self.assertIs(self.node.worker_at("a1"), w)

    def test_startAtNone(self):
        """
        C{None} picks a fresh random local address of 32 lowercase hex
        characters, different each time.
        """
        w1, w2 = Recorder(), Recorder()
        a1 = self.node.start_worker(None, w1)
        a2 = self.node.start_worker(None, w2)
        for a in (a1, a2):
            self.assertEqual(a.type, 0)
            self.assertRegex(a.value, RANDOM_ADDRESS)
        self.assertNotEqual(a1, a2)
        self.assertIs(self.node.worker_at(a1), w1)
        self.assertIs(self.node.worker_at(a2), w2)
        self.assertEqual(w1.started_calls, [(self.node, a1)])

    def test_addressInUse(self):
        """
        Starting a second worker at a taken address raises L{AddressInUse}
        naming the address; the first worker stays, the second is never
        started.
        """
        first, second = Recorder(), Recorder()
        self.node.start_worker("printer", first)
        e = self.assertRaises(AddressInUse, self.node.start_worker, "printer", second)
        self.assertIn("printer", str(e))
        self.assertIs(self.node.worker_at("printer"), first)
        self.assertEqual(second.started_calls, [])

    def test_defaultServiceAddressInUse(self):
        """
        The default services hold their addresses.
        """
        e = self.assertRaises(AddressInUse, self.node.start_worker, "echo", Recorder())
        self.assertIn("echo", str(e))
        self.assertIsInstance(self.node.worker_at("echo"), Echo)

    def test_stopWorker(self):
        """
        C{stop_worker} removes the worker, calls its C{stopped} once and
        says whether there was a worker; the address can be reused.
        """
        w = self.recorder("printer")
        self.assertTrue(self.node.stop_worker("printer"))
        self.assertEqual(w.stopped_calls, 1)
        self.assertIsNone(self.node.worker_at("printer"))
        self.assertNotIn(local("printer"), self.node.worker_addresses())
        self.assertFalse(self.node.stop_worker("printer"))
        self.assertEqual(w.stopped_calls, 1)
        w2 = self.recorder("printer")
        self.assertIs(self.node.worker_at("printer"), w2)

    def test_stopWorkerThatFailsToStop(self):
        """
        A worker whose C{stopped} raises is still removed; the error is
        logged.
        """

        class Bad(Recorder):
            def stopped(self):
                raise ValueError("nope")

        self.node.start_worker("bad", Bad())
        self.assertTrue(self.node.stop_worker("bad"))
        self.assertIsNone(self.node.worker_at("bad"))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_workerAtUnknown(self):
        self.assertIsNone(self.node.worker_at("nobody"))

    def test_workerAddressesInOrder(self):
        """
        C{worker_addresses} lists the default services first, then the
        workers in registration order.
        """
        before = self.node.worker_addresses()
        self.assertEqual(before[:3], [local("echo"), local("uppercase"), local("hop")])
        self.recorder("b")
        self.recorder("a")
        self.assertEqual(self.node.worker_addresses(), before + [local("b"), local("a")])
        self.node.stop_worker("b")
        self.assertEqual(self.node.worker_addresses(), before + [local("a")])

    def test_noServices(self):
        """
        C{Node(services=False)} and L{BaseNode} start with no worker.
        """
        self.assertEqual(Node(self.reactor, name="x", services=False).worker_addresses(), [])
        self.assertEqual(BaseNode(self.reactor, name="y").worker_addresses(), [])

    def test_nonLocalRefused(self):
        """
        Workers live at local addresses only: a TCP address is refused with
        L{WireError}, as text or as an L{Address}, and nothing is registered.
        """
        before = self.node.worker_addresses()
        w = Recorder()
        self.assertRaises(WireError, self.node.start_worker, "1#127.0.0.1:4000", w)
        self.assertRaises(WireError, self.node.start_worker, Address(TCP, "127.0.0.1:4000"), w)
        self.assertEqual(self.node.worker_addresses(), before)
        self.assertEqual(w.started_calls, [])

    def test_badAddressText(self):
        self.assertRaises(WireError, self.node.start_worker, "", Recorder())
        self.assertRaises(WireError, self.node.start_worker, "#x", Recorder())

    def test_startedRaises(self):
        """
        A worker whose C{started} raises is not left registered; the error
        reaches the caller and the address stays free.
        """
        before = self.node.worker_addresses()
        w = BadStart()
        self.assertRaises(RuntimeError, self.node.start_worker, "fragile", w)
        self.assertIsNone(self.node.worker_at("fragile"))
        self.assertEqual(self.node.worker_addresses(), before)
        self.assertRaises(RuntimeError, self.node.start_worker, None, BadStart())
        self.assertEqual(self.node.worker_addresses(), before)
        good = self.recorder("fragile")
        self.assertIs(self.node.worker_at("fragile"), good)


class RoutingTests(NodeTestMixin, SynchronousTestCase):
    """
    Delivery by onward route.
    """

    def test_deliverToFirstAddress(self):
        """
        The worker at onward[0] receives the message with the whole onward
        route, its own address still first; the next address does not.
        """
        a, b = self.recorder("a"), self.recorder("b")
        self.node.deliver(TransportMessage(Route(["a", "b"]), Route(["x"]), b"payload"))
        self.assertEqual(len(a.received), 1)
        m = a.received[0]
        self.assertEqual(m.onward_route, Route(["a", "b"]))
        self.assertEqual(m.return_route, Route(["x"]))
        self.assertEqual(m.payload, b"payload")
        self.assertEqual(b.received, [])

    def test_unknownAddressDropped(self):
        """
        A message for an address with no worker is dropped without an
        exception, nothing else receives it, and the drop is logged.
        """
        events = captureLogs(self, "ockamtw.node")
        a, b = self.recorder("a"), self.recorder("b")
        self.node.deliver(TransportMessage(Route(["nobody", "a"]), Route(["b"]), b"x"))
        self.assertEqual((a.received, b.received), ([], []))
        self.assertEqual(len(events), 1)
        self.assertIn("0#nobody", formatEvent(events[0]))
        # The node still delivers afterwards.
        self.node.deliver(TransportMessage(Route(["a"]), Route(), b"y"))
        self.assertEqual([m.payload for m in a.received], [b"y"])

    def test_emptyOnwardDropped(self):
        """
        A message with an empty onward route goes nowhere, not even to the
        workers of its return route.
        """
        a = self.recorder("a")
        self.node.deliver(TransportMessage(Route(), Route(["a"]), b"x"))
        self.node.send(Route(), b"x", sender="a")
        self.assertEqual(a.received, [])

    def test_failingWorkerDoesNotStopDelivery(self):
        """
        A worker that raises in C{receive} has its error logged; the next
        message is still delivered, including one queued in the same
        delivery run.
        """
        boom = Exploding()
        self.node.start_worker("boom", boom)
        after = self.recorder("after")

        def fanout(worker, message):
            worker.send(["boom"], b"1")
            worker.send(["after"], b"2")

        self.node.start_worker("fanout", FunctionWorker(fanout))
        self.node.deliver(TransportMessage(Route(["boom"]), Route(), b"0"))
        self.node.deliver(TransportMessage(Route(["after"]), Route(), b"1"))
        self.node.deliver(TransportMessage(Route(["fanout"]), Route(), b""))
        self.assertEqual([m.payload for m in boom.received], [b"0", b"1"])
        self.assertEqual([m.payload for m in after.received], [b"1", b"2"])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)

    def test_deliveryIsIterative(self):
        """
        A chain of 5,000 workers, each sending a new message to the next
        (more than the recursion limit), is delivered without
        RecursionError, and the last one's answer comes back.
        """
        self.assertLess(sys.getrecursionlimit(), 5000)

        def link(i):
            def receive(worker, message):
                worker.node.send(Route([f"w{i + 1}"]) if i < 4999 else Route(["echo"]), message.payload,
                                 return_route=message.return_route)

            return FunctionWorker(receive)

        for i in range(5000):
            self.node.start_worker(f"w{i}", link(i))
        d = self.node.request(Route(["w0"]), b"deep")
        reply = self.successResultOf(d)
        self.assertEqual(reply.payload, b"deep")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_forwardingBudget(self):
        """
        A message passed on by C{hop} (which forwards, keeping its sender)
        may be forwarded L{FORWARD_BUDGET} times on one node: a route of
        that many hops works; one of 5,000 hops is dropped (one warning)
        instead of costing time in proportion to its square.
        """
        d = self.node.request(Route(["hop"] * FORWARD_BUDGET + ["echo"]), b"ok")
        reply = self.successResultOf(d)
        self.assertEqual(reply.return_route, Route(["hop"] * FORWARD_BUDGET + ["echo"]))
        events = captureLogs(self, "ockamtw.node")
        d = self.node.request(Route(["hop"] * 5000 + ["echo"]), b"deep", timeout=1)
        self.assertNoResult(d)
        self.assertEqual(len(events), 1)
        self.assertIn("forwarded too many times", formatEvent(events[0]))
        self.assertEqual(self.node.dropped, 1)
        self.reactor.advance(1)
        self.failureResultOf(d, RequestTimeout)

    def test_queuedMessagesInOrder(self):
        """
        Messages sent while a worker handles one are delivered after it
        returns, in the order sent.
        """
        order = []
        sink = self.recorder("sink")

        def first(worker, message):
            worker.send(["sink"], b"a")
            worker.send(["sink"], b"b")
            order.append("first done")
            self.assertEqual(sink.received, [])

        self.node.start_worker("first", FunctionWorker(first))
        self.node.send(["first"], b"")
        self.assertEqual(order, ["first done"])
        self.assertEqual([m.payload for m in sink.received], [b"a", b"b"])


@implementer(IWorker)
class PayloadTaker(Recorder):
    """
    A worker that also takes undecoded payloads (as a portal's stream does),
    sending each on to C{forward_to} if set.
    """

    def __init__(self, forward_to=None):
        Recorder.__init__(self)
        self.payloads = []
        self.forward_to = forward_to
        self.probe = None

    def started(self, node, address):
        Recorder.started(self, node, address)
        self.node, self.address = node, address

    def receive_payload(self, payload, source):
        self.payloads.append((payload, source))
        if self.probe is not None:
            self.probe()
        if self.forward_to is not None:
            self.node.send([self.forward_to], b"from " + payload, sender=self.address)
        return True


class HandTests(NodeTestMixin, SynchronousTestCase):
    """
    L{BaseNode.open_worker} and L{BaseNode.hand}: a message handed to a
    worker undecoded is judged and ordered as L{BaseNode.deliver} would,
    also when a worker hands on what it took at the end of its turn.
    """

    def handing(self, body):
        """
        A worker at "outer" that runs C{body(worker, message)} in its turn.
        """
        self.node.start_worker("outer", FunctionWorker(body, access=ANYONE))

    def test_notDuringAnotherTurn(self):
        """
        While a worker is in its turn, no other worker is open for handing
        unless the worker in its turn hands on (C{handing_on}).
        """
        taker = PayloadTaker()
        self.node.start_worker("taker", taker)
        seen = []
        self.handing(
            lambda w, m: seen.extend(
                [self.node.open_worker(local("taker"), None), self.node.open_worker(local("taker"), None, handing_on=True)]
            )
        )
        self.assertIs(self.node.open_worker(local("taker"), None), taker)
        self.node.deliver(TransportMessage(Route(["outer"]), Route(), b""))
        self.assertEqual(seen, [None, taker])

    def test_neverReentered(self):
        """
        A worker handed a message cannot have a message handed back to a
        worker whose turn is still on the stack: two turns are.
        """
        taker = PayloadTaker()
        self.node.start_worker("taker", taker)
        seen = []
        taker.probe = lambda: seen.append(self.node.open_worker(local("outer"), None, handing_on=True))

        def body(w, m):
            self.node.hand(local("taker"), None, taker.receive_payload, b"x", None)

        self.handing(body)
        self.node.deliver(TransportMessage(Route(["outer"]), Route(), b""))
        self.assertEqual(seen, [None])
        self.assertEqual(taker.payloads, [(b"x", None)])

    def test_notPastQueuedMessages(self):
        """
        A message handed on may not overtake one its worker already sent:
        with a message waiting, nothing is open.
        """
        self.recorder("c")
        taker = PayloadTaker()
        self.node.start_worker("taker", taker)
        seen = []

        def body(w, m):
            w.send(["c"], b"first")
            seen.append(self.node.open_worker(local("taker"), None, handing_on=True))

        self.handing(body)
        self.node.deliver(TransportMessage(Route(["outer"]), Route(), b""))
        self.assertEqual(seen, [None])

    def test_handedOnInOrder(self):
        """
        What the worker handed to sends, and what the handing worker sends
        after, are delivered once the handing worker's turn ends, in the
        order they were sent, each with the flow source of its sender's
        turn.
        """
        c = self.recorder("c")
        taker = PayloadTaker(forward_to="c")
        self.node.start_worker("taker", taker)
        outer_source, inner_source = FakeSource(), FakeSource()
        during = []

        def body(w, m):
            worker = self.node.open_worker(local("taker"), None, handing_on=True)
            self.assertIs(self.node.hand(local("taker"), inner_source, worker.receive_payload, b"data", inner_source), True)
            during.append(list(c.received))
            w.send(["c"], b"after")

        self.handing(body)
        message = TransportMessage(Route(["outer"]), Route(), b"")
        message.source = outer_source
        self.node.deliver(message)
        self.assertEqual(during, [[]])
        self.assertEqual([m.payload for m in c.received], [b"from data", b"after"])
        self.assertEqual([m.source for m in c.received], [inner_source, outer_source])

    def test_handErrorLogged(self):
        """
        An error in the worker handed to is logged, not raised into the
        handing worker, and ends neither turn's bookkeeping.
        """
        events = captureLogs(self, "ockamtw.node")

        class Failing(PayloadTaker):
            def receive_payload(self, payload, source):
                raise ZeroDivisionError("boom")

        failing = Failing()
        self.node.start_worker("failing", failing)
        results = []
        self.handing(lambda w, m: results.append(self.node.hand(local("failing"), None, failing.receive_payload, b"", None)))
        self.node.deliver(TransportMessage(Route(["outer"]), Route(), b""))
        self.assertEqual(results, [None])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertTrue(events)
        self.assertIs(self.node.open_worker(local("failing"), None), failing)


class SendTests(NodeTestMixin, SynchronousTestCase):
    """
    L{BaseNode.send}.
    """

    def test_returnRouteIsSender(self):
        """
        The return route is C{[sender]}; without a sender it is empty; an
        explicit return route wins.
        """
        a = self.recorder("a")
        self.node.send(["a"], b"1", sender="me")
        self.node.send(Route(["a"]), b"2", sender=local("you"))
        self.node.send("0#a", b"3")
        self.node.send(["a"], b"4", return_route="x => y")
        self.assertEqual(
            [(m.onward_route, m.return_route, m.payload) for m in a.received],
            [
                (Route(["a"]), Route(["me"]), b"1"),
                (Route(["a"]), Route(["you"]), b"2"),
                (Route(["a"]), Route(), b"3"),
                (Route(["a"]), Route(["x", "y"]), b"4"),
            ],
        )

    def test_routeText(self):
        """
        Route text and local MultiAddr text are accepted.
        """
        a = self.recorder("a")
        self.node.send("a => b", b"1", sender="me")
        self.node.send("/service/a/service/c", b"2", sender="me")
        self.node.send(MultiAddr.parse("/worker/a"), b"3", sender="me")
        self.assertEqual(
            [(m.onward_route, m.payload) for m in a.received],
            [(Route(["a", "b"]), b"1"), (Route(["a", "c"]), b"2"), (Route(["a"]), b"3")],
        )

    def _maxPayload(self, route, sender):
        """
        The largest payload for which the message encodes to MAX_FRAME bytes.
        """
        n = MAX_FRAME
        while TransportMessage(route, Route([sender]), b"x" * n).encoded_size() > MAX_FRAME:
            n -= 1
        self.assertEqual(
            TransportMessage(route, Route([sender]), b"x" * n).encoded_size(), MAX_FRAME
        )
        return n

    def test_messageTooLarge(self):
        """
        A message with a route of several addresses that cannot fit in a
        frame even without its first address (which a connection strips) is
        refused with L{MessageTooLarge} and not delivered; one that fits
        exactly once the first address is stripped is delivered.
        """
        a = self.recorder("a")
        route = Route(["a", "b"])
        n = self._maxPayload(Route(["b"]), local("me"))
        e = self.assertRaises(
            MessageTooLarge, self.node.send, route, b"x" * (n + 1), sender="me"
        )
        self.assertIn("65535", str(e))
        self.assertEqual(a.received, [])
        self.node.send(route, b"x" * n, sender="me")
        self.assertEqual(len(a.received), 1)
        self.assertEqual(len(a.received[0].payload), n)

    def test_messageTooLargeTcpFirstHop(self):
        """
        A single TCP address may leave the node, so it is checked too, and
        nothing is connected to.
        """
        self.assertRaises(
            MessageTooLarge, self.node.send, ["1#127.0.0.1:4000"], b"x" * MAX_FRAME, sender="me"
        )
        self.assertEqual(self.reactor.tcpClients, [])

    def test_bigPayloadToOneLocalAddress(self):
        """
        A route of one local address never leaves the node, so any payload
        size is delivered.
        """
        a = self.recorder("a")
        payload = bytes(range(256)) * 400  # 102400 bytes
        self.node.send(["a"], payload, sender="me")
        self.assertEqual(len(a.received), 1)
        self.assertEqual(a.received[0].payload, payload)

    def test_sourceInherited(self):
        """
        Messages sent while a worker handles a message inherit that
        message's source, through any number of local steps; messages sent
        from outside any delivery have no source.
        """
        source = FakeSource()
        sink = self.recorder("sink")

        def relay(worker, message):
            worker.send(["hop", "sink"], message.payload)

        self.node.start_worker("relay", FunctionWorker(relay))
        self.node.deliver(TransportMessage(Route(["relay"]), Route(), b"in", source=source))
        self.assertEqual(len(sink.received), 1)
        self.assertIs(sink.received[0].source, source)
        self.assertEqual(sink.received[0].return_route, Route(["hop", "relay"]))

        self.node.send(["relay"], b"outside")
        self.assertEqual(len(sink.received), 2)
        self.assertIsNone(sink.received[1].source)

    def test_sourceNotLeakedAcrossMessages(self):
        """
        A message queued behind one with a source keeps its own (absent)
        source.
        """
        source = FakeSource()
        sink = self.recorder("sink")

        def both(worker, message):
            worker.node.deliver(TransportMessage(Route(["sink"]), Route(), b"plain"))
            worker.send(["sink"], b"inherited")

        self.node.start_worker("both", FunctionWorker(both))
        self.node.deliver(TransportMessage(Route(["both"]), Route(), b"", source=source))
        self.assertEqual(
            [(m.payload, m.source) for m in sink.received],
            [(b"plain", None), (b"inherited", source)],
        )


class DefaultServicesTests(NodeTestMixin, SynchronousTestCase):
    """
    C{echo}, C{uppercase} and C{hop}.
    """

    def test_servicesAreWorkers(self):
        for name, cls in [("echo", Echo), ("uppercase", Uppercase), ("hop", Hop)]:
            w = self.node.worker_at(name)
            self.assertIsInstance(w, cls)
            verifyObject(IWorker, w)

    def test_echo(self):
        """
        C{echo} sends the raw payload back unchanged to the return route,
        from its own address.
        """
        me = self.recorder("me")
        payload = b"\x00\x01\x02\xff not a BARE string"
        self.node.send(["echo"], payload, sender="me")
        self.assertEqual(len(me.received), 1)
        m = me.received[0]
        self.assertEqual(m.payload, payload)
        self.assertEqual(m.onward_route, Route(["me"]))
        self.assertEqual(m.return_route, Route(["echo"]))

    def test_echoLongReturnRoute(self):
        """
        C{echo} answers to the whole return route.
        """
        me = self.recorder("me")
        self.node.send(["echo"], b"x", return_route=["hop", "me"])
        self.assertEqual(len(me.received), 1)
        self.assertEqual(me.received[0].onward_route, Route(["me"]))
        self.assertEqual(me.received[0].return_route, Route(["hop", "echo"]))

    def test_uppercase(self):
        """
        C{uppercase} answers the BARE string upper-cased, with a return
        route starting with C{0#uppercase}.
        """
        me = self.recorder("me")
        self.node.send(["uppercase"], encode_string("hello"), sender="me")
        self.node.send(["uppercase"], encode_string("straße"), sender="me")
        self.assertEqual(
            [m.payload for m in me.received], [b"\x05HELLO", encode_string("STRASSE")]
        )
        for m in me.received:
            self.assertEqual(m.onward_route, Route(["me"]))
            self.assertEqual(m.return_route[0], local("uppercase"))
            self.assertEqual(m.return_route, Route(["0#uppercase"]))

    def test_uppercaseNotBare(self):
        """
        A payload that is not one BARE string is dropped with a warning;
        nothing is answered.
        """
        events = captureLogs(self, "ockamtw.services")
        me = self.recorder("me")
        for bad in [b"\x05hi", b"\x01\xff", b"", b"\x02hi!"]:
            self.node.send(["uppercase"], bad, sender="me")
        self.assertEqual(me.received, [])
        self.assertEqual(len(events), 4)
        for event in events:
            self.assertEqual(event["log_level"], LogLevel.warn)
            self.assertIn("not a BARE string", formatEvent(event))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_hop(self):
        """
        C{hop} removes itself from the onward route and prepends itself to
        the return route.
        """
        sink = self.recorder("sink")
        self.node.send(["hop", "sink", "later"], b"p", sender="me")
        self.assertEqual(len(sink.received), 1)
        m = sink.received[0]
        self.assertEqual(m.onward_route, Route(["sink", "later"]))
        self.assertEqual(m.return_route, Route(["hop", "me"]))
        self.assertEqual(m.payload, b"p")

    def test_hopTwice(self):
        sink = self.recorder("sink")
        self.node.send(["hop", "hop", "sink"], b"p", sender="me")
        self.assertEqual(sink.received[0].onward_route, Route(["sink"]))
        self.assertEqual(sink.received[0].return_route, Route(["hop", "hop", "me"]))

    def test_hopAlone(self):
        """
        A message whose onward route ends at C{hop} is dropped quietly.
        """
        me = self.recorder("me")
        self.node.send(["hop"], b"p", sender="me")
        self.assertEqual(me.received, [])
        self.assertEqual(self.flushLoggedErrors(), [])


class RequestTests(NodeTestMixin, SynchronousTestCase):
    """
    L{BaseNode.request}.
    """

    def test_reply(self):
        """
        C{request} fires with the reply; its temporary worker and timer are
        gone afterwards.
        """
        before = self.node.worker_addresses()
        d = self.node.request(Route(["uppercase"]), encode_string("hi"))
        reply = self.successResultOf(d)
        self.assertIsInstance(reply, TransportMessage)
        self.assertEqual(reply.payload, b"\x02HI")
        self.assertEqual(reply.return_route, Route(["uppercase"]))
        self.assertEqual(len(reply.onward_route), 1)
        self.assertRegex(reply.onward_route[0].value, RANDOM_ADDRESS)
        self.assertNotIn(reply.onward_route[0], self.node.worker_addresses())
        self.assertEqual(self.node.worker_addresses(), before)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_replyLater(self):
        """
        A reply that arrives later fires the request then; only the first
        reply counts.
        """
        held = []

        def later(worker, message):
            held.append((worker, message))

        self.node.start_worker("later", FunctionWorker(later))
        d = self.node.request(["later"], b"q", timeout=10)
        self.assertNoResult(d)
        [(worker, message)] = held
        temp = message.return_route[0]
        self.assertIsNotNone(self.node.worker_at(temp))
        self.reactor.advance(9)
        self.assertNoResult(d)
        worker.reply(message, b"answer")
        self.assertEqual(self.successResultOf(d).payload, b"answer")
        self.assertIsNone(self.node.worker_at(temp))
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        # A second reply goes to an address with no worker: dropped.
        worker.reply(message, b"again")

    def test_timeout(self):
        """
        Without a reply the request fails with L{RequestTimeout} once the
        timeout passes, leaving no temporary worker and no delayed call.
        """
        black = self.recorder("blackhole")
        before = self.node.worker_addresses()
        d = self.node.request(["blackhole"], b"q", timeout=5)
        self.assertEqual(len(black.received), 1)
        temp = black.received[0].return_route[0]
        self.assertIn(temp, self.node.worker_addresses())
        self.reactor.advance(4.9)
        self.assertNoResult(d)
        self.reactor.advance(0.2)
        f = self.failureResultOf(d, RequestTimeout)
        self.assertIn("5 s", f.getErrorMessage())
        self.assertEqual(self.node.worker_addresses(), before)
        self.assertIsNone(self.node.worker_at(temp))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_multiAddrText(self):
        """
        MultiAddr text made of local hops is a route.
        """
        d = self.node.request("/service/uppercase", encode_string("abc"))
        self.assertEqual(self.successResultOf(d).payload, b"\x03ABC")
        d = self.node.request("/service/hop/service/echo", b"raw")
        reply = self.successResultOf(d)
        self.assertEqual(reply.payload, b"raw")
        self.assertEqual(reply.return_route, Route(["hop", "echo"]))

    def test_ownNodeName(self):
        """
        C{/node/<own name>} is this node.
        """
        d = self.node.request("/node/n1/service/echo", b"me")
        self.assertEqual(self.successResultOf(d).payload, b"me")

    def test_unknownNode(self):
        """
        C{/node/other} without a resolver fails with L{RouteUnreachable},
        leaving nothing behind.
        """
        before = self.node.worker_addresses()
        d = self.node.request("/node/other/service/echo", b"x")
        f = self.failureResultOf(d, RouteUnreachable)
        self.assertIn("other", f.getErrorMessage())
        self.assertEqual(self.node.worker_addresses(), before)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_badMultiAddr(self):
        """
        Bad route text fails the request with L{WireError}.
        """
        for text in ["/bogus/x", "/ip4/999.1.1.1/tcp/7000", "/service", "/tcp/7000"]:
            d = self.node.request(text, b"x")
            self.failureResultOf(d, WireError)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_unsendable(self):
        """
        A request whose message is too large fails with L{MessageTooLarge}
        and leaves no temporary worker behind.
        """
        before = self.node.worker_addresses()
        d = self.node.request(["hop", "echo"], b"x" * 70000)
        self.failureResultOf(d, MessageTooLarge)
        self.assertEqual(self.node.worker_addresses(), before)
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class StopServiceTests(NodeTestMixin, SynchronousTestCase):
    """
    L{BaseNode.stopService}.
    """

    def test_stopService(self):
        """
        C{stopService} fires once every worker has been stopped (each
        once), pending requests are cancelled, and no timer is left.
        """
        self.node.startService()
        a, b = self.recorder("a"), self.recorder(None)
        d1 = self.node.request(["a"], b"never answered", timeout=30)
        d2 = self.node.request(["a"], b"never answered either", timeout=60)
        self.assertEqual(len(self.reactor.getDelayedCalls()), 2)
        d = self.node.stopService()
        self.assertIsNone(self.successResultOf(d))
        self.assertFalse(self.node.running)
        self.assertEqual((a.stopped_calls, b.stopped_calls), (1, 1))
        self.assertEqual(self.node.worker_addresses(), [])
        self.assertIsNone(self.node.worker_at("echo"))
        self.failureResultOf(d1, CancelledError)
        self.failureResultOf(d2, CancelledError)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(len(a.received), 2)

    def test_stopServiceNeverStarted(self):
        a = self.recorder("a")
        self.assertIsNone(self.successResultOf(self.node.stopService()))
        self.assertEqual(a.stopped_calls, 1)

    def test_stopServiceTwice(self):
        """
        A second C{stopService} has nothing left to stop and does not stop a
        worker twice.
        """
        self.node.startService()
        a = self.recorder("a")
        self.successResultOf(self.node.stopService())
        self.successResultOf(self.node.stopService())
        self.assertEqual(a.stopped_calls, 1)
