"""
A standalone project authority on an ockamtw node, as C{ockam authority
create} starts one in Ockam 0.83 (C{ockam_api/src/nodes/authority_node}):
the node's identity is the authority's, its C{api} listener accepts every
peer, and these services answer through it (shared/spec/ockam-project-api.md
section 6):

  - C{credential_issuer} (members: C{(= resource.project_id
    subject.project_id)}): a credential for the caller with its attributes
    plus C{project_id};
  - C{direct_authenticator} (enrollers, unless C{direct_authentication} is
    off): add or replace a member;
  - C{enrollment_token_issuer} and C{enrollment_token_acceptor} (unless
    C{token_enrollment} is off): one-time codes, in memory, 128 at most
    (least recently used evicted), single use, 600 s (or the C{expires_in}
    and C{usage_count} the enroller asked for);
  - C{echo} (every node has it).

Pre-trusted identities (C{--trusted-identities}: C{project_id} is added to
each; C{--reload-from-trusted-identities-file}: the file is read again at
each lookup and must hold C{project_id} itself) are consulted before the
members; writes for them are ignored.  A refused request is answered 403
(0.83 dropped it).  Members are kept in L{AuthorityConfig.members}; a change
calls C{on_change}.

L{AuthorityFeature} is the node's feature (L{ockamtw.feature}): it keeps
C{state.json}'s C{authority} (the members with it: a change saves it) and
runs the authority it describes.
"""

from __future__ import annotations

import collections
import json
from typing import Callable, Dict, Mapping, Optional

from twisted.logger import Logger

from ..abac import PolicyAccess, default_policy, enroller_policy
from ..access import CHANNEL_PEERS
from ..feature import Feature
from . import codec
from .codec import AddMember, CreateToken, OneTimeCode, Status, is_identifier
from .credentials import MAX_CREDENTIAL_VALIDITY, issue
from .service import ApiError, ApiService, Answering

log = Logger(namespace="ockamtw.project.authority")

#: 0.83's one-time code table: in memory, this many codes at most.
TOKEN_TABLE_SIZE = codec.TOKEN_TABLE_SIZE
#: Seconds a one-time code stays valid (0.83: refused when strictly older).
TOKEN_LIFETIME = codec.TOKEN_LIFETIME


class AuthorityConfigError(ValueError):
    """
    An authority configuration that cannot be used (one line).
    """


def parse_trusted_identities(text: str) -> Dict[str, Dict[str, str]]:
    """
    C{{"P...": {"name": "value", ...}, ...}} as 0.83's C{--trusted-identities}
    takes it.

    @raise AuthorityConfigError: when it is not that.
    """
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise AuthorityConfigError(f"cannot parse the trusted identities: {e}") from None
    return check_trusted(doc)


def check_trusted(doc) -> Dict[str, Dict[str, str]]:
    if not isinstance(doc, dict):
        raise AuthorityConfigError("the trusted identities are a JSON object {identifier: {attribute: value}}")
    out = {}
    for identifier, attributes in doc.items():
        if not is_identifier(identifier):
            raise AuthorityConfigError(f"trusted identities: {identifier!r} is not an identifier (P + 64 hex)")
        if not isinstance(attributes, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()
        ):
            raise AuthorityConfigError(f"trusted identities: the attributes of {identifier} must map text to text")
        out[identifier] = dict(attributes)
    return out


def read_trusted_file(path: str) -> Dict[str, Dict[str, str]]:
    try:
        with open(path, "rb") as f:
            raw = f.read(1 << 20)
    except OSError as e:
        raise AuthorityConfigError(f"cannot read the trusted identities file {path}: {e.strerror or e}") from None
    try:
        return parse_trusted_identities(raw.decode("utf-8"))
    except (AuthorityConfigError, UnicodeDecodeError) as e:
        raise AuthorityConfigError(f"{path}: {e}") from None


class AuthorityConfig:
    """
    What an authority node is (the C{authority} object of its
    C{state.json}): C{project_identifier}, the trusted identities (fixed,
    or a file), whether direct authentication and token enrollment are on,
    and its members (identifier -> {attributes, attested_by, added}).
    """

    KEYS = ("project_identifier", "trusted_identities", "trusted_identities_file", "direct_authentication",
            "token_enrollment", "members")

    def __init__(self, project_identifier: str, trusted_identities: Optional[Dict[str, Dict[str, str]]] = None,
                 trusted_identities_file: Optional[str] = None, direct_authentication: bool = True,
                 token_enrollment: bool = True, members: Optional[Dict[str, dict]] = None) -> None:
        if not isinstance(project_identifier, str) or not project_identifier:
            raise AuthorityConfigError("project_identifier: expected a non-empty string")
        if (trusted_identities is None) == (trusted_identities_file is None):
            raise AuthorityConfigError(
                "exactly one of trusted_identities or trusted_identities_file is needed "
                "(--trusted-identities or --reload-from-trusted-identities-file)"
            )
        self.project_identifier = project_identifier
        self.trusted_identities = None if trusted_identities is None else check_trusted(trusted_identities)
        self.trusted_identities_file = trusted_identities_file
        self.direct_authentication = bool(direct_authentication)
        self.token_enrollment = bool(token_enrollment)
        self.members: Dict[str, dict] = {}
        for identifier, entry in (members or {}).items():
            if not is_identifier(identifier) or not isinstance(entry, dict):
                raise AuthorityConfigError(f"members: {identifier!r} is not an identifier with an entry")
            attributes = entry.get("attributes")
            if not isinstance(attributes, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()
            ):
                raise AuthorityConfigError(f"members.{identifier}.attributes: expected text to text")
            self.members[identifier] = {
                "attributes": dict(attributes),
                "attested_by": entry.get("attested_by"),
                "added": entry.get("added"),
            }

    @classmethod
    def from_dict(cls, doc) -> "AuthorityConfig":
        if not isinstance(doc, dict):
            raise AuthorityConfigError("expected an object")
        return cls(
            doc.get("project_identifier"),
            doc.get("trusted_identities"),
            doc.get("trusted_identities_file"),
            doc.get("direct_authentication", True),
            doc.get("token_enrollment", True),
            doc.get("members") or {},
        )

    def to_dict(self) -> dict:
        return {
            "project_identifier": self.project_identifier,
            "trusted_identities": self.trusted_identities,
            "trusted_identities_file": self.trusted_identities_file,
            "direct_authentication": self.direct_authentication,
            "token_enrollment": self.token_enrollment,
            "members": {i: dict(e) for i, e in sorted(self.members.items())},
        }

    def pre_trusted(self) -> Dict[str, Dict[str, str]]:
        """
        The pre-trusted identities now: the fixed ones with C{project_id}
        added, or the file's as it is (read again each time; a file that
        cannot be read trusts nobody, and says so in the log).
        """
        if self.trusted_identities is not None:
            return {i: dict(a, project_id=self.project_identifier) for i, a in self.trusted_identities.items()}
        try:
            return read_trusted_file(self.trusted_identities_file)
        except AuthorityConfigError as e:
            log.error("authority: {problem}", problem=str(e))
            return {}


class Authority:
    """
    The services of an authority on C{node} (see the module docstring).

    @param on_change: called after a member was written (to persist
        L{AuthorityConfig.members}).
    """

    def __init__(self, node, config: AuthorityConfig, on_change: Optional[Callable[[], None]] = None,
                 credential_ttl: int = MAX_CREDENTIAL_VALIDITY) -> None:
        self.node = node
        self.config = config
        self.on_change = on_change
        self.credential_ttl = credential_ttl
        #: code -> (attributes, created by, created at, expires at, uses left), least recently used first
        self.tokens: "collections.OrderedDict[bytes, list]" = collections.OrderedDict()
        project_id = config.project_identifier
        self.members_only = PolicyAccess(default_policy(), self.attributes_of, resource=codec.CREDENTIAL_ISSUER,
                                         project_id=project_id, stored=False)
        self.enrollers_only = PolicyAccess(enroller_policy(), self.attributes_of,
                                           resource=codec.DIRECT_AUTHENTICATOR, project_id=project_id, stored=False)

    @property
    def identifier(self) -> str:
        return self.node.identity.identifier

    # --- the store --------------------------------------------------------------------------

    def attributes_of(self, identifier: str) -> Optional[Dict[str, str]]:
        fixed = self.config.pre_trusted().get(identifier)
        if fixed is not None:
            return fixed
        entry = self.config.members.get(identifier)
        return None if entry is None else dict(entry["attributes"])

    def put_member(self, identifier: str, attributes: Mapping[str, str], attested_by: Optional[str]) -> None:
        """
        Write (replace) a member's entry, with C{project_id}; an entry for a
        pre-trusted identity is ignored (0.83 reports success all the same).
        """
        if identifier in self.config.pre_trusted():
            return
        attributes = dict(attributes, project_id=self.config.project_identifier)
        self.config.members[identifier] = {
            "attributes": attributes,
            "attested_by": attested_by,
            "added": int(self.node.reactor.seconds()),
        }
        if self.on_change is not None:
            self.on_change()

    # --- one-time codes ---------------------------------------------------------------------

    def new_token(self, attributes: Mapping[str, str], created_by: str, expires_in: Optional[int],
                  usage_count: Optional[int]) -> OneTimeCode:
        code = OneTimeCode.random()
        now = self.node.reactor.seconds()
        self.tokens[code.code] = [dict(attributes), created_by, now, now + (expires_in or TOKEN_LIFETIME),
                                  usage_count or 1]
        while len(self.tokens) > TOKEN_TABLE_SIZE:
            self.tokens.popitem(last=False)
        return code

    def redeem(self, code: OneTimeCode, identifier: str) -> None:
        entry = self.tokens.get(code.code)
        if entry is None:
            raise ApiError(Status.FORBIDDEN, codec.UNKNOWN_TOKEN)
        attributes, created_by, _, expires_at, uses = entry
        if uses <= 1:
            del self.tokens[code.code]  # taken before any other check, as 0.83 does
        else:
            entry[4] = uses - 1
            self.tokens.move_to_end(code.code)
        if self.node.reactor.seconds() > expires_at:
            self.tokens.pop(code.code, None)
            raise ApiError(Status.FORBIDDEN, codec.EXPIRED_TOKEN)
        self.put_member(identifier, attributes, created_by)

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        node = self.node
        node.start_worker(codec.CREDENTIAL_ISSUER, _Issuer(self), access=Answering(node, self.members_only))
        if self.config.direct_authentication:
            node.start_worker(codec.DIRECT_AUTHENTICATOR, _Direct(self), access=Answering(node, self.enrollers_only))
        if self.config.token_enrollment:
            node.start_worker(codec.ENROLLMENT_TOKEN_ISSUER, _TokenIssuer(self),
                              access=Answering(node, self.enrollers_only))
            node.start_worker(codec.ENROLLMENT_TOKEN_ACCEPTOR, _TokenAcceptor(self), access=CHANNEL_PEERS)
        log.info("authority of project {project} on node {node} ({identifier})",
                 project=self.config.project_identifier, node=node.name, identifier=self.identifier)

    def services(self):
        names = [codec.CREDENTIAL_ISSUER]
        if self.config.direct_authentication:
            names.append(codec.DIRECT_AUTHENTICATOR)
        if self.config.token_enrollment:
            names += [codec.ENROLLMENT_TOKEN_ISSUER, codec.ENROLLMENT_TOKEN_ACCEPTOR]
        return names

    def to_dict(self) -> dict:
        return {
            "project_identifier": self.config.project_identifier,
            "identifier": self.identifier,
            "services": self.services(),
            "members": len(self.config.members),
            "trusted_identities_file": self.config.trusted_identities_file,
        }


class _Service(ApiService):
    def __init__(self, authority: Authority) -> None:
        self.authority = authority


class _Issuer(_Service):
    paths = ("/", "/credential")

    async def handle(self, req, identity, message):
        a = self.authority
        attributes = a.attributes_of(identity)
        if attributes is None:
            raise ApiError(Status.FORBIDDEN, codec.UNAUTHORIZED_MEMBER)
        return issue(a.node.identity, identity, attributes, a.config.project_identifier,
                     int(a.node.reactor.seconds()), ttl=int(a.credential_ttl))


class _Direct(_Service):
    paths = ("/", "/members")

    async def handle(self, req, identity, message):
        body = req.decode_body(AddMember.decode)
        self.authority.put_member(body.member, dict(body.attributes), identity)
        return None


class _TokenIssuer(_Service):
    paths = ("/", "/tokens")

    async def handle(self, req, identity, message):
        body = req.decode_body(CreateToken.decode)
        return self.authority.new_token(dict(body.attributes), identity, body.expires_in, body.usage_count)


class _TokenAcceptor(_Service):
    paths = ("/", "/credential")

    async def handle(self, req, identity, message):
        code = req.decode_body(OneTimeCode.decode)
        self.authority.redeem(code, identity)
        return None


class AuthorityFeature(Feature):
    """
    The authority a node runs, if its state has one (C{ockam authority
    create}): C{state.json}'s C{authority}.

    @ivar authority: the running L{Authority}, or C{None}.
    """

    name = "authority"
    state_keys = ("authority",)

    def __init__(self, node) -> None:
        Feature.__init__(self, node)
        self.authority: Optional[Authority] = None

    def save(self) -> dict:
        if self.authority is None:
            return {}
        return {"authority": self.authority.config.to_dict()}

    def restore(self, state: dict) -> None:
        doc = state.get("authority")
        if doc is not None and self.authority is None:
            self.authority = Authority(self.node, AuthorityConfig.from_dict(doc), on_change=self.changed)
            self.authority.start()
