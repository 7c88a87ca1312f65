"""
The control API of a background node: HTTP+JSON on a UNIX socket in the
node's directory (mode 0600), served with twisted.web.  Nothing of it is
reachable over TCP.  docs/control-api.md lists the endpoints.

L{NodeController} keeps C{state.json} (what the node's features save,
L{ockamtw.feature}) and answers the node's own routes (C{/node},
C{/message}, C{/identity}); every other route is a feature's.
L{ControlResource} maps requests to them; L{ControlService} serves it.
"""

from __future__ import annotations

import inspect
import json
import os
from typing import Callable, Dict, Optional

from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server

from ..errors import AddressInUse, OckamError, RelayRefused, RequestTimeout, RouteUnreachable, TransportError, WireError
from ..feature import Call, ControlError, RouteKey, need
from ..portal import stream_limits
from ..project.membership import NotAMember
from ..relay import FORWARDING_SERVICE, STATIC_FORWARDING_SERVICE, Forwarder, relay_dict
from ..secure.errors import SecureChannelError
from ..services import DEFAULT_SERVICES
from ..status import UP
from ..transport.tcp import MODE_OUTGOING
from ..wire import decode_string, encode_string
from . import state as st

log = Logger(namespace="ockamtw.control")

__all__ = ["ControlError", "ControlResource", "ControlService", "NodeController", "relay_dict", "reply_dict"]


#: The services a node status lists.
SERVICES = tuple(DEFAULT_SERVICES) + (FORWARDING_SERVICE, STATIC_FORWARDING_SERVICE)


def _status_for(error: BaseException) -> int:
    if isinstance(error, ControlError):
        return error.status
    if isinstance(error, (AddressInUse, TransportError, RelayRefused)):
        return 409
    if isinstance(error, (WireError, ValueError)):
        return 400
    if isinstance(error, RequestTimeout):
        return 504
    if isinstance(error, (SecureChannelError, NotAMember)):
        return 403
    if isinstance(error, (RouteUnreachable, OckamError)):
        return 502
    if isinstance(error, KeyError):
        return 404
    return 500


class NodeController:
    """
    Control operations on a running node, kept in its state directory.

    Made with a directory, it restores the node from its C{state.json}
    (every feature, in the node's order) and saves it again whenever a
    route changes something or a feature says its state changed.
    """

    def __init__(self, node, directory: Optional[str] = None, pid: Optional[int] = None) -> None:
        self.node = node
        self.directory = directory
        self.pid = pid if pid is not None else os.getpid()
        #: the node's own TCP listener, once it listens
        self.listener = None
        node.on_state_change(self._state_changed)
        node.named_identity = self.named_identity
        if directory is not None:
            self.restore(st.read_state(directory) or {})

    def restore(self, state: dict) -> None:
        """
        Give the node what C{state} (its C{state.json}) says: each feature
        restores its part, in the node's order (a project and its policies
        before the inlets and outlets they apply to).  Doing it again
        changes nothing.
        """
        self.node.restore(state)

    @property
    def authority(self):
        """
        The L{ockamtw.project.authority.Authority} this node runs, if any.
        """
        feature = self.node.features.get("authority")
        return None if feature is None else feature.authority

    def home(self) -> str:
        """
        The C{$OCKAM_HOME} of this node (its directory is C{HOME/nodes/NAME}).
        """
        if self.directory is None:
            return st.ockam_home()
        return os.path.dirname(os.path.dirname(os.path.abspath(self.directory)))

    def named_identity(self, name: str):
        """
        The identity named C{name} of this node's home (C{ockam identity
        create NAME}), for a listener that presents it.

        @raise ControlError: 400 for a bad name or an unusable file, 404
            when there is none.
        """
        from ..secure.errors import IdentityError
        from ..secure.identity import LocalIdentity

        if not st.valid_node_name(name):
            raise ControlError(400, f"not an identity name: {name!r}")
        path = st.identity_path(self.home(), name)
        if not os.path.exists(path):
            raise ControlError(404, f"no identity named {name!r} (create it with: ockam identity create {name})")
        try:
            return LocalIdentity.load(path)
        except IdentityError as e:
            raise ControlError(400, f"identity {name!r}: {e}") from None

    def _state_changed(self) -> None:
        try:
            self.save()
        except OSError as e:
            log.error("cannot save node {node}'s state: {e}", node=self.node.name, e=str(e))

    # --- state ------------------------------------------------------------------

    async def _saved(self, undo=None) -> None:
        """
        Save the state after a change; when it cannot be written (a full
        disk, a read-only directory), undo the change with C{undo} (if
        given) and refuse the request with one line naming the file.
        """
        try:
            self.save()
        except OSError as e:
            path = os.path.join(self.directory, st.STATE) if self.directory else st.STATE
            problem = f"cannot save node {self.node.name}'s state to {path}: {e.strerror or e}"
            if undo is None:
                raise ControlError(507, f"{problem} (the change holds until the node stops)") from None
            try:
                await maybeDeferred(undo)
            except Exception:
                log.failure("undoing a change that could not be saved failed")
            raise ControlError(507, f"{problem} (nothing was changed)") from None

    def save(self) -> None:
        """
        Write C{state.json}: the node's name and listener, and what each
        feature keeps (other keys are kept as they are).
        """
        if self.directory is None:
            return
        node = self.node
        listen = self.listener.socket_address if self.listener is not None else None
        state = st.read_state(self.directory) or st.empty_state(node.name, listen)
        state.update(name=node.name, listen=listen or state.get("listen"))
        state.update(node.save_state())
        st.write_state(self.directory, state)

    # --- routes -------------------------------------------------------------------

    def routes(self) -> Dict[RouteKey, Callable]:
        """
        Every route of the API: the node's own, then each feature's.
        """
        table: Dict[RouteKey, Callable] = {
            ("GET", "node", False): lambda call: self.show(),
            ("POST", "message", False): self.message,
            ("GET", "identity", False): lambda call: self.identity(),
            ("GET", "workers", False): lambda call: self.workers(),
        }
        for feature in self.node.features.values():
            table.update(feature.route_handlers())
        return table

    def call(self, key: Optional[str], body: dict) -> Call:
        """
        The L{Call} a route handler gets for a request.
        """
        return Call(self.node, key, body, lambda undo: Deferred.fromCoroutine(self._saved(undo)), self.listener)

    # --- node ---------------------------------------------------------------------

    def project_info(self):
        """
        The node's project (the first it was given), or C{None}.
        """
        return self.node.membership.project_info()

    def show(self) -> dict:
        node = self.node
        authority = self.authority
        call = self.call(None, {})
        return {
            "name": node.name,
            "status": UP,
            "pid": self.pid,
            "route": f"/node/{node.name}",
            "listener": self.listener.socket_address if self.listener is not None else None,
            "services": [n for n in SERVICES if node.worker_at(n) is not None] + list(node.secure_listeners)
            + (authority.services() if authority is not None else []),
            "forwarders": sorted(
                a.value for a in node.worker_addresses() if isinstance(node.worker_at(a), Forwarder)
            ),
            "inlets": node.features["inlets"].list_route(call),
            "outlets": node.features["outlets"].list_route(call),
            "relays": node.features["relays"].list_route(call),
            "identity": node.identity.identifier,
            "project": self.project_name(),
            "authority": authority.to_dict() if authority is not None else None,
            **self.limits(),
        }

    def project_name(self) -> Optional[str]:
        info = self.project_info()
        return None if info is None else info.name

    def limits(self) -> dict:
        """
        The node's limits on what peers make it hold, and what they
        refused and closed (see C{docs/control-api.md}).
        """
        node = self.node
        guard = node.tcp.guard
        registry = getattr(node, "relay_registry", None)
        limits = guard.limits.to_dict()
        refused = dict(guard.refused)
        if registry is not None:
            limits.update(registry.limits.to_dict())
            refused["relay_registrations"] = registry.refused
        connections = guard.to_dict()
        connections["outgoing"] = sum(1 for c in node.tcp.connections if c.mode == MODE_OUTGOING)
        handshakes = {a: l.stats() for a, l in node.secure_listeners.items()}
        api = node.secure_listeners.get("api")
        if api is not None:
            limits.update(api.limits.to_dict())
        streams = stream_limits(node)
        limits.update(streams.to_dict())
        refused["streams"] = streams.refused
        connections["streams"] = streams.held
        refused["messages"] = node.refused
        closed = dict(guard.closed)
        return {
            "limits": limits,
            "refused": refused,
            "closed": closed,
            "connections": connections,
            "handshakes": handshakes,
            "dropped": node.dropped,
        }

    def workers(self) -> list:
        return sorted(str(a) for a in self.node.worker_addresses())

    def identity(self) -> dict:
        identity = self.node.identity
        return {"identifier": identity.identifier, "export": identity.export().hex()}

    async def message(self, call: Call) -> dict:
        body = call.body
        to = need(body, "to")
        timeout = float(body.get("timeout", 10))
        if "hex" in body:
            payload = bytes.fromhex(body["hex"])
        else:
            payload = encode_string(need(body, "message"))
        reply = await self.node.request(to, payload, timeout=timeout)
        return reply_dict(reply)


def reply_dict(reply) -> dict:
    try:
        text = decode_string(reply.payload)
    except WireError:
        text = None
    return {
        "reply": text,
        "hex": reply.payload.hex(),
        "return_route": str(reply.return_route),
    }


class ControlResource(resource.Resource):
    """
    The HTTP face of a L{NodeController}.
    """

    isLeaf = True

    def __init__(self, controller: NodeController) -> None:
        resource.Resource.__init__(self)
        self.c = controller

    def _route(self, method: bytes, parts: list, body: dict):
        m = method.decode()
        key = "/".join(parts[1:]) if len(parts) > 1 else None
        handler = self.c.routes().get((m, parts[0] if parts else "", key is not None))
        if handler is None:
            raise ControlError(404, f"no such endpoint: {m} /{'/'.join(parts)}")
        return handler(self.c.call(key, body))

    def render(self, request):
        from urllib.parse import unquote

        parts = [unquote(p.decode()) for p in request.postpath if p]
        raw = request.content.read() if request.content is not None else b""
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            return self._finish(request, Failure(ControlError(400, "the request body is not JSON")))
        if not isinstance(body, dict):
            return self._finish(request, Failure(ControlError(400, "the request body must be a JSON object")))

        def call():
            result = self._route(request.method, parts, body)
            if inspect.iscoroutine(result):
                return Deferred.fromCoroutine(result)
            return result

        # A client that went away before the answer gets none.
        gone: list = []
        request.notifyFinish().addErrback(gone.append)
        d = maybeDeferred(call)
        d.addBoth(lambda result: self._finish(request, result, gone))
        return server.NOT_DONE_YET

    def _finish(self, request, result, gone=()):
        if isinstance(result, Failure):
            error = result.value
            status = _status_for(error)
            message = error.message if isinstance(error, ControlError) else str(error) or result.getErrorMessage()
            if status == 500:
                log.failure("control request failed", result)
            payload = {"error": message}
        else:
            status = 200
            payload = result
        data = json.dumps(payload).encode() + b"\n"
        if request.finished or gone:
            return server.NOT_DONE_YET
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.write(data)
        request.finish()
        return server.NOT_DONE_YET


class ControlService(Service):
    """
    Serves the control API on C{unix:<path>:mode=600} while the node runs.
    """

    def __init__(self, reactor, controller: NodeController, path: str) -> None:
        self.reactor = reactor
        self.controller = controller
        self.path = path
        self.port = None

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        if os.path.exists(self.path):
            os.unlink(self.path)  # stale: twistd's pid file guards against a live owner
        site = server.Site(ControlResource(self.controller))
        site.noisy = False
        site.log = lambda request: None
        desc = f"unix:{_escape(self.path)}:mode=600:lockfile=0"
        results = []
        endpoints.serverFromString(self.reactor, desc).listen(site).addBoth(results.append)
        result = results[0] if results else None
        if isinstance(result, Failure):
            raise TransportError(f"cannot serve the control API on {self.path}: {result.getErrorMessage()}")
        self.port = result

    def stopService(self):
        Service.stopService(self)
        if self.port is not None:
            port, self.port = self.port, None
            return maybeDeferred(port.stopListening)
        return None


def _escape(path: str) -> str:
    return path.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")
