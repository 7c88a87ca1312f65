"""
The state machines of ockamtw's objects with a life: a relay client
(L{ockamtw.relay.Relay}).

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
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from ockamtw import Address, Route
from ockamtw import relay as relay_module
from ockamtw.errors import RelayRefused, RequestTimeout
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

from .helpers import h_string
from .test_relay import MemoryMixin, msg_frame


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
