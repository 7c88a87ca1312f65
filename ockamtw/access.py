"""
Who may send to a worker: access policies, checked by the node before any
worker sees a message (L{ockamtw.node.BaseNode.deliver}), so that no feature
has to remember to check.

The node knows where each message comes from, its I{origin}
(C{message.origin}):

  - C{None}: this node itself: an API or command-line call, or a worker of
    this node sending a message of its own (an answer, a Ping, a Pong);
  - a transport connection (L{ockamtw.interfaces.IOrigin} with C{identity}
    C{None}): a remote peer that has proved nothing;
  - a secure channel end (C{identity} = the peer's identifier): an
    authenticated remote peer;
  - L{Relayed}: a message a relay's forwarder passes on for the party that
    registered the relay.

Workers that pass a message on (C{hop}, forwarders, relay endpoints) keep
its origin (L{ockamtw.node.BaseNode.forward}); a worker that answers or
sends a message of its own sends it from this node.  So a remote peer
cannot make a node speak for itself by routing through its workers.

Every worker has a policy (its C{access} attribute, or the one given to
C{start_worker}); a worker that states none is L{LOCAL_ONLY}.
"""

from __future__ import annotations

from typing import Iterable, Optional

from zope.interface import implementer

from .interfaces import IAccessPolicy


def origin_identity(message) -> Optional[str]:
    """
    The identifier of the authenticated peer a message comes from, if any.
    """
    origin = message.origin
    return None if origin is None else getattr(origin, "identity", None)


def describe_origin(origin) -> str:
    """
    A short text naming an origin, for logs and errors.
    """
    if origin is None:
        return "this node"
    identity = getattr(origin, "identity", None)
    if identity:
        return f"secure channel peer {identity}"
    if isinstance(origin, Relayed):
        return f"relay for {describe_origin(origin.owner)}"
    peer = getattr(origin, "socket_address", None)
    return f"a peer without a secure channel at {peer}" if peer else "a peer without a secure channel"


class Relayed:
    """
    The origin of a message that a relay's forwarder passes on: it speaks
    for C{owner}, the origin of the relay's registration (the party the
    messages are relayed to), not for whoever sent to the forwarder.
    """

    __slots__ = ("owner",)
    identity = None

    def __init__(self, owner) -> None:
        self.owner = owner

    def __repr__(self) -> str:
        return f"Relayed({self.owner!r})"


@implementer(IAccessPolicy)
class _Anyone:
    def allows(self, message) -> bool:
        return True

    def __str__(self) -> str:
        return "anyone"


@implementer(IAccessPolicy)
class _LocalOnly:
    def allows(self, message) -> bool:
        return message.origin is None

    def __str__(self) -> str:
        return "this node only"


@implementer(IAccessPolicy)
class _Nobody:
    def allows(self, message) -> bool:
        return False

    def __str__(self) -> str:
        return "nobody"


@implementer(IAccessPolicy)
class _ChannelPeers:
    def allows(self, message) -> bool:
        origin = message.origin
        return origin is not None and getattr(origin, "identity", None) is not None

    def __str__(self) -> str:
        return "secure channel peers"


#: Every sender, local or remote.
ANYONE = _Anyone()
#: Any peer that came through a secure channel (whoever it is).
CHANNEL_PEERS = _ChannelPeers()
#: Messages that start on this node (the default).
LOCAL_ONLY = _LocalOnly()
#: No one (an address that exists only to appear in routes).
NOBODY = _Nobody()


@implementer(IAccessPolicy)
class Identities:
    """
    Messages from a secure channel whose peer is one of C{identifiers}
    (and, with C{local}, from this node too).
    """

    def __init__(self, identifiers: Iterable[str], local: bool = False) -> None:
        self.identifiers = frozenset(identifiers)
        self.local = local

    def allows(self, message) -> bool:
        origin = message.origin
        if origin is None:
            return self.local
        return getattr(origin, "identity", None) in self.identifiers

    def __str__(self) -> str:
        return "identities " + ", ".join(sorted(self.identifiers)) + (" and this node" if self.local else "")


@implementer(IAccessPolicy)
class FromOrigin:
    """
    Messages from one origin only: the same connection or the same secure
    channel (C{None}: this node).  A portal accepts only what comes the way
    its stream was opened.
    """

    def __init__(self, origin) -> None:
        self.origin = origin

    def allows(self, message) -> bool:
        return message.origin is self.origin

    def __str__(self) -> str:
        return f"only {describe_origin(self.origin)}"


@implementer(IAccessPolicy)
class RelayedFor:
    """
    Messages from this node, or passed on by a relay registered by
    C{owner} (so: meant for C{owner}).
    """

    def __init__(self, owner) -> None:
        self.owner = owner

    def allows(self, message) -> bool:
        origin = message.origin
        return origin is None or (origin.__class__ is Relayed and origin.owner is self.owner)

    def __str__(self) -> str:
        return f"this node, and relays registered by {describe_origin(self.owner)}"


@implementer(IAccessPolicy)
class Either:
    """
    Messages that either of two policies allows.
    """

    def __init__(self, first, second) -> None:
        self.first = first
        self.second = second

    def allows(self, message) -> bool:
        return self.first.allows(message) or self.second.allows(message)

    def __str__(self) -> str:
        return f"{self.first}, or {self.second}"
