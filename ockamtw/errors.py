"""
Exceptions raised by ockamtw.

Every error a caller can provoke with bad input derives from L{OckamError}.
"""


class OckamError(Exception):
    """
    Base class of every ockamtw error.
    """


class WireError(OckamError, ValueError):
    """
    Bytes or text that do not encode a valid Ockam value: a truncated or
    malformed frame, message, route or address, or unparseable route text.

    This is the only exception the codec raises for bad input.
    """


class MessageTooLarge(OckamError, ValueError):
    """
    An encoded message would not fit in one TCP frame (65535 bytes).
    """


class AddressInUse(OckamError, KeyError):
    """
    A worker is already registered at that address.
    """

    def __str__(self) -> str:
        return Exception.__str__(self)


class RequestTimeout(OckamError, TimeoutError):
    """
    No reply arrived in time for L{ockamtw.node.BaseNode.request}.
    """


class RouteUnreachable(OckamError):
    """
    A route (or its first hop) could not be resolved or connected to.
    """


class NoSuchAddress(RouteUnreachable):
    """
    A route names something that does not exist (a worker of this node, a
    node, a project): unlike a peer that cannot be reached now, waiting
    does not help.
    """


class TransportError(OckamError):
    """
    A TCP listener or connection could not be set up.
    """


class RelayRefused(OckamError):
    """
    A relay node refused a registration (the name is taken, too long, or
    its owner holds too many); an ockamtw relay node says why.
    """
