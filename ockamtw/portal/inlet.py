"""
The TCP inlet: listens, and tunnels every accepted client to an outlet;
and L{Inlets}, the feature that keeps a node's inlets (their state and
their control routes).
"""

from __future__ import annotations

from typing import Dict, List, Optional

from twisted.internet import endpoints
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..errors import NoSuchAddress, OckamError, TransportError
from ..deferred import InFlight, gather
from ..feature import Aliases, ControlError, Feature, alias_of, authorized_of, listed
from ..routing import Route, parse_route_text
from ..status import DOWN, UP
from ..endpoints import reason, server_description
from ..errors import WireError
from ..wire import PING, PONG_TAG, REFUSE_TAG, decode_refuse
from . import WAITING, PortalWorker, _SocketProtocol, authorized_policy, portal_address, stream_limits, watched_hop

log = Logger(namespace="ockamtw.portal.inlet")



class InletPortal(PortalWorker):
    """
    The inlet side of one tunnelled connection: it reads nothing from its
    client until the outlet's Pong arrives (L{WAITING}), repeating its
    Ping meanwhile.
    """

    side = "inlet"
    #: Whether the outlet may answer Pong before its target is connected
    #: (its client is a socket this node accepted; an C{ockam:} client
    #: endpoint's connection must not open before the target's does).
    early_pong = True

    def __init__(self, owner: "Inlet") -> None:
        PortalWorker.__init__(self, owner)
        self._timer = None
        self._deadline = None

    def _accepted(self) -> None:
        self._reading.pause()  # until Pong
        # Until the Pong, the inlet's policy says who may answer.
        self.owner.node.start_worker(
            portal_address(self.owner.flow_control, self.early_pong), self, access=self.owner.pong_access
        )
        self._deadline = self.owner.reactor.seconds() + self.owner.ping_timeout
        self._ping()

    def _ping(self) -> None:
        self._timer = None
        if self.state != WAITING:
            return
        inlet = self.owner
        if inlet.reactor.seconds() >= self._deadline:
            inlet.node.throttle.log(
                log,
                "warn",
                ("no pong", id(inlet)),
                "inlet {listen}: no Pong from {route} within {t:g} s; client closed",
                listen=inlet.socket_address,
                route=inlet.route_text,
                t=inlet.ping_timeout,
            )
            inlet._not_opened(f"no answer from the outlet at {inlet.route_text} within {inlet.ping_timeout:g} s", logged=True)
            inlet.timeouts += 1
            self.finish(notify=False, grace=self.close_grace)
            return

        def send(route):
            if self.state != WAITING:
                return
            self.node.send(route, PING, sender=self.address)

        def failed(f):
            inlet.last_error = f.getErrorMessage()
            if f.check(NoSuchAddress) and self.state == WAITING:
                # Nothing to wait for: the route names what does not exist.
                self._cancel_ping()
                inlet._not_opened(f.getErrorMessage())
                self.finish(notify=False, grace=self.close_grace)

        route = inlet.known_route()
        if route is not None:
            # The usual case: no Deferred to go through.
            try:
                send(route)
            except Exception:
                failed(Failure())
        else:
            # (A Ping that cannot be sent is tried again, as a lost one is.)
            inlet.route().addCallback(send).addErrback(failed)
        if self.state != WAITING:
            return
        delay = min(inlet.ping_interval, max(0.0, self._deadline - inlet.reactor.seconds()))
        self._timer = inlet.reactor.callLater(delay, self._ping)

    def control(self, tag: int, message) -> None:
        if tag == REFUSE_TAG:
            try:
                reason = decode_refuse(message.payload)
            except WireError:
                reason = "(unreadable reason)"
            remote = self.remote_route
            if remote and message.return_route and message.return_route[-1] == remote[-1]:
                # From the outlet's portal that answered Pong: it could not
                # connect to its target.
                self._machine.unreachable(reason)
            else:
                self._machine.refused(reason)
        elif tag == PONG_TAG:
            if message.return_route:
                self._machine.pong(message.return_route, message.origin)
        else:  # only Pong and Refuse are expected here
            PortalWorker.control(self, tag, message)

    # --- what the machine's outputs do here -------------------------------------------------

    def _pong_accepted(self) -> None:
        self._cancel_ping()
        self.owner._pong()
        self._reading.resume()

    def _refused_by_outlet(self, reason: str) -> None:
        self.owner._not_opened(f"refused by the outlet: {reason}")

    def _disconnected_before_open(self) -> None:
        # An Ockam 0.83 outlet's way of saying no (it refused us, or
        # cannot reach its target).
        self.owner._not_opened("the outlet closed the stream before opening it (refused, or its target is unreachable)")

    def _ended(self) -> None:
        self._cancel_ping()

    def _cancel_ping(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class _InletFactory(Factory):
    noisy = False

    def __init__(self, inlet: "Inlet") -> None:
        self._inlet = inlet

    def buildProtocol(self, addr):
        inlet = self._inlet
        if inlet.closed:
            return None
        limits = stream_limits(inlet.node)
        if not limits.take(inlet.node, "inlet", inlet.socket_address):
            return None  # the client is closed at once
        portal = InletPortal(inlet)
        portal.stream_limits = limits
        inlet.portals.add(portal)
        return _SocketProtocol(portal)


class Inlet:
    """
    A TCP inlet: every client accepted at C{listen} is tunnelled to the
    outlet at the end of C{route}.

    The route is resolved when needed and kept while its first TCP link
    lives; when that link dies, the next client resolves it again, so the
    inlet works again once the far node is back.  Each client waits at most
    C{ping_timeout} seconds for the outlet's Pong (Ping is repeated every
    C{ping_interval} seconds meanwhile), then is closed.  With
    C{flow_control} (the default), its portals offer per-stream flow
    control to outlets that speak it (ockamtw's; docs/protocol.md).

    @ivar status: L{UP} when the route is resolved and its first link (if
        it has one) is alive, else L{DOWN}.
    """

    def __init__(self, node, listen: str, route, ping_timeout: float = 10.0, ping_interval: float = 1.0, authorized=None,
                 flow_control: bool = True, heartbeat: float = PortalWorker.heartbeat,
                 idle_timeout: Optional[float] = PortalWorker.idle_timeout, policy=None) -> None:
        self.node = node
        self.flow_control = flow_control
        #: See L{PortalWorker.heartbeat} and L{PortalWorker.idle_timeout}.
        self.heartbeat = heartbeat
        self.idle_timeout = idle_timeout
        self.authorized = None if authorized is None else frozenset(authorized)
        #: Who may answer a Ping (and so open a stream): see L{ockamtw.access}.
        self.pong_access = policy if policy is not None else authorized_policy(self.authorized)
        self.reactor = node.reactor
        self.listen_description = server_description(listen)
        self.listen_text = listen
        self.route_spec = route
        self.route_text = str(route)
        self.ping_timeout = ping_timeout
        self.ping_interval = ping_interval
        self.portals: set = set()
        self.port = None
        self.socket_address: Optional[str] = None
        self.closed = False
        self.last_error: Optional[str] = None
        self.timeouts = 0
        #: streams the outlet answered (Pong; to a TCP inlet the outlet
        #: answers before its target is connected, docs/protocol.md 6.4)
        self.accepted = 0
        self._route: Optional[Route] = None
        self._link = None
        self._resolving = InFlight()
        self._reached = False
        self._refused = False
        #: streams the outlet refused or did not answer
        self.refusals = 0

    # --- lifecycle ---------------------------------------------------------------

    def start(self) -> Deferred:
        """
        Listen; fires with this inlet, or fails with L{TransportError}.
        """
        try:
            endpoint = endpoints.serverFromString(self.reactor, self.listen_description)
        except (ValueError, TypeError, KeyError) as e:
            return fail(TransportError(f"bad inlet address {self.listen_text!r}: {e}"))
        d = endpoint.listen(_InletFactory(self))

        def listening(port):
            self.port = port
            h = port.getHost()
            self.socket_address = f"[{h.host}]:{h.port}" if ":" in h.host else f"{h.host}:{h.port}"
            log.info("inlet listening on {listen}, to {route}", listen=self.socket_address, route=self.route_text)
            self.route().addErrback(lambda f: None)  # connect early; not fatal
            return self

        def failed(f):
            raise TransportError(f"cannot listen on {self.listen_text}: {reason(f)}")

        return d.addCallbacks(listening, failed)

    def close(self) -> Deferred:
        """
        Stop listening and close every tunnelled connection; fires when
        the port and every client socket are closed.
        """
        self.closed = True
        ds = [p.close() for p in list(self.portals)]
        if self.port is not None:
            port, self.port = self.port, None
            ds.append(port.stopListening())
        self._resolving.cancel_all()
        return gather(ds)

    # --- the route ---------------------------------------------------------------------

    def _route_alive(self) -> bool:
        route = self._route
        if route is None or (route and self.node.worker_at(route[0]) is None):
            return False
        return self._link is None or self._link.connected

    @property
    def status(self) -> str:
        if self.closed or self._refused or not self._route_alive():
            return DOWN
        return UP

    def known_route(self) -> Optional[Route]:
        """
        The resolved route to the outlet, if it is known and its first hop
        still there; else C{None} (L{route} resolves it).
        """
        if self._route is not None and self._route_alive():
            return self._route
        return None

    def route(self) -> Deferred:
        """
        A Deferred of the resolved route to the outlet.
        """
        known = self.known_route()
        if known is not None:
            return succeed(known)

        def resolved(route):
            self.node.check_route(route)
            link = watched_hop(self.node, route)
            self._route = route
            self._link = link
            if link is not None:
                link.on_close(lambda _: self._link_lost(link))
            if not self._refused:
                self.last_error = None
            return route

        def failed(f):
            self.last_error = f.getErrorMessage()
            if not f.check(OckamError):
                log.failure("inlet route resolution failed", f)
            return f

        return self._resolving.wait(
            "route", lambda: self.node.resolve(self.route_spec).addCallback(resolved).addErrback(failed)
        )

    def _link_lost(self, link) -> None:
        if link is self._link:
            self._route = None
            self._link = None
            self._reached = False
            log.info("inlet {listen}: link for {route} closed", listen=self.socket_address, route=self.route_text)

    def _pong(self) -> None:
        self._reached = True
        self._refused = False
        self.last_error = None
        self.accepted += 1

    def _not_opened(self, reason: str, logged: bool = False) -> None:
        """
        A client's stream did not open, for C{reason}: the inlet shows it
        (C{last_error}, and L{DOWN} until a stream opens again).
        """
        self._refused = True
        self.refusals += 1
        if not logged:
            self.node.throttle.log(
                log, "warn", ("not opened", id(self)), "inlet {listen}: {reason}; client closed",
                listen=self.socket_address, reason=reason,
            )
        self.last_error = reason

    def _portal_finished(self, portal) -> None:
        if portal in self.portals:
            self.portals.discard(portal)
            if portal.stream_limits is not None:
                portal.stream_limits.held -= 1

    def to_dict(self) -> dict:
        return {
            "listen": self.socket_address,
            "route": self.route_text,
            "status": self.status,
            "connections": len(self.portals),
            "last_error": self.last_error,
            "refusals": self.refusals,
            "authorized": sorted(self.authorized) if self.authorized is not None else None,
        }


class Inlets(Feature):
    """
    A node's TCP inlets, by the address they listen on: C{state.json}'s
    C{inlets}, the control API's C{/inlets}.  Restored inlets listen when
    the node starts (one that cannot is logged, and the node runs without
    it); stopping it closes them.
    """

    name = "inlets"
    state_keys = ("inlets",)
    routes = {
        ("GET", "inlets", False): "list_route",
        ("POST", "inlets", False): "create_route",
        ("GET", "inlets", True): "show_route",
        ("DELETE", "inlets", True): "delete_route",
    }

    def __init__(self, node) -> None:
        Feature.__init__(self, node)
        #: listening address (C{host:port}) -> L{Inlet}
        self.inlets: Dict[str, Inlet] = {}
        #: restored inlets waiting for the node to start: (listen, route, authorized)
        self._restoring: List[tuple] = []
        #: their aliases (Ockam 0.83's names: C{--alias}), of their socket addresses
        self.aliases = Aliases()

    def create(
        self,
        listen: str,
        route,
        ping_timeout: float = 10.0,
        ping_interval: float = 1.0,
        authorized=None,
        flow_control: bool = True,
        **liveness,
    ) -> Deferred:
        """
        See L{ockamtw.api.Node.create_inlet}.
        """

        def make():
            inlet = Inlet(
                self.node,
                listen,
                route,
                ping_timeout=ping_timeout,
                ping_interval=ping_interval,
                authorized=authorized,
                flow_control=flow_control,
                policy=self.node.membership.policy("tcp-inlet") if authorized is None else None,
                **liveness,
            )
            return inlet.start()

        def started(inlet):
            self.inlets[inlet.socket_address] = inlet
            return inlet

        return maybeDeferred(make).addCallback(started)

    def delete(self, listen: str) -> Deferred:
        """
        See L{ockamtw.api.Node.delete_inlet}.
        """
        inlet = self.inlets.pop(listen)
        return inlet.close()

    # --- life -------------------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        Feature.privilegedStartService(self)
        self._listen_restored()

    def startService(self) -> None:
        Feature.startService(self)
        self._listen_restored()  # when the node was started without privilegedStartService

    def _listen_restored(self) -> None:
        restoring, self._restoring = self._restoring, []
        for listen, route, authorized in restoring:
            self.create(listen, route, authorized=authorized).addErrback(
                lambda f, listen=listen: log.error(
                    "node {node}: inlet {listen} not restored: {reason}",
                    node=self.node.name,
                    listen=listen,
                    reason=f.getErrorMessage(),
                )
            )

    def stopService(self) -> Deferred:
        Feature.stopService(self)
        self._restoring = []
        return gather([i.close() for i in self.inlets.values()])

    # --- state ---------------------------------------------------------------------------

    def save(self) -> dict:
        return {
            "inlets": [
                {"listen": i.socket_address, "to": i.route_text, "authorized": listed(i.authorized),
                 "alias": self.aliases.of(i.socket_address)}
                for i in self.inlets.values()
            ]
        }

    def restore(self, state: dict) -> None:
        for item in state.get("inlets", []):
            if isinstance(item.get("alias"), str):
                self.aliases.set(item["alias"], item["listen"])
        # An inlet there already (or waiting to listen) is not made again;
        # several at port 0 are as many inlets.
        there = {(l, r) for l, r, _ in self._restoring}
        for i in self.inlets.values():
            there |= {(i.listen_text, i.route_text), (i.socket_address, i.route_text)}
        for item in state.get("inlets", []):
            if (item["listen"], item["to"]) not in there:
                self._restoring.append((item["listen"], item["to"], item.get("authorized")))
        if self.running:
            self._listen_restored()

    # --- control routes -------------------------------------------------------------------

    def info(self, inlet: Inlet) -> dict:
        """
        An inlet as the control API shows it.
        """
        info = inlet.to_dict()
        info["alias"] = self.aliases.of(inlet.socket_address)
        return info

    def list_route(self, call) -> list:
        return [self.info(i) for i in self.inlets.values()]

    def _inlet(self, key: str) -> Inlet:
        """
        An inlet by its alias, its address, or the address it was given.
        """
        by_alias = self.aliases.get(key)
        if by_alias is not None and by_alias in self.inlets:
            return self.inlets[by_alias]
        inlet = self.inlets.get(key)
        if inlet is None:
            for i in self.inlets.values():
                if key in (i.listen_text, i.socket_address):
                    return i
            raise ControlError(404, f"no inlet {key!r} on node {self.node.name}")
        return inlet

    def show_route(self, call) -> dict:
        return self.info(self._inlet(call.key))

    async def create_route(self, call) -> dict:
        listen = call.need("listen")
        to = call.need("to")
        parse_route_text(to)
        alias = alias_of(call.body)
        if self.aliases.get(alias) in self.inlets:
            raise ControlError(409, f"an inlet with alias {alias!r} already exists on node {self.node.name}")
        inlet = await self.create(listen, to, authorized=authorized_of(call.body))
        self.aliases.set(alias, inlet.socket_address)
        if to.startswith("/project/"):
            # As Ockam 0.83 does: an inlet to a project is made only once the
            # project is reached (and this node admitted), so that a
            # non-member learns it at once.
            try:
                await inlet.route()
            except Exception:
                self.aliases.forget(alias)
                await self.delete(inlet.socket_address)
                raise

        def undo():
            self.aliases.forget(alias)
            return self.delete(inlet.socket_address)

        await call.saved(undo=undo)
        return self.info(inlet)

    async def delete_route(self, call) -> dict:
        inlet = self._inlet(call.key)
        info = self.info(inlet)
        await self.delete(inlet.socket_address)
        self.aliases.forget(info["alias"])
        await call.saved()
        return info
