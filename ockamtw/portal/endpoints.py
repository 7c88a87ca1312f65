"""
Twisted endpoints whose connections are portal streams inside a node, with
no socket of their own (what C{ockam:} endpoint strings make; see
L{ockamtw.endpoint_parsers} and docs/embedding.md):

  - L{OckamClientEndpoint}: C{connect(factory)} opens a stream to the outlet
    at the end of a route, as an inlet does for each client it accepts;
    the factory's protocol is connected to it once the outlet has answered.
  - L{OckamServerEndpoint}: C{listen(factory)} starts an outlet whose
    streams are served by the factory's protocols instead of connections
    to a target, optionally behind a relay.

The portal workers are the inlet's and the outlet's (L{InletPortal},
L{OutletPortal}): the same protocol on the wire, the same per-stream
flow control and half-close.  Where an inlet's portal owns an accepted
socket, these own one end of a L{pipe}, whose other end is the protocol's
transport (a L{StreamTransport}: C{IConsumer}, C{IPushProducer},
C{loseWriteConnection}).
"""

from __future__ import annotations

from typing import Dict, Optional

from twisted.application.service import Service
from twisted.internet import defer, error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IStreamClientEndpoint, IStreamServerEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from ..deferred import gather
from ..errors import OckamError
from . import CONNECTING, _SocketProtocol
from .inlet import Inlet, InletPortal
from .outlet import Outlet, OutletPortal
from .pipe import OckamAddress, pipe

log = Logger(namespace="ockamtw.portal.endpoints")

#: What a stream's protocol is told (C{ConnectionLost}) when its portal
#: ended for one of these reasons (L{ockamtw.portal.PortalWorker}'s
#: events), rather than because either side closed it.
_LOST = {
    "link": "the link to the other side closed",
    "gone": "the peer that opened the stream is gone",
    "silent": "nothing heard from the other side",
    "idle": "no traffic for too long",
}


class _StreamEnd:
    """
    What the portals of C{ockam:} endpoints add: the reason their stream
    ended, for the protocol's C{connectionLost}.
    """

    def _note(self, level: str, what: str, format: str, **kw) -> None:
        why = _LOST.get(what)
        if why is not None:
            self._lost_because(why)
        super()._note(level, what, format, **kw)

    def _lost_because(self, why: str) -> None:
        transport = self.transport
        if transport is not None and transport.close_reason is None:
            transport.close_reason = error.ConnectionLost(f"ockam: {why}")

    def stopped(self) -> None:
        if not self.finished:
            self._lost_because(f"node {self.owner.node.name} stopped")
        super().stopped()


class _ClientPortal(_StreamEnd, InletPortal):
    """
    The portal of one L{OckamClientEndpoint} connection: an inlet's portal
    whose socket is one end of a pipe; the factory's protocol gets the
    other end once the outlet's Pong has opened the stream.
    """

    side = "ockam client"
    #: connect() fires once the target's side is connected, as a TCP
    #: connection's would.
    early_pong = False

    def __init__(self, owner: "_Opener", factory, opened: Deferred) -> None:
        InletPortal.__init__(self, owner)
        self._factory = factory
        self._opened = opened
        self._failure: Optional[Exception] = None
        self._client_end = None

    def start(self) -> None:
        owner = self.owner
        here = OckamAddress("(portal)")
        there = OckamAddress(owner.route_text)
        ours, theirs = pipe(owner.reactor, there, here)
        self._client_end = theirs
        ours.connect(_SocketProtocol(self))  # the portal starts: Ping

    def _pong_accepted(self) -> None:
        InletPortal._pong_accepted(self)
        opened = self._opened
        if opened.called:
            return
        end = self._client_end
        end._host = OckamAddress(f"/service/{self.address.value}")
        try:
            protocol = self._factory.buildProtocol(end.getPeer())
        except BaseException as e:
            self._fail(e)
            return
        if protocol is None:
            self._fail(error.ConnectError(string="the factory built no protocol"))
            return
        end.connect(protocol)
        if not opened.called:
            opened.callback(protocol)

    def _fail(self, e: BaseException) -> None:
        self._failure = e
        self.close()
        if not self._opened.called:
            self._opened.errback(e)

    def _refused_by_outlet(self, reason: str) -> None:
        InletPortal._refused_by_outlet(self, reason)
        self._failure = error.ConnectionRefusedError(string=f"refused by the outlet: {reason}")

    def _disconnected_before_open(self) -> None:
        InletPortal._disconnected_before_open(self)
        self._failure = error.ConnectionRefusedError(
            string="the outlet closed the stream before opening it (refused, or its target is unreachable)"
        )

    def _ended(self) -> None:
        InletPortal._ended(self)
        opened = self._opened
        if opened.called:
            return
        failure = self._failure
        if failure is None:
            owner = self.owner
            if self.timed_out is not None:
                failure = error.TimeoutError(string=self.timed_out)
            elif owner.last_error:
                # The route stopped resolving (what it names is gone).
                failure = error.NoRouteError(string=f"{owner.route_text}: {owner.last_error}")
            else:
                failure = error.ConnectError(string="the stream ended before it opened")
        opened.errback(failure)


class _Opener(Inlet):
    """
    An inlet without a listening port: it opens a stream to the outlet at
    the end of C{route} each time L{OckamClientEndpoint.connect} asks.
    """

    def __init__(self, node, route, **kw) -> None:
        Inlet.__init__(self, node, "ockam:" + str(route), route, **kw)
        self.socket_address = f"ockam:{route}"

    def open(self, factory) -> Deferred:
        """
        A Deferred of the factory's protocol, connected to a new stream.
        """

        def cancel(d):
            portal._failure = error.ConnectingCancelledError(OckamAddress(self.route_text))
            portal.close()

        opened: Deferred = Deferred(canceller=cancel)
        portal = _ClientPortal(self, factory, opened)
        self.portals.add(portal)
        portal.start()
        return opened


class _ServerPortal(_StreamEnd, OutletPortal):
    side = "ockam server"


class FactoryOutlet(Outlet):
    """
    An outlet whose streams are served by the protocols of a Twisted
    server factory, each on one end of a pipe, instead of connections to
    a target.
    """

    portal_class = _ServerPortal

    def __init__(self, factory, description: str, **kw) -> None:
        self.factory = factory
        Outlet.__init__(self, description, **kw)

    def _check_target(self) -> None:
        pass

    def _connect_target(self, portal, offered: bool) -> None:
        # In a later reactor round, as a TCP target's connection would be:
        # the Pong must not be sent from inside the delivery of the Ping,
        # where it would wait in the node's queue while the protocol's
        # first Payloads, written straight to the link, overtook it.
        self.node.reactor.callLater(0, self._serve, portal, offered)

    def _serve(self, portal, offered: bool) -> None:
        if portal.state != CONNECTING:
            return  # ended meanwhile (Disconnect, the outlet closed)
        peer = OckamAddress(str(portal.remote_route))
        try:
            protocol = self.factory.buildProtocol(peer)
        except Exception:
            log.failure("outlet {address}: the factory failed", address=self.address.value)
            protocol = None
        if protocol is None:
            self.refused += 1
            if offered:
                self._answer(portal.remote_route, "the server turned the stream away", portal.address)
                portal.finish(notify=False)
            else:
                portal.finish(notify=True)
            return
        ours, theirs = pipe(self.node.reactor, peer, OckamAddress(self.target))
        ours.connect(_SocketProtocol(portal))  # open: Pong
        theirs.connect(protocol)

    def stop_accepting(self) -> None:
        """
        Take no more streams (its open streams go on).
        """
        self.closed = True
        if self.node is not None and self.node.worker_at(self.address) is self:
            self.node.stop_worker(self.address)

    def to_dict(self) -> dict:
        out = Outlet.to_dict(self)
        out["target"] = None
        return out


class _Streams(Service):
    """
    The C{ockam:} endpoints' part of a node (a child service of it): their
    openers, one per route, and their outlets; stopping it (the node
    stopping) closes every stream.
    """

    name = "ockamtw-endpoints"

    def __init__(self) -> None:
        self.openers: Dict[tuple, _Opener] = {}
        self.ports: set = set()

    def opener(self, node, route, ping_timeout: float, authorized, flow_control: bool) -> _Opener:
        key = (str(route), ping_timeout, None if authorized is None else frozenset(authorized), flow_control)
        opener = self.openers.get(key)
        if opener is None:
            policy = None
            if authorized is None and getattr(node, "membership", None) is not None:
                policy = node.membership.policy("tcp-inlet")
            opener = self.openers[key] = _Opener(
                node, route, ping_timeout=ping_timeout, authorized=authorized, flow_control=flow_control, policy=policy
            )
        return opener

    def stopService(self) -> Deferred:
        Service.stopService(self)
        for opener in self.openers.values():
            for portal in opener.portals:
                portal._lost_because(f"node {opener.node.name} stopped")
        ds = []
        for port in list(self.ports):
            ds.append(port.stopListening())
            ds.append(port.outlet.close())
        ds += [opener.close() for opener in self.openers.values()]
        self.openers.clear()
        return gather(ds)


def streams_of(node) -> _Streams:
    """
    The L{_Streams} service of C{node}, added when missing.
    """
    try:
        return node.getServiceNamed(_Streams.name)
    except KeyError:
        streams = _Streams()
        streams.setServiceParent(node)
        return streams


def _node_of(node):
    """
    C{node}, or what C{node()} gives when it is a callable (the parsers'
    embedded nodes are made at first use).
    """
    return node() if callable(node) else node


@implementer(IStreamClientEndpoint)
class OckamClientEndpoint:
    """
    Connects to the service behind the outlet at the end of C{route},
    through C{node}: each connection is a portal stream of that node (as an
    inlet makes for each client), with no local port and no socket.

    C{connect(factory)} fires with the factory's protocol once the outlet
    has opened the stream, or fails with a C{ConnectError}:
    C{NoRouteError} when the route cannot be resolved (no such node, a
    refused TCP connection, not a project member), C{ConnectionRefusedError}
    when the outlet refuses the stream (not authorized, its target is
    down), C{TimeoutError} when nothing answers within C{timeout} seconds.

    @param node: a started L{ockamtw.Node} (or a callable giving one).
    @param route: route or MultiAddr text ending at an outlet, e.g.
        C{/ip4/127.0.0.1/tcp/7000/service/forward_to_n3/service/outlet}.
    @param authorized: identifiers: only a stream that the outlet opened
        through a secure channel from one of them is accepted.
    @param flow_control: offer per-stream flow control (ockamtw outlets).
    """

    def __init__(self, node, route, timeout: float = 10.0, authorized=None, flow_control: bool = True) -> None:
        self._node = node
        self.route = route
        self.timeout = timeout
        self.authorized = authorized
        self.flow_control = flow_control

    def __repr__(self) -> str:
        return f"<OckamClientEndpoint route={str(self.route)!r}>"

    def connect(self, protocolFactory) -> Deferred:
        return Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, factory):
        route_text = str(self.route)
        try:
            node = _node_of(self._node)
        except OckamError as e:
            raise error.ConnectError(string=str(e)) from None
        opener = streams_of(node).opener(node, self.route, self.timeout, self.authorized, self.flow_control)
        resolving = opener.route()
        resolving.addTimeout(self.timeout, node.reactor)
        try:
            await resolving
        except defer.TimeoutError:
            raise error.TimeoutError(string=f"{route_text}: not reached within {self.timeout:g} s") from None
        except OckamError as e:
            raise error.NoRouteError(string=f"{route_text}: {e}") from None
        return await opener.open(factory)


def _forget_relay(node, relay) -> None:
    """
    Stop C{relay}, one of C{node}'s relays.
    """
    if node is not None and getattr(node, "relays", {}).get(relay.name) is relay:
        node.delete_relay(relay.name)
    else:
        relay.stop()


@implementer(IListeningPort)
class _OutletPort:
    """
    What L{OckamServerEndpoint.listen} gives: the outlet, and its relay.
    """

    def __init__(self, streams: _Streams, factory, outlet: FactoryOutlet, relay, route: str) -> None:
        self._streams = streams
        self.factory = factory
        self.outlet = outlet
        self.relay = relay
        self.route = route
        self._stopped = False

    def startListening(self) -> None:
        pass

    def stopListening(self) -> Deferred:
        """
        Stop the relay and take no more streams; streams already open go
        on (until they end, or the node stops).
        """
        if not self._stopped:
            self._stopped = True
            if self.relay is not None:
                _forget_relay(self.outlet.node, self.relay)
            self.outlet.stop_accepting()
            self.factory.doStop()
            self._streams.ports.discard(self)
        return defer.succeed(None)

    def getHost(self) -> OckamAddress:
        """
        The route clients reach this outlet by (through its relay, if it
        has one).
        """
        return OckamAddress(self.route)

    def __repr__(self) -> str:
        return f"<ockam outlet on {self.route}>"


@implementer(IStreamServerEndpoint)
class OckamServerEndpoint:
    """
    Serves a Twisted server factory behind an outlet of C{node}, at
    C{service} (C{/service/outlet} by default), and behind a relay named
    C{relay} at C{at} (a route or MultiAddr, e.g.
    C{/ip4/127.0.0.1/tcp/7000} or C{/project/default}) when given: no
    local port, every stream a protocol of the factory.

    C{listen(factory)} fires with an C{IListeningPort} once the outlet is
    there and the relay registered (C{getHost().route} is the route
    clients use); registration is retried for up to C{timeout} seconds
    (the relay node may be starting too).  It fails with
    C{CannotListenError} when the address is taken, or the relay is not
    registered by then (the line says why: the relay node cannot be
    reached, refuses the name).  The relay then keeps itself registered,
    and comes back after the relay node restarts.

    @param node: a started L{ockamtw.Node} (or a callable giving one).
    @param authorized: identifiers: only streams opened through a secure
        channel from one of them (by default, anyone, or the project's
        policy when the node belongs to a project).
    """

    def __init__(self, node, service: str = "outlet", relay: Optional[str] = None, at=None,
                 authorized=None, flow_control: bool = True, timeout: float = 10.0) -> None:
        if (relay is None) != (at is None):
            raise ValueError("a relay needs both a name (relay=) and where to register it (at=)")
        self._node = node
        self.service = service
        self.relay = relay
        self.at = at
        self.authorized = authorized
        self.flow_control = flow_control
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<OckamServerEndpoint service={self.service!r} relay={self.relay!r} at={str(self.at)!r}>"

    def listen(self, protocolFactory) -> Deferred:
        return Deferred.fromCoroutine(self._listen(protocolFactory))

    async def _listen(self, factory):
        from ..status import UP

        where = f"/service/{self.service}"
        try:
            node = _node_of(self._node)
        except OckamError as e:
            raise error.CannotListenError("ockam", where, e) from None
        streams = streams_of(node)
        policy = None
        if self.authorized is None and getattr(node, "membership", None) is not None:
            policy = node.membership.policy("tcp-outlet")
        outlet = FactoryOutlet(factory, where, authorized=self.authorized, flow_control=self.flow_control,
                               policy=policy)
        try:
            node.start_worker(self.service, outlet)
        except OckamError as e:
            raise error.CannotListenError("ockam", where, e) from None
        factory.doStart()
        relay = None
        route = where
        if self.relay is not None:
            at = str(self.at)
            # The node's own relay (its relays list shows it), registered in
            # the background, retried with backoff (the relay node may be
            # starting too), for at most `timeout` seconds.
            try:
                relay = node.add_relay(self.at, name=self.relay, timeout=min(self.timeout, 5.0))
            except OckamError as e:
                outlet.stop_accepting()
                factory.doStop()
                raise error.CannotListenError("ockam", f"relay {self.relay} at {at}", e) from None
            up = relay.when_status(UP)
            up.addTimeout(self.timeout, node.reactor)
            try:
                await up
            except BaseException as e:
                _forget_relay(node, relay)
                outlet.stop_accepting()
                factory.doStop()
                if isinstance(e, defer.TimeoutError):
                    reason = relay.last_error or f"no answer within {self.timeout:g} s"
                    raise error.CannotListenError("ockam", f"relay {self.relay} at {at}", reason) from None
                raise
            forwarder = relay.remote_address.value if relay.remote_address is not None else relay.alias
            route = f"{at.rstrip('/')}/service/{forwarder}{where}"
        port = _OutletPort(streams, factory, outlet, relay, route)
        streams.ports.add(port)
        log.info("outlet {service} serving {factory}{relay}", service=self.service, factory=type(factory).__name__,
                 relay=f" behind relay {self.relay} at {self.at}" if relay is not None else "")
        return port
