"""
Ockam 0.83 credentials (section 5 of C{shared/spec/ockam-project-api.md}):
their bytes, issuing, verifying and display.

  - L{CredentialData}: C{map {1: schema?, 2: {1: {name => bytes}}, 3:
    subject, 4: issuer, 5: issuer_key_label, 6: created, 7: expires}}.
  - L{Credential}: C{map {1: data (the exact CBOR of a CredentialData),
    2: signature}}; also as hex (JSON files) and as BARE data (serde's
    binary form).
  - L{issue}: what the authority signs (5.3); Ed25519 signatures are
    deterministic, so the bytes equal Rust's.
  - L{verify}: the six checks of 5.4, in order, with Ockam's error kinds
    (L{InvalidCredentialFormat}, L{UnknownAuthority},
    L{CredentialVerificationFailed} and its reason).
  - L{display} and L{authenticate_output}: what C{ockam project
    authenticate} prints (5.5, 10).

Nothing here needs Twisted.
"""

from __future__ import annotations

import datetime
import unicodedata
from typing import Any, Dict, Iterable, Mapping, NamedTuple, Optional, Union

from ..errors import WireError
from ..secure.identity import ROOT_LABEL, Identity, IdentityError, LocalIdentity
from ..wire import encode_data, read_uvarint
from .cbor import U64_MAX, CborReader, decode_whole, dumps, read_struct
from .codec import check_identifier, read_identifier
from .errors import (
    AuthorityListError,
    CredentialIssueError,
    CredentialVerificationFailed,
    InvalidCredentialFormat,
    UnknownAuthority,
)

__all__ = [
    "PROJECT_MEMBER_SCHEMA",
    "MAX_CREDENTIAL_VALIDITY",
    "PROJECT_ID",
    "CredentialData",
    "Credential",
    "issue",
    "verify",
    "display",
    "authenticate_output",
    "format_timestamp",
    "rust_debug_str",
]

#: The schema of project member credentials.
PROJECT_MEMBER_SCHEMA = 1
#: 30 days: the default validity, and the longest the 0.83 builder issues.
MAX_CREDENTIAL_VALIDITY = 30 * 24 * 3600
#: The attribute the authority always sets to its project id.
PROJECT_ID = "project_id"


def _read_u64(r: CborReader, what: str) -> int:
    return r.u64(what)


def _read_text(r: CborReader, what: str) -> str:
    return r.text(what)


def _read_attributes(r: CborReader, what: str) -> Dict[str, bytes]:
    def read_map(r: CborReader, what: str) -> Dict[str, bytes]:
        n = r.map_len(what)
        out: Dict[str, bytes] = {}
        for _ in r.entries(n):
            k = r.text(f"an attribute name in {what}")
            out[k] = r.bytestring(f"the value of attribute {k!r}")
        return {k: out[k] for k in sorted(out)}

    return read_struct(r, what, ((1, "attrs", read_map, True),))["attrs"]


def _attribute_bytes(value: Union[bytes, str], name: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise WireError(f"attribute {name!r} must be bytes or text, not {type(value).__name__}")


def _check_timestamp(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= U64_MAX:
        raise WireError(f"{what} must be Unix seconds (an integer 0 to 2**64-1), not {value!r}")
    return value


class CredentialData(NamedTuple):
    """
    What a credential says.  C{attributes} maps names to bytes, sorted by
    name (as Rust's C{BTreeMap}); C{schema} is C{None} when absent.
    """

    subject: str
    issuer: str
    attributes: Mapping[str, bytes]
    created: int
    expires: int
    schema: Optional[int] = PROJECT_MEMBER_SCHEMA
    issuer_key_label: str = ROOT_LABEL

    def encode(self) -> bytes:
        """
        The CBOR minicbor writes (these are the signed bytes).

        @raise WireError: for a field of the wrong type or range.
        """
        if not isinstance(self.attributes, Mapping):
            raise WireError(f"credential attributes must be a mapping, not {type(self.attributes).__name__}")
        attrs = {}
        for k, v in self.attributes.items():
            if not isinstance(k, str):
                raise WireError(f"an attribute name must be text, not {k!r}")
            attrs[k] = _attribute_bytes(v, k)
        m: Dict[int, Any] = {}
        if self.schema is not None:
            m[1] = _check_timestamp(self.schema, "credential schema")
        m[2] = {1: {k: attrs[k] for k in sorted(attrs)}}
        m[3] = check_identifier(self.subject, "credential subject")
        m[4] = check_identifier(self.issuer, "credential issuer")
        if not isinstance(self.issuer_key_label, str):
            raise WireError(f"issuer key label must be text, not {self.issuer_key_label!r}")
        m[5] = self.issuer_key_label
        m[6] = _check_timestamp(self.created, "credential created")
        m[7] = _check_timestamp(self.expires, "credential expires")
        return dumps(m)

    @classmethod
    def read(cls, r: CborReader) -> "CredentialData":
        f = read_struct(
            r,
            "CredentialData",
            (
                (1, "schema", _read_u64, False),
                (2, "attributes", _read_attributes, True),
                (3, "subject", read_identifier, True),
                (4, "issuer", read_identifier, True),
                (5, "issuer_key_label", _read_text, True),
                (6, "created", _read_u64, True),
                (7, "expires", _read_u64, True),
                # 8 (a type marker, always None) is skipped like any unknown key
            ),
        )
        return cls(
            f["subject"],
            f["issuer"],
            f["attributes"],
            f["created"],
            f["expires"],
            f.get("schema"),
            f["issuer_key_label"],
        )

    @classmethod
    def decode(cls, data: bytes) -> "CredentialData":
        """
        @raise WireError: when C{data} is not exactly one CredentialData.
        """
        return decode_whole(data, "CredentialData", cls.read)

    def attribute_text(self, name: str) -> Optional[str]:
        """
        An attribute as text (C{None} when absent or not UTF-8).
        """
        value = self.attributes.get(name)
        if value is None:
            return None
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None

    def display(self) -> str:
        """
        Rust's C{Display} of a CredentialData (5.5, without the signature).
        """
        lines = []
        if self.schema is not None:
            lines.append(f"Schema:     {self.schema}\n")
        lines.append(f"Subject:    {self.subject}\n")
        lines.append(f"Issuer:     {self.issuer} ({self.issuer_key_label})\n")
        lines.append(f"Created:    {format_timestamp(self.created)}\n")
        lines.append(f"Expires:    {format_timestamp(self.expires)}\n")
        entries = []
        for k in sorted(self.attributes):
            try:
                shown = bytes(self.attributes[k]).decode("utf-8")
            except UnicodeDecodeError:
                shown = "**binary**"
            entries.append(f"{rust_debug_str(k)}: {rust_debug_str(shown)}")
        lines.append("Attributes: {" + ", ".join(entries) + "}\n")
        return "".join(lines)


class Credential(NamedTuple):
    """
    A credential as it travels: the CBOR of its L{CredentialData} (exactly
    the signed bytes) and the signature.
    """

    data: bytes
    signature: bytes

    def encode(self) -> bytes:
        for name in ("data", "signature"):
            if not isinstance(getattr(self, name), (bytes, bytearray, memoryview)):
                raise WireError(f"credential {name} must be bytes, not {type(getattr(self, name)).__name__}")
        return dumps({1: bytes(self.data), 2: bytes(self.signature)})

    @classmethod
    def read(cls, r: CborReader) -> "Credential":
        def read_bytes(r: CborReader, what: str) -> bytes:
            return r.bytestring(what)

        f = read_struct(
            r,
            "Credential",
            ((1, "data", read_bytes, True), (2, "signature", read_bytes, True)),
        )
        return cls(f["data"], f["signature"])

    @classmethod
    def decode(cls, data: bytes) -> "Credential":
        """
        @raise WireError: when C{data} is not exactly one Credential map.
        """
        return decode_whole(data, "Credential", cls.read)

    # the other two forms of serde ---------------------------------------------

    def hex(self) -> str:
        """
        The hex of the CBOR (how JSON files hold a credential).
        """
        return self.encode().hex()

    @classmethod
    def from_hex(cls, text: str) -> "Credential":
        try:
            raw = bytes.fromhex(text)
        except (TypeError, ValueError):
            raise WireError("a credential in hex is an even number of hex digits") from None
        return cls.decode(raw)

    def to_bare(self) -> bytes:
        """
        serde's binary form (BARE data of the CBOR).
        """
        return encode_data(self.encode())

    @classmethod
    def from_bare(cls, data: bytes) -> "Credential":
        data = bytes(data)
        n, pos = read_uvarint(data, 0, len(data))
        if pos + n != len(data):
            raise WireError(f"BARE credential declares {n} bytes but {len(data) - pos} follow")
        return cls.decode(data[pos:])

    # ---------------------------------------------------------------------------

    def credential_data(self) -> CredentialData:
        """
        The decoded C{data} (not verified).

        @raise InvalidCredentialFormat: when it does not decode.
        """
        try:
            return CredentialData.decode(self.data)
        except WireError as e:
            raise InvalidCredentialFormat(f"credential data does not decode: {e}") from None

    def display(self) -> str:
        """
        Rust's C{Display} of a Credential: the data's, then C{Signature:}.
        """
        return self.credential_data().display() + f"Signature:  {bytes(self.signature).hex()}\n"


def _as_credential(credential: Union[Credential, bytes]) -> Credential:
    if isinstance(credential, Credential):
        return credential
    if isinstance(credential, (bytes, bytearray, memoryview)):
        try:
            return Credential.decode(bytes(credential))
        except WireError as e:
            raise InvalidCredentialFormat(f"not a credential: {e}") from None
    raise InvalidCredentialFormat(f"a credential is a Credential or its CBOR, not {type(credential).__name__}")


def _whole_seconds(now: Any, what: str = "now") -> int:
    if isinstance(now, bool) or not isinstance(now, (int, float)):
        raise WireError(f"{what} must be Unix seconds, not {now!r}")
    seconds = int(now // 1)
    if not 0 <= seconds <= U64_MAX:
        raise WireError(f"{what} must be Unix seconds (0 to 2**64-1), not {now!r}")
    return seconds


def issue(
    authority: LocalIdentity,
    subject: str,
    attributes: Mapping[str, Union[bytes, str]],
    project_id: str,
    now: Union[int, float],
    ttl: int = MAX_CREDENTIAL_VALIDITY,
    schema: Optional[int] = PROJECT_MEMBER_SCHEMA,
) -> Credential:
    """
    The credential an authority issues (5.3): C{attributes} (text is
    written as UTF-8), then C{project_id} (overriding any given value);
    subject and issuer identifiers; label C{OCKAM_RK}; C{created} = C{now}
    in whole seconds, C{expires} = C{created + ttl}; signed with the
    authority's current root key.

    @param ttl: seconds of validity, 1 to 30 days (0.83's builder refuses
        longer).
    @raise CredentialIssueError: for a bad subject, attribute, time or ttl.
    """
    if not isinstance(authority, LocalIdentity):
        raise CredentialIssueError(f"an authority is a LocalIdentity, not {type(authority).__name__}")
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_CREDENTIAL_VALIDITY:
        raise CredentialIssueError(
            f"a credential is valid for 1 to {MAX_CREDENTIAL_VALIDITY} seconds (30 days), not {ttl!r}"
        )
    if not isinstance(project_id, str):
        raise CredentialIssueError(f"project_id must be text, not {type(project_id).__name__}")
    try:
        created = _whole_seconds(now)
        if created + ttl > U64_MAX:
            raise WireError(f"now + ttl is beyond 2**64-1: {now!r}")
        if not isinstance(attributes, Mapping):
            raise WireError(f"attributes must be a mapping, not {type(attributes).__name__}")
        attrs = {}
        for k, v in attributes.items():
            if not isinstance(k, str):
                raise WireError(f"an attribute name must be text, not {k!r}")
            attrs[k] = _attribute_bytes(v, k)
        attrs[PROJECT_ID] = project_id.encode("utf-8")
        data = CredentialData(
            subject=subject,
            issuer=authority.identifier,
            attributes=attrs,
            created=created,
            expires=created + ttl,
            schema=schema,
            issuer_key_label=ROOT_LABEL,
        ).encode()
    except (WireError, UnicodeEncodeError) as e:
        raise CredentialIssueError(f"cannot issue a credential: {e}") from None
    return Credential(data, authority.sign(data))


def _authority_map(authorities) -> Dict[str, Identity]:
    if isinstance(authorities, Identity):
        authorities = [authorities]
    if isinstance(authorities, Mapping):
        out = {}
        for identifier, identity in authorities.items():
            if not isinstance(identity, Identity) or identity.identifier != identifier:
                raise AuthorityListError(
                    f"authorities maps identifiers to their Identity; {identifier!r} maps to {identity!r}"
                )
            out[identifier] = identity
        return out
    out = {}
    for identity in authorities:
        if not isinstance(identity, Identity):
            raise AuthorityListError(f"authorities are Identity objects, not {type(identity).__name__}")
        out[identity.identifier] = identity
    return out


def verify(
    credential: Union[Credential, bytes],
    authorities: Union[Mapping[str, Identity], Iterable[Identity], Identity],
    subject: str,
    now: Union[int, float],
) -> CredentialData:
    """
    Verify a credential as every 0.83 receiver does (5.4), in this order:

      1. C{data} decodes as a CredentialData, else L{InvalidCredentialFormat};
      2. the issuer is one of C{authorities}, else L{UnknownAuthority};
      3. the key label is C{OCKAM_RK}, else "invalid signing key";
      4. the subject is C{subject} (the channel's peer), else "unknown subject";
      5. C{expires > now}, else "expired credential";
      6. the signature verifies over C{data} with the issuer's current root
         key, else "invalid signature";

    3 to 6 raise L{CredentialVerificationFailed} with that reason.  Not
    checked, as in 0.83: C{created}, the 30-day maximum, the schema and the
    attributes (C{project_id} included) -- the caller may check more.

    @param authorities: the trusted authorities: a mapping identifier ->
        L{Identity}, or Identities.
    @param now: Unix seconds (a float is cut to whole seconds).
    @return: the verified L{CredentialData}.
    """
    credential = _as_credential(credential)
    trusted = _authority_map(authorities)
    now_s = _whole_seconds(now)
    data = credential.credential_data()
    issuer = trusted.get(data.issuer)
    if issuer is None:
        raise UnknownAuthority(data.issuer)
    if data.issuer_key_label != ROOT_LABEL:
        raise CredentialVerificationFailed(
            CredentialVerificationFailed.INVALID_SIGNING_KEY, f"key label {data.issuer_key_label!r}"
        )
    if data.subject != subject:
        raise CredentialVerificationFailed(
            CredentialVerificationFailed.UNKNOWN_SUBJECT, f"issued to {data.subject}, presented by {subject}"
        )
    if data.expires <= now_s:
        raise CredentialVerificationFailed(CredentialVerificationFailed.EXPIRED, f"expired at {data.expires}")
    try:
        issuer.verify(bytes(credential.data), bytes(credential.signature))
    except IdentityError:
        raise CredentialVerificationFailed(CredentialVerificationFailed.INVALID_SIGNATURE) from None
    return data


def display(credential: Union[Credential, bytes]) -> str:
    """
    The text of 5.5 (Rust's C{Display} of a Credential).

    @raise InvalidCredentialFormat: when the credential does not decode.
    """
    return _as_credential(credential).display()


def authenticate_output(credential: Union[Credential, bytes]) -> str:
    """
    What C{ockam project authenticate} prints on stdout (section 10):
    C{---}, the display, a blank line, C{---}.
    """
    return "---\n" + display(credential) + "\n---\n"


# --- Rust's formatting ---------------------------------------------------------------

#: The Unix seconds of -9999-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the
#: range of the C{time} crate without its C{large-dates} feature.
_TIME_MIN = -377705116800
_TIME_MAX = 253402300799
_EPOCH = datetime.datetime(1970, 1, 1)


def format_timestamp(seconds: int) -> str:
    """
    A credential time as 0.83 displays it: ISO 8601 in UTC to the second
    (C{2023-03-28T10:40:00Z}).

    As in Rust, the u64 is read as an i64; outside the C{time} crate's range
    (years -9999 to 9999) the text is C{time}'s error for "unix time is
    invalid", and a year before 0000 (which its ISO 8601 format cannot
    write) gives its error for "timestamp error".
    """
    s = seconds - (1 << 64) if seconds >= 1 << 63 else seconds
    if not _TIME_MIN <= s <= _TIME_MAX:
        return "The unix time is invalid component cannot be formatted into the requested format."
    days, rem = divmod(s, 86400)
    if s < -62167219200:  # before 0000-01-01
        return "The timestamp error component cannot be formatted into the requested format."
    if s < -62135596800:  # year 0000 (Python's datetime starts at year 1)
        # 0000 is a leap year, as 2000 is: shift by 400 years (146097 days)
        d = _EPOCH + datetime.timedelta(days=days + 146097, seconds=rem)
        return f"{d.year - 400:04d}" + d.strftime("-%m-%dT%H:%M:%SZ")
    d = _EPOCH + datetime.timedelta(days=days, seconds=rem)
    return f"{d.year:04d}" + d.strftime("-%m-%dT%H:%M:%SZ")


_DEBUG_ESCAPES = {"\0": "\\0", "\t": "\\t", "\r": "\\r", "\n": "\\n", "\\": "\\\\", '"': '\\"'}


def _grapheme_extend(ch: str) -> bool:
    # Rust escapes Grapheme_Extend characters in Debug; Python has no such
    # property, so nonspacing and enclosing marks stand for it (approximate,
    # as the spec allows: section 14, item 7).
    return unicodedata.category(ch) in ("Mn", "Me")


def rust_debug_str(text: str) -> str:
    """
    Rust's C{Debug} of a C{str}: quoted, with C{\\0 \\t \\r \\n \\\\ \\"}
    escaped and characters that are not printable (or that extend a
    grapheme) written as C{\\u{hex}}.  Exact for ASCII.
    """
    out = ['"']
    for ch in text:
        esc = _DEBUG_ESCAPES.get(ch)
        if esc is not None:
            out.append(esc)
        elif ch == " " or (ch.isprintable() and not _grapheme_extend(ch)):
            out.append(ch)
        else:
            out.append(f"\\u{{{ord(ch):x}}}")
    out.append('"')
    return "".join(out)
