"""
The public node: the core of L{ockamtw.node} with the default services,
the relay services, and the features of L{FEATURES} (kept TCP connections,
projects, an authority, services started at other addresses, outlets,
inlets, secure channels, relays), each a
child service of the node (L{ockamtw.feature}).  Its methods are the
embedding API; each hands the call to its feature.
"""

from typing import Dict

from twisted.internet.defer import Deferred, maybeDeferred

from .errors import NoSuchAddress
from .node import BaseNode
from .portal.inlet import Inlet, Inlets
from .portal.outlet import Outlet, Outlets
from .project.authority import AuthorityFeature
from .project.membership import CredentialsService, Membership
from .relay import Relay, Relays, start_relay_services
from .routing import TCP, Address, Route
from .secure.channels import SecureChannels
from .services import StartedServices, start_default_services
from .transport.tcp import TcpTransport

#: The features of a full node, in the order they are restored and started
#: (stopped in the reverse order): a project's membership before the inlets
#: and outlets whose policies it gives.  A new feature is one module and
#: one entry here (see L{ockamtw.feature}).
FEATURES = (TcpTransport, Membership, AuthorityFeature, StartedServices, Outlets, Inlets, SecureChannels, Relays)


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

    #: Whether this node's identity may be other nodes' too (a named
    #: identity of the command line): then a peer presenting it is
    #: accepted (it is one of those nodes), where a node's own identity
    #: coming back from a peer is refused.
    shared_identity = False

    def __init__(self, reactor=None, name=None, services=True, identity=None, handshake_limits=None):
        BaseNode.__init__(self, reactor, name)
        self._identity = identity
        self.handshake_limits = handshake_limits
        #: a callable C{f(name)} giving the C{"host:port"} (or a Deferred of
        #: it) of another node, for C{/node/NAME} in a MultiAddr; the command
        #: line sets it.  C{/node/<own name>} is this node.
        self.node_resolver = None
        #: a callable C{f(name)} giving the L{LocalIdentity} named C{name} of
        #: this node's home (the command line's C{ockam identity create}),
        #: for listeners that present one; the control API sets it.
        self.named_identity = None
        self.register_resolver("node", self._node_hop)
        for feature in FEATURES:
            self.add_feature(feature(self))
        #: L{TcpTransport}: C{1#host:port} hops, listeners and connections.
        self.tcp: TcpTransport = self.features["tcp"]
        self.register_transport(self.tcp)
        #: the projects this node belongs to (L{ockamtw.project.membership})
        self.membership: Membership = self.features["project"]
        # A channel opened through a channel to a project exchanges
        # credentials first (the project feature wraps /secure).
        self.register_resolver("secure", self.membership.secure_hop(self.features["secure"].resolve))
        if services:
            start_default_services(self)
            start_relay_services(self)
            self.create_secure_channel_listener("api")
            self.start_worker("credentials", CredentialsService(self.membership))

    # --- the features' objects --------------------------------------------------------------

    @property
    def relays(self) -> Dict[str, Relay]:
        """
        This node's relays at other nodes, by name.
        """
        return self.features["relays"].relays

    @property
    def inlets(self) -> Dict[str, Inlet]:
        """
        This node's inlets, by the address they listen on.
        """
        return self.features["inlets"].inlets

    @property
    def outlets(self) -> Dict[str, Outlet]:
        """
        This node's outlets, by address.
        """
        return self.features["outlets"].outlets

    @property
    def secure_channels(self) -> Dict[str, object]:
        """
        The secure channels this node initiated (L{ChannelEnd}), by
        encryptor (hex).
        """
        return self.features["secure"].channels

    @property
    def secure_listeners(self) -> Dict[str, object]:
        """
        This node's secure channel listeners, by address.
        """
        return self.features["secure"].listeners

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

    def create_secure_channel_listener(self, address: str = "api", authorized=None, limits=None, identity=None):
        """
        Start a secure channel listener at C{address}, accepting the
        identifiers in C{authorized} (everyone when C{None}), under
        C{limits} (a L{HandshakeLimits}; the node's C{handshake_limits}
        when C{None}), presenting C{identity} (a L{LocalIdentity}; the
        node's own when C{None}).  If a listener is already there (every
        node has one at C{api}), its policy (and, if given, its limits) is
        replaced instead; channels it already accepted stay.
        """
        return self.features["secure"].create_listener(address, authorized, limits, identity)

    def delete_secure_channel_listener(self, address: str) -> None:
        """
        Stop the secure channel listener at C{address}; the channels it
        accepted are closed with it.

        @raise KeyError: if there is none.
        """
        self.features["secure"].delete_listener(address)

    def create_secure_channel(self, route, authorized=None, timeout: float = 10.0) -> Deferred:
        """
        Create a secure channel to the listener at the end of C{route}
        (e.g. C{/node/n2/service/api}).  Fires with the encryptor
        L{Address} to route through once both identities are verified;
        fails with L{SecureChannelError} when the peer is refused, or
        L{RequestTimeout}.
        """
        return self.features["secure"].create(route, authorized, timeout)

    def delete_secure_channel(self, encryptor) -> None:
        """
        Close the channel whose encryptor is C{encryptor}.

        @raise KeyError: if there is none.
        """
        self.features["secure"].delete(encryptor)

    async def _node_hop(self, prefix, hop, position) -> Route:
        """
        C{/node/NAME}: a connection to that node's listener (found with
        L{node_resolver}); C{/node/<this node's name>} is this node.
        """
        if position != 0:
            raise NoSuchAddress(f"/node/{hop.name} can only start a route")
        if hop.name == self.name:
            return prefix
        if self.node_resolver is None:
            raise NoSuchAddress(f"no node named {hop.name!r}")
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
        return self.features["relays"].create(at, name, service, refresh, timeout)

    def add_relay(self, at, name: str = "default", service=None, refresh: float = 5.0, timeout: float = 5.0) -> Relay:
        """
        Like L{create_relay}, without waiting: the relay keeps trying to
        register (with backoff) until the relay node answers, and stays up
        after.  Returns the L{Relay} at once; watch C{relay.status}.

        @raise AddressInUse: if this node has a relay of that name.
        """
        return self.features["relays"].add(at, name, service, refresh, timeout)

    def delete_relay(self, name: str) -> None:
        """
        Stop the relay named C{name}.

        @raise KeyError: if there is none.
        """
        self.features["relays"].delete(name)

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
        return self.features["outlets"].create(address, target, connect_timeout, authorized, flow_control, **liveness)

    def delete_outlet(self, address: str) -> Deferred:
        """
        Close the outlet at C{address} and its portals.
        """
        return self.features["outlets"].delete(address)

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
        return self.features["inlets"].create(
            listen, route, ping_timeout, ping_interval, authorized, flow_control, **liveness
        )

    def delete_inlet(self, listen: str) -> Deferred:
        """
        Close the inlet listening at C{listen} (as in C{inlet.socket_address}).
        """
        return self.features["inlets"].delete(listen)
