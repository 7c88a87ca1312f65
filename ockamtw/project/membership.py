"""
A node's side of projects (shared/spec/ockam-project-api.md section 10):
what a node created with C{--project project.json} knows and does.

  - L{Membership.resolve} is the C{/project/NAME} route resolver: a TCP
    connection to the project's access route, a secure channel to its
    C{api} listener pinned to the project identity, this node's credential
    (fetched from the project's authority over a channel pinned to the
    authority, verified, cached and refreshed before it expires), presented
    to the project's C{credentials} service; the route goes on through that
    channel.  The channel is reused while it is up.
  - L{CredentialsService} is this node's C{credentials} service: a secure
    channel peer presents a credential of one of this node's project
    authorities (C{actions/present}, or C{actions/present_mutual}, answered
    with this node's own credential); its attributes become the
    C{subject.*} the node's policies see.
  - L{Membership.secure_hop} wraps the node's C{/secure/NAME} resolver:
    a channel opened through a channel to a project (C{/project/NAME/
    service/forward_to_X/secure/api/...}, a nested channel to another
    member through its relay) exchanges credentials both ways over
    C{actions/present_mutual} before the route is used (the far node's
    attributes become the C{subject.*} this node's inlet policies see), and
    the Medic watches it as it watches the channels to projects, so a far
    node that lost its end (its relay healed through a new channel) is
    noticed and the channel rebuilt.
  - L{Membership.policy} gives the access policy of an inlet or outlet:
    the policy stored for its resource (Ockam 0.83's default for nodes with
    a project: C{(= resource.project_id subject.project_id)}), evaluated
    against the presented attributes.

L{Membership} is a feature of the node (L{ockamtw.feature}): it keeps
C{state.json}'s C{project} and C{policies} and answers the control API's
C{/project}, C{/policies} and C{/credentials}.
"""

from __future__ import annotations

import json
from typing import Callable, Dict, Optional, Set

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger

from ..abac import DEFAULT_POLICY_TEXT, HANDLE_MESSAGE, Policy, PolicyAccess, PolicyError
from ..access import CHANNEL_PEERS
from ..deferred import InFlight
from ..errors import NoSuchAddress, OckamError, RequestTimeout, RouteUnreachable
from ..feature import ControlError, Feature
from ..routing import Route
from ..secure.errors import SecureChannelError
from ..status import UP
from . import codec
from .codec import Method, Status
from .credentials import Credential, verify
from .errors import CredentialError
from .medic import Medic
from .members import MemberEntry, MemoryMemberStore
from .projectinfo import ProjectInfo
from .service import ApiError, ApiService, call

log = Logger(namespace="ockamtw.project")

#: A cached credential is fetched again once less than this part of its
#: lifetime is left (0.83 nodes never refresh theirs).
REFRESH_FRACTION = 0.1


class NotAMember(RouteUnreachable):
    """
    The project's authority would not give this node a credential.
    """


class Membership(Feature):
    """
    The projects a node belongs to, by name, with their authorities, this
    node's credentials and what peers presented to it.
    """

    name = "project"
    state_keys = ("project", "policies")
    routes = {
        ("GET", "project", False): "project_route",
        ("GET", "policies", False): "policies_route",
        ("GET", "policies", True): "policy_show_route",
        ("PUT", "policies", True): "policy_set_route",
        ("POST", "policies", True): "policy_set_route",
        ("DELETE", "policies", True): "policy_delete_route",
        ("GET", "credentials", False): "credentials_route",
        ("POST", "credentials", False): "credential_get_route",
    }

    def __init__(self, node) -> None:
        Feature.__init__(self, node)
        self.projects: Dict[str, ProjectInfo] = {}
        #: authority identifier -> (its Identity, the project id)
        self.authorities: Dict[str, tuple] = {}
        #: project id -> this node's Credential
        self.credentials: Dict[str, Credential] = {}
        #: what secure channel peers presented (their attributes)
        self.presented = MemoryMemberStore()
        #: resource -> policy text (tcp-inlet, tcp-outlet or an alias)
        self.policies: Dict[str, str] = {}
        self._channels = InFlight()
        self._project_ends: Dict[str, object] = {}
        #: nested channels whose credentials were exchanged (by id)
        self._exchanged: Set[int] = set()
        self._exchanging = InFlight()
        #: seconds a project API call may take (0.83: 30)
        self.timeout = 30.0
        #: checks the channels to projects (its intervals may be changed
        #: before the first /project route is used)
        self.medic = Medic(node)
        #: whether the node's state keeps C{policies} (once it had some)
        self._keeps_policies = False
        node.register_resolver("project", self.resolve)

    # --- what the node knows ---------------------------------------------------------------

    def add(self, info: ProjectInfo) -> None:
        """
        Belong to the project C{info} (checked complete: its identity, its
        authority's route and verified identity).
        """
        authority = info.require_complete()
        self.projects[info.name] = info
        self.authorities[authority.identifier] = (authority, info.id)

    @property
    def project_id(self) -> Optional[str]:
        """
        The id of the node's project (the first one added), or C{None}.
        """
        for info in self.projects.values():
            return info.id
        return None

    def attributes_of(self, identifier: str) -> Optional[Dict[str, bytes]]:
        entry = self.presented.get(identifier, self.node.reactor.seconds())
        return None if entry is None else dict(entry.attributes)

    # --- policies ---------------------------------------------------------------------------------

    def policy_text(self, resource: str) -> Optional[str]:
        return self.policies.get(resource)

    def set_policy(self, resource: str, text: str) -> None:
        Policy.parse(text)  # PolicyError for bad text
        self.policies[resource] = text
        self._keeps_policies = True

    def policy(self, resource: str, project_id: Optional[str] = None):
        """
        The access policy of resource C{resource} (an inlet's Pong, an
        outlet's Ping): with a project, the stored policy (stored at first
        use as Ockam 0.83's default); without one, C{None} (no policy).
        """
        if not self.projects:
            return None
        self.policies.setdefault(resource, DEFAULT_POLICY_TEXT)
        return PolicyAccess(
            lambda: self.policies.get(resource),
            self.attributes_of,
            resource=resource,
            project_id=project_id or self.project_id,
            stored=True,
        )

    # --- credentials ------------------------------------------------------------------------------

    async def credential(self, info: ProjectInfo) -> Credential:
        """
        This node's credential for project C{info}: the cached one while it
        has more than a tenth of its lifetime left, else a new one from the
        authority.

        @raise NotAMember: when the authority refuses.
        """
        now = self.node.reactor.seconds()
        cached = self.credentials.get(info.id)
        if cached is not None:
            data = cached.credential_data()
            if data.expires - now > (data.expires - data.created) * REFRESH_FRACTION:
                return cached
        authority = info.authority()
        node = self.node
        try:
            enc = await node.create_secure_channel(
                info.authority_access_route, authorized=[authority.identifier], timeout=self.timeout
            )
        except (OckamError, SecureChannelError) as e:
            raise RouteUnreachable(f"cannot reach the authority of project {info.name}: {e}") from None
        try:
            resp = await call(node, Route([enc, codec.CREDENTIAL_ISSUER]), Method.POST, "/", timeout=self.timeout)
        except ApiError as e:
            raise NotAMember(f"not a member of project {info.name} (its authority says: {e.message})") from None
        except RequestTimeout:
            raise NotAMember(f"not a member of project {info.name} (its authority did not answer)") from None
        finally:
            node.delete_secure_channel(enc)
        credential = resp.decode_body(Credential.decode)
        try:
            verify(credential, [authority], node.identity.identifier, int(node.reactor.seconds()))
        except CredentialError as e:
            raise RouteUnreachable(f"the authority of project {info.name} gave a bad credential: {e}") from None
        self.credentials[info.id] = credential
        return credential

    # --- /project/NAME ------------------------------------------------------------------------------

    def resolve(self, prefix: Route, hop, position: int) -> Deferred:
        """
        The C{project} route resolver (see the module's docstring).
        """
        if position != 0:
            raise NoSuchAddress(f"/project/{hop.name} can only start a route")
        info = self.projects.get(hop.name)
        if info is None:
            known = ", ".join(sorted(self.projects)) or "none"
            raise NoSuchAddress(f"unknown project {hop.name!r} on node {self.node.name} (it knows: {known})")
        end = self._project_ends.get(info.name)
        if end is not None and end.status == UP:
            return Deferred.fromCoroutine(_route_of(end))
        return self._channels.wait(info.name, lambda: Deferred.fromCoroutine(self._connect(info)))

    async def _connect(self, info: ProjectInfo) -> Route:
        node = self.node
        credential = await self.credential(info)
        try:
            enc = await node.create_secure_channel(info.access_route, authorized=[info.identity], timeout=self.timeout)
        except (OckamError, SecureChannelError) as e:
            raise RouteUnreachable(f"cannot reach project {info.name}: {e}") from None
        try:
            await call(node, Route([enc, codec.CREDENTIALS]), Method.POST, codec.PRESENT_PATH, credential,
                       timeout=self.timeout)
        except (ApiError, RequestTimeout) as e:
            node.delete_secure_channel(enc)
            raise NotAMember(f"project {info.name} refused this node's credential: {e}") from None
        end = node.secure_channels[enc.value]
        self._project_ends[info.name] = end
        self.medic.watch(end, info.name)
        end.on_close(lambda _: self._project_ends.pop(info.name, None) if self._project_ends.get(info.name) is end else None)
        return Route([enc])

    # --- nested channels: .../secure/NAME after a project relay ------------------------------------

    def secure_hop(self, inner: Callable) -> Callable:
        """
        The C{/secure/NAME} resolver: C{inner} (the node's own), and when
        the route so far runs through a channel to one of this node's
        projects, a mutual credential exchange over the channel it opened
        (once per channel) and the Medic watching that channel.
        """

        def resolve(prefix: Route, hop, position: int) -> Deferred:
            d = maybeDeferred(inner, prefix, hop, position)
            info = self._project_through(prefix)
            if info is None:
                return d
            return d.addCallback(lambda route: Deferred.fromCoroutine(self._nested(info, route)))

        return resolve

    def _project_through(self, prefix: Route) -> Optional[ProjectInfo]:
        """
        The project whose channel C{prefix} starts with, if any.
        """
        if not prefix:
            return None
        for name, end in self._project_ends.items():
            if end.encryptor == prefix[0]:
                return self.projects.get(name)
        return None

    async def _nested(self, info: ProjectInfo, route: Route) -> Route:
        end = self.node.secure_channels.get(route[0].value) if route else None
        if end is None or id(end) in self._exchanged:
            return route
        await self._exchanging.wait(id(end), lambda: Deferred.fromCoroutine(self._exchange(info, end)))
        return route

    async def _exchange(self, info: ProjectInfo, end) -> None:
        """
        Present this node's credential of project C{info} through channel
        C{end} (C{actions/present_mutual}) and keep what the far node
        presents back, verified against the project's authority.
        """
        if id(end) in self._exchanged:
            return
        node = self.node
        peer = end.peer_identifier
        credential = await self.credential(info)
        try:
            resp = await call(node, Route([end.encryptor, codec.CREDENTIALS]), Method.POST, codec.PRESENT_MUTUAL_PATH,
                              credential, timeout=self.timeout)
        except (ApiError, RequestTimeout) as e:
            end.close()
            raise RouteUnreachable(f"{peer} refused this node's credential of project {info.name}: {e}") from None
        if resp.body is not None:
            try:
                theirs = resp.decode_body(Credential.decode)
                now = int(node.reactor.seconds())
                data = verify(theirs, [info.authority()], peer, now)
            except (OckamError, CredentialError) as e:
                end.close()
                raise RouteUnreachable(f"{peer} presented a bad credential of project {info.name}: {e}") from None
            self.presented.put(peer, MemberEntry(dict(data.attributes), now, data.expires, data.issuer))
        self._exchanged.add(id(end))
        end.on_close(lambda _: self._exchanged.discard(id(end)))
        self.medic.watch(end, f"{info.name} (a channel to {peer} through it)")

    def project_channel(self, name: str):
        """
        The open channel to project C{name}, if any (relays watch it).
        """
        return self._project_ends.get(name)


    def project_info(self) -> Optional[ProjectInfo]:
        """
        The node's project (the first it was given), or C{None}.
        """
        for info in self.projects.values():
            return info
        return None

    def stopService(self):
        Feature.stopService(self)
        self.medic.stop()

    # --- state ---------------------------------------------------------------------------

    def save(self) -> dict:
        state: dict = {}
        project = self.project_info()
        if project is not None:
            state["project"] = project.to_dict()
        if self.policies or self._keeps_policies:
            state["policies"] = dict(sorted(self.policies.items()))
        return state

    def restore(self, state: dict) -> None:
        """
        The node's project (C{project}: C{/project/NAME} routes,
        credentials, default policies) and its policies (C{policies}),
        before its inlets and outlets are restored.
        """
        doc = state.get("project")
        if doc is not None:
            info = ProjectInfo.from_json(json.dumps(doc))
            info.require_complete()
            self.add(info)
        if "policies" in state:
            self._keeps_policies = True
        for resource, expression in (state.get("policies") or {}).items():
            self.set_policy(resource, expression)

    # --- control routes --------------------------------------------------------------------------

    def project_route(self, call) -> dict:
        info = self.project_info()
        if info is None:
            raise ControlError(404, f"node {self.node.name} belongs to no project")
        return info.to_dict()

    def policies_route(self, call) -> list:
        return [_policy_dict(r, e) for r, e in sorted(self.policies.items())]

    def policy_show_route(self, call) -> dict:
        resource = call.key
        expression = self.policies.get(resource)
        if expression is None:
            raise ControlError(404, f"no policy for resource {resource!r} on node {self.node.name}")
        return _policy_dict(resource, expression)

    async def policy_set_route(self, call) -> dict:
        """
        Store the policy of a resource (action C{handle_message}, the only
        one portals ask about); it applies to the next message.
        """
        resource = call.key
        expression = call.need("expression")
        action = call.body.get("action") or HANDLE_MESSAGE
        if action != HANDLE_MESSAGE:
            raise ControlError(400, f"unknown action {action!r} (policies are for {HANDLE_MESSAGE})")
        if not resource or "/" in resource:
            raise ControlError(400, f"not a resource name: {resource!r}")
        try:
            text = str(Policy.parse(expression))
        except PolicyError as e:
            raise ControlError(400, f"bad policy expression: {e}") from None
        policies = self.policies
        before = policies.get(resource)
        self.set_policy(resource, text)

        def undo():
            if before is None:
                policies.pop(resource, None)
            else:
                policies[resource] = before

        await call.saved(undo=undo)
        return _policy_dict(resource, text)

    async def policy_delete_route(self, call) -> dict:
        info = self.policy_show_route(call)
        del self.policies[call.key]
        await call.saved()
        return info

    def credentials_route(self, call) -> dict:
        """
        This node's own credentials (one per project it has fetched one
        for) and the attributes peers presented to it.
        """
        from .credentials import display

        now = self.node.reactor.seconds()
        names = {info.id: info.name for info in self.projects.values()}
        own = []
        for project_id, credential in sorted(self.credentials.items()):
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
            for identifier, entry in sorted(self.presented.members(now).items())
        ]
        return {"own": own, "presented": presented}

    async def credential_get_route(self, call) -> dict:
        """
        Fetch (or take the cached) credential of this node for its project
        (C{{"project": NAME}}, its first one by default).
        """
        name = call.body.get("project")
        info = self.projects.get(name) if name else self.project_info()
        if info is None:
            raise ControlError(404, f"node {self.node.name} belongs to no project {name or ''}".rstrip())
        await self.credential(info)
        return [c for c in self.credentials_route(call)["own"] if c["project_id"] == info.id][0]


def _texts(attributes) -> dict:
    out = {}
    for k, v in sorted(attributes.items()):
        try:
            out[k] = bytes(v).decode("utf-8")
        except UnicodeDecodeError:
            out[k] = "**binary**"
    return out


def _policy_dict(resource: str, expression: str) -> dict:
    return {"resource": resource, "action": HANDLE_MESSAGE, "expression": expression}


async def _route_of(end) -> Route:
    return Route([end.encryptor])


class CredentialsService(ApiService):
    """
    This node's C{credentials} service: any secure channel peer may present
    a credential of one of this node's project authorities; it is verified
    (issuer, subject = the channel's peer, expiry, signature) and its
    attributes stored for that peer until it expires.  With
    C{actions/present_mutual} the answer carries this node's own credential.
    """

    access = CHANNEL_PEERS
    paths = (codec.PRESENT_PATH, "/" + codec.PRESENT_PATH, codec.PRESENT_MUTUAL_PATH, "/" + codec.PRESENT_MUTUAL_PATH)

    def __init__(self, membership: Membership) -> None:
        self.membership = membership

    async def handle(self, req, identity, message):
        m = self.membership
        credential = req.decode_body(Credential.decode)
        authorities = {k: v[0] for k, v in m.authorities.items()}
        now = int(self.node.reactor.seconds())
        try:
            data = verify(credential, authorities, identity, now)
        except CredentialError as e:
            raise ApiError(Status.BAD_REQUEST, str(e)) from None
        m.presented.put(identity, MemberEntry(dict(data.attributes), now, data.expires, data.issuer))
        if req.path.lstrip("/") == codec.PRESENT_MUTUAL_PATH:
            project_id = m.authorities[data.issuer][1]
            own = m.credentials.get(project_id)
            if own is None:
                info = next((i for i in m.projects.values() if i.id == project_id), None)
                if info is not None:
                    try:
                        own = await m.credential(info)
                    except OckamError:
                        own = None
            return own
        return None
