"""
Exceptions of the project API (C{shared/spec/ockam-project-api.md}).

Bad bytes in an API message or body raise L{ockamtw.errors.WireError}
(from L{ockamtw.project.codec}).  A credential that cannot be accepted
raises one of the three L{CredentialError} kinds Ockam 0.83 reports
(section 5.4); a C{project.json} that cannot be used raises
L{ProjectInfoError}.  No exception of C{cbor2} or C{cryptography} escapes
this package.
"""

from ..errors import OckamError

__all__ = [
    "CredentialError",
    "InvalidCredentialFormat",
    "UnknownAuthority",
    "CredentialVerificationFailed",
    "CredentialIssueError",
    "AuthorityListError",
    "ProjectInfoError",
]


class CredentialError(OckamError):
    """
    A credential that a 0.83 receiver refuses.  C{kind} is Ockam's name of
    the error (the class name), which is also what a Rust node puts in the
    C{Error} body of a refused presentation.
    """

    @property
    def kind(self) -> str:
        return type(self).__name__


class InvalidCredentialFormat(CredentialError):
    """
    A credential (or its C{data}) that does not decode (check 1 of 5.4).
    """


class UnknownAuthority(CredentialError):
    """
    A credential whose issuer is not one of the receiver's authorities
    (check 2 of 5.4).  C{issuer} is the identifier it names.
    """

    def __init__(self, issuer: str) -> None:
        CredentialError.__init__(self, f"credential issued by {issuer}, which is not a trusted authority")
        self.issuer = issuer


class CredentialVerificationFailed(CredentialError):
    """
    Checks 3 to 6 of 5.4.  C{reason} is Ockam's text: C{"invalid signing
    key"}, C{"unknown subject"}, C{"expired credential"} or C{"invalid
    signature"}.
    """

    INVALID_SIGNING_KEY = "invalid signing key"
    UNKNOWN_SUBJECT = "unknown subject"
    EXPIRED = "expired credential"
    INVALID_SIGNATURE = "invalid signature"

    def __init__(self, reason: str, detail: str = "") -> None:
        CredentialError.__init__(self, f"credential verification failed: {reason}" + (f" ({detail})" if detail else ""))
        self.reason = reason


class CredentialIssueError(OckamError, ValueError):
    """
    A credential cannot be issued with the given values (a validity longer
    than 30 days, a subject that is not an identifier, ...).
    """


class AuthorityListError(OckamError, ValueError):
    """
    The trusted authorities given to a verifier are not L{Identity} objects
    (keyed, in a mapping, by their own identifiers).
    """


class ProjectInfoError(OckamError, ValueError):
    """
    A C{project.json} that is not valid JSON, lacks a field, has a field of
    the wrong type or value, or cannot be used (a missing authority, an
    authority history that does not verify).  The message is one line and
    names the field.
    """
