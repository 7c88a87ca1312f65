"""
The C{ockam} command line's client of the Orchestrator's HTTP API (/v0):
treq, with the HTTP client injected (a treq C{HTTPClient} on an
C{HTTPConnectionPool(persistent=False)}, or C{treq.testing.StubTreq} in
tests).  Every call returns the decoded JSON or raises
L{OrchestratorError} with one line: the server's own message for an answer
other than 200, or what went wrong reaching it.

Enrollment (L{OrchestratorClient.enroll}) proves the identity: the client
takes a challenge (C{GET /v0/enroll/challenge}), signs
C{ENROLL_CONTEXT + challenge bytes} with the identity's key and posts the
export, the challenge and the signature (C{POST /v0/enroll}).
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional, Sequence, Union
from urllib.parse import quote

from twisted.internet import defer
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.web.client import ResponseFailed, ResponseNeverReceived

from ..deferred import TimedOut, within
from ..errors import OckamError

#: What an enrolling identity signs: this prefix, then the challenge bytes
#: (the server's L{ockamtw.orchestrator.service.ENROLL_CONTEXT}).
ENROLL_CONTEXT = b"ockamtw-enroll-v0:"

#: Seconds a call may take (0.83's controller calls: 30 s).
TIMEOUT = 30.0


class OrchestratorError(OckamError):
    """
    A call that did not succeed: C{status} (the HTTP status, or C{None}
    when there was no answer), C{code} (the server's error code, or
    C{None}) and a one-line message.
    """

    def __init__(self, message: str, status: Optional[int] = None, code: Optional[str] = None) -> None:
        OckamError.__init__(self, message)
        self.message = message
        self.status = status
        self.code = code


def path_of(segments: Union[str, Sequence[str]]) -> str:
    """
    C{/v0/...} from a path or from segments, each quoted whole (so an
    identifier or a name is one segment whatever it holds).
    """
    if isinstance(segments, str):
        return "/" + segments.strip("/")
    return "/" + "/".join(quote(str(s), safe="") for s in segments)


class OrchestratorClient:
    """
    Calls one Orchestrator's HTTP API with a bearer token.

    @param http: a treq C{HTTPClient} (or C{StubTreq}): C{http.request(method,
        url, data=, headers=)} answering with a response that has
        C{content()}.
    @param base_url: C{http://HOST:PORT} (what C{DATA/http.json} holds).
    @param token: the bearer token (C{otw_...}), or C{None} for calls that
        need none.
    @param clock: for timeouts (the global reactor by default).
    """

    def __init__(self, http, base_url: str, token: Optional[str], clock=None, timeout: float = TIMEOUT) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock

    # --- the one call ---------------------------------------------------------------------

    async def call(self, method: str, path: Union[str, Sequence[str]], body: Optional[Dict[str, Any]] = None,
                   auth: bool = True, timeout: Optional[float] = None):
        """
        C{method} on C{path} (under the base URL); the decoded JSON answer.

        @raise OrchestratorError: see the module docstring.
        """
        url = self.base_url + path_of(path)
        headers = {b"content-type": [b"application/json"], b"accept": [b"application/json"]}
        if auth and self.token is not None:
            headers[b"authorization"] = [f"Bearer {self.token}".encode("utf-8", "surrogateescape")]
        data = json.dumps(body).encode() if body is not None else None
        limit = self.timeout if timeout is None else timeout
        where = f"the orchestrator at {self.base_url}"

        async def go():
            response = await self.http.request(method, url, data=data, headers=headers)
            return response, await response.content()

        try:
            response, raw = await within(self.clock, limit, lambda: defer.Deferred.fromCoroutine(go()))
        except TimedOut:
            raise OrchestratorError(f"{where} did not answer within {limit:g} s") from None
        except defer.CancelledError:
            raise
        except (ConnectError, DNSLookupError, OSError) as e:
            raise OrchestratorError(f"cannot reach {where}: {_reason(e)}") from None
        except (ResponseFailed, ResponseNeverReceived) as e:
            problem = _tls_problem(e)
            if problem is not None:
                raise OrchestratorError(f"TLS with {where} failed: {problem}") from None
            raise OrchestratorError(f"{where} closed the connection without answering") from None
        try:
            result = json.loads(raw)
        except ValueError:
            raise OrchestratorError(f"{where} answered HTTP {response.code} with something that is not JSON "
                                    "(is it an orchestrator?)", response.code) from None
        if response.code != 200:
            error = result.get("error") if isinstance(result, dict) else None
            if isinstance(error, dict) and isinstance(error.get("message"), str):
                raise OrchestratorError(_one_line(error["message"]), response.code, error.get("code"))
            raise OrchestratorError(f"{where} answered HTTP {response.code}", response.code)
        return result

    # --- the API ------------------------------------------------------------------------------

    def health(self):
        return self.call("GET", "v0/health", auth=False)

    async def enroll(self, identity) -> Dict[str, Any]:
        """
        Enroll C{identity} (a L{ockamtw.secure.identity.LocalIdentity}):
        prove it holds its key, bind it to this client's token; the answer
        is C{{"space": Space, "project": Project}} (the space and the
        project C{default}, made at the first enrollment).
        """
        challenge = (await self.call("GET", "v0/enroll/challenge"))["challenge"]
        try:
            nonce = bytes.fromhex(challenge)
        except (TypeError, ValueError):
            raise OrchestratorError(f"the orchestrator at {self.base_url} gave a challenge that is not hex") from None
        signature = identity.sign(ENROLL_CONTEXT + nonce)
        body = {"identity": identity.export().hex(), "challenge": challenge, "signature": signature.hex()}
        return await self.call("POST", "v0/enroll", body)

    def token_create(self, label: Optional[str] = None, expires_in: Optional[float] = None):
        body: Dict[str, Any] = {}
        if label is not None:
            body["label"] = label
        if expires_in is not None:
            body["expires_in"] = expires_in
        return self.call("POST", "v0/tokens", body)

    def instances(self):
        """
        The instances sharing the Orchestrator's database, each with the
        leases it holds (C{GET /v0/instances}).
        """
        return self.call("GET", "v0/instances")

    def spaces(self):
        return self.call("GET", "v0/spaces")

    def space_create(self, name: Optional[str] = None, users: Sequence[str] = ()):
        body: Dict[str, Any] = {"users": list(users)}
        if name is not None:
            body["name"] = name
        return self.call("POST", "v0/spaces", body)

    def space_show(self, key: str):
        return self.call("GET", ("v0", "spaces", key))

    def space_delete(self, key: str):
        return self.call("DELETE", ("v0", "spaces", key))

    def projects(self):
        return self.call("GET", "v0/projects")

    def project_create(self, space: str, name: Optional[str] = None, services: Sequence[str] = ()):
        body: Dict[str, Any] = {"services": list(services)}
        if name is not None:
            body["name"] = name
        return self.call("POST", ("v0", "spaces", space, "projects"), body)

    def project_show(self, key: str):
        return self.call("GET", ("v0", "projects", key))

    def project_information(self, key: str):
        return self.call("GET", ("v0", "projects", key, "information"))

    def project_delete(self, key: str):
        return self.call("DELETE", ("v0", "projects", key))

    def members(self, project: str):
        return self.call("GET", ("v0", "projects", project, "members"))

    def member_add(self, project: str, identifier: str, attributes: Dict[str, str]):
        return self.call("POST", ("v0", "projects", project, "members"),
                         {"identifier": identifier, "attributes": dict(attributes)})

    def member_revoke(self, project: str, identifier: str):
        return self.call("DELETE", ("v0", "projects", project, "members", identifier))

    def relays(self, project: str):
        return self.call("GET", ("v0", "projects", project, "relays"))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _reason(e: BaseException) -> str:
    if isinstance(e, ConnectError):
        # "Connection was refused by other side: 111: Connection refused." -> the OS's words
        os_error = getattr(e, "osError", None)
        if isinstance(os_error, OSError) and os_error.strerror:
            return os_error.strerror
        text = str(e).rstrip(".")
        return text.rsplit(": ", 1)[-1] if ": " in text else text
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def _tls_problem(e: BaseException) -> Optional[str]:
    """
    What failed in the TLS handshake under a failed request, in a few
    words (OpenSSL's: "certificate verify failed", and how to trust a
    certificate), or C{None} if it was not TLS.
    """
    for reason in getattr(e, "reasons", None) or ():
        value = getattr(reason, "value", None)
        if type(value).__name__ == "VerificationError":  # service_identity: the name is not the certificate's
            return "its certificate is not for this host name (use the name or address it is for)"
        try:
            from OpenSSL.SSL import Error as SSLError
        except ImportError:  # pragma: no cover (no TLS without pyOpenSSL)
            return None
        if isinstance(value, SSLError):
            words = [part[-1] for part in (value.args[0] if value.args and isinstance(value.args[0], list) else ())
                     if isinstance(part, tuple) and part and part[-1]]
            text = ", ".join(words) or str(value) or "TLS error"
            if "verify failed" in text:
                text += " (to trust its certificate: SSL_CERT_FILE=cert.pem)"
            return text
    return None


def http_client(reactor):
    """
    A treq C{HTTPClient} for the command line (no persistent connections),
    and its pool (close it with C{pool.closeCachedConnections()}).
    """
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=False)
    return HTTPClient(Agent(reactor, pool=pool)), pool
