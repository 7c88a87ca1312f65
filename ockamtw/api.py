"""
The public node: the core of L{ockamtw.node} with the default services,
the relay service, and relays, inlets and outlets.
"""

from typing import Dict

from twisted.internet.defer import Deferred, maybeDeferred, succeed

from .errors import AddressInUse, OckamError, RouteUnreachable
from .deferred import InFlight, gather
from .node import BaseNode
from .portal.inlet import Inlet
from .project.membership import CredentialsService, Membership
from .portal.outlet import Outlet
from .relay import FORWARDING_SERVICE, STATIC_FORWARDING_SERVICE, Relay, start_relay_services
from .routing import TCP, Address, Route
from .transport.tcp import TcpTransport
from .services import start_default_services
from .status import UP


class Node(BaseNode):
    """
    An Ockam node with the default services C{echo}, C{uppercase}, C{hop}
    and the relay services C{forwarding_service} and
    C{static_forwarding_service}.  Embed it in any Twisted program::

        node = Node(reactor, name="n1")
        node.startService()                # or node.setServiceParent(app)
        listener = await node.tcp.listen("tcp:0:interface=127.0.0.1")
        conn = await node.tcp.connect("127.0.0.1:7000")
        reply = await node.request(Route([conn.address, Address.parse("uppercase")]),
                                   encode_string("hello"))
        await node.stopService()

    @param reactor: the reactor to use (the global one by default).
    @param name: the node's name (random by default).
    @param services: start the default and relay services (default C{True}).
    @param identity: the node's L{LocalIdentity} (a new one when C{None}).
    @param handshake_limits: the L{HandshakeLimits} of the node's secure
        channel listeners (the defaults when C{None}): how many half-open
        handshakes it holds per peer and in all, how many first messages
        per second it answers, and the handshake grace.
    """

    def __init__(self, reactor=None, name=None, services=True, identity=None, handshake_limits=None):
        BaseNode.__init__(self, reactor, name)
        self.relays: Dict[str, Relay] = {}
        self.inlets: Dict[str, Inlet] = {}
        self.outlets: Dict[str, Outlet] = {}
        #: encryptor hex -> L{ChannelEnd} of the channels this node initiated
        self.secure_channels: Dict[str, object] = {}
        #: address -> L{SecureChannelListener}
        self.secure_listeners: Dict[str, object] = {}
        self._identity = identity
        self.handshake_limits = handshake_limits
        self._pending_hops = InFlight()
        #: L{TcpTransport}: C{1#host:port} hops, listeners and connections.
        self.tcp = TcpTransport(self, self.reactor)
        self.register_transport(self.tcp)
        #: a callable C{f(name)} giving the C{"host:port"} (or a Deferred of
        #: it) of another node, for C{/node/NAME} in a MultiAddr; the command
        #: line sets it.  C{/node/<own name>} is this node.
        self.node_resolver = None
        self.register_resolver("node", self._node_hop)
        self.register_resolver("secure", self._secure_hop)
        #: the projects this node belongs to (L{ockamtw.project.membership})
        self.membership = Membership(self)
        self.register_resolver("project", self.membership.resolve)
        if services:
            start_default_services(self)
            start_relay_services(self)
            self.create_secure_channel_listener("api")
            self.start_worker("credentials", CredentialsService(self.membership))

    def add_project(self, info) -> None:
        """
        Belong to a project (a L{ProjectInfo}, what C{project.json} holds):
        C{/project/NAME} routes reach it, and inlets and outlets created from
        now on follow Ockam 0.83's default policy for project nodes
        (L{ockamtw.project.membership.Membership.policy}).
        """
        self.membership.add(info)

    # --- identity and secure channels ---------------------------------------

    @property
    def identity(self):
        """
        This node's L{LocalIdentity} (a new one, in memory, unless one was
        given).
        """
        if self._identity is None:
            from .secure.identity import LocalIdentity

            self._identity = LocalIdentity.create()
        return self._identity

    def create_secure_channel_listener(self, address: str = "api", authorized=None, limits=None):
        """
        Start a secure channel listener at C{address}, accepting the
        identifiers in C{authorized} (everyone when C{None}), under
        C{limits} (a L{HandshakeLimits}; the node's C{handshake_limits}
        when C{None}).  If a listener is already there (every node has one
        at C{api}), its policy (and, if given, its limits) is replaced
        instead; channels it already accepted stay.
        """
        from .secure.channel import SecureChannelListener, TrustPolicy

        existing = self.secure_listeners.get(Address.parse(address).value)
        if existing is not None:
            existing.trust = TrustPolicy(authorized)
            if limits is not None:
                existing.limits = limits
            return existing
        listener = SecureChannelListener(
            self.identity, TrustPolicy(authorized), limits=limits if limits is not None else self.handshake_limits
        )
        self.start_worker(address, listener)
        self.secure_listeners[Address.parse(address).value] = listener
        return listener

    def delete_secure_channel_listener(self, address: str) -> None:
        """
        Stop the secure channel listener at C{address}; the channels it
        accepted are closed with it.

        @raise KeyError: if there is none.
        """
        address = Address.parse(address).value
        self.secure_listeners.pop(address)
        self.stop_worker(address)

    def create_secure_channel(self, route, authorized=None, timeout: float = 10.0) -> Deferred:
        """
        Create a secure channel to the listener at the end of C{route}
        (e.g. C{/node/n2/service/api}).  Fires with the encryptor
        L{Address} to route through once both identities are verified;
        fails with L{SecureChannelError} when the peer is refused, or
        L{RequestTimeout}.
        """
        from .secure.channel import ChannelEnd, TrustPolicy

        async def go():
            resolved = self.check_route(await self.resolve(route))
            end = ChannelEnd(self, self.identity, TrustPolicy(authorized), initiator=True, owner=self)
            end.route_text = str(route)
            self.secure_channels[end.encryptor.value] = end
            try:
                await end.start_initiator(resolved, timeout)
            except BaseException:
                # Refused, timed out, or cancelled by the caller: nothing
                # of the half-made channel stays (close is idempotent).
                end.close()
                raise
            return end.encryptor

        return Deferred.fromCoroutine(go())

    def delete_secure_channel(self, encryptor) -> None:
        """
        Close the channel whose encryptor is C{encryptor}.

        @raise KeyError: if there is none.
        """
        self.secure_channels[Address.parse(encryptor).value].close()

    def _ended(self, end) -> None:
        self.secure_channels.pop(end.encryptor.value, None)

    def _secure_hop(self, prefix, hop, position) -> Deferred:
        """
        C{/secure/NAME}: a secure channel (reused while it is up) to the
        listener NAME at the route so far; the route continues through its
        encryptor.
        """
        name = hop.name
        key = f"{prefix} => {name}"
        for end in self.secure_channels.values():
            if end.status == UP and getattr(end, "_hop_key", None) == key:
                return succeed(Route([end.encryptor]))

        def start():
            def made(encryptor):
                self.secure_channels[encryptor.value]._hop_key = key
                return Route([encryptor])

            return self.create_secure_channel(prefix + [name]).addCallback(made)

        return self._pending_hops.wait(key, start)

    async def _node_hop(self, prefix, hop, position) -> Route:
        """
        C{/node/NAME}: a connection to that node's listener (found with
        L{node_resolver}); C{/node/<this node's name>} is this node.
        """
        if position != 0:
            raise RouteUnreachable(f"/node/{hop.name} can only start a route")
        if hop.name == self.name:
            return prefix
        if self.node_resolver is None:
            raise RouteUnreachable(f"no node named {hop.name!r}")
        target = await maybeDeferred(self.node_resolver, hop.name)
        link = await self.connect_hop(Address(TCP, target))
        return Route([link.address])

    # --- relays ---------------------------------------------------------------

    def create_relay(self, at, name: str = "default", service=None, refresh: float = 5.0, timeout: float = 5.0) -> Deferred:
        """
        Register a relay named C{name} at the node C{at} (a route or
        MultiAddr text such as C{/ip4/127.0.0.1/tcp/7000} or C{/node/n2}).
        The relay service is C{service}; by default
        C{static_forwarding_service} at a project (C{at} starting with
        C{/project/}, as Ockam 0.83 does), else C{forwarding_service}.

        Fires with the L{Relay} once the relay node has answered; the
        relay then stays up on its own (see L{Relay}).  Fails with
        L{OckamError} (unreachable, timed out, or the name is taken here).
        """
        if name in self.relays:
            return _fail(AddressInUse(f"relay {name!r} already exists on node {self.name}"))
        relay = Relay(self, at, name=name, service=_relay_service(at, service), refresh=refresh, timeout=timeout)
        self.relays[name] = relay

        def failed(f):
            if self.relays.get(name) is relay:
                del self.relays[name]
            return f

        return relay.start().addErrback(failed)

    def add_relay(self, at, name: str = "default", service=None, refresh: float = 5.0, timeout: float = 5.0) -> Relay:
        """
        Like L{create_relay}, without waiting: the relay keeps trying to
        register (with backoff) until the relay node answers, and stays up
        after.  Returns the L{Relay} at once; watch C{relay.status}.

        @raise AddressInUse: if this node has a relay of that name.
        """
        if name in self.relays:
            raise AddressInUse(f"relay {name!r} already exists on node {self.name}")
        relay = Relay(self, at, name=name, service=_relay_service(at, service), refresh=refresh, timeout=timeout)
        self.relays[name] = relay
        return relay.start_in_background()

    def delete_relay(self, name: str) -> None:
        """
        Stop the relay named C{name}.

        @raise KeyError: if there is none.
        """
        relay = self.relays[name]
        relay.stop()

    # --- outlets ------------------------------------------------------------------

    def create_outlet(
        self,
        address: str = "outlet",
        target: str = "127.0.0.1:9000",
        connect_timeout: float = 10.0,
        authorized=None,
        flow_control: bool = True,
        **liveness,
    ) -> Deferred:
        """
        Start a TCP outlet worker at C{address} that tunnels to C{target}
        (C{host:port}).  With C{authorized} (identifiers), only a Ping that
        came through a secure channel from one of them is accepted.
        C{flow_control=False} turns off per-stream flow control (it is
        used only with ockamtw inlets anyway).  C{heartbeat} and
        C{idle_timeout} (seconds) say when a stream whose other side is gone
        ends (L{ockamtw.portal.PortalWorker.heartbeat}).  Fires with the
        L{Outlet}.
        """

        def make():
            policy = self.membership.policy("tcp-outlet") if authorized is None else None
            outlet = Outlet(target, connect_timeout, authorized=authorized, flow_control=flow_control, policy=policy,
                            **liveness)
            self.start_worker(Address.parse(address), outlet)
            self.outlets[outlet.address.value] = outlet
            return outlet

        return maybeDeferred(make)

    def delete_outlet(self, address: str) -> Deferred:
        """
        Close the outlet at C{address} and its portals.
        """
        outlet = self.outlets.pop(Address.parse(address).value)
        return outlet.close()

    # --- inlets --------------------------------------------------------------------

    def create_inlet(
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
        Listen at C{listen} (C{host:port}, a port, or an endpoint string)
        and tunnel every client along C{route} (MultiAddr or route text
        ending at an outlet).  With C{authorized} (identifiers), only a Pong
        that came through a secure channel from one of them opens the
        tunnel.  C{flow_control=False} turns off per-stream flow control
        (used only with ockamtw outlets anyway).  C{heartbeat} and
        C{idle_timeout} as for L{create_outlet}.  Fires with the L{Inlet}
        once listening.
        """

        def make():
            inlet = Inlet(
                self,
                listen,
                route,
                ping_timeout=ping_timeout,
                ping_interval=ping_interval,
                authorized=authorized,
                flow_control=flow_control,
                policy=self.membership.policy("tcp-inlet") if authorized is None else None,
                **liveness,
            )
            return inlet.start()

        def started(inlet):
            self.inlets[inlet.socket_address] = inlet
            return inlet

        return maybeDeferred(make).addCallback(started)

    def delete_inlet(self, listen: str) -> Deferred:
        """
        Close the inlet listening at C{listen} (as in C{inlet.socket_address}).
        """
        inlet = self.inlets.pop(listen)
        return inlet.close()

    # --- lifecycle ----------------------------------------------------------------------

    def stopService(self) -> Deferred:
        """
        Stop relays, inlets and outlets, then the core (connections,
        listeners, workers).  Fires when all of it is closed.
        """
        for relay in list(self.relays.values()):
            relay.stop()
        for end in list(self.secure_channels.values()):
            end.close()
        ds = [i.close() for i in self.inlets.values()] + [o.close() for o in self.outlets.values()]
        d = gather(ds)
        d.addCallback(lambda _: BaseNode.stopService(self))
        return d


def _relay_service(at, service):
    """
    The relay service to register with: C{service}, else Ockam 0.83's
    choice for C{at} (static relays at a project).
    """
    if service is not None:
        return service
    return STATIC_FORWARDING_SERVICE if str(at).startswith("/project/") else FORWARDING_SERVICE


def _fail(error: OckamError) -> Deferred:
    from twisted.internet.defer import fail

    return fail(error)
