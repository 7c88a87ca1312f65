"""
ockamtw: Ockam's routed messaging, relays and portals on Twisted.
"""

from .errors import (
    AddressInUse,
    MessageTooLarge,
    OckamError,
    RelayRefused,
    RequestTimeout,
    RouteUnreachable,
    TransportError,
    WireError,
)
from .routing import Address, MultiAddr, Route
from .node import BaseNode, FunctionWorker, Worker
from .api import Node
from .interfaces import IWorker
from .wire import PortalMessage, TransportMessage, decode_string, encode_string

__version__ = "0.1.0"

__all__ = [
    "Node",
    "BaseNode",
    "Worker",
    "FunctionWorker",
    "IWorker",
    "Address",
    "Route",
    "MultiAddr",
    "TransportMessage",
    "PortalMessage",
    "encode_string",
    "decode_string",
    "OckamError",
    "WireError",
    "MessageTooLarge",
    "AddressInUse",
    "RequestTimeout",
    "RelayRefused",
    "RouteUnreachable",
    "TransportError",
]
