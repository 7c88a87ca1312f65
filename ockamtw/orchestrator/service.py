"""
The Orchestrator service: its store, its HTTP API (/v0), and the runtime of
every project it serves (a project node and a project authority each).

Who may do what on the HTTP API: every endpoint but C{GET /v0/health}
needs a bearer token (C{Authorization: Bearer otw_...}); tokens are the
operator's (admin): the bootstrap token made at first start, and those it
makes (C{POST /v0/tokens}).  Membership and credentials do not go over
HTTP: they go over secure channels to each project's authority.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Dict, Optional

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..errors import OckamError
from ..secure.identity import LocalIdentity, import_identity
from ..secure.errors import IdentityError
from .http import HttpError, Request, Router, bad_request, conflict, not_found
from .secrets import Sealer
from .store import Conflict, Store
from .tokens import new_token, token_hash

log = Logger(namespace="ockamtw.orchestrator")

#: What an enrolling identity signs: this prefix, then the challenge bytes.
ENROLL_CONTEXT = b"ockamtw-enroll-v0:"
#: Seconds a challenge stays valid.
CHALLENGE_TTL = 120.0


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
        self.intervals = intervals


def project_info(row: Dict, advertise_host: str) -> Dict:
    """
    C{project.json} for a project row: the keys and order of Ockam 0.83's
    ProjectInfo (C{ockam project information --output json}).
    """
    project = import_identity(row["project_identity"])
    return {
        "id": row["id"],
        "name": row["name"],
        "identity": project.identifier,
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
        r = self.router = Router(authenticate=self.authenticate)
        r.route("GET", "/v0/health", self.health, auth=False)
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
        r.route("GET", "/v0/projects/{project}/relays", self.relays)

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
        return {"status": "ok", "instance": self.o.instance_id, "projects": len(self.o.runtimes)}

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
        if expires_in is not None and (not isinstance(expires_in, (int, float)) or expires_in <= 0):
            raise bad_request("expires_in must be a positive number of seconds")
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
            "authority_identifier": import_identity(row["authority_identity"]).identifier,
            "users": [],
            "services": [],
            "state": row["state"],
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
        await self.o.delete_project(row)
        return {"project": {"id": row["id"], "name": row["name"]}}

    # --- members and relays ------------------------------------------------------------------------------

    async def members(self, request: Request):
        row = await self._project_row(request.params["project"])
        return await self.store.members(row["id"])

    async def member_add(self, request: Request) -> Dict:
        row = await self._project_row(request.params["project"])
        identifier = request.need("identifier")
        if not _valid_identifier(identifier):
            raise bad_request("identifier must be P followed by 64 lowercase hex characters")
        attributes = request.body.get("attributes") or {}
        if not isinstance(attributes, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()):
            raise bad_request("attributes must map text to text")
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


def _valid_name(name: str) -> bool:
    return 0 < len(name) <= 64 and all(c.isascii() and (c.isalnum() or c in "-_") for c in name)


def _valid_identifier(text: str) -> bool:
    return len(text) == 65 and text[0] == "P" and all(c in "0123456789abcdef" for c in text[1:])


class Orchestrator(MultiService):
    """
    One Orchestrator instance: the store, the HTTP API, and a runtime per
    project (L{ockamtw.orchestrator.project.ProjectRuntime}).
    """

    def __init__(self, reactor, settings: Settings, instance_id: Optional[str] = None) -> None:
        MultiService.__init__(self)
        self.reactor = reactor
        self.settings = settings
        self.instance_id = instance_id or uuid.uuid4().hex[:12]
        self.store = Store(settings.db, clock=reactor)
        self.sealer: Optional[Sealer] = None
        self.runtimes: Dict[str, object] = {}
        self.space_names: Dict[str, str] = {}
        self.api = Api(self)

    async def refresh_space_names(self) -> None:
        self.space_names = {s["id"]: s["name"] for s in await self.store.spaces()}

    # --- projects: creation and lifecycle ------------------------------------------------------------

    async def _free_ports(self):
        if self.settings.project_ports is None:
            return 0, 0  # any free ports, chosen when first bound and kept
        low, high = self.settings.project_ports
        used = await self.store.used_ports()
        free = [p for p in range(low, high + 1) if p not in used]
        if len(free) < 2:
            raise HttpError(409, "no_ports", f"no free ports left in --project-ports {low}-{high}")
        return free[0], free[1]

    async def create_project(self, space_id: str, name: str, admin: Optional[str]) -> Dict:
        project = LocalIdentity.create()
        authority = LocalIdentity.create()
        project_id = str(uuid.uuid4())
        port, authority_port = await self._free_ports()
        row = {
            "id": project_id,
            "space_id": space_id,
            "name": name,
            "admin_identifier": admin,
            "project_port": port,
            "authority_port": authority_port,
            "project_identity": project.export(),
            "project_secret": self.sealer.seal(project.secret(), f"{project_id}/project"),
            "authority_identity": authority.export(),
            "authority_secret": self.sealer.seal(authority.secret(), f"{project_id}/authority"),
            "state": "ready",
            "created_at": self.store.now(),
        }
        try:
            await self.store.add_project(row)
        except Conflict as e:
            raise conflict(str(e)) from None
        await self.start_project(row)
        log.info("project {name} ({id}) created on ports {port} and {authority_port}", name=name, id=project_id,
                 port=port, authority_port=authority_port)
        return row

    async def start_project(self, row: Dict) -> None:
        from .project import ProjectRuntime

        runtime = ProjectRuntime(self, row)
        self.runtimes[row["id"]] = runtime
        await runtime.start()

    async def delete_project(self, row: Dict) -> None:
        runtime = self.runtimes.pop(row["id"], None)
        if runtime is not None:
            await runtime.stop()
        await self.store.delete_project(row["id"])

    async def admins_changed(self) -> None:
        for runtime in self.runtimes.values():
            await runtime.refresh_admins()

    async def member_revoked(self, project_id: str, identifier: str) -> None:
        runtime = self.runtimes.get(project_id)
        if runtime is not None:
            runtime.member_revoked(identifier)

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
        from .secrets import load_or_create_key

        settings = self.settings
        os.makedirs(settings.data, mode=0o700, exist_ok=True)
        self.sealer = Sealer(load_or_create_key(settings.secrets_key_file))
        await self.store.open()
        await self._bootstrap()
        await self.refresh_space_names()
        for row in await self.store.projects():
            await self.start_project(row)
        _write_private(os.path.join(settings.data, "http.json"), json.dumps({"url": self.url}) + "\n")
        log.info("orchestrator {instance} serving {url} ({n} projects)", instance=self.instance_id, url=self.url,
                 n=len(self.runtimes))
        return self

    def _failed(self, f):
        if not f.check(OckamError):
            log.failure("the orchestrator could not start", f)
        self.start_error = f
        return f

    async def _bootstrap(self) -> None:
        """
        At first start: make the administrator's token, write it (0600) to
        DATA/admin.token (how `ockam enroll` on this machine finds it) and
        say so once.
        """
        rows = await self.store.query("SELECT COUNT(*) FROM tokens")
        if rows[0][0]:
            return
        token = new_token()
        await self.store.add_token(token_hash(token), "admin", "bootstrap")
        path = os.path.join(self.settings.data, "admin.token")
        _write_private(path, token + "\n")
        log.info("the administrator's token is in {path} (it is shown here once): {token}", path=path, token=token)

    def stopService(self) -> Deferred:
        async def stop():
            for runtime in list(self.runtimes.values()):
                await runtime.stop()
            self.runtimes.clear()
            port, self.http_port = getattr(self, "http_port", None), None
            if port is not None:
                await port.stopListening()
            self.store.close()

        d = maybeDeferred(MultiService.stopService, self)
        d.addCallback(lambda _: Deferred.fromCoroutine(stop()))
        return d


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
