"""
Relays (formerly forwarders), section 5 of docs/protocol.md.

L{ForwardingService} runs on every node at C{forwarding_service} (and,
project-style, at C{static_forwarding_service}): a registration creates a
L{Forwarder} at the alias, which sends whatever reaches it down the route
the registration came from.

L{Relay} is the client side: it registers a name at a relay node and keeps
the registration alive, reconnecting with backoff when the link dies;
L{Relays} is the feature that keeps a node's relays (their state and their
control routes).

Who may do what:
  - anyone may register a name and send to a forwarder (a relay node is a
    public meeting point), within limits: names of at most
    L{MAX_NAME_LENGTH} characters, L{RelayLimits.per_owner} names per
    connection or secure channel, L{RelayLimits.total} in all;
  - a forwarder belongs to the origin of its registration (the connection
    or secure channel it came through, see L{ockamtw.access}) and dies with
    it; only its owner may refresh it, through the very same route, or,
    over secure channels, the same identity;
  - what a forwarder passes on speaks for its owner
    (L{ockamtw.access.Relayed}), so it may enter the owner's secure channel
    and nothing else;
  - the registering side's endpoint accepts only what comes back through
    its link to the relay node.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
from typing import Callable, Dict, List, Optional, Protocol

from automat import TypeMachineBuilder
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet import protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from zope.interface import implementer

from .machines import indexed, transitions
from .access import ANYONE, Relayed, describe_origin
from .errors import AddressInUse, MessageTooLarge, RelayRefused, RequestTimeout, WireError
from .feature import ControlError, Feature, service_name
from .flow import credit_stream
from .interfaces import IAccessPolicy, IConnection, IOrigin
from .logs import short
from .node import Worker
from .routing import LOCAL, Address, Route, parse_route_text
from .status import DOWN, UP
from .wire import decode_string, encode_header, encode_string

log = Logger(namespace="ockamtw.relay")

FORWARDING_SERVICE = "forwarding_service"
STATIC_FORWARDING_SERVICE = "static_forwarding_service"


#: The end of an ockamtw relay client's address: a relay node that sees it
#: says why it refuses a registration (Ockam 0.83's have plain hex).
RELAY_MARK = ".r1"


def relay_address(secret: Optional[bytes] = None, name: Optional[str] = None) -> Address:
    """
    An address for a relay client's worker: 32 hex characters and
    L{RELAY_MARK}; random, or, given a node's C{secret} and a relay
    C{name}, the same each time (a relay deleted and made again under its
    name registers from the same route, which the relay node lets its
    owner do: Ockam 0.83 has no message that removes a forwarder) and
    unguessable to others.
    """
    if secret is None or name is None:
        return Address.local(os.urandom(16).hex() + RELAY_MARK)
    digest = hmac.new(secret, name.encode("utf-8"), hashlib.sha256).digest()
    return Address.local(digest[:16].hex() + RELAY_MARK)


#: The longest relay name (characters) a relay node accepts.
MAX_NAME_LENGTH = 128


class RelayLimits:
    """
    How many forwarders a relay node keeps: C{per_owner} for each
    connection or secure channel that registers them, C{total} in all.
    Registrations made on the node itself are not limited.
    """

    def __init__(self, per_owner: int = 64, total: int = 10000) -> None:
        self.per_owner = per_owner
        self.total = total

    def to_dict(self) -> dict:
        return {"relay_names_per_owner": self.per_owner, "relays_total": self.total, "relay_name_length": MAX_NAME_LENGTH}


def alias_for(name: str) -> str:
    """
    The forwarder address of a relay named C{name}: C{forward_to_<name>}.
    """
    return f"forward_to_{name}"


class Forwarder(Worker):
    """
    A relay's forwarder on the relay node: a message arriving with onward
    C{[alias, rest...]} leaves with onward C{forward_route + rest}, its
    return route unchanged, speaking for the owner
    (L{ockamtw.access.Relayed}).  Anyone may send to it.

    @ivar owner: the origin of the registration (a TCP connection, a
        secure channel end, or C{None} for one made on this node); the
        forwarder dies with it.
    @ivar link: the TCP connection the forward route starts with, if any
        (the fast path writes straight to it).
    """

    access = ANYONE

    def __init__(self, forward_route: Route, owner, link=None) -> None:
        self.owner = owner
        self.link = link
        self.forward_route = forward_route
        self.forwarded = 0
        self._origin = Relayed(owner)
        self._owner_key = None
        self._registry: Optional[RelayRegistry] = None

    def stopped(self) -> None:
        if self._registry is not None:
            self._registry.disown(self.address, self)

    @property
    def forward_route(self) -> Route:
        return self._forward_route

    @forward_route.setter
    def forward_route(self, route: Route) -> None:
        self._forward_route = route
        self._direct = None
        # For the fast path: the forward route after its first hop (the
        # link, which strips itself), encoded once.
        self._after_link = route[1:]
        self._after_link_encoded = b"".join([a.encode() for a in self._after_link])

    def _writes_to(self, link) -> bool:
        """
        Whether the forward route starts with C{link} (remembered for the
        last link asked about: a forwarder keeps its link).
        """
        known = self._direct
        if known is not None and known[0] is link:
            return known[1]
        answer = self._forward_route[0] == link.address
        self._direct = (link, answer)
        return answer

    def owned_by(self, owner, route: Route) -> bool:
        """
        Whether a registration from C{owner} with return route C{route}
        comes from this forwarder's owner: the same secure channel
        identity, or the same origin and the very same route.
        """
        identity = getattr(owner, "identity", None)
        if identity is not None and identity == getattr(self.owner, "identity", None):
            return True
        return owner is self.owner and route == self.forward_route

    @property
    def alive(self) -> bool:
        owner = self.owner
        return owner is None or getattr(owner, "connected", True)

    def receive(self, message) -> None:
        link = self.link
        route = self._forward_route
        if link is not None and link.connected and link.loop is None and self._writes_to(link):
            # Fast path: straight to the registering connection, as the
            # connection worker would write it: the onward route's first
            # address (this forwarder) becomes the forward route after
            # its link.
            onward = message.onward_route
            parts = [a.encode() for a in onward]
            parts[0] = self._after_link_encoded
            payload = message.payload
            head = encode_header(
                len(self._after_link) + len(onward) - 1,
                parts,
                message.return_route,
                len(payload),
            )
            source = message.source
            link.write_body(
                head, payload, source, source is not None and link.backpressure.congested and credit_stream(message)
            )
        else:
            self.node.forward(message, route + message.onward_route.step(), message.return_route, origin=self._origin)
        self.forwarded += 1


class RelayRegistry:
    """
    The forwarders of one node by owner, shared by its relay services so
    that the limits count every registration once.
    """

    def __init__(self, limits: Optional[RelayLimits] = None, forwarder_access=None) -> None:
        self.limits = limits or RelayLimits()
        #: who may send to the forwarders (anyone: a relay node is a public
        #: meeting point; a project node admits its members only)
        self.forwarder_access = forwarder_access
        #: owner -> set of aliases it holds (not for this node's own)
        self._by_owner: dict = {}
        self.refused = 0

    def count(self, owner=None) -> int:
        """
        Forwarders held by C{owner}, or by remote owners in all.
        """
        if owner is not None:
            return len(self._by_owner.get(owner, ()))
        return sum(len(v) for v in self._by_owner.values())

    def adopt(self, node, address: Address, forwarder: "Forwarder") -> None:
        forwarder._registry = self
        owner = forwarder.owner
        if owner is None:
            return
        self._by_owner.setdefault(owner, set()).add(address)
        if IOrigin.providedBy(owner):
            forwarder._owner_key = owner.on_close(lambda _: self._owner_closed(node, address, forwarder))

    def disown(self, address: Address, forwarder: "Forwarder") -> None:
        owner = forwarder.owner
        held = self._by_owner.get(owner)
        if held is not None:
            held.discard(address)
            if not held:
                del self._by_owner[owner]
        if forwarder._owner_key is not None and IOrigin.providedBy(owner):
            owner.cancel_on_close(forwarder._owner_key)
        forwarder._owner_key = None

    def _owner_closed(self, node, address: Address, forwarder: "Forwarder") -> None:
        forwarder._owner_key = None
        if node.worker_at(address) is forwarder:
            node.stop_worker(address)
            log.info("relay {alias} removed: its owner is gone", alias=short(address.value), node=node.name)
        else:
            self.disown(address, forwarder)


class ForwardingService(Worker):
    """
    The relay service.  The registration payload is a BARE string: the
    alias itself (C{forwarding_service}), or a name whose alias is
    C{forward_to_<name>} (C{static_forwarding_service}).  Anyone may send
    to it.

    Registration is idempotent and answered each time, from the forwarder's
    address, with the registration payload.  A forwarder belongs to the
    origin its registration came from and dies with it, freeing its alias;
    while it lives, only its owner may register the alias again (see
    L{Forwarder.owned_by}).
    """

    access = ANYONE

    def __init__(self, static: bool = False, registry: Optional[RelayRegistry] = None) -> None:
        self.static = static
        self.registry = registry or RelayRegistry()

    def _refuse(self, message, reason: str, **kw) -> None:
        self.registry.refused += 1
        self.node.throttle.log(
            log,
            "warn",
            ("relay refused", message.origin),
            "relay registration from {origin} refused: " + reason,
            origin=describe_origin(message.origin),
            node=self.node.name,
            **kw,
        )
        route = message.return_route
        if route and route[-1].value.endswith(RELAY_MARK):
            # An ockamtw relay client: tell it why (from this service's
            # address, where a success comes from the forwarder's).  Ockam
            # 0.83 clients get nothing, as from 0.83.
            try:
                self.node.send(route, encode_string(reason.format(**kw)[:200]), sender=self.address)
            except Exception:
                log.failure("answering a refused registration failed")

    def receive(self, message) -> None:
        node = self.node
        try:
            text = decode_string(message.payload)
        except WireError as e:
            self._refuse(message, "not a BARE string ({error})", error=short(str(e)))
            return
        if not text or "\x00" in text or len(text) > MAX_NAME_LENGTH:
            self._refuse(message, "bad name {name} (1 to {max} characters)", name=short(text), max=MAX_NAME_LENGTH)
            return
        alias = alias_for(text) if self.static else text
        route = message.return_route
        if not route:
            self._refuse(message, "no return route")
            return
        owner = message.origin
        address = Address(LOCAL, alias)
        link = node.link_of(route[0])
        if not IConnection.providedBy(link):
            link = None  # the fast path writes to a connection only
        existing = node.worker_at(address)
        if existing is None:
            registry = self.registry
            if owner is not None:
                held = registry.count(owner)
                if held >= registry.limits.per_owner:
                    self._refuse(message, "it holds {n} relays already", n=held)
                    return
                if registry.count() >= registry.limits.total:
                    self._refuse(message, "this node holds {n} relays already", n=registry.limits.total)
                    return
            forwarder = Forwarder(route, owner, link)
            node.start_worker(address, forwarder, access=registry.forwarder_access)
            registry.adopt(node, address, forwarder)
            log.info(
                "relay {alias} registered by {origin}",
                alias=short(alias),
                origin=describe_origin(owner),
                node=node.name,
            )
        elif isinstance(existing, Forwarder) and existing.owned_by(owner, route):
            if existing.owner is not owner:
                # The same identity through a new secure channel.
                self.registry.disown(address, existing)
                existing.owner = owner
                existing._origin = Relayed(owner)
                self.registry.adopt(node, address, existing)
            existing.forward_route = route
            existing.link = link
        else:
            self._refuse(message, "{alias} is taken", alias=short(alias))
            return
        try:
            node.send(route, message.payload, sender=address)
        except MessageTooLarge as e:
            log.warn("relay {alias}: reply too large: {error}", alias=short(alias), error=str(e))


class _RelayWorker(Worker):
    """
    The registering side's worker M: registration replies end here; relayed
    messages continue along the rest of their onward route.  It accepts
    only what comes back through its link to the relay node (the TCP
    connection or secure channel its route starts with).
    """

    def __init__(self, relay: "Relay") -> None:
        self._relay = relay
        self.access = _FromRelayLink(relay)

    def receive(self, message) -> None:
        onward = message.onward_route
        if len(onward) == 1:
            self._relay._registration_reply(message)
            return
        self.node.forward(message, onward.step(), message.return_route)


@implementer(IAccessPolicy)
class _FromRelayLink:
    def __init__(self, relay: "Relay") -> None:
        self.relay = relay

    def allows(self, message) -> bool:
        origin = message.origin
        return origin is None or (origin is self.relay._link and origin is not None)

    def __str__(self) -> str:
        return f"only the link to the relay node of relay {self.relay.name}"


class _RelayInputs(Protocol):
    """
    What happens to a relay client: the inputs of its machine (L{Relay}).
    """

    def start(self) -> None:
        "L{Relay.start}: register for the first time; if that fails, stop."

    def start_in_background(self) -> None:
        "L{Relay.start_in_background}: register, and retry until it works."

    def registered(self, route: object) -> None:
        "The relay node answered the registration in flight; C{route} leads to it."

    def attempt_failed(self, failure: object) -> None:
        "The registration in flight failed: no reply in time, refused, or unreachable."

    def timer_fired(self) -> None:
        "The refresh is due (when up), or the retry (backing off: the ClientService connects again)."

    def link_lost(self) -> None:
        "The connection or secure channel to the relay node closed."

    def stop(self) -> None:
        "L{Relay.stop}."


#: The states of a relay client, by name (L{Relay.state}).
#: Created, not started.
IDLE = "idle"
#: The first registration (L{Relay.start}) is in flight; if it fails, the
#: relay stops and C{start}'s Deferred fails.
STARTING = "starting"
#: A registration is in flight while the relay is L{DOWN} (started in the
#: background, retrying, or a refresh whose link closed).
REGISTERING = "registering"
#: Registered (L{UP}); the next refresh is due in C{refresh} seconds.
REGISTERED = "up"
#: A refresh is in flight while the relay is L{UP}.
REFRESHING = "refreshing"
#: L{DOWN}; the next registration is due after a backoff delay (the
#: ClientService's).
BACKING_OFF = "backing off"
#: Stopped for good: no worker, no timer, nothing in flight.
STOPPED = "stopped"

_SHOWN_UP = frozenset({REGISTERED, REFRESHING})


class _RelayEndpoint:
    """
    The endpoint of a relay's C{ClientService}: connecting is registering
    at the relay node (L{Relay._connect}).
    """

    def __init__(self, relay: "Relay") -> None:
        self._relay = relay

    def connect(self, factory) -> Deferred:
        return self._relay._connect(factory)

    def __repr__(self) -> str:
        return f"<registration of relay {self._relay.name} at {self._relay.at_text}>"


class _Registration(protocol.Protocol):
    """
    A registration that holds, as the relay's C{ClientService} sees it: a
    connection that is made when the relay node answers and lost when a
    refresh fails or the link to the relay node closes.
    """


class _RegistrationTransport:
    """
    What the C{ClientService} closes to stop a registration that holds.
    """

    def __init__(self, relay: "Relay") -> None:
        self._relay = relay

    def loseConnection(self) -> None:
        self._relay._end_session()


class Relay(Service):
    """
    A relay registered at another node, kept alive on its own.

    It re-registers every C{refresh} seconds; a reply missing for
    C{timeout} seconds or the loss of its TCP link marks it L{DOWN}, and it
    then reconnects (re-resolving C{at}) and re-registers under the same
    name with exponential backoff, until L{stop}.  The reconnecting is a
    Twisted C{ClientService}'s: a registration that holds is its
    connection (L{_Registration}), registering is connecting
    (L{_RelayEndpoint}), and its C{retryPolicy} spaces the attempts.

    A service (a child of the node's L{Relays}): starting it starts the
    relay in the background unless it was started already, and stopping it
    stops the relay, with a Deferred that fires once it is stopped.

    A state machine (C{_RelayInputs}, the table after this class): its
    state is L{state}, one of L{IDLE}, L{STARTING}, L{REGISTERING},
    L{REGISTERED}, L{REFRESHING}, L{BACKING_OFF}, L{STOPPED}; L{status}
    derives from it.

    @ivar name: the relay's name (C{n3}).
    @ivar alias: the forwarder's address at the relay node (C{forward_to_n3}).
    @ivar state: the name of the machine's state.
    @ivar remote_address: the forwarder's L{Address} as the relay node
        answered it.
    @ivar route: the L{Route} from this node to the forwarder.
    """

    #: Seconds to wait before retry number N (0, 1, ...): from 0.1 s,
    #: doubling, up to 5 s, plus up to 50 ms of jitter.
    retry_policy = staticmethod(backoffPolicy(0.1, 5.0, 2.0, jitter=lambda: random.random() * 0.05))

    def __init__(
        self,
        node,
        at,
        name: str = "default",
        service: str = FORWARDING_SERVICE,
        refresh: float = 5.0,
        timeout: float = 5.0,
        address: Optional[Address] = None,
    ) -> None:
        self.node = node
        #: the address its worker takes (a random one when not given, or
        #: when another worker holds it)
        self.worker_address = address
        self.reactor = node.reactor
        self.at = at
        self.name = name
        self.service = service
        self.alias = name if service == STATIC_FORWARDING_SERVICE else alias_for(name)
        self.refresh = refresh
        self.timeout = timeout
        self.state = IDLE
        self.remote_address: Optional[Address] = None
        self.route: Optional[Route] = None
        self.last_error: Optional[str] = None
        self.registrations = 0
        self._payload = encode_string(self.alias)
        self._address: Optional[Address] = None
        self._link = None
        #: the reply the registration in flight waits for
        self._waiting: Optional[Deferred] = None
        #: the refresh timer (up)
        self._timer = None
        #: the registration in flight (starting, registering, refreshing)
        self._attempt: Optional[Deferred] = None
        #: what L{start} returned, until the first registration ends
        self._started: Optional[Deferred] = None
        self._messages_in_at_send = None
        #: reconnecting: the service, what it waits for while connecting
        #: (the registration in flight), and the registration that holds
        self._service = ClientService(
            _RelayEndpoint(self), protocol.Factory.forProtocol(_Registration), retryPolicy=self._delay, clock=self.reactor
        )
        self._factory = None
        self._connecting: Optional[Deferred] = None
        self._session = None
        #: whether the service is calling L{_connect} (it is busy: it is
        #: stopped afterwards, not then)
        self._in_connect = False
        self._first_connect = False
        self._service_stopped: Deferred = succeed(None)
        self._observers: List[Callable[[str], None]] = []
        #: the status the observers were last told
        self._shown = DOWN
        self._machine = _RelayMachine(self)
        self._busy = 0
        self._after: list = []

    @property
    def at_text(self) -> str:
        return str(self.at)

    @property
    def status(self) -> str:
        """
        L{UP} when registered (also while a refresh is in flight), else
        L{DOWN}.
        """
        return UP if self.state in _SHOWN_UP else DOWN

    # --- public -------------------------------------------------------------

    def start(self) -> Deferred:
        """
        Register for the first time: fires with this relay once it is up;
        fails (and leaves nothing behind) when the first registration does.
        """
        started = self._started = Deferred()
        self._input(self._machine.start)
        return started

    def start_in_background(self) -> "Relay":
        """
        Start without waiting: the relay registers as soon as it can,
        retrying with backoff until it is up (and keeps itself up after).
        """
        self._input(self._machine.start_in_background)
        return self

    def stop(self) -> None:
        """
        Stop refreshing and reconnecting, remove the local worker, and free
        the name on this node.
        """
        self._input(self._machine.stop)

    def startService(self) -> None:
        Service.startService(self)
        if self.state == IDLE:
            self.start_in_background()

    def stopService(self) -> Deferred:
        """
        L{stop}; fires once the relay is stopped.
        """
        Service.stopService(self)
        self.stop()
        return self._service_stopped

    def on_status(self, observer: Callable[[str], None]) -> None:
        """
        Call C{observer(status)} each time the status changes.
        """
        self._observers.append(observer)

    def when_status(self, status: str) -> Deferred:
        """
        A new Deferred that fires once the status is C{status}.
        """
        if self.status == status:
            return succeed(self)
        d: Deferred = Deferred()

        def watch(s):
            if s == status and not d.called:
                self._observers.remove(watch)
                d.callback(self)

        self._observers.append(watch)
        return d

    # --- the machine's inputs ----------------------------------------------------------

    def _input(self, input, *args) -> None:
        """
        Give the machine C{input} (a method of C{self._machine}).  An input
        that comes while the machine is busy (from its own outputs, or code
        they call) waits until it is done, as automat does; the code that
        its outputs leave for later (L{_later}: status observers, the
        callbacks of L{start}'s Deferred) runs once it is done, so that it
        can use this relay at once, as any caller can.
        """
        self._busy += 1
        try:
            input(*args)
        finally:
            self._busy -= 1
            if not self._busy:
                after = self._after
                while after:
                    after.pop(0)()

    def _later(self, f, *args) -> None:
        self._after.append(lambda: f(*args))

    def _attempt_succeeded(self, route: Route) -> None:
        self._attempt = None
        self._input(self._machine.registered, route)

    def _attempt_lost(self, failure) -> None:
        self._attempt = None
        self._input(self._machine.attempt_failed, failure)

    def _timer_fired(self) -> None:
        self._timer = None
        self._input(self._machine.timer_fired)

    # --- what the ClientService does --------------------------------------------------------

    def _connect(self, factory) -> Deferred:
        """
        The service connects: register (the first time, as the machine's
        L{_start} asks; after a backoff, as the input C{timer_fired}).  The
        Deferred fires with the registration (a protocol of C{factory})
        once the relay node answers, fails when the attempt fails; while
        starting (L{start}), a failure stops the relay and the service
        instead.
        """
        self._factory = factory
        connecting = self._connecting = Deferred()
        self._in_connect = True
        try:
            if self._first_connect:
                self._first_connect = False
                self._register()
            else:
                self._input(self._machine.timer_fired)
        finally:
            self._in_connect = False
        return connecting

    def _delay(self, attempt: int) -> float:
        """
        The service's C{retryPolicy}: it counts from 1 (retry number 0 of
        L{retry_policy}).
        """
        delay = self.retry_policy(max(0, attempt - 1))
        log.info(
            "relay {name} at {at} is down ({reason}); retrying in {delay:.2f} s",
            name=self.name,
            at=self.at_text,
            reason=self.last_error,
            delay=delay,
        )
        return delay

    def _session_made(self) -> None:
        connecting, self._connecting = self._connecting, None
        if connecting is None:
            return  # a refresh: the registration held
        session = self._factory.buildProtocol(None)
        session.makeConnection(_RegistrationTransport(self))
        self._session = session
        connecting.callback(session)

    def _end_session(self) -> None:
        """
        The registration that held does not hold any more: the service
        reconnects after its backoff.
        """
        session, self._session = self._session, None
        if session is not None:
            session.connectionLost(Failure(ConnectionDone("the relay registration ended")))

    def _attempt_lost_for_service(self, failure) -> None:
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.errback(failure)
        else:
            self._end_session()

    def _stop_service(self) -> None:
        self._connecting = None  # the service cancels it
        if not self._service.running:
            return
        if self._in_connect:  # the service is busy calling us: stop it next
            stopped = self._service_stopped = Deferred()
            self.reactor.callLater(0, lambda: self._service.stopService().chainDeferred(stopped))
        else:
            self._service_stopped = self._service.stopService()

    def _link_lost(self, link) -> None:
        if link is not self._link:
            return
        self._link = None
        self._input(self._machine.link_lost)

    # --- the machine's outputs ------------------------------------------------------------

    def _start(self) -> None:
        address = self.worker_address
        if address is None or self.node.worker_at(address) is not None:
            address = relay_address()
        self._address = self.node.start_worker(address, _RelayWorker(self))
        self._first_connect = True
        self._service.startService()  # it connects: L{_connect} registers

    def _register(self) -> None:
        """
        Send a registration; its reply (or failure) comes back as an input.
        """
        attempt = self._attempt = Deferred.fromCoroutine(self._register_once())
        attempt.addCallbacks(self._attempt_succeeded, self._attempt_lost)

    def _registered(self, route: Route) -> None:
        self.route = route + [self.remote_address]
        self.registrations += 1
        self.last_error = None
        self._announce()
        self._schedule(self.refresh)
        self._session_made()
        started, self._started = self._started, None
        if started is not None:
            self._later(started.callback, self)

    def _start_failed(self, failure) -> None:
        self._shutdown()
        self._forget()
        started, self._started = self._started, None
        if started is not None:
            self._later(started.errback, failure)

    def _retry_later(self, failure) -> None:
        self.last_error = failure.getErrorMessage()
        self._announce()
        link = self._link
        if failure.check(RequestTimeout) and IConnection.providedBy(link) and link.connected:
            if link.messages_in == self._messages_in_at_send:
                # Nothing at all came back on the link: it is dead, start over.
                log.info("relay {name}: link to {at} is silent; closing it", name=self.name, at=self.at_text)
                link.abort()
        self._cancel_timer()
        # The service retries after its backoff (see _delay).
        self._attempt_lost_for_service(failure)

    def _link_lost_while_starting(self) -> None:
        # The first registration's reply cannot come any more: it times
        # out, and start() fails.
        self.last_error = "connection to the relay node closed"
        log.info("relay {name}: link to {at} closed", name=self.name, at=self.at_text)

    def _link_lost_while_registering(self) -> None:
        # The registration in flight fails (no reply), and is retried.
        self.last_error = "connection to the relay node closed"
        self._announce()
        log.info("relay {name}: link to {at} closed; reconnecting", name=self.name, at=self.at_text)

    def _link_lost_reconnect(self) -> None:
        self._link_lost_while_registering()
        self._cancel_timer()
        # The service reconnects after its backoff (see _delay).
        self._end_session()

    def _stop(self) -> None:
        self._shutdown()
        self._announce()
        started, self._started = self._started, None
        if started is not None:
            self._later(started.errback, CancelledError())
        self._forget()

    def _forget(self) -> None:
        relays = getattr(self.node, "relays", None)
        if relays is not None and relays.get(self.name) is self:
            del relays[self.name]
        parent, self.parent = self.parent, None
        if parent is not None:
            parent.removeService(self)  # stopping it stops this relay: done already

    def _announce(self) -> None:
        """
        Tell the observers the status (once the machine is done), if it
        changed since they were last told.
        """
        status = self.status
        if status == self._shown:
            return
        self._shown = status
        self._later(self._tell, status)

    def _tell(self, status: str) -> None:
        for observer in list(self._observers):
            try:
                observer(status)
            except Exception:
                log.failure("relay status observer failed")

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _shutdown(self) -> None:
        self._cancel_timer()
        self._first_connect = False
        self._stop_service()  # cancels the attempt it waits for, ends a session
        if self._attempt is not None:
            attempt, self._attempt = self._attempt, None
            attempt.cancel()
        waiting = self._waiting
        if waiting is not None and not waiting.called:
            waiting.cancel()
        if self._address is not None:
            self.node.stop_worker(self._address)
            self._address = None

    # --- registration -------------------------------------------------------------

    async def _register_once(self) -> Route:
        route = await self._resolve()
        waiting: Deferred = Deferred()
        self._waiting = waiting
        link = self._link
        self._messages_in_at_send = link.messages_in if IConnection.providedBy(link) else None
        self.node.send(route + [self.service], self._payload, sender=self._address)
        timer = self.reactor.callLater(self.timeout, self._registration_timeout, waiting)
        try:
            await waiting
        finally:
            if timer.active():
                timer.cancel()
            if self._waiting is waiting:
                self._waiting = None
        return route

    async def _resolve(self) -> Route:
        link = self._link
        if link is not None and link.connected and self.route is not None:
            return self.route[:-1]
        route = await self.node.resolve(self.at)
        link = self.node.link_of(route[0]) if route else None
        if link is not None and link is not self._link:
            self._link = link
            link.on_close(lambda _: self._link_lost(link))
        return route

    def _registration_timeout(self, waiting: Deferred) -> None:
        if not waiting.called:
            waiting.errback(RequestTimeout(f"relay {self.name}: no registration reply within {self.timeout:g} s"))

    def _registration_reply(self, message) -> None:
        ret = message.return_route
        if ret and ret[-1].value == self.service:
            # An ockamtw relay node refused the registration, and says why.
            try:
                reason = decode_string(message.payload)
            except WireError:
                reason = "(unreadable reason)"
            waiting = self._waiting
            if waiting is not None and not waiting.called:
                waiting.errback(RelayRefused(f"relay {self.name}: refused by the relay node: {reason}"))
            return
        if message.payload != self._payload or not message.return_route:
            self.node.throttle.log(
                log, "warn", ("relay reply", self.name), "relay {name}: unexpected reply; ignored", name=self.name
            )
            return
        self.remote_address = message.return_route[-1]
        waiting = self._waiting
        if waiting is not None and not waiting.called:
            waiting.callback(None)

    # --- keeping it up -------------------------------------------------------------

    def _schedule(self, delay: float) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self.reactor.callLater(delay, self._timer_fired)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "alias": self.alias,
            "at": self.at_text,
            "status": self.status,
            "remote_address": str(self.remote_address) if self.remote_address else None,
            "route": str(self.route) if self.route else None,
            "last_error": self.last_error,
        }


_on = transitions("state")


_builder = TypeMachineBuilder(_RelayInputs, Relay)
_idle = _builder.state(IDLE)
_starting = _builder.state(STARTING)
_registering = _builder.state(REGISTERING)
_registered = _builder.state(REGISTERED)
_refreshing = _builder.state(REFRESHING)
_backing_off = _builder.state(BACKING_OFF)
_stopped = _builder.state(STOPPED)
_R = _RelayInputs

_on(_idle, _R.start, _starting, "_start")
_on(_idle, _R.start_in_background, _registering, "_start")
# The registration in flight ends.
_on(_starting, _R.registered, _registered, "_registered")
_on(_registering, _R.registered, _registered, "_registered")
_on(_refreshing, _R.registered, _registered, "_registered")
_on(_starting, _R.attempt_failed, _stopped, "_start_failed")
_on(_registering, _R.attempt_failed, _backing_off, "_retry_later")
_on(_refreshing, _R.attempt_failed, _backing_off, "_retry_later")
# The refresh or the retry is due.
_on(_registered, _R.timer_fired, _refreshing, "_register")
_on(_backing_off, _R.timer_fired, _registering, "_register")
# The link to the relay node closed: a registration in flight fails (and
# is retried, but the first); otherwise reconnect soon.
_on(_starting, _R.link_lost, _starting, "_link_lost_while_starting")
_on(_registering, _R.link_lost, _registering, "_link_lost_while_registering")
_on(_refreshing, _R.link_lost, _registering, "_link_lost_while_registering")
_on(_registered, _R.link_lost, _backing_off, "_link_lost_reconnect")
_on(_backing_off, _R.link_lost, _backing_off, "_link_lost_reconnect")
for _state in (_idle, _starting, _registering, _registered, _refreshing, _backing_off):
    _on(_state, _R.stop, _stopped, "_stop")
# Stopped is the end: stopping again only frees the name (if it is still
# this relay's); what was in flight ends quietly.
_on(_stopped, _R.stop, _stopped, "_forget")
_on(_stopped, _R.registered, _stopped)
_on(_stopped, _R.attempt_failed, _stopped)
_on(_stopped, _R.link_lost, _stopped)

_RelayMachine = indexed(_builder.build())
del _state


def start_relay_services(node) -> None:
    """
    Start C{forwarding_service} and C{static_forwarding_service} on C{node}.
    """
    registry = RelayRegistry(getattr(node, "relay_limits", None))
    node.relay_registry = registry
    node.start_worker(FORWARDING_SERVICE, ForwardingService(static=False, registry=registry))
    node.start_worker(STATIC_FORWARDING_SERVICE, ForwardingService(static=True, registry=registry))


def relay_service(at, service=None) -> str:
    """
    The relay service to register with: C{service}, else Ockam 0.83's
    choice for C{at} (C{static_forwarding_service} at a project).
    """
    if service is not None:
        return service
    return STATIC_FORWARDING_SERVICE if str(at).startswith("/project/") else FORWARDING_SERVICE


def relay_dict(relay: Relay) -> dict:
    """
    A relay as the control API shows it; a relay at a project (registered
    with C{static_forwarding_service} under its bare name) has the address
    the project gave it, C{forward_to_NAME}.
    """
    info = relay.to_dict()
    if relay.service == STATIC_FORWARDING_SERVICE:
        remote = relay.remote_address
        info["alias"] = remote.value if remote is not None else f"forward_to_{relay.name}"
    return info


class Relays(Feature):
    """
    A node's relays at other nodes, by name: C{state.json}'s C{relays}, the
    control API's C{/relays}.  Restored relays start registering when the
    node starts; stopping it stops them.
    """

    name = "relays"
    state_keys = ("relays",)
    routes = {
        ("GET", "relays", False): "list_route",
        ("POST", "relays", False): "create_route",
        ("GET", "relays", True): "show_route",
        ("DELETE", "relays", True): "delete_route",
    }

    def __init__(self, node) -> None:
        Feature.__init__(self, node)
        #: name -> L{Relay}
        self.relays: Dict[str, Relay] = {}
        #: relays restored before the node started: (name, at)
        self._restoring: List[tuple] = []
        #: what makes a relay's worker address (L{relay_address})
        self._secret = os.urandom(32)

    def create(self, at, name: str = "default", service=None, refresh: float = 5.0, timeout: float = 5.0) -> Deferred:
        """
        See L{ockamtw.api.Node.create_relay}.
        """
        if name in self.relays:
            return fail(AddressInUse(f"relay {name!r} already exists on node {self.node.name}"))
        relay = Relay(self.node, at, name=name, service=relay_service(at, service), refresh=refresh, timeout=timeout,
                      address=relay_address(self._secret, name))
        self.relays[name] = relay
        started = relay.start()  # a relay whose start fails forgets itself
        if relay.state != STOPPED:
            relay.setServiceParent(self)
        return started

    def add(self, at, name: str = "default", service=None, refresh: float = 5.0, timeout: float = 5.0) -> Relay:
        """
        See L{ockamtw.api.Node.add_relay}.
        """
        if name in self.relays:
            raise AddressInUse(f"relay {name!r} already exists on node {self.node.name}")
        relay = Relay(self.node, at, name=name, service=relay_service(at, service), refresh=refresh, timeout=timeout,
                      address=relay_address(self._secret, name))
        self.relays[name] = relay
        relay.start_in_background()
        relay.setServiceParent(self)
        return relay

    def delete(self, name: str) -> None:
        """
        See L{ockamtw.api.Node.delete_relay}.
        """
        self.relays[name].stop()

    # --- life -------------------------------------------------------------------------------

    def startService(self) -> None:
        Feature.startService(self)
        self._add_restored()

    def _add_restored(self) -> None:
        restoring, self._restoring = self._restoring, []
        for name, at in restoring:
            if name not in self.relays:
                self.add(at, name=name)

    def stopService(self) -> Deferred:
        """
        Stop every relay (they are its child services); fires once they
        are stopped.
        """
        self._restoring = []
        return Feature.stopService(self)

    # --- state ---------------------------------------------------------------------------

    def save(self) -> dict:
        return {"relays": [{"name": r.name, "at": r.at_text} for r in self.relays.values()]}

    def restore(self, state: dict) -> None:
        waiting = {name for name, _ in self._restoring}
        for item in state.get("relays", []):
            name = item["name"]
            if name in self.relays or name in waiting:
                continue
            waiting.add(name)
            self._restoring.append((name, item["at"]))
        if self.running:
            self._add_restored()

    # --- control routes -------------------------------------------------------------------

    def list_route(self, call) -> list:
        return [relay_dict(r) for r in self.relays.values()]

    def _relay(self, key: str) -> Relay:
        """
        A relay by name (C{n3}), or by its address as printed
        (C{forward_to_n3}, C{/service/forward_to_n3}).
        """
        name = service_name(key)
        relay = self.relays.get(name)
        if relay is None:
            relay = next((r for r in self.relays.values() if relay_dict(r)["alias"] == name), None)
        if relay is None:
            raise ControlError(404, f"no relay {name!r} on node {self.node.name}")
        return relay

    def show_route(self, call) -> dict:
        return relay_dict(self._relay(call.key))

    async def create_route(self, call) -> dict:
        name = call.need("name")
        at = call.need("at")
        parse_route_text(at)
        if name in self.relays:
            raise ControlError(409, f"relay {name!r} already exists on node {self.node.name}")
        relay = await self.create(at, name=name, timeout=float(call.body.get("timeout", 5)))
        await call.saved(undo=lambda: self.delete(name))
        return relay_dict(relay)

    async def delete_route(self, call) -> dict:
        relay = self._relay(call.key)
        self.delete(relay.name)
        await call.saved()
        return relay_dict(relay)
