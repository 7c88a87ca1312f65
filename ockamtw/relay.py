"""
Relays (formerly forwarders), section 5 of docs/protocol.md.

L{ForwardingService} runs on every node at C{forwarding_service} (and,
project-style, at C{static_forwarding_service}): a registration creates a
L{Forwarder} at the alias, which sends whatever reaches it down the route
the registration came from.

L{Relay} is the client side: it registers a name at a relay node and keeps
the registration alive, reconnecting with backoff when the link dies.
"""

from __future__ import annotations

import random
from typing import Callable, List, Optional

from twisted.application.internet import backoffPolicy
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import Logger

from .errors import MessageTooLarge, RequestTimeout, WireError
from .node import Worker
from .routing import LOCAL, Address, Route, _encode_uvarint
from .wire import decode_string, encode_string

log = Logger(namespace="ockamtw.relay")

FORWARDING_SERVICE = "forwarding_service"
STATIC_FORWARDING_SERVICE = "static_forwarding_service"

UP = "Up"
DOWN = "Down"


def alias_for(name: str) -> str:
    """
    The forwarder address of a relay named C{name}: C{forward_to_<name>}.
    """
    return f"forward_to_{name}"


class Forwarder(Worker):
    """
    A relay's forwarder on the relay node: a message arriving with onward
    C{[alias, rest...]} leaves with onward C{forward_route + rest}, its
    return route unchanged.

    @ivar link: the TCP connection the registration came through (or
        C{None} for a registration from this node); the forwarder dies with
        it.
    """

    def __init__(self, forward_route: Route, link) -> None:
        self.link = link
        self.forward_route = forward_route
        self.forwarded = 0

    @property
    def forward_route(self) -> Route:
        return self._forward_route

    @forward_route.setter
    def forward_route(self, route: Route) -> None:
        self._forward_route = route
        # For the fast path: the forward route after its first hop (the
        # link, which strips itself), encoded once.
        self._after_link = route[1:]
        self._after_link_encoded = b"".join([a.encode() for a in self._after_link])

    def same_peer(self, route: Route) -> bool:
        """
        Whether a registration with C{route} comes from the peer that owns
        this forwarder: through the same connection, or from the same
        registering worker (its random address ends the route), e.g. after
        reconnecting while a half-open old connection lingers here.
        """
        if not route:
            return False
        if route[-1] == self.forward_route[-1]:
            return True
        if self.link is not None:
            return route[0] == self.forward_route[0]
        return route == self.forward_route

    @property
    def alive(self) -> bool:
        return self.link is None or self.link.connected

    def receive(self, message) -> None:
        try:
            link = self.link
            route = self._forward_route
            if link is not None and link.connected and route[0] == link.address:
                # Fast path: straight to the registering connection, as the
                # connection worker would write it.
                rest = message.onward_route[1:]
                payload = message.payload
                head = b"".join(
                    [
                        b"\x01",
                        _encode_uvarint(len(self._after_link) + len(rest)),
                        self._after_link_encoded,
                    ]
                    + [a.encode() for a in rest]
                    + [message.return_route.encode(), _encode_uvarint(len(payload))]
                )
                link.write_body(head, payload, message.source)
            else:
                self.node.send(
                    route + message.onward_route.step(),
                    message.payload,
                    return_route=message.return_route,
                )
            self.forwarded += 1
        except MessageTooLarge as e:
            log.warn("forwarder {alias}: {error}; dropped", alias=self.address.value, error=str(e))


class ForwardingService(Worker):
    """
    The relay service.  The registration payload is a BARE string: the
    alias itself (C{forwarding_service}), or a name whose alias is
    C{forward_to_<name>} (C{static_forwarding_service}).

    Registration is idempotent and answered each time, from the forwarder's
    address, with the registration payload.  A live forwarder's alias
    cannot be taken by another peer; a forwarder dies with the connection
    that registered it, freeing its alias at once.
    """

    def __init__(self, static: bool = False) -> None:
        self.static = static

    def receive(self, message) -> None:
        node = self.node
        try:
            text = decode_string(message.payload)
        except WireError as e:
            log.warn("relay registration is not a BARE string ({error}); dropped", error=str(e))
            return
        if not text or "\x00" in text:
            log.warn("relay registration with an empty or bad name {name!r}; dropped", name=text)
            return
        alias = alias_for(text) if self.static else text
        route = message.return_route
        if not route:
            log.warn("relay registration for {alias} without a return route; dropped", alias=alias)
            return
        address = Address(LOCAL, alias)
        link = node.tcp.connection(route[0]) if route[0].type == LOCAL else None
        existing = node.worker_at(address)
        if existing is None:
            forwarder = Forwarder(route, link)
            node.start_worker(address, forwarder)
            if link is not None:
                link.when_closed().addCallback(lambda _: self._link_closed(address, forwarder))
            log.info(
                "relay {alias} registered, forwarding to {route}",
                alias=alias,
                route=str(route),
                node=node.name,
            )
        elif isinstance(existing, Forwarder) and (existing.same_peer(route) or not existing.alive):
            if existing.forward_route != route:
                log.info("relay {alias} now forwards to {route}", alias=alias, route=str(route))
            existing.forward_route = route
            if link is not existing.link:
                existing.link = link
                if link is not None:
                    link.when_closed().addCallback(lambda _: self._link_closed(address, existing))
        else:
            log.warn(
                "relay {alias} is taken by a live peer; registration from {route} refused",
                alias=alias,
                route=str(route),
                node=node.name,
            )
            return
        try:
            node.send(route, message.payload, sender=address)
        except MessageTooLarge as e:
            log.warn("relay {alias}: reply too large: {error}", alias=alias, error=str(e))

    def _link_closed(self, address: Address, forwarder: Forwarder) -> None:
        node = self.node
        if node is None or node.worker_at(address) is not forwarder:
            return
        if forwarder.link is not None and forwarder.link.connected:
            return  # re-registered over another live connection meanwhile
        node.stop_worker(address)
        log.info("relay {alias} removed: its connection closed", alias=address.value, node=node.name)


class _RelayWorker(Worker):
    """
    The registering side's worker M: registration replies end here; relayed
    messages continue along the rest of their onward route.
    """

    def __init__(self, relay: "Relay") -> None:
        self._relay = relay

    def receive(self, message) -> None:
        onward = message.onward_route
        if len(onward) == 1:
            self._relay._registration_reply(message)
            return
        self.node.deliver(message.with_routes(onward.step(), message.return_route))


class Relay:
    """
    A relay registered at another node, kept alive on its own.

    It re-registers every C{refresh} seconds; a reply missing for
    C{timeout} seconds or the loss of its TCP link marks it L{DOWN}, and it
    then reconnects (re-resolving C{at}) and re-registers under the same
    name with exponential backoff, until L{stop}.

    @ivar name: the relay's name (C{n3}).
    @ivar alias: the forwarder's address at the relay node (C{forward_to_n3}).
    @ivar status: L{UP} or L{DOWN}.
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
    ) -> None:
        self.node = node
        self.reactor = node.reactor
        self.at = at
        self.name = name
        self.service = service
        self.alias = name if service == STATIC_FORWARDING_SERVICE else alias_for(name)
        self.refresh = refresh
        self.timeout = timeout
        self.status = DOWN
        self.remote_address: Optional[Address] = None
        self.route: Optional[Route] = None
        self.last_error: Optional[str] = None
        self.registrations = 0
        self._payload = encode_string(self.alias)
        self._address: Optional[Address] = None
        self._link = None
        self._waiting: Optional[Deferred] = None
        self._timer = None
        self._attempt: Optional[Deferred] = None
        self._failures = 0
        self._messages_in_at_send = None
        self._stopped = False
        self._observers: List[Callable[[str], None]] = []

    @property
    def at_text(self) -> str:
        return str(self.at)

    # --- public -------------------------------------------------------------

    def start(self) -> Deferred:
        """
        Register for the first time: fires with this relay once it is up;
        fails (and leaves nothing behind) when the first registration does.
        """
        self._address = self.node.start_worker(None, _RelayWorker(self))

        async def first():
            try:
                await self._register_once()
            except BaseException:
                self._shutdown()
                raise
            self._schedule(self.refresh, self._refresh)
            return self

        return Deferred.fromCoroutine(first())

    def start_in_background(self) -> "Relay":
        """
        Start without waiting: the relay registers as soon as it can,
        retrying with backoff until it is up (and keeps itself up after).
        """
        self._address = self.node.start_worker(None, _RelayWorker(self))
        self._run_attempt()
        return self

    def stop(self) -> None:
        """
        Stop refreshing and reconnecting, remove the local worker, and free
        the name on this node.
        """
        self._shutdown()
        self._set_status(DOWN)
        relays = getattr(self.node, "relays", None)
        if relays is not None and relays.get(self.name) is self:
            del relays[self.name]

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

    # --- registration -------------------------------------------------------------

    async def _register_once(self) -> None:
        route = await self._resolve()
        waiting: Deferred = Deferred()
        self._waiting = waiting
        link = self._link
        self._messages_in_at_send = link.messages_in if link is not None else None
        self.node.send(route + [self.service], self._payload, sender=self._address)
        timer = self.reactor.callLater(self.timeout, self._registration_timeout, waiting)
        try:
            await waiting
        finally:
            if timer.active():
                timer.cancel()
            if self._waiting is waiting:
                self._waiting = None
        self.route = route + [self.remote_address]
        self.registrations += 1
        self._failures = 0
        self.last_error = None
        self._set_status(UP)

    async def _resolve(self) -> Route:
        link = self._link
        if link is not None and link.connected and self.route is not None:
            return self.route[:-1]
        route = await self.node.resolve(self.at)
        link = self.node.tcp.connection(route[0]) if route and route[0].type == LOCAL else None
        if link is not None and link is not self._link:
            self._link = link
            link.when_closed().addCallback(lambda _: self._link_lost(link))
        return route

    def _registration_timeout(self, waiting: Deferred) -> None:
        if not waiting.called:
            waiting.errback(RequestTimeout(f"relay {self.name}: no registration reply within {self.timeout:g} s"))

    def _registration_reply(self, message) -> None:
        if message.payload != self._payload or not message.return_route:
            log.warn("relay {name}: unexpected reply {message!r}; ignored", name=self.name, message=message)
            return
        self.remote_address = message.return_route[-1]
        waiting = self._waiting
        if waiting is not None and not waiting.called:
            waiting.callback(None)

    # --- keeping it up -------------------------------------------------------------

    def _schedule(self, delay: float, f) -> None:
        if self._stopped:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self.reactor.callLater(delay, f)

    def _refresh(self) -> None:
        self._timer = None
        self._run_attempt()

    def _run_attempt(self) -> None:
        if self._stopped or self._attempt is not None:
            return

        def ok(_):
            self._attempt = None
            self._schedule(self.refresh, self._refresh)

        def failed(f):
            self._attempt = None
            if f.check(CancelledError) or self._stopped:
                return
            self.last_error = f.getErrorMessage()
            self._failures += 1
            self._set_status(DOWN)
            link = self._link
            if f.check(RequestTimeout) and link is not None and link.connected:
                if link.messages_in == self._messages_in_at_send:
                    # Nothing at all came back on the link: it is dead, start over.
                    log.info("relay {name}: link to {at} is silent; closing it", name=self.name, at=self.at_text)
                    link.abort()
            delay = self.retry_policy(self._failures - 1)
            log.info(
                "relay {name} at {at} is down ({reason}); retrying in {delay:.2f} s",
                name=self.name,
                at=self.at_text,
                reason=self.last_error,
                delay=delay,
            )
            self._schedule(delay, self._refresh)

        self._attempt = Deferred.fromCoroutine(self._register_once())
        self._attempt.addCallbacks(ok, failed)

    def _link_lost(self, link) -> None:
        if link is not self._link:
            return
        self._link = None
        if self._stopped:
            return
        self.last_error = "connection to the relay node closed"
        self._set_status(DOWN)
        log.info("relay {name}: link to {at} closed; reconnecting", name=self.name, at=self.at_text)
        if self._attempt is None:
            self._schedule(self.retry_policy(0), self._refresh)

    def _set_status(self, status: str) -> None:
        if status == self.status:
            return
        self.status = status
        for observer in list(self._observers):
            try:
                observer(status)
            except Exception:
                log.failure("relay status observer failed")

    def _shutdown(self) -> None:
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._attempt is not None:
            self._attempt.cancel()
            self._attempt = None
        waiting = self._waiting
        if waiting is not None and not waiting.called:
            waiting.cancel()
        if self._address is not None:
            self.node.stop_worker(self._address)
            self._address = None

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


def start_relay_services(node) -> None:
    """
    Start C{forwarding_service} and C{static_forwarding_service} on C{node}.
    """
    node.start_worker(FORWARDING_SERVICE, ForwardingService(static=False))
    node.start_worker(STATIC_FORWARDING_SERVICE, ForwardingService(static=True))
