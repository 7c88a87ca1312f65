"""
The Orchestrator service: its store, its HTTP API (/v0), and the runtime of
every project it serves (a project node and a project authority each).

Who may do what on the HTTP API: every endpoint but C{GET /v0/health}
needs a bearer token (C{Authorization: Bearer otw_...}); tokens are the
operator's (admin): the bootstrap token made at first start, and those it
makes (C{POST /v0/tokens}).  Membership and credentials do not go over
HTTP: they go over secure channels to each project's authority.

Several instances may share one PostgreSQL database (docs/orchestrator-
instances.md): any of them answers any request, and each project is served
by one of them at a time (L{ockamtw.orchestrator.leases}).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import socket
import uuid
from typing import Dict, Optional, Set

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredLock, maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..errors import OckamError
from ..secure.identity import LocalIdentity, import_identity
from ..secure.errors import IdentityError
from . import status
from .http import HttpError, Request, Router, bad_request, conflict, not_found
from .leases import LEASE_TTL, TICK, Leases
from .secrets import Sealer, SecretsError, fingerprint, load_or_create_key
from .store import Conflict, NoFreePorts, Store, StoreError, StoreUnavailable
from .tokens import MAX_CODE_LIFETIME, MAX_CODE_USES, MAX_TOKEN_LIFETIME, new_token, seconds, token_hash

log = Logger(namespace="ockamtw.orchestrator")

#: What an enrolling identity signs: this prefix, then the challenge bytes.
ENROLL_CONTEXT = b"ockamtw-enroll-v0:"
#: Seconds a challenge stays valid.
CHALLENGE_TTL = 120.0
#: Default seconds between reloads of the members of the projects served here.
REFRESH = 2.0
#: The enrollment ticket lifetime when none is given (0.83: 600 s).
TICKET_LIFETIME = 600


class Settings:
    """
    What an Orchestrator instance is told (twistd options, or the embedding
    program).
    """

    def __init__(
        self,
        data: str,
        db: Optional[str] = None,
        http: str = "tcp:6252:interface=127.0.0.1",
        listen_host: str = "127.0.0.1",
        advertise_host: Optional[str] = None,
        project_ports=(4000, 4099),  # None: any free ports (kept once chosen)
        credential_ttl: float = 30 * 86400,
        secrets_key_file: Optional[str] = None,
        **intervals,
    ) -> None:
        self.data = data
        self.db = db or os.path.join(data, "orchestrator.sqlite3")
        self.http = http
        #: where project nodes and authorities listen, and the host their
        #: routes name (the same unless the operator says otherwise)
        self.listen_host = listen_host
        self.advertise_host = advertise_host or listen_host
        self.project_ports = project_ports
        self.credential_ttl = credential_ttl
        self.secrets_key_file = secrets_key_file or os.path.join(data, "secrets.key")
        #: seconds: C{lease} (a project's lease time), C{tick} (how often
        #: leases are renewed and free projects claimed), C{refresh} (how
        #: often the members of the projects served are reloaded)
        self.intervals = intervals

    @property
    def lease_ttl(self) -> float:
        return float(self.intervals.get("lease", LEASE_TTL))

    @property
    def tick(self) -> float:
        return float(self.intervals.get("tick", TICK))

    @property
    def refresh(self) -> float:
        return float(self.intervals.get("refresh", REFRESH))


@functools.lru_cache(maxsize=8192)
def identifier_of(export: bytes) -> str:
    """
    The identifier of an exported identity (the project's or the
    authority's, which never change): verified once, then remembered, so
    that listing many projects does not verify their identities again
    each time (about half a millisecond each).
    """
    return import_identity(export).identifier


def project_info(row: Dict, advertise_host: str) -> Dict:
    """
    C{project.json} for a project row: the keys and order of Ockam 0.83's
    ProjectInfo (C{ockam project information --output json}).  The host is
    the one the project was made with (the same whichever instance
    answers), else C{advertise_host}.
    """
    advertise_host = row.get("advertise_host") or advertise_host
    return {
        "id": row["id"],
        "name": row["name"],
        "identity": identifier_of(bytes(row["project_identity"])),
        "access_route": f"/dnsaddr/{advertise_host}/tcp/{row['project_port']}/service/api",
        "authority_access_route": f"/dnsaddr/{advertise_host}/tcp/{row['authority_port']}/service/api",
        "authority_identity": bytes(row["authority_identity"]).hex(),
    }


class Api:
    """
    The handlers of the HTTP API, over a L{Store}; L{router} gives the
    twisted.web resource.
    """

    def __init__(self, orchestrator: "Orchestrator") -> None:
        self.o = orchestrator
        self.store: Store = orchestrator.store
        r = self.router = Router(authenticate=self.authenticate, translate=_translate)
        r.route("GET", "/v0/health", self.health, auth=False)
        r.route("GET", "/v0/instances", self.instances)
        r.route("GET", "/v0/enroll/challenge", self.challenge)
        r.route("POST", "/v0/enroll", self.enroll)
        r.route("POST", "/v0/tokens", self.token_create)
        r.route("GET", "/v0/spaces", self.spaces)
        r.route("POST", "/v0/spaces", self.space_create)
        r.route("GET", "/v0/spaces/{space}", self.space_show)
        r.route("DELETE", "/v0/spaces/{space}", self.space_delete)
        r.route("GET", "/v0/projects", self.projects)
        r.route("POST", "/v0/spaces/{space}/projects", self.project_create)
        r.route("GET", "/v0/projects/{project}", self.project_show)
        r.route("GET", "/v0/projects/{project}/information", self.project_information)
        r.route("DELETE", "/v0/projects/{project}", self.project_delete)
        r.route("GET", "/v0/projects/{project}/members", self.members)
        r.route("POST", "/v0/projects/{project}/members", self.member_add)
        r.route("DELETE", "/v0/projects/{project}/members/{identifier}", self.member_revoke)
        r.route("POST", "/v0/projects/{project}/tickets", self.ticket_create)
        r.route("GET", "/v0/projects/{project}/relays", self.relays)
        # The status page (ockamtw.orchestrator.status): its data behind the tokens, the page itself holds none.
        r.route("GET", "/v0/status", lambda request: status.snapshot(self.o))
        r.route("GET", "/status", status.page, auth=False)

    # --- authentication ---------------------------------------------------------------------

    async def authenticate(self, request: Request) -> None:
        if request.token is None:
            raise HttpError(401, "unauthorized", "a bearer token is needed (Authorization: Bearer otw_...)")
        row = await self.store.token(token_hash(request.token))
        now = self.store.now()
        if row is None or row["revoked_at"] is not None or (row["expires_at"] is not None and row["expires_at"] <= now):
            raise HttpError(401, "unauthorized", "unknown, revoked or expired token")
        request.token_row = row

    # --- health, enrollment, tokens ---------------------------------------------------------------

    def health(self, request: Request) -> Dict:
        leases = self.o.leases
        return {
            "status": "ok",
            "instance": self.o.instance_id,
            "projects": len(self.o.runtimes),
            "database": "ok" if leases is not None and leases.healthy else "unreachable",
        }

    async def instances(self, request: Request):
        return await self.store.instances(self.o.settings.lease_ttl)

    async def challenge(self, request: Request) -> Dict:
        nonce = os.urandom(32).hex()
        await self.store.add_challenge(nonce, CHALLENGE_TTL)
        return {"challenge": nonce}

    async def enroll(self, request: Request) -> Dict:
        """
        Bind the caller's identity to its token (proved by a signature over
        a challenge), make it an administrator of every project (a
        pre-trusted enroller at each authority), and make sure a space and
        the project C{default} exist; idempotent.
        """
        try:
            export = bytes.fromhex(request.need("identity"))
            nonce = request.need("challenge")
            signature = bytes.fromhex(request.need("signature"))
        except ValueError:
            raise bad_request("identity and signature are hex") from None
        try:
            identity = import_identity(export)
        except (IdentityError, ValueError) as e:
            raise bad_request(f"not an identity: {e}") from None
        if not await self.store.take_challenge(nonce):
            raise HttpError(403, "forbidden", "unknown or expired challenge")
        try:
            identity.verify(ENROLL_CONTEXT + bytes.fromhex(nonce), signature)
        except (IdentityError, ValueError):
            raise HttpError(403, "forbidden", "the signature does not prove the identity") from None
        bound = await self.store.bind_token(token_hash(request.token), identity.identifier)
        if bound != identity.identifier:
            raise HttpError(403, "forbidden", f"this token was used to enroll another identity ({bound})")
        await self.store.add_identity(identity.identifier, export)
        spaces = await self.store.spaces()
        space = spaces[0] if spaces else await self._new_space(os.urandom(4).hex(), [identity.identifier])
        projects = await self.store.projects()
        default = [p for p in projects if p["name"] == "default"]
        project = default[0] if default else (projects[0] if projects else None)
        if project is None:
            project = await self.o.create_project(space["id"], "default", identity.identifier)
        await self.o.admins_changed()
        await self.o.refresh_space_names()
        return {"space": space, "project": self._project(project)}

    async def token_create(self, request: Request) -> Dict:
        label = request.body.get("label") or "token"
        if not isinstance(label, str) or len(label) > 100:
            raise bad_request("label must be text of at most 100 characters")
        expires_in = request.body.get("expires_in")
        if expires_in is not None and not seconds(expires_in, MAX_TOKEN_LIFETIME):
            raise bad_request(f"expires_in must be a positive number of seconds (at most {MAX_TOKEN_LIFETIME})")
        token = new_token()
        expires_at = None if expires_in is None else self.store.now() + expires_in
        await self.store.add_token(token_hash(token), "admin", label, expires_at)
        return {"token": token, "label": label, "expires_at": expires_at}

    # --- spaces ------------------------------------------------------------------------------------------

    async def _new_space(self, name: str, users) -> Dict:
        space = {"id": str(uuid.uuid4()), "name": name, "users": list(users)}
        try:
            await self.store.add_space(space["id"], name, list(users))
        except Conflict as e:
            raise conflict(str(e)) from None
        return space

    async def _space(self, key: str) -> Dict:
        for space in await self.store.spaces():
            if key in (space["id"], space["name"]):
                return space
        raise not_found(f"no space {key!r}")

    async def spaces(self, request: Request):
        return await self.store.spaces()

    async def space_create(self, request: Request) -> Dict:
        name = request.body.get("name") or os.urandom(4).hex()
        if not isinstance(name, str) or not _valid_name(name):
            raise bad_request("a space name is 1 to 64 letters, digits, '-' or '_'")
        users = request.body.get("users") or []
        if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
            raise bad_request("users must be a list of text")
        return await self._new_space(name, users)

    async def space_show(self, request: Request) -> Dict:
        return await self._space(request.params["space"])

    async def space_delete(self, request: Request) -> Dict:
        space = await self._space(request.params["space"])
        try:
            await self.store.delete_space(space["id"])
        except Conflict as e:
            raise conflict(str(e)) from None
        return space

    # --- projects ----------------------------------------------------------------------------------------

    def _project(self, row: Dict) -> Dict:
        info = project_info(row, self.o.settings.advertise_host)
        return {
            "id": row["id"],
            "name": row["name"],
            "space_id": row["space_id"],
            "space_name": self.o.space_names.get(row["space_id"]),
            "access_route": info["access_route"],
            "identity": info["identity"],
            "authority_access_route": info["authority_access_route"],
            "authority_identity": info["authority_identity"],
            "authority_identifier": identifier_of(bytes(row["authority_identity"])),
            "users": [],
            "services": [],
            "state": row["state"],
            "served_by": row.get("served_by"),
        }

    async def _project_row(self, key: str) -> Dict:
        for row in await self.store.projects():
            if key in (row["id"], row["name"]):
                return row
        raise not_found(f"no project {key!r}")

    async def projects(self, request: Request):
        await self.o.refresh_space_names()
        return [self._project(r) for r in await self.store.projects()]

    async def project_create(self, request: Request) -> Dict:
        space = await self._space(request.params["space"])
        name = request.body.get("name") or os.urandom(4).hex()
        if not isinstance(name, str) or not _valid_name(name):
            raise bad_request("a project name is 1 to 64 letters, digits, '-' or '_'")
        admin = request.token_row.get("identifier")
        row = await self.o.create_project(space["id"], name, admin)
        await self.o.refresh_space_names()
        return self._project(row)

    async def project_show(self, request: Request) -> Dict:
        await self.o.refresh_space_names()
        return self._project(await self._project_row(request.params["project"]))

    async def project_information(self, request: Request) -> Dict:
        return project_info(await self._project_row(request.params["project"]), self.o.settings.advertise_host)

    async def project_delete(self, request: Request) -> Dict:
        row = await self._project_row(request.params["project"])
        state = await self.o.delete_project(row)
        return {"project": {"id": row["id"], "name": row["name"], "state": state}}

    # --- members and relays ------------------------------------------------------------------------------

    async def members(self, request: Request):
        row = await self._project_row(request.params["project"])
        return await self.store.members(row["id"])

    async def member_add(self, request: Request) -> Dict:
        row = await self._project_row(request.params["project"])
        identifier = request.need("identifier")
        if not _valid_identifier(identifier):
            raise bad_request("identifier must be P followed by 64 lowercase hex characters")
        attributes = _attributes(request.body)
        attributes = dict(attributes, project_id=row["id"])
        await self.store.put_member(row["id"], identifier, attributes, request.token_row.get("identifier"))
        return {"identifier": identifier, "attributes": attributes}

    async def member_revoke(self, request: Request) -> Dict:
        row = await self._project_row(request.params["project"])
        identifier = request.params["identifier"]
        if not await self.store.revoke_member(row["id"], identifier):
            raise not_found(f"{identifier} is not a member of project {row['name']}")
        await self.o.member_revoked(row["id"], identifier)
        return {"identifier": identifier, "revoked": True}

    async def relays(self, request: Request):
        row = await self._project_row(request.params["project"])
        return await self.store.relays(row["id"])

    async def ticket_create(self, request: Request) -> Dict:
        """
        An enrollment ticket: a one-time code (stored hashed, with its
        uses, lifetime and attributes) and what a node needs to redeem it
        at the project's authority, as hex of JSON.  Any instance makes it;
        it is redeemed (over a secure channel) at the instance serving the
        project, each use counted once.
        """
        from ..project.codec import RELAY_ATTRIBUTE, OneTimeCode

        row = await self._project_row(request.params["project"])
        body = request.body
        attributes = _attributes(body)
        uses = body.get("usage_count", 1)
        if not isinstance(uses, int) or isinstance(uses, bool) or not 0 < uses <= MAX_CODE_USES:
            raise bad_request(f"usage_count must be a whole number from 1 to {MAX_CODE_USES}")
        expires_in = body.get("expires_in", TICKET_LIFETIME)
        if not seconds(expires_in, MAX_CODE_LIFETIME):
            raise bad_request("expires_in must be a positive number of seconds (at most a year)")
        relay = body.get("relay")
        if relay is not None:
            if not isinstance(relay, str) or not relay or len(relay) > 128:
                raise bad_request("relay must be a relay name")
            attributes = dict(attributes, **{RELAY_ATTRIBUTE: relay})
        code = OneTimeCode.random()
        expires_at = self.store.now() + expires_in
        await self.store.add_ticket(
            hashlib.sha256(code.code).hexdigest(), row["id"], attributes, uses, expires_at,
            request.token_row.get("identifier"),
        )
        info = project_info(row, self.o.settings.advertise_host)
        ticket = {
            "one_time_code": code.hex(),
            "project": {
                "id": info["id"],
                "name": info["name"],
                "access_route": info["access_route"],
                "identity": info["identity"],
                "authority": {"identity": info["authority_identity"], "address": info["authority_access_route"]},
            },
        }
        return {
            "ticket": json.dumps(ticket, separators=(",", ":")).encode().hex(),
            "one_time_code": code.hex(),
            "expires_at": expires_at,
            "usage_count": uses,
        }


def _translate(error: BaseException) -> Optional[HttpError]:
    """
    The errors of the store as HTTP answers.
    """
    if isinstance(error, NoFreePorts):
        return HttpError(409, "no_ports", str(error))
    if isinstance(error, Conflict):
        return conflict(str(error))
    if isinstance(error, StoreUnavailable):
        return HttpError(503, "database_unavailable", f"{error} (try again)")
    if isinstance(error, StoreError):
        return HttpError(503, "database_unavailable", str(error))
    return None


def _valid_name(name: str) -> bool:
    return 0 < len(name) <= 64 and all(c.isascii() and (c.isalnum() or c in "-_") for c in name)


def _attributes(body: dict) -> Dict[str, str]:
    """
    The C{attributes} of a request body: an object mapping text to text
    (absent or null: none).
    """
    attributes = body.get("attributes")
    if attributes is None:
        return {}
    if not isinstance(attributes, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()):
        raise bad_request("attributes must map text to text")
    return attributes


def _valid_identifier(text: str) -> bool:
    return len(text) == 65 and text[0] == "P" and all(c in "0123456789abcdef" for c in text[1:])


class Orchestrator(MultiService):
    """
    One Orchestrator instance: the store, the HTTP API, the lease loop
    (L{Leases}) and a runtime per project it serves
    (L{ockamtw.orchestrator.project.ProjectRuntime}).

    @param instance_id: this instance's name in the leases; a new one each
        start by default (a restarted instance is another owner: it waits
        for the leases of its former self to run out, so a project is never
        served twice even if the former self still runs).
    """

    def __init__(self, reactor, settings: Settings, instance_id: Optional[str] = None) -> None:
        MultiService.__init__(self)
        self.reactor = reactor
        self.settings = settings
        self.instance_id = instance_id or f"{socket.gethostname()[:40]}-{uuid.uuid4().hex[:8]}"
        self.store = Store(settings.db, clock=reactor)
        self.sealer: Optional[Sealer] = None
        #: project id -> the runtime serving it here
        self.runtimes: Dict[str, object] = {}
        #: projects being started here
        self.starting: Set[str] = set()
        self.space_names: Dict[str, str] = {}
        self.leases: Optional[Leases] = None
        self.api = Api(self)
        self.url: Optional[str] = None
        #: starts and stops of runtimes, one at a time
        self._transitions = DeferredLock()
        self._refresh_loop: Optional[LoopingCall] = None
        self._refreshing: Optional[Deferred] = None
        #: whether L{stopService} gives up this instance's leases (so that
        #: another instance serves its projects at once); C{False} stops as
        #: a crash would, and the leases run out
        self.give_up_leases = True

    async def refresh_space_names(self) -> None:
        self.space_names = {s["id"]: s["name"] for s in await self.store.spaces()}

    # --- projects: creation and lifecycle ------------------------------------------------------------

    async def create_project(self, space_id: str, name: str, admin: Optional[str]) -> Dict:
        """
        Make a project (its identities, sealed keys and ports) and serve
        it here.
        """
        project = LocalIdentity.create()
        authority = LocalIdentity.create()
        project_id = str(uuid.uuid4())
        row = {
            "id": project_id,
            "space_id": space_id,
            "name": name,
            "admin_identifier": admin,
            "project_port": 0,  # any free ports, chosen when first bound and kept
            "authority_port": 0,
            "project_identity": project.export(),
            "project_secret": self.sealer.seal(project.secret(), f"{project_id}/project"),
            "authority_identity": authority.export(),
            "authority_secret": self.sealer.seal(authority.secret(), f"{project_id}/authority"),
            "state": "ready",
            "created_at": self.store.now(),
            "advertise_host": self.settings.advertise_host,
        }
        await self.store.add_project(row, self.settings.project_ports)
        sent = self.reactor.seconds()
        if project_id in await self.store.claim(self.instance_id, [project_id], self.settings.lease_ttl):
            self.leases.held(project_id, sent)
            await self.serve(row)
        log.info("project {name} ({id}) created on ports {port} and {authority_port}", name=name, id=project_id,
                 port=row["project_port"], authority_port=row["authority_port"])
        return row

    async def serve_by_id(self, project_id: str) -> None:
        row = await self.store.project(project_id)
        if row is None or row["state"] != "ready":
            self.leases.forget(project_id)
            await self.store.release(self.instance_id, [project_id])
            return
        await self.serve(row)

    async def serve(self, row: Dict) -> None:
        """
        Start serving the project of C{row} here (its lease is held).
        """
        from .project import ProjectRuntime

        project_id = row["id"]
        await self._transitions.acquire()
        try:
            if project_id in self.runtimes or not self.running:
                return
            self.starting.add(project_id)
            try:
                runtime = ProjectRuntime(self, row)
                await runtime.start()
            finally:
                self.starting.discard(project_id)
            self.runtimes[project_id] = runtime
        finally:
            self._transitions.release()
        log.info("instance {instance} serves project {name} ({id}) on ports {port} and {authority_port}",
                 instance=self.instance_id, name=row["name"], id=project_id, port=row["project_port"],
                 authority_port=row["authority_port"])
        if self.leases is not None and not self.leases.may_serve(project_id):
            await self.unserve(project_id, "its lease ran out while it started")
        elif self.leases is not None:
            self.leases._arm()

    async def unserve(self, project_id: str, why: str) -> None:
        """
        Stop serving a project here (its ports are closed when this fires).
        """
        await self._transitions.acquire()
        try:
            runtime = self.runtimes.pop(project_id, None)
            if runtime is None:
                return
            await runtime.stop()
        finally:
            self._transitions.release()
        if self.leases is not None:
            self.leases.forget(project_id)
        log.info("instance {instance} stopped serving project {name} ({id}): {why}", instance=self.instance_id,
                 name=runtime.name, id=project_id, why=why)

    async def delete_project(self, row: Dict) -> str:
        """
        Delete a project: at once if it is served here or nowhere
        (C{"deleted"}); else it is marked, and the instance serving it
        stops it and deletes it at its next tick (C{"deleting"}).
        """
        project_id = row["id"]
        owner = await self.store.mark_deleting(project_id)
        if owner is not None and owner != self.instance_id:
            return "deleting"
        await self.unserve(project_id, "deleted")
        await self.store.delete_project(project_id)
        return "deleted"

    async def admins_changed(self) -> None:
        for runtime in list(self.runtimes.values()):
            await runtime.refresh_admins()

    async def member_revoked(self, project_id: str, identifier: str) -> None:
        runtime = self.runtimes.get(project_id)
        if runtime is not None:
            runtime.member_revoked(identifier)

    def _refresh(self) -> Deferred:
        """
        Reload the members of every project served here, in one read
        (revocations made through other instances reach them so).
        """

        async def refresh():
            token = {p: r.writes for p, r in self.runtimes.items()}
            admins, members = await self.store.members_served_by(self.instance_id)
            for project_id, runtime in list(self.runtimes.items()):
                if project_id in token:
                    runtime.apply(admins, members.get(project_id, {}), token[project_id])

        def failed(f):
            if not f.check(StoreError):
                log.failure("refreshing members failed", f)

        d = Deferred.fromCoroutine(refresh())
        d.addErrback(failed)
        self._refreshing = d
        return d

    # --- the service ---------------------------------------------------------------------------------------

    def privilegedStartService(self) -> None:
        """
        Listen for HTTP now: a port that cannot be bound ends the start
        (twistd exits 1 with the reason).
        """
        MultiService.privilegedStartService(self)
        from twisted.internet import endpoints
        from twisted.web.server import Site

        site = Site(self.api.router)
        site.noisy = False
        site.log = lambda request: None
        results: list = []
        try:
            endpoint = endpoints.serverFromString(self.reactor, self.settings.http)
        except (ValueError, TypeError, KeyError) as e:
            raise StartError(f"bad --http endpoint {self.settings.http!r}: {e}") from None
        endpoint.listen(site).addBoth(results.append)
        if not results or isinstance(results[0], Failure):
            reason = results[0].getErrorMessage() if results else "did not complete"
            raise StartError(f"cannot serve HTTP on {self.settings.http}: {reason}")
        self.http_port = results[0]
        host = self.http_port.getHost()
        self.url = f"http://{host.host}:{host.port}"

    def startService(self) -> None:
        if getattr(self, "http_port", None) is None:
            self.privilegedStartService()
        #: fires with this orchestrator once it serves, or fails
        self.ready = Deferred.fromCoroutine(self._start())
        self.ready.addErrback(self._failed)
        MultiService.startService(self)

    async def _start(self) -> "Orchestrator":
        settings = self.settings
        os.makedirs(settings.data, mode=0o700, exist_ok=True)
        await self.store.open()
        if self.store.postgres:
            _warn_ephemeral(settings.project_ports)
        self.sealer = Sealer(await self._secrets_key())
        await self._bootstrap()
        await self.refresh_space_names()
        self.leases = Leases(self, self.reactor, ttl=settings.lease_ttl, tick=settings.tick)
        self.leases.setServiceParent(self)
        await self.leases.first
        self._refresh_loop = LoopingCall(self._refresh)
        self._refresh_loop.clock = self.reactor
        self._refresh_loop.start(settings.refresh, now=False)
        _write_private(os.path.join(settings.data, "http.json"), json.dumps({"url": self.url}) + "\n")
        log.info("orchestrator {instance} serving {url} ({n} projects)", instance=self.instance_id, url=self.url,
                 n=len(self.runtimes))
        return self

    async def _secrets_key(self) -> bytes:
        """
        The key that seals project keys: the database keeps its fingerprint
        (set by the first instance), so an instance given another key file
        (or none, which would make a new key) refuses to start.
        """
        path = self.settings.secrets_key_file
        known = await self.store.meta("secrets_key")
        if known is None:
            key = load_or_create_key(path)
            rows = await self.store.projects()
            if rows:  # a database from before the fingerprint
                Sealer(key).open(rows[0]["project_secret"], f"{rows[0]['id']}/project")
            known = await self.store.set_meta_once("secrets_key", fingerprint(key))
        else:
            try:
                key = load_or_create_key(path, create=False)
            except SecretsError as e:
                raise SecretsError(
                    f"{e}: this database's project keys are sealed with a key file every instance must be given "
                    "(--secrets-key-file, a copy of the first instance's)"
                ) from None
        if fingerprint(key) != known:
            raise SecretsError(
                f"the secrets key file {path} is not the one this database's project keys are sealed with "
                "(every instance must be given the same file)"
            )
        return key

    def _failed(self, f):
        if not f.check(OckamError):
            log.failure("the orchestrator could not start", f)
        self.start_error = f
        return f

    async def _bootstrap(self) -> None:
        """
        At first start (of the first instance on a database): make the
        administrator's token, write it (0600) to DATA/admin.token (how
        `ockam enroll` on this machine finds it) and say so once.
        """
        token = new_token()
        if not await self.store.add_bootstrap_token(token_hash(token)):
            return
        path = os.path.join(self.settings.data, "admin.token")
        _write_private(path, token + "\n")
        log.info("the administrator's token is in {path} (it is shown here once): {token}", path=path, token=token)

    def stopService(self) -> Deferred:
        """
        Stop serving projects (their ports closed), give up their leases
        and leave the instances' list (the others take the projects at
        their next turn), stop HTTP, close the database.
        """

        async def stop():
            if self._refresh_loop is not None and self._refresh_loop.running:
                self._refresh_loop.stop()
            if self._refreshing is not None:
                await self._refreshing
            for project_id in list(self.runtimes):
                await self.unserve(project_id, "the instance stops")
            if self.give_up_leases and self.leases is not None and self.store.pool is not None:
                try:
                    await self.store.leave(self.instance_id)
                except StoreError as e:
                    log.warn("instance {instance}: leases not given up ({reason}); they run out in {ttl} s",
                             instance=self.instance_id, reason=str(e), ttl=self.settings.lease_ttl)
            port, self.http_port = getattr(self, "http_port", None), None
            if port is not None:
                await port.stopListening()
            self.store.close()

        d = maybeDeferred(MultiService.stopService, self)
        d.addCallback(lambda _: Deferred.fromCoroutine(stop()))
        return d


def ephemeral_ports(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> Optional[tuple]:
    """
    The range of ports the system gives outgoing connections, or C{None}
    where it cannot be read.
    """
    try:
        with open(path) as f:
            low, high = (int(x) for x in f.read().split())
        return low, high
    except (OSError, ValueError):
        return None


def _warn_ephemeral(ports, ephemeral=None) -> Optional[str]:
    """
    Several instances take each other's projects over on the projects'
    own ports: a port among those the system gives outgoing connections
    may be taken by one while no instance serves the project (the instance
    taking it over then cannot listen on it).  Say so once at start.
    """
    ephemeral = ephemeral or ephemeral_ports()
    if ephemeral is None:
        return None
    low, high = ephemeral
    if ports is None:
        text = (f"--project-ports 0 gives projects ports among the ephemeral ones ({low}-{high}): with several "
                "instances, choose a range outside them, so that no outgoing connection takes a project's port "
                "while it moves to another instance")
    elif ports[0] <= high and ports[1] >= low:
        text = (f"--project-ports {ports[0]}-{ports[1]} overlaps the ephemeral ports ({low}-{high}): an outgoing "
                "connection may take a project's port while it moves to another instance; choose a range outside "
                "them (or change net.ipv4.ip_local_port_range)")
    else:
        return None
    log.warn("{text}", text=text)
    return text


class StartError(Exception):
    """
    The orchestrator cannot start (a port, a key file, the database).
    """


def _write_private(path: str, text: str) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
