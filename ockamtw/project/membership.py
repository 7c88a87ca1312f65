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
  - L{Membership.policy} gives the access policy of an inlet or outlet:
    the policy stored for its resource (Ockam 0.83's default for nodes with
    a project: C{(= resource.project_id subject.project_id)}), evaluated
    against the presented attributes.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from ..abac import DEFAULT_POLICY_TEXT, Policy, PolicyAccess
from ..access import CHANNEL_PEERS
from ..deferred import InFlight
from ..errors import OckamError, RequestTimeout, RouteUnreachable
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


class Membership:
    """
    The projects a node belongs to, by name, with their authorities, this
    node's credentials and what peers presented to it.
    """

    def __init__(self, node) -> None:
        self.node = node
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
        #: seconds a project API call may take (0.83: 30)
        self.timeout = 30.0
        #: checks the channels to projects (its intervals may be changed
        #: before the first /project route is used)
        self.medic = Medic(node)

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
            raise RouteUnreachable(f"/project/{hop.name} can only start a route")
        info = self.projects.get(hop.name)
        if info is None:
            known = ", ".join(sorted(self.projects)) or "none"
            raise RouteUnreachable(f"unknown project {hop.name!r} on node {self.node.name} (it knows: {known})")
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

    def project_channel(self, name: str):
        """
        The open channel to project C{name}, if any (relays watch it).
        """
        return self._project_ends.get(name)


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
