"""
ockamtw: Ockam's routed messaging, relays and portals on Twisted.

The names below are imported when first used (PEP 562), so that a command
line importing C{ockamtw.cli} starts without loading the node, and a Ctrl-C
while it loads ends the command quietly.
"""

from importlib import import_module

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS = {
    "Node": ".api",
    "BaseNode": ".node",
    "Worker": ".node",
    "FunctionWorker": ".node",
    "IWorker": ".interfaces",
    "Address": ".routing",
    "Route": ".routing",
    "MultiAddr": ".routing",
    "TransportMessage": ".wire",
    "PortalMessage": ".wire",
    "encode_string": ".wire",
    "decode_string": ".wire",
    "OckamError": ".errors",
    "WireError": ".errors",
    "MessageTooLarge": ".errors",
    "AddressInUse": ".errors",
    "RequestTimeout": ".errors",
    "RelayRefused": ".errors",
    "RouteUnreachable": ".errors",
    "TransportError": ".errors",
    "OckamClientEndpoint": ".portal.endpoints",
    "OckamServerEndpoint": ".portal.endpoints",
    "OckamAddress": ".portal.pipe",
    "register_node": ".endpoint_parsers",
    "embedded_node": ".endpoint_parsers",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
