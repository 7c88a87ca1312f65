"""
The control API of a background node: HTTP+JSON on a UNIX socket in the
node's directory (mode 0600), served with twisted.web.  Nothing of it is
reachable over TCP.  docs/control-api.md lists the endpoints.

L{NodeController} does the work (and keeps C{state.json} up to date);
L{ControlResource} maps requests to it; L{ControlService} serves it.
"""

from __future__ import annotations

import inspect
import json
import os
from typing import Optional

from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server

from ..errors import AddressInUse, OckamError, RelayRefused, RequestTimeout, RouteUnreachable, TransportError, WireError
from ..secure.errors import SecureChannelError
from ..project.membership import NotAMember
from ..relay import FORWARDING_SERVICE, STATIC_FORWARDING_SERVICE, Forwarder
from ..routing import MultiAddr, parse_route_text
from ..services import DEFAULT_SERVICES
from ..status import CLOSED, UP
from ..transport.tcp import MODE_OUTGOING
from ..wire import decode_string, encode_string
from . import state as st

log = Logger(namespace="ockamtw.control")


#: The services a node status lists.
SERVICES = tuple(DEFAULT_SERVICES) + (FORWARDING_SERVICE, STATIC_FORWARDING_SERVICE)


class ControlError(Exception):
    """
    A request the node refuses: an HTTP status and a one-line reason.
    """

    def __init__(self, status: int, message: str) -> None:
        Exception.__init__(self, message)
        self.status = status
        self.message = message


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


def connection_dict(item) -> dict:
    return {
        "transport_id": item.transport_id,
        "transport_type": "TCP",
        "mode": item.mode,
        "socket_address": item.socket_address,
        "worker_address": str(item.address),
    }


class NodeController:
    """
    Control operations on a running node, kept in its state directory.
    """

    def __init__(self, node, directory: Optional[str] = None, pid: Optional[int] = None) -> None:
        self.node = node
        self.directory = directory
        self.pid = pid if pid is not None else os.getpid()
        self.listener = None
        #: the L{ockamtw.project.authority.Authority} this node runs, if any
        self.authority = None
        if directory is not None:
            self.restore(st.read_state(directory) or {})

    def restore(self, state: dict) -> None:
        """
        Give the node what its C{state.json} says beyond its workers: its
        project (C{project}: C{/project/NAME} routes, credentials, default
        policies), its policies (C{policies}) and, for an authority node,
        the authority's services (C{authority}).  Done when the controller
        is made, before the node's inlets and outlets are restored; doing
        it again changes nothing.
        """
        info = st.project_of(state)
        if info is not None:
            self.node.add_project(info)
        for name, expression in (state.get("policies") or {}).items():
            self.node.membership.set_policy(name, expression)
        config = st.authority_of(state)
        if config is not None and self.authority is None:
            from ..project.authority import Authority

            self.authority = Authority(self.node, config, on_change=self._authority_changed)
            self.authority.start()

    def _authority_changed(self) -> None:
        try:
            self.save()
        except OSError as e:
            log.error("cannot save the authority's members: {e}", e=str(e))

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
        if self.directory is None:
            return
        node = self.node
        listen = self.listener.socket_address if self.listener is not None else None
        state = st.read_state(self.directory) or st.empty_state(node.name, listen)
        state.update(
            name=node.name,
            listen=listen or state.get("listen"),
            outlets=[
                {"address": a, "to": o.target, "authorized": _listed(o.authorized)} for a, o in node.outlets.items()
            ],
            inlets=[
                {"listen": i.socket_address, "to": i.route_text, "authorized": _listed(i.authorized)}
                for i in node.inlets.values()
            ],
            secure_listeners=[
                {"address": a, "authorized": _listed(l.trust.authorized)}
                for a, l in node.secure_listeners.items()
                if a != "api" or l.trust.authorized is not None
            ],
            relays=[{"name": r.name, "at": r.at_text} for r in node.relays.values()],
            connections=[{"to": k.target, "address": k.address.value} for k in node.tcp.kept.values()],
        )
        project = self.project_info()
        if project is not None:
            state["project"] = project.to_dict()
        if node.membership.policies or "policies" in state:
            state["policies"] = dict(sorted(node.membership.policies.items()))
        if self.authority is not None:
            state["authority"] = self.authority.config.to_dict()
        st.write_state(self.directory, state)

    def project_info(self):
        """
        The node's project (the first it was given), or C{None}.
        """
        for info in self.node.membership.projects.values():
            return info
        return None

    # --- node ---------------------------------------------------------------------

    def show(self) -> dict:
        node = self.node
        return {
            "name": node.name,
            "status": UP,
            "pid": self.pid,
            "route": f"/node/{node.name}",
            "listener": self.listener.socket_address if self.listener is not None else None,
            "services": [n for n in SERVICES if node.worker_at(n) is not None] + list(node.secure_listeners)
            + (self.authority.services() if self.authority is not None else []),
            "forwarders": sorted(
                a.value for a in node.worker_addresses() if isinstance(node.worker_at(a), Forwarder)
            ),
            "inlets": self.inlets(),
            "outlets": self.outlets(),
            "relays": self.relays(),
            "identity": node.identity.identifier,
            "project": self.project_name(),
            "authority": self.authority.to_dict() if self.authority is not None else None,
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

    # --- identity and secure channels ------------------------------------------------

    def identity(self) -> dict:
        identity = self.node.identity
        return {"identifier": identity.identifier, "export": identity.export().hex()}

    def _channel_ends(self) -> list:
        """
        Every secure channel end on the node: those it initiated, then
        those its listeners accepted (handshakes in progress included).
        """
        ends = list(self.node.secure_channels.values())
        for listener in self.node.secure_listeners.values():
            ends += list(listener.channels)
        return ends

    def secure_channels(self) -> list:
        """
        The established channels (a handshake in progress, or one the peer
        refused that has not timed out yet, is counted in the status's
        C{handshakes} instead).
        """
        return [e.to_dict() for e in self._channel_ends() if e.status == UP]

    def _channel(self, key: str):
        key = _worker_key(key)
        for end in self._channel_ends():
            if key in (end.encryptor.value, end.decryptor.value):
                return end
        raise ControlError(404, f"no secure channel {key!r} on node {self.node.name}")

    def secure_channel_show(self, key: str) -> dict:
        return self._channel(key).to_dict()

    async def secure_channel_create(self, body: dict) -> dict:
        to = _need(body, "to")
        parse_route_text(to)
        encryptor = await self.node.create_secure_channel(
            to, authorized=_authorized(body), timeout=float(body.get("timeout", 10))
        )
        return self.node.secure_channels[encryptor.value].to_dict()

    def secure_channel_delete(self, key: str) -> dict:
        end = self._channel(key)
        info = end.to_dict()
        end.close()
        info["status"] = CLOSED
        return info

    def secure_listeners(self) -> list:
        return [
            {"address": a, "authorized": _listed(l.trust.authorized), "channels": len(l.channels), "handshakes": l.stats()}
            for a, l in self.node.secure_listeners.items()
        ]

    def _listener_info(self, address: str) -> dict:
        return [l for l in self.secure_listeners() if l["address"] == address][0]

    def secure_listener_show(self, address: str) -> dict:
        address = _service_name(address)
        if address not in self.node.secure_listeners:
            raise ControlError(404, f"no secure channel listener {address!r} on node {self.node.name}")
        return self._listener_info(address)

    async def secure_listener_create(self, body: dict) -> dict:
        """
        A new listener; an address already taken is refused (as for an
        outlet), except C{api}, the node's own listener, whose policy is
        replaced by the one given (that is how it is restricted).
        """
        address = _service_name(_need(body, "address"))
        authorized = _authorized(body)
        existing = self.node.secure_listeners.get(address)
        if self.node.worker_at(address) is not None and address != API_LISTENER:
            raise ControlError(409, f"address {address!r} is already taken on node {self.node.name}")
        if existing is not None:
            before = existing.trust.authorized
            self.node.create_secure_channel_listener(address, authorized)
            await self._saved(undo=lambda: self.node.create_secure_channel_listener(address, _listed(before)))
        else:
            self.node.create_secure_channel_listener(address, authorized)
            await self._saved(undo=lambda: self._drop_listener(address))
        return self._listener_info(address)

    def _drop_listener(self, address: str) -> None:
        if address in self.node.secure_listeners:
            self.node.delete_secure_channel_listener(address)  # closes the channels it accepted

    async def secure_listener_delete(self, address: str) -> dict:
        address = _service_name(address)
        if address not in self.node.secure_listeners:
            raise ControlError(404, f"no secure channel listener {address!r} on node {self.node.name}")
        if address == API_LISTENER:
            raise ControlError(409, f"the node's own secure channel listener {address!r} cannot be deleted")
        info = self._listener_info(address)
        self._drop_listener(address)
        await self._saved()
        return info

    # --- tcp ----------------------------------------------------------------------------

    def tcp_list(self) -> list:
        return [connection_dict(i) for i in self.node.tcp.list()]

    def _tcp(self, key: str):
        item = self.node.tcp.find(_worker_key(key))
        if item is None:
            item = self.node.tcp.find(key)
        if item is None:
            raise ControlError(404, f"no TCP connection or listener {key!r} on node {self.node.name}")
        return item

    def tcp_show(self, key: str) -> dict:
        return connection_dict(self._tcp(key))

    async def tcp_create(self, body: dict) -> dict:
        to = _need(body, "to")
        conn = await self.node.tcp.keep(to)

        async def undo():
            await self.node.tcp.forget(conn.address)
            await conn.close()

        await self._saved(undo=undo)
        return connection_dict(conn)

    async def tcp_delete(self, key: str) -> dict:
        item = self._tcp(key)
        if item is self.listener:
            raise ControlError(409, "the node's own listener cannot be deleted")
        info = connection_dict(item)
        kept = item.address in self.node.tcp.kept
        if kept:
            await self.node.tcp.forget(item.address)
        await item.close()
        if kept:
            await self._saved()
        return info

    # --- messages -------------------------------------------------------------------

    async def message(self, body: dict) -> dict:
        to = _need(body, "to")
        timeout = float(body.get("timeout", 10))
        if "hex" in body:
            payload = bytes.fromhex(body["hex"])
        else:
            payload = encode_string(_need(body, "message"))
        reply = await self.node.request(to, payload, timeout=timeout)
        return reply_dict(reply)

    # --- relays ---------------------------------------------------------------------

    def relays(self) -> list:
        return [relay_dict(r) for r in self.node.relays.values()]

    def _relay(self, key: str):
        """
        A relay by name (C{n3}), or by its address as printed
        (C{forward_to_n3}, C{/service/forward_to_n3}).
        """
        name = _service_name(key)
        relay = self.node.relays.get(name)
        if relay is None:
            relay = next((r for r in self.node.relays.values() if relay_dict(r)["alias"] == name), None)
        if relay is None:
            raise ControlError(404, f"no relay {name!r} on node {self.node.name}")
        return relay

    def relay_show(self, name: str) -> dict:
        return relay_dict(self._relay(name))

    async def relay_create(self, body: dict) -> dict:
        name = _need(body, "name")
        at = _need(body, "at")
        parse_route_text(at)
        if name in self.node.relays:
            raise ControlError(409, f"relay {name!r} already exists on node {self.node.name}")
        relay = await self.node.create_relay(at, name=name, timeout=float(body.get("timeout", 5)))
        await self._saved(undo=lambda: self.node.delete_relay(name))
        return relay_dict(relay)

    async def relay_delete(self, name: str) -> dict:
        relay = self._relay(name)
        self.node.delete_relay(relay.name)
        await self._saved()
        return relay_dict(relay)

    # --- outlets -------------------------------------------------------------------------

    def outlets(self) -> list:
        return [o.to_dict() for o in self.node.outlets.values()]

    def outlet_show(self, address: str) -> dict:
        address = _service_name(address)
        outlet = self.node.outlets.get(address)
        if outlet is None:
            raise ControlError(404, f"no outlet {address!r} on node {self.node.name}")
        return outlet.to_dict()

    async def outlet_create(self, body: dict) -> dict:
        address = _service_name(_need(body, "address"))
        to = _need(body, "to")
        if self.node.worker_at(address) is not None:
            raise ControlError(409, f"address {address!r} is already taken on node {self.node.name}")
        outlet = await self.node.create_outlet(address, to, authorized=_authorized(body))
        await self._saved(undo=lambda: self.node.delete_outlet(address))
        return outlet.to_dict()

    async def outlet_delete(self, address: str) -> dict:
        address = _service_name(address)
        outlet = self.node.outlets.get(address)
        if outlet is None:
            raise ControlError(404, f"no outlet {address!r} on node {self.node.name}")
        info = outlet.to_dict()
        await self.node.delete_outlet(address)
        await self._saved()
        return info

    # --- inlets ----------------------------------------------------------------------------

    def inlets(self) -> list:
        return [i.to_dict() for i in self.node.inlets.values()]

    def _inlet(self, key: str):
        inlet = self.node.inlets.get(key)
        if inlet is None:
            for i in self.node.inlets.values():
                if key in (i.listen_text, i.socket_address):
                    return i
            raise ControlError(404, f"no inlet {key!r} on node {self.node.name}")
        return inlet

    def inlet_show(self, key: str) -> dict:
        return self._inlet(key).to_dict()

    async def inlet_create(self, body: dict) -> dict:
        listen = _need(body, "listen")
        to = _need(body, "to")
        parse_route_text(to)
        inlet = await self.node.create_inlet(listen, to, authorized=_authorized(body))
        if to.startswith("/project/"):
            # As Ockam 0.83 does: an inlet to a project is made only once the
            # project is reached (and this node admitted), so that a
            # non-member learns it at once.
            try:
                await inlet.route()
            except Exception:
                await self.node.delete_inlet(inlet.socket_address)
                raise
        await self._saved(undo=lambda: self.node.delete_inlet(inlet.socket_address))
        return inlet.to_dict()

    async def inlet_delete(self, key: str) -> dict:
        inlet = self._inlet(key)
        info = inlet.to_dict()
        await self.node.delete_inlet(inlet.socket_address)
        await self._saved()
        return info


    # --- project, policies, credentials -----------------------------------------------

    def project(self) -> dict:
        info = self.project_info()
        if info is None:
            raise ControlError(404, f"node {self.node.name} belongs to no project")
        return info.to_dict()

    def policies(self) -> list:
        return [_policy_dict(r, e) for r, e in sorted(self.node.membership.policies.items())]

    def policy_show(self, resource: str) -> dict:
        expression = self.node.membership.policies.get(resource)
        if expression is None:
            raise ControlError(404, f"no policy for resource {resource!r} on node {self.node.name}")
        return _policy_dict(resource, expression)

    async def policy_set(self, resource: str, body: dict) -> dict:
        """
        Store the policy of C{resource} (action C{handle_message}, the only
        one portals ask about); it applies to the next message.
        """
        from ..abac import HANDLE_MESSAGE, Policy, PolicyError

        expression = _need(body, "expression")
        action = body.get("action") or HANDLE_MESSAGE
        if action != HANDLE_MESSAGE:
            raise ControlError(400, f"unknown action {action!r} (policies are for {HANDLE_MESSAGE})")
        if not resource or "/" in resource:
            raise ControlError(400, f"not a resource name: {resource!r}")
        try:
            text = str(Policy.parse(expression))
        except PolicyError as e:
            raise ControlError(400, f"bad policy expression: {e}") from None
        policies = self.node.membership.policies
        before = policies.get(resource)
        self.node.membership.set_policy(resource, text)

        def undo():
            if before is None:
                policies.pop(resource, None)
            else:
                policies[resource] = before

        await self._saved(undo=undo)
        return _policy_dict(resource, text)

    async def policy_delete(self, resource: str) -> dict:
        info = self.policy_show(resource)
        del self.node.membership.policies[resource]
        await self._saved()
        return info

    def credentials(self) -> dict:
        """
        This node's own credentials (one per project it has fetched one
        for) and the attributes peers presented to it.
        """
        from ..project.credentials import display

        membership = self.node.membership
        now = self.node.reactor.seconds()
        names = {info.id: info.name for info in membership.projects.values()}
        own = []
        for project_id, credential in sorted(membership.credentials.items()):
            data = credential.credential_data()
            own.append({
                "project": names.get(project_id),
                "project_id": project_id,
                "issuer": data.issuer,
                "subject": data.subject,
                "expires": data.expires,
                "attributes": _texts(data.attributes),
                "credential": credential.hex(),
                "display": display(credential),
            })
        presented = [
            {"identifier": identifier, "attributes": _texts(entry.attributes), "expires": entry.expires,
             "issuer": entry.attested_by}
            for identifier, entry in sorted(membership.presented.members(now).items())
        ]
        return {"own": own, "presented": presented}

    async def credential_get(self, body: dict) -> dict:
        """
        Fetch (or take the cached) credential of this node for its project
        (C{{"project": NAME}}, its first one by default).
        """
        membership = self.node.membership
        name = body.get("project")
        info = membership.projects.get(name) if name else self.project_info()
        if info is None:
            raise ControlError(404, f"node {self.node.name} belongs to no project {name or ''}".rstrip())
        await membership.credential(info)
        return [c for c in self.credentials()["own"] if c["project_id"] == info.id][0]


def _texts(attributes) -> dict:
    out = {}
    for k, v in sorted(attributes.items()):
        try:
            out[k] = bytes(v).decode("utf-8")
        except UnicodeDecodeError:
            out[k] = "**binary**"
    return out


def _policy_dict(resource: str, expression: str) -> dict:
    from ..abac import HANDLE_MESSAGE

    return {"resource": resource, "action": HANDLE_MESSAGE, "expression": expression}


def relay_dict(relay) -> dict:
    """
    A relay as the API shows it; a relay at a project (registered with
    C{static_forwarding_service} under its bare name) has the address the
    project gave it, C{forward_to_NAME}.
    """
    info = relay.to_dict()
    if relay.service == STATIC_FORWARDING_SERVICE:
        remote = relay.remote_address
        info["alias"] = remote.value if remote is not None else f"forward_to_{relay.name}"
    return info


def _listed(authorized):
    return sorted(authorized) if authorized is not None else None


def _authorized(body: dict):
    value = body.get("authorized")
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.startswith("P") for v in value):
        raise ControlError(400, "authorized must be a list of identifiers (P<hex>)")
    return value


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


def _need(body: dict, key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or value == "":
        raise ControlError(400, f"missing {key!r}")
    return value


#: The secure channel listener every node has.
API_LISTENER = "api"


def _service_name(text: str) -> str:
    """
    A worker's name from what a user may give: C{NAME}, C{/service/NAME}
    (as the command line prints it) or C{service/NAME} (as part of a URL
    path).
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


def _worker_key(text: str) -> str:
    """
    A worker address's value from C{/service/HEX}, C{0#HEX} or C{HEX}.
    """
    if text.startswith("0#"):
        return text[2:]
    return _service_name(text)


class ControlResource(resource.Resource):
    """
    The HTTP face of a L{NodeController}.
    """

    isLeaf = True

    def __init__(self, controller: NodeController) -> None:
        resource.Resource.__init__(self)
        self.c = controller

    def _route(self, method: bytes, parts: list, body: dict):
        c = self.c
        m = method.decode()
        key = "/".join(parts[1:]) if len(parts) > 1 else None
        table = {
            ("GET", "node", False): lambda: c.show(),
            ("GET", "tcp", False): lambda: c.tcp_list(),
            ("POST", "tcp", False): lambda: c.tcp_create(body),
            ("GET", "tcp", True): lambda: c.tcp_show(key),
            ("DELETE", "tcp", True): lambda: c.tcp_delete(key),
            ("POST", "message", False): lambda: c.message(body),
            ("GET", "relays", False): lambda: c.relays(),
            ("POST", "relays", False): lambda: c.relay_create(body),
            ("GET", "relays", True): lambda: c.relay_show(key),
            ("DELETE", "relays", True): lambda: c.relay_delete(key),
            ("GET", "outlets", False): lambda: c.outlets(),
            ("POST", "outlets", False): lambda: c.outlet_create(body),
            ("GET", "outlets", True): lambda: c.outlet_show(key),
            ("DELETE", "outlets", True): lambda: c.outlet_delete(key),
            ("GET", "inlets", False): lambda: c.inlets(),
            ("POST", "inlets", False): lambda: c.inlet_create(body),
            ("GET", "inlets", True): lambda: c.inlet_show(key),
            ("DELETE", "inlets", True): lambda: c.inlet_delete(key),
            ("GET", "identity", False): lambda: c.identity(),
            ("GET", "secure-channels", False): lambda: c.secure_channels(),
            ("POST", "secure-channels", False): lambda: c.secure_channel_create(body),
            ("GET", "secure-channels", True): lambda: c.secure_channel_show(key),
            ("DELETE", "secure-channels", True): lambda: c.secure_channel_delete(key),
            ("GET", "project", False): lambda: c.project(),
            ("GET", "policies", False): lambda: c.policies(),
            ("GET", "policies", True): lambda: c.policy_show(key),
            ("PUT", "policies", True): lambda: c.policy_set(key, body),
            ("POST", "policies", True): lambda: c.policy_set(key, body),
            ("DELETE", "policies", True): lambda: c.policy_delete(key),
            ("GET", "credentials", False): lambda: c.credentials(),
            ("POST", "credentials", False): lambda: c.credential_get(body),
            ("GET", "secure-channel-listeners", False): lambda: c.secure_listeners(),
            ("POST", "secure-channel-listeners", False): lambda: c.secure_listener_create(body),
            ("GET", "secure-channel-listeners", True): lambda: c.secure_listener_show(key),
            ("DELETE", "secure-channel-listeners", True): lambda: c.secure_listener_delete(key),
        }
        handler = table.get((m, parts[0] if parts else "", key is not None))
        if handler is None:
            raise ControlError(404, f"no such endpoint: {m} /{'/'.join(parts)}")
        return handler()

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
