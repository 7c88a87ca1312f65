"""
What the Orchestrator runs for one project, in its own process: a project
authority and a project node, each an ockamtw node with its own identity
and its own persisted port, byte-compatible with Ockam 0.83
(shared/spec/ockam-project-api.md).

Who may send what:

  - Authority (its C{api} listener accepts every peer):
    C{credential_issuer} members (C{(= resource.project_id
    subject.project_id)}); C{direct_authenticator} and
    C{enrollment_token_issuer} enrollers (members with C{ockam-role
    enroller}); C{enrollment_token_acceptor}, C{authenticator} and C{echo}
    any secure channel peer.  A refused request is answered 403 (0.83 dropped
    it silently).
  - Project node (its C{api} listener accepts every peer): C{credentials}
    any secure channel peer; everything else (C{echo},
    C{static_forwarding_service}, the C{forward_to_*} relays) only channels
    that presented a valid credential of this project: signed by its
    authority, for the channel's identity, not expired, of a member not
    revoked.  A revoked member is refused at once and its channels closed.

The enrolled administrators (identities enrolled with an Orchestrator
token) are pre-trusted at every authority as C{{ockam-role: enroller,
project_id}}; their entries cannot be overwritten.
"""

from __future__ import annotations

import hashlib
from typing import Dict, Optional, Set

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from ..abac import PolicyAccess, default_policy, enroller_policy
from ..access import CHANNEL_PEERS, Either, RelayedFor
from ..api import Node
from ..interfaces import IAccessPolicy, IConnection
from ..project import codec
from ..project.codec import (
    UNKNOWN_TOKEN,
    AddMember,
    CreateToken,
    Method,
    OneTimeCode,
    Status,
)
from ..project.credentials import Credential, issue, verify
from ..project.errors import CredentialError
from ..project.service import ApiError, ApiService, Answering, call
from ..relay import ForwardingService, RelayRegistry
from ..routing import Route
from ..secure.identity import LocalIdentity
from ..services import Echo
from ..wire import decode_string
from ..errors import OckamError, WireError
from .store import StoreError
from .tokens import MAX_CODE_LIFETIME, MAX_CODE_USES

log = Logger(namespace="ockamtw.orchestrator.project")

#: The one-time code lifetime when the enroller gives none (0.83: 600 s).
CODE_LIFETIME = 600


def code_hash(code: bytes) -> str:
    return hashlib.sha256(code).hexdigest()


# --- the authority's services ---------------------------------------------------------------------


class _AuthorityService(ApiService):
    """
    A service of the authority: C{serve} answers; a database that cannot
    be reached now is answered 500 with a sentence (the caller may try
    again), not a traceback in the log.
    """

    def __init__(self, runtime: "ProjectRuntime") -> None:
        self.runtime = runtime

    async def handle(self, req, identity, message):
        try:
            return await self.serve(req, identity, message)
        except StoreError as e:
            raise ApiError(Status.INTERNAL_SERVER_ERROR, f"the project's database: {e}; try again") from None

    async def serve(self, req, identity, message):
        raise NotImplementedError()


class CredentialIssuer(_AuthorityService):
    """
    C{credential_issuer}: a credential for the caller (members only): its
    stored attributes plus C{project_id}, for the configured lifetime.
    """

    paths = ("/", "/credential")

    async def serve(self, req, identity, message):
        return self.runtime.credential_for(identity)


class DirectAuthenticator(_AuthorityService):
    """
    C{direct_authenticator}: an enroller adds (or replaces) a member.
    """

    paths = ("/", "/members")

    async def serve(self, req, identity, message):
        body = req.decode_body(AddMember.decode)
        await self.runtime.put_member(body.member, dict(body.attributes), identity)
        return None


class TokenIssuer(_AuthorityService):
    """
    C{enrollment_token_issuer}: an enroller makes a one-time code with
    attributes (and, as ockamtw extensions 0.83 ignores, a lifetime, a
    number of uses and C{ockam-relay}).
    """

    paths = ("/", "/tokens")

    async def serve(self, req, identity, message):
        body = req.decode_body(CreateToken.decode)
        code = OneTimeCode.random()
        runtime = self.runtime
        lifetime = body.expires_in if body.expires_in else CODE_LIFETIME
        uses = body.usage_count if body.usage_count else 1
        if lifetime > MAX_CODE_LIFETIME:
            raise ApiError(Status.BAD_REQUEST, f"expires_in is at most {MAX_CODE_LIFETIME} seconds (a year)")
        if uses > MAX_CODE_USES:
            raise ApiError(Status.BAD_REQUEST, f"usage_count is at most {MAX_CODE_USES}")
        await runtime.store.add_ticket(
            code_hash(code.code), runtime.id, dict(body.attributes), uses, runtime.store.now() + lifetime, identity
        )
        return code


class TokenAcceptor(_AuthorityService):
    """
    C{enrollment_token_acceptor}: whoever presents a valid code becomes a
    member with its attributes (once per use of the code, however many
    instances redeem it at once).
    """

    paths = ("/", "/credential")

    async def serve(self, req, identity, message):
        code = req.decode_body(OneTimeCode.decode)
        runtime = self.runtime
        got = await runtime.store.redeem_ticket(code_hash(code.code), runtime.id)
        if got is None:
            raise ApiError(Status.FORBIDDEN, UNKNOWN_TOKEN)
        attributes, created_by = got
        await runtime.put_member(identity, attributes, created_by)
        return None


class Authenticator(_AuthorityService):
    """
    C{authenticator}: 0.83's legacy converter of C{/tokens}, C{/members}
    and C{/credential}, each with the access check of the service it stands
    for.
    """

    paths = ("/tokens", "/members", "/credential")

    async def serve(self, req, identity, message):
        runtime = self.runtime
        if req.path == "/credential":
            if req.body is not None:
                await TokenAcceptor.serve(self, req, identity, message)
            runtime.require(runtime.members_only, identity)
            return runtime.credential_for(identity)
        runtime.require(runtime.enrollers_only, identity)
        if req.path == "/members":
            return await DirectAuthenticator.serve(self, req, identity, message)
        return await TokenIssuer.serve(self, req, identity, message)


# --- the project node's services --------------------------------------------------------------------


class Credentials(ApiService):
    """
    C{credentials} on the project node: a member presents its credential
    (C{actions/present}); a valid one admits the channel it came through
    (the node then presents the project's own credential back).
    """

    paths = ("actions/present", "/actions/present")

    def __init__(self, runtime: "ProjectRuntime") -> None:
        self.runtime = runtime

    async def handle(self, req, identity, message):
        credential = req.decode_body(Credential.decode)
        self.runtime.admit(message.origin, identity, credential)
        return None


@implementer(IAccessPolicy)
class Admitted:
    """
    Channels whose peer presented a valid credential of this project and
    is not revoked.
    """

    def __init__(self, runtime: "ProjectRuntime") -> None:
        self.runtime = runtime

    def allows(self, message) -> bool:
        return self.runtime.is_admitted(message.origin)

    def __str__(self) -> str:
        return f"members of project {self.runtime.name} (a credential presented)"


class ProjectRelays(ForwardingService):
    """
    C{static_forwarding_service} at a project: relay names have owners,
    persisted, so a member cannot take another's name, live or not, unless
    its credential carries C{ockam-relay} for that name (or C{*}).
    """

    def __init__(self, runtime: "ProjectRuntime", registry: RelayRegistry) -> None:
        ForwardingService.__init__(self, static=True, registry=registry)
        self.runtime = runtime

    def receive(self, message) -> None:
        try:
            name = decode_string(message.payload)
        except WireError:
            ForwardingService.receive(self, message)  # refused there, with the reason
            return
        identity = message.origin.identity if message.origin is not None else None
        d = Deferred.fromCoroutine(self._claim(name, identity, message))
        d.addErrback(self._failed, name)

    def _failed(self, f, name: str) -> None:
        if f.check(StoreError):
            # The relay registers again (every few seconds) on its own.
            log.warn("project {project}: relay {name} not registered: {reason}", project=self.runtime.name,
                     name=name, reason=f.getErrorMessage())
        else:
            log.failure("relay registration failed", f)

    async def _claim(self, name: str, identity: Optional[str], message) -> None:
        runtime = self.runtime
        if identity is None or not name or len(name) > 128:
            ForwardingService.receive(self, message)
            return
        owner = await runtime.store.claim_relay(runtime.id, name, identity)
        if owner != identity:
            allowed = runtime.attribute(identity, codec.RELAY_ATTRIBUTE)
            if allowed not in (name, "*"):
                self._refuse(message, "{alias} belongs to another member", alias=codec.forwarder_address(name))
                return
            await runtime.store.give_relay(runtime.id, name, identity)
            existing = self.node.worker_at(codec.forwarder_address(name))
            if existing is not None and getattr(existing, "owner", None) is not message.origin:
                self.node.stop_worker(codec.forwarder_address(name))
            log.info("relay {name} of project {project} taken over by {who} (ockam-relay)", name=name,
                     project=runtime.name, who=identity)
        ForwardingService.receive(self, message)


# --- the runtime ----------------------------------------------------------------------------------------


class ProjectStartError(OckamError):
    """
    A project cannot be served here (its ports cannot be bound).
    """


class ProjectRuntime:
    """
    One project's authority and project node in this process.
    """

    def __init__(self, orchestrator, row: Dict) -> None:
        self.o = orchestrator
        self.row = row
        self.id = row["id"]
        self.name = row["name"]
        self.store = orchestrator.store
        reactor = orchestrator.reactor
        self.reactor = reactor
        sealer = orchestrator.sealer
        self.project_identity = LocalIdentity.from_secret(
            row["project_identity"], sealer.open(row["project_secret"], f"{self.id}/project")
        )
        self.authority_identity = LocalIdentity.from_secret(
            row["authority_identity"], sealer.open(row["authority_secret"], f"{self.id}/authority")
        )
        #: identifier -> attributes of the members (not revoked)
        self.members: Dict[str, Dict[str, str]] = {}
        #: the enrolled administrators (pre-trusted enrollers)
        self.admins: Set[str] = set()
        #: admitted channel end -> (identifier, attributes, expires)
        self.admitted: Dict[object, tuple] = {}
        self.credential_ttl = orchestrator.settings.credential_ttl
        #: member entries written here (a reload read before one of them
        #: must not drop it: L{apply})
        self.writes = 0
        self._written: Dict[str, int] = {}
        self.authority = Node(reactor, name=f"{self.name}-authority", services=False, identity=self.authority_identity)
        self.project = Node(reactor, name=f"{self.name}-project", services=False, identity=self.project_identity)
        self.project_credential: Optional[Credential] = None
        #: requests of ours in flight (cancelled when the project stops)
        self._calls: set = set()
        self.members_only = PolicyAccess(
            default_policy(), self.authority_attributes, resource=codec.CREDENTIAL_ISSUER, project_id=self.id, stored=False
        )
        self.enrollers_only = PolicyAccess(
            enroller_policy(), self.authority_attributes, resource=codec.DIRECT_AUTHENTICATOR, project_id=self.id,
            stored=False,
        )

    # --- attributes and decisions -------------------------------------------------------------

    def authority_attributes(self, identifier: str) -> Optional[Dict[str, str]]:
        """
        What the authority knows of C{identifier}: an administrator's
        pre-trusted entry, else the member's stored attributes.
        """
        if identifier in self.admins:
            return {"ockam-role": "enroller", "project_id": self.id}
        attributes = self.members.get(identifier)
        if attributes is None:
            return None
        return dict(attributes, project_id=self.id)

    def attribute(self, identifier: str, name: str) -> Optional[str]:
        attributes = self.authority_attributes(identifier) or {}
        return attributes.get(name)

    def require(self, policy: PolicyAccess, identifier: str) -> None:
        from ..abac import decide

        if not decide(policy.policy, identifier, self.authority_attributes(identifier), policy.resource,
                      project_id=self.id, stored=False):
            raise ApiError(Status.FORBIDDEN, "unauthorized member")

    def credential_for(self, identifier: str) -> Credential:
        attributes = self.authority_attributes(identifier)
        if attributes is None:
            raise ApiError(Status.FORBIDDEN, "unauthorized member")
        return issue(
            self.authority_identity, identifier, attributes, self.id, int(self.reactor.seconds()),
            ttl=int(self.credential_ttl),
        )

    async def put_member(self, identifier: str, attributes: Dict[str, str], added_by: Optional[str]) -> None:
        """
        Write a member's entry (replacing it, as 0.83 does); an
        administrator's pre-trusted entry is not overwritten (the call
        still succeeds, as in 0.83).
        """
        if identifier in self.admins:
            return
        attributes = dict(attributes, project_id=self.id)
        await self.store.put_member(self.id, identifier, attributes, added_by)
        self.writes += 1
        self._written[identifier] = self.writes
        self.members[identifier] = attributes

    # --- admission on the project node -----------------------------------------------------------

    def admit(self, end, identifier: str, credential: Credential) -> None:
        now = int(self.reactor.seconds())
        try:
            data = verify(credential, [self.authority_identity], identifier, now)
        except CredentialError as e:
            raise ApiError(Status.BAD_REQUEST, str(e)) from None
        if data.attribute_text("project_id") != self.id:
            raise ApiError(Status.FORBIDDEN, "the credential is for another project")
        if identifier not in self.admins and identifier not in self.members:
            raise ApiError(Status.FORBIDDEN, "not a member (revoked?)")
        first = end not in self.admitted
        self.admitted[end] = (identifier, data.attributes, data.expires)
        if first:
            end.on_close(lambda _: self.admitted.pop(end, None))
            if self.project_credential is not None:
                d = Deferred.fromCoroutine(self._present_back(end))
                self._calls.add(d)
                d.addBoth(lambda r: (self._calls.discard(d), None)[1])

    async def _present_back(self, end) -> None:
        # Decision 8: the project presents its own {project_id} credential
        # to every member it admits, so that a member node's default policy
        # admits traffic the project relays.
        route = Route([end.encryptor, "credentials"])
        await call(self.project, route, Method.POST, codec.PRESENT_PATH, self.project_credential, timeout=30)

    def is_admitted(self, origin) -> bool:
        entry = self.admitted.get(origin)
        if entry is None:
            return False
        identifier, _, expires = entry
        if expires <= self.reactor.seconds() or (identifier not in self.admins and identifier not in self.members):
            return False
        return True

    def member_revoked(self, identifier: str) -> None:
        """
        A member was revoked: refused at once, its channels closed.
        """
        self.members.pop(identifier, None)
        self._close_channels_of(identifier)

    def _close_channels_of(self, identifier: str) -> None:
        links = []
        for end, (who, _, _) in list(self.admitted.items()):
            if who == identifier:
                log.info("project {project}: closing the channel of {who} (not a member)", project=self.name, who=who)
                if IConnection.providedBy(end.link) and end.link not in links:
                    links.append(end.link)
                end.close()
        # No message tells a channel's peer that it is closed: drop the TCP
        # connections those channels came through as well (unless another
        # identity's admitted channel uses one), so that the member's node
        # learns it at once, opens a new channel and is told why it is
        # refused, instead of sending into a channel that is gone until its
        # Medic misses three pings.
        for link in links:
            if not any(end.link is link and who != identifier for end, (who, _, _) in self.admitted.items()):
                link.abort()

    # --- lifecycle --------------------------------------------------------------------------------------------

    async def refresh_admins(self) -> None:
        rows = await self.store.query("SELECT identifier FROM identities")
        self.admins = {r[0] for r in rows}

    async def refresh(self) -> None:
        """
        Reload members (and administrators) from the store; close the
        channels of members no longer there.
        """
        token = self.writes
        rows = await self.store.query("SELECT identifier FROM identities")
        members = await self.store.members(self.id)
        live = {m["identifier"]: m["attributes"] for m in members if m["revoked_at"] is None}
        self.apply({r[0] for r in rows}, live, token)

    def apply(self, admins: Set[str], live: Dict[str, Dict[str, str]], token: int) -> None:
        """
        The administrators and live members, as read from the store when
        C{writes} was C{token}: entries written here since are kept; the
        channels of members no longer there are closed.
        """
        self.admins = admins
        live = dict(live)
        for identifier, written in list(self._written.items()):
            if written > token and identifier in self.members:
                live.setdefault(identifier, self.members[identifier])
            elif written <= token:
                del self._written[identifier]
        gone = set(self.members) - set(live)
        self.members = live
        for identifier in gone:
            if identifier not in self.admins:
                self._close_channels_of(identifier)

    async def start(self) -> None:
        """
        Serve: the authority and the project node listen on the project's
        ports.  Fails with L{ProjectStartError} (everything started is
        stopped again).
        """
        await self.refresh()
        try:
            await self._start()
        except BaseException as e:
            await self.stop()
            if isinstance(e, (OckamError, OSError)):
                raise ProjectStartError(f"project {self.name}: {e}") from None
            raise

    async def _start(self) -> None:
        host = self.o.settings.listen_host
        a, p = self.authority, self.project
        a.startService()
        p.startService()
        # The authority.
        a.create_secure_channel_listener("api")
        a.start_worker("echo", Echo())
        a.start_worker(codec.CREDENTIAL_ISSUER, CredentialIssuer(self), access=Answering(a, self.members_only))
        a.start_worker(codec.DIRECT_AUTHENTICATOR, DirectAuthenticator(self), access=Answering(a, self.enrollers_only))
        a.start_worker(codec.ENROLLMENT_TOKEN_ISSUER, TokenIssuer(self), access=Answering(a, self.enrollers_only))
        a.start_worker(codec.ENROLLMENT_TOKEN_ACCEPTOR, TokenAcceptor(self), access=CHANNEL_PEERS)
        a.start_worker("authenticator", Authenticator(self), access=CHANNEL_PEERS)
        # The project node.
        admitted = Admitted(self)
        listener = p.create_secure_channel_listener("api")
        # Members talk to each other through the project: what an admitted
        # member sends may enter another member's channel (the project
        # speaks for its members; docs/orchestrator.md, trust model).
        listener.encryptor_access = lambda end: Either(RelayedFor(end), admitted)
        p.start_worker(codec.CREDENTIALS, Credentials(self), access=CHANNEL_PEERS)
        p.start_worker("echo", Echo(), access=admitted)
        registry = RelayRegistry(forwarder_access=admitted)
        p.relay_registry = registry
        p.start_worker(codec.STATIC_FORWARDING_SERVICE, ProjectRelays(self, registry), access=admitted)
        self.project_credential = issue(
            self.authority_identity, self.project_identity.identifier, {}, self.id, int(self.reactor.seconds()),
            ttl=int(self.credential_ttl),
        )
        la = await a.tcp.listen(f"tcp:{self.row['authority_port']}:interface={host}")
        lp = await p.tcp.listen(f"tcp:{self.row['project_port']}:interface={host}")
        if (self.row["authority_port"], self.row["project_port"]) != (la.port, lp.port):
            # Ports chosen now (any free port): kept from now on.
            self.row["authority_port"], self.row["project_port"] = la.port, lp.port
            await self.store.set_project(self.id, authority_port=la.port, project_port=lp.port)

    async def stop(self) -> None:
        for d in list(self._calls):
            d.cancel()
        await self.project.stopService()
        await self.authority.stopService()
