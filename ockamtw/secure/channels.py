"""
The secure channels of a node, as a feature (L{ockamtw.feature}): the
channels it initiates, its listeners, the C{/secure/NAME} route resolver,
C{state.json}'s C{secure_listeners} and the control API's
C{/secure-channels} and C{/secure-channel-listeners}.  The channel ends and
listeners themselves are in L{ockamtw.secure.channel}.
"""

from __future__ import annotations

from typing import Dict

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from ..deferred import InFlight
from ..feature import ControlError, Feature, authorized_of, listed, service_name, worker_key
from ..routing import Address, Route, parse_route_text
from ..status import CLOSED, UP
from .channel import ChannelEnd, SecureChannelListener, TrustPolicy

log = Logger(namespace="ockamtw.secure")

#: The secure channel listener every node has.
API_LISTENER = "api"


class SecureChannels(Feature):
    """
    The secure channels this node initiated (by encryptor) and its
    listeners (by address).  Stopping it closes the channels it initiated;
    its listeners' channels end with the node's workers.
    """

    name = "secure"
    state_keys = ("secure_listeners",)
    routes = {
        ("GET", "secure-channels", False): "channels_route",
        ("POST", "secure-channels", False): "channel_create_route",
        ("GET", "secure-channels", True): "channel_show_route",
        ("DELETE", "secure-channels", True): "channel_delete_route",
        ("GET", "secure-channel-listeners", False): "listeners_route",
        ("POST", "secure-channel-listeners", False): "listener_create_route",
        ("GET", "secure-channel-listeners", True): "listener_show_route",
        ("DELETE", "secure-channel-listeners", True): "listener_delete_route",
    }

    def __init__(self, node) -> None:
        Feature.__init__(self, node)
        #: encryptor hex -> L{ChannelEnd} of the channels this node initiated
        self.channels: Dict[str, ChannelEnd] = {}
        #: address -> L{SecureChannelListener}
        self.listeners: Dict[str, SecureChannelListener] = {}
        #: listener address -> the name of the identity it presents (one of
        #: the command line's, not the node's own)
        self.listener_identities: Dict[str, str] = {}
        self._pending_hops = InFlight()
        #: the route so far and the listener name of a /secure hop -> its channel
        self._hops: Dict[str, ChannelEnd] = {}
        node.register_resolver("secure", self.resolve)

    # --- listeners --------------------------------------------------------------------------

    def create_listener(self, address: str = API_LISTENER, authorized=None, limits=None,
                        identity=None) -> SecureChannelListener:
        """
        See L{ockamtw.api.Node.create_secure_channel_listener}.
        """
        node = self.node
        existing = self.listeners.get(Address.parse(address).value)
        if existing is not None:
            existing.trust = TrustPolicy(authorized, allow_self=existing.trust.allow_self)
            if limits is not None:
                existing.limits = limits
            return existing
        listener = SecureChannelListener(
            identity if identity is not None else node.identity,
            TrustPolicy(authorized, allow_self=node.shared_identity),
            limits=limits if limits is not None else node.handshake_limits,
        )
        node.start_worker(address, listener)
        self.listeners[Address.parse(address).value] = listener
        return listener

    def delete_listener(self, address: str) -> None:
        """
        See L{ockamtw.api.Node.delete_secure_channel_listener}.
        """
        address = Address.parse(address).value
        self.listeners.pop(address)
        self.listener_identities.pop(address, None)
        self.node.stop_worker(address)

    def listener_with_identity(self, address: str, authorized, name: str) -> SecureChannelListener:
        """
        A new secure channel listener at C{address} presenting the named
        identity C{name} of this node's home (the node's C{named_identity})
        instead of the node's own.

        @raise ControlError: 404 when there is no such identity, 400 for one
            that cannot be used.
        """
        named = getattr(self.node, "named_identity", None)
        if named is None:
            raise ControlError(404, f"no identity named {name!r} on node {self.node.name}")
        listener = self.create_listener(address, authorized, identity=named(name))
        listener.trust.allow_self = True  # a named identity may be other nodes' too
        self.listener_identities[Address.parse(address).value] = name
        return listener

    # --- channels ------------------------------------------------------------------------------

    def create(self, route, authorized=None, timeout: float = 10.0) -> Deferred:
        """
        See L{ockamtw.api.Node.create_secure_channel}.
        """
        node = self.node

        async def go():
            resolved = node.check_route(await node.resolve(route))
            trust = TrustPolicy(authorized, allow_self=node.shared_identity)
            end = ChannelEnd(node, node.identity, trust, initiator=True, owner=self)
            end.route_text = str(route)
            self.channels[end.encryptor.value] = end
            try:
                await end.start_initiator(resolved, timeout)
            except BaseException:
                # Refused, timed out, or cancelled by the caller: nothing
                # of the half-made channel stays (close is idempotent).
                end.close()
                raise
            return end.encryptor

        return Deferred.fromCoroutine(go())

    def delete(self, encryptor) -> None:
        """
        See L{ockamtw.api.Node.delete_secure_channel}.
        """
        self.channels[Address.parse(encryptor).value].close()

    def _ended(self, end) -> None:
        self.channels.pop(end.encryptor.value, None)
        for key in [k for k, e in self._hops.items() if e is end]:
            del self._hops[key]

    def resolve(self, prefix, hop, position) -> Deferred:
        """
        C{/secure/NAME}: a secure channel (reused while it is up) to the
        listener NAME at the route so far; the route continues through its
        encryptor.
        """
        name = hop.name
        key = f"{prefix} => {name}"
        end = self._hops.get(key)
        if end is not None and end.status == UP:
            return succeed(Route([end.encryptor]))

        def start():
            def made(encryptor):
                self._hops[key] = self.channels[encryptor.value]
                return Route([encryptor])

            return self.create(prefix + [name]).addCallback(made)

        return self._pending_hops.wait(key, start)

    def ends(self) -> list:
        """
        Every secure channel end on the node: those it initiated, then
        those its listeners accepted (handshakes in progress included).
        """
        ends = list(self.channels.values())
        for listener in self.listeners.values():
            ends += list(listener.channels)
        return ends

    def stopService(self):
        Feature.stopService(self)
        for end in list(self.channels.values()):
            end.close()

    # --- state ---------------------------------------------------------------------------

    def save(self) -> dict:
        return {
            "secure_listeners": [
                dict({"address": a, "authorized": listed(l.trust.authorized)},
                     **({"identity": self.listener_identities[a]} if a in self.listener_identities else {}))
                for a, l in self.listeners.items()
                if a != API_LISTENER or l.trust.authorized is not None
            ]
        }

    def restore(self, state: dict) -> None:
        """
        The listeners (those presenting a named identity too); a node with
        a named identity (one other nodes may have too, C{identity})
        accepts secure channels with peers presenting it.
        """
        if state.get("identity"):
            self.node.shared_identity = True
            for listener in self.listeners.values():
                listener.trust.allow_self = True
        for item in state.get("secure_listeners", []):
            name = item.get("identity")
            try:
                if name and item["address"] not in self.listeners:
                    self.listener_with_identity(item["address"], item.get("authorized"), name)
                else:
                    self.create_listener(item["address"], item.get("authorized"))
            except Exception as e:
                log.error("secure channel listener {a} not restored: {e}", a=item["address"], e=getattr(e, "message", str(e)))

    # --- control routes: channels ---------------------------------------------------------------

    def channels_route(self, call) -> list:
        """
        The established channels (a handshake in progress, or one the peer
        refused that has not timed out yet, is counted in the node status's
        C{handshakes} instead).
        """
        return [e.to_dict() for e in self.ends() if e.status == UP]

    def _channel(self, key: str) -> ChannelEnd:
        key = worker_key(key)
        for end in self.ends():
            if key in (end.encryptor.value, end.decryptor.value):
                return end
        raise ControlError(404, f"no secure channel {key!r} on node {self.node.name}")

    def channel_show_route(self, call) -> dict:
        return self._channel(call.key).to_dict()

    async def channel_create_route(self, call) -> dict:
        to = call.need("to")
        parse_route_text(to)
        encryptor = await self.create(to, authorized=authorized_of(call.body), timeout=float(call.body.get("timeout", 10)))
        return self.channels[encryptor.value].to_dict()

    def channel_delete_route(self, call) -> dict:
        end = self._channel(call.key)
        info = end.to_dict()
        end.close()
        info["status"] = CLOSED
        return info

    # --- control routes: listeners ---------------------------------------------------------------

    def listeners_route(self, call) -> list:
        return [
            {"address": a, "authorized": listed(l.trust.authorized), "channels": len(l.channels), "handshakes": l.stats(),
             "identity": self.listener_identities.get(a), "identifier": l.identity.identifier}
            for a, l in self.listeners.items()
        ]

    def _listener_info(self, address: str) -> dict:
        return [l for l in self.listeners_route(None) if l["address"] == address][0]

    def listener_show_route(self, call) -> dict:
        address = service_name(call.key)
        if address not in self.listeners:
            raise ControlError(404, f"no secure channel listener {address!r} on node {self.node.name}")
        return self._listener_info(address)

    async def listener_create_route(self, call) -> dict:
        """
        A new listener; an address already taken is refused (as for an
        outlet), except C{api}, the node's own listener, whose policy is
        replaced by the one given (that is how it is restricted).
        """
        address = service_name(call.need("address"))
        authorized = authorized_of(call.body)
        existing = self.listeners.get(address)
        if self.node.worker_at(address) is not None and address != API_LISTENER:
            raise ControlError(409, f"address {address!r} is already taken on node {self.node.name}")
        identity = call.body.get("identity")
        if identity is not None:
            if existing is not None:
                raise ControlError(409, f"the secure channel listener {address!r} of node {self.node.name} "
                                        "keeps the node's identity")
            self.listener_with_identity(address, authorized, identity)
            await call.saved(undo=lambda: self._drop_listener(address))
        elif existing is not None:
            before = existing.trust.authorized
            self.create_listener(address, authorized)
            await call.saved(undo=lambda: self.create_listener(address, listed(before)))
        else:
            self.create_listener(address, authorized)
            await call.saved(undo=lambda: self._drop_listener(address))
        return self._listener_info(address)

    def _drop_listener(self, address: str) -> None:
        self.listener_identities.pop(address, None)
        if address in self.listeners:
            self.delete_listener(address)  # closes the channels it accepted

    async def listener_delete_route(self, call) -> dict:
        address = service_name(call.key)
        if address not in self.listeners:
            raise ControlError(404, f"no secure channel listener {address!r} on node {self.node.name}")
        if address == API_LISTENER:
            raise ControlError(409, f"the node's own secure channel listener {address!r} cannot be deleted")
        info = self._listener_info(address)
        self._drop_listener(address)
        await call.saved()
        return info
