"""
The command line's client of a node's control API: treq over the node's
UNIX socket.
"""

from __future__ import annotations

import json
from typing import Callable, Optional, Sequence, Union
from urllib.parse import quote

from treq.client import HTTPClient
from twisted.internet import defer, endpoints
from twisted.internet.error import ConnectError
from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed, ResponseNeverReceived
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from .nodes import CLIError

#: How long a call may take beyond the time the operation itself is given
#: (a node that is stopped with SIGSTOP, or stuck, must not hang the command).
CALL_TIMEOUT = 15.0


@implementer(IAgentEndpointFactory)
class _UnixSocket:
    def __init__(self, reactor, path: str) -> None:
        self.reactor = reactor
        self.path = path

    def endpointForURI(self, uri):
        return endpoints.UNIXClientEndpoint(self.reactor, self.path, timeout=10)


def url_of(path: Union[str, Sequence[str]]) -> str:
    """
    The URL of an endpoint: C{"node"} or C{("outlets", KEY)}, each segment
    quoted whole, so a key such as C{/service/outlet} stays one segment.
    """
    segments = path.strip("/").split("/") if isinstance(path, str) else list(path)
    return "http://node/" + "/".join(quote(s, safe="") for s in segments)


class ControlClient:
    """
    Calls one node's control API; every call returns the decoded JSON or
    raises L{CLIError} with the node's one-line reason.

    @param unreachable: called when the socket cannot be reached; returns
        the one-line reason (by default: the node is not running).
    """

    def __init__(self, reactor, name: str, socket_path: str, unreachable: Optional[Callable[[], str]] = None) -> None:
        self.reactor = reactor
        self.name = name
        self.socket_path = socket_path
        self._unreachable = unreachable
        self._pool = HTTPConnectionPool(reactor, persistent=False)
        agent = Agent.usingEndpointFactory(reactor, _UnixSocket(reactor, socket_path), pool=self._pool)
        self._http = HTTPClient(agent)

    def _not_reachable(self) -> str:
        if self._unreachable is not None:
            return self._unreachable()
        return f"node {self.name} is not running (start it with: ockam node start {self.name})"

    async def call(self, method: str, path: Union[str, Sequence[str]], body=None, timeout: Optional[float] = None):
        """
        C{method} on C{path} (a string, or segments quoted one by one); the
        call fails after C{timeout} seconds (L{CALL_TIMEOUT} by default)
        with one line saying the node did not answer.
        """
        data = json.dumps(body).encode() if body is not None else None
        limit = CALL_TIMEOUT if timeout is None else timeout
        timed_out = []

        async def go():
            response = await self._http.request(
                method, url_of(path), data=data, headers={b"content-type": [b"application/json"]}
            )
            return response, await response.content()

        inner = defer.Deferred.fromCoroutine(go())
        cancelled = []

        def cancel(_):
            cancelled.append(True)
            inner.cancel()

        # Cancelling the call (Ctrl-C) is not the node's failure: it ends
        # as CancelledError, whatever the HTTP client makes of it.
        d = defer.Deferred(cancel)
        inner.chainDeferred(d)

        def expire():
            timed_out.append(True)
            inner.cancel()

        timer = self.reactor.callLater(limit, expire)
        try:
            response, raw = await d
        except Exception as e:
            if cancelled:
                raise defer.CancelledError() from None
            if isinstance(e, (ConnectError, OSError)):
                raise CLIError(self._not_reachable()) from e
            if not timed_out and isinstance(e, (ResponseFailed, ResponseNeverReceived)):
                raise CLIError(
                    f"node {self.name} closed the connection without answering (see: ockam node show {self.name})"
                ) from None
            if timed_out:
                raise CLIError(f"node {self.name} did not answer within {limit:g} s (see: ockam node logs {self.name})") from None
            raise
        finally:
            if timer.active():
                timer.cancel()
        try:
            result = json.loads(raw)
        except ValueError:
            raise CLIError(f"node {self.name} answered something that is not JSON") from None
        if response.code != 200:
            message = result.get("error") if isinstance(result, dict) else None
            error = CLIError(message or f"node {self.name} answered HTTP {response.code}")
            error.status = response.code  # e.g. 404: the node has no such thing
            raise error
        return result

    async def close(self) -> None:
        await self._pool.closeCachedConnections()
