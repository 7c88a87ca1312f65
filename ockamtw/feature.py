"""
How a feature plugs into a node (shared/ARCHITECTURE.md).

A feature (kept TCP connections, a project's membership, an authority,
secure channels, outlets, inlets, relays, ...) is one L{Feature}: an
L{IService} child of the node's C{MultiService}, registered with
L{ockamtw.node.BaseNode.add_feature}.  It owns

  - its objects, and their end: its C{stopService} closes what it made and
    returns a Deferred that fires once it is closed;
  - its part of a node's C{state.json}: L{Feature.save} gives the keys it
    keeps, L{Feature.restore} makes again what they say (doing it twice
    changes nothing), and L{Feature.changed} tells whoever keeps the state
    that it should be written again;
  - its control routes: L{Feature.routes} maps a request (HTTP method,
    collection, whether a key follows) to the name of the method that
    answers it, given a L{Call}.

So the node's C{stopService}, the control API's save, route table and
restore, and twistd's restore go through the node's features, and know
none of them by name.

This module also holds what route handlers share: L{ControlError} (an
answer's status and one line) and the readers of a request's body.  It
imports nothing of the features, the control plane or the faces.
"""

from __future__ import annotations

import os
from typing import Callable, Dict, Optional, Tuple

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, maybeDeferred
from zope.interface import implementer

from .errors import WireError
from .interfaces import IFeature
from .project.codec import is_identifier
from .routing import MultiAddr

#: A route: (HTTP method, collection, whether a key follows the collection).
RouteKey = Tuple[str, str, bool]


@implementer(IFeature)
class Feature(MultiService):
    """
    A base for features: a C{MultiService} (what it runs may be its child
    services) that knows its node.

    @cvar name: the feature's name among the node's features (also its
        service name).
    @cvar state_keys: the keys of C{state.json} it keeps.
    @cvar routes: L{RouteKey} -> the name of the method answering it.
    """

    name: str = ""
    state_keys: Tuple[str, ...] = ()
    routes: Dict[RouteKey, str] = {}

    def __init__(self, node) -> None:
        MultiService.__init__(self)
        self.node = node
        self.setName(self.name)

    def save(self) -> dict:
        """
        The feature's keys of C{state.json} and their values (a key left
        out is left as it is).
        """
        return {}

    def restore(self, state: dict) -> None:
        """
        Make again what C{state} (a checked C{state.json}) says this
        feature had; what is already there is left as it is.  What cannot
        be restored is logged, not raised: the node starts without it.
        """

    def changed(self) -> None:
        """
        Something the feature keeps in C{state.json} changed on its own
        (not through a control route, which saves anyway).
        """
        self.node.state_changed()

    def route_handlers(self) -> Dict[RouteKey, Callable]:
        """
        L{routes} with their methods.
        """
        return {key: getattr(self, method) for key, method in self.routes.items()}


class Call:
    """
    One control API request as a route handler gets it.

    @ivar node: the node.
    @ivar key: what follows the collection in the path (C{None}: nothing).
    @ivar body: the request's JSON object (C{{}} when it has none).
    @ivar listener: the node's own TCP listener, if it has one.
    """

    def __init__(self, node, key: Optional[str], body: dict, save: Callable, listener=None) -> None:
        self.node = node
        self.key = key
        self.body = body
        self.listener = listener
        self._save = save

    def saved(self, undo: Optional[Callable] = None) -> Deferred:
        """
        Save the node's state after a change.  When it cannot be written,
        undo the change with C{undo} (if given) and fail with a
        L{ControlError} (507) naming the file.
        """
        return maybeDeferred(self._save, undo)

    def need(self, key: str) -> str:
        """
        The body's non-empty string at C{key}.

        @raise ControlError: 400 when there is none.
        """
        return need(self.body, key)


class ControlError(Exception):
    """
    A request the node refuses: an HTTP status and a one-line reason.
    """

    def __init__(self, status: int, message: str) -> None:
        Exception.__init__(self, message)
        self.status = status
        self.message = message


def need(body: dict, key: str) -> str:
    """
    The non-empty string at C{key} of a request's body.

    @raise ControlError: 400 when there is none.
    """
    value = body.get(key)
    if not isinstance(value, str) or value == "":
        raise ControlError(400, f"missing {key!r}")
    return value


def authorized_of(body: dict):
    """
    The C{authorized} identifiers of a request's body (one, or a list), or
    C{None}.

    @raise ControlError: 400 for anything but identifiers (C{P} and 64
        lowercase hex characters).
    """
    value = body.get("authorized")
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ControlError(400, "authorized must be a list of identifiers (P + 64 lowercase hex)")
    for v in value:
        if not is_identifier(v):
            raise ControlError(400, f"authorized: not an identifier (P + 64 lowercase hex): {v!r}")
    return value


def listed(authorized):
    """
    Authorized identifiers as the API shows them: sorted, or C{None}.
    """
    return sorted(authorized) if authorized is not None else None


def service_name(text: str) -> str:
    """
    A worker's name from what a user may give: C{NAME}, C{/service/NAME}
    (as the command line prints it) or C{service/NAME} (as part of a URL
    path).

    @raise ControlError: 400 for a route of more than one name.
    """
    if text.startswith(("service/", "worker/")):
        text = "/" + text
    if text.startswith("/"):
        try:
            m = MultiAddr.parse(text)
        except WireError:
            m = None
        if m is None or len(m.hops) != 1 or m.hops[0].kind != "local":
            raise ControlError(400, f"expected NAME or /service/NAME, got {text!r}")
        return m.hops[0].name
    return text


def worker_key(text: str) -> str:
    """
    A worker address's value from C{/service/HEX}, C{0#HEX} or C{HEX}.
    """
    if text.startswith("0#"):
        return text[2:]
    return service_name(text)


def random_alias() -> str:
    """
    An alias for an inlet or outlet made without one (as Ockam 0.83's: 32
    hex digits).
    """
    return os.urandom(16).hex()


def alias_of(body: dict) -> str:
    """
    The C{alias} of a request's body, or a new random one.

    @raise ControlError: 400 for one with C{:} or C{/}.
    """
    alias = body.get("alias")
    if alias is None:
        return random_alias()
    if not isinstance(alias, str) or not alias or ":" in alias or "/" in alias:
        raise ControlError(400, f"not an alias: {alias!r} (an alias must not contain ':' or '/')")
    return alias


class Aliases:
    """
    The names Ockam 0.83 gives inlets and outlets (C{--alias}): alias ->
    key (an inlet's socket address, an outlet's address).  One made without
    an alias (before aliases, or by twistd's options) gets a random one the
    first time it is shown.
    """

    def __init__(self) -> None:
        self.keys: Dict[str, str] = {}

    def of(self, key: str) -> str:
        """
        The alias of C{key} (a new random one if it has none).
        """
        for alias, k in self.keys.items():
            if k == key:
                return alias
        alias = random_alias()
        self.keys[alias] = key
        return alias

    def get(self, alias: str) -> Optional[str]:
        return self.keys.get(alias)

    def set(self, alias: str, key: str) -> None:
        self.keys[alias] = key

    def forget(self, alias: str) -> None:
        self.keys.pop(alias, None)
