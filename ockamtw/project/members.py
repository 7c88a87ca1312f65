"""
Attributes held per identity (section 6.1 of
C{shared/spec/ockam-project-api.md}): the authority's member store and the
project node's store of presented credentials have the same shape.

  - L{MemberEntry}: C{{attrs: name -> bytes, added, expires?, attested_by?}}.
  - L{IMemberStore}: what services need of a store.
  - L{MemoryMemberStore}: in memory (tests, and 0.83's own behaviour).
  - L{PreTrustedMemberStore}: a fixed map of pre-trusted identities
    consulted before another store; writes for them are ignored.

Rules of 0.83 kept here: writing an entry replaces the previous one (no
merge); an entry whose C{expires} has come (C{now >= expires}, as a
credential is dead at its C{expires}) reads as absent.

A store backed by a database answers with Deferreds; the in-memory ones
answer directly.  Callers that accept either wrap calls in
C{maybeDeferred}.
"""

from __future__ import annotations

from typing import Dict, Mapping, NamedTuple, Optional, Union

from zope.interface import Interface, implementer

from ..errors import WireError
from .codec import check_identifier

__all__ = ["MemberEntry", "IMemberStore", "MemoryMemberStore", "PreTrustedMemberStore", "attributes_of"]


def attributes_of(attributes: Mapping[str, Union[bytes, str]]) -> Dict[str, bytes]:
    """
    C{attributes} with text values as UTF-8 bytes, sorted by name.

    @raise WireError: for a name that is not text or a value that is
        neither text nor bytes.
    """
    if not isinstance(attributes, Mapping):
        raise WireError(f"attributes are a mapping, not {type(attributes).__name__}")
    out = {}
    for k, v in attributes.items():
        if not isinstance(k, str):
            raise WireError(f"an attribute name is text, not {k!r}")
        if isinstance(v, str):
            v = v.encode("utf-8")
        elif isinstance(v, (bytes, bytearray, memoryview)):
            v = bytes(v)
        else:
            raise WireError(f"attribute {k!r} is text or bytes, not {type(v).__name__}")
        out[k] = v
    return {k: out[k] for k in sorted(out)}


class MemberEntry(NamedTuple):
    """
    What a store holds for one identity.

    @ivar attributes: name -> bytes.
    @ivar added: Unix seconds of the write.
    @ivar expires: Unix seconds from which the entry reads as absent, or
        C{None} (entries written by the authority's services never expire).
    @ivar attested_by: the identifier that vouched for it (the enroller,
        the credential's issuer), or C{None}.
    """

    attributes: Mapping[str, bytes]
    added: int
    expires: Optional[int] = None
    attested_by: Optional[str] = None

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires

    def text(self, name: str) -> Optional[str]:
        """
        An attribute as text (C{None} when absent or not UTF-8).
        """
        value = self.attributes.get(name)
        if value is None:
            return None
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None


class IMemberStore(Interface):
    """
    Attributes per identifier.  Methods answer directly or with a Deferred.
    """

    def get(identifier, now):
        """
        The live L{MemberEntry} of C{identifier} at C{now}, or C{None}.
        """

    def put(identifier, entry):
        """
        Replace the entry of C{identifier} with C{entry} (a L{MemberEntry}).
        """

    def delete(identifier):
        """
        Forget C{identifier} (nothing happens if it is unknown).
        """

    def members(now):
        """
        A dict identifier -> L{MemberEntry} of every live entry at C{now}.
        """


def _check_entry(entry) -> MemberEntry:
    if not isinstance(entry, MemberEntry):
        raise WireError(f"a member entry is a MemberEntry, not {type(entry).__name__}")
    return entry._replace(attributes=attributes_of(entry.attributes))


@implementer(IMemberStore)
class MemoryMemberStore:
    """
    An L{IMemberStore} in a dict.  Expired entries are dropped when read.
    """

    def __init__(self) -> None:
        self._entries: Dict[str, MemberEntry] = {}

    def get(self, identifier: str, now: float) -> Optional[MemberEntry]:
        entry = self._entries.get(identifier)
        if entry is not None and entry.expired(now):
            del self._entries[identifier]
            return None
        return entry

    def put(self, identifier: str, entry: MemberEntry) -> None:
        check_identifier(identifier, "a member")
        self._entries[identifier] = _check_entry(entry)

    def delete(self, identifier: str) -> None:
        self._entries.pop(identifier, None)

    def members(self, now: float) -> Dict[str, MemberEntry]:
        for identifier in [i for i, e in self._entries.items() if e.expired(now)]:
            del self._entries[identifier]
        return dict(self._entries)


@implementer(IMemberStore)
class PreTrustedMemberStore:
    """
    Pre-trusted identities in front of another store that answers directly
    (such as L{MemoryMemberStore}): their fixed attributes are read first,
    and writes for them are ignored (0.83 reports success all the same).
    """

    def __init__(
        self,
        pre_trusted: Mapping[str, Mapping[str, Union[bytes, str]]],
        store: MemoryMemberStore,
        added: int = 0,
    ) -> None:
        self._fixed = {
            check_identifier(i, "a pre-trusted identity"): MemberEntry(attributes_of(a), added)
            for i, a in pre_trusted.items()
        }
        self._store = store

    def is_pre_trusted(self, identifier: str) -> bool:
        return identifier in self._fixed

    def get(self, identifier: str, now: float) -> Optional[MemberEntry]:
        fixed = self._fixed.get(identifier)
        if fixed is not None:
            return fixed
        return self._store.get(identifier, now)

    def put(self, identifier: str, entry: MemberEntry) -> None:
        if identifier in self._fixed:
            return
        self._store.put(identifier, entry)

    def delete(self, identifier: str) -> None:
        if identifier in self._fixed:
            return
        self._store.delete(identifier)

    def members(self, now: float) -> Dict[str, MemberEntry]:
        out = self._store.members(now)
        out.update(self._fixed)
        return out
