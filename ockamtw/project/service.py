"""
Request/response services of the project API as node workers (spec
section 1): a request arrives in a secure channel, its payload a BARE-wrapped
CBOR header and body; the service answers to the return route, from its own
address, with a response of the same layout.

L{ApiService} does the framing and the errors; subclasses implement
L{ApiService.handle}.  L{call} is the client side: send one request along a
route and wait for the answer.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from ..access import ANYONE, origin_identity
from ..errors import OckamError, WireError
from ..interfaces import IAccessPolicy
from ..logs import short
from ..node import Worker
from .codec import (
    SECURE_CHANNEL_REQUIRED,
    UNKNOWN_PATH,
    ErrorBody,
    Method,
    Request,
    Response,
    Status,
    parse_request_message,
    parse_response_message,
    request,
    response,
)

log = Logger(namespace="ockamtw.project.service")


class ApiError(OckamError):
    """
    An answer other than 200, with the Rust-style C{Error} body.
    """

    def __init__(self, status: Status, message: str) -> None:
        OckamError.__init__(self, message)
        self.status = status
        self.message = message


class ApiService(Worker):
    """
    A project API service.  Who may send to it is its C{access} policy
    (checked by the node); an access policy wrapped in L{Answering} answers
    403 to what it refuses, where Ockam 0.83 dropped it silently.

    C{paths} lists the paths it serves for POST (C{"/"} and its legacy
    names); anything else is answered 400 "unknown path".
    """

    paths = ("/",)

    def receive(self, message) -> None:
        try:
            req = parse_request_message(message.payload)
        except WireError as e:
            # 0.83 does not answer an undecodable header either.
            self.node.throttle.log(
                log, "info", ("api undecodable", self.address), "{service}: request dropped: {error}",
                service=self.address.value, error=short(str(e)),
            )
            return
        d = Deferred.fromCoroutine(self._answer(req, message))
        d.addErrback(lambda f: log.failure("{service} failed", f, service=self.address.value))

    async def _answer(self, req: Request, message) -> None:
        identity = origin_identity(message)
        try:
            if identity is None:
                raise ApiError(Status.FORBIDDEN, SECURE_CHANNEL_REQUIRED)
            if req.method != Method.POST or req.path not in self.paths:
                raise ApiError(Status.BAD_REQUEST, UNKNOWN_PATH)
            result = await self.handle(req, identity, message)
            resp = response(req.id, Status.OK, result)
        except ApiError as e:
            resp = response(req.id, e.status, ErrorBody(req.path, req.method, e.message))
        except WireError as e:
            resp = response(req.id, Status.BAD_REQUEST, ErrorBody(req.path, req.method, f"bad body: {e}"))
        except Exception:
            # A fault of this service: logged here, and answered, so that
            # the caller is not left waiting for its time-out.
            log.failure("{service} failed", service=self.address.value)
            resp = response(req.id, Status.INTERNAL_SERVER_ERROR,
                            ErrorBody(req.path, req.method, "internal error (see the log)"))
        if self.node is not None and message.return_route:
            self.node.send(message.return_route, resp.message(), sender=self.address)

    async def handle(self, req: Request, identity: str, message):
        """
        Serve C{req} from the secure channel peer C{identity}: return the
        response body (C{None} for none), or raise L{ApiError}.
        """
        raise NotImplementedError()


def answer_refused(node, message, status: Status = Status.FORBIDDEN, text: str = "unauthorized member") -> None:
    """
    Answer a request its service's access policy refused, if it is one.
    """
    try:
        req = parse_request_message(message.payload)
    except WireError:
        return
    if message.return_route:
        resp = response(req.id, status, ErrorBody(req.path, req.method, text))
        node.send(message.return_route, resp.message(), sender=message.onward_route[0])


@implementer(IAccessPolicy)
class Answering:
    """
    An access policy that answers what it refuses with 403 (the node
    enforces C{policy}; this only adds the answer).
    """

    def __init__(self, node, policy, text: str = "unauthorized member") -> None:
        self._node = node
        self.policy = policy
        self.text = text

    def allows(self, message) -> bool:
        return self.policy.allows(message)

    def refused(self, message) -> None:
        answer_refused(self._node, message, Status.FORBIDDEN, self.text)

    def __str__(self) -> str:
        return str(self.policy)


class _ResponseWorker(Worker):
    access = ANYONE

    def __init__(self, d: Deferred) -> None:
        self._d = d

    def receive(self, message) -> None:
        if not self._d.called:
            self._d.callback(message)


async def call(node, route, method: Method, path: str, body=None, timeout: float = 30.0) -> Response:
    """
    Send one request along C{route} (a resolved L{ockamtw.Route} ending at
    the service) and wait for its response.

    @raise ApiError: when the response is not 200 (with its error text).
    @raise ockamtw.RequestTimeout: when none comes in time, or the
        connection or channel the route leaves through closes first.
    """
    from ..errors import RequestTimeout

    req = request(method, path, body)
    answered: Deferred = Deferred()
    address = node.start_worker(None, _ResponseWorker(answered))
    closed = []

    def link_closed():
        # The answer cannot come back that way: no need to wait for the time-out.
        if not answered.called:
            closed.append(True)
            answered.cancel()

    try:
        node.send(route, req.message(), sender=address)
        answered.addTimeout(timeout, node.reactor)
        unwatch = node.when_route_closes(route, link_closed)
        try:
            message = await answered
        except Exception:
            if closed:
                raise RequestTimeout(f"no answer from {route[-1].value}: the connection closed first") from None
            raise RequestTimeout(f"no answer from {route[-1].value} within {timeout:g} s") from None
        finally:
            unwatch()
    finally:
        node.stop_worker(address)
    resp = parse_response_message(message.payload)
    if not resp.ok:
        text = resp.error_message() or f"status {int(resp.status) if resp.status else 'unknown'}"
        raise ApiError(resp.status or Status.INTERNAL_SERVER_ERROR, text)
    return resp
