"""
C{project.json} (section 11 of C{shared/spec/ockam-project-api.md}): what
C{ockam project information --output json} prints and C{ockam node create
--project} reads.

L{ProjectInfo.to_json} writes exactly what serde_json's pretty printer
writes for 0.83's C{ProjectInfo} (keys in field order, two-space indent,
non-ASCII unescaped, C{null} for absent optional fields except
C{okta_config}, which is left out), plus the newline of C{println!}.

L{ProjectInfo.from_json} accepts what Rust accepts (keys in any order,
optional keys missing or C{null}, unknown keys ignored) and is strict about
the rest: invalid JSON, a repeated key, a missing or mistyped field, an
identity that is not an identifier, a route that is not a MultiAddr, or an
authority that is not hex all raise L{ProjectInfoError} with one line
naming the field.  L{ProjectInfo.require_complete} adds what C{node create
--project} refuses: a missing project identity, authority route or
authority, or an authority change history that does not verify.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from ..errors import WireError
from ..routing import MultiAddr
from ..secure.identity import Identity, IdentityError
from .codec import is_identifier
from .errors import ProjectInfoError

__all__ = ["OktaConfig", "ProjectInfo", "MAX_PROJECT_JSON"]

#: A project.json larger than this is refused unread.
MAX_PROJECT_JSON = 1 << 20
_HEX_RE = re.compile(r"(?:[0-9a-fA-F]{2})+\Z")


def _where(field: str) -> str:
    return f"project.json: {field!r}"


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def _string(doc: Dict[str, Any], field: str, required: bool, prefix: str = "") -> Optional[str]:
    name = prefix + field
    if field not in doc or doc[field] is None:
        if required:
            raise ProjectInfoError(f"{_where(name)} is missing" if field not in doc else f"{_where(name)} is null; it must be a string")
        return None
    value = doc[field]
    if not isinstance(value, str):
        raise ProjectInfoError(f"{_where(name)} must be a string{'' if required else ' or null'}, not {_shown(value)}")
    return value


def _route(value: Optional[str], field: str) -> Optional[str]:
    if value is None:
        return None
    try:
        MultiAddr.parse(value)
    except WireError as e:
        raise ProjectInfoError(f"{_where(field)} is not a MultiAddr: {e}") from None
    return value


class OktaConfig(NamedTuple):
    """
    The Okta add-on's settings (kept so that a file that has them is
    written back unchanged).
    """

    tenant_base_url: str
    certificate: str
    client_id: str
    attributes: Tuple[str, ...] = ()

    def to_dict(self) -> Dict[str, Any]:
        return {
            "tenant_base_url": self.tenant_base_url,
            "certificate": self.certificate,
            "client_id": self.client_id,
            "attributes": list(self.attributes),
        }

    @classmethod
    def from_dict(cls, doc: Any) -> "OktaConfig":
        if not isinstance(doc, dict):
            raise ProjectInfoError(f"{_where('okta_config')} must be an object or null, not {_shown(doc)}")
        p = "okta_config."
        values = [_string(doc, f, True, p) for f in ("tenant_base_url", "certificate", "client_id")]
        if "attributes" not in doc:
            raise ProjectInfoError(f"{_where(p + 'attributes')} is missing")
        attrs = doc["attributes"]
        if not isinstance(attrs, list) or not all(isinstance(a, str) for a in attrs):
            raise ProjectInfoError(f"{_where(p + 'attributes')} must be a list of strings, not {_shown(attrs)}")
        return cls(*values, tuple(attrs))


def _no_duplicates(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ProjectInfoError(f"{_where(k)} appears twice")
        out[k] = v
    return out


class ProjectInfo(NamedTuple):
    """
    One project as C{project.json} describes it.

    @ivar id: the project id (also the C{project_id} attribute).
    @ivar name: the C{NAME} of C{/project/NAME}.
    @ivar identity: the project node's identifier, or C{None}.
    @ivar access_route: the MultiAddr of the project node's listener.
    @ivar authority_access_route: the MultiAddr of the authority's
        listener, or C{None}.
    @ivar authority_identity: the hex of the authority's exported change
        history (not its identifier), or C{None}.
    @ivar okta_config: L{OktaConfig} or C{None} (then not written).
    """

    id: str
    name: str
    identity: Optional[str]
    access_route: str
    authority_access_route: Optional[str]
    authority_identity: Optional[str]
    okta_config: Optional[OktaConfig] = None

    @classmethod
    def build(
        cls,
        id: str,
        name: str,
        identity: Optional[str],
        access_route: str,
        authority: Optional[Identity],
        authority_access_route: Optional[str],
    ) -> "ProjectInfo":
        """
        A ProjectInfo from an authority L{Identity}, checked as
        L{from_json} checks a file.
        """
        info = cls(
            id,
            name,
            identity,
            access_route,
            authority_access_route,
            None if authority is None else authority.export().hex(),
        )
        return cls.from_json(info.to_json())

    # --- writing -----------------------------------------------------------

    def to_dict(self) -> Dict[str, Any]:
        doc: Dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "identity": self.identity,
            "access_route": self.access_route,
            "authority_access_route": self.authority_access_route,
            "authority_identity": self.authority_identity,
        }
        if self.okta_config is not None:
            doc["okta_config"] = self.okta_config.to_dict()
        return doc

    def to_json(self) -> str:
        """
        C{serde_json::to_string_pretty} of the project, plus a newline.

        @raise ProjectInfoError: for a value that is not a string (or
            C{None} where allowed), or text that is not valid Unicode.
        """
        doc = self.to_dict()
        for field in ("id", "name", "access_route"):
            if not isinstance(doc[field], str):
                raise ProjectInfoError(f"{_where(field)} must be a string, not {doc[field]!r}")
        for field in ("identity", "authority_access_route", "authority_identity"):
            if doc[field] is not None and not isinstance(doc[field], str):
                raise ProjectInfoError(f"{_where(field)} must be a string or None, not {doc[field]!r}")
        text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ProjectInfoError("project.json: a value is not valid Unicode (lone surrogate)") from None
        return text

    # --- reading -----------------------------------------------------------

    @classmethod
    def from_json(cls, text) -> "ProjectInfo":
        """
        Read C{project.json} text (C{str}, or UTF-8 C{bytes}).

        @raise ProjectInfoError: see the module docstring.
        """
        if isinstance(text, (bytes, bytearray, memoryview)):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError as e:
                raise ProjectInfoError(f"project.json is not UTF-8: {e.reason} at byte {e.start}") from None
        if not isinstance(text, str):
            raise ProjectInfoError(f"project.json is text, not {type(text).__name__}")
        try:
            doc = json.loads(text, object_pairs_hook=_no_duplicates)
        except json.JSONDecodeError as e:
            raise ProjectInfoError(f"project.json is not JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
        except RecursionError:
            raise ProjectInfoError("project.json is nested too deeply") from None
        if not isinstance(doc, dict):
            raise ProjectInfoError(f"project.json must hold a JSON object, not {_shown(doc)}")
        id_ = _string(doc, "id", True)
        name = _string(doc, "name", True)
        if name == "" or "/" in name:
            raise ProjectInfoError(f"{_where('name')} must be a non-empty name without '/', not {_shown(name)}")
        identity = _string(doc, "identity", False)
        if identity is not None and not is_identifier(identity):
            raise ProjectInfoError(
                f"{_where('identity')} must be an identifier ('P' + 64 lowercase hex), not {_shown(identity)}"
            )
        access_route = _route(_string(doc, "access_route", True), "access_route")
        authority_route = _route(_string(doc, "authority_access_route", False), "authority_access_route")
        authority = _string(doc, "authority_identity", False)
        if authority is not None and not _HEX_RE.match(authority):
            raise ProjectInfoError(
                f"{_where('authority_identity')} must be the hex of the authority's change history, "
                f"not {_shown(authority)}"
            )
        okta = doc.get("okta_config")
        return cls(
            id_,
            name,
            identity,
            access_route,
            authority_route,
            authority,
            None if okta is None else OktaConfig.from_dict(okta),
        )

    @classmethod
    def load(cls, path: str) -> "ProjectInfo":
        """
        Read a C{project.json} file.

        @raise ProjectInfoError: when it cannot be read or is not valid;
            the message names the file.
        """
        path = os.fspath(path)
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_PROJECT_JSON + 1)
        except OSError as e:
            raise ProjectInfoError(f"cannot read {path}: {e.strerror or e}") from None
        if len(raw) > MAX_PROJECT_JSON:
            raise ProjectInfoError(f"{path} is larger than {MAX_PROJECT_JSON} bytes")
        try:
            return cls.from_json(raw)
        except ProjectInfoError as e:
            raise ProjectInfoError(f"{path}: {e}") from None

    # --- use ---------------------------------------------------------------

    def authority(self) -> Identity:
        """
        The authority's identity, imported and verified.

        @raise ProjectInfoError: when absent or it does not verify.
        """
        if self.authority_identity is None:
            raise ProjectInfoError(f"{_where('authority_identity')} is null: the project has no authority")
        try:
            return Identity.from_export(bytes.fromhex(self.authority_identity))
        except (ValueError, IdentityError) as e:
            raise ProjectInfoError(f"{_where('authority_identity')} does not verify: {e}") from None

    def require_complete(self) -> Identity:
        """
        Check what C{node create --project} needs: the project identity,
        the authority route and a verifying authority.

        @return: the authority's L{Identity}.
        @raise ProjectInfoError: naming the first missing field.
        """
        for field in ("identity", "authority_access_route", "authority_identity"):
            if getattr(self, field) is None:
                raise ProjectInfoError(f"{_where(field)} is null: the project is not ready")
        return self.authority()
