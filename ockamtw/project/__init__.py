"""
The bytes of Ockam 0.83's project API (C{shared/spec/ockam-project-api.md}),
pure and without Twisted:

  - L{ockamtw.project.cbor}: CBOR as minicbor writes and reads it;
  - L{ockamtw.project.codec}: request/response framing, the C{Error} body,
    the authority's bodies (AddMember, CreateToken, OneTimeCode), the Medic
    ping and the relay registration;
  - L{ockamtw.project.credentials}: credentials: layout, issuing,
    verifying, display;
  - L{ockamtw.project.members}: attributes per identity (member stores);
  - L{ockamtw.project.projectinfo}: C{project.json};
  - L{ockamtw.project.errors}: the exceptions.
"""

from .codec import (
    AddMember,
    CreateToken,
    ErrorBody,
    MedicPing,
    Method,
    OneTimeCode,
    Request,
    Response,
    Status,
    parse_request,
    parse_request_message,
    parse_response,
    parse_response_message,
    request,
    response,
)
from .credentials import Credential, CredentialData, authenticate_output, display, issue, verify
from .errors import (
    CredentialError,
    CredentialVerificationFailed,
    InvalidCredentialFormat,
    ProjectInfoError,
    UnknownAuthority,
)
from .members import IMemberStore, MemberEntry, MemoryMemberStore, PreTrustedMemberStore
from .projectinfo import OktaConfig, ProjectInfo

__all__ = [
    "AddMember",
    "CreateToken",
    "ErrorBody",
    "MedicPing",
    "Method",
    "OneTimeCode",
    "Request",
    "Response",
    "Status",
    "parse_request",
    "parse_request_message",
    "parse_response",
    "parse_response_message",
    "request",
    "response",
    "Credential",
    "CredentialData",
    "authenticate_output",
    "display",
    "issue",
    "verify",
    "CredentialError",
    "CredentialVerificationFailed",
    "InvalidCredentialFormat",
    "ProjectInfoError",
    "UnknownAuthority",
    "IMemberStore",
    "MemberEntry",
    "MemoryMemberStore",
    "PreTrustedMemberStore",
    "OktaConfig",
    "ProjectInfo",
]
