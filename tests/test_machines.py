"""
The state machines of ockamtw's objects with a life: a relay client
(L{ockamtw.relay.Relay}), a secure channel end
(L{ockamtw.secure.channel.ChannelEnd}) and a portal (L{ockamtw.portal.PortalWorker}).

Each machine is driven two ways:

  - its table: the machine built on a test double of its object, which
    records the outputs it is asked for; every (state, input) pair is
    listed here as a transition (new state, outputs), as ignored (same
    state, no output) or as refused (automat's C{NoTransition}, state
    unchanged), so that the tests are the whole table;
  - its object, in memory (a node on a L{MemoryReactorClock}, sockets on
    L{StringTransport}s): the inputs as they arrive, the state and the
    effects (messages sent, Deferreds fired, timers) as they follow.
"""

from __future__ import annotations

from automat import NoTransition
from twisted.internet.defer import CancelledError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from ockamtw import Address, Route
from ockamtw import portal as portal_module
from ockamtw import relay as relay_module
from ockamtw.access import ANYONE
from ockamtw.errors import RelayRefused, RequestTimeout
from ockamtw.flow import STREAM_WINDOW
from ockamtw.interfaces import ILink
from ockamtw.node import BaseNode, FunctionWorker
from ockamtw.portal import (
    CONNECTING,
    DONE,
    FLUSHING,
    MAX_CHUNK,
    NEW,
    OPEN,
    READ_CLOSED,
    WAITING,
    WRITE_CLOSED,
    PortalWorker,
    portal_address,
)
from ockamtw.relay import (
    BACKING_OFF,
    DOWN,
    IDLE,
    REFRESHING,
    REGISTERED,
    REGISTERING,
    STARTING,
    STOPPED,
    UP,
    Relay,
)
from ockamtw.secure import channel as channel_module
from ockamtw.secure.channel import ChannelEnd, HandshakeLimits, SecureChannelListener, TrustPolicy
from ockamtw.secure.codec import CreateResponderChannelMessage
from ockamtw.secure.errors import SecureChannelError
from ockamtw.secure.identity import LocalIdentity
from ockamtw.wire import DISCONNECT, TransportMessage, decode_credit, encode_credit, encode_eof, encode_payload

from .helpers import h_string, msg_frame
from .memory_harness import MemoryMixin


class Recorder:
    """
    A test double of a machine's object: it holds the state's name (in
    C{attribute}) and records each output the machine calls.
    """

    def __init__(self, attribute: str, state: str) -> None:
        self.attribute = attribute
        self.calls = []
        setattr(self, attribute, state)

    def __getattr__(self, name):
        if name.startswith("_") and not name.startswith("__"):

            def output(*args):
                self.calls.append((name, args))

            return output
        raise AttributeError(name)


def machine_states(module):
    """
    The typed states of a module's machine, by name (the module-level
    C{_builder} states).
    """
    return {v.name: v for v in vars(module).values() if type(v).__name__ == "TypedState"}


class TableMixin:
    """
    Checks a machine's whole table: C{transitions}, C{ignored} and
    C{refused} together list every (state, input) pair exactly once.
    """

    module = None
    factory = None
    attribute = "state"
    inputs: dict = {}  # input -> arguments to give it
    transitions: list = []  # (state, input, new state, [outputs])
    ignored: list = []  # (state, input)
    refused: list = []  # (state, input)

    def drive(self, state, input):
        core = Recorder(self.attribute, state)
        machine = self.factory(core, machine_states(self.module)[state])
        getattr(machine, input)(*self.inputs[input])
        return core

    def test_every_pair_listed_once(self):
        states = set(machine_states(self.module))
        listed = [(s, i) for s, i, _, _ in self.transitions] + list(self.ignored) + list(self.refused)
        self.assertEqual(len(listed), len(set(listed)), "a pair is listed twice")
        self.assertEqual(set(listed), {(s, i) for s in states for i in self.inputs})

    def test_transitions(self):
        for state, input, new, outputs in self.transitions:
            core = self.drive(state, input)
            args = self.inputs[input]
            self.assertEqual(
                (getattr(core, self.attribute), core.calls),
                (new, [(o, args) for o in outputs]),
                f"{input} in {state}",
            )

    def test_ignored(self):
        for state, input in self.ignored:
            core = self.drive(state, input)
            self.assertEqual((getattr(core, self.attribute), core.calls), (state, []), f"{input} in {state}")

    def test_refused(self):
        for state, input in self.refused:
            core = Recorder(self.attribute, state)
            machine = self.factory(core, machine_states(self.module)[state])
            with self.assertRaises(NoTransition, msg=f"{input} in {state}"):
                getattr(machine, input)(*self.inputs[input])
            self.assertEqual((getattr(core, self.attribute), core.calls), (state, []))
            # The machine is still in that state: it takes what it takes there.
            for s, i, new, outputs in self.transitions:
                if s == state:
                    getattr(machine, i)(*self.inputs[i])
                    self.assertEqual(getattr(core, self.attribute), new)
                    break

    def test_outputs_exist(self):
        """
        Every output named in the table is a method of the object (or of
        the subclasses that supply it).
        """
        names = {o for _, _, _, outputs in self.transitions for o in outputs}
        classes = self.output_classes()
        for name in names:
            self.assertTrue(any(callable(getattr(c, name, None)) for c in classes), name)


_R = Route([Address.local("other")])


# --- the relay client ---------------------------------------------------------------------


class RelayTableTests(TableMixin, SynchronousTestCase):
    module = relay_module
    factory = relay_module._RelayMachine
    inputs = {
        "start": (),
        "start_in_background": (),
        "registered": (_R,),
        "attempt_failed": (Failure(RequestTimeout("late")),),
        "timer_fired": (),
        "link_lost": (),
        "stop": (),
    }
    transitions = [
        (IDLE, "start", STARTING, ["_start"]),
        (IDLE, "start_in_background", REGISTERING, ["_start"]),
        *[(s, "registered", REGISTERED, ["_registered"]) for s in (STARTING, REGISTERING, REFRESHING)],
        (STARTING, "attempt_failed", STOPPED, ["_start_failed"]),
        (REGISTERING, "attempt_failed", BACKING_OFF, ["_retry_later"]),
        (REFRESHING, "attempt_failed", BACKING_OFF, ["_retry_later"]),
        (REGISTERED, "timer_fired", REFRESHING, ["_register"]),
        (BACKING_OFF, "timer_fired", REGISTERING, ["_register"]),
        (STARTING, "link_lost", STARTING, ["_link_lost_while_starting"]),
        (REGISTERING, "link_lost", REGISTERING, ["_link_lost_while_registering"]),
        (REFRESHING, "link_lost", REGISTERING, ["_link_lost_while_registering"]),
        (REGISTERED, "link_lost", BACKING_OFF, ["_link_lost_reconnect"]),
        (BACKING_OFF, "link_lost", BACKING_OFF, ["_link_lost_reconnect"]),
        *[(s, "stop", STOPPED, ["_stop"]) for s in (IDLE, STARTING, REGISTERING, REGISTERED, REFRESHING, BACKING_OFF)],
        (STOPPED, "stop", STOPPED, ["_forget"]),
    ]
    ignored = [(STOPPED, "registered"), (STOPPED, "attempt_failed"), (STOPPED, "link_lost")]
    refused = [
        *[(s, i) for s in (STARTING, REGISTERING, REGISTERED, REFRESHING, BACKING_OFF, STOPPED) for i in ("start", "start_in_background")],
        *[(s, i) for s in (IDLE,) for i in ("registered", "attempt_failed", "timer_fired", "link_lost")],
        *[(s, i) for s in (REGISTERED, BACKING_OFF) for i in ("registered", "attempt_failed")],
        *[(s, "timer_fired") for s in (STARTING, REGISTERING, REFRESHING, STOPPED)],
    ]

    def output_classes(self):
        return [Relay]


# --- the relay client, in memory --------------------------------------------------------------


class RelayMachineTests(MemoryMixin, SynchronousTestCase):
    """
    A L{Relay} against a scripted relay node on a L{StringTransport}.
    """

    node_name = "n3"

    def setUp(self):
        MemoryMixin.setUp(self)
        self.proto, self.t, self.conn = self.connect()

    def relay(self, **kw):
        kw.setdefault("name", "n3")
        relay = Relay(self.node, Route([self.conn.address]), **kw)
        self.node.relays[relay.name] = relay
        self.assertEqual((relay.state, relay.status), (IDLE, DOWN))
        return relay

    def reply(self, relay):
        self.proto.dataReceived(msg_frame([str(relay._address)], ["forward_to_n3"], h_string("forward_to_n3")))

    def refuse(self, relay, reason="forward_to_n3 is taken"):
        self.proto.dataReceived(msg_frame([str(relay._address)], ["forwarding_service"], h_string(reason)))

    def test_life(self):
        """
        Starting, up, refreshing, up; a refresh unanswered: backing off
        (Down, the silent link dropped); its retry registering.
        """
        relay = self.relay(refresh=3.0, timeout=1.0)
        statuses = []
        relay.on_status(statuses.append)
        d = relay.start()
        self.assertEqual((relay.state, relay.status), (STARTING, DOWN))
        self.reply(relay)
        self.assertIs(self.successResultOf(d), relay)
        self.assertEqual((relay.state, relay.status, statuses), (REGISTERED, UP, [UP]))
        self.reactor.advance(3.0)
        self.assertEqual((relay.state, relay.status), (REFRESHING, UP))
        self.reply(relay)
        self.assertEqual((relay.state, relay.registrations), (REGISTERED, 2))
        self.reactor.advance(3.0)
        self.reactor.advance(1.0)
        self.assertEqual((relay.state, relay.status, statuses), (BACKING_OFF, DOWN, [UP, DOWN]))
        self.assertTrue(self.t.disconnecting)
        self.assertIn("no registration reply", relay.last_error)
        self.reactor.advance(0.2)
        self.assertEqual(relay.state, REGISTERING)

    def test_refused_first(self):
        """
        A refusal of the first registration fails start() and stops.
        """
        relay = self.relay()
        d = relay.start()
        address = relay._address
        self.refuse(relay)
        self.failureResultOf(d, RelayRefused)
        self.assertEqual(relay.state, STOPPED)
        self.assertIsNone(self.node.worker_at(address))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_refused_later(self):
        """
        Started in the background, a refusal is retried after a backoff.
        """
        relay = self.relay()
        relay.start_in_background()
        self.assertEqual(relay.state, REGISTERING)
        self.refuse(relay)
        self.assertEqual(relay.state, BACKING_OFF)
        self.assertIn("forward_to_n3 is taken", relay.last_error)
        self.reactor.advance(0.2)
        self.assertEqual(relay.state, REGISTERING)
        self.reply(relay)
        self.assertEqual((relay.state, relay.status, relay.last_error), (REGISTERED, UP, None))

    def test_link_lost(self):
        """
        The link lost when up: backing off, a reconnection soon; while
        refreshing: the refresh in flight fails, Down at once.
        """
        relay = self.relay(refresh=3.0, timeout=1.0)
        relay.start()
        self.reply(relay)
        self.lose(self.proto)
        self.assertEqual((relay.state, relay.status), (BACKING_OFF, DOWN))
        self.assertEqual(relay.last_error, "connection to the relay node closed")
        [retry] = self.reactor.getDelayedCalls()
        self.assertLessEqual(retry.getTime() - self.reactor.seconds(), 0.15)

        relay2 = self.relay(name="n4", refresh=3.0, timeout=1.0)
        self.proto, self.t, self.conn = self.connect()
        relay2.at = Route([self.conn.address])
        relay2.start()
        self.proto.dataReceived(msg_frame([str(relay2._address)], ["forward_to_n4"], h_string("forward_to_n4")))
        self.reactor.advance(3.0)
        self.assertEqual(relay2.state, REFRESHING)
        self.lose(self.proto)
        self.assertEqual((relay2.state, relay2.status), (REGISTERING, DOWN))

    def test_link_lost_while_starting(self):
        """
        The link lost during the first registration: no other attempt;
        start() fails when its reply is overdue.
        """
        relay = self.relay(timeout=2.0)
        d = relay.start()
        self.lose(self.proto)
        self.assertEqual(relay.state, STARTING)
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)  # the reply's time-out
        self.reactor.advance(2.0)
        self.failureResultOf(d, RequestTimeout)
        self.assertEqual(relay.state, STOPPED)

    def test_stop_at_once_from_callbacks(self):
        """
        Code called back by the relay (status observers, start()'s
        Deferred) can use it at once: a stop there has stopped it when the
        call returns.
        """
        relay = self.relay()
        seen = []

        def up(r):
            r.stop()
            seen.append(r.state)

        relay.start().addCallback(up)
        self.reply(relay)
        self.assertEqual((seen, relay.state), ([STOPPED], STOPPED))
        self.assertNotIn("n3", self.node.relays)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

        self.proto, self.t, self.conn = self.connect()
        relay2 = self.relay(name="n3")
        relay2.at = Route([self.conn.address])
        relay2.start()
        relay2.on_status(lambda s: relay2.stop() if s == DOWN else None)
        self.reply(relay2)
        self.lose(self.proto)
        self.assertEqual(relay2.state, STOPPED)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_stop(self):
        """
        Stopping from each state leaves no worker and no timer; stopping
        while starting fails start() with CancelledError; a second start
        is refused.
        """
        relay = self.relay()
        d = relay.start()
        relay.stop()
        self.failureResultOf(d, CancelledError)
        self.assertEqual((relay.state, self.reactor.getDelayedCalls()), (STOPPED, []))
        relay.stop()
        self.assertEqual(relay.state, STOPPED)
        self.assertRaises(NoTransition, relay.start)
        idle = self.relay(name="n5")
        idle.stop()
        self.assertEqual(idle.state, STOPPED)
        self.assertNotIn("n5", self.node.relays)


# --- the secure channel end ------------------------------------------------------------

_M = object()


class ChannelTableTests(TableMixin, SynchronousTestCase):
    module = channel_module
    factory = channel_module._ChannelMachine
    inputs = {
        "initiate": (_R, 10.0),
        "respond": (b"m1", 10.0),
        "wire": (_M,),
        "verified": (),
        "local": (_M,),
        "timed_out": (10.0,),
        "link_closed": (),
        "failed": (SecureChannelError("no"),),
        "close": (),
    }
    HANDSHAKE = ("m2", "m3", "m4", "m5")
    transitions = [
        ("new", "initiate", "m2", ["_send_m1"]),
        ("new", "respond", "m3", ["_send_m2"]),
        ("m2", "wire", "m4", ["_read_m2_send_m3"]),
        ("m3", "wire", "m5", ["_read_m3_send_m4"]),
        ("m4", "wire", "m4", ["_read_m4_send_m5"]),
        ("m5", "wire", "m5", ["_read_m5"]),
        ("m4", "verified", "up", ["_established"]),
        ("m5", "verified", "up", ["_established"]),
        *[(s, "timed_out", "closed", ["_give_up"]) for s in HANDSHAKE],
        *[(s, "link_closed", "closed", ["_lost_link_in_handshake"]) for s in ("new", *HANDSHAKE)],
        *[(s, "failed", "closed", ["_fail"]) for s in ("new", *HANDSHAKE, "up")],
        *[(s, "close", "closed", ["_tear_down"]) for s in ("new", *HANDSHAKE, "up")],
        ("up", "wire", "up", ["_deliver"]),
        ("up", "local", "up", ["_send_encrypted"]),
        ("up", "link_closed", "closed", ["_lost_link"]),
        *[(s, "local", s, ["_drop_local"]) for s in ("new", *HANDSHAKE, "closed")],
        ("new", "wire", "new", ["_drop_frame"]),
        ("closed", "wire", "closed", ["_drop_frame"]),
    ]
    ignored = [("closed", i) for i in ("close", "link_closed", "timed_out", "failed", "verified")]
    refused = [
        *[(s, i) for s in ("m2", "m3", "m4", "m5", "up", "closed") for i in ("initiate", "respond")],
        ("new", "verified"), ("m2", "verified"), ("m3", "verified"), ("up", "verified"),
        ("new", "timed_out"), ("up", "timed_out"),
    ]

    def output_classes(self):
        return [ChannelEnd]


# --- the secure channel end, in memory ------------------------------------------------------

_LIMITS = HandshakeLimits(rate=1e6, burst=10**6, peer_rate=1e6, peer_burst=10**6)


@implementer(ILink)
class _Link:
    """
    A stand-in for the TCP connection a peer's handshake came through.
    """

    identity = None
    socket_address = "127.0.0.1:4000"

    def __init__(self) -> None:
        self.connected = True
        self.callbacks = {}

    def on_close(self, f):
        key = len(self.callbacks) + 1
        self.callbacks[key] = f
        return key

    def cancel_on_close(self, key):
        self.callbacks.pop(key, None)

    def close(self):
        self.connected = False
        for f in list(self.callbacks.values()):
            f(self)


class ChannelMachineTests(SynchronousTestCase):
    """
    Channel ends on one node with a fake clock: an initiator (identity A)
    and the listener C{api} (identity B), so that a handshake runs at once
    in local deliveries.
    """

    def setUp(self):
        self.node = BaseNode(MemoryReactorClock(), name="c")
        self.a, self.b = LocalIdentity.create(), LocalIdentity.create()
        self.listener = SecureChannelListener(self.b, limits=_LIMITS)
        self.node.start_worker("api", self.listener)

    def initiator(self):
        return ChannelEnd(self.node, self.a, TrustPolicy(), initiator=True)

    def test_handshake(self):
        end = self.initiator()
        self.assertEqual(end.state, "new")
        d = end.start_initiator(Route([Address.local("api")]), 10.0)
        self.assertIs(self.successResultOf(d), end)
        (responder,) = self.listener.channels
        self.assertEqual((end.state, responder.state), ("up", "up"))
        self.assertEqual((end.identity, responder.identity), (self.b.identifier, self.a.identifier))
        self.assertEqual(self.node.reactor.getDelayedCalls(), [])

    def test_use_at_once_in_the_callback(self):
        """
        Code called back when the channel is up (its Deferred's callbacks)
        can use it at once, here close it: it is closed when the call
        returns.
        """
        end = self.initiator()
        seen = []

        def up(e):
            e.close()
            seen.append(e.state)

        end.start_initiator(Route([Address.local("api")]), 10.0).addCallback(up)
        self.assertEqual((seen, end.state), (["closed"], "closed"))
        self.assertIsNone(self.node.worker_at(end.decryptor))

    def test_not_a_listener(self):
        """
        Whatever answers M1 with something else than M2 fails the
        handshake at once.
        """
        self.node.start_worker("echo", FunctionWorker(lambda w, m: w.reply(m, m.payload), access=ANYONE))
        end = self.initiator()
        end.route_text = "/service/echo"
        d = end.start_initiator(Route([Address.local("echo")]), 10.0)
        f = self.failureResultOf(d, SecureChannelError)
        self.assertIn("did not answer as a secure channel listener", f.getErrorMessage())
        self.assertEqual((end.state, end.dropped), ("closed", 1))
        self.assertIs(end.failure, f.value)
        self.assertEqual(self.node.reactor.getDelayedCalls(), [])

    def test_timeout(self):
        self.node.start_worker("sink", FunctionWorker(lambda w, m: None, access=ANYONE))
        end = self.initiator()
        d = end.start_initiator(Route([Address.local("sink")]), 3.0)
        self.assertEqual(end.state, "m2")
        self.node.reactor.advance(2.9)
        self.assertNoResult(d)
        self.node.reactor.advance(0.1)
        self.failureResultOf(d, RequestTimeout)
        self.assertEqual(end.state, "closed")

    def test_before_start_and_before_up(self):
        """
        A frame at the decryptor before the end starts is dropped; a
        message to send before it is up is dropped too.
        """
        end = self.initiator()
        end._wire(TransportMessage(Route([end.decryptor]), Route([]), b"junk"))
        self.assertEqual((end.state, end.dropped), ("new", 1))
        end._local(TransportMessage(Route([end.encryptor, Address.local("x")]), Route([]), b"early"))
        self.assertEqual(end.state, "new")

    def half_open_responder(self, link):
        """
        A responder for an M1 that came through C{link}, whose M2 goes to
        a sink (so that it stays half-open).
        """
        captured = []
        self.node.start_worker("capture", FunctionWorker(lambda w, m: captured.append(m), access=ANYONE))
        self.node.start_worker("sink", FunctionWorker(lambda w, m: None, access=ANYONE))
        self.initiator().start_initiator(Route([Address.local("capture")]), 10.0)
        m1 = TransportMessage(Route([Address.local("api")]), Route([Address.local("sink")]), captured[0].payload)
        m1.origin = link
        self.listener.receive(m1)
        (responder,) = self.listener.channels
        return responder

    def test_link_closed_during_handshake(self):
        link = _Link()
        responder = self.half_open_responder(link)
        self.assertEqual(responder.state, "m3")
        link.close()
        self.assertEqual(responder.state, "closed")
        self.assertIsInstance(responder.failure, SecureChannelError)
        self.assertIn("closed during the handshake", str(responder.failure))
        self.assertEqual((self.listener.stats()["half_open"], self.listener.failed), (0, 1))

    def test_m1_through_a_closed_link(self):
        """
        An M1 whose link is already closed is refused before any answer.
        """
        link = _Link()
        link.connected = False
        end = ChannelEnd(self.node, self.b, TrustPolicy(), initiator=False)
        m1 = TransportMessage(Route([Address.local("api")]), Route([Address.local("nowhere")]), b"")
        m1.origin = link
        request = CreateResponderChannelMessage.for_initiator(b"\x00" * 32, Address.local("back"))
        self.assertRaises(SecureChannelError, end.start_responder, m1, 10.0, request)
        self.assertEqual(end.state, "closed")
        self.assertIn("closed during the handshake", str(end.failure))

    def test_verified_after_closed_is_ignored(self):
        end = self.initiator()
        end.close()
        end._machine.verified()
        end._machine.link_closed()
        self.assertEqual(end.state, "closed")
        self.assertRaises(NoTransition, end.start_initiator, Route([Address.local("api")]), 1.0)


# --- the portal ---------------------------------------------------------------------

_T, _O = object(), object()


class PortalTableTests(TableMixin, SynchronousTestCase):
    module = portal_module
    factory = portal_module._StreamMachine
    inputs = {
        "socket_made": (_T,),
        "remote_known": (_R, _O),
        "pong": (_R, _O),
        "refused": ("no",),
        "unreachable": ("no",),
        "socket_eof": (),
        "socket_lost": (None,),
        "disconnected": (),
        "peer_eof": (),
        "finish": (True, 1.0, 2.0, False),
    }
    OPENED = (OPEN, READ_CLOSED, WRITE_CLOSED)
    transitions = [
        (NEW, "socket_made", WAITING, ["_take_first_socket"]),
        (NEW, "remote_known", CONNECTING, ["_remember_remote"]),
        (WAITING, "remote_known", OPEN, ["_remember_remote"]),
        (CONNECTING, "socket_made", OPEN, ["_take_second_socket"]),
        (DONE, "socket_made", DONE, ["_close_late_socket"]),
        (WAITING, "pong", OPEN, ["_open_on_pong"]),
        (WAITING, "refused", FLUSHING, ["_end_refused"]),
        *[(s, "pong", s, ["_turn_away_pong"]) for s in OPENED],
        *[(s, "unreachable", FLUSHING, ["_end_unreachable"]) for s in OPENED],
        (CONNECTING, "peer_eof", CONNECTING, ["_hold_eof"]),
        (WAITING, "socket_eof", FLUSHING, ["_end_at_eof"]),
        (OPEN, "socket_eof", READ_CLOSED, ["_read_ended"]),
        (WRITE_CLOSED, "socket_eof", FLUSHING, ["_end_both_read"]),
        (OPEN, "peer_eof", WRITE_CLOSED, ["_shut_down_writing"]),
        (READ_CLOSED, "peer_eof", FLUSHING, ["_end_by_peer"]),
        (WAITING, "disconnected", FLUSHING, ["_end_before_open"]),
        *[(s, "disconnected", FLUSHING, ["_end_by_peer"]) for s in OPENED],
        *[(s, "disconnected", DONE, ["_end_by_peer_at_once"]) for s in (NEW, CONNECTING)],
        *[(s, "finish", DONE, ["_end_at_once"]) for s in (NEW, CONNECTING)],
        *[(s, "finish", FLUSHING, ["_end"]) for s in (WAITING, *OPENED)],
        *[(s, "socket_lost", DONE, ["_lost_socket"]) for s in (WAITING, *OPENED)],
        (FLUSHING, "socket_lost", DONE, ["_socket_closed"]),
        (DONE, "socket_lost", DONE, ["_late_socket_closed"]),
        # finish (close() with hurry) while flushing shortens the flush
        (FLUSHING, "finish", FLUSHING, ["_hurry"]),
        (DONE, "finish", DONE, ["_hurry"]),
    ]
    ignored = [
        *[(s, "refused") for s in OPENED],
        (READ_CLOSED, "socket_eof"),
        (FLUSHING, "socket_eof"),
        (DONE, "socket_eof"),  # a socket that connected late, closing
        (WRITE_CLOSED, "peer_eof"),
        (FLUSHING, "unreachable"),
        (DONE, "unreachable"),
    ]
    # What cannot happen is refused: a second socket or a second other
    # side, Eof or a lost socket before there is one, anything but a late
    # socket once the stream is over.
    refused = [
        (NEW, "pong"), (NEW, "refused"), (NEW, "socket_eof"), (NEW, "socket_lost"), (NEW, "peer_eof"),
        (WAITING, "socket_made"), (WAITING, "peer_eof"),
        *[(s, "unreachable") for s in (NEW, WAITING, CONNECTING)],
        (CONNECTING, "remote_known"), (CONNECTING, "pong"), (CONNECTING, "refused"),
        (CONNECTING, "socket_eof"), (CONNECTING, "socket_lost"),
        *[(s, i) for s in OPENED for i in ("socket_made", "remote_known")],
        (FLUSHING, "socket_made"),
        *[(s, i) for s in (FLUSHING, DONE) for i in ("remote_known", "pong", "refused", "disconnected", "peer_eof")],
    ]

    def output_classes(self):
        from ockamtw.portal.inlet import InletPortal
        from ockamtw.portal.outlet import OutletPortal

        return [PortalWorker, InletPortal, OutletPortal]


# --- the portal, in memory ------------------------------------------------------------------


class _Owner:
    """
    What a portal needs of its inlet or outlet.
    """

    def __init__(self, node) -> None:
        self.node = node
        self.finished = []

    def _portal_finished(self, portal) -> None:
        self.finished.append(portal)


class _HalfClosingTransport(StringTransport):
    write_lost = False

    def loseWriteConnection(self):
        self.write_lost = True


class PortalMachineTests(SynchronousTestCase):
    """
    A L{PortalWorker} on a node with a fake clock, its socket a
    L{StringTransport}, the other side a worker that records what it gets.
    """

    def setUp(self):
        self.node = BaseNode(MemoryReactorClock(), name="m")
        self.got = []
        self.owner = _Owner(self.node)

    def other_side(self, flow=True):
        return self.node.start_worker(portal_address(flow), FunctionWorker(lambda w, m: self.got.append(m.payload)))

    def portal(self):
        portal = PortalWorker(self.owner)
        self.node.start_worker(portal_address(True), portal)
        return portal

    def opened(self, flow=True):
        peer = self.other_side(flow)
        portal = self.portal()
        transport = _HalfClosingTransport()
        portal._socket_made(transport)
        portal.set_remote(Route([peer]))
        return portal, transport, peer

    def test_socket_first(self):
        """
        The socket first (as an inlet's client): L{WAITING}; nothing read
        is sent and no Payload written until the other side is known.
        """
        portal = self.portal()
        self.assertEqual(portal.state, NEW)
        transport = StringTransport()
        portal._socket_made(transport)
        self.assertEqual(portal.state, WAITING)
        portal._socket_data(b"early")
        peer = self.other_side()
        self.node.send(portal.address, encode_payload(b"too soon"), sender=peer)
        self.assertEqual((self.got, transport.value(), portal.dropped), ([], b"", 1))
        portal.set_remote(Route([peer]))
        self.assertEqual(portal.state, OPEN)
        self.assertTrue(portal.flow)
        portal._socket_data(b"now")
        self.assertEqual(self.got, [encode_payload(b"now")])

    def test_other_side_first(self):
        """
        The other side first (as an outlet's Ping): L{CONNECTING} until
        the socket is there; a Payload meanwhile is not written.
        """
        peer = self.other_side()
        portal = self.portal()
        portal.set_remote(Route([peer]))
        self.assertEqual(portal.state, CONNECTING)
        self.assertIsNone(portal.transport)
        self.node.send(portal.address, encode_payload(b"x"), sender=peer)
        self.assertEqual((portal.bytes_out, portal.dropped), (0, 0))
        transport = StringTransport()
        portal._socket_made(transport)
        self.assertEqual(portal.state, OPEN)
        self.node.send(portal.address, encode_payload(b"y"), sender=peer)
        self.assertEqual(transport.value(), b"y")

    def test_second_other_side_refused(self):
        portal, transport, peer = self.opened()
        self.assertRaises(NoTransition, portal.set_remote, Route([peer]))
        self.assertEqual(portal.state, OPEN)

    def test_half_close_here_first(self):
        """
        End of file here: L{READ_CLOSED}, Eof sent; the other side's Eof
        then ends the stream without Disconnect (L{FLUSHING}); the socket
        closed, it is L{DONE} and the owner told.
        """
        portal, transport, peer = self.opened()
        portal._socket_eof()
        self.assertEqual((portal.state, portal.read_done, portal.finished), (READ_CLOSED, True, False))
        self.assertEqual(self.got, [encode_eof()])
        portal._socket_eof()  # a second end of file changes nothing
        self.assertEqual((portal.state, self.got), (READ_CLOSED, [encode_eof()]))
        self.node.send(portal.address, encode_payload(b"still"), sender=peer)
        self.assertEqual(transport.value(), b"still")
        done = portal.when_done()
        self.node.send(portal.address, encode_eof(), sender=peer)
        self.assertEqual(portal.state, FLUSHING)
        self.assertTrue(transport.disconnecting)
        self.assertIsNone(self.node.worker_at(portal.address))
        self.assertEqual(self.got, [encode_eof()])  # no Disconnect
        self.assertNoResult(done)
        portal._socket_lost(None)
        self.assertEqual(portal.state, DONE)
        self.assertEqual(self.owner.finished, [portal])
        self.successResultOf(done)
        self.successResultOf(portal.when_done())

    def test_half_close_there_first(self):
        """
        The other side's Eof first: L{WRITE_CLOSED}, the socket's write
        side shut down, a later Payload not written; end of file here then
        sends Eof and ends the stream.
        """
        portal, transport, peer = self.opened()
        self.node.send(portal.address, encode_eof(), sender=peer)
        self.assertEqual((portal.state, portal.write_done, transport.write_lost), (WRITE_CLOSED, True, True))
        self.node.send(portal.address, encode_payload(b"late"), sender=peer)
        self.node.send(portal.address, encode_eof(), sender=peer)  # a second Eof is ignored
        self.assertEqual((portal.state, transport.value()), (WRITE_CLOSED, b""))
        portal._socket_data(b"answer")
        self.assertEqual(self.got, [encode_payload(b"answer")])
        portal._socket_eof()
        self.assertEqual(portal.state, FLUSHING)
        self.assertEqual(self.got, [encode_payload(b"answer"), encode_eof()])

    def test_end_of_file_without_flow_control(self):
        """
        With a peer that has no flow control (Ockam 0.83), end of file
        ends the stream: Disconnect, and the socket flushes.
        """
        portal, transport, peer = self.opened(flow=False)
        self.assertFalse(portal.flow)
        portal._socket_eof()
        self.assertEqual(portal.state, FLUSHING)
        self.assertEqual(self.got, [DISCONNECT])
        self.assertTrue(transport.disconnecting)

    def test_disconnect(self):
        """
        Disconnect from the other side: while open, the socket flushes;
        while connecting (no socket yet), done at once.
        """
        portal, transport, peer = self.opened()
        self.node.send(portal.address, DISCONNECT, sender=peer)
        self.assertEqual(portal.state, FLUSHING)
        self.assertEqual(self.got, [])
        portal2 = self.portal()
        portal2.set_remote(Route([peer]))
        self.node.send(portal2.address, DISCONNECT, sender=peer)
        self.assertEqual(portal2.state, DONE)
        self.assertEqual(self.owner.finished, [portal2])

    def test_socket_lost(self):
        """
        The socket closed while open: Disconnect to the other side, done.
        """
        portal, transport, peer = self.opened()
        portal._socket_lost(None)
        self.assertEqual((portal.state, self.got, self.owner.finished), (DONE, [DISCONNECT], [portal]))
        self.assertIsNone(portal.transport)

    def test_close_hurries_a_flush(self):
        """
        L{PortalWorker.close} ends an open stream (Disconnect) and bounds
        its flush; on one already flushing it only bounds the flush; once
        done it fires at once.
        """
        portal, transport, peer = self.opened()
        self.node.send(portal.address, DISCONNECT, sender=peer)
        self.assertEqual(portal.state, FLUSHING)
        d = portal.close()
        self.assertEqual(portal.state, FLUSHING)
        self.assertEqual(self.got, [])  # no Disconnect: the other side ended it
        clock = self.node.reactor
        clock.advance(portal.close_grace + 0.1)
        self.assertTrue(transport.disconnecting)
        portal._socket_lost(None)
        self.successResultOf(d)
        self.successResultOf(portal.close())
        self.assertEqual(portal.state, DONE)

    def test_finish_twice(self):
        portal, transport, peer = self.opened()
        portal.finish(notify=True)
        portal.finish(notify=True)
        self.assertEqual((portal.state, self.got), (FLUSHING, [DISCONNECT]))

    def test_credit_paused_is_a_number_comparison(self):
        """
        Out of credit is no state: it is bytes sent against the limit.
        """
        portal, transport, peer = self.opened()
        while portal.bytes_in < STREAM_WINDOW:
            self.assertFalse(portal.credit_paused)
            portal._socket_data(b"s" * MAX_CHUNK)
        self.assertTrue(portal.credit_paused)
        self.assertEqual((portal.state, transport.producerState), (OPEN, "paused"))
        self.node.send(portal.address, encode_credit(portal.bytes_in + 1), sender=peer)
        self.assertFalse(portal.credit_paused)
        self.assertEqual(transport.producerState, "producing")

    def test_grants_only_while_writing(self):
        """
        Credit is granted as Payloads are written, not once the other
        side's Eof came.
        """
        portal, transport, peer = self.opened()
        for _ in range(STREAM_WINDOW // MAX_CHUNK):
            self.node.send(portal.address, encode_payload(b"r" * MAX_CHUNK), sender=peer)
        grants = [decode_credit(p) for p in self.got]
        self.assertTrue(grants)
        self.node.send(portal.address, encode_eof(), sender=peer)
        del self.got[:]
        portal._drained()
        self.assertEqual(self.got, [])

    def test_node_stopping(self):
        """
        The node removing an open portal ends it as close() does.
        """
        portal, transport, peer = self.opened()
        self.node.stop_worker(portal.address)
        self.assertEqual((portal.state, self.got), (FLUSHING, [DISCONNECT]))


class IndexedLookupTests(SynchronousTestCase):
    """
    L{ockamtw.machines.indexed}: the three machines find a transition in a
    table, and the table answers as automat's own scan of the transitions
    does, for every state and every input (a missing pair raises
    automat's C{NoTransition} both ways).
    """

    machines = {
        "portal": portal_module._StreamMachine,
        "relay": relay_module._RelayMachine,
        "channel": channel_module._ChannelMachine,
    }

    def test_tableInstalled(self):
        for name, machine in self.machines.items():
            lookup = machine.__automat_automaton__.outputForInput
            self.assertTrue(hasattr(lookup, "scan"), f"{name}: automat's scan is still the lookup")

    def test_sameAnswersAsTheScan(self):
        for name, machine in self.machines.items():
            automaton = machine.__automat_automaton__
            lookup = automaton.outputForInput
            states = automaton.states()
            inputs = automaton.inputAlphabet()
            self.assertGreater(len(states), 3, name)
            answered = refused = 0
            for state in states:
                for symbol in inputs:
                    try:
                        expected = lookup.scan(state, symbol)
                    except NoTransition:
                        self.assertRaises(NoTransition, lookup, state, symbol)
                        refused += 1
                        continue
                    new, outputs = lookup(state, symbol)
                    self.assertIs(new, expected[0], (name, state, symbol))
                    self.assertEqual(list(outputs), list(expected[1]), (name, state, symbol))
                    answered += 1
            self.assertEqual(answered, len(automaton.allTransitions()), name)
            self.assertGreater(refused, 0, name)

    def test_outputsAreFreshLists(self):
        # automat's caller may keep or change the list it is given.
        automaton = self.machines["portal"].__automat_automaton__
        state, symbol, _, _ = next(iter(automaton.allTransitions()))
        first = automaton.outputForInput(state, symbol)[1]
        first.append("changed")
        self.assertNotIn("changed", automaton.outputForInput(state, symbol)[1])
