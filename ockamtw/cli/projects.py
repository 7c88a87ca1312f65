"""
Enrollment, spaces, projects, credentials and authority nodes on
the command line, as Ockam 0.83 names and prints them
(shared/design/orchestrator.md section 4).

  - C{ockam enroll}: this home's identity proves itself to the
    Orchestrator (a signed challenge) and is bound to the token; the space
    and the project C{default} are printed and the project is kept in
    C{projects/default.json}.
  - C{ockam space ...}, C{ockam project create|list|show|information|
    delete|revoke}: the Orchestrator's HTTP API.
  - C{ockam project enroll} (an enroller adds a member, or makes a
    one-time code) and C{ockam project authenticate} (a member redeems a
    code and fetches its credential): over a secure channel to the
    project's authority, pinned to its identity, in a short-lived embedded
    node with this home's identity.
  - C{ockam credential ...}: credentials in the format of the spec's
    section 5, kept under C{credentials/}.
  - C{ockam authority create}: a node running a standalone authority.

(C{ockam policy ...}, a node's ABAC policies, is in L{ockamtw.cli.policies}.)
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

from ..control import state as st
from ..errors import OckamError, RequestTimeout, WireError
from ..project import codec
from ..project.codec import AddMember, CreateToken, Method, OneTimeCode
from ..project.credentials import Credential, authenticate_output, display, verify
from ..project.errors import CredentialError, ProjectInfoError
from ..project.projectinfo import ProjectInfo
from ..project.service import ApiError, call
from ..routing import Route
from ..secure.errors import SecureChannelError
from . import home as h
from .nodes import CLIError
from .orchestrator import client

#: ✔︎ as Ockam prints it (U+2714 U+FE0E).
CHECK = "\u2714\ufe0e"

# --- what Ockam 0.83 prints -----------------------------------------------------------------------


def space_block(space: dict) -> str:
    return "\n".join(
        ["Space", f"  Id: {space['id']}", f"  Name: {space['name']}", f"  Users: {', '.join(space.get('users') or [])}"]
    )


def project_block(project: dict) -> str:
    return "\n".join(
        [
            "Project",
            f"  Id: {project['id']}",
            f"  Name: {project['name']}",
            f"  Access route: {project.get('access_route') or ''}",
            f"  Identity identifier: {project.get('identity') or ''}",
        ]
    )


def information_text(info: ProjectInfo) -> str:
    return "\n".join(
        [
            f"Project ID: {info.id}",
            f"Project identity: {info.identity or 'N/A'}",
            f"Authority address: {info.authority_access_route or 'N/A'}",
            f"Authority identity: {info.authority_identity or 'N/A'}",
        ]
    )


def attributes(pairs: Optional[List[str]]) -> Dict[str, str]:
    """
    C{--attribute K=V} flags as a map: each split at its first C{=}, the
    last of repeated keys wins.
    """
    out: Dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CLIError(f"--attribute: expected KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


# --- this home's identity, projects and an embedded node -------------------------------------------


def identity_name(c, name: Optional[str] = None) -> str:
    """
    The identity to act as: C{name}, else the one this home enrolled,
    else C{default}, else the home's default identity (the first created,
    as Ockam 0.83 has one: C{ockam identity create} names it at random).
    """
    home = c.nodes.home
    name = name or h.enrolled_identity(home)
    if name is None:
        from .identities import default_identity

        name = "default"
        if not os.path.exists(st.identity_path(home, name)):
            name = default_identity(home) or name
    if not st.valid_node_name(name):
        raise CLIError(f"not an identity name: {name!r}")
    return name


def load_identity(c, name: str, create: bool = False):
    """
    The named identity of this home; with C{create}, made (as C{ockam
    identity create NAME} makes it) when missing.
    """
    from ..secure.errors import IdentityError
    from ..secure.identity import LocalIdentity

    home = c.nodes.home
    path = st.identity_path(home, name)
    if not os.path.exists(path):
        if not create:
            raise CLIError(f"no identity named {name!r} (create it with: ockam identity create {name})")
        try:
            st.secure_identities_dir(home)
            identity = LocalIdentity.create()
            identity.save(path)
        except (OSError, IdentityError) as e:
            raise CLIError(f"cannot create identity {name}: {e}") from None
        return identity
    try:
        return LocalIdentity.load(path)
    except IdentityError as e:
        raise CLIError(f"identity {name!r}: {e}") from None


def project_named(c, name: Optional[str] = None, path: Optional[str] = None) -> ProjectInfo:
    """
    A project: the C{project.json} at C{path}, else the one this home
    knows as C{name}, else its default project.
    """
    if path is not None:
        return ProjectInfo.load(path)
    home = c.nodes.home
    if name is None:
        name = h.default_project(home)
        if name is None:
            raise CLIError("this home knows no project: enroll first (ockam enroll), or give --project-path project.json")
    return h.load_project(home, name)


def project_of_route(c, route: str, path: Optional[str]) -> ProjectInfo:
    """
    The project of C{--to /project/NAME} (or C{--project-path}).
    """
    if path is not None:
        return ProjectInfo.load(path)
    parts = route.strip("/").split("/")
    if len(parts) < 2 or parts[0] != "project":
        raise CLIError(f"--to: expected /project/NAME, got {route!r}")
    return project_named(c, parts[1])


async def embedded_node(c, identity=None, projects=()):
    """
    A short-lived node in this process (stopped when the command ends)
    with C{identity} and C{projects}; C{/node/NAME} routes reach this
    home's nodes.
    """
    from ..api import Node

    node = Node(c.reactor, name=f"cli-{os.getpid()}", identity=identity)
    for info in projects:
        try:
            node.add_project(info)
        except ProjectInfoError as e:
            raise CLIError(str(e)) from None
    home = c.nodes.home
    nodes = c.nodes

    def resolver(name):
        address = st.listener_of(home, nodes.require(name))
        if nodes.pid(name) is None:
            raise CLIError(f"node {name} is not running (start it with: ockam node start {name})")
        if not address:
            raise CLIError(f"node {name} has no listener address")
        return address

    node.node_resolver = resolver
    node.startService()
    c._clients.append(_Stopper(node))
    return node


class _Stopper:
    def __init__(self, node) -> None:
        self.node = node

    async def close(self) -> None:
        await self.node.stopService()


async def authority_channel(c, node, info: ProjectInfo, timeout: float = 30.0):
    """
    A secure channel from C{node} to the authority of C{info}, pinned to
    its identity; the encryptor's address.
    """
    try:
        authority = info.authority()
    except ProjectInfoError as e:
        raise CLIError(str(e)) from None
    if info.authority_access_route is None:
        raise CLIError(f"project {info.name} has no authority route")
    try:
        return await node.create_secure_channel(info.authority_access_route, authorized=[authority.identifier],
                                                timeout=timeout)
    except (OckamError, SecureChannelError) as e:
        raise CLIError(f"cannot reach the authority of project {info.name}: {e}") from None


async def authority_call(info: ProjectInfo, node, enc, service: str, body=None, timeout: float = 30.0):
    try:
        return await call(node, Route([enc, service]), Method.POST, "/", body, timeout=timeout)
    except ApiError as e:
        raise CLIError(f"the authority of project {info.name} refused: {e.message}") from None
    except RequestTimeout:
        raise CLIError(f"the authority of project {info.name} did not answer within {timeout:g} s") from None


# --- enroll -------------------------------------------------------------------------------------------------


async def enroll(c) -> None:
    a = c.args
    home = c.nodes.home
    if (a.orchestrator is None) != (a.token is None):
        a.parser.error("--orchestrator and --token go together")
    if a.orchestrator is not None:
        url = a.orchestrator.rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise CLIError(f"--orchestrator: expected an http:// or https:// URL, got {a.orchestrator!r}")
        api = client(c, url, a.token)
        api.given = True
    else:
        api = client(c)
    name = identity_name(c, a.identity)
    identity = load_identity(c, name, create=True)
    result = await api.enroll(identity)
    if a.orchestrator is not None or h.read_orchestrator(home) is None:
        # Named here, or found in the local Orchestrator's data: kept.
        h.write_orchestrator(home, api.base_url, api.token)
    space, project = result["space"], result["project"]
    info = ProjectInfo.from_json(json.dumps(await api.project_information(project["id"])))
    config = h.read_config(home)
    config["enrolled_identity"] = name
    config["lookup"][f"/space/{space['name']}"] = {"id": space["id"]}
    h.write_config(home, config)
    if not c.out.json:
        print(f"\n{space_block(space)}\n", flush=True)
    await readiness(c, identity, info)
    h.save_project(home, info)
    config = h.read_config(home)
    config["default_project"] = info.name
    h.write_config(home, config)
    c.out.emit({"space": space, "project": project, "identity": name}, project_block(project))


async def readiness(c, identity, info: ProjectInfo, seconds: float = 20.0) -> None:
    """
    Ockam's readiness checks of a project, with its lines: a TCP
    connection to the project, a secure channel to it (pinned to its
    identity), a secure channel to its authority (pinned to its identity).
    """
    from twisted.internet import task

    quiet = c.out.json

    def say(text: str, end: str = "") -> None:
        if not quiet:
            print(text, end=end, flush=True)

    node = await embedded_node(c, identity)
    say("Project created!\n")
    if info.identity is None or info.authority_access_route is None or info.authority_identity is None:
        raise CLIError(f"project {info.name} is not ready (it has no identity or no authority)")

    async def attempt(what: str, f, failure: str):
        say(what)
        deadline = c.reactor.seconds() + seconds
        while True:
            try:
                await f()
            except (OckamError, SecureChannelError, CLIError):
                if c.reactor.seconds() > deadline:
                    say("\n")
                    raise CLIError(failure) from None
                say(".")
                await task.deferLater(c.reactor, 0.5, lambda: None)
                continue
            say(f" {CHECK}\n\n")
            return

    async def connect():
        from ..routing import MultiAddr

        hops = MultiAddr.parse(info.access_route).hops
        conn = await node.tcp.connect(f"{hops[0].host}:{hops[0].port}")
        await conn.close()

    async def channel():
        enc = await node.create_secure_channel(info.access_route, authorized=[info.identity], timeout=10)
        node.delete_secure_channel(enc)

    async def authority():
        enc = await authority_channel(c, node, info, timeout=10)
        node.delete_secure_channel(enc)

    await attempt("Establishing connection (this can take a few minutes)...", connect,
                  f"cannot connect to project {info.name} at {info.access_route}")
    await attempt("Establishing secure channel...", channel,
                  f"cannot establish a secure channel to project {info.name}")
    await attempt("Establishing secure channel to authority...", authority,
                  f"cannot establish a secure channel to the authority of project {info.name}")


# --- spaces ----------------------------------------------------------------------------------------------------


async def space_create(c) -> None:
    a = c.args
    space = await client(c).space_create(a.name, a.admins or [])
    c.out.emit(space, space_block(space))


async def space_list(c) -> None:
    from .output import table

    spaces = await client(c).spaces()
    text = table(["Id", "Name", "Users"], [[s["id"], s["name"], ", ".join(s["users"])] for s in spaces])
    c.out.emit(spaces, text if spaces else "No spaces found")


async def space_show(c) -> None:
    space = await client(c).space_show(c.args.name)
    c.out.emit(space, space_block(space))


async def space_delete(c) -> None:
    name = c.args.name
    await client(c).space_delete(name)
    config = h.read_config(c.nodes.home)
    if config["lookup"].pop(f"/space/{name}", None) is not None:
        h.write_config(c.nodes.home, config)
    c.out.emit({"space": {"name": name}}, f"{CHECK}Space with name '{name}' has been deleted.")


# --- projects ----------------------------------------------------------------------------------------------------


async def project_create(c) -> None:
    a = c.args
    api = client(c)
    project = await api.project_create(a.space, a.name, a.services or [])
    info = ProjectInfo.from_json(json.dumps(await api.project_information(project["id"])))
    name = identity_name(c)
    identity = load_identity(c, name, create=True)
    await readiness(c, identity, info)
    h.save_project(c.nodes.home, info)
    c.out.emit(project, project_block(project))


async def project_list(c) -> None:
    from .output import table

    projects = await client(c).projects()
    rows = [[p["id"], p["name"], ", ".join(p.get("users") or []), p.get("space_name") or ""] for p in projects]
    text = table(["Id", "Name", "Users", "Space Name"], rows)
    c.out.emit(projects, text if projects else "No projects found")


async def project_show(c) -> None:
    project = await client(c).project_show(c.args.name)
    c.out.emit(project, project_block(project))


async def project_information(c) -> None:
    """
    C{project.json} of a project (with C{--output json}, exactly as Ockam
    writes it); kept in this home's C{projects/}.
    """
    home = c.nodes.home
    name = c.args.name or h.default_project(home) or "default"
    if h.read_orchestrator(home) is None:
        info = project_named(c, name)  # only what this home knows
    else:
        info = ProjectInfo.from_json(json.dumps(await client(c).project_information(name)))
        h.save_project(home, info)
    if c.out.json:
        print(info.to_json(), end="")
    else:
        print(information_text(info))


async def project_delete(c) -> None:
    a = c.args
    api = client(c)
    project = await api.project_show(a.name)
    if a.space not in (project.get("space_id"), project.get("space_name")):
        raise CLIError(f"project {a.name!r} is not in space {a.space!r} (it is in {project.get('space_name')!r})")
    await api.project_delete(project["id"])
    h.forget_project(c.nodes.home, project["name"])
    c.out.emit({"project": {"name": a.name}}, f"{CHECK}Project with name '{a.name}' has been deleted.")


async def project_enroll(c) -> None:
    """
    The enroller's C{project enroll} of 0.83: with C{--member}, add that
    identity (C{direct_authenticator}); without, make a one-time code
    (C{enrollment_token_issuer}) and print it.
    """
    a = c.args
    attrs = attributes(a.attribute)
    if a.member is not None and (a.expires_in is not None or a.usage_count is not None or a.relay is not None):
        a.parser.error("--expires-in, --usage-count and --relay are for a one-time code (without --member)")
    if a.member is not None and not codec.is_identifier(a.member):
        raise CLIError(f"--member: not an identifier (P + 64 lowercase hex): {a.member!r}")
    info = project_of_route(c, a.to, a.project_path)
    identity = load_identity(c, identity_name(c, a.identity))
    node = await embedded_node(c, identity)
    enc = await authority_channel(c, node, info)
    if a.member is not None:
        await authority_call(info, node, enc, codec.DIRECT_AUTHENTICATOR, AddMember(a.member, attrs),
                             timeout=codec.ENROLL_TIMEOUT)
        c.out.emit({"member": a.member, "attributes": attrs, "project": info.name}, None)
        return
    request = CreateToken(attrs, a.expires_in, a.usage_count)
    if a.relay is not None:
        request = request.with_relay(a.relay)
    resp = await authority_call(info, node, enc, codec.ENROLLMENT_TOKEN_ISSUER, request, timeout=codec.ENROLL_TIMEOUT)
    try:
        code = resp.decode_body(OneTimeCode.decode)
    except WireError as e:
        raise CLIError(f"the authority of project {info.name} answered something that is not a code: {e}") from None
    c.out.emit({"code": code.hex(), "project": info.name, "attributes": dict(request.attributes)}, code.hex())


async def project_authenticate(c) -> None:
    """
    The member's C{project authenticate} of 0.83: redeem C{--token} (if
    given) at the authority, then fetch this identity's credential and
    print it (C{---}, the credential, a blank line, C{---}).
    """
    a = c.args
    code = None
    if a.token is not None:
        try:
            code = OneTimeCode.parse(a.token)
        except WireError as e:
            raise CLIError(f"--token: {e}") from None
    info = project_named(c, path=a.project_path)
    identity = load_identity(c, identity_name(c, a.identity))
    node = await embedded_node(c, identity)
    enc = await authority_channel(c, node, info)
    if code is not None:
        await authority_call(info, node, enc, codec.ENROLLMENT_TOKEN_ACCEPTOR, code)
    resp = await authority_call(info, node, enc, codec.CREDENTIAL_ISSUER)
    try:
        credential = resp.decode_body(Credential.decode)
        data = verify(credential, [info.authority()], identity.identifier, int(c.reactor.seconds()))
    except (WireError, CredentialError) as e:
        raise CLIError(f"the authority of project {info.name} gave a bad credential: {e}") from None
    result = _credential_dict(credential, data)
    result["project"] = info.name
    if c.out.json:
        c.out.emit(result, "")
    else:
        print(authenticate_output(credential), end="")


async def project_revoke(c) -> None:
    a = c.args
    if not codec.is_identifier(a.member):
        raise CLIError(f"--member: not an identifier (P + 64 lowercase hex): {a.member!r}")
    info = project_of_route(c, a.to, a.project_path)
    await client(c).member_revoke(info.id, a.member)
    c.out.emit({"member": a.member, "project": info.name, "revoked": True},
               f"{CHECK}Member {a.member} has been revoked from project '{info.name}'.")


def _credential_dict(credential: Credential, data) -> dict:
    texts = {}
    for k, v in sorted(data.attributes.items()):
        try:
            texts[k] = bytes(v).decode("utf-8")
        except UnicodeDecodeError:
            texts[k] = "**binary**"
    return {
        "credential": credential.hex(),
        "subject": data.subject,
        "issuer": data.issuer,
        "schema": data.schema,
        "created": data.created,
        "expires": data.expires,
        "attributes": texts,
    }


# --- credentials --------------------------------------------------------------------------------------------------


def _issuer(c, text: str):
    """
    The identity of issuer C{text}: an identifier of this home's
    identities or of a known project's authority, or an exported identity
    in hex.
    """
    from ..secure.errors import IdentityError
    from ..secure.identity import Identity, LocalIdentity

    home = c.nodes.home
    if codec.is_identifier(text):
        for name in _identity_names(home):
            try:
                identity = LocalIdentity.load(st.identity_path(home, name))
            except IdentityError:
                continue
            if identity.identifier == text:
                return identity.public()
        for name in h.project_names(home):
            try:
                authority = h.load_project(home, name).authority()
            except (CLIError, ProjectInfoError):
                continue
            if authority.identifier == text:
                return authority
        raise CLIError(
            f"unknown issuer {text}: not an identity of this home nor the authority of a project it knows "
            "(give the issuer's exported identity in hex instead)"
        )
    try:
        return Identity.from_export(bytes.fromhex(text))
    except (ValueError, IdentityError) as e:
        raise CLIError(f"--issuer: neither an identifier nor an exported identity: {e}") from None


def _identity_names(home: str) -> List[str]:
    try:
        return sorted(f[: -len(".json")] for f in os.listdir(st.identities_dir(home)) if f.endswith(".json"))
    except OSError:
        return []


def _credential_text(a) -> str:
    if (a.credential is None) == (a.credential_path is None):
        a.parser.error("give the credential with --credential HEX or --credential-path FILE (one of them)")
    if a.credential is not None:
        return a.credential
    try:
        with open(a.credential_path, "r", encoding="utf-8") as f:
            return f.read(1 << 20)
    except (OSError, UnicodeDecodeError) as e:
        raise CLIError(f"cannot read {a.credential_path}: {getattr(e, 'strerror', None) or e}") from None


def _decode_credential(text: str) -> Credential:
    try:
        return Credential.from_hex("".join(text.split()))
    except WireError as e:
        raise CLIError(f"not a credential (the hex of its CBOR): {e}") from None


def _verified(c, credential: Credential, issuer) -> Optional[str]:
    """
    Why C{credential} does not verify against C{issuer} (0.83's checks,
    the subject taken from the credential itself), or C{None}.
    """
    try:
        data = credential.credential_data()
        verify(credential, [issuer], data.subject, int(c.reactor.seconds()))
    except CredentialError as e:
        return str(e)
    return None


async def credential_issue(c) -> None:
    """
    Issue a credential as one of this home's identities (0.83: no schema,
    the given attributes, 30 days), printed as Ockam displays it or as the
    hex of its CBOR (C{--encoding hex}).
    """
    from ..project.credentials import MAX_CREDENTIAL_VALIDITY, ROOT_LABEL, CredentialData

    a = c.args
    if not codec.is_identifier(a.for_):
        raise CLIError(f"--for: not an identifier (P + 64 lowercase hex): {a.for_!r}")
    identity = load_identity(c, identity_name(c, a.as_))
    now = int(c.reactor.seconds())
    try:
        data = CredentialData(
            subject=a.for_,
            issuer=identity.identifier,
            attributes={k: v.encode("utf-8") for k, v in sorted(attributes(a.attribute).items())},
            created=now,
            expires=now + MAX_CREDENTIAL_VALIDITY,
            schema=None,
            issuer_key_label=ROOT_LABEL,
        ).encode()
    except (WireError, UnicodeEncodeError) as e:
        raise CLIError(f"cannot issue the credential: {e}") from None
    credential = Credential(data, identity.sign(data))
    result = _credential_dict(credential, credential.credential_data())
    if c.out.json:
        c.out.emit(result, "")
    elif a.encoding == "hex":
        print(credential.hex(), end="")
    else:
        print(display(credential), end="")


async def credential_verify(c) -> None:
    a = c.args
    credential = _decode_credential(_credential_text(a))
    problem = _verified(c, credential, _issuer(c, a.issuer))
    if problem is not None:
        raise CLIError(f"the credential is not valid: {problem}")
    c.out.emit({"verified": True}, f"{CHECK} Verified Credential")


async def credential_store(c) -> None:
    a = c.args
    name = a.name or os.urandom(4).hex()
    if not st.valid_node_name(name):
        raise CLIError(f"not a credential name: {name!r}")
    credential = _decode_credential(_credential_text(a))
    try:
        credential.credential_data()
    except CredentialError as e:
        raise CLIError(f"not a credential: {e}") from None
    issuer = _issuer(c, a.issuer)
    if os.path.exists(h.credential_path(c.nodes.home, name)):
        raise CLIError(f"credential {name!r} already exists")
    h.write_credential(c.nodes.home, name, {
        "name": name, "issuer": issuer.identifier, "issuer_identity": issuer.export().hex(),
        "credential": credential.hex(),
    })
    c.out.emit({"name": name, "issuer": issuer.identifier}, f"Credential {name} stored")


def _stored(c, name: str):
    from ..secure.errors import IdentityError
    from ..secure.identity import Identity

    doc = h.read_credential(c.nodes.home, name)
    try:
        credential = Credential.from_hex(doc["credential"])
        issuer = Identity.from_export(bytes.fromhex(doc["issuer_identity"]))
    except (KeyError, TypeError, ValueError, WireError, IdentityError) as e:
        raise CLIError(f"credential {name}: {h.credential_path(c.nodes.home, name)} is damaged ({e})") from None
    problem = _verified(c, credential, issuer)
    info = _credential_dict(credential, credential.credential_data())
    info.update(name=name, verified=problem is None, problem=problem)
    text = f"Credential: {name} {CHECK if problem is None else '✕'}\n{display(credential)}"
    return info, text


async def credential_show(c) -> None:
    info, text = _stored(c, c.args.name)
    c.out.emit(info, text)


async def credential_list(c) -> None:
    shown = [_stored(c, n) for n in h.credential_names(c.nodes.home)]
    c.out.emit([i for i, _ in shown], "\n".join(t for _, t in shown) or None)


# --- authority nodes ---------------------------------------------------------------------------------------------


async def authority_create(c) -> None:
    """
    A node that runs a standalone project authority (0.83's C{ockam
    authority create}); its identity is the authority's.
    """
    from ..project.authority import AuthorityConfig, AuthorityConfigError, parse_trusted_identities, read_trusted_file
    from .text import hostport

    a = c.args
    if (a.trusted_identities is None) == (a.reload_from_trusted_identities_file is None):
        a.parser.error("give exactly one of --trusted-identities or --reload-from-trusted-identities-file")
    try:
        if a.trusted_identities is not None:
            config = AuthorityConfig(a.project_identifier, trusted_identities=parse_trusted_identities(a.trusted_identities),
                                     direct_authentication=not a.no_direct_authentication,
                                     token_enrollment=not a.no_token_enrollment)
        else:
            path = os.path.abspath(a.reload_from_trusted_identities_file)
            read_trusted_file(path)  # say now what is wrong with it
            config = AuthorityConfig(a.project_identifier, trusted_identities_file=path,
                                     direct_authentication=not a.no_direct_authentication,
                                     token_enrollment=not a.no_token_enrollment)
    except AuthorityConfigError as e:
        raise CLIError(str(e)) from None
    listen = hostport(a.tcp_listener_address, "--tcp-listener-address")
    await c.create_node(a.name, listen, extra={"authority": config.to_dict()}, identity=a.identity,
                        foreground=a.foreground, enrolled=False)
