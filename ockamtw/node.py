"""
The node core: a registry of workers, routing by onward route (section 3
of docs/protocol.md), C{send} and C{request}, and the IService lifecycle.

The node imports no feature (relays, portals, services), no control plane
and no face; L{ockamtw.api.Node} builds the full node on top of this.
"""

from __future__ import annotations

import collections
import os
from typing import Callable, Dict, List, Optional, Union

from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .access import ANYONE, LOCAL_ONLY, FromOrigin, describe_origin
from .errors import AddressInUse, MessageTooLarge, NoSuchAddress, OckamError, RequestTimeout, RouteUnreachable, WireError
from .deferred import gather
from .interfaces import IAccessPolicy, IFeature, ILinkWorker, ITransport, IWorker
from .logs import Throttle, short
from .routing import LOCAL, Address, MultiAddr, Route, parse_route_text
from .wire import MAX_FRAME, TransportMessage

log = Logger(namespace="ockamtw.node")


def _nothing() -> None:
    """
    A watch that watches nothing, withdrawn (L{BaseNode.when_route_closes}).
    """

RouteLike = Union[Route, MultiAddr, str, list, tuple]

_KEEP = object()

#: Payloads up to this size skip the sender's frame-size check: with routes
#: of ordinary length they fit (portal chunks are 49,152 bytes).
_SIZE_CHECK_FROM = 56 * 1024


@implementer(IWorker)
class Worker:
    """
    A convenient base for workers: it remembers its node and address, and
    sends from its own address.  Subclasses implement L{receive}.

    @cvar access: who may send to it (an L{IAccessPolicy}, see
        L{ockamtw.access}); this node only, unless a subclass or
        C{start_worker} says otherwise.
    """

    node: Optional["BaseNode"] = None
    address: Optional[Address] = None
    access = LOCAL_ONLY

    def started(self, node: "BaseNode", address: Address) -> None:
        self.node = node
        self.address = address

    def receive(self, message: TransportMessage) -> None:
        raise NotImplementedError()

    def stopped(self) -> None:
        pass

    def send(self, route: RouteLike, payload: bytes) -> None:
        """
        Send C{payload} along C{route}, with this worker as return route.
        """
        assert self.node is not None and self.address is not None
        self.node.send(route, payload, sender=self.address)

    def reply(self, message: TransportMessage, payload: bytes) -> None:
        """
        Answer C{message}: send to its return route from this worker.
        """
        self.send(message.return_route, payload)


@implementer(IWorker)
class FunctionWorker(Worker):
    """
    A worker made of a function C{f(worker, message)}; C{access} says who
    may send to it (this node only by default).
    """

    def __init__(self, function: Callable[["FunctionWorker", TransportMessage], None], access=None) -> None:
        self._function = function
        if access is not None:
            self.access = access

    def receive(self, message: TransportMessage) -> None:
        self._function(self, message)


class _ReplyWorker(Worker):
    """
    Waits for the answer to one request: anyone may send it (the answer
    comes from wherever the request went), and only the first message
    counts.
    """

    access = ANYONE

    def __init__(self, d: Deferred) -> None:
        self._d = d

    def receive(self, message: TransportMessage) -> None:
        if not self._d.called:
            message.source = None
            self._d.callback(message)


def _route_only(route: RouteLike) -> Route:
    if route.__class__ is Route:
        return route  # type: ignore[return-value]
    if isinstance(route, str):
        parsed = parse_route_text(route)
        if isinstance(parsed, MultiAddr):
            return parsed.to_route()
        return parsed
    if isinstance(route, MultiAddr):
        return route.to_route()
    return Route(route)


class BaseNode(MultiService):
    """
    An Ockam node's core: workers at addresses, access control, routing
    between them, and the transports (registered by address type, e.g. TCP
    for C{1#host:port}) and route resolvers (registered by MultiAddr kind,
    e.g. C{/node/NAME}, C{/secure/NAME}) that features plug in.  It knows no
    transport and no feature itself (L{ockamtw.api.Node} is the full node).

    It is an L{IService}: add it to an application or call C{startService};
    C{stopService} closes every listener, connection, worker and timer and
    returns a Deferred that fires when they are gone.

    @ivar name: the node's name.
    """

    def __init__(self, reactor=None, name: Optional[str] = None) -> None:
        MultiService.__init__(self)
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.reactor = reactor
        self.name = name if name is not None else os.urandom(4).hex()
        self._workers: Dict[Address, object] = {}
        self._access: Dict[Address, object] = {}
        #: address -> (worker, access policy): what delivery looks up
        self._entries: Dict[Address, tuple] = {}
        self._queue: collections.deque = collections.deque()
        self._delivering = False
        self._current_source = None
        #: How many workers are in their turn (L{_run}) right now.
        self._turns = 0
        self._pending: set = set()
        #: address type -> L{ITransport}
        self._transports: Dict[int, object] = {}
        #: MultiAddr kind (C{"node"}, C{"secure"}, ...) -> resolver
        self._resolvers: Dict[str, Callable] = {}
        #: Whether messages from remote peers may name TCP hops
        #: (C{1#host:port}) that this node then connects to (off by
        #: default: only messages sent on this node may).
        self.dial_for_remote = False
        #: Messages refused by a worker's access policy, and dropped for
        #: other reasons (no such worker, a loop, a refused connection).
        self.refused = 0
        self.dropped = 0
        #: Rate limits for warnings that a peer can cause.
        self.throttle = Throttle(reactor)
        #: name -> L{IFeature}, in the order they were added (restored and
        #: started in that order, stopped in the reverse order)
        self.features: Dict[str, object] = {}
        self._state_observers: List[Callable[[], None]] = []

    # --- what features plug in ------------------------------------------------

    def register_transport(self, transport) -> None:
        """
        Route hops of C{transport.address_type} (an L{ITransport}) through
        C{transport}: it connects to them (L{ITransport.connect_hop}), and
        the node closes it when it stops.
        """
        if not ITransport.providedBy(transport):
            raise TypeError(f"{transport!r} does not provide ITransport")
        self._transports[transport.address_type] = transport

    def transport_for(self, address_type: int):
        """
        The transport registered for C{address_type}, or C{None}.
        """
        return self._transports.get(address_type)

    def register_resolver(self, kind: str, resolver: Callable) -> None:
        """
        Resolve MultiAddr hops of C{kind} (C{/KIND/NAME}) with
        C{resolver(prefix, hop, position)}: C{prefix} is the L{Route}
        resolved so far, C{hop} the L{ockamtw.routing.Hop}, C{position} its
        index; it returns (a Deferred of) the new route so far.  Local
        (C{/service/...}) and transport hops (C{/ip4/...}) need none.
        """
        self._resolvers[kind] = resolver

    def add_feature(self, feature):
        """
        Plug in C{feature} (an L{IFeature}): it becomes a child service of
        this node (started with it, stopped before its core), and its
        state and control routes are the node's.  Returns it.

        @raise TypeError: for something that is not an L{IFeature}.
        @raise RuntimeError: when a feature of that name is there already.
        """
        if not IFeature.providedBy(feature):
            raise TypeError(f"{feature!r} does not provide IFeature")
        if feature.name in self.features:
            raise RuntimeError(f"node {self.name} has a feature {feature.name!r} already")
        self.features[feature.name] = feature
        feature.setServiceParent(self)
        return feature

    def add_service_first(self, service) -> None:
        """
        Add C{service} before every child service of this node (the
        features among them), so that it starts first and stops last:
        e.g. a process's signal handling.
        """
        service.setServiceParent(self)
        self.services.remove(service)
        self.services.insert(0, service)

    def save_state(self) -> dict:
        """
        What the features keep in the node's state (C{state.json}): their
        keys and values.
        """
        state: dict = {}
        for feature in self.features.values():
            state.update(feature.save())
        return state

    def restore(self, state: dict) -> None:
        """
        Give each feature, in order, its part of C{state} (a checked
        C{state.json}) to make again.
        """
        for feature in self.features.values():
            feature.restore(state)

    def on_state_change(self, observer: Callable[[], None]) -> None:
        """
        Call C{observer()} when a feature's state changed on its own (see
        L{ockamtw.feature.Feature.changed}), so that it is saved.
        """
        self._state_observers.append(observer)

    def state_changed(self) -> None:
        """
        A feature's state changed: tell the observers.
        """
        for observer in list(self._state_observers):
            try:
                observer()
            except Exception:
                log.failure("saving the node's state failed")

    # --- workers ------------------------------------------------------------

    def start_worker(self, address: Union[Address, str, None], worker, access=None) -> Address:
        """
        Register C{worker} (an L{IWorker}) at C{address}; C{None} picks a
        random address.  Returns the address.

        C{access} (an L{IAccessPolicy}, see L{ockamtw.access}) says who may
        send to it; by default the worker's own C{access} attribute, else
        this node only.  The node enforces it before each delivery.

        @raise AddressInUse: when a worker is already there.
        @raise WireError: for an address that is not local.
        """
        if access is None:
            access = getattr(worker, "access", None) or LOCAL_ONLY
        if not IAccessPolicy.providedBy(access):
            raise TypeError(f"access must provide IAccessPolicy, not {access!r}")
        if address is None:
            address = Address.random_local()
            while address in self._workers:
                address = Address.random_local()
        elif not isinstance(address, Address):
            address = Address.parse(address)
        if address.type != LOCAL:
            raise WireError(f"workers live at local addresses, not {address}")
        if address in self._workers:
            raise AddressInUse(f"address {address.value!r} is already taken on node {self.name}")
        self._workers[address] = worker
        self._access[address] = access
        self._entries[address] = (worker, access)
        try:
            worker.started(self, address)
        except BaseException:
            del self._workers[address]
            del self._access[address]
            del self._entries[address]
            raise
        return address

    def set_access(self, address: Union[Address, str], access) -> None:
        """
        Change who may send to the worker at C{address}.

        @raise KeyError: when there is no worker there.
        """
        if not isinstance(address, Address):
            address = Address.parse(address)
        if address not in self._workers:
            raise KeyError(address)
        if not IAccessPolicy.providedBy(access):
            raise TypeError(f"access must provide IAccessPolicy, not {access!r}")
        self._access[address] = access
        self._entries[address] = (self._workers[address], access)

    def access_of(self, address: Union[Address, str]):
        """
        The access policy of the worker at C{address}, or C{None}.
        """
        if not isinstance(address, Address):
            address = Address.parse(address)
        return self._access.get(address)

    def stop_worker(self, address: Union[Address, str]) -> bool:
        """
        Remove the worker at C{address}; returns whether there was one.
        """
        if not isinstance(address, Address):
            address = Address.parse(address)
        worker = self._workers.pop(address, None)
        if worker is None:
            return False
        self._access.pop(address, None)
        self._entries.pop(address, None)
        try:
            worker.stopped()
        except Exception:
            log.failure("worker at {address} failed to stop", address=str(address))
        return True

    def worker_at(self, address: Union[Address, str]):
        """
        The worker registered at C{address}, or C{None}.
        """
        if not isinstance(address, Address):
            address = Address.parse(address)
        return self._workers.get(address)

    def worker_addresses(self) -> List[Address]:
        """
        Every address that has a worker, in registration order.
        """
        return list(self._workers)

    # --- routing ------------------------------------------------------------

    def deliver(self, message: TransportMessage) -> None:
        """
        Route a message on this node by its onward route: the worker at the
        first address receives it, if its access policy allows (see
        L{ockamtw.access}).  Messages to unknown addresses, and refused
        ones, are counted, logged (rate-limited) and dropped.  Delivery is
        iterative, never recursive, so long chains of local hops cannot
        exhaust the stack.
        """
        self._queue.append(message)
        if self._delivering:
            return
        self._drain()

    def _drain(self) -> None:
        """
        Deliver the queued messages, and those they cause, in order.
        """
        self._delivering = True
        queue = self._queue
        entries = self._entries
        try:
            while queue:
                message = queue.popleft()
                onward = message.onward_route
                if not onward:
                    continue  # a heartbeat, or nothing to do
                first = onward[0]
                entry = entries.get(first)
                if entry is None:
                    self._no_worker(message, first)
                    continue
                worker, access = entry
                if access is not ANYONE and (
                    message.origin is not access.origin if access.__class__ is FromOrigin else not access.allows(message)
                ):
                    self._refuse(message, first, access)
                    continue
                self._run(first, message.source, worker.receive, message)
        finally:
            self._delivering = False
            self._current_source = None

    def _run(self, first: Address, source, call, *args):
        """
        Have the worker at C{first} take a message (C{call(*args)}): while
        it does, messages it sends inherit C{source} as their flow source;
        an error it raises is logged (rate-limited), never passed on.
        What it returns, or C{None} after an error.
        """
        self._current_source = source
        self._turns += 1
        try:
            return call(*args)
        except OckamError as e:
            # A peer can cause these (e.g. an answer too large to
            # send): one line, not a traceback.
            self.throttle.log(
                log,
                "warn",
                ("worker error", first),
                "worker at {address} on node {node} dropped a message: {error}",
                address=short(first.value),
                node=self.name,
                error=str(e),
            )
        except Exception:
            if self.throttle.admit(("worker failure", first)) >= 0:
                log.failure("worker at {address} failed on a message", address=str(first), node=self.name)
        finally:
            self._turns -= 1
            self._current_source = None

    def _no_worker(self, message: TransportMessage, first: Address) -> None:
        self.dropped += 1
        self.throttle.log(
            log,
            "info",
            ("no worker", message.origin),
            "no worker at {address} on node {node}: message from {origin} dropped",
            address=short(str(first)),
            node=self.name,
            origin=describe_origin(message.origin),
        )

    def _refuse(self, message: TransportMessage, first: Address, access) -> None:
        self.refused += 1
        self.throttle.log(
            log,
            "warn",
            ("refused", message.origin),
            "worker at {address} on node {node} refused a message from {origin} (it accepts {policy})",
            address=short(str(first)),
            node=self.name,
            origin=describe_origin(message.origin),
            policy=str(access),
        )
        refused = getattr(access, "refused", None)
        if refused is not None:
            try:
                refused(message)
            except Exception:
                log.failure("answering a refused message failed")

    def send(
        self,
        route: RouteLike,
        payload: bytes,
        sender: Union[Address, str, None] = None,
        return_route: Optional[RouteLike] = None,
        source=None,
    ) -> None:
        """
        Send C{payload} along C{route}, from this node (a worker passing on
        a message it received uses L{forward} instead).  The return route
        is C{[sender]} (or C{return_route}, or empty).  A first hop
        C{1#host:port} is connected to (or an open connection to it is
        reused) first.

        Messages sent while a worker handles a message inherit that
        message's flow source, so that congestion downstream pauses the
        right socket; C{source} names it explicitly (an
        L{ockamtw.interfaces.IFlowSource}, e.g. a portal's socket).

        @raise MessageTooLarge: when a message that may leave the node
            (a route of more than one address, or a TCP first hop) cannot
            fit in one TCP frame even without its first address.
        """
        route = _route_only(route)
        if return_route is not None:
            ret = _route_only(return_route)
        elif sender is not None:
            ret = Route._trusted((sender if isinstance(sender, Address) else Address.parse(sender),))
        else:
            ret = Route._trusted(())
        message = TransportMessage(
            route, ret, payload, source=self._current_source if source is None else source
        )
        if len(payload) > _SIZE_CHECK_FROM and (len(route) > 1 or (route and route[0].type != LOCAL)):
            # The first address is stripped (a connection worker) or
            # replaced (a TCP hop) before the message is written, so it does
            # not count; a later connection drops what still does not fit.
            # (Smaller payloads cannot exceed a frame unless the routes are
            # huge, which the connection's own check catches.)
            size = message.encoded_size() - len(route[0].encode())
            if size > MAX_FRAME:
                raise MessageTooLarge(
                    f"message of {size} bytes exceeds the {MAX_FRAME}-byte TCP frame limit"
                )
        if route and route[0].type != LOCAL:
            self._send_via_transport(message)
        else:
            self.deliver(message)

    def check_route(self, route: Route) -> Route:
        """
        C{route}, if this node can send along it; a first hop that is a
        local address with no worker fails at once (a message there would
        only be dropped).

        @raise RouteUnreachable: for such a route.
        """
        if route and route[0].type == LOCAL and route[0] not in self._entries:
            raise NoSuchAddress(f"no worker at /service/{route[0].value} on node {self.name}")
        return route

    def open_worker(self, address: Address, origin, handing_on: bool = False):
        """
        The worker at C{address} if L{deliver} would let a message that came
        in through C{origin} reach it whatever the message (its access
        policy is L{ockamtw.access.ANYONE}, or L{FromOrigin} that origin),
        and no message waits for delivery, so that a message handed
        straight to it (L{hand}), without being decoded, is judged as
        L{deliver} would judge it and keeps its place; else C{None} (the
        caller then decodes the message and delivers it).

        No worker may be in its turn, except, with C{handing_on}, the one
        that asks, at the end of its turn, to hand on what it took (a secure
        channel's decryptor, what it decrypted): a worker is never called
        again while its turn is on the stack.
        """
        if self._queue or self._turns > (1 if handing_on else 0):
            return None
        entry = self._entries.get(address)
        if entry is None:
            return None
        access = entry[1]
        if access is ANYONE or (access.__class__ is FromOrigin and access.origin is origin):
            return entry[0]
        return None

    def hand(self, address: Address, source, call, *args):
        """
        Have the worker at C{address} (from L{open_worker}) take a message
        that was not decoded, as L{deliver} has a worker take one
        (C{call(*args)}, e.g. its C{receive_payload}): C{source} is the flow
        source meanwhile; an error is logged, never passed on.  What
        C{call} returns (C{None} after an error).
        """
        outer = self._delivering
        outer_source = self._current_source
        self._delivering = True
        try:
            result = self._run(address, source, call, *args)
        finally:
            self._delivering = outer
            self._current_source = outer_source
        if self._queue and not outer:
            # What the worker sent meanwhile, after it (as deliver does);
            # inside another worker's turn (a secure channel handing on
            # what it decrypted), once that turn ends.
            self._drain()
        return result

    def when_route_closes(self, route: Route, f) -> Callable[[], None]:
        """
        Call C{f()} if the link C{route} leaves this node through (see
        L{link_of}) closes, at once if it is closed already: a request
        along it then need not wait for its time-out, as its answer cannot
        come back that way.  Returns a function that withdraws the watch.
        """
        link = self.link_of(route[0]) if route else None
        if link is None:
            return _nothing
        if not link.connected:
            f()
            return _nothing
        key = link.on_close(lambda _: f())
        return lambda: link.cancel_on_close(key)

    def link_of(self, address: Union[Address, str, None]):
        """
        What a route starting at C{address} leaves this node through: the
        L{ockamtw.interfaces.ILink} (a TCP connection, a secure channel end)
        whose worker (an L{ockamtw.interfaces.ILinkWorker}) is there, or
        C{None}.  Answers come back with that link as their origin.
        """
        if address is None:
            return None
        if not isinstance(address, Address):
            address = Address.parse(address)
        worker = self._workers.get(address)
        return worker.leads_to if ILinkWorker.providedBy(worker) else None

    def forward(self, message: TransportMessage, onward: Route, return_route: Route, origin=_KEEP) -> None:
        """
        Pass C{message} on with new routes, for a worker that forwards what
        it received (C{hop}, a relay): the copy keeps the message's origin
        (so access policies further on judge the original sender, not this
        node) and its flow source, and uses up one step of its forwarding
        budget; a message out of budget (a route looping through this
        node's workers) is dropped.

        @raise MessageTooLarge: as L{send}.
        """
        budget = message.budget - 1
        if budget < 0:
            self.dropped += 1
            self.throttle.log(
                log,
                "warn",
                ("loop", message.origin),
                "message from {origin} forwarded too many times on node {node}: dropped",
                origin=describe_origin(message.origin),
                node=self.name,
            )
            return
        out = message.with_routes(onward, return_route)
        out.budget = budget
        if origin is not _KEEP:
            out.origin = origin
        payload = message.payload
        if len(payload) > _SIZE_CHECK_FROM and (len(onward) > 1 or (onward and onward[0].type != LOCAL)):
            size = out.encoded_size() - len(onward[0].encode())
            if size > MAX_FRAME:
                raise MessageTooLarge(f"message of {size} bytes exceeds the {MAX_FRAME}-byte TCP frame limit")
        if onward and onward[0].type != LOCAL:
            self._send_via_transport(out)
        else:
            self.deliver(out)

    def _send_via_transport(self, message: TransportMessage) -> None:
        """
        A message whose first hop is a transport address (C{1#host:port}):
        connect to it (or reuse a connection) and send it on through the
        connection, if this node's own message or if allowed.
        """
        first = message.onward_route[0]
        if message.origin is not None and not self.dial_for_remote:
            self.dropped += 1
            self.throttle.log(
                log,
                "warn",
                ("dial", message.origin),
                "a message from {origin} names transport hop {peer}: this node connects only for its own messages; dropped",
                origin=describe_origin(message.origin),
                peer=short(str(first)),
                node=self.name,
            )
            return
        d = Deferred.fromCoroutine(self._connect_hop(first))

        def connected(link):
            self.deliver(message.with_routes(message.onward_route.step().prepend(link.address), message.return_route))

        def failed(f):
            self.dropped += 1
            log.warn("message dropped: {reason}", peer=short(str(first)), reason=f.getErrorMessage())

        d.addCallbacks(connected, failed)

    # --- resolution -----------------------------------------------------------

    def resolve(self, route: RouteLike) -> Deferred:
        """
        Turn route text, a L{MultiAddr} or a L{Route} into a L{Route} this
        node can send along: a first TCP hop (C{/ip4/...}, C{/dnsaddr/...},
        C{1#host:port}, C{/node/NAME}) is connected to and replaced by the
        connection's worker address.

        @return: a Deferred of the L{Route}; it fails with L{WireError} for
            bad text and L{RouteUnreachable} when a hop cannot be reached.
        """
        return Deferred.fromCoroutine(self._resolve(route))

    async def _resolve(self, route: RouteLike) -> Route:
        if isinstance(route, str):
            route = parse_route_text(route)
        if isinstance(route, MultiAddr):
            out: Route = Route._trusted(())
            for i, hop in enumerate(route.hops):
                if hop.kind == "local":
                    out = out + [Address(LOCAL, hop.name)]
                elif hop.kind == "tcp":
                    address = Address.tcp(hop.host, hop.port)
                    if i == 0:
                        link = await self._connect_hop(address)
                        out = out + [link.address]
                    else:
                        out = out + [address]
                else:
                    resolver = self._resolvers.get(hop.kind)
                    if resolver is None:
                        raise NoSuchAddress(
                            f"/{hop.kind}/{hop.name}: {hop.kind} routes are not supported by this node"
                        )
                    out = Route(await maybeDeferred(resolver, out, hop, i))
            return out
        route = Route(route)
        if route and route[0].type != LOCAL:
            link = await self._connect_hop(route[0])
            return route.step().prepend(link.address)
        return route

    async def connect_hop(self, address: Address):
        """
        The link (a connection worker) for a transport address named in a
        route, e.g. C{1#127.0.0.1:7000}: an open one, or a new one.

        @raise RouteUnreachable: when no transport serves its type or it
            cannot be reached.
        """
        return await self._connect_hop(address)

    async def _connect_hop(self, address: Address):
        transport = self._transports.get(address.type)
        if transport is None:
            raise NoSuchAddress(f"no transport for {address} on node {self.name}")
        try:
            return await transport.connect_hop(address.value)
        except CancelledError:
            raise
        except OckamError as e:
            if isinstance(e, RouteUnreachable):
                raise
            raise RouteUnreachable(str(e)) from None  # it names the target already
        except Exception as e:
            raise RouteUnreachable(f"cannot connect to {address.value}: {e}") from None

    def request(self, route: RouteLike, payload: bytes, timeout: float = 30.0) -> Deferred:
        """
        Send C{payload} along C{route} from a temporary worker and wait for
        the first message that comes back to it.

        @return: a Deferred firing with the reply L{TransportMessage}, or
            failing with L{RequestTimeout} after C{timeout} seconds (which
            covers connecting too), L{RouteUnreachable} (also as soon as
            the connection or channel the route leaves through closes) or
            L{WireError}.
        """

        async def go():
            resolved = self.check_route(await self._resolve(route))
            answer: Deferred = Deferred()
            address = self.start_worker(None, _ReplyWorker(answer))

            def closed():
                if not answer.called:
                    answer.errback(RouteUnreachable(f"the connection to {route} closed before a reply came"))

            try:
                self.send(resolved, payload, sender=address)
                unwatch = self.when_route_closes(resolved, closed)
                try:
                    return await answer
                finally:
                    unwatch()
            finally:
                self.stop_worker(address)

        d = Deferred.fromCoroutine(go())
        self._pending.add(d)

        def on_timeout(result, _timeout):
            if isinstance(result, Failure) and result.check(CancelledError):
                raise RequestTimeout(f"no reply from {route} within {timeout:g} s")
            return result

        d.addTimeout(timeout, self.reactor, onTimeoutCancel=on_timeout)

        def done(result):
            self._pending.discard(d)
            return result

        d.addBoth(done)
        return d

    # --- lifecycle --------------------------------------------------------------

    def stopService(self) -> Deferred:
        """
        Stop child services (the features among them, each closing what it
        made), cancel pending requests, close every listener and
        connection, then stop every worker.  The Deferred fires when all of
        it is done.
        """
        d = maybeDeferred(MultiService.stopService, self)

        async def close_all(_):
            for p in list(self._pending):
                p.cancel()
            await gather([t.close_all() for t in self._transports.values()])
            for address in list(self._workers):
                self.stop_worker(address)

        d.addCallback(lambda r: Deferred.fromCoroutine(close_all(r)))
        return d

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} workers={len(self._workers)}>"
