"""
The TCP outlet: a worker that accepts Ping and, for each, connects a new
portal worker to the target service; and L{Outlets}, the feature that
keeps a node's outlets (their state and their control routes).
"""

from __future__ import annotations

from typing import Dict, Optional

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from zope.interface import implementer

from ..deferred import gather
from ..endpoints import cancelled, client_endpoint
from ..errors import WireError
from ..feature import Aliases, ControlError, Feature, alias_of, authorized_of, listed, service_name
from ..interfaces import IAccessPolicy
from ..node import Worker
from ..routing import Address
from ..wire import DISCONNECT, PING, PONG, encode_refuse
from . import (
    PortalWorker,
    _OneProtocolFactory,
    authorized_policy,
    offers_flow_control,
    portal_address,
    stream_limits,
    takes_early_pong,
)

log = Logger(namespace="ockamtw.portal.outlet")


class OutletPortal(PortalWorker):
    """
    The outlet side of one tunnelled connection.  To an ockamtw TCP inlet
    (per-stream flow control, L{takes_early_pong}) it answers Pong at once,
    and connects to the target meanwhile: the data that comes first waits in the portal (at
    most the inlet's first credit) until the target is connected, and if
    the target cannot be reached the portal says so (Refuse).  To any other
    inlet (Ockam 0.83's, or an C{ockam:} client endpoint's) it answers Pong
    once its target socket is connected, as Ockam's outlet does
    (L{CONNECTING} to L{OPEN}).
    """

    side = "outlet"
    #: The Deferred of the target connection while it is being made.
    connecting = None

    def pong(self) -> None:
        """
        Tell the inlet's portal that the stream is open (Pong).
        """
        self.ponged = True
        self.node.send(self.remote_route, PONG, sender=self.address)

    def _connected(self) -> None:
        if not self.ponged:
            self.pong()

    def _ended(self) -> None:
        connecting, self.connecting = self.connecting, None
        if connecting is not None and not connecting.called:
            connecting.cancel()


@implementer(IAccessPolicy)
class _OutletAccess:
    """
    An outlet's policy (everyone, or the listed secure channel peers); a
    Ping it refuses is answered, so that the inlet's user learns why at
    once instead of waiting for a time-out.
    """

    def __init__(self, outlet: "Outlet", policy) -> None:
        self.outlet = outlet
        self.policy = policy

    def allows(self, message) -> bool:
        return self.policy.allows(message)

    def refused(self, message) -> None:
        self.outlet._refused_ping(message)

    def __str__(self) -> str:
        return str(self.policy)


class Outlet(Worker):
    """
    A TCP outlet at an address (e.g. C{outlet}), forwarding to C{target}.

    @ivar target: C{host:port} (or a client endpoint string).
    @ivar portals: the live portal workers.
    @ivar flow_control: whether its portals offer per-stream flow control
        (docs/protocol.md) to inlets that speak it.
    """

    def __init__(self, target: str, connect_timeout: float = 10.0, authorized=None, flow_control: bool = True,
                 heartbeat: float = PortalWorker.heartbeat,
                 idle_timeout: Optional[float] = PortalWorker.idle_timeout, policy=None) -> None:
        self.target = target
        self.flow_control = flow_control
        #: See L{PortalWorker.heartbeat} and L{PortalWorker.idle_timeout}.
        self.heartbeat = heartbeat
        self.idle_timeout = idle_timeout
        self.authorized = None if authorized is None else frozenset(authorized)
        #: Who may open a stream (send Ping): everyone, or the secure
        #: channel peers in C{authorized}; the node enforces it, and the
        #: outlet answers a refused Ping (L{_OutletAccess}).
        self.access = _OutletAccess(self, policy if policy is not None else authorized_policy(self.authorized))
        #: Pings refused (not authorized)
        self.unauthorized = 0
        self.connect_timeout = connect_timeout
        self.portals: set = set()
        self._endpoint = (None, None)
        self.accepted = 0
        self.refused = 0
        self.closed = False
        self._check_target()

    #: The class of this outlet's portal workers.
    portal_class = OutletPortal

    def _check_target(self) -> None:
        # Fail early on a bad target.
        client_endpoint(None, self.target, self.connect_timeout)

    def receive(self, message) -> None:
        if message.payload != PING:
            return
        if not message.return_route or self.closed:
            return
        limits = stream_limits(self.node)
        if not limits.take(self.node, "outlet", self.address.value):
            self._answer(message.return_route, "the outlet's node holds too many streams", self.address)
            return
        portal = self.portal_class(self)
        portal.stream_limits = limits
        # Flow control only with an inlet that offers it: to any other
        # peer, the portal looks as Ockam's do.
        offered = offers_flow_control(message.return_route[-1])
        self.node.start_worker(portal_address(self.flow_control and offered), portal)
        portal.set_remote(message.return_route, message.origin)
        self.portals.add(portal)
        self.accepted += 1
        if portal.flow and takes_early_pong(message.return_route[-1]):
            # The Pong travels while the target is being connected.
            portal.pong()
        self._connect_target(portal, offered)

    def _connect_target(self, portal: OutletPortal, offered: bool) -> None:
        """
        Give C{portal} its socket: a connection to the target.  C{offered}:
        whether the inlet offered per-stream flow control.
        """
        try:
            made_for, endpoint = self._endpoint
            if made_for != (self.target, self.connect_timeout):
                # Made once per target: an endpoint connects any number of times.
                endpoint = client_endpoint(self.node.reactor, self.target, self.connect_timeout)[0]
                self._endpoint = ((self.target, self.connect_timeout), endpoint)
        except WireError as e:
            log.error("outlet {address}: {error}", address=self.address.value, error=str(e))
            portal.finish(notify=True)
            return

        def failed(f):
            self.refused += 1
            self.node.throttle.log(
                log,
                "warn",
                ("target", id(self)),
                "outlet {address}: cannot connect to {target} ({reason}); portal closed",
                address=self.address.value,
                target=self.target,
                reason=f.getErrorMessage(),
            )
            if offered:
                self._answer(portal.remote_route, "the outlet cannot reach its target", portal.address)
                portal.finish(notify=False)
            else:
                portal.finish(notify=True)

        def failed_or_cancelled(f):
            portal.connecting = None
            if cancelled(f) or portal.finished:
                # The portal ended first (its stream is over): nothing to say.
                return None
            return failed(f)

        def connected(protocol):
            portal.connecting = None

        portal.connecting = endpoint.connect(_OneProtocolFactory(portal))
        portal.connecting.addCallbacks(connected, failed_or_cancelled)

    def _portal_finished(self, portal) -> None:
        if portal in self.portals:
            self.portals.discard(portal)
            if portal.stream_limits is not None:
                portal.stream_limits.held -= 1

    def _answer(self, route, reason: str, sender) -> None:
        """
        Tell an inlet that its stream will not open: Refuse with C{reason}
        to an ockamtw inlet (its address offers flow control), Disconnect
        to any other (all an Ockam 0.83 inlet understands).
        """
        if not route:
            return
        payload = encode_refuse(reason) if offers_flow_control(route[-1]) else DISCONNECT
        try:
            self.node.send(route, payload, sender=sender)
        except Exception:
            log.failure("answering a refused Ping failed")

    def _refused_ping(self, message) -> None:
        if message.payload != PING or self.closed:
            return
        self.unauthorized += 1
        self._answer(message.return_route, "not authorized", self.address)

    def close(self) -> Deferred:
        """
        Stop accepting Ping and close every portal; fires when their
        sockets are closed.
        """
        self.closed = True
        ds = [p.close() for p in list(self.portals)]
        if self.node is not None and self.node.worker_at(self.address) is self:
            self.node.stop_worker(self.address)
        return gather(ds)

    def stopped(self) -> None:
        if not self.closed:
            self.close()

    def to_dict(self) -> dict:
        return {
            "address": self.address.value if self.address else None,
            "target": self.target,
            "connections": len(self.portals),
            "refused": self.unauthorized,
            "authorized": sorted(self.authorized) if self.authorized is not None else None,
        }


class Outlets(Feature):
    """
    A node's TCP outlets, by address: C{state.json}'s C{outlets}, the
    control API's C{/outlets}.  Stopping it closes them.
    """

    name = "outlets"
    state_keys = ("outlets",)
    routes = {
        ("GET", "outlets", False): "list_route",
        ("POST", "outlets", False): "create_route",
        ("GET", "outlets", True): "show_route",
        ("DELETE", "outlets", True): "delete_route",
    }

    def __init__(self, node) -> None:
        Feature.__init__(self, node)
        #: address -> L{Outlet}
        self.outlets: Dict[str, Outlet] = {}
        #: their aliases (Ockam 0.83's names: C{--alias})
        self.aliases = Aliases()

    def create(
        self,
        address: str = "outlet",
        target: str = "127.0.0.1:9000",
        connect_timeout: float = 10.0,
        authorized=None,
        flow_control: bool = True,
        **liveness,
    ) -> Deferred:
        """
        See L{ockamtw.api.Node.create_outlet}.
        """

        def make():
            membership = self.node.membership
            policy = membership.policy("tcp-outlet") if authorized is None else None
            outlet = Outlet(target, connect_timeout, authorized=authorized, flow_control=flow_control, policy=policy,
                            **liveness)
            self.node.start_worker(Address.parse(address), outlet)
            self.outlets[outlet.address.value] = outlet
            return outlet

        return maybeDeferred(make)

    def delete(self, address: str) -> Deferred:
        """
        See L{ockamtw.api.Node.delete_outlet}.
        """
        outlet = self.outlets.pop(Address.parse(address).value)
        return outlet.close()

    def stopService(self) -> Deferred:
        Feature.stopService(self)
        return gather([o.close() for o in list(self.outlets.values())])

    # --- state ---------------------------------------------------------------------------

    def save(self) -> dict:
        return {
            "outlets": [
                {"address": a, "to": o.target, "authorized": listed(o.authorized), "alias": self.aliases.of(a)}
                for a, o in self.outlets.items()
            ]
        }

    def restore(self, state: dict) -> None:
        for item in state.get("outlets", []):
            if isinstance(item.get("alias"), str):
                self.aliases.set(item["alias"], item["address"])
        for item in state.get("outlets", []):
            address = item["address"]
            if Address.parse(address).value in self.outlets:
                continue
            self.create(address, item["to"], authorized=item.get("authorized")).addErrback(
                lambda f, a=address: log.error("outlet {a} not restored: {r}", a=a, r=f.getErrorMessage())
            )

    # --- control routes -------------------------------------------------------------------

    def info(self, outlet: Outlet) -> dict:
        """
        An outlet as the control API shows it.
        """
        info = outlet.to_dict()
        info["alias"] = self.aliases.of(info["address"])
        return info

    def list_route(self, call) -> list:
        return [self.info(o) for o in self.outlets.values()]

    def _outlet(self, key: str) -> Outlet:
        """
        An outlet by its alias or its address (C{NAME}, C{/service/NAME}).
        """
        address = self.aliases.get(key)
        if address is not None and address in self.outlets:
            return self.outlets[address]
        address = service_name(key)
        outlet = self.outlets.get(address)
        if outlet is None:
            raise ControlError(404, f"no outlet {address!r} on node {self.node.name}")
        return outlet

    def show_route(self, call) -> dict:
        return self.info(self._outlet(call.key))

    async def create_route(self, call) -> dict:
        address = service_name(call.need("address"))
        to = call.need("to")
        alias = alias_of(call.body)
        if self.node.worker_at(address) is not None:
            raise ControlError(409, f"address {address!r} is already taken on node {self.node.name}")
        if self.aliases.get(alias) in self.outlets:
            raise ControlError(409, f"an outlet with alias {alias!r} already exists on node {self.node.name}")
        outlet = await self.create(address, to, authorized=authorized_of(call.body))
        self.aliases.set(alias, address)

        def undo():
            self.aliases.forget(alias)
            return self.delete(address)

        await call.saved(undo=undo)
        return self.info(outlet)

    async def delete_route(self, call) -> dict:
        outlet = self._outlet(call.key)
        info = self.info(outlet)
        await self.delete(outlet.address.value)
        self.aliases.forget(info["alias"])
        await call.saved()
        return info
