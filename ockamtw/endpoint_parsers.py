"""
C{ockam:} endpoint strings, for any Twisted program (the dropin
C{twisted/plugins/ockam_endpoints.py} names these parsers):

  - C{clientFromString(reactor, "ockam:route=/node/n2/service/forward_to_n3/service/outlet")}:
    an L{ockamtw.portal.endpoints.OckamClientEndpoint}; each connection is a
    portal stream to the outlet at the end of the route (C{ockam:ROUTE}
    says the same);
  - C{serverFromString(reactor, "ockam:relay=n3:at=/ip4/127.0.0.1/tcp/7000")}:
    an L{ockamtw.portal.endpoints.OckamServerEndpoint}; the factory serves
    every stream opened to the outlet C{service} (default C{outlet}),
    reached through the relay (so C{twistd web --listen ockam:...} serves a
    site through a relay, with no local port).

Both take C{identity=NAME} (an identity of C{$OCKAM_HOME}, as C{ockam
identity create NAME} makes it), C{node=NAME} (a node of this program, see
L{register_node}), C{authorized=ID[,ID...]} and C{timeout=SECONDS}; routes
may start with C{/node/NAME} (a background node of C{$OCKAM_HOME}, as for
the C{ockam} command) or C{/project/NAME} (a project this home is enrolled
in).

Whose node carries the streams: the node given with C{node=}, else this
program's I{embedded node} (L{embedded_node}): one per reactor and
identity, made at first use, with the identity named by C{identity=} (by
default the one C{ockam enroll} enrolled in this home, else a new one kept
in memory) and every project this home knows; it stops before the reactor
does.

This module is imported whenever any program on this Python parses an
endpoint string: it imports nothing of ockamtw until a parser is used.
"""

from __future__ import annotations

import os
from typing import Dict, Optional

from twisted.internet.interfaces import IStreamClientEndpointStringParserWithReactor, IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer

#: Names of the nodes registered with L{register_node}.
_registered: Dict[str, object] = {}
#: id(reactor) -> (reactor, {identity name or None: node}, {identity: trigger id})
_embedded: Dict[int, tuple] = {}

_CLIENT_KEYS = ("route", "identity", "node", "authorized", "timeout")
_SERVER_KEYS = ("relay", "at", "service", "identity", "node", "authorized", "timeout")


def register_node(node) -> None:
    """
    Let C{ockam:} endpoint strings with C{node=NAME} (C{NAME} is
    C{node.name}) use C{node}, a node of this program.
    """
    _registered[node.name] = node


def unregister_node(node) -> None:
    """
    Undo L{register_node}.
    """
    if _registered.get(node.name) is node:
        del _registered[node.name]


def registered_node(name: str):
    """
    The node registered as C{name}.

    @raise OckamError: when there is none, or it is not running.
    """
    from .errors import OckamError

    node = _registered.get(name)
    if node is None:
        raise OckamError(f"no node named {name!r} in this program (register it with ockamtw.register_node)")
    if not node.running:
        raise OckamError(f"node {name} is not running")
    return node


def embedded_node(reactor=None, identity: Optional[str] = None):
    """
    This program's embedded node for C{identity} (see the module's
    docstring), started; made at first use, and stopped before the reactor
    shuts down (or by L{stop_embedded_nodes}).

    @raise OckamError: when the identity cannot be used.
    """
    if reactor is None:
        from twisted.internet import reactor
    _, nodes, triggers = _embedded.setdefault(id(reactor), (reactor, {}, {}))
    node = nodes.get(identity)
    if node is not None and node.running:
        return node
    node = _make_node(reactor, identity)
    node.startService()
    nodes[identity] = node
    triggers[identity] = reactor.addSystemEventTrigger("before", "shutdown", _stop_one, reactor, identity)
    return node


def _stop_one(reactor, identity):
    entry = _embedded.get(id(reactor))
    if entry is None:
        return None
    node = entry[1].pop(identity, None)
    entry[2].pop(identity, None)
    if not entry[1]:
        _embedded.pop(id(reactor), None)
    return node.stopService() if node is not None else None


def stop_embedded_nodes(reactor=None):
    """
    Stop this program's embedded nodes (on C{reactor}); fires when they
    are stopped.
    """
    from .deferred import gather

    if reactor is None:
        from twisted.internet import reactor
    entry = _embedded.get(id(reactor))
    if entry is None:
        return gather([])
    ds = []
    for identity, trigger in list(entry[2].items()):
        try:
            reactor.removeSystemEventTrigger(trigger)
        except (ValueError, KeyError, TypeError):
            pass
        ds.append(_stop_one(reactor, identity))
    return gather([d for d in ds if d is not None])


def _make_node(reactor, identity: Optional[str]):
    """
    A new embedded node: C{identity} (or the home's enrolled identity),
    the home's projects, C{/node/NAME} resolved through the home.
    """
    from twisted.logger import Logger

    from .api import Node
    from .control import state as st
    from .errors import OckamError, RouteUnreachable
    from .secure.errors import IdentityError
    from .secure.identity import LocalIdentity

    log = Logger(namespace="ockamtw.endpoints")
    home = st.ockam_home()
    try:
        from .cli import home as h

        name = identity or h.enrolled_identity(home)
    except Exception:  # a home the command line cannot read: no enrolled identity
        h = None
        name = identity
    local = None
    if name is not None:
        path = st.identity_path(home, name)
        if not os.path.exists(path):
            raise OckamError(f"no identity named {name!r} in {home} (create it with: ockam identity create {name})")
        try:
            local = LocalIdentity.load(path)
        except (IdentityError, OSError) as e:
            raise OckamError(f"identity {name!r}: {e}") from None
    node = Node(reactor, name=f"endpoints-{os.getpid()}" + (f"-{name}" if name else ""), identity=local)
    if h is not None:
        try:
            projects = h.project_names(home)
        except Exception as e:
            log.warn("cannot list the projects of {home}: {error}", home=home, error=str(e))
            projects = []
        for project in projects:
            try:
                node.add_project(h.load_project(home, project))
            except Exception as e:
                log.warn("project {project} not used: {error}", project=project, error=str(e))

    def resolve(node_name: str) -> str:
        try:
            address = st.listener_of(home, node_name)
        except st.StateError as e:
            raise RouteUnreachable(str(e)) from None
        if not address:
            raise RouteUnreachable(f"no node named {node_name!r} in {home} (see: ockam node list)")
        return address

    node.node_resolver = resolve
    return node


# --- parsing ------------------------------------------------------------------------------------


def _options(kind: str, args, kwargs, keys) -> dict:
    """
    The parameters of an endpoint string, checked.

    @raise ValueError: with a one-line reason.
    """
    options = dict(kwargs)
    unknown = sorted(set(options) - set(keys))
    if unknown:
        raise ValueError(f"ockam: unknown parameter {unknown[0]!r} (a {kind} takes {', '.join(keys)})")
    if args:
        if kind != "client" or len(args) > 1 or "route" in options:
            raise ValueError(f"ockam: unexpected {':'.join(args)!r} (parameters are NAME=VALUE)")
        options["route"] = args[0]
    if "timeout" in options:
        try:
            options["timeout"] = float(options["timeout"])
        except ValueError:
            raise ValueError(f"ockam: timeout={options['timeout']}: not a number of seconds") from None
        if not options["timeout"] > 0:
            raise ValueError("ockam: timeout must be more than 0 seconds")
    if "authorized" in options:
        ids = [i.strip() for i in options["authorized"].split(",") if i.strip()]
        if not ids:
            raise ValueError("ockam: authorized= names no identifier")
        options["authorized"] = ids
    identity = options.get("identity")
    if identity is not None:
        if "node" in options:
            raise ValueError("ockam: identity= and node= cannot go together (a node has its own identity)")
        from .control import state as st

        if not st.valid_node_name(identity):
            raise ValueError(f"ockam: not an identity name: {identity!r}")
        home = st.ockam_home()
        if not os.path.exists(st.identity_path(home, identity)):
            raise ValueError(
                f"ockam: no identity named {identity!r} in {home} (create it with: ockam identity create {identity})"
            )
    return options


def _node_getter(reactor, options: dict):
    name = options.pop("node", None)
    identity = options.pop("identity", None)
    if name is not None:
        return lambda: registered_node(name)
    return lambda: embedded_node(reactor, identity)


def _check_route(text: str, what: str) -> None:
    from .routing import parse_route_text

    if not text:
        raise ValueError(f"ockam: {what}= is empty")
    try:
        parse_route_text(text)
    except ValueError as e:
        raise ValueError(f"ockam: {what}={text}: {e}") from None


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class OckamClientParser:
    """
    C{ockam:route=ROUTE[:identity=NAME][:node=NAME][:authorized=IDS][:timeout=SECONDS]}.
    """

    prefix = "ockam"

    def parseStreamClient(self, reactor, *args, **kwargs):
        from .portal.endpoints import OckamClientEndpoint

        options = _options("client", args, kwargs, _CLIENT_KEYS)
        route = options.pop("route", None)
        if route is None:
            raise ValueError("ockam: a client needs route= (e.g. ockam:route=/node/n2/service/outlet)")
        _check_route(route, "route")
        node = _node_getter(reactor, options)
        return OckamClientEndpoint(node, route, **options)


@implementer(IPlugin, IStreamServerEndpointStringParser)
class OckamServerParser:
    """
    C{ockam:[relay=NAME:at=ROUTE][:service=outlet][:identity=NAME][:node=NAME][:authorized=IDS][:timeout=SECONDS]}.
    """

    prefix = "ockam"

    def parseStreamServer(self, reactor, *args, **kwargs):
        from .portal.endpoints import OckamServerEndpoint

        options = _options("server", args, kwargs, _SERVER_KEYS)
        if ("relay" in options) != ("at" in options):
            raise ValueError("ockam: a relay needs relay=NAME and at=ROUTE (where to register it)")
        if "at" in options:
            _check_route(options["at"], "at")
            if not options["relay"] or "/" in options["relay"]:
                raise ValueError(f"ockam: not a relay name: {options['relay']!r}")
        service = options.get("service", "outlet")
        if not service or "/" in service:
            raise ValueError(f"ockam: not a service address: {service!r}")
        node = _node_getter(reactor, options)
        return OckamServerEndpoint(node, **options)
